//! Q4_K × Q8_K tiles of 16 rows × 1 to 4 tokens with AVX-512 VNNI, on weights repacked by
//! `q4k_x16.rs`: lane `r` of every vector belongs to row `r`, so each 64-byte load of quants
//! feeds 16 rows, each token's 4 activation bytes are broadcast into `vpdpbusd`, and the 16
//! results are stored with one instruction. No horizontal sums.
//!
//! Each lane sums in the f32 order of the llama.cpp path the token takes (`kquant_order.rs`):
//! the integer parts are exact in any order, and the f32 steps are the same operations, lane
//! by lane. [`KOrder::Q4KGemm`] adds once per 64 elements, [`KOrder::Q4KGemv`] once per block;
//! tests/quant_llama_order.rs checks the bits against `kquant_order::row_dot`.
//!
//! [`KOrder::Q4KGemm`]: super::kquant_order::KOrder::Q4KGemm
//! [`KOrder::Q4KGemv`]: super::kquant_order::KOrder::Q4KGemv

#![allow(clippy::missing_safety_doc)]

use super::q4k_x16::GROUP_BLOCK;
use super::x86_legacy_tile::{TileArgs, TileFn};
use std::arch::x86_64::*;

/// Bytes of a Q8_K block: `d: f32, qs: [i8; 256], bsums: [i16; 16]`.
const Q8_K_BYTES: usize = 292;

/// The Q4_K tiles, where this CPU has AVX-512 VNNI.
#[derive(Clone, Copy)]
pub struct Q4KTiles(());

impl Q4KTiles {
    pub fn detect() -> Option<Q4KTiles> {
        (super::x86_avx2_detected() && super::x86_avx512::detected()).then_some(Q4KTiles(()))
    }

    /// The tile for `tokens` (1 to 4) tokens in llama.cpp's GEMM order (`gemm`, tokens in
    /// groups of 4) or its GEMV order (the others).
    pub fn tile(self, tokens: usize, gemm: bool) -> TileFn {
        match (tokens, gemm) {
            (4, true) => tile::<4, true>,
            (1, _) => tile::<1, false>,
            (2, _) => tile::<2, false>,
            (3, _) => tile::<3, false>,
            _ => panic!("no Q4_K tile for {tokens} tokens (gemm: {gemm})"),
        }
    }
}

/// `_mm512_shuffle_epi8` indices that take byte `b` of every 32-bit lane, zero-extended into
/// the lane (`pair`: into both of its 16-bit halves, for `vpmaddwd`).
const fn pick(b: u8, pair: bool) -> [u8; 64] {
    let mut idx = [0x80u8; 64];
    let mut i = 0;
    while i < 16 {
        let lane = (i % 4) as u8 * 4; // the lane's first byte within its 128-bit half
        idx[4 * i] = lane + b;
        if pair {
            idx[4 * i + 2] = lane + b;
        }
        i += 1;
    }
    idx
}

static PICK: [[u8; 64]; 4] = [pick(0, false), pick(1, false), pick(2, false), pick(3, false)];
static PICK_PAIR: [[u8; 64]; 4] = [pick(0, true), pick(1, true), pick(2, true), pick(3, true)];

#[inline(always)]
unsafe fn load(p: *const u8) -> __m512i {
    unsafe { _mm512_loadu_si512(p as *const _) }
}

#[inline(always)]
unsafe fn bcast_i32(p: *const u8) -> __m512i {
    unsafe { _mm512_set1_epi32((p as *const i32).read_unaligned()) }
}

