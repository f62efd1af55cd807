//! What, besides its inputs, decides the bits of a token's keys and values: llama.cpp's
//! summation orders depend on the size of the product a token is in and on its index there
//! (`quant::kquant_order::k_order`, and the attention's one-query path). The engine reuses a
//! cached prefix computed by another request only where every position got the orders it
//! would get alone ([`ChunkOrders::class`]), so reuse never changes a result.

use crate::gguf::{GgufFile, TensorInfo};
use crate::quant::kquant_order::k_order;
use crate::quant::QType;

/// The order-deciding traits of a model's layer weights.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ChunkOrders {
    /// Some layer weight is Q4_K taken in groups of 4 tokens (`KOrder::Q4KGemm`), the rest of
    /// a chunk's tokens alone.
    q4k_groups: bool,
    /// Some layer weight is Q5_K or Q6_K, tiled from 8 tokens on.
    tiled_from_8: bool,
}

impl ChunkOrders {
    pub(crate) fn of(file: &GgufFile) -> ChunkOrders {
        let layer = || file.tensors().iter().filter(|t| t.name.starts_with("blk.") && t.shape.len() == 2);
        // Whether a weight's first token takes another path in a group of 4 than alone.
        let grouped = |t: &TensorInfo| {
            let rows = t.shape[1] as usize;
            k_order(t.qtype, rows, 0, 4) != k_order(t.qtype, rows, 0, 1)
        };
        ChunkOrders {
            q4k_groups: layer().any(|t| t.qtype == QType::Q4_K && grouped(t)),
            tiled_from_8: layer().any(|t| matches!(t.qtype, QType::Q5_K | QType::Q6_K)),
        }
    }

    /// The orders of token `t` of an `n`-token chunk, as a small number: positions with the
    /// same tokens up to them and the same classes get the same bits.
    pub(crate) fn class(self, t: usize, n: usize) -> u8 {
        let one = n == 1; // the attention's vec_dot path
        let grouped = self.q4k_groups && t < n - n % 4;
        let tiled = self.tiled_from_8 && n >= 8;
        u8::from(one) | u8::from(grouped) << 1 | u8::from(tiled) << 2
    }
}
