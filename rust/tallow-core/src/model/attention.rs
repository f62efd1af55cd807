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
use crate::threadpool::ThreadPool;
use half::f16;

/// Width of the f32 accumulators whose summation order is reproduced.
const LANES: usize = 16;

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

/// Most accumulators of [`LANES`] lanes an [`Order`] uses.
const MAX_ACCS: usize = 4;

/// Summation order of the f16 products, which llama.cpp picks by batch size.
#[derive(Clone, Copy)]
enum Order {
    /// Several queries: tinyBLAS, one accumulator of 16 lanes.
    Gemm,
    /// One query: `ggml_vec_dot_f16`, 4 accumulators of 16 lanes.
    VecDot,
}

impl Order {
    fn accs(self) -> usize {
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

/// Floats of `scores` scratch one worker needs for `n_kv` keys of width `head_dim`.
pub fn scratch_per_thread(n_kv: usize, head_dim: usize) -> usize {
    n_kv + MAX_ACCS * LANES * head_dim
}

/// Sum of 16 lanes in the pairwise order of `_mm512_reduce_add_ps`: halves, quarters, pairs.
#[inline]
fn reduce16(v: &[f32; LANES]) -> f32 {
    let h: [f32; 8] = std::array::from_fn(|i| v[i] + v[i + 8]);
    let q: [f32; 4] = std::array::from_fn(|i| h[i] + h[i + 4]);
    (q[0] + q[2]) + (q[1] + q[3])
}

/// `Σ a[i] · b[i]` in the summation order `order`. The products of f16 values are exact in
/// f32, so only this order matters.
#[inline]
fn dot_f16(order: Order, a: &[f32], b: &[f16]) -> f32 {
    let mut acc = [0.0f32; MAX_ACCS * LANES];
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F was detected.
        unsafe { x86::dot_f16_lanes(order.accs(), a, b, &mut acc) };
        return order.reduce(|s| acc[s]);
    }
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        acc[order.slot(i)] += x * y.to_f32();
    }
    order.reduce(|s| acc[s])
}

/// `acc[d] += w · v[d]`: `w` is an f16-rounded weight, so each product is exact.
#[inline]
fn axpy_f16(acc: &mut [f32], w: f32, v: &[f16]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F was detected.
        return unsafe { x86::axpy_f16(acc, w, v) };
    }
    for (a, &x) in acc.iter_mut().zip(v) {
        *a += w * x.to_f32();
    }
}

/// Whether the AVX-512 versions of [`dot_f16`] and [`axpy_f16`] may run (same results as the
/// portable loops, lane for lane; `TALLOW_KERNELS=scalar` turns them off too).
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| crate::quant::kernels().name() != "scalar" && std::is_x86_feature_detected!("avx512f"))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::LANES;
    use half::f16;
    use std::arch::x86_64::*;

    /// The lanes of `dot_f16`: element `i` into accumulator `i / 16 % accs`, lane `i % 16`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_f16_lanes(accs: usize, a: &[f32], b: &[f16], out: &mut [f32; 64]) {
        let n = a.len().min(b.len());
        let mut acc = [_mm512_setzero_ps(); 4];
        let full = n / LANES;
        for c in 0..full {
            // SAFETY: c * 16 + 16 <= n for both slices.
            let (x, y) = unsafe {
                (
                    _mm512_loadu_ps(a.as_ptr().add(c * LANES)),
                    _mm512_cvtph_ps(_mm256_loadu_si256(b.as_ptr().add(c * LANES) as *const __m256i)),
                )
            };
            // x · y is exact (f16 × f16), so the fused add rounds like the portable `+=`.
            acc[c % accs] = _mm512_fmadd_ps(x, y, acc[c % accs]);
        }
        for (k, v) in acc.iter().enumerate().take(accs) {
            // SAFETY: out holds 64 floats.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(k * LANES), *v) };
        }
        for i in full * LANES..n {
            out[i % (LANES * accs)] += a[i] * b[i].to_f32();
        }
    }

    /// `acc[d] += w · v[d]` 16 at a time.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn axpy_f16(acc: &mut [f32], w: f32, v: &[f16]) {
        let n = acc.len().min(v.len());
        let wv = _mm512_set1_ps(w);
        let full = n / LANES;
        for c in 0..full {
            // SAFETY: c * 16 + 16 <= n for both slices.
            unsafe {
                let p = acc.as_mut_ptr().add(c * LANES);
                let x = _mm512_cvtph_ps(_mm256_loadu_si256(v.as_ptr().add(c * LANES) as *const __m256i));
                _mm512_storeu_ps(p, _mm512_fmadd_ps(wv, x, _mm512_loadu_ps(p)));
            }
        }
        for d in full * LANES..n {
            acc[d] += w * v[d].to_f32();
        }
    }
}

