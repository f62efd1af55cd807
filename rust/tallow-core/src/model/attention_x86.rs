//! AVX-512 version of one attention item (`attention.rs`): the same operations in the same
//! order, so the same bits, with each 16-lane accumulator in a register, ggml's vectorized
//! `expf` over 16 keys at a time, and the final lane reductions done for 16 outputs at once.
//! At long contexts a decode runs the query heads that share a KV head together
//! ([`group_vec_dot`]): decode attention waits mostly on its f16 keys and values, and the group
//! converts each of them once instead of once per head.

use super::attention::{Item, Order, LANES};
use super::layers_x86::expf16;
use crate::kv_cache::{v_index, V_BLOCK};
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

/// Starts loading the values of keys `first..=pos` (blocked, as [`Item::v`]) into the cache,
/// when they are few: the weighted sums read each element's run of values in turn, a line or
/// two per element at short contexts, which the hardware prefetcher does not see coming.
/// Issued before the scores, the loads overlap with them.
#[target_feature(enable = "sse")]
#[inline]
fn prefetch_values(v: &[half::f16], hd: usize, first: usize, pos: usize) {
    const MAX_KEYS: usize = 128;
    if pos + 1 - first > MAX_KEYS {
        return;
    }
    for j in (first..=pos).step_by(32).chain(std::iter::once(pos)) {
        for d in 0..hd {
            // A prefetch never faults; the address lies inside `v` all the same.
            _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().wrapping_add(v_index(j, d, hd)) as *const i8);
        }
    }
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
    assert!(it.k.len() >= (pos + 1) * hd);
    let (qp, sp) = (it.q.as_ptr(), scores.as_mut_ptr());
    prefetch_values(it.v, hd, first, pos);
    let key_at = |j: usize, c: usize| {
        // SAFETY: j <= pos and c < nc, inside the slice (asserted above).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(it.k.as_ptr().add(j * hd + c * LANES) as *const __m256i)) }
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
                            *a = _mm512_fmadd_ps(qc, key_at(j + k, c), *a);
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
                                a[ai] = _mm512_fmadd_ps(qc, key_at(j + k, c), a[ai]);
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
            Order::Gemm => weighted_sums::<1, 1>(it.v, first, pos, [sp], &mut [out]),
            Order::VecDot => weighted_sums::<1, 4>(it.v, first, pos, [sp], &mut [out]),
        }
    }
}

