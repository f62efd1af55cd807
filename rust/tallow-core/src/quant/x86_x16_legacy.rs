//! Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 tiles of 16 rows × 1 or 2 tokens (see `x86_x16.rs`).
//!
//! llama.cpp's AVX2 `ggml_vec_dot_*` keeps 8 f32 lanes per product, lane `k` taking elements
//! `4k..4k + 4` of every block, and reduces them with `hsum_float_8` at the end
//! (`legacy_dot.rs`). Here each of those 8 lanes is a vector over the 16 rows, so the f32 steps
//! are the same operations lane by lane. The integer sums are the same too, formed differently:
//! `vpdpbusd` wants unsigned weights, so signed ones are offset (`q = u - bias`) and the
//! accumulator starts at `-bias · Σ y` of the lane's 4 activations, taken from a table
//! `matmul` computes once per product (`TileArgs::a_offsets`).
//!
//! Q4_0 (which x16 holds only with a multiple of 16 rows) takes the order of llama.cpp's
//! repacked Q4_0 instead (`legacy_dot.rs`): one accumulator, one fma per block
//! ([`q4_0_blocks`]).

#![allow(clippy::missing_safety_doc)]

use super::x86_legacy_tile::TileArgs;
use super::x86_x16::{bcast_i32, load};
use std::arch::x86_64::*;

pub(super) const Q4_1: u8 = 1;
pub(super) const Q5_0: u8 = 2;
pub(super) const Q5_1: u8 = 3;
pub(super) const Q8_0: u8 = 4;

/// Bit 4 of byte `i` set where bit `i` of the index is (index: the low 4 bits of each lane),
/// for `vpermd`: a Q5 lane's 4 high bits, spread onto its 4 quants.
const fn spread_bit4() -> [u32; 16] {
    let mut t = [0u32; 16];
    let mut v = 0;
    while v < 16 {
        let mut i = 0;
        while i < 4 {
            if v >> i & 1 == 1 {
                t[v] |= 1 << (8 * i + 4);
            }
            i += 1;
        }
        v += 1;
    }
    t
}
static SPREAD_BIT4: [u32; 16] = spread_bit4();

