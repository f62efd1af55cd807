//! Element-wise building blocks shared by the architectures: RMSNorm, RoPE, activations.
//! Rows are `[n, dim]` row-major slices; everything works in place on scratch buffers.

use super::config::RopeStyle;

/// `x[r] = x[r] / rms(x[r]) * w` for every row of width `w.len()`.
/// The sum of squares is accumulated in f64, as ggml does, so long rows do not lose precision.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let dim = w.len();
    for row in x.chunks_exact_mut(dim) {
        let ss: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let scale = 1.0 / ((ss / dim as f64) as f32 + eps).sqrt();
        for (v, &g) in row.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }
}

/// `dst[r] = rms_norm(src[r]) * w`.
pub fn rms_norm_into(src: &[f32], dst: &mut [f32], w: &[f32], eps: f32) {
    dst.copy_from_slice(src);
    rms_norm(dst, w, eps);
}

/// `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// SwiGLU: `gate = silu(gate) * up`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// GeGLU with the tanh approximation of GELU (ggml_gelu): `gate = gelu(gate) * up`.
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const GELU_COEF_A: f32 = 0.044_715;
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        let t = (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh();
        *g = 0.5 * x * (1.0 + t) * u;
    }
}

/// cos/sin of the rotation angles for positions `pos0..pos0 + n`: `[n, rope_dim / 2]` each.
///
/// Angle of pair `i` at position `p`: `p * freq_scale * base^(-2i / rope_dim) / factor[i]`
/// (`factor` = Llama 3.1's `rope_freqs`, 1 otherwise). Computed in f64, then rounded.
#[derive(Default)]
pub struct RopeTable {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    half: usize,
}

impl RopeTable {
    pub fn fill(
        &mut self,
        pos0: usize,
        n: usize,
        rope_dim: usize,
        base: f32,
        freq_scale: f32,
        factors: Option<&[f32]>,
    ) {
        let half = rope_dim / 2;
        self.half = half;
        self.cos.clear();
        self.sin.clear();
        for p in pos0..pos0 + n {
            let p = p as f64 * freq_scale as f64;
            for i in 0..half {
                let inv_freq = (base as f64).powf(-2.0 * i as f64 / rope_dim as f64);
                let ff = factors.map_or(1.0, |f| f[i] as f64);
                let theta = p * inv_freq / ff;
                self.cos.push(theta.cos() as f32);
                self.sin.push(theta.sin() as f32);
            }
        }
    }

    /// Rotates `x` (`[n, n_heads * head_dim]`, `n` as filled) in place.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, style: RopeStyle) {
        let half = self.half;
        let n_rows = self.cos.len() / half.max(1);
        let row_len = x.len() / n_rows.max(1);
        for (t, row) in x.chunks_exact_mut(row_len).enumerate() {
            let cos = &self.cos[t * half..(t + 1) * half];
            let sin = &self.sin[t * half..(t + 1) * half];
            for head in row.chunks_exact_mut(head_dim) {
                for i in 0..half {
                    let (a, b) = match style {
                        RopeStyle::Normal => (2 * i, 2 * i + 1),
                        RopeStyle::Neox => (i, i + half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[i] - x1 * sin[i];
                    head[b] = x0 * sin[i] + x1 * cos[i];
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

    #[test]
    fn rms_norm_unit_rows() {
        let mut x = vec![3.0, 4.0, 0.0, 0.0];
        rms_norm(&mut x, &[1.0, 2.0], 0.0);
        let s = (12.5f32).sqrt();
        assert!((x[0] - 3.0 / s).abs() < 1e-6 && (x[1] - 8.0 / s).abs() < 1e-6);
        // An all-zero row stays finite thanks to eps... and exactly zero.
        let mut z = vec![0.0, 0.0];
        rms_norm(&mut z, &[1.0, 1.0], 1e-6);
        assert_eq!(z, [0.0, 0.0]);
    }

    #[test]
    fn rope_position_zero_is_identity_and_styles_pair_differently() {
        let mut t = RopeTable::default();
        t.fill(0, 1, 4, 10000.0, 1.0, None);
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        t.apply(&mut x, 4, RopeStyle::Normal);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);

        // Position 1, pair 0 has angle 1 rad in both styles; the pairs differ.
        t.fill(1, 1, 4, 10000.0, 1.0, None);
        let (c, s) = (1f32.cos(), 1f32.sin());
        let mut n = vec![1.0, 2.0, 0.0, 0.0];
        t.apply(&mut n, 4, RopeStyle::Normal);
        assert!((n[0] - (c - 2.0 * s)).abs() < 1e-6 && (n[1] - (s + 2.0 * c)).abs() < 1e-6);
        let mut g = vec![1.0, 0.0, 2.0, 0.0];
        t.apply(&mut g, 4, RopeStyle::Neox);
        assert!((g[0] - (c - 2.0 * s)).abs() < 1e-6 && (g[2] - (s + 2.0 * c)).abs() < 1e-6);
        // Norm is preserved.
        let before: f32 = [1.0f32, 2.0].iter().map(|v| v * v).sum();
        assert!((n[0] * n[0] + n[1] * n[1] - before).abs() < 1e-5);
    }

    #[test]
    fn activations() {
        let mut g = vec![0.0, 1.0];
        silu_mul(&mut g, &[5.0, 2.0]);
        assert!(g[0] == 0.0 && (g[1] - 2.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
        let mut g = vec![0.0, 3.0];
        gelu_mul(&mut g, &[1.0, 1.0]);
        assert!(g[0] == 0.0 && (g[1] - 2.9964).abs() < 1e-3);
    }
}
