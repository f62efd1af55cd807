//! Element-wise building blocks shared by the architectures: RMSNorm, RoPE, activations.
//! Rows are `[n, dim]` row-major slices; everything works in place on scratch buffers, split
//! over the pool's threads by rows ([`ThreadPool::for_rows`]) when there are enough of them.

use super::config::RopeStyle;
use crate::threadpool::ThreadPool;
use half::f16;
use std::sync::OnceLock;

/// Values per run that [`ThreadPool::for_rows`] hands the element-wise steps without rows
/// (`x += y`, the activations): whole cache lines.
const RUN: usize = 64;

/// `x[r] = x[r] / rms(x[r]) * w` for every row of width `w.len()`.
pub fn rms_norm(pool: &ThreadPool, x: &mut [f32], w: &[f32], eps: f32) {
    pool.for_rows(x, w.len(), |_, rows| rms_norm_rows(rows, w, eps));
}

/// `dst[r] = rms_norm(src[r]) * w`.
pub fn rms_norm_into(pool: &ThreadPool, src: &[f32], dst: &mut [f32], w: &[f32], eps: f32) {
    let dim = w.len();
    pool.for_rows(dst, dim, |r0, rows| {
        rows.copy_from_slice(&src[r0 * dim..r0 * dim + rows.len()]);
        rms_norm_rows(rows, w, eps);
    });
}

/// Rows whose sums of squares [`rms_norm_rows`] runs side by side.
const NORM_ROWS: usize = 4;

crate::simd::simd_fn! {
    /// Squares are taken in f32 and summed in f64, in order, as ggml does (bit-identical
    /// results). One row's in-order sum waits on each f64 add, so [`NORM_ROWS`] rows' sums run
    /// side by side, each still in its own order.
    fn rms_norm_rows(x: &mut [f32], w: &[f32], eps: f32) {
        let dim = w.len();
        let mut groups = x.chunks_exact_mut(dim * NORM_ROWS);
        for group in &mut groups {
            let ss = sums_of_squares::<NORM_ROWS>(group, dim);
            for (row, ss) in group.chunks_exact_mut(dim).zip(ss) {
                scale_row(row, w, ss, eps);
            }
        }
        for row in groups.into_remainder().chunks_exact_mut(dim) {
            let [ss] = sums_of_squares::<1>(row, dim);
            scale_row(row, w, ss, eps);
        }
    }
}

/// `Σ x²` of each of the `R` rows of `rows` (`dim` values each), in f64, in order.
#[inline(always)]
fn sums_of_squares<const R: usize>(rows: &[f32], dim: usize) -> [f64; R] {
    let r: [&[f32]; R] = std::array::from_fn(|i| &rows[i * dim..(i + 1) * dim]);
    let mut ss = [0f64; R];
    for i in 0..dim {
        for (s, row) in ss.iter_mut().zip(&r) {
            let v = row[i];
            *s += (v * v) as f64;
        }
    }
    ss
}

#[inline(always)]
fn scale_row(row: &mut [f32], w: &[f32], ss: f64, eps: f32) {
    let scale = 1.0 / ((ss / w.len() as f64) as f32 + eps).sqrt();
    for (v, &g) in row.iter_mut().zip(w) {
        *v = *v * scale * g;
    }
}

/// `x += y`.
pub fn add_assign(pool: &ThreadPool, x: &mut [f32], y: &[f32]) {
    pool.for_rows(x, RUN, |r0, part| {
        for (a, &b) in part.iter_mut().zip(&y[r0 * RUN..]) {
            *a += b;
        }
    });
}

/// `x *= s`.
pub fn scale(pool: &ThreadPool, x: &mut [f32], s: f32) {
    pool.for_rows(x, RUN, |_, part| part.iter_mut().for_each(|v| *v *= s));
}

