//! AVX2 (+FMA, F16C) kernels: activation quantization and integer dot products.
//!
//! Same names and signatures as `scalar.rs`. Only ever called through [`super::Kernels`], which
//! hands these out after `is_x86_feature_detected!` confirmed the features.
//!
//! Products follow ggml's scheme: the 8-bit activation × 4/5/8-bit weight products are summed
//! exactly in integers per block (`_mm256_maddubs_epi16` unsigned×signed, then
//! `_mm256_madd_epi16` to i32), and only the per-block scale multiply is in float.
//!
//! Layouts (bytes): Q4_0 `d:f16 qs[16]`; Q4_1 `d m qs[16]`; Q5_0 `d qh[4] qs[16]`;
//! Q5_1 `d m qh[4] qs[16]`; Q8_0 `d qs[32]`; Q8_1 `d s qs[32]`; Q4_K `d dmin scales[12] qs[128]`;
//! Q6_K `ql[128] qh[64] scales[16] d`; Q8_K `d:f32 qs[256] bsums[16]:i16`.

#![allow(clippy::missing_safety_doc)]

use super::blocks::{BlockQ8K, BlockQ8_0, BlockQ8_1, QK8_0, QK_K};
use std::arch::x86_64::*;

// ---------------------------------------------------------------------------------------------
// Helpers (inlined into the kernels, which enable the same features).

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn f16_to_f32(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn f32_to_f16(v: f32) -> u16 {
    _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v))) as u16
}

/// Reads the little-endian f16 at `p` as f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn load_f16(p: *const u8) -> f32 {
    f16_to_f32(unsafe { (p as *const u16).read_unaligned() })
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn hsum_f32_8(x: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hmax_f32_8(x: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum_i32_8(x: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256::<1>(x));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s)))
}

/// `f32::round` (half away from zero) lane-wise, exactly, for |v| < 2^23:
/// truncate, then add one where the (exact) fractional part is ≥ 0.5.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn round_away(v: __m256) -> __m256 {
    let sign = _mm256_set1_ps(-0.0);
    let a = _mm256_andnot_ps(sign, v);
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(a);
    let up = _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_sub_ps(a, t), _mm256_set1_ps(0.5));
    let r = _mm256_add_ps(t, _mm256_and_ps(up, _mm256_set1_ps(1.0)));
    _mm256_or_ps(r, _mm256_and_ps(v, sign))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn scale4(v: [__m256; 4], s: __m256) -> [__m256; 4] {
    [_mm256_mul_ps(v[0], s), _mm256_mul_ps(v[1], s), _mm256_mul_ps(v[2], s), _mm256_mul_ps(v[3], s)]
}

/// Rounds 32 floats (`v[0..4]` × 8 lanes) to i8 with saturation, in element order.
/// Also returns the i32 sum of the rounded values (before saturation, as ggml).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn round_pack_32(v: [__m256; 4]) -> (__m256i, __m256i) {
    let q0 = _mm256_cvttps_epi32(round_away(v[0]));
    let q1 = _mm256_cvttps_epi32(round_away(v[1]));
    let q2 = _mm256_cvttps_epi32(round_away(v[2]));
    let q3 = _mm256_cvttps_epi32(round_away(v[3]));
    let sum = _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3));
    // packs work per 128-bit lane; the dword permute restores element order.
    let p = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
    (_mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)), sum)
}

/// 16 bytes of packed nibbles -> 32 bytes: low nibbles (elements 0..16) then high (16..32).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn bytes_from_nibbles_32(p: *const u8) -> __m256i {
    let tmp = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let both = _mm256_insertf128_si256::<1>(_mm256_castsi128_si256(tmp), _mm_srli_epi16::<4>(tmp));
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// 32 bits -> 32 bytes, byte `i` = 0xFF where bit `i` is set.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn bytes_from_bits_32(p: *const u8) -> __m256i {
    let bits = unsafe { (p as *const u32).read_unaligned() };
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
    );
    let probe = _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(probe, _mm256_set1_epi64x(-1))
}

/// Σ pairs of u8 × i8 -> 8 × f32 (each lane a sum of 4 products).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn mul_sum_us8_pairs_float(ax: __m256i, sy: __m256i) -> __m256 {
    let dot = _mm256_maddubs_epi16(ax, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
}

