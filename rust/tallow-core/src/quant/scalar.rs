//! The reference kernels: candle's scalar routines (`from_float`, `vec_dot_unopt`) behind the
//! same names the SIMD files export. `TALLOW_KERNELS=scalar` selects these; every SIMD kernel
//! is tested against them.

use super::blocks::{BlockQ8K, BlockQ8_0, BlockQ8_1, QK8_0};
use super::reference::as_blocks;
use candle_core::quantized::k_quants as ck;
use candle_core::quantized::GgmlType;
use half::f16;

/// Views our activation blocks as candle's identically laid out ones.
fn cast_mut<A, C: GgmlType>(blocks: &mut [A]) -> &mut [C] {
    assert_eq!(std::mem::size_of::<A>(), std::mem::size_of::<C>());
    assert!(std::mem::align_of::<A>() >= std::mem::align_of::<C>());
    // SAFETY: same size (checked), alignment at least as strict, both repr(C) plain data.
    unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr() as *mut C, blocks.len()) }
}

/// candle's scalar dot product of weight blocks `T` with activation blocks, both as bytes.
fn unopt<T: GgmlType>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    T::vec_dot_unopt(n, as_blocks::<T>(w), as_blocks::<T::VecDotType>(a))
}

/// candle's own `vec_dot` (which picks its AVX2/NEON routine at run time where it has one);
/// used for the types tallow has no SIMD kernel of its own for yet.
pub fn candle_vec_dot<T: GgmlType>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    T::vec_dot(n, as_blocks::<T>(w), as_blocks::<T::VecDotType>(a))
}

pub fn quantize_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    ck::BlockQ8_0::from_float(x, cast_mut::<_, ck::BlockQ8_0>(y))
}

/// Q8_1 as ggml's `quantize_row_q8_1_ref`: like Q8_0, plus `s = f16(d * Σq)` with the f32 `d`.
/// (candle computes `s` as `f16(Σq) * f16(d)`, which can differ in the last f16 bit; ggml's
/// definition keeps tallow's numerics diffable against llama.cpp.)
pub fn quantize_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    assert_eq!(x.len(), y.len() * QK8_0);
    for (blk, xs) in y.iter_mut().zip(x.chunks_exact(QK8_0)) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in blk.qs.iter_mut().zip(xs) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        blk.d = f16::from_f32(d);
        blk.s = f16::from_f32(sum as f32 * d);
    }
}

pub fn quantize_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    ck::BlockQ8K::from_float(x, cast_mut::<_, ck::BlockQ8K>(y))
}

pub fn vec_dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    unopt::<ck::BlockQ4_0>(n, w, a)
}
pub fn vec_dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    unopt::<ck::BlockQ4_1>(n, w, a)
}
pub fn vec_dot_q5_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    unopt::<ck::BlockQ5_0>(n, w, a)
}
pub fn vec_dot_q5_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    unopt::<ck::BlockQ5_1>(n, w, a)
}
pub fn vec_dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    unopt::<ck::BlockQ8_0>(n, w, a)
}
pub fn vec_dot_q2_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    unopt::<ck::BlockQ2K>(n, w, a)
}
pub fn vec_dot_q3_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    unopt::<ck::BlockQ3K>(n, w, a)
}
pub fn vec_dot_q4_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    unopt::<ck::BlockQ4K>(n, w, a)
}
pub fn vec_dot_q5_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    unopt::<ck::BlockQ5K>(n, w, a)
}
pub fn vec_dot_q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    unopt::<ck::BlockQ6K>(n, w, a)
}