struct SyncPtr(*mut f32);
// SAFETY: every worker writes only the output rows and score slice it owns (see `attention`).
unsafe impl Sync for SyncPtr {}

/// `out[t, h] = Σ_j softmax_j(scale · q[t, h] · k[j, h / group]) · v[j, h / group]`.
///
/// - `q`, `out`: `[n_tokens, n_head * head_dim]`; `q` is rounded to f16 precision in place
/// - `k`, `v`: one layer of the cache, `[n_ctx, n_head_kv * head_dim]`, filled up to
///   `pos0 + n_tokens`
/// - `scores`: at least `pool.n_threads() * scratch_per_thread(pos0 + n_tokens, head_dim)` floats
pub fn attention(
    p: &AttnParams,
    q: &mut [f32],
    k: &[f16],
    v: &[f16],
    out: &mut [f32],
    scores: &mut [f32],
    pool: &ThreadPool,
) {
    let (hd, n_head) = (p.head_dim, p.n_head);
    let kv_dim = p.n_head_kv * hd;
    let group = n_head / p.n_head_kv;
    let n_kv = p.pos0 + p.n_tokens;
    let n_items = p.n_tokens * n_head;
    let per_thread = scratch_per_thread(n_kv, hd);
    // llamafile's sgemm takes only products of 2+ columns (`n < 2` returns false).
    let order = if p.n_tokens == 1 { Order::VecDot } else { Order::Gemm };
    let slots = order.accs() * LANES;
    assert!(q.len() == n_items * hd && out.len() == n_items * hd);
    assert!(k.len() >= n_kv * kv_dim && v.len() >= n_kv * kv_dim);
    assert!(scores.len() >= pool.n_threads() * per_thread);
    for x in q.iter_mut() {
        *x = f16::from_f32(*x).to_f32();
    }
    let q: &[f32] = q;
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let scores_ptr = SyncPtr(scores.as_mut_ptr());

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
            let first = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let qh = &q[item * hd..(item + 1) * hd];
            let kv_off = (h / group) * hd;
            let key = |j: usize| j * kv_dim + kv_off..j * kv_dim + kv_off + hd;

            let sc = &mut sc_all[first..=pos];
            let mut max = f32::NEG_INFINITY;
            for (j, s) in (first..=pos).zip(sc.iter_mut()) {
                *s = dot_f16(order, qh, &k[key(j)]) * p.scale;
                max = max.max(*s);
            }
            // Chunks of 16 keys counted from key 0; masked keys would add exact zeros.
            let mut sum = 0.0f64;
            let mut chunk = [0.0f32; LANES];
            for (j, s) in (first..=pos).zip(sc.iter_mut()) {
                *s = expf(*s - max);
                chunk[j % LANES] = *s;
                if j % LANES == LANES - 1 || j == pos {
                    sum += reduce16(&chunk) as f64;
                    chunk = [0.0; LANES];
                }
            }
            let inv = (1.0 / sum) as f32;
            for s in sc.iter_mut() {
                *s = f16::from_f32(*s * inv).to_f32();
            }

            // acc[slot * hd + d]: slot `order.slot(j)` of output element `d`.
            let acc = &mut acc[..slots * hd];
            acc.fill(0.0);
            for (j, &w) in (first..=pos).zip(sc.iter()) {
                let slot = order.slot(j);
                axpy_f16(&mut acc[slot * hd..(slot + 1) * hd], w, &v[key(j)]);
            }
            // SAFETY: item rows are disjoint between workers (interleaved) and in bounds.
            let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(item * hd), hd) };
            for (d, o) in o.iter_mut().enumerate() {
                *o = order.reduce(|s| acc[s * hd + d]);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_lanes_equal_the_portable_loops() {
        if !std::is_x86_feature_detected!("avx512f") {
            return; // nothing to compare: only the portable loops run on this CPU
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
        };
        for n in [1, 15, 16, 17, 64, 100, 256, 257] {
            // f16-exact inputs, as attention feeds them.
            let a: Vec<f32> = (0..n).map(|_| f16::from_f32(rnd()).to_f32()).collect();
            let b: Vec<f16> = (0..n).map(|_| f16::from_f32(rnd())).collect();
            for accs in [1, MAX_ACCS] {
                let mut want = [0.0f32; MAX_ACCS * LANES];
                for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
                    want[i % (LANES * accs)] += x * y.to_f32();
                }
                let mut got = [0.0f32; MAX_ACCS * LANES];
                // SAFETY: AVX-512F detected above.
                unsafe { x86::dot_f16_lanes(accs, &a, &b, &mut got) };
                assert_eq!(got.map(f32::to_bits), want.map(f32::to_bits), "n = {n}, accs = {accs}");
            }
            let w = f16::from_f32(rnd()).to_f32();
            let mut want: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let mut got = want.clone();
            for (acc, &x) in want.iter_mut().zip(&b) {
                *acc += w * x.to_f32();
            }
            // SAFETY: AVX-512F detected above.
            unsafe { x86::axpy_f16(&mut got, w, &b) };
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    fn h(v: &[f32]) -> Vec<f16> {
        v.iter().map(|&x| f16::from_f32(x)).collect()
    }

    #[test]
    fn single_key_returns_its_value_and_window_masks() {
        // 1 kv head of dim 2 shared by 2 query heads; 3 positions.
        let k = h(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let v = h(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let pool = ThreadPool::new(2);
        let mut scores = vec![0.0; 2 * scratch_per_thread(3, 2)];
        // Query at position 0 sees only key 0.
        let p = AttnParams { n_head: 2, n_head_kv: 1, head_dim: 2, pos0: 0, n_tokens: 1, window: None, scale: 1.0 };
        let mut out = vec![0.0; 4];
        attention(&p, &mut [5.0, 5.0, -1.0, 3.0], &k, &v, &mut out, &mut scores, &pool);
        assert_eq!(out, [1.0, 2.0, 1.0, 2.0]);
        // Query at position 2 with window 1 sees only key 2.
        let p = AttnParams { pos0: 2, window: Some(1), ..p };
        attention(&p, &mut [5.0, 5.0, -1.0, 3.0], &k, &v, &mut out, &mut scores, &pool);
        assert_eq!(out, [5.0, 6.0, 5.0, 6.0]);
        // Without the window, equal scores average the values, with weights rounded to f16
        // (1/3 -> 0.33325) as llama.cpp does.
        let p = AttnParams { window: None, scale: 0.0, ..p };
        attention(&p, &mut [5.0, 5.0, -1.0, 3.0], &k, &v, &mut out, &mut scores, &pool);
        let w = f16::from_f32(1.0 / 3.0).to_f32();
        assert_eq!(out, [9.0 * w, 12.0 * w, 9.0 * w, 12.0 * w]);
    }
}
