//! Prefill attention (several queries) with AVX-512, in register tiles.
//!
//! The arithmetic is [`Order::Gemm`]'s (tinyBLAS's), as in `attention_x86.rs`: each score is one
//! 16-lane accumulator over the head's chunks, reduced pairwise; each output element sums its
//! keys in 16 slots (key `j` in slot `j % 16`), reduced pairwise. What changes is the shape of
//! the work. One item per (query, head) loads every key and value row for one product; here a
//! block of queries of one head shares them:
//! - scores in tiles of 4 queries × 4 keys (16 accumulators: each loaded key chunk feeds 4 fmas);
//! - `Σ w·v` in tiles of 4 queries × 4 output elements, over the cache's transposed values (a
//!   16-key slot vector is one load) and masked fmas for the causal and window masks (a masked
//!   lane keeps its value, as a skipped key does);
//! - the 16 reductions of a tile as 4 transposed trees ([`reduce4`]).
//!
//! [`Order::Gemm`]: super::attention::Order::Gemm

use super::attention::{AttnParams, LANES};
use super::attention_x86::{fold_halves, fold_quarters, lanes, softmax};
use crate::kv_cache::{v_index, V_BLOCK};
use half::f16;
use std::arch::x86_64::*;

/// Queries per tile.
const QT: usize = 4;

/// One head's queries `t0..t1` of a prefill chunk.
pub(super) struct HeadBlock<'a> {
    pub p: &'a AttnParams,
    /// All queries, `[n_tokens, n_head * head_dim]`, f16-exact.
    pub q: &'a [f32],
    /// Output rows, laid out as `q`.
    pub out: *mut f32,
    /// This head's KV head in the cache, as `KvLayer::head` gives it.
    pub k: &'a [f16],
    pub v: &'a [f16],
    pub head: usize,
    pub t0: usize,
    pub t1: usize,
}

impl HeadBlock<'_> {
    /// First key token `t` sees.
    fn first(&self, t: usize) -> usize {
        self.p.first_key(self.p.pos0 + t)
    }
}

/// Floats of scratch [`head_block`] needs for `n_kv` keys: `QT` score rows.
pub(super) fn scratch_floats(n_kv: usize) -> usize {
    QT * (n_kv + 2 * LANES)
}

/// Sums 4 vectors, each in `_mm512_reduce_add_ps`'s order (halves, quarters, then
/// `(q0 + q2) + (q1 + q3)`), as one transposed tree: the 4 sums in lanes 0..4.
#[target_feature(enable = "avx512f,avx512dq,fma,f16c")]
#[inline]
fn reduce4(a: &[__m512; 4]) -> __m128 {
    // One 128-bit block [q0 q1 q2 q3] per vector.
    let q = fold_quarters(fold_halves(a[0], a[1]), fold_halves(a[2], a[3]));
    // [q0 + q2, q1 + q3, ..], then their sum in lane 0 of each block.
    let t = _mm512_add_ps(q, _mm512_permute_ps::<0b01_00_11_10>(q));
    let r = _mm512_add_ps(t, _mm512_permute_ps::<0b10_11_00_01>(t));
    _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), r))
}

