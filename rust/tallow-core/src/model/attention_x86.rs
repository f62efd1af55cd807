//! AVX-512 version of one attention item (`attention.rs`): the same operations in the same
//! order, so the same bits, with each 16-lane accumulator in a register, ggml's vectorized
//! `expf` over 16 keys at a time, and the final lane reductions done for 16 outputs at once.
//! At long contexts a decode runs the query heads that share a KV head together
//! ([`group_vec_dot`]): decode attention waits mostly on its f16 keys and values, and the group
//! converts each of them once instead of once per head.

use super::attention::{Item, Order, LANES};
use super::layers_x86::expf16;
use std::arch::x86_64::*;

/// Sum of 16 lanes in `_mm512_reduce_add_ps`'s order (as GCC expands it): halves, quarters,
/// then `(q0 + q2) + (q1 + q3)`.
#[target_feature(enable = "avx512f,avx512dq,fma,f16c")]
#[inline]
pub(super) fn reduce16(v: __m512) -> f32 {
    let h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps::<1>(v));
    let q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
    let t = _mm_add_ps(q, _mm_shuffle_ps::<0b01_00_11_10>(q, q)); // [q0+q2, q1+q3, ..]
    _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps::<0b01>(t, t)))
}

/// The first level of [`reduce16`]'s tree for two vectors: `[h_a | h_b]`, lanes `i + (i + 8)`
/// of `a` in the low half and of `b` in the high half.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn fold_halves(a: __m512, b: __m512) -> __m512 {
    _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(a, b), _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b))
}

/// The second level for two [`fold_halves`] results `x = [h_a | h_b]`, `y = [h_c | h_d]`: one
/// 128-bit block per vector, lanes `i + (i + 4)` of `h_a`, `h_b`, `h_c`, `h_d` in turn.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn fold_quarters(x: __m512, y: __m512) -> __m512 {
    _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(x, y), _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y))
}

/// [`reduce16`] of 16 vectors at once, as one transposed tree with the same additions: lane `k`
/// holds the sum of `v[k]`. Halves of two vectors per register, then quarters of four, then
/// `q0 + q2` and `q1 + q3`, then their sum (lane `4m + e` holding key `m + 4e`), then the lanes
/// put in key order.
#[target_feature(enable = "avx512f,avx512dq,fma,f16c")]
#[inline]
pub(super) fn reduce16x16(v: &[__m512; LANES]) -> __m512 {
    let h: [__m512; 8] = std::array::from_fn(|p| fold_halves(v[2 * p], v[2 * p + 1]));
    // Block m of q[r]: lanes i + (i + 4) of key 4r + m.
    let q: [__m512; 4] = std::array::from_fn(|r| fold_quarters(h[2 * r], h[2 * r + 1]));
    // Block m of t[s]: [q0 + q2, q1 + q3] of keys 8s + m and 8s + 4 + m.
    let t: [__m512; 2] = std::array::from_fn(|s| {
        let (x, y) = (q[2 * s], q[2 * s + 1]);
        _mm512_add_ps(_mm512_shuffle_ps::<0b01_00_01_00>(x, y), _mm512_shuffle_ps::<0b11_10_11_10>(x, y))
    });
    // Lane 4m + e: key m + 4e.
    let sum =
        _mm512_add_ps(_mm512_shuffle_ps::<0b10_00_10_00>(t[0], t[1]), _mm512_shuffle_ps::<0b11_01_11_01>(t[0], t[1]));
    _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), sum)
}