/// Σ pairs of i8 × i8: moves x's sign onto y so maddubs sees |x| as unsigned.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn mul_sum_i8_pairs_float(x: __m256i, y: __m256i) -> __m256 {
    mul_sum_us8_pairs_float(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load8(p: *const f32) -> __m256 {
    unsafe { _mm256_loadu_ps(p) }
}

/// Loads 32 floats and returns them with their largest |x|.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_32_amax(xs: &[f32]) -> ([__m256; 4], f32) {
    assert!(xs.len() >= 32);
    let p = xs.as_ptr();
    // SAFETY: 32 elements checked above.
    let v = unsafe { [load8(p), load8(p.add(8)), load8(p.add(16)), load8(p.add(24))] };
    let sign = _mm256_set1_ps(-0.0);
    let m01 = _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1]));
    let m23 = _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3]));
    (v, hmax_f32_8(_mm256_max_ps(m01, m23)))
}

// ---------------------------------------------------------------------------------------------
// Activation quantization, bit-exact with the scalar reference (same f32 ops, same rounding).

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    assert_eq!(x.len(), y.len() * QK8_0);
    for (blk, xs) in y.iter_mut().zip(x.chunks_exact(QK8_0)) {
        let (v, amax) = load_32_amax(xs);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let (q, _) = round_pack_32(scale4(v, id));
        blk.d = half::f16::from_bits(f32_to_f16(d));
        // SAFETY: qs is 32 bytes.
        unsafe { _mm256_storeu_si256(blk.qs.as_mut_ptr() as *mut __m256i, q) };
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    assert_eq!(x.len(), y.len() * QK8_0);
    for (blk, xs) in y.iter_mut().zip(x.chunks_exact(QK8_0)) {
        let (v, amax) = load_32_amax(xs);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let (q, sum) = round_pack_32(scale4(v, id));
        blk.d = half::f16::from_bits(f32_to_f16(d));
        blk.s = half::f16::from_bits(f32_to_f16(hsum_i32_8(sum) as f32 * d));
        // SAFETY: qs is 32 bytes.
        unsafe { _mm256_storeu_si256(blk.qs.as_mut_ptr() as *mut __m256i, q) };
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    assert_eq!(x.len(), y.len() * QK_K);
    for (blk, xs) in y.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut amax = 0f32;
        for c in xs.chunks_exact(32) {
            amax = amax.max(load_32_amax(c).1);
        }
        if amax == 0.0 {
            *blk = BlockQ8K { d: 0.0, qs: [0; QK_K], bsums: [0; QK_K / 16] };
            continue;
        }
        // The reference scales by the first element of largest magnitude, keeping its sign.
        let max = xs.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
        let iscale = -127.0 / max;
        let iv = _mm256_set1_ps(iscale);
        for (k, c) in xs.chunks_exact(32).enumerate() {
            let (v, _) = load_32_amax(c);
            let (q, _) = round_pack_32(scale4(v, iv));
            // SAFETY: chunk k of 32 bytes lies inside qs (256 bytes).
            unsafe { _mm256_storeu_si256(blk.qs.as_mut_ptr().add(32 * k) as *mut __m256i, q) };
            // Sums of 16: bytes -> pairs -> quads (i32 per 128-bit lane = 16 elements).
            let quads = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q), _mm256_set1_epi16(1));
            let s = _mm256_hadd_epi32(quads, quads);
            let s = _mm256_hadd_epi32(s, s);
            blk.bsums[2 * k] = _mm256_extract_epi32::<0>(s) as i16;
            blk.bsums[2 * k + 1] = _mm256_extract_epi32::<4>(s) as i16;
        }
        blk.d = 1.0 / iscale;
    }
}

