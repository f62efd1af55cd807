//! `KvCache`: one sequence's keys and values, preallocated for its whole context.
//!
//! Values are stored as f16, as llama.cpp's default cache does: half the memory of f32 and the
//! same rounding llama.cpp applies. Positions `0..len` are filled; `truncate` rolls back (prefix
//! reuse, chat edits) without freeing anything.
//!
//! The layout serves decode attention, which streams one KV head's keys, then its values, from
//! memory ([`KvLayer`]): each KV head's keys are one run of rows, and its values are stored
//! transposed in blocks of [`V_BLOCK`] positions, so that every output element's weighted sum
//! reads runs of consecutive positions (llama.cpp transposes its value cache for the same
//! reason). With one row per position for the whole layer, a head's keys and values were slices
//! of rows 2 to 4 cache lines apart, and the weighted sums hopped between rows 64 keys apart:
//! SmolLM2's decode attention over 2048 keys took 4.6-4.9 ms per token (all layers, 2
//! threads, `attention_speed`), 2.9-3.2 ms with this layout. Blocks rather than whole rows
//! keep a short context's values in a few pages (whole rows of 256 keys or fewer ran slower
//! than the old layout; blocks of 64 positions cost 25% at 2048 keys) and a cache's resident
//! memory in step with its length.

use crate::error::{Error, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// Positions per block of the transposed values (a multiple of 64, so that a block's 16-key
/// chunks keep their place in the 4 accumulators of `ggml_vec_dot_f16`).
pub const V_BLOCK: usize = 256;

/// Offset of position `j`, element `d` in one KV head's values (`[ctx / V_BLOCK, head_dim,
/// V_BLOCK]`).
#[inline]
pub fn v_index(j: usize, d: usize, head_dim: usize) -> usize {
    (j / V_BLOCK * head_dim + d) * V_BLOCK + j % V_BLOCK
}

/// One layer of a cache, as attention reads it. Each KV head holds `ctx` positions (a multiple
/// of [`V_BLOCK`], at least the cache's capacity).
#[derive(Clone, Copy, Debug)]
pub struct KvLayer<'a> {
    /// `[n_head_kv, ctx, head_dim]`
    pub k: &'a [f16],
    /// `[n_head_kv, ctx / V_BLOCK, head_dim, V_BLOCK]`: element `d` of position `j` of head `h`
    /// at `h * ctx * head_dim + v_index(j, d, head_dim)`.
    pub v: &'a [f16],
    pub ctx: usize,
    pub head_dim: usize,
}

impl<'a> KvLayer<'a> {
    /// KV heads in the layer.
    pub fn n_head_kv(&self) -> usize {
        self.k.len() / (self.ctx * self.head_dim)
    }

    /// KV head `h`'s keys (`[ctx, head_dim]`) and values (`[ctx / V_BLOCK, head_dim, V_BLOCK]`).
    pub fn head(&self, h: usize) -> (&'a [f16], &'a [f16]) {
        let per = self.ctx * self.head_dim;
        (&self.k[h * per..(h + 1) * per], &self.v[h * per..(h + 1) * per])
    }
}

