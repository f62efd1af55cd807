//! Q4_K and Q6_K products summed in exactly the order of the llama.cpp code path that would
//! compute them on x86, which depends on the weight's shape and on how many tokens the product
//! has. The integer parts are exact whatever the order; these f32 orders are what differ, by an
//! ulp or so, and an ulp flips an int8 rounding in a later layer now and then (see `matmul`).
//!
//! The paths, in llama.cpp's x86 build (`ggml-cpu`):
//! - **Q4_K with a multiple of 8 rows is repacked at load** into 8-row tiles (`repack.cpp`).
//!   Tokens are taken 4 at a time by `ggml_gemm_q4_K_8x8_q8_K` and the `n % 4` left over one by
//!   one by `ggml_gemv_q4_K_8x8_q8_K`. Both keep two f32 accumulators per output, one for the
//!   scaled products and one for the minimums, and subtract them at the end; the GEMM adds into
//!   them once per 64 elements, the GEMV once per 256.
//! - **Q5_K and Q6_K are not repacked on x86.** From 8 tokens on, the tiled K-quant GEMM (`tiled/`) adds one
//!   rounded term per 256 elements, `fma((isum · d_w), d_x, acc)`; below 8 tokens,
//!   `ggml_vec_dot_q6_K_q8_K` (AVX2) keeps 8 lanes per row, takes the `-32` offset out of each lane
//!   through the activation's 16-element sums, and reduces the lanes with `hsum_float_8`.
//!   Q5_K takes the same paths: the tiled GEMM rounds `d_w · s1 - dmin_w · s2` per block (`s1`
//!   the scaled quants, `s2` the minimums times the activation's sub-block sums; one fused
//!   multiply-subtract) and adds it times `d_x` with one fma; `ggml_vec_dot_q5_K_q8_K` keeps 8
//!   lanes as Q6_K's does and sums the minimums apart, `summs = fma(s2, -d_x · dmin_w, summs)`,
//!   added after `hsum_float_8` (both read off the disassembly of the llama.cpp build compare.py
//!   runs, libggml-cpu 0.25.3).
//!
//! Each order is written twice: plainly here (the reference) and as AVX2 or NEON integer
//! kernels (`x86_avx2.rs`, `aarch64_neon_kquant.rs`) that feed the same f32 steps, tested
//! bit-identical.

use super::legacy_dot::{f16_at, hsum8};
use super::QType;

/// Bytes of one block: Q4_K `d dmin scales[12] qs[128]`, Q6_K `ql[128] qh[64] scales[16] d`,
/// Q8_K `d:f32 qs[256] bsums[16]:i16`.
const Q4_K_BYTES: usize = 144;
const Q6_K_BYTES: usize = 210;
const Q5_K_BYTES: usize = 176;
const Q8_K_BYTES: usize = 292;

/// The llama.cpp code path (and so the f32 order) of one token's product with a weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KOrder {
    /// Repacked Q4_K, a token in a group of 4 (`ggml_gemm_q4_K_8x8_q8_K`).
    Q4KGemm,
    /// Repacked Q4_K, one of the `n % 4` last tokens (`ggml_gemv_q4_K_8x8_q8_K`).
    Q4KGemv,
    /// Q6_K with at least 8 tokens (the tiled K-quant GEMM).
    Q6KTiled,
    /// Q6_K with fewer than 8 tokens (`ggml_vec_dot_q6_K_q8_K`).
    Q6KVecDot,
    /// Q5_K with at least 8 tokens (the tiled K-quant GEMM).
    Q5KTiled,
    /// Q5_K with fewer than 8 tokens (`ggml_vec_dot_q5_K_q8_K`).
    Q5KVecDot,
}

/// The path llama.cpp takes for token `t` of an `n_tokens` product with a `qtype` weight of
/// `rows` rows, or `None` for the types and shapes this module does not cover.
pub fn k_order(qtype: QType, rows: usize, t: usize, n_tokens: usize) -> Option<KOrder> {
    match qtype {
        QType::Q4_K if rows.is_multiple_of(8) => {
            Some(if t < n_tokens - n_tokens % 4 { KOrder::Q4KGemm } else { KOrder::Q4KGemv })
        }
        QType::Q6_K => Some(if n_tokens >= 8 { KOrder::Q6KTiled } else { KOrder::Q6KVecDot }),
        QType::Q5_K => Some(if n_tokens >= 8 { KOrder::Q5KTiled } else { KOrder::Q5KVecDot }),
        _ => None,
    }
}

