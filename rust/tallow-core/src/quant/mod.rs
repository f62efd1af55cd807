//! Quantized tensor formats and the products the models use.
//!
//! Weights stay in their GGML block format. A product `y = W x` quantizes the activations `x`
//! to the weight type's dot-product partner (Q8_0, Q8_1 or Q8_K; F16 for F16 weights), as
//! llama.cpp does, then takes integer dot products row by row. candle-core's block types and
//! routines are the reference implementation (`reference.rs`).

#[cfg(target_arch = "aarch64")]
mod aarch64_neon;
#[cfg(target_arch = "aarch64")]
mod aarch64_neon_kquant;
pub mod activation;
mod arena;
pub mod blocks;
mod deferred;
mod kernels;
pub mod kquant_order;
mod legacy_dot;
mod matmul;
mod qtype;
mod reference;
mod repack_cache;
mod scalar;
mod shares;
mod tensor;
mod x16;
#[cfg(target_arch = "x86_64")]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;
#[cfg(target_arch = "x86_64")]
pub mod x86_legacy_tile;
#[cfg(target_arch = "x86_64")]
mod x86_x16;
#[cfg(target_arch = "x86_64")]
mod x86_x16_kquant;
#[cfg(target_arch = "x86_64")]
mod x86_x16_legacy;

#[cfg(target_arch = "aarch64")]
pub use aarch64_neon::{detected as neon_dotprod_detected, row_dot_for as neon_row_dot_for};
pub use kernels::{kernels, Kernels, VecDotFn};
pub use legacy_dot::{row_dot, row_dot_for, RowDot};
pub(crate) use matmul::layout_rows;
pub use matmul::{matmul, matmul_fused, matmul_fused_seqs, matmul_with, tiles_for, MatmulScratch};
pub use qtype::QType;
pub use reference::{dequantize_row, matmul_candle};
pub use repack_cache::{wait_for_repack_writes, RepackCache, RepackCacheStatus};
pub use tensor::{QTensor, INTERLEAVE};

use crate::error::{Error, Result};

/// Byte alignment the block type of `qtype` needs when viewed in place.
pub(crate) fn block_align(qtype: QType) -> usize {
    match qtype {
        QType::F32 | QType::Q8_K => 4,
        _ => 2,
    }
}

/// Fails with `UnsupportedModel` naming the tensor unless tallow can compute with `qtype`.
pub fn check_supported(name: &str, qtype: QType) -> Result<()> {
    if qtype.is_supported() {
        Ok(())
    } else {
        Err(Error::unsupported(format!("tensor {name:?} has type {qtype}, which tallow does not support yet")))
    }
}

/// The activation block type a weight type's dot product takes (`None` for float types).
pub fn act_type(qtype: QType) -> Option<QType> {
    use QType::*;
    match qtype {
        Q4_0 | Q5_0 | Q8_0 => Some(Q8_0),
        Q4_1 | Q5_1 => Some(Q8_1),
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K => Some(Q8_K),
        _ => None,
    }
}

/// Whether this CPU has what `x86_avx2.rs` needs.
#[cfg(target_arch = "x86_64")]
fn x86_avx2_detected() -> bool {
    crate::simd::avx2()
}