/// e^x as ggml's vectorized `ggml_v_expf` (AVX-512 variant, used by llama.cpp's softmax and
/// SiLU on this class of CPU) computes it, bit for bit: `x = n·ln2 + b` with `n` the nearest
/// integer to `x·log2(e)`, a degree-5 polynomial for `e^b`, scaled by `2^n`. Within 1.5 ulp of
/// the true value; the point is the same bits as llama.cpp, not accuracy.
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    // Adding 1.5·2^23 rounds to an integer (round to nearest even) in the low mantissa bits.
    const SHIFT: f32 = 12_582_912.0;
    const LOG2_E: f32 = f32::from_bits(0x3fb8_aa3b); // 0x1.715476p+0
    const LN2_HI: f32 = f32::from_bits(0x3f31_7200); // 0x1.62e4p-1
    const LN2_LO: f32 = f32::from_bits(0x35bf_be8e); // 0x1.7f7d1cp-20
    const C: [f32; 5] = [
        f32::from_bits(0x3f7f_fff6), // 0x1.ffffecp-1
        f32::from_bits(0x3eff_fedb), // 0x1.fffdb6p-2
        f32::from_bits(0x3e2a_af33), // 0x1.555e66p-3
        f32::from_bits(0x3d2b_9f17), // 0x1.573e2ep-5
        f32::from_bits(0x3c07_2010), // 0x1.0e4020p-7
    ];
    let n = x.mul_add(LOG2_E, SHIFT) - SHIFT;
    if n.is_nan() || n.abs() > 192.0 {
        // Far outside f32's range (or x = ±inf): 0 below, inf above.
        return if n > 0.0 { f32::INFINITY } else { 0.0 };
    }
    let b = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let u = b * b;
    let p = C[4].mul_add(b, C[3]).mul_add(u, C[2].mul_add(b, C[1]));
    let j = p.mul_add(u, C[0].mul_add(b, 1.0));
    // j · 2^n with one rounding (AVX-512 scalef): exact in f64, then rounded once to f32.
    // |n| <= 192, so 2^n is a normal f64 built from its exponent bits.
    let two_n = f64::from_bits(((n as i64 + 1023) as u64) << 52);
    (j as f64 * two_n) as f32
}

/// SwiGLU: `gate = silu(gate) * up`, `silu(x) = x / (1 + e^-x)` with ggml's [`expf`]
/// (16 values at a time with AVX-512, the same bits).
pub fn silu_mul(pool: &ThreadPool, gate: &mut [f32], up: &[f32]) {
    pool.for_rows(gate, RUN, |r0, part| silu_mul_run(part, &up[r0 * RUN..]));
}

fn silu_mul_run(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the features were detected.
        let done = unsafe { super::layers_x86::silu_mul16(gate, up) };
        return silu_mul_portable(&mut gate[done..], &up[done..]);
    }
    silu_mul_portable(gate, up)
}

crate::simd::simd_fn! {
    fn silu_mul_portable(gate: &mut [f32], up: &[f32]) {
        for (g, &u) in gate.iter_mut().zip(up) {
            *g = *g / (1.0 + expf(-*g)) * u;
        }
    }
}

/// Whether the AVX-512 kernels of the model layers (`layers_x86.rs`, `attention_x86.rs`,
/// `attention_gemm_x86.rs`) may run: AVX-512 F/DQ/VL, FMA and F16C (`TALLOW_KERNELS=scalar`
/// turns them off).
#[cfg(target_arch = "x86_64")]
pub(super) fn avx512() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        crate::quant::kernels().name() != "scalar"
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// GELU, tanh approximation, in f32: ggml_gelu_f32 as GCC compiles it for llama.cpp, which
/// contracts `1 + a·x·x` into one fma (`-ffp-contract=fast`); tanh rounded once from f64.
fn gelu_f32(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const GELU_COEF_A: f32 = 0.044_715;
    let inner = (GELU_COEF_A * x).mul_add(x, 1.0);
    0.5 * x * (1.0 + ((SQRT_2_OVER_PI * x * inner) as f64).tanh() as f32)
}

