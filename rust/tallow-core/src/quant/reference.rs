//! Reference products over candle-core's GGML block types. Correct on every CPU; the
//! SIMD kernels are checked against these.

use super::matmul::MatmulScratch;
use super::{QTensor, QType};
use crate::threadpool::{split_range, SyncPtr, ThreadPool};
use candle_core::quantized::GgmlType;

/// Runs `$body` with `$T` bound to candle's block type for `$qtype` (a [`QType`] value): the
/// reference routines here and the property tests dispatch on types through it. Panics for types
/// candle has no block for (`check_supported` rejects those at load).
#[doc(hidden)]
#[macro_export]
macro_rules! with_candle_block {
    ($qtype:expr, $T:ident => $body:expr) => {
        match $qtype {
            $crate::quant::QType::F32 => {
                type $T = f32;
                $body
            }
            $crate::quant::QType::F16 => {
                type $T = ::half::f16;
                $body
            }
            $crate::quant::QType::BF16 => {
                type $T = ::half::bf16;
                $body
            }
            $crate::quant::QType::Q4_0 => {
                type $T = ::candle_core::quantized::k_quants::BlockQ4_0;
                $body
            }
            $crate::quant::QType::Q4_1 => {
                type $T = ::candle_core::quantized::k_quants::BlockQ4_1;
                $body
            }
            $crate::quant::QType::Q5_0 => {
                type $T = ::candle_core::quantized::k_quants::BlockQ5_0;
                $body
            }
            $crate::quant::QType::Q5_1 => {
                type $T = ::candle_core::quantized::k_quants::BlockQ5_1;
                $body
            }
            $crate::quant::QType::Q8_0 => {
                type $T = ::candle_core::quantized::k_quants::BlockQ8_0;
                $body
            }
            $crate::quant::QType::Q2_K => {
                type $T = ::candle_core::quantized::k_quants::BlockQ2K;
                $body
            }
            $crate::quant::QType::Q3_K => {
                type $T = ::candle_core::quantized::k_quants::BlockQ3K;
                $body
            }
            $crate::quant::QType::Q4_K => {
                type $T = ::candle_core::quantized::k_quants::BlockQ4K;
                $body
            }
            $crate::quant::QType::Q5_K => {
                type $T = ::candle_core::quantized::k_quants::BlockQ5K;
                $body
            }
            $crate::quant::QType::Q6_K => {
                type $T = ::candle_core::quantized::k_quants::BlockQ6K;
                $body
            }
            other => panic!("{other} has no candle block type"),
        }
    };
}

/// Views raw GGUF bytes as blocks of `T`.
pub(crate) fn as_blocks<T: GgmlType>(bytes: &[u8]) -> &[T] {
    let size = std::mem::size_of::<T>();
    assert!(bytes.len().is_multiple_of(size), "byte length {} is not a whole number of blocks", bytes.len());
    assert!((bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()), "misaligned blocks");
    // SAFETY: length and alignment checked above; the block types are repr(C) plain data
    // (ints and floats) for which every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / size) }
}

/// Dequantizes one row (`out.len()` elements) of `qtype` blocks.
pub fn dequantize_row(qtype: QType, bytes: &[u8], out: &mut [f32]) {
    crate::with_candle_block!(qtype, T => T::to_float(as_blocks::<T>(bytes), out))
}

/// candle's generic product (its `from_float` + `vec_dot` per row and token): the baseline the
/// benchmarks compare against, and tallow's path for F32/F16/BF16 weights.
///
/// `x` is `[n_tokens, cols]`, `y` is `[n_tokens, rows]`, both row-major.
pub fn matmul_candle(
    w: &QTensor,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
    scratch: &mut MatmulScratch,
    pool: &ThreadPool,
) {
    super::matmul::check_shapes(w, x, n_tokens, y);
    assert_eq!(w.interleave(), 1, "{w:?}: candle's path takes rows one after another");
    crate::with_candle_block!(w.qtype, T => matmul_typed::<T>(w, x, n_tokens, y, scratch, pool))
}

fn matmul_typed<T: GgmlType>(
    w: &QTensor,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
    scratch: &mut MatmulScratch,
    pool: &ThreadPool,
) {
    let (rows, cols) = (w.rows, w.cols);
    let nb_x = cols / T::VecDotType::BLCK_SIZE;
    let nb_w = cols / T::BLCK_SIZE;
    let xq = scratch.blocks::<T::VecDotType>(n_tokens * nb_x);
    for t in 0..n_tokens {
        T::VecDotType::from_float(&x[t * cols..(t + 1) * cols], &mut xq[t * nb_x..(t + 1) * nb_x]);
    }
    let xq: &[T::VecDotType] = xq;
    let wb = as_blocks::<T>(w.data());
    let out = SyncPtr(y.as_mut_ptr());
    pool.run(&|i, n| {
        let out = &out;
        for r in split_range(rows, i, n) {
            let wr = &wb[r * nb_w..(r + 1) * nb_w];
            for t in 0..n_tokens {
                let v = T::vec_dot(cols, wr, &xq[t * nb_x..(t + 1) * nb_x]);
                // SAFETY: row `r` belongs to this worker only; index is in bounds (asserted in `matmul`).
                unsafe { *out.0.add(t * rows + r) = v };
            }
        }
    });
}
