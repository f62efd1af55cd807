//! Q4_K and Q6_K × Q8_K tiles of 16 rows × 1 to 4 tokens (see `x86_x16.rs`).
//!
//! Each lane sums in the f32 order of the llama.cpp path the token takes (`kquant_order.rs`):
//! the integer parts are exact in any order, and the f32 steps are the same operations, lane
//! by lane. tests/quant_llama_order.rs checks the bits against `kquant_order::row_dot`.

#![allow(clippy::missing_safety_doc)]

use super::x86_legacy_tile::TileArgs;
use super::x86_x16::{bcast_i32, load};
use std::arch::x86_64::*;

/// Bytes of a Q8_K block: `d: f32, qs: [i8; 256], bsums: [i16; 16]`.
const Q8_K_BYTES: usize = 292;

/// `_mm512_shuffle_epi8` indices that fill every 32-bit lane's 4 bytes from bytes `src` of the
/// same lane (`Z`: a zero byte).
const fn pick(src: [u8; 4]) -> [u8; 64] {
    let mut idx = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        let lane = (i / 4 % 4) as u8 * 4; // the lane's first byte within its 128-bit half
        idx[i] = if src[i % 4] == Z { Z } else { lane + src[i % 4] };
        i += 1;
    }
    idx
}
const Z: u8 = 0x80;

/// Byte `b` of the lane, zero-extended to 32 bits.
static BYTE_ONE: [[u8; 64]; 4] = [pick([0, Z, Z, Z]), pick([1, Z, Z, Z]), pick([2, Z, Z, Z]), pick([3, Z, Z, Z])];
/// Bytes `2p` and `2p + 1` of the lane, zero-extended into its two halves.
static BYTE_PAIR: [[u8; 64]; 2] = [pick([0, Z, 1, Z]), pick([2, Z, 3, Z])];
/// Byte `b` in the top byte (an arithmetic shift right by 24 sign-extends it).
static BYTE_TOP: [[u8; 64]; 4] = [pick([Z, Z, Z, 0]), pick([Z, Z, Z, 1]), pick([Z, Z, Z, 2]), pick([Z, Z, Z, 3])];
/// Bytes `2p` and `2p + 1` in the top bytes of the two halves (shifts right by 8 sign-extend).
static PAIR_TOP: [[u8; 64]; 2] = [pick([Z, 0, Z, 1]), pick([Z, 2, Z, 3])];
/// Bytes `p` and `p + 2` in the top bytes of the two halves.
static SPLIT_PAIR_TOP: [[u8; 64]; 2] = [pick([Z, 0, Z, 2]), pick([Z, 1, Z, 3])];

/// The six-bit scales and minimums of a Q4_K or Q5_K group block `g` (12 bytes per row at 64),
/// byte `s % 4` of lane r: sub-blocks 0..4 in [0], 4..8 in [1] (GGML's `get_scale_min_k4`, on
/// all rows at once).
#[inline(always)]
unsafe fn scales_mins(g: *const u8) -> ([__m512i; 2], [__m512i; 2]) {
    // SAFETY: the caller's group block holds 192 bytes of scales at 64.
    unsafe {
        let (m4, m6, m30) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x3f), _mm512_set1_epi8(0x30));
        let (u0, u1, u2) = (load(g.add(64)), load(g.add(128)), load(g.add(192)));
        let hi2 = |u: __m512i| _mm512_and_si512(_mm512_srli_epi32::<2>(u), m30);
        let sc = [_mm512_and_si512(u0, m6), _mm512_or_si512(_mm512_and_si512(u2, m4), hi2(u0))];
        let mn = [_mm512_and_si512(u1, m6), _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32::<4>(u2), m4), hi2(u1))];
        (sc, mn)
    }
}

