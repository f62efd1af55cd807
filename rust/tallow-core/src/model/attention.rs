//! Causal multi-head attention of a chunk of queries over the KV cache, with grouped-query
//! heads and an optional sliding window. Work items are (token, head) pairs, split over the pool.

use crate::threadpool::{split_range, ThreadPool};
use half::f16;

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

struct SyncPtr(*mut f32);
// SAFETY: every worker writes only the output rows and score slice it owns (see `attention`).
unsafe impl Sync for SyncPtr {}

/// `out[t, h] = Σ_j softmax_j(scale · q[t, h] · k[j, h / group]) · v[j, h / group]`.
///
/// - `q`, `out`: `[n_tokens, n_head * head_dim]`
/// - `k`, `v`: one layer of the cache, `[n_ctx, n_head_kv * head_dim]`, filled up to
///   `pos0 + n_tokens`
/// - `scores`: at least `pool.n_threads() * (pos0 + n_tokens)` floats of scratch
pub fn attention(
    p: &AttnParams,
    q: &[f32],
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
    assert!(q.len() == n_items * hd && out.len() == n_items * hd);
    assert!(k.len() >= n_kv * kv_dim && v.len() >= n_kv * kv_dim);
    assert!(scores.len() >= pool.n_threads() * n_kv);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let scores_ptr = SyncPtr(scores.as_mut_ptr());

    pool.run(&|ti, nt| {
        let (out_ptr, scores_ptr) = (&out_ptr, &scores_ptr);
        // SAFETY: worker `ti` owns scores[ti * n_kv..(ti + 1) * n_kv] (in bounds, asserted above).
        let sc = unsafe { std::slice::from_raw_parts_mut(scores_ptr.0.add(ti * n_kv), n_kv) };
        for item in split_range(n_items, ti, nt) {
            let (t, h) = (item / n_head, item % n_head);
            let pos = p.pos0 + t;
            let first = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let qh = &q[item * hd..(item + 1) * hd];
            let kv_off = (h / group) * hd;

            let sc = &mut sc[first..=pos];
            let mut max = f32::NEG_INFINITY;
            for (j, s) in (first..=pos).zip(sc.iter_mut()) {
                let kj = &k[j * kv_dim + kv_off..j * kv_dim + kv_off + hd];
                let dot: f32 = qh.iter().zip(kj).map(|(&a, &b)| a * b.to_f32()).sum();
                *s = dot * p.scale;
                max = max.max(*s);
            }
            let mut sum = 0.0f32;
            for s in sc.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;

            // SAFETY: item rows are disjoint between workers (split_range) and in bounds.
            let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(item * hd), hd) };
            o.fill(0.0);
            for (j, &s) in (first..=pos).zip(sc.iter()) {
                let w = s * inv;
                let vj = &v[j * kv_dim + kv_off..j * kv_dim + kv_off + hd];
                for (acc, &x) in o.iter_mut().zip(vj) {
                    *acc += w * x.to_f32();
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &[f32]) -> Vec<f16> {
        v.iter().map(|&x| f16::from_f32(x)).collect()
    }

    #[test]
    fn single_key_returns_its_value_and_window_masks() {
        // 1 kv head of dim 2 shared by 2 query heads; 3 positions.
        let k = h(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let v = h(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let pool = ThreadPool::new(2);
        let mut scores = vec![0.0; 2 * 3];
        // Query at position 0 sees only key 0.
        let p = AttnParams { n_head: 2, n_head_kv: 1, head_dim: 2, pos0: 0, n_tokens: 1, window: None, scale: 1.0 };
        let mut out = vec![0.0; 4];
        attention(&p, &[5.0, 5.0, -1.0, 3.0], &k, &v, &mut out, &mut scores, &pool);
        assert_eq!(out, [1.0, 2.0, 1.0, 2.0]);
        // Query at position 2 with window 1 sees only key 2.
        let p = AttnParams { pos0: 2, window: Some(1), ..p };
        attention(&p, &[5.0, 5.0, -1.0, 3.0], &k, &v, &mut out, &mut scores, &pool);
        assert_eq!(out, [5.0, 6.0, 5.0, 6.0]);
        // Without the window, equal scores average the values.
        let p = AttnParams { window: None, scale: 0.0, ..p };
        attention(&p, &[5.0, 5.0, -1.0, 3.0], &k, &v, &mut out, &mut scores, &pool);
        assert!(out.iter().zip([3.0, 4.0, 3.0, 4.0]).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}
