//! Tiles of weight rows × tokens for the 32-element formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0):
//! each weight block is unpacked once for all the tile's tokens, each activation block loaded
//! once for all its rows, and the tile's independent accumulators keep the FMA units busy where
//! a single product waits on its one accumulator chain (decode spends most of its time there).
//!
//! Every (row, token) keeps its own 8-lane accumulator and sums in exactly the order of
//! llama.cpp's `ggml_vec_dot_*` for AVX2 (`legacy_dot.rs`), so a tile's results are the bits of
//! the single products (tests/quant_llama_order.rs); Q4_0 weights that llama.cpp repacks take
//! its repacked order instead, one accumulator and one fma per block ([`LegacyTiles::for_weight`]). With AVX-512 VNNI, `vpdpbusd` replaces
//! `maddubs` + `madd`, as in llama.cpp's native build: the integer sums are the same (nothing
//! saturates), and the 32 vector registers hold a 4 × 4 tile.

#![allow(clippy::missing_safety_doc)]

use super::x86_avx2::{bytes_from_bits_32, bytes_from_nibbles_32, hsum_f32_8, load_f16};
use super::QType;
use std::arch::x86_64::*;

/// Where a tile's operands lie. Weight row `r` of the tile starts at `w + r * w_stride`
/// bytes and its blocks are `b_stride` bytes apart (the block size row after row, 4 block sizes
/// in the interleaved layout); activation row `t` (Q8_1 for Q4_1/Q5_1, Q8_0 for the others)
/// starts at `a + t * a_stride`; output `(r, t)` goes to `out[t * out_stride + r]`.
#[derive(Clone, Copy)]
pub struct TileArgs {
    pub w: *const u8,
    pub w_stride: usize,
    pub b_stride: usize,
    pub a: *const u8,
    pub a_stride: usize,
    pub out: *mut f32,
    pub out_stride: usize,
    /// Accumulator starts that undo the offset of signed weights, from `a`'s first token: per
    /// activation block one (Q4_0: `-8 · Σ y`) or one per 4-element lane (Q5_0, Q8_0:
    /// `-bias · Σ y`), `nb` blocks per token; for Q4_K, four words per Q8_K block, each the
    /// sums of two 32-element sub-blocks as a pair of i16. Read by the x16 tiles of those
    /// types; null for the others.
    pub a_offsets: *const i32,
    /// The activation blocks' f16 scales as f32, from `a`'s first token, `nb` blocks per token:
    /// `d` per Q8_0 block, `d, s` per Q8_1 block. Read by the x16 tiles of the 32-element
    /// formats (a broadcast f32 operand costs a load; converting an f16 per block and token
    /// cost the tile a tenth of its time); null for the others.
    pub a_scales: *const f32,
}

/// Computes one tile, `Σ w[r] · a[t]` over `nb` blocks for each of its rows `r` and tokens `t`.
pub type TileFn = unsafe fn(nb: usize, args: &TileArgs);

/// The tile shapes of one weight type on this CPU. The 4 × 4 tile exists only with AVX-512
/// (16 accumulators need its 32 registers).
#[derive(Clone, Copy)]
pub struct LegacyTiles {
    r1t1: TileFn,
    r4t1: TileFn,
    r1t4: TileFn,
    r4t4: Option<TileFn>,
}

impl LegacyTiles {
    /// The tiles for `qtype`, if it is a 32-element format and this CPU has AVX2; with
    /// `avx512` (ignored unless the CPU has AVX-512 VNNI), the VNNI tiles.
    pub fn for_type(qtype: QType, avx512: bool) -> Option<LegacyTiles> {
        Self::tiles(qtype, false, avx512)
    }

    /// [`Self::for_type`] for a weight of `rows` rows: Q4_0 in llama.cpp's repacked order where
    /// it repacks (`legacy_dot::q4_0_repacked`).
    pub fn for_weight(qtype: QType, rows: usize, avx512: bool) -> Option<LegacyTiles> {
        Self::tiles(qtype, super::legacy_dot::q4_0_repacked(qtype, rows), avx512)
    }

    fn tiles(qtype: QType, blocks_order: bool, avx512: bool) -> Option<LegacyTiles> {
        if !super::x86_avx2_detected() {
            return None;
        }
        let vnni = avx512 && super::x86_avx512::detected();
        macro_rules! pick {
            ($k:expr) => {
                if vnni {
                    LegacyTiles {
                        r1t1: tile_vnni::<$k, 1, 1>,
                        r4t1: tile_vnni::<$k, 4, 1>,
                        r1t4: tile_vnni::<$k, 1, 4>,
                        r4t4: Some(tile_vnni::<$k, 4, 4>),
                    }
                } else {
                    LegacyTiles {
                        r1t1: tile_avx2::<$k, 1, 1>,
                        r4t1: tile_avx2::<$k, 4, 1>,
                        r1t4: tile_avx2::<$k, 1, 4>,
                        r4t4: None,
                    }
                }
            };
        }
        Some(match qtype {
            QType::Q4_0 if blocks_order => pick!(Q4_0_BLOCKS),
            QType::Q4_0 => pick!(Q4_0),
            QType::Q4_1 => pick!(Q4_1),
            QType::Q5_0 => pick!(Q5_0),
            QType::Q5_1 => pick!(Q5_1),
            QType::Q8_0 => pick!(Q8_0),
            _ => return None,
        })
    }

