//! Activation quantizers that round exactly like llama.cpp's x86 CPU backend.
//!
//! Every product quantizes its f32 input first, and an element that lands on the other side of
//! a rounding boundary moves by a whole quantization step. Such flips compound over the layers,
//! so matching llama.cpp token for token needs the same arithmetic, not just the same format:
//! - Q8_0 / Q8_1 (its AVX2 path): `d = amax / 127` stored as f16, but the elements are scaled by
//!   `127 / amax` (not `1 / d`) and rounded half to even.
//! - Q8_1's `s` is `f16(d · Σq)` with the f32 `d`; candle rounds `Σq` and `d` to f16 first,
//!   which biases every Q4_1/Q5_1 product through the `m · s` term.
//! - Q8_K (its reference path): scaled by `-127 / max` where `max` is the signed element of
//!   largest magnitude, rounded half to even, clamped to 127; `d = 1 / scale` stays f32.
//!
//! Output is raw GGML block bytes, which is also the layout of candle's block types.

use half::f16;

/// Bytes of one Q8_0 block: f16 `d`, 32 × i8.
pub const Q8_0_BYTES: usize = 34;
/// Bytes of one Q8_1 block: f16 `d`, f16 `s`, 32 × i8.
pub const Q8_1_BYTES: usize = 36;
/// Bytes of one Q8_K block: f32 `d`, 256 × i8, 16 × i16 sums of 16.
pub const Q8_K_BYTES: usize = 292;

/// Round half to even, as `_mm256_round_ps(_, _MM_FROUND_TO_NEAREST_INT)` and llama.cpp's
/// `nearest_int` do (Rust's `round` goes half away from zero).
#[inline(always)]
fn round_even(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// Scales one block of 32 by `127 / amax` into `qs`; returns `(d, Σq)`.
#[inline(always)]
fn q8_block(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    let amax = x.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0;
    for (q, &v) in qs.iter_mut().zip(x) {
        let r = round_even(v * id);
        sum += r;
        *q = r as i8 as u8;
    }
    (d, sum)
}

/// `x` (`[32 · n]`) to `n` Q8_0 blocks in `out` (`[34 · n]` bytes).
pub fn quantize_row_q8_0(x: &[f32], out: &mut [u8]) {
    assert_eq!(x.len() / 32 * Q8_0_BYTES, out.len(), "q8_0: {} values into {} bytes", x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the features were detected; the lengths were checked above.
        return unsafe { q8_rows_avx512::<false>(x, out) };
    }
    #[cfg(target_arch = "aarch64")]
    if neon() {
        // SAFETY: NEON is baseline on aarch64; the lengths were checked above.
        return unsafe { q8_rows_neon::<false>(x, out) };
    }
    q8_0_portable(x, out)
}

/// `x` (`[32 · n]`) to `n` Q8_1 blocks in `out` (`[36 · n]` bytes).
pub fn quantize_row_q8_1(x: &[f32], out: &mut [u8]) {
    assert_eq!(x.len() / 32 * Q8_1_BYTES, out.len(), "q8_1: {} values into {} bytes", x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the features were detected; the lengths were checked above.
        return unsafe { q8_rows_avx512::<true>(x, out) };
    }
    #[cfg(target_arch = "aarch64")]
    if neon() {
        // SAFETY: NEON is baseline on aarch64; the lengths were checked above.
        return unsafe { q8_rows_neon::<true>(x, out) };
    }
    q8_1_portable(x, out)
}

/// Whether the AVX-512 quantizers run (`TALLOW_KERNELS=scalar` keeps the portable ones).
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        super::kernels().name() != "scalar"
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("f16c")
    })
}

/// Whether the NEON quantizers run (`TALLOW_KERNELS=scalar` keeps the portable ones).
#[cfg(target_arch = "aarch64")]
fn neon() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| super::kernels().name() != "scalar")
}

