//! The engine: one scheduler thread per loaded model. Callers on any thread submit requests;
//! the scheduler runs up to `max_sequences` of them at once, batching their tokens into one
//! forward per step (`scheduler.rs`), and delivers events to each request's sink. Nothing here
//! knows about Python.

mod logprobs;
mod piece;
mod prefix;
mod request;
mod scheduler;
mod sequence;
mod session;
mod stats;
mod stop;

pub use logprobs::{TokenLogprobs, MAX_TOP_LOGPROBS};
pub use request::{CancelToken, Event, EventSink, FinishReason, GenerateParams, Prompt, Usage};
pub use session::Session;
pub use stats::EngineStats;
pub use stop::{StopMatcher, StopOutcome};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Threads for the kernels (the scheduler thread is one of them).
    pub n_threads: usize,
    /// Context length of each sequence: prompt plus generated tokens.
    pub n_ctx: usize,
    /// Prompt tokens per prefill chunk; cancellation is checked between chunks.
    pub n_batch: usize,
    /// Sequences generating at once (each with a KV cache of `n_ctx`); more requests wait.
    pub max_sequences: usize,
    /// Requests that may wait for a sequence; past that (`max_sequences` running and
    /// `max_queue` waiting), `submit` fails with `Overloaded` or waits for room, up to the
    /// caller's timeout.
    pub max_queue: usize,
}

/// One submitted generation.
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    /// Keep the KV cache in this session between requests (chat); `None` starts from the
    /// prefix of another request's cache that gives the same results (`prefix.rs`), if any.
    pub session: Option<Arc<Session>>,
    pub cancel: CancelToken,
    pub sink: Box<dyn EventSink>,
    /// When the request gives up, queued or running: it ends with `Error::Timeout` at the
    /// first step after it (its text so far was sent).
    pub deadline: Option<Instant>,
}

struct Shared {
    model: Arc<dyn Model>,
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
    counters: stats::Counters,
    /// Signalled when a request ends or a queued one starts; the mutex orders a submitter's
    /// check of the counters against it.
    room: (Mutex<()>, Condvar),
    /// Set by `Engine::close`: the scheduler ends every request and exits.
    closing: AtomicBool,
}

pub struct Engine {
    shared: Arc<Shared>,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    /// The scheduler thread, joined by `close`.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Engine {
    pub fn new(model: Arc<dyn Model>, tokenizer: Arc<Tokenizer>, config: EngineConfig) -> Result<Engine> {
        if config.n_ctx == 0 {
            return Err(Error::invalid("n_ctx", "must be at least 1"));
        }
        if config.n_threads == 0 {
            return Err(Error::invalid("n_threads", "must be at least 1"));
        }
        if config.max_sequences == 0 {
            return Err(Error::invalid("max_sequences", "must be at least 1"));
        }
        if config.n_batch == 0 {
            return Err(Error::invalid("n_batch", "must be at least 1"));
        }
        if config.max_queue == 0 {
            return Err(Error::invalid("max_queue", "must be at least 1"));
        }
        // One step holds a prompt chunk and a token of every other sequence.
        let scratch = model.new_scratch(config.n_batch + config.max_sequences)?;
        let shared = Arc::new(Shared {
            model,
            tokenizer,
            config,
            counters: stats::Counters::default(),
            room: (Mutex::new(()), Condvar::new()),
            closing: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tallow-engine".into())
            .spawn(move || scheduler::run_loop(&worker, scratch, rx))
            .map_err(|e| Error::Internal(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine { shared, queue: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) })
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
        let n_ctx = self.shared.config.n_ctx;
        let tokens = match prompt {
            Prompt::Text { text, add_bos, special } => {
                // A prompt too long to fit is refused before tokenizing it (a 2 GB prompt
                // would take minutes, and memory).
                if let Some(cap) = self.shared.tokenizer.max_text_bytes(n_ctx).filter(|&cap| text.len() > cap) {
                    return Err(Error::ContextOverflow(format!(
                        "the prompt has {} bytes, more than {n_ctx} tokens of this model can hold \
                         ({cap} bytes at most); shorten the prompt or load the model with a larger n_ctx",
                        text.len()
                    )));
                }
                self.shared.tokenizer.encode(text, *add_bos, *special)?
            }
            Prompt::Tokens(t) => t.clone(),
        };
        if tokens.is_empty() {
            return Err(Error::invalid("prompt", "the prompt has no tokens"));
        }
        let n_vocab = self.shared.model.config().n_vocab;
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::invalid("prompt", format!("token id {bad} is outside the vocabulary (size {n_vocab})")));
        }
        if tokens.len() > n_ctx {
            return Err(Error::ContextOverflow(format!(
                "the prompt has {} tokens but the context holds {n_ctx}; shorten the prompt or load the model with a larger n_ctx",
                tokens.len()
            )));
        }
        Ok(tokens)
    }