/// The per-sequence attention cache. Created by `Model::new_cache`; shape-checked by `forward`.
pub struct KvCache {
    n_layer: usize,
    n_ctx: usize,
    n_head_kv: usize,
    head_dim: usize,
    /// Positions each head's keys and values have room for: `n_ctx` rounded up to [`V_BLOCK`].
    ctx: usize,
    /// `[n_layer, n_head_kv, ctx, head_dim]`
    k: Vec<f16>,
    /// `[n_layer, n_head_kv, ctx / V_BLOCK, head_dim, V_BLOCK]`
    v: Vec<f16>,
    len: usize,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("n_layer", &self.n_layer)
            .field("n_ctx", &self.n_ctx)
            .field("n_head_kv", &self.n_head_kv)
            .field("head_dim", &self.head_dim)
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
    /// Allocates a zeroed cache for `n_head_kv` heads of `head_dim`. Fails (never aborts) when
    /// the size overflows, exceeds [`KV_CACHE_MAX_BYTES`] or the allocation is refused.
    pub fn new(n_layer: usize, n_ctx: usize, n_head_kv: usize, head_dim: usize) -> Result<KvCache> {
        if n_ctx == 0 {
            return Err(Error::invalid("n_ctx", "must be at least 1"));
        }
        let ctx = n_ctx.checked_next_multiple_of(V_BLOCK);
        let elems = ctx
            .and_then(|ctx| (n_layer as u64).checked_mul(ctx as u64))
            .and_then(|x| x.checked_mul(n_head_kv as u64))
            .and_then(|x| x.checked_mul(head_dim as u64))
            .filter(|&e| e.saturating_mul(2 * 2) <= KV_CACHE_MAX_BYTES)
            .ok_or_else(|| {
                Error::invalid(
                    "n_ctx",
                    format!(
                        "a cache of {n_ctx} positions x {n_layer} layers x {n_head_kv} x {head_dim} would exceed {} GiB",
                        KV_CACHE_MAX_BYTES >> 30
                    ),
                )
            })? as usize;
        let alloc = |what: &str| {
            zeroed(elems).ok_or_else(|| {
                Error::invalid("n_ctx", format!("cannot allocate the {what} cache for {n_ctx} positions"))
            })
        };
        let (k, v) = (alloc("key")?, alloc("value")?);
        let ctx = ctx.expect("checked above");
        Ok(KvCache { n_layer, n_ctx, n_head_kv, head_dim, ctx, k, v, len: 0 })
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

    /// Width of a layer's keys (and values) at one position: `n_head_kv * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Holds the first `n` positions of `src` (a cache of the same shape), copied.
    pub fn copy_prefix(&mut self, src: &KvCache, n: usize) {
        assert!(n <= src.len && n <= self.n_ctx);
        assert!(
            (self.n_layer, self.n_head_kv, self.head_dim) == (src.n_layer, src.n_head_kv, src.head_dim),
            "caches of different models"
        );
        // Whole blocks of values: past `n` they hold stale positions, as a truncated cache does.
        let (keys, values) = (n * self.head_dim, n.div_ceil(V_BLOCK) * V_BLOCK * self.head_dim);
        for layer in 0..self.n_layer {
            for h in 0..self.n_head_kv {
                let (dst, from) = (self.head_start(layer, h), src.head_start(layer, h));
                self.k[dst..dst + keys].copy_from_slice(&src.k[from..from + keys]);
                self.v[dst..dst + values].copy_from_slice(&src.v[from..from + values]);
            }
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

    /// Where KV head `h` of `layer` starts in `k` and in `v`.
    fn head_start(&self, layer: usize, h: usize) -> usize {
        (layer * self.n_head_kv + h) * self.ctx * self.head_dim
    }

    /// One layer's keys and values (positions `len..` are stale).
    pub fn layer(&self, layer: usize) -> KvLayer<'_> {
        let range = self.head_start(layer, 0)..self.head_start(layer + 1, 0);
        KvLayer { k: &self.k[range.clone()], v: &self.v[range], ctx: self.ctx, head_dim: self.head_dim }
    }

    /// Writes positions `pos..pos + n` of `layer` from `k`/`v` (`[n, kv_dim]` each, f32).
    /// Callers check `pos + n <= capacity` first (`forward` does, before any work).
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let hd = self.head_dim;
        assert!(k.len() == v.len() && k.len().is_multiple_of(self.kv_dim()));
        assert!(pos + k.len() / self.kv_dim() <= self.n_ctx);
        let mut tmp = [f16::ZERO; 64];
        for (t, (kr, vr)) in k.chunks_exact(self.kv_dim()).zip(v.chunks_exact(self.kv_dim())).enumerate() {
            let j = pos + t;
            for h in 0..self.n_head_kv {
                let at = self.head_start(layer, h);
                // One conversion call per slice (F16C where the CPU has it), not one per value.
                self.k[at + j * hd..at + (j + 1) * hd].convert_from_f32_slice(&kr[h * hd..(h + 1) * hd]);
                // Element d of position j: V_BLOCK values apart from element d - 1.
                let mut column = self.v[at + v_index(j, 0, hd)..].iter_mut().step_by(V_BLOCK);
                for d0 in (0..hd).step_by(tmp.len()) {
                    let c = &mut tmp[..(hd - d0).min(64)];
                    c.convert_from_f32_slice(&vr[h * hd + d0..h * hd + d0 + c.len()]);
                    // `c` first: a zip that ends on `column` would skip one of its elements.
                    for (&x, dst) in c.iter().zip(column.by_ref()) {
                        *dst = x;
                    }
                }
            }
        }
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
        assert!(matches!(KvCache::new(2, 0, 1, 8), Err(Error::InvalidArgument { param: "n_ctx", .. })));
    }

    #[test]
    fn absurd_size_is_an_error_not_an_abort() {
        assert!(KvCache::new(1 << 20, 1 << 30, 1 << 10, 1 << 10).is_err());
        assert!(KvCache::new(usize::MAX, usize::MAX, usize::MAX, usize::MAX).is_err());
        assert!(KvCache::new(1, usize::MAX - 3, 1, 1).is_err());
    }

    /// Resident bytes of this process (Linux: `/proc/self/statm`, in pages).
    #[cfg(target_os = "linux")]
    fn rss_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
    }

