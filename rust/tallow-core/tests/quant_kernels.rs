//! Every SIMD kernel table this CPU runs against the scalar reference table.
//!
//! Activation quantization must match bit for bit. Dot products sum exact integer block
//! products and differ only in the order the per-block float terms are added (SIMD lanes vs
//! sequential), so they must agree to 1e-5 of Σ|terms| (f32 has 2^-24 ≈ 6e-8 relative
//! precision; a few hundred reordered additions stay far below 1e-5).

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0 as CBlockQ8_0,
};
use candle_core::quantized::GgmlType;
use proptest::prelude::*;
use tallow_core::quant::blocks::{as_bytes, BlockQ8K, BlockQ8_0, BlockQ8_1};
use tallow_core::quant::{kernels, matmul_with, Kernels, MatmulScratch, QTensor, QType};
use tallow_core::threadpool::ThreadPool;

const QUANTIZED: [QType; 10] = [
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

/// Weight bytes of `qtype` for `xs`, quantized by candle, in 8-aligned storage.
fn weight_bytes(qtype: QType, xs: &[f32]) -> Vec<u8> {
    fn q<T: GgmlType>(xs: &[f32]) -> Vec<u8> {
        let mut b = vec![T::zeros(); xs.len() / T::BLCK_SIZE];
        T::from_float(xs, &mut b);
        // SAFETY: repr(C) plain data.
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u8, std::mem::size_of_val(&b[..])) }.to_vec()
    }
    match qtype {
        QType::Q4_0 => q::<BlockQ4_0>(xs),
        QType::Q4_1 => q::<BlockQ4_1>(xs),
        QType::Q5_0 => q::<BlockQ5_0>(xs),
        QType::Q5_1 => q::<BlockQ5_1>(xs),
        QType::Q8_0 => q::<CBlockQ8_0>(xs),
        QType::Q2_K => q::<BlockQ2K>(xs),
        QType::Q3_K => q::<BlockQ3K>(xs),
        QType::Q4_K => q::<BlockQ4K>(xs),
        QType::Q5_K => q::<BlockQ5K>(xs),
        QType::Q6_K => q::<BlockQ6K>(xs),
        other => panic!("{other}"),
    }
}

/// Activations quantized for `qtype`'s dot product by table `k`, as bytes.
fn act_bytes(k: &Kernels, qtype: QType, x: &[f32]) -> Vec<u8> {
    match tallow_core::quant::act_type(qtype).unwrap() {
        QType::Q8_0 => {
            let mut b = vec![BlockQ8_0 { d: Default::default(), qs: [0; 32] }; x.len() / 32];
            k.quantize_q8_0(x, &mut b);
            as_bytes(&b).to_vec()
        }
        QType::Q8_1 => {
            let mut b = vec![BlockQ8_1 { d: Default::default(), s: Default::default(), qs: [0; 32] }; x.len() / 32];
            k.quantize_q8_1(x, &mut b);
            as_bytes(&b).to_vec()
        }
        _ => {
            let mut b = vec![BlockQ8K { d: 0.0, qs: [0; 256], bsums: [0; 16] }; x.len() / 256];
            k.quantize_q8_k(x, &mut b);
            as_bytes(&b).to_vec()
        }
    }
}

/// Copies into 8-aligned storage (the reference kernels view bytes as candle blocks).
fn aligned(bytes: &[u8]) -> (Vec<u64>, usize) {
    let mut v = vec![0u64; bytes.len().div_ceil(8)];
    // SAFETY: v has room for bytes.len() bytes.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, bytes.len()) };
    (v, bytes.len())
}
fn view(a: &(Vec<u64>, usize)) -> &[u8] {
    // SAFETY: a.0 holds at least a.1 initialised bytes.
    unsafe { std::slice::from_raw_parts(a.0.as_ptr() as *const u8, a.1) }
}

/// Inputs that stress rounding: exact halves after scaling, repeated maxima of both signs, zeros.
fn tricky(seed: u64, n: usize) -> Vec<f32> {
    let mut x = floats(seed, n, 3.0);
    for (i, v) in x.iter_mut().enumerate() {
        match (seed as usize + i) % 7 {
            0 => *v = (*v * 4.0).round() / 4.0 + 0.5,
            1 => *v = -(*v).abs(),
            2 => *v = 0.0,
            _ => {}
        }
    }
    if seed.is_multiple_of(3) {
        x[..32.min(n)].fill(0.0); // an all-zero block
    }
    x
}