/// Exact integer parts of one Q4_K × Q8_K block, per 64 elements (two sub-blocks `2j`, `2j+1`):
/// `isum[j] = Σ scale · q4 · q8` and `imin[j] = Σ min · (sum of the activation's quants)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Q4KInts {
    pub isum: [i32; 4],
    pub imin: [i32; 4],
}

/// Exact integer parts of one Q5_K × Q8_K block, as `ggml_vec_dot_q5_K_q8_K` (AVX2) forms them:
/// lane `k` = Σ scale · q5 · q8 over bytes `4k..4k+4` of every 32-element sub-block (q5 the
/// unsigned 5-bit quant), `imin` = Σ min · (sum of the sub-block's activations).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Q5KInts {
    pub lanes: [i32; 8],
    pub imin: i32,
}

/// A kernel of [`Q5KInts`] (`w`: one Q5_K block, `a`: one Q8_K block).
pub type Q5KIntsFn = fn(&[u8], &[u8]) -> Q5KInts;

/// Integer kernels: [`q4k_ints`]/[`q6k_lanes`]/[`q5k_ints`] or their AVX2 or NEON twins.
/// `q5k` is an `Option` so that a target without a Q5_K twin can leave it `None` (those rows
/// then take candle's `vec_dot`); AVX2, NEON and the portable kernels all have one.
#[derive(Clone, Copy)]
pub struct IntKernels {
    pub q4k: fn(&[u8], &[u8]) -> Q4KInts,
    pub q6k: fn(&[u8], &[u8]) -> [i32; 8],
    pub q5k: Option<Q5KIntsFn>,
}

impl IntKernels {
    pub const PORTABLE: IntKernels = IntKernels { q4k: q4k_ints, q6k: q6k_lanes, q5k: Some(q5k_ints) };

    /// Whether these kernels compute `order`.
    pub fn covers(&self, order: KOrder) -> bool {
        !matches!(order, KOrder::Q5KTiled | KOrder::Q5KVecDot) || self.q5k.is_some()
    }

    /// The AVX2 or NEON (`dotprod`) kernels where the CPU has them, else the portable ones.
    pub fn best() -> IntKernels {
        #[cfg(target_arch = "x86_64")]
        if super::x86_avx2_detected() {
            return IntKernels {
                q4k: super::x86_avx2::q4k_ints,
                q6k: super::x86_avx2::q6k_lanes,
                q5k: Some(super::x86_avx2::q5k_ints),
            };
        }
        #[cfg(target_arch = "aarch64")]
        if super::aarch64_neon::detected() {
            return IntKernels {
                q4k: super::aarch64_neon_kquant::q4k_ints,
                q6k: super::aarch64_neon_kquant::q6k_lanes,
                q5k: Some(super::aarch64_neon_kquant::q5k_ints),
            };
        }
        IntKernels::PORTABLE
    }
}

#[inline(always)]
fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The Q8_K block's 16-element sum `i` (bytes 260.. of its 292).
#[inline]
fn bsum(a: &[u8], i: usize) -> i32 {
    i16::from_le_bytes([a[260 + 2 * i], a[261 + 2 * i]]) as i32
}

/// [`Q4KInts::imin`]`[j]`: the minimums of sub-blocks `2j`, `2j + 1` times the sums of their
/// activations (from the Q8_K block `a`'s 16-element sums). Shared by every `q4k_ints`.
#[inline(always)]
pub(crate) fn q4k_imin(mn: &[u8; 8], a: &[u8], j: usize) -> i32 {
    mn[2 * j] as i32 * (bsum(a, 4 * j) + bsum(a, 4 * j + 1))
        + mn[2 * j + 1] as i32 * (bsum(a, 4 * j + 2) + bsum(a, 4 * j + 3))
}