/// Q8_0 (`SUM = false`) or Q8_1 blocks of `x` into `out`: [`q8_block`]'s operations, 4 lanes
/// at a time. `x` holds 32 values per block of `out`.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn q8_rows_neon<const SUM: bool>(x: &[f32], out: &mut [u8]) {
    use std::arch::aarch64::*;
    let bytes = if SUM { Q8_1_BYTES } else { Q8_0_BYTES };
    for (xb, ob) in x.chunks_exact(32).zip(out.chunks_exact_mut(bytes)) {
        // SAFETY: xb holds 32 floats, ob `bytes` bytes, the last 32 of them the quants.
        unsafe {
            let v: [float32x4_t; 8] = std::array::from_fn(|i| vld1q_f32(xb.as_ptr().add(4 * i)));
            let amax = amax_neon(&v);
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            // fcvtns: nearest, ties to even; NaN to 0 like the saturating `as`.
            let r: [int32x4_t; 8] = std::array::from_fn(|i| vcvtnq_s32_f32(vmulq_n_f32(v[i], id)));
            let qs = ob.as_mut_ptr().add(bytes - 32);
            vst1q_s8(qs as *mut i8, narrow16(&r[..4]));
            vst1q_s8(qs.add(16) as *mut i8, narrow16(&r[4..]));
            ob[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            if SUM {
                let sum = vaddvq_s32(r.iter().fold(vdupq_n_s32(0), |s, &r| vaddq_s32(s, r)));
                ob[2..4].copy_from_slice(&f16::from_f32(d * sum as f32).to_le_bytes());
            }
        }
    }
}

/// The largest |v| over the vectors `v`, skipping NaN as `f32::max` and the portable `>` do
/// (`fmaxnm`); 0 when there is none.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
#[inline]
fn amax_neon(v: &[std::arch::aarch64::float32x4_t]) -> f32 {
    use std::arch::aarch64::*;
    vmaxnmvq_f32(v.iter().fold(vdupq_n_f32(0.0), |m, &v| vmaxnmq_f32(m, vabsq_f32(v))))
}

/// 16 i32 (four vectors) to 16 bytes, keeping the low byte of each as `as i8` does.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
#[inline]
unsafe fn narrow16(r: &[std::arch::aarch64::int32x4_t]) -> std::arch::aarch64::int8x16_t {
    use std::arch::aarch64::*;
    let half = |a, b| vmovn_s16(vcombine_s16(vmovn_s32(a), vmovn_s32(b)));
    vcombine_s8(half(r[0], r[1]), half(r[2], r[3]))
}

/// Q8_0 (`SUM = false`) or Q8_1 blocks of `x` into `out`: [`q8_block`]'s operations, 16 lanes
/// at a time. `x` holds 32 values per block of `out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn q8_rows_avx512<const SUM: bool>(x: &[f32], out: &mut [u8]) {
    use std::arch::x86_64::*;
    let bytes = if SUM { Q8_1_BYTES } else { Q8_0_BYTES };
    for (xb, ob) in x.chunks_exact(32).zip(out.chunks_exact_mut(bytes)) {
        // SAFETY: xb holds 32 floats, ob `bytes` bytes, the last 32 of them the quants.
        unsafe {
            let (v0, v1) = (_mm512_loadu_ps(xb.as_ptr()), _mm512_loadu_ps(xb.as_ptr().add(16)));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            let d = amax / 127.0;
            let id = _mm512_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
            // Half to even, the default rounding mode.
            const EVEN: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            let r0 = _mm512_cvt_roundps_epi32::<EVEN>(_mm512_mul_ps(v0, id));
            let r1 = _mm512_cvt_roundps_epi32::<EVEN>(_mm512_mul_ps(v1, id));
            let qs = ob.as_mut_ptr().add(bytes - 32);
            _mm_storeu_si128(qs as *mut __m128i, _mm512_cvtepi32_epi8(r0));
            _mm_storeu_si128(qs.add(16) as *mut __m128i, _mm512_cvtepi32_epi8(r1));
            ob[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            if SUM {
                let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(r0, r1));
                ob[2..4].copy_from_slice(&f16::from_f32(d * sum as f32).to_le_bytes());
            }
        }
    }
}

