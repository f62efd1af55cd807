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
mod chunk_orders;
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
use crate::quant::{matmul, matmul_fused_seqs, QTensor, RepackCache};
use crate::threadpool::ThreadPool;
use chunk_orders::ChunkOrders;
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
        KvCache::new(cfg.n_layer, n_ctx, cfg.n_head_kv, cfg.head_dim)
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

    /// Runs the tokens of several sequences in one pass (continuous batching: every weight is
    /// read once for all of them). Each sequence's tokens run at positions `cache.len()..` of
    /// its own cache and are appended to it, as [`Model::forward`] would, and give bit for bit
    /// the same results as `forward` on that sequence alone with the same tokens.
    ///
    /// Returns the logits of the last token of every sequence with `logits` set, in order
    /// (`[k, n_vocab]`). All tokens together must fit one chunk (`scratch.max_batch()`).
    /// Errors (nothing is computed and no cache changes): as for `forward`, for any sequence,
    /// and more tokens than `max_batch`.
    fn forward_batch<'s>(
        &self,
        seqs: &mut [SeqBatch<'_>],
        scratch: &'s mut ForwardScratch,
        pool: &ThreadPool,
    ) -> Result<&'s [f32]>;

    /// The summation orders token `t` of an `n`-token chunk of a sequence gets (a small
    /// number): the keys and values of a position equal, bit for bit, those of another
    /// sequence's with the same tokens up to it when every position up to it ran with the same
    /// class in both. The engine reuses cached prefixes across requests on this.
    fn chunk_class(&self, t: usize, n: usize) -> u8;
}

/// One sequence's part of a [`Model::forward_batch`].
pub struct SeqBatch<'a> {
    /// Tokens to run, at least one.
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    /// Whether the batch returns the logits of this sequence's last token.
    pub logits: bool,
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
    /// How a token's results depend on the chunk it runs in.
    orders: ChunkOrders,
}

impl CommonWeights {
    fn load(w: &Weights, cfg: &ModelConfig, embd_scale: f32) -> Result<CommonWeights> {
        let token_embd = w.tensor("token_embd.weight")?;
        let output = if cfg.tied_embeddings { token_embd.clone() } else { w.tensor("output.weight")? };
        let orders = ChunkOrders::of(w.file);
        Ok(CommonWeights { token_embd, output_norm: w.norm("output_norm.weight")?, output, embd_scale, orders })
    }
}

