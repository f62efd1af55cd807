//! Loading a model file into a ready engine: the one entry point the bindings call.

use crate::chat_template::ChatTemplate;
use crate::engine::{Engine, EngineConfig};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::info::ModelInfo;
use crate::model::load_model_with;
use crate::quant::{RepackCache, RepackCacheStatus};
use crate::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Context length used when the caller gives none: the model's own, capped to keep the
/// preallocated KV cache modest.
pub const DEFAULT_N_CTX_CAP: usize = 4096;
/// Prompt tokens per prefill chunk: llama.cpp's default `n_ubatch`. The last bits of a product
/// depend on how many tokens it has (quant/kquant_order.rs), so the same chunking as llama.cpp
/// is part of matching it on long prompts.
pub const DEFAULT_N_BATCH: usize = 512;
/// Requests generating at once when the caller gives no `max_sequences`.
pub const DEFAULT_MAX_SEQUENCES: usize = 8;
/// Requests that may wait for a sequence when the caller gives no `max_queue`.
pub const DEFAULT_MAX_QUEUE: usize = 256;

/// Gemma's turn format, for Gemma files that ship without `tokenizer.chat_template` (the
/// catalog's gemma3-270m is one). System text is folded into the first user turn, as Gemma's
/// own template does.
const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}\
{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}{% else %}\
<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n\
{% if m['role'] == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}{{ m['content'] | trim }}<end_of_turn>\n\
{% endif %}{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

/// How to load a model; `Default` is the model's own context (capped), every core, no repack
/// cache.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Compute threads (default: the machine's available parallelism).
    pub n_threads: Option<usize>,
    /// Context length (default: the model's, capped at [`DEFAULT_N_CTX_CAP`]; `0`: the model's, uncapped).
    pub n_ctx: Option<usize>,
    /// Directory of the repack cache (`quant/repack_cache.rs`); `None` repacks into memory on
    /// every load.
    pub repack_cache: Option<PathBuf>,
    /// Requests generating at once (default [`DEFAULT_MAX_SEQUENCES`]); each holds a KV cache of
    /// `n_ctx` positions while it runs.
    pub max_sequences: Option<usize>,
    /// Requests that may wait for a sequence (default [`DEFAULT_MAX_QUEUE`]); past that,
    /// requests fail with `Overloaded` unless they wait for room.
    pub max_queue: Option<usize>,
    /// Prompt tokens per prefill chunk (default [`DEFAULT_N_BATCH`]); a cancelled request stops
    /// between chunks.
    pub n_batch: Option<usize>,
}

pub struct LoadedModel {
    pub engine: Engine,
    pub info: ModelInfo,
    /// What the repack cache did for this load.
    pub repack_cache: RepackCacheStatus,
    /// The chat template, or why there is none usable. Rendering is deferred to `chat()`: a
    /// broken template must not stop the model from loading.
    pub template: std::result::Result<ChatTemplate, String>,
}

pub fn load(path: &Path, options: &LoadOptions) -> Result<LoadedModel> {
    let LoadOptions { n_threads, n_ctx, repack_cache, max_sequences, max_queue, n_batch } = options.clone();
    if n_threads == Some(0) {
        return Err(Error::invalid("n_threads", "must be at least 1"));
    }
    if max_sequences == Some(0) {
        return Err(Error::invalid("max_sequences", "must be at least 1"));
    }
    let file = Arc::new(GgufFile::open(path)?);
    let tokenizer = Arc::new(Tokenizer::from_gguf(&file)?);
    let cache = repack_cache.as_deref().and_then(|dir| RepackCache::open(dir, path, &file));
    let model = load_model_with(file.clone(), cache.as_ref())?;
    let repack_cache = match (repack_cache, cache) {
        (None, _) => RepackCacheStatus::Off,
        (Some(_), None) => RepackCacheStatus::Skipped,
        (Some(_), Some(cache)) => cache.finish(),
    };
    let info = ModelInfo::new(&file, model.config())?;
    if tokenizer.n_vocab() != model.config().n_vocab {
        return Err(Error::gguf(
            file.offset_of("tokenizer.ggml.tokens"),
            "kv[\"tokenizer.ggml.tokens\"]",
            format!(
                "vocabulary has {} tokens but the embedding has {} rows",
                tokenizer.n_vocab(),
                model.config().n_vocab
            ),
        ));
    }
    let source = match (&info.chat_template, info.architecture.as_str()) {
        (Some(src), _) => Some(src.as_str()),
        (None, "gemma" | "gemma2" | "gemma3") => Some(GEMMA_TEMPLATE),
        (None, _) => None,
    };
    let template = match source {
        Some(src) => {
            let piece = |id: Option<u32>| id.and_then(|t| tokenizer.token_text(t)).unwrap_or("").to_string();
            ChatTemplate::new(src, &piece(tokenizer.bos()), &piece(tokenizer.eos())).map_err(|e| e.to_string())
        }
        None => Err("this model has no chat template (tokenizer.chat_template)".to_string()),
    };
    let n_ctx_train = model.config().n_ctx_train;
    let n_ctx = match n_ctx {
        None => n_ctx_train.clamp(1, DEFAULT_N_CTX_CAP),
        Some(0) => n_ctx_train.max(1), // llama.cpp's 0: the context the model was trained with
        Some(n) => n,
    };
    let n_threads = n_threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let max_sequences = max_sequences.unwrap_or(DEFAULT_MAX_SEQUENCES);
    let max_queue = max_queue.unwrap_or(DEFAULT_MAX_QUEUE);
    let n_batch = n_batch.unwrap_or(DEFAULT_N_BATCH);
    let config = EngineConfig { n_threads, n_ctx, n_batch, max_sequences, max_queue };
    let engine = Engine::new(model, tokenizer, config)?;
    Ok(LoadedModel { engine, info, repack_cache, template })
}