/// Softmax of the scores `sp[first..=pos]` (indexed by key position) in place, given their
/// maximum: ggml's vectorized `expf`, the sum of 16-key chunks aligned to key 0 (each reduced
/// pairwise) in f64, weights rounded to f16. Lanes outside `first..=pos` are neither read nor
/// written.
///
/// # Safety
/// `sp.wrapping_add(j)` must be valid for `j` in `first..=pos` (`sp` itself need not be), and
/// the CPU must have AVX-512F/DQ, FMA and F16C.
#[target_feature(enable = "avx512f,avx512dq,fma,f16c")]
pub(super) unsafe fn softmax(sp: *mut f32, first: usize, pos: usize, max: f32) {
    // SAFETY: masked loads and stores touch only keys first..=pos.
    unsafe {
        let (c0, c1) = (first / LANES, pos / LANES);
        let chunk_mask = |c: usize| lanes(first.max(c * LANES) - c * LANES, pos.min(c * LANES + LANES - 1) - c * LANES);
        let mut sum = 0.0f64;
        for c in c0..=c1 {
            let m = chunk_mask(c);
            let x = _mm512_maskz_loadu_ps(m, sp.wrapping_add(c * LANES));
            let e = _mm512_maskz_mov_ps(m, expf16(_mm512_sub_ps(x, _mm512_set1_ps(max))));
            _mm512_mask_storeu_ps(sp.wrapping_add(c * LANES), m, e);
            sum += reduce16(e) as f64;
        }
        let inv = _mm512_set1_ps((1.0 / sum) as f32);
        for c in c0..=c1 {
            let m = chunk_mask(c);
            let w = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, sp.wrapping_add(c * LANES)), inv);
            let w = _mm512_cvtph_ps(_mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(w));
            _mm512_mask_storeu_ps(sp.wrapping_add(c * LANES), m, w);
        }
    }
}

/// `ggml_vec_dot_f16`'s fold of its 4 accumulators: (0 + 2) + (1 + 3).
#[target_feature(enable = "avx512f")]
#[inline]
fn fold4(a: [__m512; 4]) -> __m512 {
    _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]))
}

/// Lanes `lo..=hi` of a 16-key chunk.
#[inline]
pub(super) fn lanes(lo: usize, hi: usize) -> __mmask16 {
    ((1u32 << (hi + 1)) - (1u32 << lo)) as __mmask16
}

/// [`super::attention::item_portable`], bit for bit. `it.q.len()` must be a multiple of 16.
///
/// # Safety
/// The CPU must have AVX-512F/DQ, FMA and F16C; `scores` holds at least `it.pos + 1` floats,
/// `out` `head_dim`, and the keys and values of positions `it.first..=it.pos` lie inside `it.k`
/// and `it.v`. (The weighted sums keep their accumulators in registers: no `acc` scratch.)
#[target_feature(enable = "avx512f,avx512dq,fma,f16c")]
pub(super) unsafe fn item(it: &Item<'_>, scores: &mut [f32], out: &mut [f32]) {
    let hd = it.q.len();
    let nc = hd / LANES; // 16-element chunks of a head
    let (first, pos) = (it.first, it.pos);
    assert!(hd.is_multiple_of(LANES) && scores.len() > pos && out.len() == hd);
    assert!(it.k.len() >= pos * it.kv_dim + it.kv_off + hd && it.v.len() >= pos * it.kv_dim + it.kv_off + hd);
    let (qp, sp) = (it.q.as_ptr(), scores.as_mut_ptr());
    let kv_at = |base: *const half::f16, j: usize, c: usize| {
        // SAFETY: j <= pos and c < nc, inside the slice (asserted above).
        unsafe {
            _mm512_cvtph_ps(_mm256_loadu_si256(base.add(j * it.kv_dim + it.kv_off + c * LANES) as *const __m256i))
        }
    };

    // SAFETY (the rest): every pointer offset stays inside the slices, as asserted above.
    unsafe {
        let max = match it.order {
            Order::Gemm => {
                // Scores: one accumulator over the head's chunks, reduced pairwise. KEYS keys at
                // a time, each with its own accumulator: independent chains instead of one
                // waiting on the last fma.
                const KEYS: usize = 4;
                let mut max = f32::NEG_INFINITY;
                let mut j = first;
                while j <= pos {
                    // Whole groups of KEYS keys, then the rest one by one.
                    let n = if pos + 1 - j >= KEYS { KEYS } else { 1 };
                    let mut a = [_mm512_setzero_ps(); KEYS];
                    for c in 0..nc {
                        let qc = _mm512_loadu_ps(qp.add(c * LANES));
                        for (k, a) in a.iter_mut().enumerate().take(n) {
                            *a = _mm512_fmadd_ps(qc, kv_at(it.k.as_ptr(), j + k, c), *a);
                        }
                    }
                    for (k, &v) in a.iter().enumerate().take(n) {
                        let s = reduce16(v) * it.scale;
                        *sp.add(j + k) = s;
                        max = max.max(s);
                    }
                    j += n;
                }
                max
            }
            Order::VecDot => {
                // Scores: chunk c of the head goes to accumulator c % 4 (a constant index once
                // unrolled: a runtime one would keep the accumulators in memory), folded as
                // (0 + 2) + (1 + 3); then the lane reductions of 16 keys at once. `keys4` takes
                // keys j..j + n (n <= 4) interleaved, independent chains instead of one waiting
                // on the last fma.
                let keys4 = |j: usize, n: usize| {
                    let mut a = [[_mm512_setzero_ps(); 4]; 4];
                    for c4 in (0..nc).step_by(4) {
                        for (ai, c) in (c4..nc.min(c4 + 4)).enumerate() {
                            let qc = _mm512_loadu_ps(qp.add(c * LANES));
                            for (k, a) in a.iter_mut().enumerate().take(n) {
                                a[ai] = _mm512_fmadd_ps(qc, kv_at(it.k.as_ptr(), j + k, c), a[ai]);
                            }
                        }
                    }
                    a.map(|a| fold4(a))
                };
                let scale = _mm512_set1_ps(it.scale);
                let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
                let mut j = first;
                while j <= pos {
                    let n = (pos + 1 - j).min(LANES);
                    let mut v = [_mm512_setzero_ps(); LANES];
                    for (g, v) in v.chunks_exact_mut(4).enumerate().take(n.div_ceil(4)) {
                        v.copy_from_slice(&keys4(j + 4 * g, (n - 4 * g).min(4)));
                    }
                    let (s, m) = (_mm512_mul_ps(reduce16x16(&v), scale), lanes(0, n - 1));
                    _mm512_mask_storeu_ps(sp.add(j), m, s);
                    // f32::max's choice: a NaN score leaves the maximum as it is.
                    max = _mm512_mask_max_ps(max, m, s, max);
                    j += n;
                }
                _mm512_reduce_max_ps(max)
            }
        };

        softmax(sp, first, pos, max);

        match it.order {
            Order::Gemm => gemm_weighted_sum(it, sp, out),
            Order::VecDot => vec_dot_weighted_sum(it, sp, out),
        }
    }
}