/// `scale_2j · Σ q·y + scale_2j+1 · Σ q·y` over sub-blocks 2j and 2j + 1 for T tokens:
/// `quants(k)` gives chunk k of both sub-blocks (unsigned), `y(t, k)` token t's activations
/// of chunk k of sub-block 2j (those of 2j + 1 follow 32 bytes later). One accumulator per
/// sub-block and token (2T chains are enough to keep the multiply slot busy for T >= 3), each
/// sum scaled with `vpmulld`: a sum of 32 products can overflow i16, so it cannot go through
/// `vpmaddwd`. For the Q4_K GEMM this took fewer operations than even/odd halves packed for
/// `vpmaddwd`: the 4-token tile ran 7-10% faster (8192x2048 x 128 tokens, one thread, best of 6,
/// alternating builds).
#[inline(always)]
unsafe fn scaled_pair_sums<const T: usize>(
    sc: &[__m512i; 2],
    j: usize,
    quants: impl Fn(usize) -> (__m512i, __m512i),
    y: impl Fn(usize, usize) -> *const u8,
) -> [__m512i; T] {
    // SAFETY: the caller's pointers hold 8 chunks of quants and activations.
    unsafe {
        let sc_of = |s: usize| _mm512_shuffle_epi8(sc[j / 2], load(BYTE_ONE[2 * (j % 2) + s].as_ptr()));
        let (sc_lo, sc_hi) = (sc_of(0), sc_of(1));
        let mut lo = [_mm512_setzero_si512(); T];
        let mut hi = [_mm512_setzero_si512(); T];
        for k in 0..8 {
            let (ql, qh) = quants(k);
            for t in 0..T {
                lo[t] = _mm512_dpbusd_epi32(lo[t], ql, bcast_i32(y(t, k)));
                hi[t] = _mm512_dpbusd_epi32(hi[t], qh, bcast_i32(y(t, k).add(32)));
            }
        }
        std::array::from_fn(|t| _mm512_add_epi32(_mm512_mullo_epi32(lo[t], sc_lo), _mm512_mullo_epi32(hi[t], sc_hi)))
    }
}

/// Blocks ahead of the one being multiplied that a one-token product asks the cache for.
const PREFETCH_BLOCKS: usize = 2;

/// Asks for group block `i + PREFETCH_BLOCKS` of `nb` (`b_stride` bytes each, from `w`), line by
/// line. A one-token product spends a few hundred cycles per block, so the loads it issues
/// itself leave few misses in flight: on a 2.1 GHz Xeon (Emerald Rapids) each thread read 7.5 GB/s
/// of 1.7B Q4_K_M's weights where a numpy reader gets 12, and this took its decode from 74-76 to
/// 55-58 ms per token (`batch_speed`, 2 threads).
#[inline(always)]
unsafe fn prefetch_ahead(w: *const u8, i: usize, nb: usize, b_stride: usize) {
    if i + PREFETCH_BLOCKS < nb {
        // A prefetch never faults; the address lies inside the caller's blocks anyway.
        let next = w.wrapping_add((i + PREFETCH_BLOCKS) * b_stride);
        for line in (0..b_stride).step_by(64) {
            // SAFETY: prefetching reads nothing the program sees.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(line) as *const i8) };
        }
    }
}

