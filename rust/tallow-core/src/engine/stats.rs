//! Counters of an engine, updated by the scheduler and read from any thread, so services and
//! tests can see what runs, what waits, and that nothing leaks.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// A snapshot of an engine's counters ([`super::Engine::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EngineStats {
    /// Requests generating now.
    pub active: usize,
    /// Requests submitted and not yet started.
    pub queued: usize,
    /// Requests that ended by a stop, `max_tokens` or the context's end; that were cancelled
    /// (before or after they started); that failed.
    pub finished: u64,
    pub cancelled: u64,
    pub failed: u64,
    /// KV caches held by running requests, and how many may be (`max_sequences`).
    pub kv_slots_in_use: usize,
    pub kv_slots: usize,
    /// Prompt tokens computed (prefix reuse excluded) and tokens generated, since the start.
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    /// Prompt tokens taken from a cached prefix instead of computed (a session's history,
    /// another request's prompt).
    pub cached_prompt_tokens: u64,
    /// Seconds the engine spent computing steps.
    pub busy_seconds: f64,
}

impl EngineStats {
    /// Generated tokens per second of computing.
    pub fn generated_per_second(&self) -> f64 {
        if self.busy_seconds > 0.0 {
            self.generated_tokens as f64 / self.busy_seconds
        } else {
            0.0
        }
    }
}

/// The live counters behind [`EngineStats`].
#[derive(Default)]
pub(super) struct Counters {
    pub(super) active: AtomicUsize,
    pub(super) queued: AtomicUsize,
    pub(super) finished: AtomicU64,
    pub(super) cancelled: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) prompt_tokens: AtomicU64,
    pub(super) generated_tokens: AtomicU64,
    pub(super) cached_prompt_tokens: AtomicU64,
    pub(super) busy_ns: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self, kv_slots: usize) -> EngineStats {
        let active = self.active.load(Relaxed);
        EngineStats {
            active,
            queued: self.queued.load(Relaxed),
            finished: self.finished.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            failed: self.failed.load(Relaxed),
            kv_slots_in_use: active,
            kv_slots,
            prompt_tokens: self.prompt_tokens.load(Relaxed),
            generated_tokens: self.generated_tokens.load(Relaxed),
            cached_prompt_tokens: self.cached_prompt_tokens.load(Relaxed),
            busy_seconds: self.busy_ns.load(Relaxed) as f64 * 1e-9,
        }
    }

    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}
