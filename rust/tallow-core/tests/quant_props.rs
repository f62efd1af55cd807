//! Property tests: tallow's dequantization and quantized products against candle-core's
//! reference routines, for every supported weight type.
//!
//! Weights are random floats quantized with candle's `from_float`; the oracle for a product is a
//! straightforward loop: candle `VecDotType::from_float` on each token, then `vec_dot_unopt` per
//! (row, token).

use candle_core::quantized::GgmlType;
use proptest::prelude::*;
use tallow_core::quant::{dequantize_row, matmul, MatmulScratch, QTensor, QType};
use tallow_core::threadpool::ThreadPool;

const SUPPORTED: [QType; 13] = [
    QType::F32,
    QType::F16,
    QType::BF16,
    QType::Q4_0,
    QType::Q4_1,
    QType::Q5_0,
    QType::Q5_1,
    QType::Q8_0,
    QType::Q2_K,
    QType::Q3_K,
    QType::Q4_K,
    QType::Q5_K,
    QType::Q6_K,
];

fn to_bytes<T>(blocks: &[T]) -> Vec<u8> {
    // SAFETY: candle's block types are repr(C) plain data without padding.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks)) }.to_vec()
}

fn quantize<T: GgmlType>(xs: &[f32]) -> Vec<T> {
    let mut blocks = vec![T::zeros(); xs.len() / T::BLCK_SIZE];
    T::from_float(xs, &mut blocks);
    blocks
}

/// Deterministic pseudo-random floats in [-scale, scale), from a proptest-chosen seed.
fn floats(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// candle's reference product for one weight type: quantize each token with candle, then one
/// `vec_dot_unopt` per (token, row). Returns `y` `[n_tokens, rows]`.
fn reference_matmul<T: GgmlType>(w: &[T], rows: usize, cols: usize, x: &[f32], n_tokens: usize) -> Vec<f32> {
    let nb_w = cols / T::BLCK_SIZE;
    let mut y = vec![0f32; n_tokens * rows];
    for t in 0..n_tokens {
        let xq = quantize::<T::VecDotType>(&x[t * cols..(t + 1) * cols]);
        for r in 0..rows {
            y[t * rows + r] = T::vec_dot_unopt(cols, &w[r * nb_w..(r + 1) * nb_w], &xq);
        }
    }
    y
}

fn qtype_strategy() -> impl Strategy<Value = QType> {
    proptest::sample::select(SUPPORTED.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// `dequantize_row` reproduces candle's `to_float` bit for bit.
    #[test]
    fn dequantize_matches_candle(qtype in qtype_strategy(), n_blocks in 1usize..4, seed in any::<u64>(), scale in 0.01f32..8.0) {
        let cols = n_blocks * 256; // a whole number of blocks for every type
        let xs = floats(seed, cols, scale);
        tallow_core::with_candle_block!(qtype, T => {
            let blocks = quantize::<T>(&xs);
            let mut want = vec![0f32; cols];
            T::to_float(&blocks, &mut want);
            let mut got = vec![f32::NAN; cols];
            dequantize_row(qtype, &to_bytes(&blocks), &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                prop_assert_eq!(g.to_bits(), w.to_bits(), "{} element {}: {} vs {}", qtype, i, g, w);
            }
        });
    }

    /// `matmul` agrees with candle's quantize-then-`vec_dot` loop for 1 and 2 threads, one and
    /// several tokens, odd row counts.
    ///
    /// Tolerance: the integer block sums are exact, but the float accumulation across blocks
    /// runs in a different order (SIMD lanes), and for Q4_1/Q5_1 tallow stores the Q8_1 block sum
    /// `s` as ggml does (`f16(d * Σq)` with `d` in f32) where candle rounds `Σq` to f16 first:
    /// up to one f16 rounding (2^-11 relative) of the `m * s` term. Both are bounded by
    /// 1e-3 × Σ_blocks max|w| · Σ|x| (the magnitude every term of the sum is below).
    #[test]
    fn matmul_matches_candle(
        qtype in qtype_strategy(),
        rows in 1usize..8,
        n_blocks in 1usize..3,
        n_tokens in 1usize..4,
        seed in any::<u64>(),
        scale in 0.01f32..4.0,
    ) {
        let rows = rows * 2 - 1; // odd: exercises uneven thread splits
        let cols = n_blocks * 256;
        let wf = floats(seed, rows * cols, scale);
        let x = floats(seed.rotate_left(17) ^ 0x9e37, n_tokens * cols, 1.0);
        tallow_core::with_candle_block!(qtype, T => {
            let blocks = quantize::<T>(&wf);
            let want = reference_matmul::<T>(&blocks, rows, cols, &x, n_tokens);
            let w = QTensor::from_bytes("w", qtype, rows, cols, &to_bytes(&blocks)).unwrap();
            let mut wdq = vec![0f32; rows * cols];
            dequantize_row(qtype, w.data(), &mut wdq);
            for threads in [1, 2] {
                let pool = ThreadPool::new(threads);
                let mut scratch = MatmulScratch::default();
                let mut y = vec![f32::NAN; n_tokens * rows];
                matmul(&w, &x, n_tokens, &mut y, &mut scratch, &pool);
                for t in 0..n_tokens {
                    for r in 0..rows {
                        let (wr, xt) = (&wdq[r * cols..(r + 1) * cols], &x[t * cols..(t + 1) * cols]);
                        let magnitude: f32 = wr
                            .chunks(32)
                            .zip(xt.chunks(32))
                            .map(|(wb, xb)| wb.iter().fold(0f32, |m, v| m.max(v.abs())) * xb.iter().map(|v| v.abs()).sum::<f32>())
                            .sum();
                        let (g, e) = (y[t * rows + r], want[t * rows + r]);
                        prop_assert!(
                            (g - e).abs() <= 1e-3 * magnitude + 1e-6,
                            "{} threads={} t={} r={}: {} vs {} (magnitude {})", qtype, threads, t, r, g, e, magnitude
                        );
                    }
                }
            }
        });
    }
}
