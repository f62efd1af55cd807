//! The engine: one scheduler thread per loaded model. Callers on any thread submit requests;
//! the scheduler runs them (prefill in chunks, then one token per step) and delivers events
//! to each request's sink. Nothing here knows about Python.
//!
//! This first engine runs one request at a time, in arrival order; continuous batching of
//! concurrent sequences replaces `run_loop` without changing the request/event interface.

mod request;
mod session;
mod stop;

pub use request::{CancelToken, Event, EventSink, FinishReason, GenerateParams, Prompt, Usage};
pub use session::Session;
pub use stop::{StopMatcher, StopOutcome};

use crate::error::{Error, Result};
use crate::model::{ForwardScratch, Model};
use crate::sampler::Sampler;
use crate::threadpool::ThreadPool;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use session::CachedSequence;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Threads for the kernels (the scheduler thread is one of them).
    pub n_threads: usize,
    /// Context length of each sequence: prompt plus generated tokens.
    pub n_ctx: usize,
    /// Prompt tokens per prefill chunk; cancellation is checked between chunks.
    pub n_batch: usize,
}

/// One submitted generation.
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    /// Keep the KV cache in this session between requests (chat); `None` shares the engine's
    /// own cached sequence, which still reuses a prompt prefix from the previous request.
    pub session: Option<Arc<Session>>,
    pub cancel: CancelToken,
    pub sink: Box<dyn EventSink>,
}

struct Shared {
    model: Arc<dyn Model>,
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
}

pub struct Engine {
    shared: Arc<Shared>,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
}

impl Engine {
    pub fn new(model: Arc<dyn Model>, tokenizer: Arc<Tokenizer>, config: EngineConfig) -> Result<Engine> {
        if config.n_ctx == 0 {
            return Err(Error::invalid("n_ctx", "must be at least 1"));
        }
        if config.n_threads == 0 {
            return Err(Error::invalid("n_threads", "must be at least 1"));
        }
        let scratch = model.new_scratch(config.n_batch)?;
        let shared = Arc::new(Shared { model, tokenizer, config });
        let (tx, rx) = mpsc::channel::<Job>();
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("tallow-engine".into())
            .spawn(move || run_loop(&worker, scratch, rx))
            .map_err(|e| Error::Internal(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine { shared, queue: Mutex::new(Some(tx)) })
    }

    pub fn model(&self) -> &Arc<dyn Model> {
        &self.shared.model
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.shared.tokenizer
    }

    pub fn config(&self) -> EngineConfig {
        self.shared.config
    }

    /// Tokenizes `prompt` and checks it fits the context.
    pub fn prepare_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let tokens = match prompt {
            Prompt::Text { text, add_bos, special } => self.shared.tokenizer.encode(text, *add_bos, *special)?,
            Prompt::Tokens(t) => t.clone(),
        };
        if tokens.is_empty() {
            return Err(Error::invalid("prompt", "the prompt has no tokens"));
        }
        let n_vocab = self.shared.model.config().n_vocab;
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::invalid("prompt", format!("token id {bad} is outside the vocabulary (size {n_vocab})")));
        }
        let n_ctx = self.shared.config.n_ctx;
        if tokens.len() > n_ctx {
            return Err(Error::ContextOverflow(format!(
                "the prompt has {} tokens but the context holds {n_ctx}; shorten the prompt or load the model with a larger n_ctx",
                tokens.len()
            )));
        }
        Ok(tokens)
    }

    /// Queues a job. Its events arrive on `job.sink`; errors found before queueing are returned.
    pub fn submit(&self, job: Job) -> Result<()> {
        job.params.sampling.validate()?;
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let tx = queue.as_ref().ok_or_else(|| Error::Internal("the engine is shut down".into()))?;
        tx.send(job).map_err(|_| Error::Internal("the engine thread has stopped".into()))
    }

    /// Stops accepting jobs; the scheduler thread exits once the queue is drained.
    pub fn shutdown(&self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Per-thread state of the scheduler: reused across requests so a decode step allocates nothing
/// but the text of the event it sends (tests/decode_alloc.rs).
struct Worker<'a> {
    shared: &'a Shared,
    pool: ThreadPool,
    scratch: ForwardScratch,
    /// Logits of the last evaluated position, `[n_vocab]`.
    logits: Vec<f32>,
    /// Text a sampled token completes, before the stop matcher sees it.
    piece: String,
    /// The engine's own cached sequence for requests without a session.
    default_seq: Option<CachedSequence>,
}