/// Q4_K: `T` tokens × 16 rows over `nb` blocks, in the order of `KOrder::Q4KGemm` (`GEMM`)
/// or of `KOrder::Q4KGemv` (`kquant_order.rs`). `args.a_offsets` holds each activation
/// block's sub-block sums in pairs (`matmul`'s `fill_offsets`).
///
/// `vpdpbusd`, `vpmaddwd`, `vpmulld` and `vfmadd` share the multiply pipes of AVX-512 CPUs
/// (Zen 4: one 512-bit operation of these per cycle), which bound this tile: per token and
/// block 64 `vpdpbusd`, 8 `vpmulld` or `vpmaddwd` for the scales, 4 `vpmaddwd` for the
/// minimums, 8 fmas and 2 multiplies.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn q4k<const T: usize, const GEMM: bool>(nb: usize, args: &TileArgs) {
    let TileArgs { w, b_stride, a, a_stride, out, out_stride, a_offsets, .. } = *args;
    // SAFETY (whole body): the caller guarantees `nb` group blocks at `w`, T activation rows
    // of `nb` Q8_K blocks, and 16 outputs per token, on a CPU with the enabled features.
    unsafe {
        let m4 = _mm512_set1_epi8(0x0f);
        let mut acc = [_mm512_setzero_ps(); T];
        let mut acc_min = [_mm512_setzero_ps(); T];
        for i in 0..nb {
            let g = w.add(i * b_stride);
            if T == 1 {
                prefetch_ahead(w, i, nb, b_stride);
            }
            let ap = |t: usize| a.add(t * a_stride + i * Q8_K_BYTES);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(g as *const __m256i));
            let dmw = _mm512_cvtph_ps(_mm256_loadu_si256(g.add(32) as *const __m256i));
            let d: [__m512; T] = std::array::from_fn(|t| _mm512_mul_ps(dw, _mm512_set1_ps(*(ap(t) as *const f32))));
            let dmin: [__m512; T] = std::array::from_fn(|t| _mm512_mul_ps(dmw, _mm512_set1_ps(*(ap(t) as *const f32))));
            let (sc, mn) = scales_mins(g);
            let mut isum_block = [_mm512_setzero_si512(); T];
            let mut imin_block = [_mm512_setzero_si512(); T];
            for j in 0..4 {
                // Sub-blocks 2j (low nibbles) and 2j + 1 (high nibbles); `isum` = scale_2j · Σ q·y
                // over 2j + scale_2j+1 · Σ q·y over 2j + 1, exact in i32 either way.
                // (min 2j, min 2j + 1) as a pair of i16 per lane.
                let pick = load(BYTE_PAIR[j % 2].as_ptr());
                let mn_pair = _mm512_shuffle_epi8(mn[j / 2], pick);
                let isum: [__m512i; T] = if T >= 3 {
                    let quants = |k: usize| {
                        let q = load(g.add(256 + (8 * j + k) * 64));
                        (_mm512_and_si512(q, m4), _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4))
                    };
                    scaled_pair_sums::<T>(&sc, j, quants, |t, k| ap(t).add(4 + 64 * j + 4 * k))
                } else {
                    // One or two tokens: two accumulators per sub-block and token (even and odd
                    // k), so that 4T chains hide the latency, each summing 16 products, which
                    // fit in i16 (|Σ| <= 16 · 15 · 128); (scale 2j, scale 2j + 1) as a pair of
                    // i16 per lane.
                    let sc_pair = _mm512_shuffle_epi8(sc[j / 2], pick);
                    let mut lo = [[_mm512_setzero_si512(); 2]; T];
                    let mut hi = [[_mm512_setzero_si512(); 2]; T];
                    // k = 2kk + e; `e` a constant once unrolled, so the accumulators stay in
                    // registers (a runtime `k % 2` index puts them on the stack).
                    for kk in 0..4 {
                        for e in 0..2 {
                            let k = 2 * kk + e;
                            let q = load(g.add(256 + (8 * j + k) * 64));
                            let (ql, qh) = (_mm512_and_si512(q, m4), _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4));
                            for t in 0..T {
                                let y = ap(t).add(4 + 64 * j + 4 * k);
                                lo[t][e] = _mm512_dpbusd_epi32(lo[t][e], ql, bcast_i32(y));
                                hi[t][e] = _mm512_dpbusd_epi32(hi[t][e], qh, bcast_i32(y.add(32)));
                            }
                        }
                    }
                    // scale_2j · lo + scale_2j+1 · hi through `vpmaddwd` on (lo, hi) i16 pairs:
                    // two multiplies per token for the four partial sums.
                    std::array::from_fn(|t| {
                        let pair = |i: usize| {
                            _mm512_mask_blend_epi16(0xaaaa_aaaa, lo[t][i], _mm512_slli_epi32::<16>(hi[t][i]))
                        };
                        _mm512_add_epi32(_mm512_madd_epi16(pair(0), sc_pair), _mm512_madd_epi16(pair(1), sc_pair))
                    })
                };
                for t in 0..T {
                    let isum = isum[t];
                    // min · (sum of the sub-block's activations), both sub-blocks in one multiply.
                    let sums = _mm512_set1_epi32(*a_offsets.add((t * nb + i) * 4 + j));
                    let imin = _mm512_madd_epi16(mn_pair, sums);
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

/// Bytes of quants at the start of an expanded block (Q5_K, Q6_K): 64 chunks of 64 one-byte
/// quants, each chunk on its own cache line; the group block's scales follow.
const EXPANDED_QUANTS: usize = 4096;

/// Writes `nb` group blocks (`w`, `b_stride` bytes apart) to `out` as expanded blocks of
/// `expanded` bytes: `quants(g, o)` writes group block `g`'s quants as bytes at `o`, then the
/// group block's first `head` bytes (its scales) follow at [`EXPANDED_QUANTS`]. A product of
/// many tokens then unpacks each quant once instead of once per tile of 4 tokens.
///
/// # Safety
/// `w` holds `nb` group blocks and `out` `nb * expanded` bytes; `quants` writes inside its
/// block's first [`EXPANDED_QUANTS`] bytes.
#[inline(always)]
unsafe fn expand_blocks(
    nb: usize,
    (w, b_stride): (*const u8, usize),
    out: *mut u8,
    (expanded, head): (usize, usize),
    quants: impl Fn(*const u8, *mut u8),
) {
    // SAFETY: as the caller guarantees.
    unsafe {
        for i in 0..nb {
            let (g, o) = (w.add(i * b_stride), out.add(i * expanded));
            quants(g, o);
            std::ptr::copy_nonoverlapping(g, o.add(EXPANDED_QUANTS), head);
        }
    }
}

/// Q6_K group block (x16.rs): d at 0, scales at 32, then the quants in the order
/// [`q6k_quant`] reads them, 384 bytes per k: ql of (h 0, low), (h 0, high), (h 1, low),
/// (h 1, high), then qh of h 0, h 1.
const Q6K_SCALES: usize = 32;
const Q6K_QUANTS: usize = 288;

/// Bytes of an expanded Q6_K group block ([`q6k_expand`]): the quants, then d and the scales
/// as in the group block, the whole rounded up to whole cache lines.
pub(super) const Q6K_EXPANDED: usize = (EXPANDED_QUANTS + Q6K_QUANTS).next_multiple_of(64);

/// Where an expanded block keeps chunk (h, k, c) of the quants.
#[inline(always)]
const fn q6k_expanded_chunk(h: usize, k: usize, c: usize) -> usize {
    64 * (8 * k + 4 * h + c)
}

/// The quants of elements `128h + 32c + 4k..+4` of each row (byte `4m + e` of lane r: element
/// `e` of row r), unsigned 0..63, from the chunks of ql and qh of group block `g` that hold them.
#[inline(always)]
unsafe fn q6k_quant(g: *const u8, h: usize, k: usize, c: usize) -> __m512i {
    // SAFETY: the caller's group block holds the quants at Q6K_QUANTS.
    unsafe {
        let at = |m: usize| load(g.add(Q6K_QUANTS + 384 * k + 64 * m));
        let (l, qh) = (at(2 * h + c % 2), at(4 + h));
        let low = if c < 2 { l } else { _mm512_srli_epi16::<4>(l) };
        let high = match c {
            0 => _mm512_slli_epi16::<4>(_mm512_and_si512(qh, _mm512_set1_epi8(0x03))),
            1 => _mm512_slli_epi16::<2>(_mm512_and_si512(qh, _mm512_set1_epi8(0x0c))),
            2 => _mm512_and_si512(qh, _mm512_set1_epi8(0x30)),
            _ => _mm512_srli_epi16::<2>(_mm512_and_si512(qh, _mm512_set1_epi8(0xc0u8 as i8))),
        };
        _mm512_or_si512(_mm512_and_si512(low, _mm512_set1_epi8(0x0f)), high)
    }
}

/// Writes `nb` Q6_K group blocks (`w`, `b_stride` bytes apart) to `out` as expanded blocks of
/// [`Q6K_EXPANDED`] bytes ([`expand_blocks`]; the unpacking, not the multiplies, bounded the
/// GEMM tile: 71% of the multiply-pipe bound where Q4_K reaches 93%).
///
/// # Safety
/// `w` holds `nb` group blocks and `out` `nb * Q6K_EXPANDED` bytes, on a CPU with AVX-512BW.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn q6k_expand(nb: usize, w: *const u8, b_stride: usize, out: *mut u8) {
    // SAFETY: as the caller guarantees; the chunks lie in the block's first EXPANDED_QUANTS bytes.
    unsafe {
        expand_blocks(nb, (w, b_stride), out, (Q6K_EXPANDED, Q6K_QUANTS), |g, o| {
            for k in 0..8 {
                for h in 0..2 {
                    for c in 0..4 {
                        _mm512_storeu_si512(o.add(q6k_expanded_chunk(h, k, c)) as *mut _, q6k_quant(g, h, k, c));
                    }
                }
            }
        })
    }
}

