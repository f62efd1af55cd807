//! `Model`: a loaded GGUF model with its engine thread.

use crate::errors::guard_detached;
use crate::stream::{new_pair, Stream};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::Arc;
use tallow_core::chat_template::{ChatMessage, ChatTemplate};
use tallow_core::engine::{Engine, GenerateParams, Job, Prompt, Session};
use tallow_core::info::ModelInfo;
use tallow_core::sampler::SamplingParams;

/// Sampling and stopping options, as passed from `tallow.Model` (already defaulted there).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct PyGenerateOptions {
    max_tokens: usize,
    temperature: f32,
    top_k: i32,
    top_p: f32,
    min_p: f32,
    repeat_penalty: f32,
    repeat_last_n: i32,
    frequency_penalty: f32,
    presence_penalty: f32,
    seed: Option<u64>,
    stop: Vec<String>,
    ignore_eos: bool,
    /// `(token id, bias)` added to the logits before sampling.
    logit_bias: Vec<(u32, f32)>,
    /// Alternatives per token to report with its log-probability (`None`: no log-probabilities).
    logprobs: Option<usize>,
    /// Seconds to wait for room when the engine is full (`None`: fail at once).
    timeout: Option<f64>,
    /// Seconds from now until the request gives up, queued or running (`RequestTimeoutError`).
    deadline: Option<f64>,
}

impl PyGenerateOptions {
    fn into_params(self) -> GenerateParams {
        GenerateParams {
            max_tokens: self.max_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                repeat_last_n: self.repeat_last_n,
                frequency_penalty: self.frequency_penalty,
                presence_penalty: self.presence_penalty,
                seed: self.seed,
                logit_bias: self.logit_bias,
            },
            stop: self.stop,
            ignore_eos: self.ignore_eos,
            logprobs: self.logprobs,
        }
    }
}

/// A prompt as text, or as token ids (used as they are: no BOS is added).
#[derive(FromPyObject)]
pub enum PromptArg {
    Text(String),
    Tokens(Vec<u32>),
}

/// A chat session's KV cache, kept between turns.
#[pyclass(frozen, module = "tallow._tallow")]
pub struct ChatSession {
    inner: Arc<Session>,
}

#[pymethods]
impl ChatSession {
    #[new]
    fn new() -> Self {
        ChatSession { inner: Arc::new(Session::new()) }
    }

    /// Forgets the cached conversation.
    fn clear(&self) {
        self.inner.clear();
    }
}