fn run_loop(shared: &Shared, scratch: ForwardScratch, rx: mpsc::Receiver<Job>) {
    let mut worker = Worker {
        shared,
        pool: ThreadPool::new(shared.config.n_threads),
        scratch,
        logits: vec![0.0; shared.model.config().n_vocab],
        piece: String::new(),
        default_seq: None,
    };
    while let Ok(mut job) = rx.recv() {
        let result = catch_unwind(AssertUnwindSafe(|| worker.run(&mut job)));
        let err = match result {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                // Scratch contents are rewritten by every forward; the cached sequence may be
                // half-updated, so drop it.
                worker.default_seq = None;
                Error::Internal(format!("engine panicked: {msg}"))
            }
        };
        job.sink.send(Event::Error(err));
    }
}

impl Worker<'_> {
    fn forward(&mut self, tokens: &[u32], seq: &mut CachedSequence) -> Result<()> {
        let out = self.shared.model.forward(tokens, &mut seq.cache, &mut self.scratch, &self.pool, false)?;
        let n_vocab = self.logits.len();
        self.logits.copy_from_slice(&out[out.len() - n_vocab..]);
        seq.tokens.extend_from_slice(tokens);
        Ok(())
    }

    fn run(&mut self, job: &mut Job) -> Result<()> {
        let cfg = self.shared.config;
        let prompt = &job.prompt;
        let taken = match &job.session {
            Some(s) => s.take(),
            None => self.default_seq.take(),
        };
        let mut seq = match taken {
            Some(seq) if seq.cache.capacity() == cfg.n_ctx => seq,
            _ => CachedSequence { cache: self.shared.model.new_cache(cfg.n_ctx)?, tokens: Vec::new() },
        };

        // Reuse the longest cached prefix, but always evaluate at least the last prompt
        // token: its logits give the first sampled token.
        let mut common = seq.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        common = common.min(prompt.len() - 1);
        seq.cache.truncate(common);
        seq.tokens.truncate(common);
        // Room for the whole context, so appending a token never reallocates.
        seq.tokens.reserve(cfg.n_ctx.saturating_sub(seq.tokens.len()));

        for chunk in prompt[common..].chunks(cfg.n_batch.max(1)) {
            if job.cancel.is_cancelled() {
                return self.finish(job, seq, FinishReason::Cancelled, prompt.len(), 0, common);
            }
            self.forward(chunk, &mut seq)?;
        }

        let mut sampler = Sampler::new(job.params.sampling.clone())?;
        // Control tokens render as nothing, as in llama.cpp's default detokenization.
        let mut decoder = StreamDecoder::new(true);
        let mut stop = StopMatcher::new(&job.params.stop);
        let mut n_gen = 0;
        let finish = loop {
            if job.cancel.is_cancelled() {
                break FinishReason::Cancelled;
            }
            if n_gen >= job.params.max_tokens {
                break FinishReason::Length;
            }
            let id = sampler.sample(&self.logits, &seq.tokens)?;
            n_gen += 1;
            if !job.params.ignore_eos && self.shared.tokenizer.is_eog(id) {
                break FinishReason::Stop;
            }
            // Per token, the event's text is the one allocation (none when it is empty).
            self.piece.clear();
            decoder.push_into(&self.shared.tokenizer, id, &mut self.piece);
            let (text, stopped) = match stop.push(&self.piece) {
                StopOutcome::Emit(t) => (t, false),
                StopOutcome::Stop(t) => (t, true),
            };
            if !job.sink.send(Event::Token { id, text }) {
                break FinishReason::Cancelled;
            }
            if stopped {
                break FinishReason::Stop;
            }
            if seq.tokens.len() >= cfg.n_ctx {
                break FinishReason::Length;
            }
            self.forward(&[id], &mut seq)?;
        };
        if finish != FinishReason::Cancelled {
            // Release text held back for an incomplete character or a possible stop string.
            let mut rest = decoder.flush().unwrap_or_default();
            rest = match stop.push(&rest) {
                StopOutcome::Emit(t) => t + &stop.flush(),
                StopOutcome::Stop(t) => t,
            };
            if !rest.is_empty() {
                job.sink.send(Event::Text(rest));
            }
        }
        self.finish(job, seq, finish, prompt.len(), n_gen, common)
    }

    fn finish(
        &mut self,
        job: &mut Job,
        seq: CachedSequence,
        finish_reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        cached_tokens: usize,
    ) -> Result<()> {
        // Put the cache back before `Done`, so a caller's next turn finds it.
        match &job.session {
            Some(s) => s.put(seq),
            None => self.default_seq = Some(seq),
        }
        let usage = Usage { prompt_tokens, completion_tokens, cached_tokens };
        job.sink.send(Event::Done { finish_reason, usage });
        Ok(())
    }
}
