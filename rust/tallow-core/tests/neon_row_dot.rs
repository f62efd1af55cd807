//! The aarch64 NEON kernels against the portable ones they must equal bit for bit: the row
//! products of the 32-element formats (`quant/aarch64_neon.rs` against `legacy_dot.rs`; block
//! counts from 1 to 130, plain and interleaved strides, both Q4_0 orders), the integer parts of
//! the Q4_K, Q5_K and Q6_K products (`quant/aarch64_neon_kquant.rs`) with the K-quant row
//! products built on them (`kquant_order::row_dot`) and the activation quantizers
//! (`quant/activation.rs`). aarch64 only; `harness = false` (see Cargo.toml), so this is a `main`
//! that panics on the first difference.

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
    kquant_ints(&mut inputs);
    quantizers(&mut inputs);
}

/// `IntKernels::best` (NEON with dotprod) against the portable integer parts of Q4_K, Q5_K and
/// Q6_K, then the K-quant row products in every llama.cpp order with either set of kernels.
#[cfg(target_arch = "aarch64")]
fn kquant_ints(inputs: &mut legacy_inputs::Inputs) {
    use tallow_core::quant::kquant_order::{q4k_ints, q5k_ints, q6k_lanes, row_dot, IntKernels, KOrder};
    let best = IntKernels::best();
    assert!(best.q5k.is_some(), "a NEON Q5_K kernel where the CPU has dotprod");
    let bytes =
        |inputs: &mut legacy_inputs::Inputs, n: usize| -> Vec<u8> { (0..n).map(|_| inputs.next() as u8).collect() };
    let n = 500;
    for k in 0..n {
        let mut a = bytes(inputs, 292);
        let (mut w4, w6, mut w5) = (bytes(inputs, 144), bytes(inputs, 210), bytes(inputs, 176));
        // The extremes: every quant at its largest against activations all -128 or all 127,
        // with the largest six-bit scales and minimums.
        if k < 2 {
            a[4..260].fill(if k == 0 { 0x80 } else { 0x7f });
            w4[4..].fill(0xff);
            w5[4..].fill(0xff);
        }
        // A Q8_K block's bsums are the sums of its 16-element groups of quants.
        for i in 0..16 {
            let s: i32 = (0..16).map(|j| a[4 + 16 * i + j] as i8 as i32).sum();
            a[260 + 2 * i..262 + 2 * i].copy_from_slice(&(s as i16).to_le_bytes());
        }
        assert_eq!((best.q4k)(&w4, &a), q4k_ints(&w4, &a));
        assert_eq!((best.q6k)(&w6, &a), q6k_lanes(&w6, &a));
        assert_eq!(best.q5k.unwrap()(&w5, &a), q5k_ints(&w5, &a), "Q5_K block {k}");
    }
    println!("neon_row_dot: {n} Q4_K, {n} Q5_K and {n} Q6_K blocks' integer parts equal to the portable ones");

    // Rows of 1 to 9 blocks with finite f16 scales, against Q8_K activations of random floats.
    let orders = [
        (144, [KOrder::Q4KGemm, KOrder::Q4KGemv]),
        (210, [KOrder::Q6KTiled, KOrder::Q6KVecDot]),
        (176, [KOrder::Q5KTiled, KOrder::Q5KVecDot]),
    ];
    let mut rows = 0;
    for blocks in 1..10 {
        let x: Vec<f32> = (0..256 * blocks).map(|_| ((inputs.next() % 20001) as f32 - 10000.0) / 1000.0).collect();
        let mut xq = vec![0u8; blocks * 292];
        tallow_core::quant::activation::quantize_row_q8_k(&x, &mut xq);
        for (size, pair) in orders {
            let mut w = bytes(inputs, blocks * size);
            for b in w.chunks_exact_mut(size) {
                // d (and dmin) small and finite: f16 high bytes 0x10..0x17 (2^-11..2^-9); dmin of
                // either sign.
                let (d, dmin) = if size == 210 { (208, None) } else { (0, Some(2)) };
                b[d + 1] = 0x10 + (inputs.next() % 8) as u8;
                if let Some(m) = dmin {
                    b[m + 1] = (0x10 + (inputs.next() % 8) as u8) | (inputs.next() as u8 & 0x80);
                }
            }
            for order in pair {
                let want = row_dot(order, &IntKernels::PORTABLE, &w, &xq);
                let got = row_dot(order, &best, &w, &xq);
                assert!(best.covers(order), "{order:?}");
                assert_eq!(got.to_bits(), want.to_bits(), "{order:?}, {blocks} blocks: {got} vs {want}");
                rows += 1;
            }
        }
    }
    println!("neon_row_dot: {rows} Q4_K, Q5_K and Q6_K row products bit-identical to the portable kernels'");
}

/// The NEON activation quantizers against the portable ones, byte for byte, on rows with ties
/// at .5, zeros, signed zeros, NaN and infinities mixed in.
#[cfg(target_arch = "aarch64")]
fn quantizers(inputs: &mut legacy_inputs::Inputs) {
    use tallow_core::quant::activation::{self as act, Q8_0_BYTES, Q8_1_BYTES, Q8_K_BYTES};
    let special = [0.0, -0.0, 0.5, -0.5, 1.5, 2.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 127.0, -127.0];
    let mut rows = 0;
    for round in 0..300 {
        let n = 512;
        let x: Vec<f32> = (0..n)
            .map(|i| match inputs.next() % 64 {
                // Rare specials, so that most blocks stay finite and some hold one.
                0 if round % 3 == 0 => special[(inputs.next() % special.len() as u64) as usize],
                // Halves: exact ties once scaled when the block's maximum is 127.
                1..=8 => ((inputs.next() % 255) as f32 - 127.0) / 2.0,
                _ => ((inputs.next() % 20001) as f32 - 10000.0) / (1.0 + (i % 7) as f32 * 300.0),
            })
            .collect();
        let mut x = x;
        if round % 5 == 0 {
            x[..256].fill(0.0); // an all-zero block of every kind
        }
        if round % 4 == 1 {
            // Blocks whose largest magnitude is 127 scale by exactly ±1: every half is a tie,
            // which rounds to even.
            for (i, v) in x.iter_mut().enumerate() {
                *v = if i % 32 == 0 { 127.0 } else { ((inputs.next() % 255) as f32 - 127.0) / 2.0 };
            }
        }
        type Quantizer = fn(&[f32], &mut [u8]);
        let pairs: [(usize, usize, Quantizer, Quantizer); 3] = [
            (32, Q8_0_BYTES, act::quantize_row_q8_0, act::q8_0_portable),
            (32, Q8_1_BYTES, act::quantize_row_q8_1, act::q8_1_portable),
            (256, Q8_K_BYTES, act::quantize_row_q8_k, act::q8_k_portable),
        ];
        for (block, bytes, simd, portable) in pairs {
            let (mut got, mut want) = (vec![0u8; n / block * bytes], vec![0u8; n / block * bytes]);
            simd(&x, &mut got);
            portable(&x, &mut want);
            assert_eq!(got, want, "round {round}, blocks of {block} ({bytes} bytes)");
            rows += 1;
        }
    }
    println!("neon_row_dot: {rows} rows quantized to Q8_0, Q8_1 and Q8_K byte-identical to the portable quantizers");
}

/// The NEON kernels exist only on aarch64; elsewhere there is nothing to compare.
#[cfg(not(target_arch = "aarch64"))]
fn main() {}