// ---------------------------------------------------------------------------------------------
// Dot products: `n` weights (`w`, weight blocks) · `n` activations (`a`, activation blocks).

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    assert!(w.len() >= nb * 18 && a.len() >= nb * 34);
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        // SAFETY: block i lies inside both slices (asserted above).
        unsafe {
            let (wp, ap) = (w.as_ptr().add(i * 18), a.as_ptr().add(i * 34));
            let d = _mm256_set1_ps(load_f16(wp) * load_f16(ap));
            let qx = _mm256_sub_epi8(bytes_from_nibbles_32(wp.add(2)), _mm256_set1_epi8(8));
            let qy = _mm256_loadu_si256(ap.add(2) as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), acc);
        }
    }
    hsum_f32_8(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    assert!(w.len() >= nb * 20 && a.len() >= nb * 36);
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for i in 0..nb {
        // SAFETY: block i lies inside both slices (asserted above).
        unsafe {
            let (wp, ap) = (w.as_ptr().add(i * 20), a.as_ptr().add(i * 36));
            summs = load_f16(wp.add(2)).mul_add(load_f16(ap.add(2)), summs);
            let d = _mm256_set1_ps(load_f16(wp) * load_f16(ap));
            let qx = bytes_from_nibbles_32(wp.add(4));
            let qy = _mm256_loadu_si256(ap.add(4) as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_us8_pairs_float(qx, qy), acc);
        }
    }
    hsum_f32_8(acc) + summs
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q5_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    assert!(w.len() >= nb * 22 && a.len() >= nb * 34);
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        // SAFETY: block i lies inside both slices (asserted above).
        unsafe {
            let (wp, ap) = (w.as_ptr().add(i * 22), a.as_ptr().add(i * 34));
            let d = _mm256_set1_ps(load_f16(wp) * load_f16(ap));
            // nibble | 0xF0 where the 5th bit is clear == (nibble | bit << 4) - 16 as i8.
            let hi = _mm256_andnot_si256(bytes_from_bits_32(wp.add(2)), _mm256_set1_epi8(0xF0u8 as i8));
            let qx = _mm256_or_si256(bytes_from_nibbles_32(wp.add(6)), hi);
            let qy = _mm256_loadu_si256(ap.add(2) as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), acc);
        }
    }
    hsum_f32_8(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q5_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    assert!(w.len() >= nb * 24 && a.len() >= nb * 36);
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for i in 0..nb {
        // SAFETY: block i lies inside both slices (asserted above).
        unsafe {
            let (wp, ap) = (w.as_ptr().add(i * 24), a.as_ptr().add(i * 36));
            summs = load_f16(wp.add(2)).mul_add(load_f16(ap.add(2)), summs);
            let d = _mm256_set1_ps(load_f16(wp) * load_f16(ap));
            let hi = _mm256_and_si256(bytes_from_bits_32(wp.add(4)), _mm256_set1_epi8(0x10));
            let qx = _mm256_or_si256(bytes_from_nibbles_32(wp.add(8)), hi);
            let qy = _mm256_loadu_si256(ap.add(4) as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_us8_pairs_float(qx, qy), acc);
        }
    }
    hsum_f32_8(acc) + summs
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    assert!(w.len() >= nb * 34 && a.len() >= nb * 34);
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        // SAFETY: block i lies inside both slices (asserted above).
        unsafe {
            let (wp, ap) = (w.as_ptr().add(i * 34), a.as_ptr().add(i * 34));
            let d = _mm256_set1_ps(load_f16(wp) * load_f16(ap));
            let qx = _mm256_loadu_si256(wp.add(2) as *const __m256i);
            let qy = _mm256_loadu_si256(ap.add(2) as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), acc);
        }
    }
    hsum_f32_8(acc)
}