/// Takes Q6_K's `-32` offset out of the 8 lanes of [`q6k_lanes`] (lane `k`: elements
/// `32k..32k + 32`) through the activation's 16-element sums; `sc` are the block's 16 scales.
#[inline(always)]
pub(crate) fn q6k_sub_offsets(lanes: &mut [i32; 8], sc: &[u8], a: &[u8]) {
    for (k, lane) in lanes.iter_mut().enumerate() {
        let s = |i: usize| sc[i] as i8 as i32 * bsum(a, i);
        *lane -= (s(2 * k) + s(2 * k + 1)) << 5;
    }
}

/// Q4_K's 12 packed bytes as 8 six-bit scales and 8 six-bit minimums.
#[inline(always)]
pub(crate) fn q4k_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// Portable [`Q4KInts`] of one block pair (`w`: 144 bytes, `a`: 292 bytes).
pub fn q4k_ints(w: &[u8], a: &[u8]) -> Q4KInts {
    let (sc, mn) = q4k_scales_mins(&w[4..16]);
    let mut out = Q4KInts::default();
    for j in 0..4 {
        let (mut lo, mut hi) = (0i32, 0i32);
        for l in 0..32 {
            let q = w[16 + 32 * j + l];
            lo += (q & 0x0f) as i32 * a[4 + 64 * j + l] as i8 as i32;
            hi += (q >> 4) as i32 * a[4 + 64 * j + 32 + l] as i8 as i32;
        }
        out.isum[j] = sc[2 * j] as i32 * lo + sc[2 * j + 1] as i32 * hi;
        out.imin[j] = q4k_imin(&mn, a, j);
    }
    out
}

/// Portable integer lanes of one Q6_K × Q8_K block pair, as `ggml_vec_dot_q6_K_q8_K` (AVX2)
/// forms them: lane `k` holds bytes `4k..4k+4` of every 32-element chunk, `Σ scale · q6 · q8`
/// with the unsigned 6-bit `q6`, minus `32 · Σ scale · q8` over elements `32k..32k+32`.
pub fn q6k_lanes(w: &[u8], a: &[u8]) -> [i32; 8] {
    let (ql, qh, sc) = (&w[..128], &w[128..192], &w[192..208]);
    let mut lanes = [0i32; 8];
    for h in 0..2 {
        for b in 0..32 {
            let (l0, l1, hb) = (ql[64 * h + b], ql[64 * h + 32 + b], qh[32 * h + b]);
            let q = [
                (l0 & 0x0f) | ((hb & 3) << 4),
                (l1 & 0x0f) | (((hb >> 2) & 3) << 4),
                (l0 >> 4) | (((hb >> 4) & 3) << 4),
                (l1 >> 4) | (((hb >> 6) & 3) << 4),
            ];
            for (c, &q) in q.iter().enumerate() {
                let e = 128 * h + 32 * c + b;
                lanes[b / 4] += sc[e / 16] as i8 as i32 * q as i32 * a[4 + e] as i8 as i32;
            }
        }
    }
    q6k_sub_offsets(&mut lanes, sc, a);
    lanes
}

/// Q5_K's 5-bit quant of element `l` of sub-block `2j + hi` from its `qs` byte and `qh` byte.
#[inline(always)]
fn q5(q: u8, h: u8, j: usize, hi: usize) -> i32 {
    let nibble = if hi == 0 { q & 0x0f } else { q >> 4 };
    (nibble | ((h >> (2 * j + hi)) & 1) << 4) as i32
}

/// Portable [`Q5KInts`] of one block pair (`w`: `d dmin scales[12] qh[32] qs[128]`, `a`: 292
/// bytes).
pub fn q5k_ints(w: &[u8], a: &[u8]) -> Q5KInts {
    let (sc, mn) = q4k_scales_mins(&w[4..16]);
    let (qh, qs) = (&w[16..48], &w[48..176]);
    let mut lanes = [0i32; 8];
    for j in 0..4 {
        for l in 0..32 {
            let y = |hi: usize| a[4 + 64 * j + 32 * hi + l] as i8 as i32;
            let (q, h) = (qs[32 * j + l], qh[l]);
            lanes[l / 4] += sc[2 * j] as i32 * q5(q, h, j, 0) * y(0) + sc[2 * j + 1] as i32 * q5(q, h, j, 1) * y(1);
        }
    }
    Q5KInts { lanes, imin: (0..4).map(|j| q4k_imin(&mn, a, j)).sum() }
}