    /// Rows per tile for a product of `n_tokens` tokens: 4, except in prefill without the
    /// 4 × 4 tile, where 1 row × 4 tokens (AVX2's 16 registers) is the better shape.
    pub fn row_group(&self, n_tokens: usize) -> usize {
        if n_tokens >= 4 && self.r4t4.is_none() {
            1
        } else {
            4
        }
    }

    /// The tile of `rows` × `tokens`, each 1 or 4; 4 × 4 only where [`Self::row_group`] is 4.
    pub fn tile(&self, rows: usize, tokens: usize) -> TileFn {
        match (rows, tokens) {
            (4, 4) => self.r4t4.expect("4 x 4 tiles need AVX-512"),
            (4, _) => self.r4t1,
            (_, 4) => self.r1t4,
            _ => self.r1t1,
        }
    }
}

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;
/// Q4_0 in llama.cpp's repacked order.
const Q4_0_BLOCKS: u8 = 5;

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<const K: u8, const R: usize, const T: usize>(nb: usize, args: &TileArgs) {
    unsafe { tile::<K, R, T, false>(nb, args) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_vnni<const K: u8, const R: usize, const T: usize>(nb: usize, args: &TileArgs) {
    unsafe { tile::<K, R, T, true>(nb, args) }
}

/// The body of every tile, inlined into a wrapper that enables the instruction set.
#[inline(always)]
unsafe fn tile<const K: u8, const R: usize, const T: usize, const VNNI: bool>(nb: usize, args: &TileArgs) {
    let TileArgs { w, w_stride, b_stride, a, a_stride, out, out_stride, .. } = *args;
    // Q4_1/Q5_1 carry a minimum and pair with Q8_1 (d, s, qs), the others with Q8_0 (d, qs).
    let with_min = matches!(K, Q4_1 | Q5_1);
    let (a_bytes, a_qs) = if with_min { (36, 4) } else { (34, 2) };
    // SAFETY (whole body): the caller guarantees R rows and T activation rows of `nb` blocks
    // at the given strides, and the T × R outputs, on a CPU with the wrapper's features.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        // Σ m·s per token, lane r for row r (R <= 4): one fma serves every row.
        let mut summs = [_mm_setzero_ps(); T];
        for i in 0..nb {
            let mut ax = [_mm256_setzero_si256(); R];
            let mut qx = [_mm256_setzero_si256(); R];
            let mut dw = [_mm256_setzero_ps(); R];
            let mut mw = [0f32; 4];
            for r in 0..R {
                let wp = w.add(r * w_stride + i * b_stride);
                dw[r] = _mm256_set1_ps(load_f16(wp));
                if with_min {
                    mw[r] = load_f16(wp.add(2));
                }
                qx[r] = match K {
                    Q4_0 | Q4_0_BLOCKS => _mm256_sub_epi8(bytes_from_nibbles_32(wp.add(2)), _mm256_set1_epi8(8)),
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
                // Signed weights: |x| is the unsigned operand, x's sign moves onto y.
                ax[r] = if with_min { qx[r] } else { _mm256_sign_epi8(qx[r], qx[r]) };
            }
            let mw = _mm_loadu_ps(mw.as_ptr());
            for t in 0..T {
                let ap = a.add(t * a_stride + i * a_bytes);
                let da = _mm256_set1_ps(load_f16(ap));
                if with_min {
                    // GCC contracts llama.cpp's `summs += m * s` into an fma.
                    summs[t] = _mm_fmadd_ps(mw, _mm_set1_ps(load_f16(ap.add(2))), summs[t]);
                }
                let qy = _mm256_loadu_si256(ap.add(a_qs) as *const __m256i);
                for r in 0..R {
                    let sy = if with_min { qy } else { _mm256_sign_epi8(qy, qx[r]) };
                    let sums = if VNNI {
                        _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax[r], sy)
                    } else {
                        _mm256_madd_epi16(_mm256_maddubs_epi16(ax[r], sy), _mm256_set1_epi16(1))
                    };
                    let d = _mm256_mul_ps(dw[r], da); // d_w · d_a, as llama.cpp's d0d1
                    acc[r][t] = if K == Q4_0_BLOCKS {
                        // The block's whole integer sum in every lane; lane 0 is the result.
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_set1_epi32(hsum_i32_8(sums))), d, acc[r][t])
                    } else {
                        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sums), acc[r][t])
                    };
                }
            }
        }
        for t in 0..T {
            let mut m = [0f32; 4];
            _mm_storeu_ps(m.as_mut_ptr(), summs[t]);
            for r in 0..R {
                let s = if K == Q4_0_BLOCKS { _mm256_cvtss_f32(acc[r][t]) } else { hsum_f32_8(acc[r][t]) };
                *out.add(t * out_stride + r) = if with_min { s + m[r] } else { s };
            }
        }
    }
}

/// Sum of 8 i32 lanes (exact in any order).
#[inline(always)]
unsafe fn hsum_i32_8(v: __m256i) -> i32 {
    // SAFETY: the callers run with AVX2 enabled.
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
    }
}