/// Elements `64j..64j+64` of a Q4_K × Q8_K block pair (sub-blocks `2j`, `2j+1`): the scaled
/// products `scale · q4 · q8` in 8 i32 lanes. `wb`/`ab` must be whole blocks (144/292 bytes).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q4k_sumi_64(wb: &[u8], ab: &[u8], scales: &[u8; 8], j: usize) -> __m256i {
    let m4 = _mm256_set1_epi8(0x0F);
    // SAFETY: 16 + 32j + 32 <= 144 and 4 + 64j + 64 <= 292 for j < 4.
    let (q4, q8l, q8h) = unsafe {
        (
            _mm256_loadu_si256(wb.as_ptr().add(16 + 32 * j) as *const __m256i),
            _mm256_loadu_si256(ab.as_ptr().add(4 + 64 * j) as *const __m256i),
            _mm256_loadu_si256(ab.as_ptr().add(4 + 64 * j + 32) as *const __m256i),
        )
    };
    let lo = _mm256_maddubs_epi16(_mm256_and_si256(q4, m4), q8l);
    let hi = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4), q8h);
    _mm256_add_epi32(
        _mm256_madd_epi16(lo, _mm256_set1_epi16(scales[2 * j] as i16)),
        _mm256_madd_epi16(hi, _mm256_set1_epi16(scales[2 * j + 1] as i16)),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_K;
    assert!(w.len() >= nb * 144 && a.len() >= nb * 292);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm256_setzero_ps();
    for i in 0..nb {
        let (wb, ab) = (&w[i * 144..(i + 1) * 144], &a[i * 292..(i + 1) * 292]);
        // SAFETY: wb/ab are whole blocks; every load below stays inside them.
        unsafe {
            let ad = (ab.as_ptr() as *const f32).read_unaligned();
            let d = load_f16(wb.as_ptr()) * ad;
            let dmin = load_f16(wb.as_ptr().add(2)) * ad;
            let (scales, mins) = super::kquant_order::q4k_scales_mins(&wb[4..16]);
            // Σ_j bsums[j] · mins[j / 2]: 16 i16 sums against the mins, each used twice.
            let bsums = _mm256_loadu_si256(ab.as_ptr().add(4 + QK_K) as *const __m256i);
            let mins16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(
                _mm_loadl_epi64(mins.as_ptr() as *const __m128i),
                _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7),
            ));
            let prod = _mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, mins16));
            acc_m = _mm256_fmadd_ps(_mm256_set1_ps(dmin), prod, acc_m);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                sumi = _mm256_add_epi32(sumi, q4k_sumi_64(wb, ab, &scales, j));
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
    }
    hsum_f32_8(acc) - hsum_f32_8(acc_m)
}

/// llama.cpp's `ggml_vec_dot_q6_K_q8_K` order: per block, `fma(d, lanes, acc)` over the 8 lanes
/// of [`q6k_sumi`], reduced with `hsum_float_8` at the end.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_K;
    assert!(w.len() >= nb * 210 && a.len() >= nb * 292);
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        let (wb, ab) = (&w[i * 210..(i + 1) * 210], &a[i * 292..(i + 1) * 292]);
        // SAFETY: wb/ab are whole blocks.
        unsafe {
            let d = load_f16(wb.as_ptr().add(208)) * (ab.as_ptr() as *const f32).read_unaligned();
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q6k_sumi(wb, ab)), acc);
        }
    }
    hsum_f32_8(acc)
}

// ---------------------------------------------------------------------------------------------
// Integer parts of the llama.cpp-order K-quant products (`kquant_order.rs`): plain `fn`s so the
// order code can hold them; `IntKernels::best` hands them out only after detecting AVX2.

