//! Quantized tensor formats and the products the models use.
//!
//! Weights stay in their GGML block format. A product `y = W x` quantizes the activations `x`
//! to the weight type's dot-product partner (Q8_0, Q8_1 or Q8_K; F16 for F16 weights), as
//! llama.cpp does, then takes integer dot products row by row. candle-core's block types and
//! routines are the reference implementation (`reference.rs`).

pub mod activation;
mod legacy_dot;
mod qtype;
mod reference;
mod tensor;

pub use qtype::QType;
pub use reference::{dequantize_row, matmul, MatmulScratch};
pub use tensor::QTensor;

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
        Err(Error::unsupported(format!(
            "tensor {name:?} has type {qtype}, which tallow does not support yet"
        )))
    }
}
