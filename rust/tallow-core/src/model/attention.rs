//! Causal multi-head attention of a chunk of queries over the KV cache, with grouped-query
//! heads and an optional sliding window. Work items are (token, head) pairs, split over the pool.
//!
//! The arithmetic is llama.cpp's CPU path without flash attention (llama-cpp-python's default),
//! operation for operation, so the results are bit-identical rather than merely close: a last-bit
//! difference here flips an int8 rounding in the next product now and then, and those flips
//! compound over the layers into visible logit differences.
//! - `q·k`: the query is rounded to f16 to meet the f16 keys; the dot product runs in 16 f32
//!   lanes (element `i` in lane `i % 16`) reduced pairwise at the end ([`LANES`], [`reduce16`]),
//!   the order of ggml's AVX-512 f16 GEMM (llamafile's tinyBLAS).
//! - softmax: ggml's vectorized [`expf`]; the sum adds 16-key chunks (each reduced pairwise) in
//!   f64; the weights are rounded to f16.
//! - `Σ w·v`: per output element, again 16 lanes over the keys (key `j` in lane `j % 16`).
//! - A single query (decode) takes ggml's `vec_dot_f16` instead of tinyBLAS for both products:
//!   4 accumulators of 16 lanes (element `i` in accumulator `i / 16 % 4`, lane `i % 16`), added
//!   as (0 + 2) + (1 + 3) before the lane reduction ([`Order`]). llama.cpp pads the keys to a
//!   multiple of 256 with exact zeros, so its scalar tail never runs.

use super::layers::expf;
use crate::kv_cache::{v_index, KvLayer};
use crate::threadpool::{SyncPtr, ThreadPool};
use half::f16;

/// Width of the f32 accumulators whose summation order is reproduced.
pub(super) const LANES: usize = 16;

/// Shapes and masking of one attention call.
pub struct AttnParams {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Position of the first query; queries are at `pos0..pos0 + n_tokens`.
    pub pos0: usize,
    pub n_tokens: usize,
    /// Key `j` is visible to query `p` iff `j <= p` and `p - j < window` (llama.cpp's standard SWA).
    pub window: Option<usize>,
    /// Multiplies `q·k` before the softmax.
    pub scale: f32,
}

impl AttnParams {
    /// The first key the query at position `pos` sees.
    pub(super) fn first_key(&self, pos: usize) -> usize {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }
}

/// Most accumulators of [`LANES`] lanes an [`Order`] uses.
const MAX_ACCS: usize = 4;

/// Summation order of the f16 products, which llama.cpp picks by batch size.
#[derive(Clone, Copy)]
pub(super) enum Order {
    /// Several queries: tinyBLAS, one accumulator of 16 lanes.
    Gemm,
    /// One query: `ggml_vec_dot_f16`, 4 accumulators of 16 lanes.
    VecDot,
}

impl Order {
    pub(super) fn accs(self) -> usize {
        match self {
            Order::Gemm => 1,
            Order::VecDot => MAX_ACCS,
        }
    }

    /// Accumulator (of [`Self::accs`]) and lane of element `i`.
    #[inline]
    fn slot(self, i: usize) -> usize {
        i % (LANES * self.accs())
    }

    /// Folds the accumulators `acc[slot]` into one 16-lane vector and reduces it.
    #[inline]
    fn reduce(self, acc: impl Fn(usize) -> f32) -> f32 {
        match self {
            Order::Gemm => reduce16(&std::array::from_fn(&acc)),
            Order::VecDot => reduce16(&std::array::from_fn(|l| {
                let a = acc(l) + acc(2 * LANES + l);
                let b = acc(LANES + l) + acc(3 * LANES + l);
                a + b
            })),
        }
    }
}

/// Query heads whose scores one decode unit keeps at once (`attention_x86::group_vec_dot`).
#[cfg(target_arch = "x86_64")]
use super::attention_x86::MAX_GROUP;
#[cfg(not(target_arch = "x86_64"))]
const MAX_GROUP: usize = 1;

/// Floats of `scores` scratch one worker needs for `n_kv` keys of width `head_dim`.
pub fn scratch_per_thread(n_kv: usize, head_dim: usize) -> usize {
    let items = MAX_GROUP * n_kv + MAX_ACCS * LANES * head_dim;
    #[cfg(target_arch = "x86_64")]
    return items.max(super::attention_gemm_x86::scratch_floats(n_kv));
    #[cfg(not(target_arch = "x86_64"))]
    items
}