    /// Position `j`, element `e` (of `kv_dim`) of `layer`'s keys and values.
    fn at(c: &KvCache, layer: usize, j: usize, e: usize) -> (f16, f16) {
        let (h, d) = (e / c.head_dim, e % c.head_dim);
        let (k, v) = c.layer(layer).head(h);
        (k[j * c.head_dim + d], v[v_index(j, d, c.head_dim)])
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_large_cache_is_not_touched_until_written() {
        // 2 x 512 MiB of keys and values (a 1.7B model at 4096 positions is 2 x 384 MiB).
        let before = rss_bytes();
        let mut c = KvCache::new(32, 4096, 16, 128).unwrap();
        assert_eq!(c.size_bytes(), 1 << 30);
        let grown = rss_bytes().saturating_sub(before);
        assert!(grown < 64 << 20, "allocating the cache made {} MiB resident", grown >> 20);
        assert!(c.layer(31).k.iter().chain(c.layer(17).v).all(|&x| x == f16::ZERO));
        let before = rss_bytes();
        c.store(31, 4095, &[1.5; 2048], &[2.5; 2048]);
        // One block of values per head (16 x 64 KiB) and a page of keys per head.
        let grown = rss_bytes().saturating_sub(before);
        assert!(grown <= 2 << 20, "storing one position made {} KiB resident", grown >> 10);
        assert_eq!(at(&c, 31, 4095, 0), (f16::from_f32(1.5), f16::from_f32(2.5)));
        assert_eq!(at(&c, 31, 4095, 2047), (f16::from_f32(1.5), f16::from_f32(2.5)));
    }

    #[test]
    fn store_truncate_clear() {
        // 2 heads of 80 (more than one conversion chunk of 64): kv_dim 160.
        let (hd, kv_dim) = (80, 160);
        let mut c = KvCache::new(2, 4, 2, hd).unwrap();
        assert_eq!((c.len(), c.capacity(), c.kv_dim()), (0, 4, kv_dim));
        assert_eq!(c.size_bytes(), 2 * 2 * 2 * V_BLOCK * hd * 2); // positions padded to a block
        let k: Vec<f32> = (0..2 * kv_dim).map(|x| x as f32).collect();
        let v: Vec<f32> = (0..2 * kv_dim).map(|x| 1000.0 + x as f32).collect();
        c.store(1, 2, &k, &v);
        c.advance(4);
        for j in 2..4 {
            for e in 0..kv_dim {
                let x = ((j - 2) * kv_dim + e) as f32;
                assert_eq!(at(&c, 1, j, e), (f16::from_f32(x), f16::from_f32(1000.0 + x)), "position {j}, element {e}");
            }
        }
        assert_eq!(at(&c, 0, 2, 0), (f16::ZERO, f16::ZERO));
        c.truncate(5);
        assert_eq!(c.len(), 4);
        c.truncate(1);
        assert_eq!(c.len(), 1);
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn a_copied_prefix_reads_as_the_source() {
        let (hd, n_head_kv) = (8, 2);
        let mut src = KvCache::new(2, 600, n_head_kv, hd).unwrap();
        let rows = |t: usize, off: f32| -> Vec<f32> { (0..t * n_head_kv * hd).map(|x| off + x as f32 / 8.0).collect() };
        for layer in 0..2 {
            src.store(layer, 0, &rows(600, layer as f32), &rows(600, -(layer as f32)));
        }
        src.advance(600);
        let mut dst = KvCache::new(2, 600, n_head_kv, hd).unwrap();
        dst.copy_prefix(&src, 300); // one whole block of values and part of the next
        assert_eq!(dst.len(), 300);
        for layer in 0..2 {
            for j in [0, 255, 256, 299] {
                for e in 0..n_head_kv * hd {
                    assert_eq!(at(&dst, layer, j, e), at(&src, layer, j, e), "layer {layer}, position {j}");
                }
            }
        }
    }
}
