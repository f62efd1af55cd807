//! AVX-512 VNNI kernels for the 32-element block types.
//!
//! Same names as `x86_avx2.rs`. `vpdpbusd` (u8 × i8, four products summed straight into i32)
//! replaces AVX2's `maddubs` + `madd` pair and cannot saturate in i16. Each iteration takes
//! two blocks so one 512-bit instruction covers 64 weights; the per-block scales are applied
//! in float lanes (low 256 bits = block i, high = block i + 1).
//! Types without a kernel here use the AVX2 one (the dispatch table in `kernels.rs`).

#![allow(clippy::missing_safety_doc)]

use super::x86_avx2::{bytes_from_bits_32, bytes_from_nibbles_32, hsum_f32_8, load_f16};
use std::arch::x86_64::*;

/// Two 32-byte halves into one zmm.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// Σ groups of 4 (u8 × i8) -> 16 × f32: lanes 0..8 from block `lo`, 8..16 from `hi`.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn dot_us8(ax: __m512i, sy: __m512i) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ax, sy))
}

/// Σ groups of 4 (i8 × i8): x's sign moves onto y so x can be the unsigned operand.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn dot_i8(x: __m512i, y: __m512i) -> __m512 {
    let ax = _mm512_abs_epi8(x);
    let neg = _mm512_movepi8_mask(x);
    let sy = _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y);
    dot_us8(ax, sy)
}

/// Block scale pair as a 16-lane vector: 8 lanes of `d0`, 8 of `d1`.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn scales2(d0: f32, d1: f32) -> __m512 {
    _mm512_insertf32x8::<1>(_mm512_castps256_ps512(_mm256_set1_ps(d0)), _mm256_set1_ps(d1))
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn hsum_f32_16(x: __m512) -> f32 {
    hsum_f32_8(_mm256_add_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps::<1>(x)))
}

/// The shared loop: `block(i)` yields (weight quants, activation quants, scale, extra) for
/// block `i`; `signed` picks the i8 × i8 product. `extra` (the Q4_1/Q5_1 min term) is summed.
macro_rules! two_block_loop {
    ($nb:expr, $signed:expr, |$i:ident| $block:expr) => {{
        let nb = $nb;
        let mut acc = _mm512_setzero_ps();
        let mut extra = 0f32;
        let mut i = 0;
        while i + 2 <= nb {
            let (x0, y0, d0, e0) = {
                let $i = i;
                $block
            };
            let (x1, y1, d1, e1) = {
                let $i = i + 1;
                $block
            };
            let (x, y) = (join(x0, x1), join(y0, y1));
            let p = if $signed { dot_i8(x, y) } else { dot_us8(x, y) };
            acc = _mm512_fmadd_ps(scales2(d0, d1), p, acc);
            extra += e0 + e1;
            i += 2;
        }
        if i < nb {
            let (x0, y0, d0, e0) = {
                let $i = i;
                $block
            };
            let z = _mm256_setzero_si256();
            let (x, y) = (join(x0, z), join(y0, z));
            let p = if $signed { dot_i8(x, y) } else { dot_us8(x, y) };
            acc = _mm512_fmadd_ps(scales2(d0, 0.0), p, acc);
            extra += e0;
        }
        hsum_f32_16(acc) + extra
    }};
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    assert!(w.len() >= nb * 18 && a.len() >= nb * 34);
    two_block_loop!(nb, true, |i| {
        // SAFETY: block i lies inside both slices (asserted above).
        unsafe {
            let (wp, ap) = (w.as_ptr().add(i * 18), a.as_ptr().add(i * 34));
            let qx = _mm256_sub_epi8(bytes_from_nibbles_32(wp.add(2)), _mm256_set1_epi8(8));
            let qy = _mm256_loadu_si256(ap.add(2) as *const __m256i);
            (qx, qy, load_f16(wp) * load_f16(ap), 0f32)
        }
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    assert!(w.len() >= nb * 20 && a.len() >= nb * 36);
    two_block_loop!(nb, false, |i| {
        // SAFETY: block i lies inside both slices (asserted above).
        unsafe {
            let (wp, ap) = (w.as_ptr().add(i * 20), a.as_ptr().add(i * 36));
            let qx = bytes_from_nibbles_32(wp.add(4));
            let qy = _mm256_loadu_si256(ap.add(4) as *const __m256i);
            (qx, qy, load_f16(wp) * load_f16(ap), load_f16(wp.add(2)) * load_f16(ap.add(2)))
        }
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn vec_dot_q5_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    assert!(w.len() >= nb * 22 && a.len() >= nb * 34);
    two_block_loop!(nb, true, |i| {
        // SAFETY: block i lies inside both slices (asserted above).
        unsafe {
            let (wp, ap) = (w.as_ptr().add(i * 22), a.as_ptr().add(i * 34));
            let hi = _mm256_andnot_si256(bytes_from_bits_32(wp.add(2)), _mm256_set1_epi8(0xF0u8 as i8));
            let qx = _mm256_or_si256(bytes_from_nibbles_32(wp.add(6)), hi);
            let qy = _mm256_loadu_si256(ap.add(2) as *const __m256i);
            (qx, qy, load_f16(wp) * load_f16(ap), 0f32)
        }
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn vec_dot_q5_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    assert!(w.len() >= nb * 24 && a.len() >= nb * 36);
    two_block_loop!(nb, false, |i| {
        // SAFETY: block i lies inside both slices (asserted above).
        unsafe {
            let (wp, ap) = (w.as_ptr().add(i * 24), a.as_ptr().add(i * 36));
            let hi = _mm256_and_si256(bytes_from_bits_32(wp.add(4)), _mm256_set1_epi8(0x10));
            let qx = _mm256_or_si256(bytes_from_nibbles_32(wp.add(8)), hi);
            let qy = _mm256_loadu_si256(ap.add(4) as *const __m256i);
            (qx, qy, load_f16(wp) * load_f16(ap), load_f16(wp.add(2)) * load_f16(ap.add(2)))
        }
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn vec_dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    assert!(w.len() >= nb * 34 && a.len() >= nb * 34);
    two_block_loop!(nb, true, |i| {
        // SAFETY: block i lies inside both slices (asserted above).
        unsafe {
            let (wp, ap) = (w.as_ptr().add(i * 34), a.as_ptr().add(i * 34));
            let qx = _mm256_loadu_si256(wp.add(2) as *const __m256i);
            let qy = _mm256_loadu_si256(ap.add(2) as *const __m256i);
            (qx, qy, load_f16(wp) * load_f16(ap), 0f32)
        }
    })
}

/// Whether this CPU runs the kernels in this file.
pub fn detected() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && super::x86_avx2_detected()
}