/// Sum of 16 lanes in the pairwise order of `_mm512_reduce_add_ps`: halves, quarters, pairs.
#[inline]
fn reduce16(v: &[f32; LANES]) -> f32 {
    let h: [f32; 8] = std::array::from_fn(|i| v[i] + v[i + 8]);
    let q: [f32; 4] = std::array::from_fn(|i| h[i] + h[i + 4]);
    (q[0] + q[2]) + (q[1] + q[3])
}

/// One (query token, head) pair's inputs.
pub(super) struct Item<'a> {
    pub(super) order: Order,
    /// `[head_dim]`, f16-exact.
    pub(super) q: &'a [f32],
    /// The head's KV head, as [`KvLayer::head`] gives it: keys `[ctx, head_dim]`, values
    /// transposed in blocks (element `d` of position `j` at `v_index(j, d, head_dim)`).
    pub(super) k: &'a [f16],
    pub(super) v: &'a [f16],
    /// Visible keys: `first..=pos`.
    pub(super) first: usize,
    pub(super) pos: usize,
    pub(super) scale: f32,
}

/// One item, portably: `scores` holds at least `pos + 1` floats (indexed by key position),
/// `acc` at least `order.accs() * LANES * head_dim`, `out` is `[head_dim]`.
fn item_portable(it: &Item<'_>, scores: &mut [f32], acc: &mut [f32], out: &mut [f32]) {
    let hd = it.q.len();
    let order = it.order;
    let key = |j: usize| j * hd..(j + 1) * hd;
    let sc = &mut scores[it.first..=it.pos];
    let mut max = f32::NEG_INFINITY;
    for (j, s) in (it.first..=it.pos).zip(sc.iter_mut()) {
        let mut lanes = [0.0f32; MAX_ACCS * LANES];
        for (i, (&x, &y)) in it.q.iter().zip(&it.k[key(j)]).enumerate() {
            // Products of f16 values are exact in f32: only the order of the sums matters.
            lanes[order.slot(i)] += x * y.to_f32();
        }
        *s = order.reduce(|l| lanes[l]) * it.scale;
        max = max.max(*s);
    }
    // Chunks of 16 keys counted from key 0; masked keys would add exact zeros.
    let mut sum = 0.0f64;
    let mut chunk = [0.0f32; LANES];
    for (j, s) in (it.first..=it.pos).zip(sc.iter_mut()) {
        *s = expf(*s - max);
        chunk[j % LANES] = *s;
        if j % LANES == LANES - 1 || j == it.pos {
            sum += reduce16(&chunk) as f64;
            chunk = [0.0; LANES];
        }
    }
    let inv = (1.0 / sum) as f32;
    for s in sc.iter_mut() {
        *s = f16::from_f32(*s * inv).to_f32();
    }
    // acc[slot * hd + d]: slot `order.slot(j)` of output element `d`.
    let acc = &mut acc[..order.accs() * LANES * hd];
    acc.fill(0.0);
    for (j, &w) in (it.first..=it.pos).zip(sc.iter()) {
        let slot = order.slot(j);
        for (d, a) in acc[slot * hd..(slot + 1) * hd].iter_mut().enumerate() {
            *a += w * it.v[v_index(j, d, hd)].to_f32();
        }
    }
    for (d, o) in out.iter_mut().enumerate() {
        *o = order.reduce(|s| acc[s * hd + d]);
    }
}

#[cfg(target_arch = "x86_64")]
use super::layers::avx512;

/// The item kernel [`attention`] runs on this CPU, for `build_info()`: `"avx512"` (taken for
/// head dimensions that are a multiple of 16) or `"portable"`.
pub(crate) fn kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        return "avx512";
    }
    "portable"
}

/// One item with the fastest kernel this CPU has.
fn item(it: &Item<'_>, scores: &mut [f32], acc: &mut [f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() && it.q.len().is_multiple_of(LANES) {
        // SAFETY: the features were detected; the slices are as `item_portable` requires.
        return unsafe { super::attention_x86::item(it, scores, out) };
    }
    item_portable(it, scores, acc, out)
}

