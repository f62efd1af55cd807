//! `gemma3`: like llama, plus
//! - embeddings scaled by sqrt(n_embd);
//! - RMSNorm on each head of Q and K before RoPE (QK-norm);
//! - "sandwich" norms: the attention and FFN outputs are normalized before the residual add;
//! - GELU (tanh) gated FFN;
//! - RoPE in NEOX style; 5 of every 6 layers attend within a sliding window and use RoPE base
//!   10000, the 6th is global with the file's base.
//!
//! Norm weights are used as stored: llama.cpp's converter already folds Gemma's `1 + w` into
//! the GGUF tensors.

use super::layers::{add_assign, gelu_mul, rms_norm, rms_norm_into, scale};
use super::{attend_seqs, CommonWeights, ForwardScratch, Layers, ModelConfig, SeqBatch, Weights};
use crate::error::Result;
use crate::quant::{matmul_fused_seqs, QTensor};
use crate::threadpool::ThreadPool;

/// One decoder block's weights. Matrices are `[rows, cols]` = `[out, in]`.
struct Block {
    /// `[n_embd]`
    attn_norm: Vec<f32>,
    /// `[n_head * head_dim, n_embd]`
    attn_q: QTensor,
    /// `[n_head_kv * head_dim, n_embd]`
    attn_k: QTensor,
    /// `[n_head_kv * head_dim, n_embd]`
    attn_v: QTensor,
    /// `[head_dim]`, applied to every head.
    attn_q_norm: Vec<f32>,
    /// `[head_dim]`
    attn_k_norm: Vec<f32>,
    /// `[n_embd, n_head * head_dim]`
    attn_output: QTensor,
    /// `[n_embd]`
    post_attention_norm: Vec<f32>,
    /// `[n_embd]`
    ffn_norm: Vec<f32>,
    /// `[n_ff, n_embd]`
    ffn_gate: QTensor,
    /// `[n_ff, n_embd]`
    ffn_up: QTensor,
    /// `[n_embd, n_ff]`
    ffn_down: QTensor,
    /// `[n_embd]`
    post_ffw_norm: Vec<f32>,
}

pub(crate) struct Gemma3 {
    cfg: ModelConfig,
    common: CommonWeights,
    blocks: Vec<Block>,
}

impl Gemma3 {
    pub(crate) fn load(w: &Weights, cfg: ModelConfig) -> Result<Gemma3> {
        // llama.cpp rounds sqrt(n_embd) in f32.
        let common = CommonWeights::load(w, &cfg, (cfg.n_embd as f32).sqrt())?;
        let blocks = (0..cfg.n_layer)
            .map(|il| {
                let n = |s: &str| format!("blk.{il}.{s}.weight");
                Ok(Block {
                    attn_norm: w.norm(&n("attn_norm"))?,
                    attn_q: w.tensor(&n("attn_q"))?,
                    attn_k: w.tensor(&n("attn_k"))?,
                    attn_v: w.tensor(&n("attn_v"))?,
                    attn_q_norm: w.norm(&n("attn_q_norm"))?,
                    attn_k_norm: w.norm(&n("attn_k_norm"))?,
                    attn_output: w.tensor(&n("attn_output"))?,
                    post_attention_norm: w.norm(&n("post_attention_norm"))?,
                    ffn_norm: w.norm(&n("ffn_norm"))?,
                    ffn_gate: w.tensor(&n("ffn_gate"))?,
                    ffn_up: w.tensor(&n("ffn_up"))?,
                    ffn_down: w.tensor(&n("ffn_down"))?,
                    post_ffw_norm: w.norm(&n("post_ffw_norm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Gemma3 { cfg, common, blocks })
    }
}

impl Layers for Gemma3 {
    fn cfg(&self) -> &ModelConfig {
        &self.cfg
    }

    fn common(&self) -> &CommonWeights {
        &self.common
    }

    fn run_layers(&self, seqs: &mut [SeqBatch<'_>], s: &mut ForwardScratch, pool: &ThreadPool) {
        let c = &self.cfg;
        let (n_embd, q_dim, kv_dim, n_ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff);
        let n: usize = s.seq_tokens.iter().sum();
        let spans = || seqs.iter().map(|q| q.cache.len()..q.cache.len() + q.tokens.len());
        s.rope.fill(spans(), c.rope_dim, c.rope_freq_base, c.rope_freq_scale, None);
        // The sliding-window layers are trained without position scaling.
        s.rope_local.fill(spans(), c.rope_dim, c.rope_freq_base_local, 1.0, None);
        let x = &mut s.x[..n * n_embd];
        let xn = &mut s.xn[..n * n_embd];
        let (q, k, v) = (&mut s.q[..n * q_dim], &mut s.k[..n * kv_dim], &mut s.v[..n * kv_dim]);
        let att = &mut s.att[..n * q_dim];
        let proj = &mut s.proj[..n * n_embd];
        let (gate, up) = (&mut s.gate[..n * n_ff], &mut s.up[..n * n_ff]);
        let (mm, seq_tokens) = (&mut s.mm, &s.seq_tokens[..]);

        for (il, b) in self.blocks.iter().enumerate() {
            let swa = c.is_swa_layer(il);
            let rope = if swa { &s.rope_local } else { &s.rope };

            // Attention.
            rms_norm_into(pool, x, xn, &b.attn_norm, c.norm_eps);
            let qkv = [(&b.attn_q, &mut *q), (&b.attn_k, &mut *k), (&b.attn_v, &mut *v)];
            matmul_fused_seqs(qkv, xn, seq_tokens, mm, pool);
            rms_norm(pool, q, &b.attn_q_norm, c.norm_eps); // per head: rows of head_dim
            rms_norm(pool, k, &b.attn_k_norm, c.norm_eps);
            rope.apply(pool, q, c.head_dim, c.rope_style);
            rope.apply(pool, k, c.head_dim, c.rope_style);
            // Scale Q before attention (rather than the scores), as llama.cpp does: the scaled
            // query is what gets rounded to f16.
            scale(pool, q, c.attn_scale);
            let window = if swa { c.sliding_window } else { None };
            attend_seqs(c, il, seqs, q, k, v, att, window, 1.0, &mut s.scores, pool);
            matmul_fused_seqs([(&b.attn_output, &mut *proj)], att, seq_tokens, mm, pool);
            rms_norm(pool, proj, &b.post_attention_norm, c.norm_eps);
            add_assign(pool, x, proj);

            // GELU-gated feed-forward.
            rms_norm_into(pool, x, xn, &b.ffn_norm, c.norm_eps);
            matmul_fused_seqs([(&b.ffn_gate, &mut *gate), (&b.ffn_up, &mut *up)], xn, seq_tokens, mm, pool);
            gelu_mul(pool, gate, up);
            matmul_fused_seqs([(&b.ffn_down, &mut *proj)], gate, seq_tokens, mm, pool);
            rms_norm(pool, proj, &b.post_ffw_norm, c.norm_eps);
            add_assign(pool, x, proj);
        }
    }
}