crate::simd::simd_fn! {
    /// [`quantize_row_q8_0`] in plain code (compiled for AVX2 where the CPU has it).
    #[doc(hidden)] // public for tests that run outside libtest (tests/neon_row_dot.rs)
    pub fn q8_0_portable(x: &[f32], out: &mut [u8]) {
        for (xb, ob) in x.chunks_exact(32).zip(out.chunks_exact_mut(Q8_0_BYTES)) {
            let (d, _) = q8_block(xb, &mut ob[2..]);
            ob[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        }
    }
}

crate::simd::simd_fn! {
    /// [`quantize_row_q8_1`] in plain code (compiled for AVX2 where the CPU has it).
    #[doc(hidden)] // public for tests that run outside libtest (tests/neon_row_dot.rs)
    pub fn q8_1_portable(x: &[f32], out: &mut [u8]) {
        for (xb, ob) in x.chunks_exact(32).zip(out.chunks_exact_mut(Q8_1_BYTES)) {
            let (d, sum) = q8_block(xb, &mut ob[4..]);
            ob[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            ob[2..4].copy_from_slice(&f16::from_f32(d * sum as f32).to_le_bytes());
        }
    }
}

/// `x` (`[256 · n]`) to `n` Q8_K blocks in `out` (`[292 · n]` bytes).
pub fn quantize_row_q8_k(x: &[f32], out: &mut [u8]) {
    assert_eq!(x.len() / 256 * Q8_K_BYTES, out.len(), "q8_K: {} values into {} bytes", x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the features were detected; the lengths were checked above.
        return unsafe { q8_k_avx512(x, out) };
    }
    #[cfg(target_arch = "aarch64")]
    if neon() {
        // SAFETY: NEON is baseline on aarch64; the lengths were checked above.
        return unsafe { q8_k_neon(x, out) };
    }
    q8_k_portable(x, out)
}

/// [`q8_k_portable`]'s operations, 16 values at a time: the same bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn q8_k_avx512(x: &[f32], out: &mut [u8]) {
    use std::arch::x86_64::*;
    for (xb, ob) in x.chunks_exact(256).zip(out.chunks_exact_mut(Q8_K_BYTES)) {
        // SAFETY: xb holds 256 floats, ob 292 bytes.
        unsafe {
            let v: [__m512; 16] = std::array::from_fn(|c| _mm512_loadu_ps(xb.as_ptr().add(16 * c)));
            // max_ps returns its second operand when the first is NaN: NaNs are skipped, as the
            // portable `>` skips them.
            let amax =
                _mm512_reduce_max_ps(v.iter().fold(_mm512_setzero_ps(), |m, &v| _mm512_max_ps(_mm512_abs_ps(v), m)));
            if amax == 0.0 || amax.is_nan() {
                q8_k_portable(xb, ob);
                continue;
            }
            // The signed element of largest magnitude: the first one whose |v| is amax.
            let first = v.iter().enumerate().find_map(|(c, &v)| {
                let m = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_abs_ps(v), _mm512_set1_ps(amax));
                (m != 0).then(|| xb[16 * c + m.trailing_zeros() as usize])
            });
            let iscale = -127.0 / first.expect("amax is some element's magnitude");
            let (head, rest) = ob.split_at_mut(4);
            let (qs, bsums) = rest.split_at_mut(256);
            const EVEN: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            for (c, &v) in v.iter().enumerate() {
                let r = _mm512_cvt_roundps_epi32::<EVEN>(_mm512_mul_ps(_mm512_set1_ps(iscale), v));
                let r = _mm512_min_epi32(r, _mm512_set1_epi32(127));
                _mm_storeu_si128(qs.as_mut_ptr().add(16 * c) as *mut __m128i, _mm512_cvtepi32_epi8(r));
                bsums[2 * c..2 * c + 2].copy_from_slice(&(_mm512_reduce_add_epi32(r) as i16).to_le_bytes());
            }
            head.copy_from_slice(&(1.0 / iscale).to_le_bytes());
        }
    }
}

