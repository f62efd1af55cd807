//! `ModelConfig::from_gguf`: hyperparameters read from GGUF metadata and validated against
//! each other and against the tensor table before anything is allocated (reliability G28).

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::quant::{check_supported, QType};

/// Upper bounds that keep every product of dimensions far from overflow and every loop over
/// layers short. Real models are far inside them (Llama 3 405B: 126 layers, n_embd 16384).
const MAX_LAYERS: usize = 4096;
const MAX_DIM: usize = 1 << 20;
const MAX_VOCAB: usize = 1 << 24;
const MAX_CTX: usize = u32::MAX as usize;

/// The architectures tallow runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `llama`: Llama 1/2/3, Mistral, TinyLlama, SmolLM2, OpenLLaMA.
    Llama,
    /// `gemma3`: QK-norm, sandwich norms, GELU FFN, interleaved sliding-window attention.
    Gemma3,
}

impl Arch {
    pub fn from_name(name: &str) -> Result<Arch> {
        match name {
            "llama" => Ok(Arch::Llama),
            "gemma3" => Ok(Arch::Gemma3),
            other => {
                Err(Error::unsupported(format!("architecture {other:?} is not supported (tallow runs: llama, gemma3)")))
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// How RoPE pairs the dimensions of a head (GGML rope modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Mode 0: adjacent pairs `(2i, 2i+1)`. llama.cpp's converter permutes llama's Q/K rows so
    /// that this matches the HF "rotate half" layout.
    Normal,
    /// Mode 2 (NEOX): pairs `(i, i + rope_dim/2)`.
    Neox,
}

/// Hyperparameters of a model, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    /// `general.name`.
    pub name: Option<String>,
    /// Rows of `token_embd` (and of the output projection).
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Per-head size of Q, K and V (`attention.key_length`, default `n_embd / n_head`).
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_ctx_train: usize,
    /// Leading dimensions of each head that RoPE rotates (`rope.dimension_count`, even, ≤ head_dim).
    pub rope_dim: usize,
    pub rope_style: RopeStyle,
    /// Base of the global (or only) attention layers.
    pub rope_freq_base: f32,
    /// Linear position scaling: positions are multiplied by this (1 / `rope.scaling.factor`).
    pub rope_freq_scale: f32,
    /// Base of the sliding-window layers (gemma3: 10000); equals `rope_freq_base` otherwise.
    pub rope_freq_base_local: f32,
    pub norm_eps: f32,
    /// Factor on `q·k` (1/sqrt(head_dim), or gemma3's query_pre_attn_scalar rule).
    pub attn_scale: f32,
    /// Sliding-window size of the local layers, if the model has them.
    pub sliding_window: Option<usize>,
    /// Layer `il` is a sliding-window layer iff `il % swa_pattern < swa_pattern - 1`
    /// (gemma3: 5 local layers, then 1 global).
    pub swa_pattern: usize,
    /// `logits = cap * tanh(logits / cap)` when set.
    pub final_logit_softcapping: Option<f32>,
    /// True when there is no `output.weight` and the output projection reuses `token_embd`.
    pub tied_embeddings: bool,
    /// Whether `rope_freqs.weight` (Llama 3.1 frequency factors) is present.
    pub has_rope_freqs: bool,
    /// Total number of weights in the file.
    pub n_params: u64,
    /// `general.file_type` as llama.cpp names it, e.g. `"Q4_K_M"`.
    pub file_type: Option<String>,
}

impl ModelConfig {
    /// Width of the query projection: `n_head * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of one cached K or V row: `n_head_kv * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Whether layer `il` attends only to the last `sliding_window` positions.
    pub fn is_swa_layer(&self, il: usize) -> bool {
        self.sliding_window.is_some() && il % self.swa_pattern < self.swa_pattern - 1
    }

    /// Reads and validates the hyperparameters of `file` and checks every tensor the
    /// architecture needs exists with the right shape and a supported type.
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig> {
        let arch = Arch::from_name(file.architecture()?)?;
        let m = Meta { file, prefix: arch.name() };

        let n_embd = m.req_dim("embedding_length", MAX_DIM)?;
        let n_layer = m.req_dim("block_count", MAX_LAYERS)?;
        let n_ff = m.req_dim("feed_forward_length", MAX_DIM)?;
        let n_head = m.req_dim("attention.head_count", MAX_DIM)?;
        let n_head_kv = m.opt_dim("attention.head_count_kv", MAX_DIM)?.unwrap_or(n_head);
        if !n_head.is_multiple_of(n_head_kv) {
            return Err(m.bad(
                "attention.head_count_kv",
                format!("{n_head_kv} does not divide attention.head_count = {n_head}"),
            ));
        }
        let head_dim = match m.opt_dim("attention.key_length", MAX_DIM)? {
            Some(d) => d,
            None if n_embd.is_multiple_of(n_head) => n_embd / n_head,
            None => {
                return Err(m.bad(
                    "attention.head_count",
                    format!("embedding_length {n_embd} is not a multiple of head_count {n_head}"),
                ))
            }
        };
        if let Some(v) = m.opt_dim("attention.value_length", MAX_DIM)? {
            if v != head_dim {
                return Err(Error::unsupported(format!(
                    "attention.value_length {v} differs from key_length {head_dim}; tallow needs them equal"
                )));
            }
        }
        let rope_dim = m.opt_dim("rope.dimension_count", MAX_DIM)?.unwrap_or(head_dim);
        if rope_dim > head_dim || !rope_dim.is_multiple_of(2) {
            return Err(
                m.bad("rope.dimension_count", format!("{rope_dim} must be even and at most the head size {head_dim}"))
            );
        }
        let n_ctx_train = m.req_dim("context_length", MAX_CTX)?;
        let norm_eps = m.req_pos_f32("attention.layer_norm_rms_epsilon")?;
        let rope_freq_base = m.opt_pos_f32("rope.freq_base")?.unwrap_or(10000.0);
        let rope_freq_scale = m.rope_freq_scale()?;
        if m.opt_dim("expert_count", usize::MAX)?.unwrap_or(0) > 0 {
            return Err(Error::unsupported("mixture-of-experts models are not supported yet"));
        }

        let (rope_style, sliding_window, rope_freq_base_local, attn_scale, softcap) = match arch {
            Arch::Llama => (RopeStyle::Normal, None, rope_freq_base, 1.0 / (head_dim as f32).sqrt(), None),
            Arch::Gemma3 => {
                // A window of 0 means "no sliding window" (llama.cpp treats it so).
                let window = m.opt_dim("attention.sliding_window", MAX_CTX)?.filter(|&w| w > 0);
                // Gemma 3 27B (62 layers) scales by n_embd / n_head instead of the head size
                // (gemma_pytorch's query_pre_attn_scalar); llama.cpp keys it off the layer count.
                let scalar = if n_layer == 62 { n_embd / n_head } else { head_dim };
                let cap = m.opt_pos_f32("final_logit_softcapping")?;
                (RopeStyle::Neox, window, 10000.0, 1.0 / (scalar as f32).sqrt(), cap)
            }
        };

        let n_vocab = check_tensors(file, arch, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, rope_dim)?;
        if let Some(v) = m.opt_dim("vocab_size", MAX_VOCAB)? {
            if v != n_vocab {
                return Err(m.bad("vocab_size", format!("{v} differs from token_embd's {n_vocab} rows")));
            }
        }
        if let Some(tokens) = file.get_array("tokenizer.ggml.tokens")? {
            if tokens.len() != n_vocab {
                return Err(Error::gguf(
                    file.offset_of("tokenizer.ggml.tokens"),
                    "kv[\"tokenizer.ggml.tokens\"]",
                    format!("{} tokens, but token_embd has {n_vocab} rows", tokens.len()),
                ));
            }
        }

        Ok(ModelConfig {
            arch,
            name: file.get_str("general.name")?.map(str::to_owned),
            n_vocab,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_ctx_train,
            rope_dim,
            rope_style,
            rope_freq_base,
            rope_freq_scale,
            rope_freq_base_local,
            norm_eps,
            attn_scale,
            sliding_window,
            swa_pattern: 6,
            final_logit_softcapping: softcap,
            tied_embeddings: file.tensor("output.weight").is_none(),
            has_rope_freqs: file.tensor("rope_freqs.weight").is_some(),
            n_params: file.tensors().iter().map(|t| t.n_elements).fold(0u64, u64::saturating_add),
            file_type: file.get_u64("general.file_type")?.map(file_type_name),
        })
    }
}

/// Typed access to `{arch}.*` keys with G28 error messages.
struct Meta<'a> {
    file: &'a GgufFile,
    prefix: &'static str,
}

impl Meta<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.prefix)
    }

    fn bad(&self, k: &str, msg: String) -> Error {
        let key = self.key(k);
        Error::gguf(self.file.offset_of(&key), format!("kv[{key:?}]"), msg)
    }

    /// An integer in `1..=max`, if present.
    fn opt_dim(&self, k: &str, max: usize) -> Result<Option<usize>> {
        let Some(v) = self.file.get_u64(&self.key(k))? else { return Ok(None) };
        if v == 0 || v > max as u64 {
            return Err(self.bad(k, format!("{v} is out of range 1..={max}")));
        }
        Ok(Some(v as usize))
    }

    fn req_dim(&self, k: &str, max: usize) -> Result<usize> {
        self.opt_dim(k, max)?.ok_or_else(|| self.missing(k))
    }

    fn missing(&self, k: &str) -> Error {
        let key = self.key(k);
        Error::gguf(0, format!("kv[{key:?}]"), "required key is missing")
    }

    /// A finite float > 0, if present.
    fn opt_pos_f32(&self, k: &str) -> Result<Option<f32>> {
        let Some(v) = self.file.get_f64(&self.key(k))? else { return Ok(None) };
        let f = v as f32;
        if !(f.is_finite() && f > 0.0) {
            return Err(self.bad(k, format!("{v} must be a finite number > 0")));
        }
        Ok(Some(f))
    }

    fn req_pos_f32(&self, k: &str) -> Result<f32> {
        self.opt_pos_f32(k)?.ok_or_else(|| self.missing(k))
    }

    /// Linear RoPE scaling (`rope.scaling.type = linear` with `rope.scaling.factor`, or the older
    /// `rope.scale_linear`). YaRN and LongRoPE change the frequencies themselves: not supported.
    fn rope_freq_scale(&self) -> Result<f32> {
        let kind = self.file.get_str(&self.key("rope.scaling.type"))?.unwrap_or("none");
        let factor = match kind {
            "none" => None,
            "linear" => self.opt_pos_f32("rope.scaling.factor")?,
            other => return Err(Error::unsupported(format!("RoPE scaling type {other:?} is not supported yet"))),
        };
        let factor = factor.or(self.opt_pos_f32("rope.scale_linear")?).unwrap_or(1.0);
        Ok(1.0 / factor)
    }
}