/// `T` tokens × 16 rows over `nb` blocks: `args.w` is a group's first group block, group
/// blocks are `args.b_stride` bytes apart (`w_stride` is unused), activation rows are Q8_K.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile<const T: usize, const GEMM: bool>(nb: usize, args: &TileArgs) {
    let TileArgs { w, b_stride, a, a_stride, out, out_stride, .. } = *args;
    debug_assert!(b_stride >= GROUP_BLOCK);
    // SAFETY (whole body): the caller guarantees `nb` group blocks at `w`, T activation rows
    // of `nb` Q8_K blocks, and 16 outputs per token, on a CPU with the enabled features.
    unsafe {
        let (m4, m6, m30) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x3f), _mm512_set1_epi8(0x30));
        let mut acc = [_mm512_setzero_ps(); T];
        let mut acc_min = [_mm512_setzero_ps(); T];
        for i in 0..nb {
            let g = w.add(i * b_stride);
            let ap = |t: usize| a.add(t * a_stride + i * Q8_K_BYTES);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(g as *const __m256i));
            let dmw = _mm512_cvtph_ps(_mm256_loadu_si256(g.add(32) as *const __m256i));
            let d: [__m512; T] = std::array::from_fn(|t| _mm512_mul_ps(dw, _mm512_set1_ps(*(ap(t) as *const f32))));
            let dmin: [__m512; T] = std::array::from_fn(|t| _mm512_mul_ps(dmw, _mm512_set1_ps(*(ap(t) as *const f32))));
            // The six-bit scales and minimums, byte `s % 4` of lane r: sub-blocks 0..4 in [0],
            // 4..8 in [1] (GGML's `get_scale_min_k4`, on all rows at once).
            let (u0, u1, u2) = (load(g.add(64)), load(g.add(128)), load(g.add(192)));
            let hi2 = |u: __m512i| _mm512_and_si512(_mm512_srli_epi32::<2>(u), m30);
            let sc = [_mm512_and_si512(u0, m6), _mm512_or_si512(_mm512_and_si512(u2, m4), hi2(u0))];
            let mn =
                [_mm512_and_si512(u1, m6), _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32::<4>(u2), m4), hi2(u1))];
            let mut isum_block = [_mm512_setzero_si512(); T];
            let mut imin_block = [_mm512_setzero_si512(); T];
            for j in 0..4 {
                // Sub-blocks 2j (low nibbles) and 2j + 1 (high nibbles).
                let b = 2 * j % 4;
                let (sc_lo, sc_hi) = (
                    _mm512_shuffle_epi8(sc[j / 2], load(PICK[b].as_ptr())),
                    _mm512_shuffle_epi8(sc[j / 2], load(PICK[b + 1].as_ptr())),
                );
                let (mn_lo, mn_hi) = (
                    _mm512_shuffle_epi8(mn[j / 2], load(PICK_PAIR[b].as_ptr())),
                    _mm512_shuffle_epi8(mn[j / 2], load(PICK_PAIR[b + 1].as_ptr())),
                );
                // Two accumulators per sub-block and token: shorter dependency chains.
                let mut lo = [[_mm512_setzero_si512(); 2]; T];
                let mut hi = [[_mm512_setzero_si512(); 2]; T];
                for k in 0..8 {
                    let q = load(g.add(256 + (8 * j + k) * 64));
                    let (ql, qh) = (_mm512_and_si512(q, m4), _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4));
                    for t in 0..T {
                        let y = ap(t).add(4 + 64 * j + 4 * k);
                        lo[t][k % 2] = _mm512_dpbusd_epi32(lo[t][k % 2], ql, bcast_i32(y));
                        hi[t][k % 2] = _mm512_dpbusd_epi32(hi[t][k % 2], qh, bcast_i32(y.add(32)));
                    }
                }
                for t in 0..T {
                    let lo = _mm512_add_epi32(lo[t][0], lo[t][1]);
                    let hi = _mm512_add_epi32(hi[t][0], hi[t][1]);
                    let isum = _mm512_add_epi32(_mm512_mullo_epi32(lo, sc_lo), _mm512_mullo_epi32(hi, sc_hi));
                    // min · (sum of the sub-block's activations), from the 16-element sums.
                    let bs = ap(t).add(4 + 256 + 8 * j);
                    let imin = _mm512_add_epi32(
                        _mm512_madd_epi16(mn_lo, bcast_i32(bs)),
                        _mm512_madd_epi16(mn_hi, bcast_i32(bs.add(4))),
                    );
                    if GEMM {
                        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), d[t], acc[t]);
                        acc_min[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(imin), dmin[t], acc_min[t]);
                    } else {
                        isum_block[t] = _mm512_add_epi32(isum_block[t], isum);
                        imin_block[t] = _mm512_add_epi32(imin_block[t], imin);
                    }
                }
            }
            if !GEMM {
                for t in 0..T {
                    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum_block[t]), d[t], acc[t]);
                    acc_min[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(imin_block[t]), dmin[t], acc_min[t]);
                }
            }
        }
        for t in 0..T {
            _mm512_storeu_ps(out.add(t * out_stride), _mm512_sub_ps(acc[t], acc_min[t]));
        }
    }
}