/// `T` tokens × 16 rows over `nb` blocks of type `K`: `args.w` is a group's first group block,
/// group blocks are `args.b_stride` bytes apart (`w_stride` is unused); activation rows are
/// Q8_1 for Q4_1/Q5_1, Q8_0 for the others, with their scales in `args.a_scales`; Q5_0 and
/// Q8_0 require `args.a_offsets`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn legacy<const K: u8, const T: usize>(nb: usize, args: &TileArgs) {
    let TileArgs { w, b_stride, a, a_stride, out, out_stride, a_offsets, a_scales, .. } = *args;
    let with_min = matches!(K, Q4_1 | Q5_1);
    // Bytes of an activation block, offset of its quants, f32 scales per block in a_scales.
    let (a_bytes, a_qs, n_scales) = if with_min { (36, 4, 2) } else { (34, 2, 1) };
    // Group block fields (x16.rs): d at 0, then m, qh and qs where the type has them.
    let (qh_at, qs_at) = match K {
        Q4_1 => (0, 64),
        Q5_0 => (32, 96),
        Q5_1 => (64, 128),
        _ => (0, 32),
    };
    // Signed quants as unsigned ones, q = u - bias (16 for Q5_0, 128 for Q8_0).
    let signed = matches!(K, Q5_0 | Q8_0);
    // SAFETY (whole body): the caller guarantees `nb` group blocks at `w`, T activation rows
    // of `nb` blocks, and 16 outputs per token, on a CPU with the enabled features.
    unsafe {
        let m4 = _mm512_set1_epi8(0x0f);
        let mut acc = [[_mm512_setzero_ps(); 8]; T];
        let mut summs = [_mm512_setzero_ps(); T];
        for i in 0..nb {
            let g = w.add(i * b_stride);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(g as *const __m256i));
            // Unsigned quants of lane k (elements 4k..4k + 4) of all 16 rows.
            let q: [__m512i; 8] = if K == Q8_0 {
                std::array::from_fn(|k| load(g.add(qs_at + 64 * k))) // stored as q + 128 (x16.rs)
            } else {
                let c: [__m512i; 4] = std::array::from_fn(|c| load(g.add(qs_at + 64 * c)));
                let mut q: [__m512i; 8] = std::array::from_fn(|k| {
                    if k < 4 {
                        _mm512_and_si512(c[k], m4)
                    } else {
                        _mm512_and_si512(_mm512_srli_epi16::<4>(c[k - 4]), m4)
                    }
                });
                if matches!(K, Q5_0 | Q5_1) {
                    let (qh, spread) = (load(g.add(qh_at)), load(SPREAD_BIT4.as_ptr() as *const u8));
                    for (k, q) in q.iter_mut().enumerate() {
                        let bits = _mm512_srlv_epi32(qh, _mm512_set1_epi32(4 * k as i32));
                        *q = _mm512_or_si512(*q, _mm512_permutexvar_epi32(bits, spread));
                    }
                }
                q
            };
            let mw = if with_min { _mm512_cvtph_ps(_mm256_loadu_si256(g.add(32) as *const __m256i)) } else { dw };
            for t in 0..T {
                let y = a.add(t * a_stride + i * a_bytes + a_qs);
                let scales = a_scales.add((t * nb + i) * n_scales);
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(*scales)); // as llama.cpp's d0 · d1
                if with_min {
                    // GCC contracts llama.cpp's `summs += m * s` into an fma.
                    summs[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*scales.add(1)), summs[t]);
                }
                // Each lane's accumulator starts at -bias · Σ of its 4 activations (from the table
                // computed once per product; zero for the unsigned types).
                let start = |k: usize| if signed { *a_offsets.add((t * nb + i) * 8 + k) } else { 0 };
                for (k, acc) in acc[t].iter_mut().enumerate() {
                    let dot = _mm512_dpbusd_epi32(_mm512_set1_epi32(start(k)), q[k], bcast_i32(y.add(4 * k)));
                    *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dot), *acc);
                }
            }
        }
        for (t, l) in acc.iter().enumerate() {
            // hsum_float_8's order, lane by lane.
            let s = |a: usize, b: usize| _mm512_add_ps(l[a], l[b]);
            let r = _mm512_add_ps(_mm512_add_ps(s(0, 4), s(2, 6)), _mm512_add_ps(s(1, 5), s(3, 7)));
            let r = if with_min { _mm512_add_ps(r, summs[t]) } else { r };
            _mm512_storeu_ps(out.add(t * out_stride), r);
        }
    }
}

/// Q4_0 in llama.cpp's repacked order: `T` tokens × 16 rows over `nb` blocks, each output
/// adding `fma(Σ_block q · y, d_w · d_y, acc)` once per block (arguments as for [`legacy`],
/// plus `a_offsets`, which this tile requires).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn q4_0_blocks<const T: usize>(nb: usize, args: &TileArgs) {
    let TileArgs { w, b_stride, a, a_stride, out, out_stride, a_offsets, a_scales, .. } = *args;
    // SAFETY (whole body): as for `legacy`.
    unsafe {
        let m4 = _mm512_set1_epi8(0x0f);
        let mut acc = [_mm512_setzero_ps(); T];
        for i in 0..nb {
            let g = w.add(i * b_stride);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(g as *const __m256i));
            let c: [__m512i; 4] = std::array::from_fn(|c| load(g.add(32 + 64 * c)));
            // Quants 0..16 (4 per lane) from the low nibbles, 16..32 from the high ones, as u = q + 8.
            let q: [__m512i; 8] = std::array::from_fn(|k| {
                if k < 4 {
                    _mm512_and_si512(c[k], m4)
                } else {
                    _mm512_and_si512(_mm512_srli_epi16::<4>(c[k - 4]), m4)
                }
            });
            for (t, acc) in acc.iter_mut().enumerate() {
                let y = a.add(t * a_stride + i * 34 + 2);
                // Σ (u - 8) · y = Σ u · y - 8 · Σ y: the accumulators start at -8 · Σ y (from
                // the table computed once per product).
                let mut isum = [_mm512_set1_epi32(*a_offsets.add(t * nb + i)), _mm512_setzero_si512()];
                for (k, q) in q.iter().enumerate() {
                    isum[k % 2] = _mm512_dpbusd_epi32(isum[k % 2], *q, bcast_i32(y.add(4 * k)));
                }
                let isum = _mm512_add_epi32(isum[0], isum[1]);
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(*a_scales.add(t * nb + i))); // d_w · d_y
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), d, *acc);
            }
        }
        for (t, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(t * out_stride), *acc);
        }
    }
}