/// Attention of queries `b.t0..b.t1` of one head, bit for bit as `attention_x86::item` with
/// [`super::attention::Order::Gemm`] computes each of them.
///
/// # Safety
/// The CPU must have AVX-512F/DQ/VL, FMA and F16C; the head size is a multiple of 16; `b.q`
/// holds the rows of tokens `t0..t1`; the keys and values of every position up to
/// `pos0 + t1 - 1` lie inside `b.k` and `b.v`; `b.out` has the rows of tokens `t0..t1` for this
/// caller only; `scratch` holds [`scratch_floats`]`(pos0 + t1)` floats.
#[target_feature(enable = "avx512f,avx512dq,avx512vl,fma,f16c")]
pub(super) unsafe fn head_block(b: &HeadBlock<'_>, scratch: &mut [f32]) {
    let hd = b.p.head_dim;
    let (q_stride, q_off) = (b.p.n_head * hd, b.head * hd);
    let (pos0, scale) = (b.p.pos0, b.p.scale);
    let nc = hd / LANES;
    let (first_lo, pos_hi) = (b.first(b.t0), pos0 + b.t1 - 1);
    // Score rows hold keys base0..base0 + l: whole 16-key blocks (aligned to key 0) around
    // first_lo..=pos_hi.
    let base0 = first_lo / LANES * LANES;
    let l = (pos_hi + 1 - base0).next_multiple_of(LANES);
    assert!(hd.is_multiple_of(LANES) && b.t0 < b.t1 && scratch.len() >= scratch_floats(pos_hi + 1));
    assert!(b.k.len() >= (pos_hi + 1) * hd && b.v.len() >= (pos_hi / V_BLOCK + 1) * V_BLOCK * hd);
    assert!(b.q.len() >= (b.t1 - 1) * q_stride + q_off + hd);

    // SAFETY (the rest): indices stay inside the slices, as asserted above (a 16-key block of
    // values lies inside its V_BLOCK); row `qi` of `scratch` holds keys base0..base0 + l.
    unsafe {
        let kp = b.k.as_ptr();
        let vp = b.v.as_ptr();
        let rows_p = scratch.as_mut_ptr();
        let mut t = b.t0;
        while t < b.t1 {
            // Tile queries t..t + QT; past t1 the last query is repeated and its results dropped.
            let tq: [usize; QT] = std::array::from_fn(|i| (t + i).min(b.t1 - 1));
            let n_q = (b.t1 - t).min(QT);
            let firsts: [usize; QT] = tq.map(|t| b.first(t));
            let poss: [usize; QT] = tq.map(|t| pos0 + t);
            let (ks, ke) = (firsts[0], poss[QT - 1]);
            let qp: [*const f32; QT] = tq.map(|t| b.q.as_ptr().add(t * q_stride + q_off));
            // row(i).wrapping_add(j): query i's score or weight of key j (j in base0..base0 + l).
            let row = |i: usize| rows_p.add(i * l).wrapping_sub(base0);

            // Scores of keys ks..=ke, 4 keys at a time (the last ones repeated when fewer).
            let mut j = ks;
            while j <= ke {
                let kj: [usize; 4] = std::array::from_fn(|i| (j + i).min(ke));
                let mut acc = [[_mm512_setzero_ps(); 4]; QT];
                for c in 0..nc {
                    let q: [__m512; QT] = qp.map(|p| _mm512_loadu_ps(p.add(c * LANES)));
                    for (k, &jk) in kj.iter().enumerate() {
                        let kv = _mm512_cvtph_ps(_mm256_loadu_si256(kp.add(jk * hd + c * LANES) as *const __m256i));
                        for (a, &q) in acc.iter_mut().zip(&q) {
                            a[k] = _mm512_fmadd_ps(q, kv, a[k]);
                        }
                    }
                }
                let n_k = (ke + 1 - j).min(4);
                for (i, a) in acc.iter().enumerate() {
                    let s = _mm_mul_ps(reduce4(a), _mm_set1_ps(scale));
                    _mm_mask_storeu_ps(row(i).wrapping_add(j), ((1u32 << n_k) - 1) as __mmask8, s);
                }
                j += 4;
            }

            // Softmax of each query over its own keys.
            for (i, (&f, &p)) in firsts.iter().zip(&poss).enumerate().take(n_q) {
                let r = row(i);
                let max = (f..=p).fold(f32::NEG_INFINITY, |m, j| m.max(*r.wrapping_add(j)));
                softmax(r, f, p, max);
            }

            // Σ w·v: 4 queries × 4 output elements, 16-key blocks from the one holding ks.
            let mask = |i: usize, blk: usize| -> __mmask16 {
                let (f, p) = (firsts[i], poss[i]);
                if f > blk + LANES - 1 || p < blk {
                    0
                } else {
                    lanes(f.max(blk) - blk, p.min(blk + LANES - 1) - blk)
                }
            };
            // Blocks whose 16 keys every query of the tile sees need no masks (an all-ones mask
            // changes nothing): those from the latest first key to the earliest position.
            let whole = firsts.iter().max().map_or(0, |f| f.next_multiple_of(LANES))
                ..poss.iter().min().map_or(0, |p| (p + 1) / LANES * LANES);
            for d0 in (0..hd).step_by(4) {
                let mut acc = [[_mm512_setzero_ps(); 4]; QT];
                let mut blk = ks / LANES * LANES;
                while blk <= ke {
                    let v: [__m512; 4] = std::array::from_fn(|d| {
                        _mm512_cvtph_ps(_mm256_loadu_si256(vp.add(v_index(blk, d0 + d, hd)) as *const __m256i))
                    });
                    if blk >= whole.start && blk + LANES <= whole.end {
                        let w: [__m512; QT] = std::array::from_fn(|i| _mm512_loadu_ps(row(i).wrapping_add(blk)));
                        for (d, &v) in v.iter().enumerate() {
                            for i in 0..QT {
                                acc[i][d] = _mm512_fmadd_ps(w[i], v, acc[i][d]);
                            }
                        }
                    } else {
                        let m: [__mmask16; QT] = std::array::from_fn(|i| mask(i, blk));
                        let w: [__m512; QT] =
                            std::array::from_fn(|i| _mm512_maskz_loadu_ps(m[i], row(i).wrapping_add(blk)));
                        for (d, &v) in v.iter().enumerate() {
                            for i in 0..QT {
                                acc[i][d] = _mm512_mask3_fmadd_ps(w[i], v, acc[i][d], m[i]);
                            }
                        }
                    }
                    blk += LANES;
                }
                for (i, a) in acc.iter().enumerate().take(n_q) {
                    _mm_storeu_ps(b.out.add(tq[i] * q_stride + q_off + d0), reduce4(a));
                }
            }
            t += QT;
        }
    }
}