/// Adds `w_j · v_j[chunk]` into `slot[j % 16]` for the visible keys `j` of the 16-key block
/// starting at `base`, in key order (`vp`: the values' chunk at position 0). A macro, so that
/// `slot` stays in registers in the caller.
macro_rules! add_block {
    ($it:expr, $sp:expr, $vp:expr, $base:expr, $slot:expr) => {{
        let (it, base) = ($it, $base);
        let whole = base >= it.first && base + LANES - 1 <= it.pos;
        for (l, s) in $slot.iter_mut().enumerate() {
            let j = base + l;
            if whole || (j >= it.first && j <= it.pos) {
                let v = _mm512_cvtph_ps(_mm256_loadu_si256($vp.add(j * it.kv_dim) as *const __m256i));
                *s = _mm512_fmadd_ps(_mm512_set1_ps(*$sp.add(j)), v, *s);
            }
        }
    }};
}

/// The pairwise lane reduction of 16 slot vectors (lane `d` of `l[i]`: output `d`, slot `i`),
/// as `_mm512_reduce_add_ps` would reduce each output's 16 slots.
#[target_feature(enable = "avx512f,avx512dq,fma,f16c")]
#[inline]
fn reduce_slots(l: &[__m512; LANES]) -> __m512 {
    let h: [__m512; 8] = std::array::from_fn(|i| _mm512_add_ps(l[i], l[i + 8]));
    let q: [__m512; 4] = std::array::from_fn(|i| _mm512_add_ps(h[i], h[i + 4]));
    _mm512_add_ps(_mm512_add_ps(q[0], q[2]), _mm512_add_ps(q[1], q[3]))
}