/// `Σ w·v` for `G` heads that share one KV head's values `v` (blocked, as [`Item::v`]): output
/// element `d` of head `g` is one dot product of the weights `w[g]` (indexed by key position)
/// with element `d`'s run of values over keys `first..=pos`. Key `j` adds into lane `j % 16` of
/// accumulator `j / 16 % ACCS`, skipped keys leave their lanes as they are, and the
/// accumulators fold as (0 + 2) + (1 + 3) ([`Order::VecDot`], `ACCS` = 4; [`Order::Gemm`] has
/// one), then the lane reductions of 16 outputs run at once. Each value chunk is converted
/// from f16 once for all `G` heads.
///
/// # Safety
/// The CPU must have AVX-512F/DQ, FMA and F16C; `w[g].wrapping_add(j)` is valid for `j` in
/// `first..=pos`; `v` holds the blocks of positions up to `pos` for `head_dim` elements, a
/// multiple of 16, and each `out[g]` `head_dim` floats.
#[target_feature(enable = "avx512f,avx512dq,fma,f16c")]
unsafe fn weighted_sums<const G: usize, const ACCS: usize>(
    v: &[half::f16],
    first: usize,
    pos: usize,
    w: [*const f32; G],
    out: &mut [&mut [f32]; G],
) {
    let hd = out[0].len();
    assert!(hd.is_multiple_of(LANES) && out.iter().all(|o| o.len() == hd));
    assert!(v.len() >= (pos / V_BLOCK + 1) * V_BLOCK * hd);
    let (c0, c1) = (first / LANES, pos / LANES);
    let chunk_mask = |c: usize| {
        let j = c * LANES;
        lanes(first.max(j) - j, pos.min(j + LANES - 1) - j)
    };
    // SAFETY: the value chunks lie inside `v` (asserted above: a group of ACCS chunks, at most
    // 64 keys from a multiple of 64, stays in its block); weights outside first..=pos are
    // read only through masked loads.
    unsafe {
        if ACCS == 4 && c1 - c0 < 4 {
            // At most 4 chunks (short contexts): each accumulator takes at most one, so its sum
            // is that chunk's product added to +0.0, and the weights stay in registers while
            // the elements go by. (fold4 gives the same bits whichever accumulator holds which
            // chunk: it adds them as (a + c) + (b + d), and a sum does not depend on the order
            // of its two terms.)
            let n = c1 - c0 + 1;
            let m: [__mmask16; 4] = std::array::from_fn(|i| if i < n { chunk_mask(c0 + i) } else { 0 });
            let wv: [[__m512; 4]; G] = std::array::from_fn(|g| {
                std::array::from_fn(|i| _mm512_maskz_loadu_ps(m[i], w[g].wrapping_add((c0 + i) * LANES)))
            });
            for d0 in (0..hd).step_by(LANES) {
                let mut folded = [[_mm512_setzero_ps(); LANES]; G];
                for dd in 0..LANES {
                    let mut a = [[_mm512_setzero_ps(); 4]; G];
                    for i in 0..4 {
                        if i < n {
                            let vp = v.as_ptr().add(v_index((c0 + i) * LANES, d0 + dd, hd));
                            let x = _mm512_cvtph_ps(_mm256_loadu_si256(vp as *const __m256i));
                            for g in 0..G {
                                a[g][i] = _mm512_mask3_fmadd_ps(wv[g][i], x, a[g][i], m[i]);
                            }
                        }
                    }
                    for g in 0..G {
                        folded[g][dd] = fold4(a[g]);
                    }
                }
                for g in 0..G {
                    _mm512_storeu_ps(out[g].as_mut_ptr().add(d0), reduce16x16(&folded[g]));
                }
            }
            return;
        }
        // Groups of ACCS chunks from a multiple of ACCS: the first and the last take their keys
        // through masks, none of a chunk outside first..=pos; those between are whole.
        let (g0, g1) = (c0 / ACCS, c1 / ACCS);
        let masks = |gi: usize| -> [__mmask16; ACCS] {
            std::array::from_fn(|i| {
                let c = gi * ACCS + i;
                if c < c0 || c > c1 {
                    0
                } else {
                    chunk_mask(c)
                }
            })
        };
        let (m0, m1) = (masks(g0), masks(g1));
        for d0 in (0..hd).step_by(LANES) {
            let mut folded = [[_mm512_setzero_ps(); LANES]; G];
            for dd in 0..LANES {
                let mut a = [[_mm512_setzero_ps(); ACCS]; G];
                let row = v.as_ptr().add(v_index(0, d0 + dd, hd));
                // Group `gi` of ACCS chunks (chunk c goes to accumulator c % ACCS, a constant
                // index once unrolled), through the masks `$m` or whole.
                macro_rules! group {
                    ($gi:expr, $m:expr) => {{
                        let j0 = $gi * ACCS * LANES;
                        // A group stays in its block: add the block's offset to the row's.
                        let vp = row.add(j0 / V_BLOCK * hd * V_BLOCK + j0 % V_BLOCK);
                        // The same keys of the next element, V_BLOCK values on: each element reads
                        // its own run, which the hardware prefetcher meets anew.
                        _mm_prefetch::<_MM_HINT_T0>(vp.wrapping_add(V_BLOCK) as *const i8);
                        _mm_prefetch::<_MM_HINT_T0>(vp.wrapping_add(V_BLOCK + 32) as *const i8);
                        for i in 0..ACCS {
                            let x = _mm512_cvtph_ps(_mm256_loadu_si256(vp.add(i * LANES) as *const __m256i));
                            let m: Option<&[__mmask16; ACCS]> = $m;
                            for g in 0..G {
                                let wp = w[g].wrapping_add(j0 + i * LANES);
                                a[g][i] = match m {
                                    Some(m) => _mm512_mask3_fmadd_ps(_mm512_maskz_loadu_ps(m[i], wp), x, a[g][i], m[i]),
                                    None => _mm512_fmadd_ps(_mm512_loadu_ps(wp), x, a[g][i]),
                                };
                            }
                        }
                    }};
                }
                group!(g0, Some(&m0));
                for gi in g0 + 1..g1 {
                    group!(gi, None);
                }
                if g1 > g0 {
                    group!(g1, Some(&m1));
                }
                for g in 0..G {
                    folded[g][dd] = if ACCS == 4 {
                        fold4([a[g][0], a[g][1 % ACCS], a[g][2 % ACCS], a[g][3 % ACCS]])
                    } else {
                        a[g][0]
                    };
                }
            }
            for g in 0..G {
                _mm512_storeu_ps(out[g].as_mut_ptr().add(d0), reduce16x16(&folded[g]));
            }
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
    assert!(it.k.len() >= (pos + 1) * hd);
    let sp = scores.as_mut_ptr();

    // SAFETY (the rest): every pointer offset stays inside the slices, as asserted above.
    unsafe {
        // Scores: per head, chunk c into accumulator c % 4, folded (0 + 2) + (1 + 3); then
        // the lane reductions of 16 keys at once, as `item`.
        let kp = it.k.as_ptr();
        let scale = _mm512_set1_ps(it.scale);
        let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); G];
        let mut j = first;
        while j <= pos {
            let n = (pos + 1 - j).min(LANES);
            let mut folded = [[_mm512_setzero_ps(); LANES]; G];
            for k in 0..n {
                let key = kp.add((j + k) * hd);
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

        let w: [*const f32; G] = std::array::from_fn(|g| sp.add(g * stride).cast_const());
        weighted_sums::<G, 4>(it.v, first, pos, w, &mut out);
    }
}
