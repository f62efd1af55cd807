//! AVX-512 versions of element-wise steps of `layers.rs`, operation for operation as ggml's
//! vectorized CPU code runs them (the same bits as their scalar twins there).

use std::arch::x86_64::*;

/// ggml's `ggml_v_expf` for AVX-512, operation for operation (`layers::expf` is its scalar
/// twin).
#[target_feature(enable = "avx512f,avx512dq,fma,f16c")]
#[inline]
pub(super) fn expf16(x: __m512) -> __m512 {
    let r = _mm512_set1_ps(f32::from_bits(0x4b40_0000)); // 0x1.8p23
    let z = _mm512_fmadd_ps(x, _mm512_set1_ps(f32::from_bits(0x3fb8_aa3b)), r);
    let n = _mm512_sub_ps(z, r);
    let b = _mm512_fnmadd_ps(
        n,
        _mm512_set1_ps(f32::from_bits(0x35bf_be8e)),
        _mm512_fnmadd_ps(n, _mm512_set1_ps(f32::from_bits(0x3f31_7200)), x),
    );
    let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
    let u = _mm512_mul_ps(b, b);
    let c = |bits: u32| _mm512_set1_ps(f32::from_bits(bits));
    let j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(
            _mm512_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
            u,
            _mm512_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
        ),
        u,
        _mm512_fmadd_ps(c(0x3f7f_fff6), b, _mm512_set1_ps(1.0)),
    );
    let res = _mm512_scalef_ps(j, n);
    if big == 0 {
        return res;
    }
    let alt = _mm512_mask_blend_ps(
        _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, _mm512_setzero_ps()),
        _mm512_set1_ps(f32::INFINITY),
        _mm512_setzero_ps(),
    );
    _mm512_mask_blend_ps(big, res, alt)
}

/// SwiGLU over 16 values at a time, as `ggml_vec_swiglu_f32` with AVX-512:
/// `gate = gate / (1 + e^-gate) * up`; the tail (fewer than 16) is left to the caller.
/// Returns how many values were done.
///
/// # Safety
/// The CPU must have AVX-512F/DQ and FMA.
#[target_feature(enable = "avx512f,avx512dq,fma,f16c")]
pub(super) unsafe fn silu_mul16(gate: &mut [f32], up: &[f32]) -> usize {
    let n = gate.len().min(up.len()) / 16 * 16;
    for (g, u) in gate[..n].chunks_exact_mut(16).zip(up.chunks_exact(16)) {
        // SAFETY: both chunks hold 16 floats.
        unsafe {
            let x = _mm512_loadu_ps(g.as_ptr());
            let e = expf16(_mm512_sub_ps(_mm512_setzero_ps(), x));
            let silu = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e));
            _mm512_storeu_ps(g.as_mut_ptr(), _mm512_mul_ps(silu, _mm512_loadu_ps(u.as_ptr())));
        }
    }
    n
}
