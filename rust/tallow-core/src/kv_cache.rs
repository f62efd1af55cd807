//! `KvCache`: one sequence's keys and values, preallocated for its whole context.
//!
//! Layout per layer: `k[layer]` is `[n_ctx, n_head_kv * head_dim]` (one row per position), `v`
//! likewise. Values are stored as f16, as llama.cpp's default cache does: half the memory of
//! f32 and the same rounding llama.cpp applies. Positions `0..len` are filled; `truncate`
//! rolls back (prefix reuse, chat edits) without freeing anything.

use crate::error::{Error, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// The per-sequence attention cache. Created by `Model::new_cache`; shape-checked by `forward`.
pub struct KvCache {
    n_layer: usize,
    n_ctx: usize,
    /// Row width: `n_head_kv * head_dim`.
    kv_dim: usize,
    /// `[n_layer, n_ctx, kv_dim]`
    k: Vec<f16>,
    /// `[n_layer, n_ctx, kv_dim]`
    v: Vec<f16>,
    len: usize,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("n_layer", &self.n_layer)
            .field("n_ctx", &self.n_ctx)
            .field("kv_dim", &self.kv_dim)
            .field("len", &self.len)
            .finish()
    }
}

/// Refuse caches above this size: a typo'd `n_ctx` must fail with an error, not take the
/// machine down. 64 GiB is beyond any model this CPU engine serves.
pub const KV_CACHE_MAX_BYTES: u64 = 64 << 30;

/// `n` zeros, from zeroed memory: the system's fresh pages are zero already, so a large cache
/// costs nothing until positions are written (a `resize` wrote all of it first: 0.8 GB and
/// ~1 s for a 1.7B model at 4096 positions, on the first request). `None` when refused.
fn zeroed(n: usize) -> Option<Vec<f16>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<f16>(n).ok()?;
    // SAFETY: `layout` has a non-zero size. A non-null result is `n` zeroed, allocated `f16`s
    // (all-zero bits are +0.0) in the global allocator's layout for `[f16; n]`, which is what
    // `Vec::from_raw_parts` requires.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut f16;
        (!ptr.is_null()).then(|| Vec::from_raw_parts(ptr, n, n))
    }
}

impl KvCache {
    /// Allocates a zeroed cache. Fails (never aborts) when the size overflows, exceeds
    /// [`KV_CACHE_MAX_BYTES`] or the allocation is refused.
    pub fn new(n_layer: usize, n_ctx: usize, kv_dim: usize) -> Result<KvCache> {
        if n_ctx == 0 {
            return Err(Error::invalid("n_ctx", "must be at least 1"));
        }
        let elems = (n_layer as u64)
            .checked_mul(n_ctx as u64)
            .and_then(|x| x.checked_mul(kv_dim as u64))
            .filter(|&e| e.saturating_mul(2 * 2) <= KV_CACHE_MAX_BYTES)
            .ok_or_else(|| {
                Error::invalid(
                    "n_ctx",
                    format!(
                        "a cache of {n_ctx} positions x {n_layer} layers x {kv_dim} would exceed {} GiB",
                        KV_CACHE_MAX_BYTES >> 30
                    ),
                )
            })? as usize;
        let alloc = |what: &str| {
            zeroed(elems).ok_or_else(|| {
                Error::invalid("n_ctx", format!("cannot allocate the {what} cache for {n_ctx} positions"))
            })
        };
        Ok(KvCache { n_layer, n_ctx, kv_dim, k: alloc("key")?, v: alloc("value")?, len: 0 })
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions this cache can hold (`n_ctx`).
    pub fn capacity(&self) -> usize {
        self.n_ctx
    }

    pub fn n_layer(&self) -> usize {
        self.n_layer
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// Holds the first `n` positions of `src` (a cache of the same shape), copied.
    pub fn copy_prefix(&mut self, src: &KvCache, n: usize) {
        assert!(n <= src.len && n <= self.n_ctx);
        assert!(self.n_layer == src.n_layer && self.kv_dim == src.kv_dim, "caches of different models");
        for layer in 0..self.n_layer {
            let (dst, from) = (self.layer_range(layer).start, src.layer_range(layer).start);
            let len = n * self.kv_dim;
            self.k[dst..dst + len].copy_from_slice(&src.k[from..from + len]);
            self.v[dst..dst + len].copy_from_slice(&src.v[from..from + len]);
        }
        self.len = n;
    }

    /// Keeps the first `n` positions (no-op if `n >= len`). The next `forward` continues at `n`.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Bytes held by the cache.
    pub fn size_bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * std::mem::size_of::<f16>()
    }

    fn layer_range(&self, layer: usize) -> std::ops::Range<usize> {
        let per = self.n_ctx * self.kv_dim;
        layer * per..(layer + 1) * per
    }

    /// Keys of `layer`, `[n_ctx, kv_dim]` (rows `len..` are stale).
    pub fn k_layer(&self, layer: usize) -> &[f16] {
        &self.k[self.layer_range(layer)]
    }

    /// Values of `layer`, `[n_ctx, kv_dim]`.
    pub fn v_layer(&self, layer: usize) -> &[f16] {
        &self.v[self.layer_range(layer)]
    }

    /// Writes rows `pos..pos + n` of `layer` from `k`/`v` (`[n, kv_dim]` each, f32).
    /// Callers check `pos + n <= capacity` first (`forward` does, before any work).
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let start = self.layer_range(layer).start + pos * self.kv_dim;
        let end = start + k.len();
        // One conversion call per slice (F16C where the CPU has it), not one per value.
        self.k[start..end].convert_from_f32_slice(k);
        self.v[start..start + v.len()].convert_from_f32_slice(v);
    }