/// Q6_K: `T` tokens × 16 rows over `nb` blocks, in the order of `KOrder::Q6KTiled` (`TILED`: one
/// rounded term per block) or of `KOrder::Q6KVecDot` (8 lanes per row, lane `k` taking bytes
/// `4k..4k + 4` of every 32 elements, then `hsum_float_8`). `EXPANDED`: `args.w` holds
/// expanded blocks ([`q6k_expand`]) instead of group blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn q6k<const T: usize, const TILED: bool, const EXPANDED: bool>(nb: usize, args: &TileArgs) {
    let TileArgs { w, b_stride, a, a_stride, out, out_stride, a_offsets, .. } = *args;
    // Where d and the scales lie in a block.
    let head = if EXPANDED { EXPANDED_QUANTS } else { 0 };
    // SAFETY (whole body): as for `q4k`.
    unsafe {
        // TILED: acc[t][0]; otherwise the 8 lanes of each row's vec_dot accumulator.
        let mut acc = [[_mm512_setzero_ps(); 8]; T];
        for i in 0..nb {
            let g = w.add(i * b_stride);
            if T == 1 {
                prefetch_ahead(w, i, nb, b_stride);
            }
            let ap = |t: usize| a.add(t * a_stride + i * Q8_K_BYTES);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(g.add(head) as *const __m256i));
            // Scale words: word `w` of lane r holds row r's scales 4w..4w + 4 (i8).
            let scw: [__m512i; 4] = std::array::from_fn(|k| load(g.add(head + Q6K_SCALES + 64 * k)));
            let scale =
                |s: usize| _mm512_srai_epi32::<24>(_mm512_shuffle_epi8(scw[s / 4], load(BYTE_TOP[s % 4].as_ptr())));
            // Σ scale · q8 per pair of 16-element groups (2k, 2k + 1), from the activation's
            // 16-element sums: the `-32` offset of lane k.
            let offset = |t: usize, k: usize| {
                let pair = _mm512_srai_epi16::<8>(_mm512_shuffle_epi8(scw[k / 2], load(PAIR_TOP[k % 2].as_ptr())));
                _mm512_slli_epi32::<5>(_mm512_madd_epi16(pair, bcast_i32(ap(t).add(260 + 4 * k))))
            };
            let quant = |h: usize, k: usize, c: usize| {
                if EXPANDED {
                    load(g.add(q6k_expanded_chunk(h, k, c)))
                } else {
                    q6k_quant(g, h, k, c)
                }
            };
            let quants = |h: usize, k: usize| -> [__m512i; 4] { std::array::from_fn(|c| quant(h, k, c)) };
            let y = |t: usize, h: usize, c: usize, k: usize| bcast_i32(ap(t).add(4 + 128 * h + 32 * c + 4 * k));
            if TILED {
                // One integer sum per row: each 16-element group's 4 chunks summed, then scaled.
                // Σ (u - 32) · y = Σ u · y - 32 · Σ y: a group's accumulators start at the
                // second term, from the table computed once per product.
                let start = |grp: usize| -> [__m512i; T] {
                    std::array::from_fn(|t| _mm512_set1_epi32(*a_offsets.add((t * nb + i) * 16 + grp)))
                };
                let mut isum = [_mm512_setzero_si512(); T];
                for h in 0..2 {
                    for half in 0..2 {
                        // Chunks c and c + 2 take the low and high nibbles of the same bytes.
                        for c0 in 0..2 {
                            let (s0, s1) = (start(8 * h + 2 * c0 + half), start(8 * h + 2 * c0 + 4 + half));
                            let mut grp: [[__m512i; 2]; T] = std::array::from_fn(|t| [s0[t], s1[t]]);
                            for k in 4 * half..4 * half + 4 {
                                let q = [quant(h, k, c0), quant(h, k, c0 + 2)];
                                for (t, grp) in grp.iter_mut().enumerate() {
                                    for (e, grp) in grp.iter_mut().enumerate() {
                                        *grp = _mm512_dpbusd_epi32(*grp, q[e], y(t, h, c0 + 2 * e, k));
                                    }
                                }
                            }
                            for e in 0..2 {
                                let sc = scale(8 * h + 2 * (c0 + 2 * e) + half);
                                for t in 0..T {
                                    isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(grp[t][e], sc));
                                }
                            }
                        }
                    }
                }
                for t in 0..T {
                    let term = _mm512_mul_ps(_mm512_cvtepi32_ps(isum[t]), dw);
                    acc[t][0] = _mm512_fmadd_ps(term, _mm512_set1_ps(*(ap(t) as *const f32)), acc[t][0]);
                }
            } else {
                let d: [__m512; T] = std::array::from_fn(|t| _mm512_mul_ps(_mm512_set1_ps(*(ap(t) as *const f32)), dw));
                // Each 4-element dot fits in i16 (|Σ| <= 4 · 63 · 128), so chunks c and c + 1 go
                // as one pair of i16 through `vpmaddwd` with the pair of their scales: one
                // multiply for two terms, where `vpmulld` is slow. Pair [2h + c / 2] holds the
                // scales of groups 8h + 2c + k / 4 and 8h + 2c + 2 + k / 4 (c = 0, 2).
                let mut sc = [_mm512_setzero_si512(); 4];
                for k in 0..8 {
                    if k % 4 == 0 {
                        let pick = load(SPLIT_PAIR_TOP[k / 4].as_ptr());
                        sc = std::array::from_fn(|p| _mm512_srai_epi16::<8>(_mm512_shuffle_epi8(scw[p], pick)));
                    }
                    let q = [quants(0, k), quants(1, k)];
                    for t in 0..T {
                        let mut lane = _mm512_sub_epi32(_mm512_setzero_si512(), offset(t, k));
                        for h in 0..2 {
                            for c in [0, 2] {
                                let dot =
                                    |c: usize| _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[h][c], y(t, h, c, k));
                                // (dot c, dot c + 1) as the low and high i16 of each lane.
                                let pair =
                                    _mm512_mask_blend_epi16(0xaaaa_aaaa, dot(c), _mm512_slli_epi32::<16>(dot(c + 1)));
                                lane = _mm512_add_epi32(lane, _mm512_madd_epi16(pair, sc[2 * h + c / 2]));
                            }
                        }
                        acc[t][k] = _mm512_fmadd_ps(d[t], _mm512_cvtepi32_ps(lane), acc[t][k]);
                    }
                }
            }
        }
        for (t, l) in acc.iter().enumerate() {
            let r = if TILED {
                l[0]
            } else {
                // hsum_float_8's order, lane by lane.
                let s = |a: usize, b: usize| _mm512_add_ps(l[a], l[b]);
                _mm512_add_ps(_mm512_add_ps(s(0, 4), s(2, 6)), _mm512_add_ps(s(1, 5), s(3, 7)))
            };
            _mm512_storeu_ps(out.add(t * out_stride), r);
        }
    }
}

