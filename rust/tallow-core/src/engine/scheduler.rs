//! The scheduler thread (continuous batching). It admits queued jobs as sequences, up to
//! `max_sequences` at a time; each step runs one batched forward over the last token of every
//! decoding sequence plus the next prompt tokens of prefilling ones (up to `n_batch` together;
//! beside decodes, pieces of a chunk, `piece.rs`), so the weights are read once per step for
//! all of them, then samples for each sequence that got logits. Every token of a sequence gets
//! the summation orders it would get alone (`Model::forward_batch`, `Model::chunk_class`), so
//! its tokens do not depend on what else runs.
//!
//! A new sequence starts from the longest prompt prefix it can reuse: within a session (chat
//! turns) all it shares with the session's history, whose results depend on that history
//! only; across requests (a common system prompt, a retried request) the part of the prefix
//! another finished or running sequence computed with the same summation orders as this
//! prompt alone would (`prefix.rs`), so a request gives the same tokens with or without it.

use super::piece;
use super::prefix;
use super::sequence::Sequence;
use super::session::CachedSequence;
use super::stats::Counters;
use super::{Event, FinishReason, Job, Shared, Usage};
use crate::error::{Error, Result};
use crate::model::{ForwardScratch, SeqBatch};
use crate::sampler::Sampler;
use crate::threadpool::ThreadPool;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

/// Runs jobs from `rx` until the engine is dropped and every job has finished.
pub(super) fn run_loop(shared: &Shared, scratch: ForwardScratch, rx: Receiver<Job>) {
    let mut s = Scheduler {
        shared,
        pool: ThreadPool::new(shared.config.n_threads),
        scratch,
        waiting: VecDeque::new(),
        active: Vec::new(),
        free: Vec::new(),
        n_caches: 0,
        piece: String::new(),
        batch: Vec::new(),
        in_batch: Vec::new(),
        with_logits: Vec::new(),
        finished: Vec::new(),
    };
    let mut open = true;
    loop {
        if shared.closing.load(Relaxed) {
            return s.close(&rx);
        }
        if s.active.is_empty() && s.waiting.is_empty() {
            match rx.recv() {
                Ok(job) => s.waiting.push_back(job),
                Err(_) if shared.closing.load(Relaxed) => return s.close(&rx),
                Err(_) => return,
            }
        }
        while open {
            match rx.try_recv() {
                Ok(job) => s.waiting.push_back(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| {
            s.admit();
            s.step();
        })) {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            s.fail_all(&msg);
        }
    }
}

struct Scheduler<'a> {
    shared: &'a Shared,
    pool: ThreadPool,
    /// Activations for `n_batch + max_sequences` tokens: a prompt chunk and every decode token.
    scratch: ForwardScratch,
    waiting: VecDeque<Job>,
    /// Running sequences, in admission order (the first prefilling one runs its chunk next).
    active: Vec<Sequence>,
    /// Caches of finished sequences without a session, kept for their prompts' prefixes.
    free: Vec<CachedSequence>,
    /// Caches allocated for sequences without a session, active or free (at most
    /// `max_sequences`); a session's cache lives in the session.
    n_caches: usize,
    /// Reused buffers, so a step allocates nothing but its events' text.
    piece: String,
    batch: Vec<SeqBatch<'static>>,
    /// Indices into `active` of this step's sequences, and of those that get logits.
    in_batch: Vec<usize>,
    with_logits: Vec<usize>,
    finished: Vec<(usize, Result<FinishReason>)>,
}

