//! Reading a model's weights from its GGUF file, in the layout this CPU's tiles read.

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::quant::{dequantize_row, QTensor, RepackCache};
use std::sync::Arc;

/// The source of a model's weights: its file and, when the caller gave one, the repack cache
/// that holds (or receives) the repacked copies of its tensors.
pub(crate) struct Weights<'a> {
    pub file: &'a Arc<GgufFile>,
    pub cache: Option<&'a RepackCache>,
}

impl Weights<'_> {
    /// A 2-D weight (already shape-checked by `ModelConfig::from_gguf`), in the layout `matmul`
    /// reads fastest on this CPU: from the repack cache, or repacked now.
    pub fn tensor(&self, name: &str) -> Result<QTensor> {
        let info = self
            .file
            .tensor(name)
            .ok_or_else(|| Error::gguf(0, format!("tensor[{name:?}]"), "required tensor is missing"))?;
        // Tensors without tiles (1-D, float, ...) come back from both unchanged.
        let t = QTensor::from_gguf(self.file, info)?;
        Ok(match self.cache.and_then(|c| c.repacked(&t)) {
            Some(repacked) => repacked,
            None => t.interleaved(),
        })
    }

    /// A 1-D weight (norm, rope factors) as f32.
    pub fn norm(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        let mut out = vec![0.0; t.cols];
        dequantize_row(t.qtype, t.data(), &mut out);
        Ok(out)
    }
}