#[test]
fn the_process_wide_choice_is_named() {
    let name = kernels().name();
    assert!(["avx512vnni", "avx2", "neon", "scalar"].contains(&name), "{name}");
    let available: Vec<_> = Kernels::available().iter().map(|k| k.name()).collect();
    assert!(available.contains(&name), "{name} not in {available:?}");
    assert_eq!(Kernels::scalar().name(), "scalar");
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
        assert!(available.contains(&"avx2"));
        if std::env::var("TALLOW_KERNELS").is_err() {
            assert_ne!(name, "scalar", "a SIMD table must be chosen on an AVX2 machine");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn activation_quantization_is_bit_exact(seed in any::<u64>(), n_blocks in 1usize..4, scale in 1e-3f32..100.0) {
        let x: Vec<f32> = tricky(seed, n_blocks * 256).iter().map(|v| v * scale).collect();
        let reference = Kernels::scalar();
        for k in Kernels::available() {
            for qtype in [QType::Q4_0, QType::Q4_1, QType::Q4_K] {
                let (got, want) = (act_bytes(&k, qtype, &x), act_bytes(&reference, qtype, &x));
                prop_assert!(got == want, "{} activations for {} differ", k.name(), qtype);
            }
        }
    }

    #[test]
    fn vec_dots_match_scalar(seed in any::<u64>(), n_blocks in 1usize..4, qi in 0usize..QUANTIZED.len()) {
        let qtype = QUANTIZED[qi];
        let n = n_blocks * 256;
        let w = aligned(&weight_bytes(qtype, &floats(seed, n, 2.0)));
        let x = tricky(seed ^ 0x5555, n);
        let reference = Kernels::scalar();
        let a_ref = aligned(&act_bytes(&reference, qtype, &x));
        let want = reference.vec_dot(qtype, n, view(&w), view(&a_ref));
        // Σ|terms| bound: the dot of absolute values, over the dequantized operands.
        let mut wf = vec![0f32; n];
        tallow_core::quant::dequantize_row(qtype, view(&w), &mut wf);
        let bound: f32 = wf.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum::<f32>() * 1.01 + 1e-3;
        for k in Kernels::available() {
            let a = aligned(&act_bytes(&k, qtype, &x));
            let got = k.vec_dot(qtype, n, view(&w), view(&a));
            prop_assert!((got - want).abs() <= 1e-5 * bound, "{} {}: {} vs {} (bound {})", k.name(), qtype, got, want, bound);
        }
    }
}

/// `matmul_with` equals, bit for bit, a plain loop of the same table's `vec_dot` per
/// (row, token): threading, scratch reuse and indexing add no numeric change.
#[test]
fn matmul_is_a_loop_of_vec_dots() {
    let (rows, cols, n_tokens) = (7, 512, 3);
    let pool = ThreadPool::new(2);
    for k in Kernels::available() {
        let mut scratch = MatmulScratch::default();
        for qtype in QUANTIZED {
            let w = QTensor::from_bytes("w", qtype, rows, cols, &weight_bytes(qtype, &floats(7, rows * cols, 1.0)))
                .unwrap();
            let x = floats(11, n_tokens * cols, 1.0);
            let mut got = vec![f32::NAN; n_tokens * rows];
            matmul_with(&k, &w, &x, n_tokens, &mut got, &mut scratch, &pool);
            for t in 0..n_tokens {
                let a = aligned(&act_bytes(&k, qtype, &x[t * cols..(t + 1) * cols]));
                for r in 0..rows {
                    let wr = aligned(w.row(r));
                    let want = k.vec_dot(qtype, cols, view(&wr), view(&a));
                    assert_eq!(got[t * rows + r].to_bits(), want.to_bits(), "{} {qtype} t={t} r={r}", k.name());
                }
            }
        }
    }
}

/// Once the scratch has grown to the largest product, further calls do not grow it.
#[test]
fn warm_scratch_does_not_grow() {
    let pool = ThreadPool::new(2);
    let mut scratch = MatmulScratch::default();
    let w =
        QTensor::from_bytes("w", QType::Q4_1, 9, 256, &weight_bytes(QType::Q4_1, &floats(3, 9 * 256, 1.0))).unwrap();
    let x = floats(5, 4 * 256, 1.0);
    let mut y = vec![0f32; 4 * 9];
    tallow_core::quant::matmul(&w, &x, 4, &mut y, &mut scratch, &pool);
    let cap = scratch.capacity_bytes();
    assert!(cap > 0);
    for n_tokens in [1, 4, 2] {
        tallow_core::quant::matmul(&w, &x[..n_tokens * 256], n_tokens, &mut y[..n_tokens * 9], &mut scratch, &pool);
        assert_eq!(scratch.capacity_bytes(), cap);
    }
}