/// Rounds every value to the nearest f16 (ties to even), in place, through `half`'s slice
/// conversions (F16C where the CPU has it: one call per 64 values, not one per value).
fn round_to_f16(x: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    let mut tmp = [f16::ZERO; 64];
    for c in x.chunks_mut(64) {
        let t = &mut tmp[..c.len()];
        t.convert_from_f32_slice(c);
        t.convert_to_f32_slice(c);
    }
}

/// `out[t, h] = Σ_j softmax_j(scale · q[t, h] · k[j, h / group]) · v[j, h / group]`.
///
/// - `q`, `out`: `[n_tokens, n_head * head_dim]`; `q` is rounded to f16 precision in place
/// - `kv`: one layer of the cache, filled up to `pos0 + n_tokens`
/// - `scores`: at least `pool.n_threads() * scratch_per_thread(pos0 + n_tokens, head_dim)` floats
///
/// A single token is [`attention_decode`]'s one query.
pub fn attention(
    p: &AttnParams,
    q: &mut [f32],
    kv: KvLayer<'_>,
    out: &mut [f32],
    scores: &mut [f32],
    pool: &ThreadPool,
) {
    let (hd, n_head) = (p.head_dim, p.n_head);
    let group = n_head / p.n_head_kv;
    let n_kv = p.pos0 + p.n_tokens;
    let n_items = p.n_tokens * n_head;
    let per_thread = scratch_per_thread(n_kv, hd);
    assert!(q.len() == n_items * hd && out.len() == n_items * hd);
    check_layer(p, &kv, n_kv);
    assert!(scores.len() >= pool.n_threads() * per_thread);
    if p.n_tokens == 1 {
        let query = DecodeQuery { row: 0, pos: p.pos0, kv };
        return attention_decode(p, std::iter::once(query), q, out, scores, pool);
    }
    // Several queries: llamafile's sgemm (it takes only products of 2+ columns).
    let order = Order::Gemm;
    round_to_f16(q);
    let q: &[f32] = q;
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let scores_ptr = SyncPtr(scores.as_mut_ptr());

    #[cfg(target_arch = "x86_64")]
    if avx512() && hd.is_multiple_of(LANES) {
        // Work units of (query block, head), the costliest (latest) blocks first, claimed
        // from a counter so the workers end together.
        const BLOCK: usize = 64;
        let n_blocks = p.n_tokens.div_ceil(BLOCK);
        let next = std::sync::atomic::AtomicUsize::new(0);
        return pool.run(&|ti, _| {
            let (out_ptr, scores_ptr) = (&out_ptr, &scores_ptr);
            // SAFETY: worker `ti` owns its scratch slice (in bounds, asserted above).
            let own = unsafe { std::slice::from_raw_parts_mut(scores_ptr.0.add(ti * per_thread), per_thread) };
            loop {
                let u = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if u >= n_blocks * n_head {
                    break;
                }
                let (blk, h) = (n_blocks - 1 - u / n_head, u % n_head);
                let (k, v) = kv.head(h / group);
                let b = super::attention_gemm_x86::HeadBlock {
                    p,
                    q,
                    out: out_ptr.0,
                    k,
                    v,
                    head: h,
                    t0: blk * BLOCK,
                    t1: ((blk + 1) * BLOCK).min(p.n_tokens),
                };
                // SAFETY: the features were detected; the unit's output rows (its tokens, its
                // head) are written by this worker only; shapes as asserted above.
                unsafe { super::attention_gemm_x86::head_block(&b, own) };
            }
        });
    }

    pool.run(&|ti, nt| {
        let (out_ptr, scores_ptr) = (&out_ptr, &scores_ptr);
        // SAFETY: worker `ti` owns scores[ti * per_thread..(ti + 1) * per_thread] (in bounds,
        // asserted above).
        let own = unsafe { std::slice::from_raw_parts_mut(scores_ptr.0.add(ti * per_thread), per_thread) };
        let (sc_all, acc) = own.split_at_mut(n_kv);
        // Items interleaved over the workers: with a causal mask later tokens cost more, and a
        // contiguous split would leave the first worker idle while the last one finishes.
        for item in (ti..n_items).step_by(nt) {
            let (t, h) = (item / n_head, item % n_head);
            let pos = p.pos0 + t;
            let (k, v) = kv.head(h / group);
            let it =
                Item { order, q: &q[item * hd..(item + 1) * hd], k, v, first: p.first_key(pos), pos, scale: p.scale };
            // SAFETY: item rows are disjoint between workers (interleaved) and in bounds.
            let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(item * hd), hd) };
            self::item(&it, sc_all, acc, o);
        }
    });
}

