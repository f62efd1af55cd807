//! The NEON row products (`quant/aarch64_neon.rs`) against the portable llama.cpp-order ones
//! (`legacy_dot.rs`), bit for bit: every 32-element format, block counts from 1 to 130, plain and
//! interleaved strides, both Q4_0 orders. aarch64 only; `harness = false` (see Cargo.toml), so
//! this is a `main` that panics on the first difference.

#[cfg(target_arch = "aarch64")]
mod legacy_inputs;

#[cfg(target_arch = "aarch64")]
fn main() {
    use legacy_inputs::{Inputs, LEGACY};
    use tallow_core::quant::{neon_dotprod_detected, neon_row_dot_for, row_dot_for, QType};

    if !neon_dotprod_detected() {
        assert!(neon_row_dot_for(QType::Q8_0, 1).is_none(), "no dotprod, no NEON kernel");
        println!("neon_row_dot: this CPU has no dotprod; the portable products are used");
        return;
    }
    let mut inputs = Inputs(0x9e37_79b9_7f4a_7c15);
    let mut checked = 0;
    for qtype in LEGACY {
        let ts = qtype.type_size();
        for n in [1usize, 2, 3, 7, 64, 130] {
            let plain = inputs.weights(qtype, 32 * n);
            let x = inputs.activations(qtype, 32 * n);
            // Interleaved layouts put other rows' blocks between a row's: a stride of 4 blocks.
            for stride in [ts, 4 * ts] {
                let mut w: Vec<u8> = (0..(n - 1) * stride + ts).map(|_| inputs.next() as u8).collect();
                for (i, blk) in plain.chunks_exact(ts).enumerate() {
                    w[i * stride..i * stride + ts].copy_from_slice(blk);
                }
                // 1 row: the 8-lane order; 8 rows: Q4_0's repacked order (the others ignore it).
                for rows in [1, 8] {
                    let want = row_dot_for(qtype, rows).unwrap()(&w, stride, &x);
                    let got = neon_row_dot_for(qtype, rows).unwrap()(&w, stride, &x);
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{qtype} n={n} stride={stride} rows={rows}: {got} vs {want}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(neon_row_dot_for(QType::Q4_K, 16).is_none());
    println!("neon_row_dot: {checked} products bit-identical to the portable order");
}

/// The NEON kernels exist only on aarch64; elsewhere there is nothing to compare.
#[cfg(not(target_arch = "aarch64"))]
fn main() {}