/// `Σ w·v` in [`Order::VecDot`]'s order: key `j` adds into lane `j % 16` of accumulator
/// `j / 16 % 4`, and the accumulators fold as (0 + 2) + (1 + 3) before the lane reduction.
/// Output chunk by output chunk, each accumulator's 16 slots in registers in turn.
#[target_feature(enable = "avx512f,avx512dq,fma,f16c")]
unsafe fn vec_dot_weighted_sum(it: &Item<'_>, sp: *const f32, out: &mut [f32]) {
    const ACCS: usize = 4;
    let hd = it.q.len();
    let (first, pos) = (it.first, it.pos);
    // SAFETY: as for `gemm_weighted_sum`.
    unsafe {
        for c in 0..hd / LANES {
            let vp = it.v.as_ptr().add(it.kv_off + c * LANES);
            // Each accumulator's slots in registers while its keys are added, then kept aside.
            let acc: [[__m512; LANES]; ACCS] = std::array::from_fn(|a| {
                let mut slot = [_mm512_setzero_ps(); LANES];
                // Blocks of 16 keys that accumulator `a` takes: base = 64m + 16a.
                let mut base = first / (ACCS * LANES) * (ACCS * LANES) + a * LANES;
                while base <= pos {
                    if base + LANES > first {
                        add_block!(it, sp, vp, base, slot);
                    }
                    base += ACCS * LANES;
                }
                slot
            });
            let l: [__m512; LANES] = std::array::from_fn(|l| fold4([acc[0][l], acc[1][l], acc[2][l], acc[3][l]]));
            _mm512_storeu_ps(out.as_mut_ptr().add(c * LANES), reduce_slots(&l));
        }
    }
}

/// `Σ w·v` in [`Order::Gemm`]'s order, output chunk by output chunk with the 16 slots in
/// registers: key `j` adds into slot `j % 16`, and unused slots hold the exact zeros the
/// portable path starts them with. `sp` holds the weights of keys `it.first..=it.pos`.
#[target_feature(enable = "avx512f,avx512dq,fma,f16c")]
unsafe fn gemm_weighted_sum(it: &Item<'_>, sp: *const f32, out: &mut [f32]) {
    let hd = it.q.len();
    let (first, pos) = (it.first, it.pos);
    // SAFETY: the caller checked that the values of keys first..=pos lie inside `it.v`, that
    // `sp` holds their weights and that `out` holds `hd` floats, a multiple of 16.
    unsafe {
        for c in 0..hd / LANES {
            let vp = it.v.as_ptr().add(it.kv_off + c * LANES);
            let mut slot = [_mm512_setzero_ps(); LANES];
            for base in (first / LANES * LANES..=pos).step_by(LANES) {
                add_block!(it, sp, vp, base, slot);
            }
            _mm512_storeu_ps(out.as_mut_ptr().add(c * LANES), reduce_slots(&slot));
        }
    }
}

/// Most query heads [`group_vec_dot`] takes at once: 4 heads × 4 accumulators fill 16 of the
/// 32 registers.
pub(super) const MAX_GROUP: usize = 4;

