//! A sequence's KV cache kept between requests, so chat turns (and any prompt that extends
//! the previous one) only compute the new tokens.

use crate::kv_cache::KvCache;
use std::sync::Mutex;

/// The tokens whose keys and values a cache holds, in order, and the chunk class each ran
/// with (`Model::chunk_class`), which says where another prompt can reuse them
/// (`engine/prefix.rs`).
pub struct CachedSequence {
    pub cache: KvCache,
    pub tokens: Vec<u32>,
    pub classes: Vec<u8>,
}

impl CachedSequence {
    pub(crate) fn new(cache: KvCache) -> CachedSequence {
        CachedSequence { cache, tokens: Vec::new(), classes: Vec::new() }
    }

    /// Keeps the first `n` positions.
    pub(crate) fn truncate(&mut self, n: usize) {
        self.cache.truncate(n);
        self.tokens.truncate(n);
        self.classes.truncate(n);
    }

    /// Holds the first `n` positions of `src`, copied (a live sequence's prefix).
    pub(crate) fn copy_prefix(&mut self, src: &CachedSequence, n: usize) {
        self.cache.copy_prefix(&src.cache, n);
        self.tokens.clear();
        self.tokens.extend_from_slice(&src.tokens[..n]);
        self.classes.clear();
        self.classes.extend_from_slice(&src.classes[..n]);
    }
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