/// GELU of every f16 value, indexed by its bits: llama.cpp's CPU backend looks GELU up in such
/// a table (GGML_GELU_FP16), so the input is rounded to f16 and so is the result. Matching it
/// removes a ~0.05 difference per FFN.
fn gelu_table() -> &'static [f16] {
    static TABLE: OnceLock<Vec<f16>> = OnceLock::new();
    TABLE.get_or_init(|| (0..=u16::MAX).map(|b| f16::from_f32(gelu_f32(f16::from_bits(b).to_f32()))).collect())
}

/// GeGLU: `gate = gelu(gate) * up`, GELU through the f16 table within (-10, 10), exact outside
/// (0 below, identity above), as ggml_vec_geglu_f32.
pub fn gelu_mul(pool: &ThreadPool, gate: &mut [f32], up: &[f32]) {
    let table = gelu_table();
    pool.for_rows(gate, RUN, |r0, part| gelu_mul_run(table, part, &up[r0 * RUN..]));
}

fn gelu_mul_run(table: &[f16], gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            table[f16::from_f32(x).to_bits() as usize].to_f32() * u
        };
    }
}

/// cos/sin of the rotation angles of a batch's tokens, `[n, rope_dim / 2]` each: the positions
/// of each sequence's tokens (`spans`), one sequence after another.
///
/// Angle of pair `i` at position `p`: `freq_scale · p · base^(-2i / rope_dim) / factor[i]`
/// (`factor` = Llama 3.1's `rope_freqs`, 1 otherwise), computed in f32 exactly as ggml's rope
/// cache does: `base^(-2 / rope_dim)` once, then repeated multiplication, then `cosf`/`sinf`.
/// The f32 rounding of that recurrence is part of the model as llama.cpp runs it.
#[derive(Default)]
pub struct RopeTable {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    half: usize,
}

impl RopeTable {
    pub fn fill(
        &mut self,
        spans: impl Iterator<Item = std::ops::Range<usize>>,
        rope_dim: usize,
        base: f32,
        freq_scale: f32,
        factors: Option<&[f32]>,
    ) {
        let half = rope_dim / 2;
        self.half = half;
        self.cos.clear();
        self.sin.clear();
        let theta_scale = base.powf(-2.0 / rope_dim as f32);
        for p in spans.flatten() {
            let mut theta = p as f32;
            for i in 0..half {
                let ff = factors.map_or(1.0, |f| f[i]);
                let angle = freq_scale * (theta / ff);
                self.cos.push(angle.cos());
                self.sin.push(angle.sin());
                theta *= theta_scale;
            }
        }
    }

    /// Rotates `x` (`[n, n_heads * head_dim]`, `n` as filled) in place.
    pub fn apply(&self, pool: &ThreadPool, x: &mut [f32], head_dim: usize, style: RopeStyle) {
        let n_rows = self.cos.len() / self.half.max(1);
        let row_len = x.len() / n_rows.max(1);
        pool.for_rows(x, row_len, |t0, rows| rope_rows(self, t0, rows, row_len, head_dim, style));
    }
}

crate::simd::simd_fn! {
    /// Rotates `x`, rows `t0..` of the table's tokens.
    fn rope_rows(table: &RopeTable, t0: usize, x: &mut [f32], row_len: usize, head_dim: usize, style: RopeStyle) {
        let half = table.half;
        for (t, row) in (t0..).zip(x.chunks_exact_mut(row_len)) {
            let cos = &table.cos[t * half..(t + 1) * half];
            let sin = &table.sin[t * half..(t + 1) * half];
            for head in row.chunks_exact_mut(head_dim) {
                for i in 0..half {
                    let (a, b) = match style {
                        RopeStyle::Normal => (2 * i, 2 * i + 1),
                        RopeStyle::Neox => (i, i + half),
                    };
                    // Fused as GCC contracts ggml's `x0*cos - x1*sin` (bit-exact with llama.cpp).
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0.mul_add(cos[i], -(x1 * sin[i]));
                    head[b] = x0.mul_add(sin[i], x1 * cos[i]);
                }
            }
        }
    }
}