/// [`item`] in [`Order::VecDot`] for `G` query heads that share one KV head: the same
/// operations in the same order for each head, so the same bits, but every key and value chunk
/// converted from f16 once for all `G` heads instead of once per head. `it.q` is unused;
/// `q[g]` and `out[g]` are head `g`'s query (f16-exact) and output, `[head_dim]` each; head
/// `g`'s scores go to `scores[g * stride..]`, indexed by key position.
///
/// # Safety
/// As for [`item`], for every head; `scores` holds `(G - 1) * stride + it.pos + 1` floats
/// and `stride > it.pos`.
#[target_feature(enable = "avx512f,avx512dq,fma,f16c")]
pub(super) unsafe fn group_vec_dot<const G: usize>(
    it: &Item<'_>,
    q: [&[f32]; G],
    scores: &mut [f32],
    stride: usize,
    mut out: [&mut [f32]; G],
) {
    let hd = q[0].len();
    let nc = hd / LANES;
    let (first, pos) = (it.first, it.pos);
    assert!(matches!(it.order, Order::VecDot) && hd.is_multiple_of(LANES) && stride > pos);
    assert!(q.iter().all(|h| h.len() == hd) && out.iter().all(|o| o.len() == hd));
    assert!(scores.len() > (G - 1) * stride + pos);
    assert!(it.k.len() >= pos * it.kv_dim + it.kv_off + hd && it.v.len() >= pos * it.kv_dim + it.kv_off + hd);
    let sp = scores.as_mut_ptr();

    // SAFETY (the rest): every pointer offset stays inside the slices, as asserted above.
    unsafe {
        // Scores: per head, chunk c into accumulator c % 4, folded (0 + 2) + (1 + 3); then
        // the lane reductions of 16 keys at once, as `item`.
        let kp = it.k.as_ptr().add(it.kv_off);
        let scale = _mm512_set1_ps(it.scale);
        let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); G];
        let mut j = first;
        while j <= pos {
            let n = (pos + 1 - j).min(LANES);
            let mut folded = [[_mm512_setzero_ps(); LANES]; G];
            for k in 0..n {
                let key = kp.add((j + k) * it.kv_dim);
                let mut a = [[_mm512_setzero_ps(); 4]; G];
                for c4 in (0..nc).step_by(4) {
                    for (ai, c) in (c4..nc.min(c4 + 4)).enumerate() {
                        let kc = _mm512_cvtph_ps(_mm256_loadu_si256(key.add(c * LANES) as *const __m256i));
                        for g in 0..G {
                            a[g][ai] = _mm512_fmadd_ps(_mm512_loadu_ps(q[g].as_ptr().add(c * LANES)), kc, a[g][ai]);
                        }
                    }
                }
                for g in 0..G {
                    folded[g][k] = fold4(a[g]);
                }
            }
            let m = lanes(0, n - 1);
            for g in 0..G {
                let s = _mm512_mul_ps(reduce16x16(&folded[g]), scale);
                _mm512_mask_storeu_ps(sp.add(g * stride + j), m, s);
                // f32::max's choice: a NaN score leaves the maximum as it is.
                max[g] = _mm512_mask_max_ps(max[g], m, s, max[g]);
            }
            j += n;
        }
        for (g, max) in max.iter().enumerate() {
            softmax(sp.add(g * stride), first, pos, _mm512_reduce_max_ps(*max));
        }

        // Σ w·v in `vec_dot_weighted_sum`'s order: key j into lane j % 16 of accumulator
        // j / 16 % 4. Each lane is its own chain, so the lanes run a quarter at a time (G × 4
        // registers) and every value row is still read once per output chunk.
        const ACCS: usize = 4;
        const PART: usize = 4;
        for c in 0..nc {
            let vp = it.v.as_ptr().add(it.kv_off + c * LANES);
            let mut acc = [[[_mm512_setzero_ps(); LANES]; ACCS]; G];
            for a in 0..ACCS {
                for l0 in (0..LANES).step_by(PART) {
                    let mut slot = [[_mm512_setzero_ps(); PART]; G];
                    // Blocks of 16 keys that accumulator `a` takes: base = 64m + 16a.
                    let mut base = first / (ACCS * LANES) * (ACCS * LANES) + a * LANES;
                    while base <= pos {
                        for l in 0..PART {
                            let j = base + l0 + l;
                            if j >= first && j <= pos {
                                let v = _mm512_cvtph_ps(_mm256_loadu_si256(vp.add(j * it.kv_dim) as *const __m256i));
                                for g in 0..G {
                                    slot[g][l] =
                                        _mm512_fmadd_ps(_mm512_set1_ps(*sp.add(g * stride + j)), v, slot[g][l]);
                                }
                            }
                        }
                        base += ACCS * LANES;
                    }
                    for g in 0..G {
                        acc[g][a][l0..l0 + PART].copy_from_slice(&slot[g]);
                    }
                }
            }
            for (acc, out) in acc.iter().zip(out.iter_mut()) {
                let l: [__m512; LANES] = std::array::from_fn(|l| fold4([acc[0][l], acc[1][l], acc[2][l], acc[3][l]]));
                _mm512_storeu_ps(out.as_mut_ptr().add(c * LANES), reduce_slots(&l));
            }
        }
    }
}
