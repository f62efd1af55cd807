//! AVX2 dot products of one weight row with 4 tokens at once, for the 32-element formats
//! (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): each weight block is loaded, unpacked and scaled once for the
//! 4 tokens, which is most of a single product's work in prefill.
//!
//! Every token keeps its own accumulator and sums in exactly the order of the single-token
//! kernels (`x86_avx2.rs`, llama.cpp's order, `legacy_dot.rs`), so the results are the same bits
//! (tests/quant_llama_order.rs).

#![allow(clippy::missing_safety_doc)]

use super::x86_avx2::{bytes_from_bits_32, bytes_from_nibbles_32, hsum_f32_8, load_f16, mul_sum_us8_pairs_float};
use super::QType;
use std::arch::x86_64::*;

/// Tokens per call.
pub const TOKENS: usize = 4;

/// `[Σ w · a[t]; 4]` over `n` weights: `w` is a row of weight blocks, each `a[t]` a token's
/// activation blocks (Q8_0 or Q8_1, the weight type's partner).
pub type DotX4Fn = unsafe fn(n: usize, w: &[u8], a: [&[u8]; TOKENS]) -> [f32; TOKENS];

/// The 4-token kernel for `qtype`, if it is a 32-element format and this CPU has AVX2.
pub fn dot_x4_fn(qtype: QType) -> Option<DotX4Fn> {
    if !super::x86_avx2_detected() {
        return None;
    }
    Some(match qtype {
        QType::Q4_0 => dot_x4::<Q4_0>,
        QType::Q4_1 => dot_x4::<Q4_1>,
        QType::Q5_0 => dot_x4::<Q5_0>,
        QType::Q5_1 => dot_x4::<Q5_1>,
        QType::Q8_0 => dot_x4::<Q8_0>,
        _ => return None,
    })
}

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_x4<const K: u8>(n: usize, w: &[u8], a: [&[u8]; TOKENS]) -> [f32; TOKENS] {
    // Block bytes; Q4_1/Q5_1 carry a minimum and pair with Q8_1 (d, s, qs), the others with Q8_0.
    let (w_bytes, with_min) = match K {
        Q4_0 => (18, false),
        Q4_1 => (20, true),
        Q5_0 => (22, false),
        Q5_1 => (24, true),
        _ => (34, false),
    };
    let (a_bytes, a_qs) = if with_min { (36, 4) } else { (34, 2) };
    let nb = n / 32;
    assert!(w.len() >= nb * w_bytes && a.iter().all(|a| a.len() >= nb * a_bytes));
    let mut acc = [_mm256_setzero_ps(); TOKENS];
    let mut summs = [0f32; TOKENS];
    for i in 0..nb {
        // SAFETY: block i lies inside `w` and every `a[t]` (asserted above).
        unsafe {
            let wp = w.as_ptr().add(i * w_bytes);
            let dw = load_f16(wp);
            let qx = match K {
                Q4_0 => _mm256_sub_epi8(bytes_from_nibbles_32(wp.add(2)), _mm256_set1_epi8(8)),
                Q4_1 => bytes_from_nibbles_32(wp.add(4)),
                Q5_0 => _mm256_or_si256(
                    bytes_from_nibbles_32(wp.add(6)),
                    _mm256_andnot_si256(bytes_from_bits_32(wp.add(2)), _mm256_set1_epi8(0xF0u8 as i8)),
                ),
                Q5_1 => _mm256_or_si256(
                    bytes_from_nibbles_32(wp.add(8)),
                    _mm256_and_si256(bytes_from_bits_32(wp.add(4)), _mm256_set1_epi8(0x10)),
                ),
                _ => _mm256_loadu_si256(wp.add(2) as *const __m256i),
            };
            // Signed weights: |x| as the unsigned operand, x's sign moved onto y (per token).
            let ax = if with_min { qx } else { _mm256_sign_epi8(qx, qx) };
            for t in 0..TOKENS {
                let ap = a[t].as_ptr().add(i * a_bytes);
                if with_min {
                    summs[t] += load_f16(wp.add(2)) * load_f16(ap.add(2));
                }
                let d = _mm256_set1_ps(dw * load_f16(ap));
                let qy = _mm256_loadu_si256(ap.add(a_qs) as *const __m256i);
                let sy = if with_min { qy } else { _mm256_sign_epi8(qy, qx) };
                acc[t] = _mm256_fmadd_ps(d, mul_sum_us8_pairs_float(ax, sy), acc[t]);
            }
        }
    }
    std::array::from_fn(|t| if with_min { hsum_f32_8(acc[t]) + summs[t] } else { hsum_f32_8(acc[t]) })
}
