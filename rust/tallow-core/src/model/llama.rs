//! `llama`: pre-norm decoder with RMSNorm, grouped-query attention, RoPE (GGML mode 0,
//! adjacent pairs) and a SwiGLU feed-forward. Llama 1/2/3, Mistral, TinyLlama, SmolLM2.

use super::layers::{add_assign, rms_norm_into, silu_mul};
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
    /// `[n_embd, n_head * head_dim]`
    attn_output: QTensor,
    /// `[n_embd]`
    ffn_norm: Vec<f32>,
    /// `[n_ff, n_embd]`
    ffn_gate: QTensor,
    /// `[n_ff, n_embd]`
    ffn_up: QTensor,
    /// `[n_embd, n_ff]`
    ffn_down: QTensor,
}

pub(crate) struct Llama {
    cfg: ModelConfig,
    common: CommonWeights,
    blocks: Vec<Block>,
    /// Llama 3.1 `rope_freqs`: per-pair divisors of the rotation frequency, `[rope_dim / 2]`.
    rope_freqs: Option<Vec<f32>>,
}

impl Llama {
    pub(crate) fn load(w: &Weights, cfg: ModelConfig) -> Result<Llama> {
        let common = CommonWeights::load(w, &cfg, 1.0)?;
        let rope_freqs = if cfg.has_rope_freqs { Some(w.norm("rope_freqs.weight")?) } else { None };
        let blocks = (0..cfg.n_layer)
            .map(|il| {
                let n = |s: &str| format!("blk.{il}.{s}.weight");
                Ok(Block {
                    attn_norm: w.norm(&n("attn_norm"))?,
                    attn_q: w.tensor(&n("attn_q"))?,
                    attn_k: w.tensor(&n("attn_k"))?,
                    attn_v: w.tensor(&n("attn_v"))?,
                    attn_output: w.tensor(&n("attn_output"))?,
                    ffn_norm: w.norm(&n("ffn_norm"))?,
                    ffn_gate: w.tensor(&n("ffn_gate"))?,
                    ffn_up: w.tensor(&n("ffn_up"))?,
                    ffn_down: w.tensor(&n("ffn_down"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Llama { cfg, common, blocks, rope_freqs })
    }
}

impl Layers for Llama {
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
        let spans = seqs.iter().map(|q| q.cache.len()..q.cache.len() + q.tokens.len());
        s.rope.fill(spans, c.rope_dim, c.rope_freq_base, c.rope_freq_scale, self.rope_freqs.as_deref());
        let x = &mut s.x[..n * n_embd];
        let xn = &mut s.xn[..n * n_embd];
        let (q, k, v) = (&mut s.q[..n * q_dim], &mut s.k[..n * kv_dim], &mut s.v[..n * kv_dim]);
        let att = &mut s.att[..n * q_dim];
        let proj = &mut s.proj[..n * n_embd];
        let (gate, up) = (&mut s.gate[..n * n_ff], &mut s.up[..n * n_ff]);
        let (mm, seq_tokens) = (&mut s.mm, &s.seq_tokens[..]);

        for (il, b) in self.blocks.iter().enumerate() {
            // Attention.
            rms_norm_into(pool, x, xn, &b.attn_norm, c.norm_eps);
            let qkv = [(&b.attn_q, &mut *q), (&b.attn_k, &mut *k), (&b.attn_v, &mut *v)];
            matmul_fused_seqs(qkv, xn, seq_tokens, mm, pool);
            s.rope.apply(pool, q, c.head_dim, c.rope_style);
            s.rope.apply(pool, k, c.head_dim, c.rope_style);
            attend_seqs(c, il, seqs, q, k, v, att, None, c.attn_scale, &mut s.scores, pool);
            matmul_fused_seqs([(&b.attn_output, &mut *proj)], att, seq_tokens, mm, pool);
            add_assign(pool, x, proj);

            // SwiGLU feed-forward.
            rms_norm_into(pool, x, xn, &b.ffn_norm, c.norm_eps);
            matmul_fused_seqs([(&b.ffn_gate, &mut *gate), (&b.ffn_up, &mut *up)], xn, seq_tokens, mm, pool);
            silu_mul(pool, gate, up);
            matmul_fused_seqs([(&b.ffn_down, &mut *proj)], gate, seq_tokens, mm, pool);
            add_assign(pool, x, proj);
        }
    }
}
