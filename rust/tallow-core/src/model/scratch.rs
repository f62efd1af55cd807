//! `ForwardScratch`: every activation buffer of a forward pass, allocated once per sequence
//! (or per worker) and reused, so a decode step allocates nothing once warm.

use super::config::ModelConfig;
use super::layers::RopeTable;
use crate::error::{Error, Result};
use crate::quant::MatmulScratch;

/// Upper bound on `max_batch`: prefill is chunked, so larger chunks only cost memory.
pub const MAX_BATCH_LIMIT: usize = 1 << 16;

/// Activation buffers for chunks of up to `max_batch` tokens (`B` below).
pub struct ForwardScratch {
    pub(crate) max_batch: usize,
    /// (n_embd, q_dim, kv_dim, n_ff, n_vocab) of the model this scratch was made for.
    pub(crate) dims: [usize; 5],
    /// Residual stream, `[B, n_embd]`.
    pub(crate) x: Vec<f32>,
    /// Normalized input of a sub-layer, `[B, n_embd]`.
    pub(crate) xn: Vec<f32>,
    /// `[B, n_head * head_dim]`
    pub(crate) q: Vec<f32>,
    /// `[B, n_head_kv * head_dim]`
    pub(crate) k: Vec<f32>,
    /// `[B, n_head_kv * head_dim]`
    pub(crate) v: Vec<f32>,
    /// Attention output before `attn_output`, `[B, n_head * head_dim]`.
    pub(crate) att: Vec<f32>,
    /// Output of `attn_output` / `ffn_down`, `[B, n_embd]`.
    pub(crate) proj: Vec<f32>,
    /// `[B, n_ff]`
    pub(crate) gate: Vec<f32>,
    /// `[B, n_ff]`
    pub(crate) up: Vec<f32>,
    /// Attention scratch, `[n_threads, n_ctx + 16 * head_dim]`; sized on first use with a cache.
    pub(crate) scores: Vec<f32>,
    /// RoPE angles of the global layers and of the sliding-window layers, for the current chunk.
    pub(crate) rope: RopeTable,
    pub(crate) rope_local: RopeTable,
    /// `[n_out, n_vocab]`
    pub(crate) logits: Vec<f32>,
    pub(crate) mm: MatmulScratch,
    /// The tokens of each sequence in the current batch, in order (rows of `x` one sequence
    /// after another).
    pub(crate) seq_tokens: Vec<usize>,
    /// One 1 per row of the output head (each a sequence's last token, alone in its product).
    pub(crate) head_tokens: Vec<usize>,
}

impl std::fmt::Debug for ForwardScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardScratch").field("max_batch", &self.max_batch).finish()
    }
}

impl ForwardScratch {
    pub fn new(cfg: &ModelConfig, max_batch: usize) -> Result<ForwardScratch> {
        if max_batch == 0 || max_batch > MAX_BATCH_LIMIT {
            return Err(Error::invalid("max_batch", format!("{max_batch} is out of range 1..={MAX_BATCH_LIMIT}")));
        }
        // Dimensions are validated (≤ 2^20 each) by ModelConfig, so these products fit.
        let buf = |width: usize| vec![0.0f32; max_batch * width];
        Ok(ForwardScratch {
            max_batch,
            dims: [cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff, cfg.n_vocab],
            x: buf(cfg.n_embd),
            xn: buf(cfg.n_embd),
            q: buf(cfg.q_dim()),
            k: buf(cfg.kv_dim()),
            v: buf(cfg.kv_dim()),
            att: buf(cfg.q_dim()),
            proj: buf(cfg.n_embd),
            gate: buf(cfg.n_ff),
            up: buf(cfg.n_ff),
            scores: Vec::new(),
            rope: RopeTable::default(),
            rope_local: RopeTable::default(),
            logits: vec![0.0; cfg.n_vocab],
            mm: MatmulScratch::default(),
            seq_tokens: Vec::new(),
            head_tokens: Vec::new(),
        })
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }
}
