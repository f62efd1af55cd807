//! Transformer models over GGUF weights.
//!
//! Weights are immutable and shared (`Arc<dyn Model>`); every sequence owns a [`KvCache`] and
//! a [`ForwardScratch`]. [`Model::forward`] appends tokens to the cache and returns logits.
//! `config.rs` validates hyperparameters, `layers.rs`/`attention.rs` hold the shared math,
//! and each architecture has its own file (`llama.rs`, `gemma3.rs`).

mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_gemm_x86;
#[cfg(target_arch = "x86_64")]
mod attention_x86;
mod config;
mod gemma3;
mod layers;
#[cfg(target_arch = "x86_64")]
mod layers_x86;
mod llama;
mod scratch;
mod weights;

pub(crate) use attention::kernel_name as attention_kernel;
pub use attention::{attention, scratch_per_thread, AttnParams};
pub use config::{Arch, ModelConfig, RopeStyle};
pub use scratch::{ForwardScratch, MAX_BATCH_LIMIT};
pub(crate) use weights::Weights;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::kv_cache::KvCache;
use crate::quant::{matmul, QTensor, RepackCache};
use crate::threadpool::ThreadPool;
use std::sync::Arc;

/// A loaded model: shared, immutable weights.
pub trait Model: Send + Sync {
    fn config(&self) -> &ModelConfig;

    /// A zeroed cache for `n_ctx` positions (`1..=n_ctx_train`). Fails rather than aborting
    /// when the memory cannot be had.
    fn new_cache(&self, n_ctx: usize) -> Result<KvCache> {
        let cfg = self.config();
        if n_ctx == 0 || n_ctx > cfg.n_ctx_train {
            return Err(Error::invalid(
                "n_ctx",
                format!("{n_ctx} is out of range 1..={} (the model's training context)", cfg.n_ctx_train),
            ));
        }
        KvCache::new(cfg.n_layer, n_ctx, cfg.kv_dim())
    }

    /// Activation buffers for prefill chunks of up to `max_batch` tokens.
    fn new_scratch(&self, max_batch: usize) -> Result<ForwardScratch> {
        ForwardScratch::new(self.config(), max_batch)
    }

    /// Runs `tokens` at positions `cache.len()..` and appends their keys/values to `cache`.
    ///
    /// Returns the logits of the last token (`n_vocab` values), or of every token when
    /// `all_logits` (`tokens.len() * n_vocab`, row-major). Prefill runs in chunks of
    /// `scratch.max_batch()` tokens. Errors (nothing is computed and the cache is unchanged):
    /// empty `tokens`, a token id `>= n_vocab`, a cache or scratch made for another model,
    /// and `ContextOverflow` when the cache cannot hold the tokens.
    fn forward<'s>(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        scratch: &'s mut ForwardScratch,
        pool: &ThreadPool,
        all_logits: bool,
    ) -> Result<&'s [f32]>;
}

/// Loads the model of `file`, dispatching on `general.architecture`.
pub fn load_model(file: Arc<GgufFile>) -> Result<Arc<dyn Model>> {
    load_model_with(file, None)
}

/// [`load_model`] with a repack cache that holds, or receives, the repacked copies of the
/// weights.
pub fn load_model_with(file: Arc<GgufFile>, cache: Option<&RepackCache>) -> Result<Arc<dyn Model>> {
    let cfg = ModelConfig::from_gguf(&file)?;
    let w = Weights { file: &file, cache };
    Ok(match cfg.arch {
        Arch::Llama => Arc::new(llama::Llama::load(&w, cfg)?),
        Arch::Gemma3 => Arc::new(gemma3::Gemma3::load(&w, cfg)?),
    })
}

/// Threads to use by default: the machine's available parallelism.
pub fn default_n_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Input and output weights every architecture has.
pub(crate) struct CommonWeights {
    /// `[n_vocab, n_embd]`
    token_embd: QTensor,
    /// `[n_embd]`
    output_norm: Vec<f32>,
    /// `[n_vocab, n_embd]`; `token_embd` when tied.
    output: QTensor,
    /// Factor on the looked-up embeddings (gemma: sqrt(n_embd)).
    embd_scale: f32,
}

impl CommonWeights {
    fn load(w: &Weights, cfg: &ModelConfig, embd_scale: f32) -> Result<CommonWeights> {
        let token_embd = w.tensor("token_embd.weight")?;
        let output = if cfg.tied_embeddings { token_embd.clone() } else { w.tensor("output.weight")? };
        Ok(CommonWeights { token_embd, output_norm: w.norm("output_norm.weight")?, output, embd_scale })
    }
}