/// AVX2 twin of `kquant_order::q4k_ints`.
pub(super) fn q4k_ints(w: &[u8], a: &[u8]) -> super::kquant_order::Q4KInts {
    assert!(w.len() >= 144 && a.len() >= 292);
    // SAFETY: only reachable through `IntKernels::best`, which checked for AVX2/FMA/F16C; the
    // lengths were checked above.
    unsafe { q4k_ints_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_ints_avx2(w: &[u8], a: &[u8]) -> super::kquant_order::Q4KInts {
    let (sc, mn) = super::kquant_order::q4k_scales_mins(&w[4..16]);
    let mut out = super::kquant_order::Q4KInts::default();
    for j in 0..4 {
        // SAFETY: whole blocks (asserted by the caller).
        out.isum[j] = hsum_i32_8(unsafe { q4k_sumi_64(w, a, &sc, j) });
        out.imin[j] = super::kquant_order::q4k_imin(&mn, a, j);
    }
    out
}

/// AVX2 twin of `kquant_order::q6k_lanes` (the lanes of `ggml_vec_dot_q6_K_q8_K`).
pub(super) fn q6k_lanes(w: &[u8], a: &[u8]) -> [i32; 8] {
    assert!(w.len() >= 210 && a.len() >= 292);
    // SAFETY: as for `q4k_ints`.
    unsafe { q6k_lanes_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_lanes_avx2(w: &[u8], a: &[u8]) -> [i32; 8] {
    let mut lanes = [0i32; 8];
    // SAFETY: whole blocks (asserted by the caller); lanes holds 8 i32.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, q6k_sumi(w, a)) };
    lanes
}

/// One Q6_K × Q8_K block pair (210/292 bytes) as the 8 i32 lanes of `ggml_vec_dot_q6_K_q8_K`:
/// lane `k` holds bytes `4k..4k+4` of every 32-element chunk, `Σ scale · q6 · q8` with the
/// unsigned 6-bit `q6`, minus `32 · Σ scale · q8` over elements `32k..32k+32` (from `bsums`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q6k_sumi(w: &[u8], a: &[u8]) -> __m256i {
    let m4 = _mm256_set1_epi8(0x0F);
    let sc = &w[192..208];
    // SAFETY: every load below stays inside the 210-byte and 292-byte blocks.
    unsafe {
        let scales = _mm_loadu_si128(sc.as_ptr() as *const __m128i);
        let bsums = _mm256_loadu_si256(a.as_ptr().add(260) as *const __m256i);
        let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, _mm256_cvtepi8_epi16(scales)));
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let ql1 = _mm256_loadu_si256(w.as_ptr().add(64 * h) as *const __m256i);
            let ql2 = _mm256_loadu_si256(w.as_ptr().add(64 * h + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(w.as_ptr().add(128 + 32 * h) as *const __m256i);
            // Elements 128h + 32k + l: 4 low bits from ql, 2 high bits from qh, unsigned 0..63.
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(ql1, m4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(qh, _mm256_set1_epi8(0x03))),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql2, m4),
                    _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0x0C))),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                    _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql2), m4),
                    _mm256_srli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0xC0u8 as i8))),
                ),
            ];
            for (k, &qk) in q.iter().enumerate() {
                let q8 = _mm256_loadu_si256(a.as_ptr().add(4 + 128 * h + 32 * k) as *const __m256i);
                let s = 8 * h + 2 * k;
                let scv = _mm256_set_m128i(_mm_set1_epi16(sc[s + 1] as i8 as i16), _mm_set1_epi16(sc[s] as i8 as i16));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(qk, q8), scv));
            }
        }
        _mm256_sub_epi32(sumi, offset)
    }
}

/// AVX2 twin of `kquant_order::q5k_ints` (the lanes of `ggml_vec_dot_q5_K_q8_K`).
pub(super) fn q5k_ints(w: &[u8], a: &[u8]) -> super::kquant_order::Q5KInts {
    assert!(w.len() >= 176 && a.len() >= 292);
    // SAFETY: as for `q4k_ints`.
    unsafe { q5k_ints_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5k_ints_avx2(w: &[u8], a: &[u8]) -> super::kquant_order::Q5KInts {
    let (sc, mn) = super::kquant_order::q4k_scales_mins(&w[4..16]);
    let (m4, one) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(1));
    let mut out = super::kquant_order::Q5KInts::default();
    // SAFETY: every load stays inside the 176-byte and 292-byte blocks (asserted by the caller);
    // lanes holds 8 i32.
    unsafe {
        let qh = _mm256_loadu_si256(w.as_ptr().add(16) as *const __m256i);
        // Bit `b` of every qh byte as 16 (a 16-bit shift moves each byte's bits within it, and
        // the mask keeps bit 0 of each byte).
        let high = |b: i32| _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(b)), one));
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let qs = _mm256_loadu_si256(w.as_ptr().add(48 + 32 * j) as *const __m256i);
            let lo = _mm256_or_si256(_mm256_and_si256(qs, m4), high(2 * j as i32));
            let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(qs), m4), high(2 * j as i32 + 1));
            let y = |h: usize| _mm256_loadu_si256(a.as_ptr().add(4 + 64 * j + 32 * h) as *const __m256i);
            // u5 · i8 pairs fit in i16 (2 · 31 · 128); `vpmaddwd` with the scale sums each 4.
            let p = |q: __m256i, h: usize, s: u8| {
                _mm256_madd_epi16(_mm256_maddubs_epi16(q, y(h)), _mm256_set1_epi16(s as i16))
            };
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p(lo, 0, sc[2 * j]), p(hi, 1, sc[2 * j + 1])));
        }
        _mm256_storeu_si256(out.lanes.as_mut_ptr() as *mut __m256i, sumi);
    }
    out.imin = (0..4).map(|j| super::kquant_order::q4k_imin(&mn, a, j)).sum();
    out
}
