//! Reference products over candle-core's GGML block types. Correct on every CPU; the
//! SIMD kernels are checked against these.

use super::{activation, legacy_dot, QTensor, QType};
use crate::threadpool::{split_range, ThreadPool};
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0,
};
use candle_core::quantized::{GgmlDType, GgmlType};
use half::{bf16, f16};

/// Runs `$body` with `$T` bound to the candle block type of `$qtype`.
macro_rules! with_block_type {
    ($qtype:expr, $T:ident => $body:expr) => {
        match $qtype {
            QType::F32 => {
                type $T = f32;
                $body
            }
            QType::F16 => {
                type $T = f16;
                $body
            }
            QType::BF16 => {
                type $T = bf16;
                $body
            }
            QType::Q4_0 => {
                type $T = BlockQ4_0;
                $body
            }
            QType::Q4_1 => {
                type $T = BlockQ4_1;
                $body
            }
            QType::Q5_0 => {
                type $T = BlockQ5_0;
                $body
            }
            QType::Q5_1 => {
                type $T = BlockQ5_1;
                $body
            }
            QType::Q8_0 => {
                type $T = BlockQ8_0;
                $body
            }
            QType::Q2_K => {
                type $T = BlockQ2K;
                $body
            }
            QType::Q3_K => {
                type $T = BlockQ3K;
                $body
            }
            QType::Q4_K => {
                type $T = BlockQ4K;
                $body
            }
            QType::Q5_K => {
                type $T = BlockQ5K;
                $body
            }
            QType::Q6_K => {
                type $T = BlockQ6K;
                $body
            }
            other => unreachable!("{other} is rejected by check_supported at load"),
        }
    };
}

/// Views raw GGUF bytes as blocks of `T`.
pub(crate) fn as_blocks<T: GgmlType>(bytes: &[u8]) -> &[T] {
    let size = std::mem::size_of::<T>();
    assert!(
        bytes.len() % size == 0,
        "byte length {} is not a whole number of blocks",
        bytes.len()
    );
    assert!(
        bytes.as_ptr() as usize % std::mem::align_of::<T>() == 0,
        "misaligned blocks"
    );
    // SAFETY: length and alignment checked above; the block types are repr(C) plain data
    // (ints and floats) for which every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / size) }
}

/// Dequantizes one row (`out.len()` elements) of `qtype` blocks.
pub fn dequantize_row(qtype: QType, bytes: &[u8], out: &mut [f32]) {
    with_block_type!(qtype, T => T::to_float(as_blocks::<T>(bytes), out))
}

/// Reusable buffer for quantized activations, so a decode step allocates nothing once warm.
#[derive(Default)]
pub struct MatmulScratch {
    buf: Vec<u64>,
}

impl MatmulScratch {
    fn blocks<T: GgmlType>(&mut self, n: usize) -> &mut [T] {
        let bytes = n * std::mem::size_of::<T>();
        if self.buf.len() * 8 < bytes {
            self.buf.resize(bytes.div_ceil(8), 0);
        }
        // SAFETY: the buffer holds at least `bytes` bytes, is 8-aligned (enough for every block
        // type) and every bit pattern is a valid block.
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr() as *mut T, n) }
    }
}

/// `x` into blocks of the dot-product partner type `Q`, rounding like llama.cpp (see
/// `activation.rs`); float partners (F32/F16/BF16) convert with round-to-nearest-even as both do.
fn quantize_activations<Q: GgmlType>(x: &[f32], blocks: &mut [Q]) {
    let quantize: fn(&[f32], &mut [u8]) = match Q::DTYPE {
        GgmlDType::Q8_0 => activation::quantize_row_q8_0,
        GgmlDType::Q8_1 => activation::quantize_row_q8_1,
        GgmlDType::Q8K => activation::quantize_row_q8_k,
        _ => return Q::from_float(x, blocks),
    };
    // SAFETY: the Q8 block types are repr(C) with exactly the GGML byte layout the quantizers
    // write (sizes asserted there), and any bytes are a valid block.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr() as *mut u8, std::mem::size_of_val(blocks)) };
    quantize(x, bytes);
}

struct SyncPtr(*mut f32);
// SAFETY: workers write disjoint row ranges of the output.
unsafe impl Sync for SyncPtr {}

/// `y[t * rows + r] = Σ_c W[r, c] · x[t * cols + c]` for `t in 0..n_tokens`.
///
/// `x` is `[n_tokens, cols]`, `y` is `[n_tokens, rows]`, both row-major.
pub fn matmul(
    w: &QTensor,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
    scratch: &mut MatmulScratch,
    pool: &ThreadPool,
) {
    assert_eq!(
        x.len(),
        n_tokens * w.cols,
        "matmul {}: x has {} values, want {}x{}",
        w.name,
        x.len(),
        n_tokens,
        w.cols
    );
    assert_eq!(
        y.len(),
        n_tokens * w.rows,
        "matmul {}: y has {} values, want {}x{}",
        w.name,
        y.len(),
        n_tokens,
        w.rows
    );
    with_block_type!(w.qtype, T => matmul_typed::<T>(w, x, n_tokens, y, scratch, pool))
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
        quantize_activations(&x[t * cols..(t + 1) * cols], &mut xq[t * nb_x..(t + 1) * nb_x]);
    }
    let xq: &[T::VecDotType] = xq;
    let wb = as_blocks::<T>(w.data());
    // SAFETY: plain-data blocks viewed as their bytes.
    let xq_bytes = unsafe { std::slice::from_raw_parts(xq.as_ptr() as *const u8, std::mem::size_of_val(xq)) };
    let x_row_bytes = xq_bytes.len() / n_tokens.max(1);
    let exact_dot = legacy_dot::row_dot(w.qtype);
    let out = SyncPtr(y.as_mut_ptr());
    pool.run(&|i, n| {
        let out = &out;
        for r in split_range(rows, i, n) {
            let wr = &wb[r * nb_w..(r + 1) * nb_w];
            for t in 0..n_tokens {
                let v = match exact_dot {
                    Some(dot) => dot(w.row(r), &xq_bytes[t * x_row_bytes..(t + 1) * x_row_bytes]),
                    None => T::vec_dot(cols, wr, &xq[t * nb_x..(t + 1) * nb_x]),
                };
                // SAFETY: row `r` belongs to this worker only; index is in bounds (asserted in `matmul`).
                unsafe { *out.0.add(t * rows + r) = v };
            }
        }
    });
}