impl Scheduler<'_> {
    /// Starts waiting jobs while there is room.
    fn admit(&mut self) {
        let (cfg, counters) = (self.shared.config, &self.shared.counters);
        while self.active.len() < cfg.max_sequences {
            let Some(job) = self.waiting.pop_front() else { break };
            // Running from here on (it may still fail to start; `active` is set right below).
            counters.queued.fetch_sub(1, Relaxed);
            counters.active.fetch_add(1, Relaxed);
            if job.cancel.is_cancelled() {
                counters.active.fetch_sub(1, Relaxed);
                Counters::add(&counters.cancelled, 1);
                let usage = Usage { prompt_tokens: job.prompt.len(), ..Usage::default() };
                let mut sink = job.sink;
                sink.send(Event::Done { finish_reason: FinishReason::Cancelled, usage });
                continue;
            }
            let started =
                Sampler::new(job.params.sampling.clone()).and_then(|sampler| Ok((sampler, self.cache_for(&job)?)));
            match started {
                Ok((sampler, (seq, common))) => {
                    Counters::add(&counters.cached_prompt_tokens, common as u64);
                    self.active.push(Sequence::start(job, seq, sampler, cfg.n_ctx, common));
                }
                Err(e) => {
                    counters.active.fetch_sub(1, Relaxed);
                    Counters::add(&counters.failed, 1);
                    let mut sink = job.sink;
                    sink.send(Event::Error(e));
                }
            }
        }
        set_active(self.shared, self.active.len());
    }

    /// The cache `job` runs in and how many of its positions the job keeps: its session's
    /// with the prefix it shares; or the cached prefix of another request, finished or running
    /// (copied), that the job can reuse exactly (`prefix.rs`), the longest; or an empty one.
    fn cache_for(&mut self, job: &Job) -> Result<(CachedSequence, usize)> {
        let (n_ctx, n_batch) = (self.shared.config.n_ctx, self.shared.config.n_batch);
        let model = &*self.shared.model;
        let new = || -> Result<CachedSequence> { Ok(CachedSequence::new(model.new_cache(n_ctx)?)) };
        if let Some(session) = &job.session {
            return match session.take() {
                Some(seq) if seq.cache.capacity() == n_ctx => {
                    let common = prefix::shared_prefix(&seq.tokens, &job.prompt);
                    Ok((seq, common))
                }
                _ => Ok((new()?, 0)),
            };
        }
        let reuse = |q: &CachedSequence| prefix::reusable(model, n_batch, &q.tokens, &q.classes, &job.prompt);
        let finished = self.free.iter().map(reuse).enumerate().max_by_key(|&(_, p)| p);
        let running = self.active.iter().map(|q| reuse(&q.seq)).enumerate().max_by_key(|&(_, p)| p);
        let best_running = running.filter(|&(_, p)| p > finished.map_or(0, |(_, f)| f));
        // Free caches are taken as they are; a running sequence's prefix is copied into one.
        let mut seq = match (finished, best_running) {
            (Some((i, p)), None) if p > 0 => return Ok((self.free.swap_remove(i), p)),
            _ => match self.free.pop() {
                Some(seq) => seq,
                None => {
                    self.n_caches += 1;
                    debug_assert!(self.n_caches <= self.shared.config.max_sequences);
                    new().inspect_err(|_| self.n_caches -= 1)?
                }
            },
        };
        match best_running {
            Some((i, p)) => {
                seq.copy_prefix(&self.active[i].seq, p);
                Ok((seq, p))
            }
            None => Ok((seq, 0)),
        }
    }

    /// One batched forward and the sampling after it.
    fn step(&mut self) {
        let (cfg, counters) = (self.shared.config, &self.shared.counters);
        let start = Instant::now();
        for (i, q) in self.active.iter().enumerate() {
            if q.job.cancel.is_cancelled() {
                self.finished.push((i, Ok(FinishReason::Cancelled)));
            } else if q.job.deadline.is_some_and(|d| start >= d) {
                let why = format!("its deadline passed after {} generated tokens", q.n_gen());
                self.finished.push((i, Err(Error::Timeout(why))));
            }
        }
        self.expire_waiting(start);
        self.retire();
        if self.active.is_empty() {
            return;
        }
        let mut batch = recycle(std::mem::take(&mut self.batch));
        self.in_batch.clear();
        self.with_logits.clear();
        // Prompt tokens: the first prefilling sequence's, and those of the next ones while
        // they fit in `n_batch` tokens together. Beside decodes, fewer: a chunk then runs in
        // pieces over several steps, each piece one that gives the chunk's bits (`piece.rs`),
        // so that the decoding sequences wait for a little of it at each token.
        let n_decoding = self.active.iter().filter(|q| !q.is_prefilling()).count();
        let mut prompt_room = cfg.n_batch;
        if n_decoding > 0 {
            if let Some(q) = self.active.iter().find(|q| q.is_prefilling()) {
                prompt_room = piece::room_beside(n_decoding, q.chunk_len(cfg.n_batch)).min(cfg.n_batch);
            }
        }
        let mut prompts = 0;
        let model = &*self.shared.model;
        for (i, q) in self.active.iter_mut().enumerate() {
            if q.is_prefilling() {
                if prompts > 0 && prompt_room == 0 {
                    continue;
                }
                // The first prompt runs even where its smallest piece exceeds the room.
                let n = q.plan(cfg.n_batch, prompt_room, model);
                if prompts > 0 && n > prompt_room {
                    continue;
                }
                prompt_room = prompt_room.saturating_sub(n);
                prompts += 1;
            }
            let (tokens, cache, logits) = q.next();
            self.in_batch.push(i);
            if logits {
                self.with_logits.push(i);
            }
            batch.push(SeqBatch { tokens, cache, logits });
        }
        let result = self.shared.model.forward_batch(&mut batch, &mut self.scratch, &self.pool);
        self.batch = recycle(batch);
        match result {
            Ok(logits) => {
                let prompt: usize = self.in_batch.iter().map(|&i| self.active[i].ran(model)).sum();
                Counters::add(&counters.prompt_tokens, prompt as u64);
                let n_vocab = self.shared.model.config().n_vocab;
                for (&i, row) in self.with_logits.iter().zip(logits.chunks_exact(n_vocab)) {
                    let q = &mut self.active[i];
                    let before = q.n_gen();
                    let outcome = q.sample(row, &self.shared.tokenizer, &mut self.piece, cfg.n_ctx);
                    Counters::add(&counters.generated_tokens, (q.n_gen() - before) as u64);
                    match outcome {
                        Ok(None) => {}
                        done => self.finished.push((i, done.map(|r| r.expect("finished")))),
                    }
                }
            }
            // Nothing ran (a batch the model refuses): those sequences fail, the others go on.
            Err(e) => {
                for &i in &self.in_batch {
                    self.finished.push((i, Err(Error::Internal(format!("the batch failed: {e}")))));
                }
            }
        }
        Counters::add(&counters.busy_ns, start.elapsed().as_nanos() as u64);
        self.retire();
    }

    /// Ends the sequences in `finished`, returning their caches.
    fn retire(&mut self) {
        let counters = &self.shared.counters;
        self.finished.sort_unstable_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, outcome) in self.finished.drain(..) {
            let q = self.active.remove(i);
            // Counted before `Done` goes out, so a caller that has it sees the counts.
            set_active(self.shared, self.active.len());
            let seq = match outcome {
                Ok(reason) => {
                    let counter =
                        if reason == FinishReason::Cancelled { &counters.cancelled } else { &counters.finished };
                    Counters::add(counter, 1);
                    q.finish(reason)
                }
                Err(e) => {
                    // A deadline is the caller's cancellation, not a failure.
                    let counter = if matches!(e, Error::Timeout(_)) { &counters.cancelled } else { &counters.failed };
                    Counters::add(counter, 1);
                    let Sequence { mut job, seq, .. } = q;
                    job.sink.send(Event::Error(e));
                    match &job.session {
                        Some(s) => {
                            s.put(seq);
                            None
                        }
                        None => Some(seq),
                    }
                }
            };
            self.free.extend(seq);
        }
    }

    /// Ends the queued jobs whose deadline passed (they never started).
    fn expire_waiting(&mut self, now: Instant) {
        let expired = |j: &Job| j.deadline.is_some_and(|d| now >= d);
        if !self.waiting.iter().any(expired) {
            return;
        }
        let counters = &self.shared.counters;
        let (expired, kept): (Vec<Job>, Vec<Job>) = self.waiting.drain(..).partition(expired);
        self.waiting.extend(kept);
        counters.queued.fetch_sub(expired.len(), Relaxed);
        Counters::add(&counters.cancelled, expired.len() as u64);
        set_active(self.shared, self.active.len());
        for job in expired {
            let mut sink = job.sink;
            sink.send(Event::Error(Error::Timeout("its deadline passed while it waited for a slot".into())));
        }
    }

    /// `Engine::close`: every running and queued request ends with `Error::Closed`.
    fn close(&mut self, rx: &Receiver<Job>) {
        let counters = &self.shared.counters;
        self.waiting.extend(rx.try_iter());
        Counters::add(&counters.failed, (self.active.len() + self.waiting.len()) as u64);
        counters.queued.fetch_sub(self.waiting.len(), Relaxed);
        for job in self.waiting.drain(..) {
            let mut sink = job.sink;
            sink.send(Event::Error(Error::Closed));
        }
        let closed: Vec<Sequence> = self.active.drain(..).collect();
        set_active(self.shared, 0);
        for q in closed {
            // Its cache goes too (a session starts its next turn afresh).
            let Sequence { mut job, .. } = q;
            job.sink.send(Event::Error(Error::Closed));
        }
        self.free.clear();
        self.n_caches = 0;
    }

    /// After a panic: every running sequence fails (its cache may be half-written and is
    /// dropped); the scheduler goes on with the next jobs.
    fn fail_all(&mut self, msg: &str) {
        self.finished.clear();
        self.batch = Vec::new();
        Counters::add(&self.shared.counters.failed, self.active.len() as u64);
        let failed: Vec<Sequence> = self.active.drain(..).collect();
        set_active(self.shared, self.active.len());
        for q in failed {
            let Sequence { mut job, .. } = q;
            if job.session.is_none() {
                self.n_caches -= 1;
            }
            job.sink.send(Event::Error(Error::Internal(format!("engine panicked: {msg}"))));
        }
    }
}

/// `v`'s allocation, empty, for borrows of another lifetime: a step's batch borrows the
/// sequences' tokens and caches, and the buffer outlives the step.
fn recycle<'b>(mut v: Vec<SeqBatch<'_>>) -> Vec<SeqBatch<'b>> {
    v.clear();
    // Collected in place (same layout): no allocation.
    v.into_iter().map(|_| unreachable!("empty")).collect()
}

/// Publishes the number of running sequences and wakes a submitter waiting for room. Under the
/// lock, so a submitter between its check and its wait cannot miss it.
fn set_active(shared: &Shared, n: usize) {
    let _room = shared.room.0.lock().unwrap_or_else(|e| e.into_inner());
    shared.counters.active.store(n, Relaxed);
    shared.room.1.notify_one();
}