    /// Marks `n` more positions as filled, after every layer has stored them.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len = (self.len + n).min(self.n_ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_context_is_an_error() {
        assert!(matches!(KvCache::new(2, 0, 8), Err(Error::InvalidArgument { param: "n_ctx", .. })));
    }

    #[test]
    fn absurd_size_is_an_error_not_an_abort() {
        assert!(KvCache::new(1 << 20, 1 << 30, 1 << 20).is_err());
        assert!(KvCache::new(usize::MAX, usize::MAX, usize::MAX).is_err());
    }

    /// Resident bytes of this process (Linux: `/proc/self/statm`, in pages).
    #[cfg(target_os = "linux")]
    fn rss_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_large_cache_is_not_touched_until_written() {
        // 2 x 512 MiB of keys and values (a 1.7B model at 4096 positions is 2 x 384 MiB).
        let before = rss_bytes();
        let mut c = KvCache::new(32, 4096, 2048).unwrap();
        assert_eq!(c.size_bytes(), 1 << 30);
        let grown = rss_bytes().saturating_sub(before);
        assert!(grown < 64 << 20, "allocating the cache made {} MiB resident", grown >> 20);
        assert!(c.k_layer(31)[4095 * 2048..].iter().chain(c.v_layer(17)).all(|&x| x == f16::ZERO));
        c.store(31, 4095, &[1.5; 2048], &[2.5; 2048]);
        assert_eq!(
            (c.k_layer(31)[4095 * 2048], c.v_layer(31)[4096 * 2048 - 1]),
            (f16::from_f32(1.5), f16::from_f32(2.5))
        );
    }

    #[test]
    fn store_truncate_clear() {
        let mut c = KvCache::new(2, 4, 3).unwrap();
        assert_eq!((c.len(), c.capacity(), c.size_bytes()), (0, 4, 2 * 2 * 4 * 3 * 2));
        c.store(1, 2, &[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]);
        c.advance(3);
        assert_eq!(c.k_layer(1)[6..9], [f16::from_f32(1.0), f16::from_f32(2.0), f16::from_f32(3.0)]);
        assert_eq!(c.v_layer(1)[8], f16::from_f32(6.0));
        assert_eq!(c.k_layer(0)[6], f16::ZERO);
        c.truncate(5);
        assert_eq!(c.len(), 3);
        c.truncate(1);
        assert_eq!(c.len(), 1);
        c.clear();
        assert!(c.is_empty());
    }
}