/// The per-architecture part of a forward pass.
pub(crate) trait Layers {
    fn cfg(&self) -> &ModelConfig;
    fn common(&self) -> &CommonWeights;
    /// Runs every layer over the residual rows `s.x` of the tokens of `seqs`, one sequence
    /// after another (`s.seq_tokens` rows each), sequence `i` at positions
    /// `seqs[i].cache.len()..`, storing their keys and values in its cache (which the caller
    /// then advances).
    fn run_layers(&self, seqs: &mut [SeqBatch<'_>], s: &mut ForwardScratch, pool: &ThreadPool);
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

    fn forward_batch<'s>(
        &self,
        seqs: &mut [SeqBatch<'_>],
        scratch: &'s mut ForwardScratch,
        pool: &ThreadPool,
    ) -> Result<&'s [f32]> {
        run_batch(self, seqs, scratch, pool)
    }

    fn chunk_class(&self, t: usize, n: usize) -> u8 {
        self.common().orders.class(t, n)
    }
}

/// Stores each sequence's keys and values of layer `il` (rows of `k`, `v`, one sequence after
/// another) in its cache, then runs its attention over them: `att` gets each query row's output.
/// The single-token sequences (decodes) share one dispatch to the pool.
pub(crate) fn attend_seqs(
    c: &ModelConfig,
    il: usize,
    seqs: &mut [SeqBatch<'_>],
    q: &mut [f32],
    k: &[f32],
    v: &[f32],
    att: &mut [f32],
    window: Option<usize>,
    scale: f32,
    scores: &mut [f32],
    pool: &ThreadPool,
) {
    let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
    let params = |pos0: usize, n_tokens: usize| AttnParams {
        n_head: c.n_head,
        n_head_kv: c.n_head_kv,
        head_dim: c.head_dim,
        pos0,
        n_tokens,
        window,
        scale,
    };
    let mut t0 = 0;
    for seq in seqs.iter_mut() {
        let (nt, pos0) = (seq.tokens.len(), seq.cache.len());
        let rows = |w: usize| t0 * w..(t0 + nt) * w;
        seq.cache.store(il, pos0, &k[rows(kv_dim)], &v[rows(kv_dim)]);
        if nt > 1 {
            attention(&params(pos0, nt), &mut q[rows(q_dim)], seq.cache.layer(il), &mut att[rows(q_dim)], scores, pool);
        }
        t0 += nt;
    }
    let seqs = &*seqs;
    let decodes = seqs
        .iter()
        .scan(0, |row, seq| {
            *row += seq.tokens.len();
            Some((*row - 1, seq))
        })
        .filter(|(_, seq)| seq.tokens.len() == 1)
        .map(|(row, seq)| attention::DecodeQuery { row, pos: seq.cache.len(), kv: seq.cache.layer(il) });
    if decodes.clone().next().is_some() {
        attention::attention_decode(&params(0, 1), decodes, q, att, scores, pool);
    }
}

/// Checks one sequence's tokens and cache against the model and scratch (`forward`'s errors).
fn check_seq(cfg: &ModelConfig, tokens: &[u32], cache: &KvCache, s: &ForwardScratch) -> Result<()> {
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
    Ok(())
}

/// Looks up (and scales) the embeddings of `tokens` into the residual rows starting at row
/// `row0`.
fn embed<L: Layers>(model: &L, tokens: &[u32], row0: usize, s: &mut ForwardScratch) {
    let (w, n_embd) = (model.common(), model.cfg().n_embd);
    for (t, &id) in tokens.iter().enumerate() {
        let row = &mut s.x[(row0 + t) * n_embd..(row0 + t + 1) * n_embd];
        w.token_embd.dequantize_row_into(id as usize, row);
        if w.embd_scale != 1.0 {
            row.iter_mut().for_each(|v| *v *= w.embd_scale);
        }
    }
}

/// Grows the attention scratch for a cache of `capacity` positions.
fn reserve_scores(s: &mut ForwardScratch, cfg: &ModelConfig, capacity: usize, pool: &ThreadPool) {
    let n_scores = pool.n_threads() * attention::scratch_per_thread(capacity, cfg.head_dim);
    if s.scores.len() < n_scores {
        s.scores.resize(n_scores, 0.0);
    }
}

/// The driver behind `Model::forward_batch`.
fn run_batch<'s, L: Layers>(
    model: &L,
    seqs: &mut [SeqBatch<'_>],
    s: &'s mut ForwardScratch,
    pool: &ThreadPool,
) -> Result<&'s [f32]> {
    let cfg = model.cfg();
    for q in seqs.iter() {
        check_seq(cfg, q.tokens, q.cache, s)?;
    }
    let n: usize = seqs.iter().map(|q| q.tokens.len()).sum();
    if n > s.max_batch {
        return Err(Error::invalid("seqs", format!("{n} tokens in one batch; the scratch holds {}", s.max_batch)));
    }
    let (n_vocab, n_embd) = (cfg.n_vocab, cfg.n_embd);
    let n_out = seqs.iter().filter(|q| q.logits).count();
    if let Some(cap) = seqs.iter().map(|q| q.cache.capacity()).max() {
        reserve_scores(s, cfg, cap, pool);
    }
    if s.logits.len() < n_out * n_vocab {
        s.logits.resize(n_out * n_vocab, 0.0);
    }
    s.seq_tokens.clear();
    let mut row0 = 0;
    for q in seqs.iter() {
        embed(model, q.tokens, row0, s);
        s.seq_tokens.push(q.tokens.len());
        row0 += q.tokens.len();
    }
    model.run_layers(seqs, s, pool);

    // Output head: each wanted row alone in its product, as `forward` computes a last token.
    let w = model.common();
    let (mut row, mut k) = (0, 0);
    s.head_tokens.clear();
    for q in seqs.iter_mut() {
        row += q.tokens.len();
        q.cache.advance(q.tokens.len());
        if q.logits {
            let last = &s.x[(row - 1) * n_embd..row * n_embd];
            layers::rms_norm_into(pool, last, &mut s.xn[k * n_embd..(k + 1) * n_embd], &w.output_norm, cfg.norm_eps);
            s.head_tokens.push(1);
            k += 1;
        }
    }
    if n_out > 0 {
        let logits = &mut s.logits[..n_out * n_vocab];
        matmul_fused_seqs([(&w.output, logits)], &s.xn[..n_out * n_embd], &s.head_tokens, &mut s.mm, pool);
        if let Some(cap) = cfg.final_logit_softcapping {
            layers::softcap(&mut s.logits[..n_out * n_vocab], cap);
        }
    }
    Ok(&s.logits[..n_out * n_vocab])
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
    check_seq(cfg, tokens, cache, s)?;
    let (n_vocab, n_embd) = (cfg.n_vocab, cfg.n_embd);
    reserve_scores(s, cfg, cache.capacity(), pool);
    let n_logits = if all_logits { tokens.len() * n_vocab } else { n_vocab };
    if s.logits.len() < n_logits {
        s.logits.resize(n_logits, 0.0);
    }

    let n_chunks = tokens.len().div_ceil(s.max_batch);
    for (ci, chunk) in tokens.chunks(s.max_batch).enumerate() {
        let n = chunk.len();
        embed(model, chunk, 0, s);
        s.seq_tokens.clear();
        s.seq_tokens.push(n);
        model.run_layers(&mut [SeqBatch { tokens: chunk, cache: &mut *cache, logits: false }], s, pool);
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
        layers::rms_norm_into(pool, &s.x[first * n_embd..n * n_embd], xn, &w.output_norm, cfg.norm_eps);
        let logits = &mut s.logits[out_off..out_off + m * n_vocab];
        matmul(&w.output, xn, m, logits, &mut s.mm, pool);
        if let Some(cap) = cfg.final_logit_softcapping {
            layers::softcap(logits, cap);
        }
    }
    Ok(&s.logits[..n_logits])
}