/// One sequence's decode query in [`attention_decode`]: row `row` of `q` and `out`, at
/// position `pos` of its cache layer `kv` (filled up to `pos + 1`).
#[derive(Clone, Copy)]
pub struct DecodeQuery<'a> {
    pub row: usize,
    pub pos: usize,
    pub kv: KvLayer<'a>,
}

/// Checks that `kv` has `p`'s heads and room for `n_kv` positions.
fn check_layer(p: &AttnParams, kv: &KvLayer<'_>, n_kv: usize) {
    assert!(kv.head_dim == p.head_dim && kv.ctx >= n_kv && kv.ctx.is_multiple_of(crate::kv_cache::V_BLOCK));
    assert!(kv.k.len() == p.n_head_kv * kv.ctx * p.head_dim && kv.v.len() == kv.k.len());
}

/// The single-token attention of several sequences (the decode tokens of a continuous batch)
/// in one dispatch to the pool, each exactly as [`attention`] computes it alone: one dispatch
/// per sequence and layer cost more than the attention itself at short contexts.
///
/// `p` gives the shapes, window and scale (its `pos0` and `n_tokens` are unused); `queries`
/// yields the queries in increasing `row` order; `q`, `out` are `[rows, n_head * head_dim]`
/// (only the queries' rows are read, rounded to f16 in place, and written); `scores` holds
/// `pool.n_threads() * scratch_per_thread(n_kv, head_dim)` floats for the longest `n_kv`.
pub fn attention_decode<'a, I>(
    p: &AttnParams,
    queries: I,
    q: &mut [f32],
    out: &mut [f32],
    scores: &mut [f32],
    pool: &ThreadPool,
) where
    I: Iterator<Item = DecodeQuery<'a>> + Clone + Sync,
{
    let (hd, n_head, n_head_kv) = (p.head_dim, p.n_head, p.n_head_kv);
    let (q_dim, group) = (n_head * hd, n_head / n_head_kv);
    assert_eq!(q.len(), out.len());
    let (mut n_kv, mut n_queries) = (0, 0);
    for x in queries.clone() {
        check_layer(p, &x.kv, x.pos + 1);
        assert!((x.row + 1) * q_dim <= q.len());
        (n_kv, n_queries) = (n_kv.max(x.pos + 1), n_queries + 1);
    }
    let per_thread = scratch_per_thread(n_kv, hd);
    assert!(scores.len() >= pool.n_threads() * per_thread);
    let (q_ptr, out_ptr, scores_ptr) =
        (SyncPtr(q.as_mut_ptr()), SyncPtr(out.as_mut_ptr()), SyncPtr(scores.as_mut_ptr()));
    // Units of (query, KV head): the heads that share keys and values run on one thread,
    // which reads them from memory once. Where that would leave threads idle (one query over
    // fewer KV heads than threads), each KV head's heads split into `split` parts. Claimed
    // from a counter, in increasing order, so each worker walks `queries` forward once.
    let part = group.div_ceil(pool.n_threads().div_ceil(n_queries * n_head_kv).clamp(1, group));
    let split = group.div_ceil(part); // parts of `part` heads, the last one maybe shorter
    let per_query = n_head_kv * split;
    let next = std::sync::atomic::AtomicUsize::new(0);
    pool.run(&|ti, _| {
        let (q_ptr, out_ptr, scores_ptr) = (&q_ptr, &out_ptr, &scores_ptr);
        // SAFETY: worker `ti` owns its scratch slice (in bounds, asserted above).
        let own = unsafe { std::slice::from_raw_parts_mut(scores_ptr.0.add(ti * per_thread), per_thread) };
        let (sc_all, acc) = own.split_at_mut(MAX_GROUP * n_kv);
        let (mut walk, mut at, mut cur) = (queries.clone(), 0, None);
        loop {
            let u = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if u >= n_queries * per_query {
                break;
            }
            while at <= u / per_query {
                cur = walk.next();
                at += 1;
            }
            let x: DecodeQuery<'_> = cur.expect("fewer queries than counted");
            let kh = u % per_query / split;
            let first_head = kh * group + u % split * part;
            let n_heads = part.min((kh + 1) * group - first_head);
            let h0 = x.row * q_dim + first_head * hd;
            // SAFETY: this unit's query heads and output rows are written by this worker only
            // (units are claimed once), in bounds (asserted above).
            let (qg, og) = unsafe {
                (
                    std::slice::from_raw_parts_mut(q_ptr.0.add(h0), n_heads * hd),
                    std::slice::from_raw_parts_mut(out_ptr.0.add(h0), n_heads * hd),
                )
            };
            let (k, v) = x.kv.head(kh);
            let base = Item {
                order: Order::VecDot,
                q: &[], // each head's own, in decode_heads
                k,
                v,
                first: p.first_key(x.pos),
                pos: x.pos,
                scale: p.scale,
            };
            let mut h = 0;
            while h < n_heads * hd {
                h += hd * decode_heads(&mut qg[h..], &mut og[h..], hd, &base, sc_all, n_kv, acc);
            }
        }
    });
}