/// Q5_K group block (x16.rs): d at 0, dmin at 32, scales at 64, then per k the qs chunks of
/// j = 0..4 and the qh chunk, 320 bytes.
const Q5K_QUANTS: usize = 256;

/// Bytes of an expanded Q5_K group block ([`q5k_expand`]): the quants, then d, dmin and the
/// scales as in the group block.
pub(super) const Q5K_EXPANDED: usize = EXPANDED_QUANTS + Q5K_QUANTS;

/// Where an expanded block keeps the quants of chunk k of sub-block 2j (`half` 0) or 2j + 1.
#[inline(always)]
const fn q5k_expanded_chunk(j: usize, k: usize, half: usize) -> usize {
    64 * (2 * (8 * j + k) + half)
}

/// The quants of chunk k of sub-blocks 2j (low nibbles) and 2j + 1 (high nibbles) of group
/// block `g`, unsigned 0..31, with their fifth bit from qh (bits 2j and 2j + 1 of the byte of
/// the same element).
#[inline(always)]
unsafe fn q5k_quants(g: *const u8, j: usize, k: usize) -> (__m512i, __m512i) {
    // SAFETY: the caller's group block holds the quants at Q5K_QUANTS.
    unsafe {
        let (m4, b4) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x10));
        let at = g.add(Q5K_QUANTS + 320 * k);
        let (q, h) = (load(at.add(64 * j)), load(at.add(256)));
        // Bits 2j and 2j + 1 of every qh byte down to bits 0 and 1 (16-bit shifts keep them in
        // their byte: what crosses over lands above bit 1), then up to bit 4. A shift by a
        // register count, not by an immediate per j: `j` need not be a constant (a match on it
        // compiled to jumps).
        let hs = _mm512_srl_epi16(h, _mm_cvtsi32_si128(2 * j as i32));
        let lo = _mm512_or_si512(_mm512_and_si512(q, m4), _mm512_and_si512(_mm512_slli_epi16::<4>(hs), b4));
        let hi = _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4),
            _mm512_and_si512(_mm512_slli_epi16::<3>(hs), b4),
        );
        (lo, hi)
    }
}