/// `logits = cap * tanh(logits / cap)`.
pub fn softcap(logits: &mut [f32], cap: f32) {
    for v in logits {
        *v = cap * (*v / cap).tanh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one() -> ThreadPool {
        ThreadPool::new(1)
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn gelu_table_is_llama_cpps() {
        // From tests/data/gelu_table_ref.py (llama-cpp-python 0.3.36's ggml_table_gelu_f16).
        const LLAMA_CPP_CHECKSUM: u64 = 66453207514090;
        let table = gelu_table();
        let checksum = (0..=u16::MAX)
            .filter(|&b| f16::from_bits(b).is_finite())
            .fold(0u64, |acc, b| acc.wrapping_add((b as u64 + 1).wrapping_mul(table[b as usize].to_bits() as u64)));
        assert_eq!(checksum, LLAMA_CPP_CHECKSUM);
        // The entry that first told the fma apart: gelu(-1.999) rounds to -0.0455, not -0.04547.
        assert_eq!(table[f16::from_f32(-1.999).to_bits() as usize].to_bits(), 0xa9d3);
    }

    #[test]
    fn rms_norm_unit_rows() {
        let mut x = vec![3.0, 4.0, 0.0, 0.0];
        rms_norm(&one(), &mut x, &[1.0, 2.0], 0.0);
        let s = (12.5f32).sqrt();
        assert!((x[0] - 3.0 / s).abs() < 1e-6 && (x[1] - 8.0 / s).abs() < 1e-6);
        // An all-zero row stays finite thanks to eps... and exactly zero.
        let mut z = vec![0.0, 0.0];
        rms_norm(&one(), &mut z, &[1.0, 1.0], 1e-6);
        assert_eq!(z, [0.0, 0.0]);
    }

    #[test]
    fn rope_position_zero_is_identity_and_styles_pair_differently() {
        let mut t = RopeTable::default();
        t.fill(std::iter::once(0..1), 4, 10000.0, 1.0, None);
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        t.apply(&one(), &mut x, 4, RopeStyle::Normal);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);

        // Position 1, pair 0 has angle 1 rad in both styles; the pairs differ.
        t.fill(std::iter::once(1..2), 4, 10000.0, 1.0, None);
        let (c, s) = (1f32.cos(), 1f32.sin());
        let mut n = vec![1.0, 2.0, 0.0, 0.0];
        t.apply(&one(), &mut n, 4, RopeStyle::Normal);
        assert!((n[0] - (c - 2.0 * s)).abs() < 1e-6 && (n[1] - (s + 2.0 * c)).abs() < 1e-6);
        let mut g = vec![1.0, 0.0, 2.0, 0.0];
        t.apply(&one(), &mut g, 4, RopeStyle::Neox);
        assert!((g[0] - (c - 2.0 * s)).abs() < 1e-6 && (g[2] - (s + 2.0 * c)).abs() < 1e-6);
        // Norm is preserved.
        let before: f32 = [1.0f32, 2.0].iter().map(|v| v * v).sum();
        assert!((n[0] * n[0] + n[1] * n[1] - before).abs() < 1e-5);
    }

    #[test]
    fn expf_is_close_and_saturates() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.04;
            let (got, want) = (expf(x), (x as f64).exp());
            assert!(((got as f64 - want) / want).abs() < 3e-7, "expf({x}) = {got}, want {want}");
        }
        assert_eq!((expf(0.0), expf(f32::NEG_INFINITY), expf(-200.0)), (1.0, 0.0, 0.0));
        assert_eq!((expf(f32::INFINITY), expf(200.0)), (f32::INFINITY, f32::INFINITY));
        // Subnormal results are rounded once, not flushed.
        let tiny = expf(-88.0);
        assert!(tiny < f32::MIN_POSITIVE && ((tiny as f64 / (-88f64).exp()) - 1.0).abs() < 1e-4);
    }

    #[test]
    fn silu_mul_simd_equals_portable() {
        // Every 16-value chunk and the tail, over inputs from deep negative to saturating.
        let gate: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.37).chain([f32::NAN, -0.0, 0.0]).collect();
        let up: Vec<f32> = (0..gate.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let (mut a, mut b) = (gate.clone(), gate.clone());
        silu_mul(&one(), &mut a, &up);
        silu_mul_portable(&mut b, &up);
        assert_eq!(bits(&a), bits(&b));
    }

    #[test]
    fn activations() {
        let mut g = vec![0.0, 1.0];
        silu_mul(&one(), &mut g, &[5.0, 2.0]);
        assert!(g[0] == 0.0 && (g[1] - 2.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
        let mut g = vec![0.0, 3.0, -12.0, 12.0, 1.0001];
        gelu_mul(&one(), &mut g, &[1.0, 1.0, 1.0, 2.0, 1.0]);
        assert!(g[0] == 0.0 && (g[1] - 2.9964).abs() < 1e-3);
        assert_eq!((g[2], g[3]), (0.0, 24.0));
        // Looked up at f16(1.0001) = 1.0 and rounded to f16, like llama.cpp.
        assert_eq!(g[4], f16::from_f32(gelu_f32(1.0)).to_f32());
    }

    /// Values from -4 to 4, none repeating in a short period.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32).map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 8001) as f32 / 1000.0 - 4.0).collect()
    }

    #[test]
    fn rms_norm_rows_side_by_side_sum_each_row_in_order() {
        // 7 rows: a group of 4 side by side, then 3 alone.
        let dim = 576;
        let (x, w) = (values(7 * dim, 1), values(dim, 2));
        let mut got = x.clone();
        rms_norm(&one(), &mut got, &w, 1e-5);
        for (r, row) in x.chunks_exact(dim).enumerate() {
            let ss: f64 = row.iter().map(|&v| (v * v) as f64).sum();
            let scale = 1.0 / ((ss / dim as f64) as f32 + 1e-5).sqrt();
            let want: Vec<f32> = row.iter().zip(&w).map(|(&v, &g)| v * scale * g).collect();
            assert_eq!(bits(&got[r * dim..(r + 1) * dim]), bits(&want), "row {r}");
        }
    }

    #[test]
    fn steps_split_over_threads_give_the_bits_of_one() {
        // 61 rows of 576 (35k values): over the 16 Ki values for_rows splits from, an odd
        // number of rows and of runs of 64.
        let (dim, n, head_dim) = (576, 61, 64);
        let (one, two) = (one(), ThreadPool::new(2));
        let (x, y, w) = (values(n * dim, 3), values(n * dim, 4), values(dim, 5));
        let mut table = RopeTable::default();
        table.fill([3..40, 100..124].into_iter(), head_dim, 10000.0, 1.0, None);
        let run = |pool: &ThreadPool| {
            let mut outs = Vec::new();
            let mut a = vec![0.0; n * dim];
            rms_norm_into(pool, &x, &mut a, &w, 1e-6);
            outs.push(a);
            let mut a = x.clone();
            rms_norm(pool, &mut a, &w, 1e-6);
            outs.push(a);
            let mut a = x.clone();
            add_assign(pool, &mut a, &y);
            scale(pool, &mut a, 0.125);
            outs.push(a);
            let mut a = x.clone();
            silu_mul(pool, &mut a, &y);
            outs.push(a);
            let mut a = x.clone();
            gelu_mul(pool, &mut a, &y);
            outs.push(a);
            for style in [RopeStyle::Normal, RopeStyle::Neox] {
                let mut a = x.clone();
                table.apply(pool, &mut a, head_dim, style);
                outs.push(a);
            }
            outs
        };
        for (i, (a, b)) in run(&one).iter().zip(run(&two)).enumerate() {
            assert_eq!(bits(a), bits(&b), "step {i}");
        }
    }

    #[test]
    fn element_wise_steps_reach_a_tail_short_of_a_run() {
        // 20000 values: over the 16 Ki values for_rows splits from, 32 past the last run of 64.
        let two = ThreadPool::new(2);
        let (x, y) = (values(20_000, 6), values(20_000, 7));
        let mut a = x.clone();
        add_assign(&two, &mut a, &y);
        let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
        assert_eq!(bits(&a), bits(&want));
    }
}