/// Visible keys from which a decode unit runs its heads together: below it the group's
/// fixed costs outweigh the conversions it saves (SmolLM2's shapes, 2 threads, with the
/// cache's blocked values: 20% slower at 64 keys, 3-10% faster from 80 to 200).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the groups are x86's
const GROUP_MIN_KEYS: usize = 80;

/// Runs the first of the decode heads in `q`, `out` (`[n, hd]`, heads that share one KV
/// head), or the first few of them at once, and returns how many it ran: up to [`MAX_GROUP`]
/// with AVX-512 and [`GROUP_MIN_KEYS`] visible keys, one otherwise. `base` is the heads' item
/// but for its query; `scores` holds `MAX_GROUP * stride` floats, `stride > base.pos`.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] // the groups are x86's
fn decode_heads(
    q: &mut [f32],
    out: &mut [f32],
    hd: usize,
    base: &Item<'_>,
    scores: &mut [f32],
    stride: usize,
    acc: &mut [f32],
) -> usize {
    let n = q.len() / hd;
    #[cfg(target_arch = "x86_64")]
    if n > 1 && avx512() && hd.is_multiple_of(LANES) && base.pos + 1 - base.first >= GROUP_MIN_KEYS {
        macro_rules! group {
            ($g:literal) => {{
                let q = &mut q[..$g * hd];
                round_to_f16(q);
                let mut heads = q.chunks_exact(hd);
                let q: [&[f32]; $g] = std::array::from_fn(|_| heads.next().expect("g heads"));
                let mut outs = out.chunks_exact_mut(hd);
                let out: [&mut [f32]; $g] = std::array::from_fn(|_| outs.next().expect("g heads"));
                // SAFETY: the features were detected; hd is a multiple of 16 and the scores
                // hold MAX_GROUP * stride floats, stride > pos.
                unsafe { super::attention_x86::group_vec_dot::<$g>(base, q, scores, stride, out) };
                $g
            }};
        }
        return match n.min(MAX_GROUP) {
            2 => group!(2),
            3 => group!(3),
            _ => group!(4),
        };
    }
    let q = &mut q[..hd];
    round_to_f16(q);
    item(&Item { q, ..*base }, scores, acc, &mut out[..hd]);
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::KvCache;

    /// A one-layer cache of `n_pos` positions of `n_head_kv` heads of `hd`, filled with f16
    /// values of `rnd`: all the keys, then all the values, row by row.
    fn random_cache(n_head_kv: usize, hd: usize, n_pos: usize, mut rnd: impl FnMut() -> f32) -> KvCache {
        let mut c = KvCache::new(1, n_pos, n_head_kv, hd).unwrap();
        let mut rows = || (0..n_pos * n_head_kv * hd).map(|_| f16::from_f32(rnd()).to_f32()).collect::<Vec<_>>();
        let (k, v) = (rows(), rows());
        c.store(0, 0, &k, &v);
        c.advance(n_pos);
        c
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_items_equal_the_portable_ones() {
        if !avx512() {
            return; // nothing to compare: only the portable kernel runs on this CPU
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
        };
        for hd in [16, 64, 256] {
            for n_pos in [1, 2, 15, 16, 17, 64, 65, 100, 300] {
                let cache = random_cache(2, hd, n_pos, &mut rnd);
                let (k, v) = cache.layer(0).head(1);
                let q: Vec<f32> = (0..hd).map(|_| f16::from_f32(rnd()).to_f32()).collect();
                for (order, first) in
                    [(Order::Gemm, 0), (Order::VecDot, 0), (Order::Gemm, n_pos / 3), (Order::VecDot, n_pos / 2)]
                {
                    let it = Item { order, q: &q, k, v, first, pos: n_pos - 1, scale: 0.3 };
                    let per = scratch_per_thread(n_pos, hd);
                    let (mut s1, mut s2) = (vec![0.0; per], vec![f32::NAN; per]);
                    let (mut o1, mut o2) = (vec![0.0; hd], vec![0.0; hd]);
                    {
                        let (sc, acc) = s1.split_at_mut(n_pos);
                        item_portable(&it, sc, acc, &mut o1);
                    }
                    {
                        let sc = &mut s2[..n_pos];
                        // SAFETY: avx512() checked the features; hd is a multiple of 16.
                        unsafe { crate::model::attention_x86::item(&it, sc, &mut o2) };
                    }
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&o1), bits(&o2), "hd {hd}, {n_pos} keys from {first}");
                }
            }
        }
    }

    /// `attention_decode` over several sequences and over one alone (whose KV heads' query
    /// heads split over the threads), with 1 to 7 query heads per KV head (the AVX-512 groups
    /// of up to 4 heads, from GROUP_MIN_KEYS keys, and their remainders), against
    /// `item_portable` for every (sequence, head), bit for bit.
    #[test]
    fn decode_groups_equal_the_portable_items() {
        // Magnitudes spread over 2^-3..2^3, so that sums of the (exact) f16 products round
        // and a different order would show.
        let mut seed = 0x5851_f42d_4c95_7f2du64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * (((seed & 7) as i32 - 3) as f32).exp2()
        };
        let pool = ThreadPool::new(2);
        for (hd, n_head_kv, group, window) in [
            (64, 3, 3, None),
            (64, 1, 4, None),
            (256, 1, 4, Some(20)),
            (16, 2, 2, None),
            (32, 1, 7, None),
            (8, 2, 3, None),
        ] {
            let n_head = n_head_kv * group;
            let positions = [0usize, 15, 16, 63, 100, GROUP_MIN_KEYS - 1, GROUP_MIN_KEYS, 700];
            let n_kv = positions.iter().max().unwrap() + 1;
            let caches: Vec<KvCache> = positions.iter().map(|_| random_cache(n_head_kv, hd, n_kv, &mut rnd)).collect();
            let q_dim = n_head * hd;
            let mut q: Vec<f32> = (0..positions.len() * q_dim).map(|_| rnd()).collect();
            let p = AttnParams { n_head, n_head_kv, head_dim: hd, pos0: 0, n_tokens: 1, window, scale: 0.2 };
            let queries = positions.iter().zip(&caches).enumerate().map(|(row, (&pos, c))| DecodeQuery {
                row,
                pos,
                kv: c.layer(0),
            });
            let mut scores = vec![0.0; 2 * scratch_per_thread(n_kv, hd)];
            let mut out = vec![0.0; q.len()];
            // The last sequence alone first, then all of them (both round q to f16, once).
            let (last, rows) = (positions.len() - 1, positions.len() * q_dim);
            attention_decode(&p, queries.clone().skip(last), &mut q, &mut out, &mut scores, &pool);
            let alone = out[last * q_dim..rows].to_vec();
            attention_decode(&p, queries, &mut q, &mut out, &mut scores, &pool);
            assert_eq!(alone, out[last * q_dim..rows], "hd {hd}, {n_head}/{n_head_kv} heads: one query alone");
            let mut want = vec![0.0; q.len()];
            for (row, (&pos, c)) in positions.iter().zip(&caches).enumerate() {
                for h in 0..n_head {
                    let at = row * q_dim + h * hd;
                    let (k, v) = c.layer(0).head(h / group);
                    let it = Item {
                        order: Order::VecDot,
                        q: &q[at..at + hd],
                        k,
                        v,
                        first: p.first_key(pos),
                        pos,
                        scale: 0.2,
                    };
                    let mut s = vec![0.0; scratch_per_thread(n_kv, hd)];
                    let (sc, acc) = s.split_at_mut(n_kv);
                    item_portable(&it, sc, acc, &mut want[at..at + hd]);
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&want), "hd {hd}, {n_head}/{n_head_kv} heads, window {window:?}");
        }
    }

    /// `attention` over several tokens (the AVX-512 prefill tiles where the CPU has them)
    /// against `item_portable` for every (token, head), bit for bit: head sizes, grouped heads,
    /// a chunk that starts after cached positions, query blocks and tiles with tails, windows.
    #[test]
    fn prefill_equals_the_portable_items() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 6.0
        };
        let pool = ThreadPool::new(2);
        for (hd, n_head, n_head_kv, pos0, n_tokens, window) in [
            (64, 4, 2, 0, 7, None),
            (16, 3, 1, 5, 70, None),
            (64, 9, 3, 0, 130, None),
            (256, 4, 1, 33, 21, Some(16)),
            (32, 2, 2, 100, 65, Some(40)),
            // Across a block of the transposed values (kv_cache::V_BLOCK).
            (64, 4, 2, 240, 40, None),
            (64, 2, 1, 250, 70, Some(100)),
        ] {
            let n_kv = pos0 + n_tokens;
            let cache = random_cache(n_head_kv, hd, n_kv, &mut rnd);
            let mut q: Vec<f32> = (0..n_tokens * n_head * hd).map(|_| rnd()).collect();
            let p = AttnParams { n_head, n_head_kv, head_dim: hd, pos0, n_tokens, window, scale: 0.2 };
            let mut scores = vec![0.0; 2 * scratch_per_thread(n_kv, hd)];
            let mut out = vec![0.0; q.len()];
            attention(&p, &mut q, cache.layer(0), &mut out, &mut scores, &pool); // rounds q to f16 too
            let per = scratch_per_thread(n_kv, hd);
            let mut want = vec![0.0; q.len()];
            for item in 0..n_tokens * n_head {
                let (t, h) = (item / n_head, item % n_head);
                let pos = pos0 + t;
                let (k, v) = cache.layer(0).head(h / (n_head / n_head_kv));
                let it = Item {
                    order: Order::Gemm,
                    q: &q[item * hd..(item + 1) * hd],
                    k,
                    v,
                    first: p.first_key(pos),
                    pos,
                    scale: 0.2,
                };
                let mut s = vec![0.0; per];
                let (sc, acc) = s.split_at_mut(n_kv);
                item_portable(&it, sc, acc, &mut want[item * hd..(item + 1) * hd]);
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&want), "hd {hd}, {n_head}/{n_head_kv} heads, {n_tokens} tokens after {pos0}");
        }
    }

    #[test]
    fn single_key_returns_its_value_and_window_masks() {
        // 1 kv head of dim 2 shared by 2 query heads; 3 positions.
        let mut cache = KvCache::new(1, 3, 1, 2).unwrap();
        cache.store(0, 0, &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        cache.advance(3);
        let pool = ThreadPool::new(2);
        let mut scores = vec![0.0; 2 * scratch_per_thread(3, 2)];
        // Query at position 0 sees only key 0.
        let p = AttnParams { n_head: 2, n_head_kv: 1, head_dim: 2, pos0: 0, n_tokens: 1, window: None, scale: 1.0 };
        let mut out = vec![0.0; 4];
        attention(&p, &mut [5.0, 5.0, -1.0, 3.0], cache.layer(0), &mut out, &mut scores, &pool);
        assert_eq!(out, [1.0, 2.0, 1.0, 2.0]);
        // Query at position 2 with window 1 sees only key 2.
        let p = AttnParams { pos0: 2, window: Some(1), ..p };
        attention(&p, &mut [5.0, 5.0, -1.0, 3.0], cache.layer(0), &mut out, &mut scores, &pool);
        assert_eq!(out, [5.0, 6.0, 5.0, 6.0]);
        // Without the window, equal scores average the values, with weights rounded to f16
        // (1/3 -> 0.33325) as llama.cpp does.
        let p = AttnParams { window: None, scale: 0.0, ..p };
        attention(&p, &mut [5.0, 5.0, -1.0, 3.0], cache.layer(0), &mut out, &mut scores, &pool);
        let w = f16::from_f32(1.0 / 3.0).to_f32();
        assert_eq!(out, [9.0 * w, 12.0 * w, 9.0 * w, 12.0 * w]);
    }
}
