//! Activation block layouts (the dot-product partners of the weight types).
//!
//! Byte-for-byte the same as ggml's `block_q8_0`, `block_q8_1`, `block_q8_K` and candle's
//! `BlockQ8_0`, `BlockQ8_1`, `BlockQ8K`, whose fields candle keeps crate-private; the SIMD
//! kernels need them, and the scalar path casts them to candle's types.

use half::f16;

pub const QK8_0: usize = 32;
pub const QK_K: usize = 256;

/// 32 activations: `x[i] ≈ d * qs[i]`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK8_0],
}

/// 32 activations plus `s = d * Σ qs` (ggml's definition), which lets Q4_1/Q5_1 fold their
/// per-block minimum in with one multiply.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK8_0],
}

/// 256 activations with an f32 scale and the sums of each 16 quants (`bsums`), which the
/// K-quants use for their per-sub-block minimums and offsets.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

/// Activation block types: plain data, any bit pattern valid, zero is a valid block.
pub trait ActBlock: Copy + 'static {
    const BLCK_SIZE: usize;
}
impl ActBlock for BlockQ8_0 {
    const BLCK_SIZE: usize = QK8_0;
}
impl ActBlock for BlockQ8_1 {
    const BLCK_SIZE: usize = QK8_0;
}
impl ActBlock for BlockQ8K {
    const BLCK_SIZE: usize = QK_K;
}

/// Views `blocks` as bytes (what the vec_dot kernels take for the activation side).
pub fn as_bytes<T: ActBlock>(blocks: &[T]) -> &[u8] {
    // SAFETY: repr(C) plain data; the byte view covers exactly the slice.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks)) }
}

/// Mutable byte view of activation blocks, for the quantizers that write GGML's layout.
pub fn as_bytes_mut<T: ActBlock>(blocks: &mut [T]) -> &mut [u8] {
    // SAFETY: repr(C) plain data, every byte pattern valid; the view covers exactly the slice.
    unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr() as *mut u8, std::mem::size_of_val(blocks)) }
}