crate::simd::simd_fn! {
    /// `Σ w · x` over one row in `order`'s f32 order: `w` holds the row's weight blocks, `x` the
    /// token's Q8_K blocks, of the same length.
    pub fn row_dot(order: KOrder, ints: &IntKernels, w: &[u8], x: &[u8]) -> f32 {
        match order {
            KOrder::Q4KGemm | KOrder::Q4KGemv => {
                let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
                for (wb, xb) in w.chunks_exact(Q4_K_BYTES).zip(x.chunks_exact(Q8_K_BYTES)) {
                    let dx = f32_at(xb, 0);
                    let (d, dmin) = (f16_at(wb, 0) * dx, f16_at(wb, 2) * dx);
                    let q = (ints.q4k)(wb, xb);
                    if order == KOrder::Q4KGemm {
                        for j in 0..4 {
                            acc = (q.isum[j] as f32).mul_add(d, acc);
                            acc_min = (q.imin[j] as f32).mul_add(dmin, acc_min);
                        }
                    } else {
                        acc = (q.isum.iter().sum::<i32>() as f32).mul_add(d, acc);
                        acc_min = (q.imin.iter().sum::<i32>() as f32).mul_add(dmin, acc_min);
                    }
                }
                acc - acc_min
            }
            KOrder::Q6KTiled => {
                let mut acc = 0.0f32;
                for (wb, xb) in w.chunks_exact(Q6_K_BYTES).zip(x.chunks_exact(Q8_K_BYTES)) {
                    let isum: i32 = (ints.q6k)(wb, xb).iter().sum();
                    acc = (isum as f32 * f16_at(wb, 208)).mul_add(f32_at(xb, 0), acc);
                }
                acc
            }
            KOrder::Q6KVecDot => {
                let mut acc = [0.0f32; 8];
                for (wb, xb) in w.chunks_exact(Q6_K_BYTES).zip(x.chunks_exact(Q8_K_BYTES)) {
                    let d = f32_at(xb, 0) * f16_at(wb, 208);
                    for (a, lane) in acc.iter_mut().zip((ints.q6k)(wb, xb)) {
                        *a = d.mul_add(lane as f32, *a);
                    }
                }
                hsum8(&acc)
            }
            KOrder::Q5KTiled | KOrder::Q5KVecDot => {
                let q5k = ints.q5k.expect("Q5_K integer kernels (IntKernels::covers)");
                let (mut acc, mut summs) = ([0.0f32; 8], 0.0f32);
                for (wb, xb) in w.chunks_exact(Q5_K_BYTES).zip(x.chunks_exact(Q8_K_BYTES)) {
                    let (dx, dw, dmin) = (f32_at(xb, 0), f16_at(wb, 0), f16_at(wb, 2));
                    let q = q5k(wb, xb);
                    if order == KOrder::Q5KTiled {
                        // d·s1 - dmin·s2 (one rounding for the minimums' term), then one fma
                        // into the accumulator with the activation's scale.
                        let r = (q.lanes.iter().sum::<i32>() as f32) * dw;
                        let r = (-(q.imin as f32)).mul_add(dmin, r);
                        acc[0] = dx.mul_add(r, acc[0]);
                    } else {
                        let d = dx * dw;
                        for (a, lane) in acc.iter_mut().zip(q.lanes) {
                            *a = d.mul_add(lane as f32, *a);
                        }
                        summs = (q.imin as f32).mul_add(-dx * dmin, summs);
                    }
                }
                if order == KOrder::Q5KTiled {
                    acc[0]
                } else {
                    hsum8(&acc) + summs
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::activation::quantize_row_q8_k;
    use crate::quant::dequantize_row;
    use half::f16;

    fn rnd_bytes(n: usize, seed: &mut u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                *seed as u8
            })
            .collect()
    }

    /// Random blocks with small finite f16 scales.
    fn weights(qtype: QType, n_blocks: usize, seed: &mut u64) -> Vec<u8> {
        let mut w = rnd_bytes(n_blocks * qtype.type_size(), seed);
        for (i, b) in w.chunks_exact_mut(qtype.type_size()).enumerate() {
            let d = f16::from_f32(0.002 + 0.0003 * i as f32).to_le_bytes();
            match qtype {
                QType::Q4_K | QType::Q5_K => {
                    b[..2].copy_from_slice(&d);
                    b[2..4].copy_from_slice(&f16::from_f32(0.001 * (i % 3) as f32).to_le_bytes());
                }
                _ => b[208..210].copy_from_slice(&d),
            }
        }
        w
    }

    #[test]
    fn every_order_computes_the_product() {
        let mut seed = 0x5eed_1234_abcd_0001u64;
        let n = 1024;
        let x: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 9.0).collect();
        let mut xq = vec![0u8; n / 256 * Q8_K_BYTES];
        quantize_row_q8_k(&x, &mut xq);
        let xd: Vec<f64> = xq
            .chunks_exact(Q8_K_BYTES)
            .flat_map(|b| (0..256).map(move |i| f32_at(b, 0) as f64 * b[4 + i] as i8 as f64))
            .collect();
        for (qtype, orders) in [
            (QType::Q4_K, [KOrder::Q4KGemm, KOrder::Q4KGemv]),
            (QType::Q6_K, [KOrder::Q6KTiled, KOrder::Q6KVecDot]),
            (QType::Q5_K, [KOrder::Q5KTiled, KOrder::Q5KVecDot]),
        ] {
            let w = weights(qtype, n / 256, &mut seed);
            let mut wd = vec![0.0f32; n];
            dequantize_row(qtype, &w, &mut wd);
            let want: f64 = wd.iter().zip(&xd).map(|(&a, &b)| a as f64 * b).sum();
            for order in orders {
                let got = row_dot(order, &IntKernels::PORTABLE, &w, &xq) as f64;
                assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{order:?}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn simd_integer_kernels_equal_the_portable_ones() {
        let best = IntKernels::best();
        let mut seed = 0x0dd_ba11_cafe_f00du64;
        for _ in 0..300 {
            let a = rnd_bytes(Q8_K_BYTES, &mut seed);
            // Real Q8_K blocks have bsums that are the sums of their quants.
            let mut a = a;
            for i in 0..16 {
                let s: i32 = (0..16).map(|j| a[4 + 16 * i + j] as i8 as i32).sum();
                a[260 + 2 * i..262 + 2 * i].copy_from_slice(&(s as i16).to_le_bytes());
            }
            let w4 = rnd_bytes(Q4_K_BYTES, &mut seed);
            let w6 = rnd_bytes(Q6_K_BYTES, &mut seed);
            let w5 = rnd_bytes(Q5_K_BYTES, &mut seed);
            assert_eq!((best.q4k)(&w4, &a), q4k_ints(&w4, &a));
            assert_eq!((best.q6k)(&w6, &a), q6k_lanes(&w6, &a));
            if let Some(q5k) = best.q5k {
                assert_eq!(q5k(&w5, &a), q5k_ints(&w5, &a));
            }
        }
    }

    #[test]
    fn paths_follow_llama_cpp_dispatch() {
        assert_eq!(k_order(QType::Q4_K, 640, 11, 13), Some(KOrder::Q4KGemm));
        assert_eq!(k_order(QType::Q4_K, 640, 12, 13), Some(KOrder::Q4KGemv));
        assert_eq!(k_order(QType::Q4_K, 640, 0, 1), Some(KOrder::Q4KGemv));
        assert_eq!(k_order(QType::Q4_K, 644, 0, 16), None);
        assert_eq!(k_order(QType::Q6_K, 640, 0, 8), Some(KOrder::Q6KTiled));
        assert_eq!(k_order(QType::Q6_K, 640, 6, 7), Some(KOrder::Q6KVecDot));
        assert_eq!(k_order(QType::Q5_K, 640, 0, 8), Some(KOrder::Q5KTiled));
        assert_eq!(k_order(QType::Q5_K, 640, 0, 1), Some(KOrder::Q5KVecDot));
        assert_eq!(k_order(QType::Q3_K, 640, 0, 1), None);
    }
}
