//! A sequence's KV cache kept between requests, so chat turns (and any prompt that extends
//! the previous one) only compute the new tokens.

use crate::kv_cache::KvCache;
use std::sync::Mutex;

/// The tokens whose keys and values a cache holds, in order.
pub struct CachedSequence {
    pub cache: KvCache,
    pub tokens: Vec<u32>,
}

/// A slot holding a cached sequence between requests. A request takes it out while it runs
/// and puts it back when done.
#[derive(Default)]
pub struct Session {
    slot: Mutex<Option<CachedSequence>>,
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    pub(crate) fn take(&self) -> Option<CachedSequence> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub(crate) fn put(&self, seq: CachedSequence) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(seq);
    }

    /// Forgets the cached tokens (chat reset).
    pub fn clear(&self) {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}
