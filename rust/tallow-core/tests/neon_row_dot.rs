//! The NEON row products (`quant/aarch64_neon.rs`) against the portable llama.cpp-order ones
//! (`legacy_dot.rs`), bit for bit: every 32-element format, block counts from 1 to 130, plain and
//! interleaved strides, both Q4_0 orders. aarch64 only; `harness = false` (see Cargo.toml), so
//! this is a `main` that panics on the first difference.

#[cfg(target_arch = "aarch64")]
fn main() {
    use half::f16;
    use tallow_core::quant::{neon_dotprod_detected, neon_row_dot_for, row_dot_for, QType};

    if !neon_dotprod_detected() {
        assert!(neon_row_dot_for(QType::Q8_0, 1).is_none(), "no dotprod, no NEON kernel");
        println!("neon_row_dot: this CPU has no dotprod; the portable products are used");
        return;
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    let set_f16 = |b: &mut [u8], at: usize, v: f32| b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
    let mut checked = 0;
    for qtype in [QType::Q4_0, QType::Q4_1, QType::Q5_0, QType::Q5_1, QType::Q8_0] {
        let with_min = matches!(qtype, QType::Q4_1 | QType::Q5_1);
        let (ts, xs) = (qtype.type_size(), if with_min { 36 } else { 34 });
        for n in [1usize, 2, 3, 7, 64, 130] {
            // Interleaved layouts put other rows' blocks between a row's: a stride of 4 blocks.
            for stride in [ts, 4 * ts] {
                let mut w = bytes((n - 1) * stride + ts);
                let mut x = bytes(n * xs);
                for i in 0..n {
                    set_f16(&mut w, i * stride, 0.01 + 0.003 * (i % 17) as f32);
                    set_f16(&mut x, i * xs, 0.02 - 0.001 * (i % 11) as f32);
                    if with_min {
                        set_f16(&mut w, i * stride + 2, -0.05 * (i % 5) as f32);
                        set_f16(&mut x, i * xs + 2, 1.5 - 0.25 * (i % 7) as f32);
                    }
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