/// Writes `nb` Q5_K group blocks (`w`, `b_stride` bytes apart) to `out` as expanded blocks of
/// [`Q5K_EXPANDED`] bytes, as [`q6k_expand`] does for Q6_K (the fifth bits' unpacking made the
/// GEMM tile 27% slower than Q4_K's, whose multiplies it shares).
///
/// # Safety
/// `w` holds `nb` group blocks and `out` `nb * Q5K_EXPANDED` bytes, on a CPU with AVX-512BW.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn q5k_expand(nb: usize, w: *const u8, b_stride: usize, out: *mut u8) {
    // SAFETY: as the caller guarantees; the chunks lie in the block's first EXPANDED_QUANTS bytes.
    unsafe {
        expand_blocks(nb, (w, b_stride), out, (Q5K_EXPANDED, Q5K_QUANTS), |g, o| {
            for j in 0..4 {
                for k in 0..8 {
                    let (lo, hi) = q5k_quants(g, j, k);
                    _mm512_storeu_si512(o.add(q5k_expanded_chunk(j, k, 0)) as *mut _, lo);
                    _mm512_storeu_si512(o.add(q5k_expanded_chunk(j, k, 1)) as *mut _, hi);
                }
            }
        })
    }
}

/// Q5_K: `T` tokens × 16 rows over `nb` blocks, in the order of `KOrder::Q5KTiled` (`TILED`:
/// per block `d · s1 - dmin · s2` rounded once for the minimums, then one fma with the
/// activation's scale) or of `KOrder::Q5KVecDot` (8 lanes per row, lane `k` taking bytes
/// `4k..4k + 4` of every 32 elements, `hsum_float_8`, plus the minimums summed apart).
/// `args.a_offsets` holds each activation block's sub-block sums in pairs, as for Q4_K.
/// `EXPANDED`: `args.w` holds expanded blocks ([`q5k_expand`]) instead of group blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn q5k<const T: usize, const TILED: bool, const EXPANDED: bool>(nb: usize, args: &TileArgs) {
    let TileArgs { w, b_stride, a, a_stride, out, out_stride, a_offsets, .. } = *args;
    // Where d, dmin and the scales lie in a block.
    let head = if EXPANDED { EXPANDED_QUANTS } else { 0 };
    // SAFETY (whole body): as for `q4k`.
    unsafe {
        // TILED: acc[t][0]; otherwise the 8 lanes of each row's vec_dot accumulator.
        let mut acc = [[_mm512_setzero_ps(); 8]; T];
        let mut summs = [_mm512_setzero_ps(); T];
        for i in 0..nb {
            let g = w.add(i * b_stride);
            let ap = |t: usize| a.add(t * a_stride + i * Q8_K_BYTES);
            let dx = |t: usize| _mm512_set1_ps(*(ap(t) as *const f32));
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(g.add(head) as *const __m256i));
            let dmw = _mm512_cvtph_ps(_mm256_loadu_si256(g.add(head + 32) as *const __m256i));
            let (sc, mn) = scales_mins(g.add(head));
            // s2 = Σ min · (sub-block sum of the activations), two sub-blocks per `vpmaddwd`.
            let imin: [__m512i; T] = std::array::from_fn(|t| {
                (0..4).fold(_mm512_setzero_si512(), |s, j| {
                    let mn_pair = _mm512_shuffle_epi8(mn[j / 2], load(BYTE_PAIR[j % 2].as_ptr()));
                    let sums = _mm512_set1_epi32(*a_offsets.add((t * nb + i) * 4 + j));
                    _mm512_add_epi32(s, _mm512_madd_epi16(mn_pair, sums))
                })
            });
            let quants = |j: usize, k: usize| {
                if EXPANDED {
                    (load(g.add(q5k_expanded_chunk(j, k, 0))), load(g.add(q5k_expanded_chunk(j, k, 1))))
                } else {
                    q5k_quants(g, j, k)
                }
            };
            let y = |t: usize, j: usize, k: usize| ap(t).add(4 + 64 * j + 4 * k);
            if TILED {
                // s1 = Σ scale · Σ q5 · q8.
                let mut s1 = [_mm512_setzero_si512(); T];
                for j in 0..4 {
                    let scaled = scaled_pair_sums::<T>(&sc, j, |k| quants(j, k), |t, k| y(t, j, k));
                    for t in 0..T {
                        s1[t] = _mm512_add_epi32(s1[t], scaled[t]);
                    }
                }
                for t in 0..T {
                    let r = _mm512_mul_ps(_mm512_cvtepi32_ps(s1[t]), dw);
                    let r = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(imin[t]), dmw, r);
                    acc[t][0] = _mm512_fmadd_ps(dx(t), r, acc[t][0]);
                }
            } else {
                let d: [__m512; T] = std::array::from_fn(|t| _mm512_mul_ps(dx(t), dw));
                // (scale 2j, scale 2j + 1) as a pair of i16 per lane; each 4-element dot fits
                // in i16 (4 · 31 · 128), so chunk k of both sub-blocks goes through one
                // `vpmaddwd`.
                let sc_pair: [__m512i; 4] =
                    std::array::from_fn(|j| _mm512_shuffle_epi8(sc[j / 2], load(BYTE_PAIR[j % 2].as_ptr())));
                for k in 0..8 {
                    let q: [(__m512i, __m512i); 4] = std::array::from_fn(|j| quants(j, k));
                    for t in 0..T {
                        let mut lane = _mm512_setzero_si512();
                        for (j, &(ql, qh)) in q.iter().enumerate() {
                            let dot =
                                |q: __m512i, y: *const u8| _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, bcast_i32(y));
                            let pair = _mm512_mask_blend_epi16(
                                0xaaaa_aaaa,
                                dot(ql, y(t, j, k)),
                                _mm512_slli_epi32::<16>(dot(qh, y(t, j, k).add(32))),
                            );
                            lane = _mm512_add_epi32(lane, _mm512_madd_epi16(pair, sc_pair[j]));
                        }
                        acc[t][k] = _mm512_fmadd_ps(d[t], _mm512_cvtepi32_ps(lane), acc[t][k]);
                    }
                }
                for t in 0..T {
                    // llama.cpp's dmin is -(d_x) · dmin_w; the minimums' sum is kept apart.
                    let neg_dx =
                        _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(dx(t)), _mm512_set1_epi32(i32::MIN)));
                    let dmin = _mm512_mul_ps(neg_dx, dmw);
                    summs[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(imin[t]), dmin, summs[t]);
                }
            }
        }
        for (t, l) in acc.iter().enumerate() {
            let r = if TILED {
                l[0]
            } else {
                // hsum_float_8's order, lane by lane, then the minimums.
                let s = |a: usize, b: usize| _mm512_add_ps(l[a], l[b]);
                let h = _mm512_add_ps(_mm512_add_ps(s(0, 4), s(2, 6)), _mm512_add_ps(s(1, 5), s(3, 7)));
                _mm512_add_ps(h, summs[t])
            };
            _mm512_storeu_ps(out.add(t * out_stride), r);
        }
    }
}