/// Checks every tensor the architecture reads: present, the expected GGML shape, a type the
/// kernels support. Returns `n_vocab` (the rows of `token_embd`).
#[allow(clippy::too_many_arguments)]
fn check_tensors(
    file: &GgufFile,
    arch: Arch,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    n_ff: usize,
    rope_dim: usize,
) -> Result<usize> {
    let embd = file
        .tensor("token_embd.weight")
        .ok_or_else(|| Error::gguf(0, "tensor[\"token_embd.weight\"]", "required tensor is missing"))?;
    let n_vocab = embd.shape.get(1).copied().unwrap_or(1);
    if n_vocab == 0 || n_vocab > MAX_VOCAB as u64 {
        return Err(Error::gguf(0, "tensor[\"token_embd.weight\"]", format!("{n_vocab} rows is out of range")));
    }
    let n_vocab = n_vocab as usize;
    let q_dim = n_head * head_dim; // both ≤ MAX_DIM: no overflow
    let kv_dim = n_head_kv * head_dim;

    let check = |name: &str, cols: usize, rows: usize| expect_tensor(file, name, cols, rows);
    check("token_embd.weight", n_embd, n_vocab)?;
    check("output_norm.weight", n_embd, 1)?;
    if file.tensor("output.weight").is_some() {
        check("output.weight", n_embd, n_vocab)?;
    }
    if file.tensor("rope_freqs.weight").is_some() {
        check("rope_freqs.weight", rope_dim / 2, 1)?;
    }
    for il in 0..n_layer {
        let b = |s: &str| format!("blk.{il}.{s}.weight");
        check(&b("attn_norm"), n_embd, 1)?;
        check(&b("attn_q"), n_embd, q_dim)?;
        check(&b("attn_k"), n_embd, kv_dim)?;
        check(&b("attn_v"), n_embd, kv_dim)?;
        check(&b("attn_output"), q_dim, n_embd)?;
        check(&b("ffn_norm"), n_embd, 1)?;
        check(&b("ffn_gate"), n_embd, n_ff)?;
        check(&b("ffn_up"), n_embd, n_ff)?;
        check(&b("ffn_down"), n_ff, n_embd)?;
        if arch == Arch::Gemma3 {
            check(&b("attn_q_norm"), head_dim, 1)?;
            check(&b("attn_k_norm"), head_dim, 1)?;
            check(&b("post_attention_norm"), n_embd, 1)?;
            check(&b("post_ffw_norm"), n_embd, 1)?;
        }
        for bias in ["attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.bias"] {
            if file.tensor(&format!("blk.{il}.{bias}")).is_some() {
                return Err(Error::unsupported(format!(
                    "tensor blk.{il}.{bias}: attention biases are not supported yet"
                )));
            }
        }
    }
    Ok(n_vocab)
}