/// [`q8_k_portable`]'s operations, 4 values at a time: the same bytes.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn q8_k_neon(x: &[f32], out: &mut [u8]) {
    use std::arch::aarch64::*;
    for (xb, ob) in x.chunks_exact(256).zip(out.chunks_exact_mut(Q8_K_BYTES)) {
        // SAFETY: xb holds 256 floats, ob 292 bytes.
        unsafe {
            let v: [float32x4_t; 64] = std::array::from_fn(|c| vld1q_f32(xb.as_ptr().add(4 * c)));
            let amax = amax_neon(&v);
            if amax == 0.0 {
                q8_k_portable(xb, ob);
                continue;
            }
            // The signed element of largest magnitude: the first one whose |v| is amax.
            let max = *xb.iter().find(|v| v.abs() == amax).expect("amax is some element's magnitude");
            let iscale = -127.0 / max;
            let (head, rest) = ob.split_at_mut(4);
            let (qs, bsums) = rest.split_at_mut(256);
            for (c, v) in v.chunks_exact(4).enumerate() {
                let r: [int32x4_t; 4] =
                    std::array::from_fn(|k| vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(v[k], iscale)), vdupq_n_s32(127)));
                vst1q_s8(qs.as_mut_ptr().add(16 * c) as *mut i8, narrow16(&r));
                let sum = vaddvq_s32(vaddq_s32(vaddq_s32(r[0], r[1]), vaddq_s32(r[2], r[3])));
                bsums[2 * c..2 * c + 2].copy_from_slice(&(sum as i16).to_le_bytes());
            }
            head.copy_from_slice(&(1.0 / iscale).to_le_bytes());
        }
    }
}