/// The per-architecture part of a forward pass.
pub(crate) trait Layers {
    fn cfg(&self) -> &ModelConfig;
    fn common(&self) -> &CommonWeights;
    /// Runs every layer over the residual rows `s.x[..n * n_embd]` of tokens at positions
    /// `pos0..pos0 + n`, storing their keys and values in `cache`.
    fn run_layers(&self, n: usize, pos0: usize, cache: &mut KvCache, s: &mut ForwardScratch, pool: &ThreadPool);
}

/// Every architecture is a [`Model`] through its layers: config and forward come from here.
impl<L: Layers + Send + Sync> Model for L {
    fn config(&self) -> &ModelConfig {
        self.cfg()
    }

    fn forward<'s>(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        scratch: &'s mut ForwardScratch,
        pool: &ThreadPool,
        all_logits: bool,
    ) -> Result<&'s [f32]> {
        run_forward(self, tokens, cache, scratch, pool, all_logits)
    }
}

/// The shared driver behind `Model::forward`: validation, chunking, embedding, output head.
pub(crate) fn run_forward<'s, L: Layers>(
    model: &L,
    tokens: &[u32],
    cache: &mut KvCache,
    s: &'s mut ForwardScratch,
    pool: &ThreadPool,
    all_logits: bool,
) -> Result<&'s [f32]> {
    let cfg = model.cfg();
    let w = model.common();
    if tokens.is_empty() {
        return Err(Error::invalid("tokens", "no tokens to run"));
    }
    if let Some((i, &t)) = tokens.iter().enumerate().find(|&(_, &t)| t as usize >= cfg.n_vocab) {
        return Err(Error::invalid("tokens", format!("token id {t} at index {i} is >= n_vocab = {}", cfg.n_vocab)));
    }
    if cache.n_layer() != cfg.n_layer || cache.kv_dim() != cfg.kv_dim() {
        return Err(Error::invalid("cache", "this KV cache was made for a different model"));
    }
    if s.dims != [cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff, cfg.n_vocab] {
        return Err(Error::invalid("scratch", "this scratch was made for a different model"));
    }
    let pos0 = cache.len();
    if tokens.len() > cache.capacity() - pos0 {
        return Err(Error::ContextOverflow(format!(
            "{} tokens do not fit: the context holds {} and {pos0} are used",
            tokens.len(),
            cache.capacity()
        )));
    }

    let n_vocab = cfg.n_vocab;
    let n_embd = cfg.n_embd;
    let n_scores = pool.n_threads() * attention::scratch_per_thread(cache.capacity(), cfg.head_dim);
    if s.scores.len() < n_scores {
        s.scores.resize(n_scores, 0.0);
    }
    let n_logits = if all_logits { tokens.len() * n_vocab } else { n_vocab };
    if s.logits.len() < n_logits {
        s.logits.resize(n_logits, 0.0);
    }

    let n_chunks = tokens.len().div_ceil(s.max_batch);
    for (ci, chunk) in tokens.chunks(s.max_batch).enumerate() {
        let n = chunk.len();
        let pos = cache.len();
        for (t, &id) in chunk.iter().enumerate() {
            let row = &mut s.x[t * n_embd..(t + 1) * n_embd];
            w.token_embd.dequantize_row_into(id as usize, row);
            if w.embd_scale != 1.0 {
                row.iter_mut().for_each(|v| *v *= w.embd_scale);
            }
        }
        model.run_layers(n, pos, cache, s, pool);
        cache.advance(n);

        // Output head over the rows whose logits are wanted.
        let (first, out_off) = if all_logits {
            (0, ci * s.max_batch * n_vocab)
        } else if ci + 1 == n_chunks {
            (n - 1, 0)
        } else {
            continue;
        };
        let m = n - first;
        let xn = &mut s.xn[..m * n_embd];
        layers::rms_norm_into(&s.x[first * n_embd..n * n_embd], xn, &w.output_norm, cfg.norm_eps);
        let logits = &mut s.logits[out_off..out_off + m * n_vocab];
        matmul(&w.output, xn, m, logits, &mut s.mm, pool);
        if let Some(cap) = cfg.final_logit_softcapping {
            layers::softcap(logits, cap);
        }
    }
    Ok(&s.logits[..n_logits])
}