    /// Queues a job. Its events arrive on `job.sink`; errors found before queueing are returned,
    /// `Overloaded` among them when `max_queue` requests are already waiting.
    pub fn submit(&self, job: Job) -> Result<()> {
        self.submit_wait(job, None)
    }

    /// [`Engine::submit`], waiting up to `timeout` for room when the queue is full.
    pub fn submit_wait(&self, job: Job, timeout: Option<Duration>) -> Result<()> {
        self.submit_wait_while(job, timeout, || true)
    }

    /// [`Engine::submit_wait`] that also gives up waiting when `keep_waiting` (asked every
    /// [`WAIT_POLL`], the engine unlocked) says so: the Python bindings check for Ctrl-C there.
    pub fn submit_wait_while(
        &self,
        job: Job,
        timeout: Option<Duration>,
        mut keep_waiting: impl FnMut() -> bool,
    ) -> Result<()> {
        job.params.validate(self.shared.model.config().n_vocab)?;
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let cfg = self.shared.config;
        let (active, queued) = (&self.shared.counters.active, &self.shared.counters.queued);
        let deadline = timeout.map(|t| Instant::now() + t);
        let (lock, cvar) = &self.shared.room;
        let full = || active.load(Relaxed) + queued.load(Relaxed) >= cfg.max_sequences + cfg.max_queue;
        let mut room = lock.lock().unwrap_or_else(|e| e.into_inner());
        while full() {
            let left = deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(Instant::now()));
            if !left.is_zero() {
                room = cvar.wait_timeout(room, left.min(WAIT_POLL)).unwrap_or_else(|e| e.into_inner()).0;
                if !full() {
                    break;
                }
                // Asked with the lock released: it may block on other locks (Python's).
                drop(room);
                let go_on = keep_waiting();
                room = lock.lock().unwrap_or_else(|e| e.into_inner());
                if go_on {
                    continue;
                }
            }
            return Err(Error::Overloaded(format!(
                "{} requests are running and {} waiting for this model (max_sequences, max_queue); \
                 retry later, or pass a timeout to wait for room",
                cfg.max_sequences, cfg.max_queue
            )));
        }
        queued.fetch_add(1, Relaxed);
        drop(room);
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let sent = queue.as_ref().map(|tx| tx.send(job).is_ok());
        if sent != Some(true) {
            queued.fetch_sub(1, Relaxed);
            return Err(match sent {
                None => Error::Closed,
                Some(_) => Error::Internal("the engine thread has stopped".into()),
            });
        }
        Ok(())
    }

    /// What runs, what waits, and what ended, since the engine started.
    pub fn stats(&self) -> EngineStats {
        self.shared.counters.snapshot(self.shared.config.max_sequences)
    }

    /// Stops accepting jobs; the scheduler thread exits once the queue is drained.
    pub fn shutdown(&self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Stops accepting jobs, ends every running and queued request with [`Error::Closed`]
    /// (within one step) and waits for the scheduler thread to exit, which frees the KV caches
    /// and activation buffers; the weights go with the last handle to the engine. Idempotent.
    pub fn close(&self) {
        self.shared.closing.store(true, Relaxed);
        self.shutdown();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread.filter(|t| t.thread().id() != std::thread::current().id()) {
            // A panic in the scheduler's own code (outside the steps it guards) ended it: nothing
            // is left to close.
            let _ = t.join();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closing.load(Relaxed)
    }
}

/// How often a request waiting for room asks its caller whether to keep waiting.
pub const WAIT_POLL: Duration = Duration::from_millis(100);

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