crate::simd::simd_fn! {
    /// [`quantize_row_q8_k`] in plain code (compiled for AVX2 where the CPU has it).
    #[doc(hidden)] // public for tests that run outside libtest (tests/neon_row_dot.rs)
    pub fn q8_k_portable(x: &[f32], out: &mut [u8]) {
        for (xb, ob) in x.chunks_exact(256).zip(out.chunks_exact_mut(Q8_K_BYTES)) {
            // The signed element of largest magnitude (the first one on ties).
            let (mut amax, mut max) = (0.0f32, 0.0f32);
            for &v in xb {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            let (head, rest) = ob.split_at_mut(4);
            let (qs, bsums) = rest.split_at_mut(256);
            if amax == 0.0 {
                head.fill(0);
                qs.fill(0);
                bsums.fill(0);
                continue;
            }
            let iscale = -127.0 / max;
            for (q, &v) in qs.iter_mut().zip(xb) {
                *q = round_even(iscale * v).min(127) as i8 as u8;
            }
            for (j, s) in bsums.chunks_exact_mut(2).enumerate() {
                let sum: i32 = qs[j * 16..(j + 1) * 16].iter().map(|&q| q as i8 as i32).sum();
                s.copy_from_slice(&(sum as i16).to_le_bytes());
            }
            head.copy_from_slice(&(1.0 / iscale).to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i8s(b: &[u8]) -> Vec<i8> {
        b.iter().map(|&q| q as i8).collect()
    }

    #[test]
    fn q8_0_rounds_half_to_even_with_127_over_amax() {
        // amax = 127 makes id = 1 exactly, so 0.5 / 1.5 / 2.5 are exact ties.
        let mut x = [0.0f32; 32];
        x[..5].copy_from_slice(&[127.0, 0.5, 1.5, 2.5, -2.5]);
        let mut out = [0u8; Q8_0_BYTES];
        quantize_row_q8_0(&x, &mut out);
        assert_eq!(f16::from_le_bytes([out[0], out[1]]).to_f32(), 1.0);
        assert_eq!(i8s(&out[2..7]), [127, 0, 2, 2, -2]);
        // All-zero blocks stay zero (no division by zero).
        quantize_row_q8_0(&[0.0; 32], &mut out);
        assert!(out.iter().all(|&b| b == 0));
    }

    /// The AVX-512 quantizers write the portable ones' bytes (ties included).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_quantizers_equal_the_portable_ones() {
        if !avx512() {
            return; // only the portable quantizers run on this CPU
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..500 {
            let x: Vec<f32> = (0..96)
                .map(|i| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Every 3rd round: small integers and halves against amax = 127 (exact ties).
                    if round % 3 == 0 {
                        if i % 32 == 0 {
                            127.0
                        } else {
                            ((seed % 61) as f32 - 30.0) / 2.0
                        }
                    } else {
                        ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * (1 + round % 7) as f32
                    }
                })
                .collect();
            let (mut a, mut b) = (vec![0u8; 3 * Q8_0_BYTES], vec![0u8; 3 * Q8_0_BYTES]);
            q8_0_portable(&x, &mut a);
            // SAFETY: avx512() checked the CPU; 96 values into 3 blocks.
            unsafe { q8_rows_avx512::<false>(&x, &mut b) };
            assert_eq!(a, b, "q8_0 round {round}");
            let (mut a, mut b) = (vec![0u8; 3 * Q8_1_BYTES], vec![0u8; 3 * Q8_1_BYTES]);
            q8_1_portable(&x, &mut a);
            // SAFETY: as above.
            unsafe { q8_rows_avx512::<true>(&x, &mut b) };
            assert_eq!(a, b, "q8_1 round {round}");
        }
    }

    /// The AVX-512 Q8_K quantizer writes the portable one's bytes: ties, a negative element of
    /// largest magnitude, repeated maxima, all-zero blocks.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_q8_k_equals_the_portable_one() {
        if !avx512() {
            return; // only the portable quantizer runs on this CPU
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..300 {
            let mut x: Vec<f32> = (0..512)
                .map(|i| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    match round % 4 {
                        0 => ((seed % 255) as f32 - 127.0) / 2.0, // halves: exact ties
                        1 => -((seed % 7) as f32),                // repeated maxima
                        _ => ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * (1 + i % 9) as f32,
                    }
                })
                .collect();
            if round % 10 == 0 {
                x[..256].fill(0.0); // a zero block, then a normal one
            }
            let (mut a, mut b) = (vec![0u8; 2 * Q8_K_BYTES], vec![0u8; 2 * Q8_K_BYTES]);
            q8_k_portable(&x, &mut a);
            // SAFETY: avx512() checked the CPU; 512 values into 2 blocks.
            unsafe { q8_k_avx512(&x, &mut b) };
            assert_eq!(a, b, "round {round}");
        }
    }

    #[test]
    fn q8_1_sum_uses_the_f32_scale() {
        // d = 3 / 127 is not an f16; s must be f16(d · Σq), not f16(f16(d) · Σq).
        let mut x = [3.0f32; 32];
        x[0] = -3.0;
        let mut out = [0u8; Q8_1_BYTES];
        quantize_row_q8_1(&x, &mut out);
        let d = 3.0f32 / 127.0;
        assert_eq!(f16::from_le_bytes([out[0], out[1]]), f16::from_f32(d));
        assert_eq!(f16::from_le_bytes([out[2], out[3]]), f16::from_f32(d * (30 * 127) as f32));
        assert_eq!(i8s(&out[4..6]), [-127, 127]);
    }

    #[test]
    fn q8_k_scales_by_the_signed_max() {
        // The largest magnitude is negative: iscale = -127 / -127 = 1, so ties are exact.
        let mut x = [0.0f32; 256];
        x[..4].copy_from_slice(&[-127.0, 2.5, 3.5, -0.5]);
        x[17] = 5.5;
        let mut out = [0u8; Q8_K_BYTES];
        quantize_row_q8_k(&x, &mut out);
        let qs = i8s(&out[4..260]);
        assert_eq!((qs[0], qs[1], qs[2], qs[3], qs[17]), (-127, 2, 4, 0, 6));
        assert_eq!(f32::from_le_bytes(out[..4].try_into().unwrap()), 1.0);
        let bsum = |j: usize| i16::from_le_bytes([out[260 + 2 * j], out[261 + 2 * j]]);
        assert_eq!((bsum(0), bsum(1)), (-121, 6));
        // A positive max flips the signs: the max maps to -127 and d is negative.
        x[0] = 127.0;
        quantize_row_q8_k(&x, &mut out);
        assert_eq!((out[4] as i8, out[5] as i8), (-127, -2));
        assert_eq!(f32::from_le_bytes(out[..4].try_into().unwrap()), -1.0);
        // All zero: d = 0 and no division.
        quantize_row_q8_k(&[0.0; 256], &mut out);
        assert!(out.iter().all(|&b| b == 0));
    }
}