/// A GGUF model loaded for generation. Thread-safe: requests queue on its engine.
#[pyclass(frozen, module = "tallow._tallow")]
pub struct Model {
    engine: Engine,
    info: ModelInfo,
    repack_cache: &'static str,
    template: std::result::Result<ChatTemplate, String>,
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (path, n_threads = None, n_ctx = None, repack_cache = None, max_sequences = None, max_queue = None, n_batch = None))]
    fn new(
        py: Python<'_>,
        path: std::path::PathBuf,
        n_threads: Option<usize>,
        n_ctx: Option<usize>,
        repack_cache: Option<std::path::PathBuf>,
        max_sequences: Option<usize>,
        max_queue: Option<usize>,
        n_batch: Option<usize>,
    ) -> PyResult<Self> {
        guard_detached(py, move || {
            let options =
                tallow_core::LoadOptions { n_threads, n_ctx, repack_cache, max_sequences, max_queue, n_batch };
            let loaded = tallow_core::load(&path, &options)?;
            let repack_cache = loaded.repack_cache.as_str();
            Ok(Model { engine: loaded.engine, info: loaded.info, repack_cache, template: loaded.template })
        })
    }

    /// Model metadata as a dict (wrapped into `tallow.ModelInfo` by the Python layer).
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let i = &self.info;
        let d = PyDict::new(py);
        d.set_item("architecture", &i.architecture)?;
        d.set_item("name", &i.name)?;
        d.set_item("n_params", i.n_params)?;
        d.set_item("quantization", &i.quantization)?;
        d.set_item("context_length", i.context_length)?;
        d.set_item("vocab_size", i.vocab_size)?;
        d.set_item("bos_token_id", self.engine.tokenizer().bos())?;
        d.set_item("eos_token_id", self.engine.tokenizer().eos())?;
        d.set_item("chat_template", &i.chat_template)?;
        d.set_item("n_ctx", self.engine.config().n_ctx)?;
        d.set_item("n_threads", self.engine.config().n_threads)?;
        d.set_item("repack_cache", self.repack_cache)?;
        Ok(d)
    }

    /// Ends every request (`ModelClosedError`) and stops the engine thread; idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let engine = &self.engine;
        guard_detached(py, move || {
            engine.close();
            Ok(())
        })
    }

    /// The engine's counters as a dict (wrapped into `tallow.EngineStats` by the Python layer).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.engine.stats();
        let d = PyDict::new(py);
        d.set_item("active", s.active)?;
        d.set_item("queued", s.queued)?;
        d.set_item("finished", s.finished)?;
        d.set_item("cancelled", s.cancelled)?;
        d.set_item("failed", s.failed)?;
        d.set_item("kv_slots_in_use", s.kv_slots_in_use)?;
        d.set_item("kv_slots", s.kv_slots)?;
        d.set_item("prompt_tokens", s.prompt_tokens)?;
        d.set_item("generated_tokens", s.generated_tokens)?;
        d.set_item("cached_prompt_tokens", s.cached_prompt_tokens)?;
        d.set_item("busy_seconds", s.busy_seconds)?;
        d.set_item("tokens_per_second", s.generated_per_second())?;
        Ok(d)
    }

    #[pyo3(signature = (text, add_bos = true, special = false))]
    fn tokenize(&self, py: Python<'_>, text: &str, add_bos: bool, special: bool) -> PyResult<Vec<u32>> {
        let tok = self.engine.tokenizer().clone();
        let text = text.to_owned();
        guard_detached(py, move || tok.encode(&text, add_bos, special))
    }

    #[pyo3(signature = (ids, skip_special = false))]
    fn detokenize(&self, py: Python<'_>, ids: Vec<u32>, skip_special: bool) -> PyResult<String> {
        let n_vocab = self.engine.tokenizer().n_vocab();
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "invalid value for 'ids': token id {bad} is outside the vocabulary (size {n_vocab})"
            )));
        }
        let tok = self.engine.tokenizer().clone();
        guard_detached(py, move || Ok(tok.decode(&ids, skip_special)))
    }

    /// The raw bytes of each token (a piece may be part of a UTF-8 character). Control tokens
    /// (BOS, turn markers) give their text, or nothing when `special` is false.
    #[pyo3(signature = (ids, special = true))]
    fn token_bytes<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<u32>,
        special: bool,
    ) -> PyResult<Vec<Bound<'py, pyo3::types::PyBytes>>> {
        let tok = self.engine.tokenizer();
        let n_vocab = tok.n_vocab();
        ids.iter()
            .map(|&id| {
                if id as usize >= n_vocab {
                    return Err(pyo3::exceptions::PyValueError::new_err(format!(
                        "invalid value for 'ids': token id {id} is outside the vocabulary (size {n_vocab})"
                    )));
                }
                Ok(pyo3::types::PyBytes::new(py, &tok.token_to_piece(id, special)))
            })
            .collect()
    }

    /// Renders the model's chat template over `messages` (`[(role, content), ...]`).
    #[pyo3(signature = (messages, add_generation_prompt = true))]
    fn apply_chat_template(
        &self,
        py: Python<'_>,
        messages: Vec<(String, String)>,
        add_generation_prompt: bool,
    ) -> PyResult<String> {
        // Rendered with the GIL released: a slow template (it is fuel-limited) does not stop
        // other Python threads.
        let template = &self.template;
        guard_detached(py, move || {
            let t = template.as_ref().map_err(|e| tallow_core::Error::Template(e.clone()))?;
            let msgs: Vec<ChatMessage> =
                messages.into_iter().map(|(role, content)| ChatMessage { role, content }).collect();
            t.render(&msgs, add_generation_prompt)
        })
    }

    /// Starts a generation and returns its stream. The prompt (text, or token ids) is
    /// tokenized and checked here, so a too-long prompt raises ContextOverflowError at once.
    #[pyo3(signature = (prompt, options, add_bos = true, special = false, session = None))]
    fn start(
        &self,
        py: Python<'_>,
        prompt: PromptArg,
        options: PyGenerateOptions,
        add_bos: bool,
        special: bool,
        session: Option<&ChatSession>,
    ) -> PyResult<Stream> {
        // Checked by the Python layer (finite, >= 0); capped so that `now + it` cannot overflow.
        let seconds = |s: f64| std::time::Duration::try_from_secs_f64(s.min(1e9)).unwrap_or_default();
        let timeout = options.timeout.map(seconds);
        let deadline = options.deadline.map(|s| std::time::Instant::now() + seconds(s));
        let params = options.into_params();
        let session = session.map(|s| s.inner.clone());
        let prompt = match prompt {
            PromptArg::Text(text) => Prompt::Text { text, add_bos, special },
            PromptArg::Tokens(ids) => Prompt::Tokens(ids),
        };
        let (stream, sink) = new_pair();
        let cancel = stream_cancel(&sink);
        let engine = &self.engine;
        // Ctrl-C while waiting for room: checked every `WAIT_POLL`, raised once the wait ends.
        let interrupt: std::sync::Mutex<Option<PyErr>> = std::sync::Mutex::new(None);
        let slot = &interrupt;
        let submitted = guard_detached(py, move || {
            let tokens = engine.prepare_prompt(&prompt)?;
            let job = Job { prompt: tokens, params, session, cancel, sink: Box::new(sink), deadline };
            engine.submit_wait_while(job, timeout, || {
                Python::attach(|py| match py.check_signals() {
                    Ok(()) => true,
                    Err(e) => {
                        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        false
                    }
                })
            })
        });
        if let Some(e) = interrupt.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        submitted?;
        Ok(stream)
    }
}

fn stream_cancel(sink: &crate::stream::Sink) -> tallow_core::engine::CancelToken {
    sink.0.cancel.clone()
}