/// `name` must exist with GGML shape `[cols, rows]` (1-D when `rows == 1`) and a supported type.
fn expect_tensor(file: &GgufFile, name: &str, cols: usize, rows: usize) -> Result<()> {
    let field = || format!("tensor[{name:?}]");
    let t = file.tensor(name).ok_or_else(|| Error::gguf(0, field(), "required tensor is missing"))?;
    let got_cols = t.shape.first().copied().unwrap_or(1);
    let got_rows = t.shape.get(1).copied().unwrap_or(1);
    let extra = t.shape.iter().skip(2).any(|&d| d != 1);
    if got_cols != cols as u64 || got_rows != rows as u64 || extra {
        return Err(Error::gguf(
            file.data_offset().saturating_add(t.offset),
            field(),
            format!("shape {:?}, expected [{cols}, {rows}] from the hyperparameters", t.shape),
        ));
    }
    check_supported(name, t.qtype)?;
    if rows == 1 && !matches!(t.qtype, QType::F32 | QType::F16 | QType::BF16) {
        return Err(Error::unsupported(format!("norm tensor {name:?} has type {}; expected F32/F16", t.qtype)));
    }
    Ok(())
}

/// llama.cpp's name for `general.file_type` (`llama_ftype`).
fn file_type_name(id: u64) -> String {
    let name = match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        21 => "Q2_K_S",
        32 => "BF16",
        _ => return format!("file type {id}"),
    };
    name.to_string()
}
