//! Repacking after the load: a weight whose packed copy is written chunk by chunk, by a
//! background thread or by the first product that needs it, whichever comes first.
//!
//! A load that writes a new repack cache file (`repack_cache.rs`) writes the model's size into
//! fresh memory, and on the VMs we measure on, that first touch runs at 0.4-1.5 GB/s: the first
//! load of a 1.8 GB Q8_0 file took 3.4 s against llama.cpp's 0.66 s map of the unchanged GGUF.
//! So such a load returns as soon as the file is mapped, each tiled weight still in its GGUF
//! layout and paired with a `DeferredPack`: where its packed copy goes, and a counter of the
//! chunks taken. The cache's writer threads pack the weights in load order (the order a forward
//! pass reads them), on cores nothing else wants. A product that needs a weight before then
//! (`QTensor::ensure_packed`) takes the chunks left with the pool's threads and waits for those
//! in flight, unless reading the GGUF layout costs less than packing (short products of Q8_0
//! weights whose pack has not begun, `matmul.rs`). Both layouts give the same bits
//! (`tests/quant_llama_order.rs`), so results never depend on the timing. Each chunk's source
//! pages are released once it is packed, so memory does not double.

use super::arena::Region;
use super::{x16, QType};
use crate::threadpool::ThreadPool;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

/// Source bytes per chunk (rounded to whole row groups): small enough that a product waiting
/// for a chunk in flight waits milliseconds, large enough that claiming costs nothing.
pub(crate) const CHUNK_BYTES: usize = 4 << 20;

/// The packed copy of one weight, being written.
pub(crate) struct DeferredPack {
    /// Where the packed copy goes: as long as the tensor's data, group `n` at the same offset
    /// as in the source.
    dst: Region,
    /// Rows per group of the packed layout, and bytes per group.
    g: usize,
    group_bytes: usize,
    n_groups: usize,
    /// Row groups per chunk, and chunks in all.
    per_chunk: usize,
    n_chunks: usize,
    /// Next chunk to claim (runs past `n_chunks` once all are taken), and chunks written.
    next: AtomicUsize,
    done: AtomicUsize,
    /// Set (`Release`) once every chunk is written; `dst` is read-only from then on.
    ready: AtomicBool,
    /// Set by the first caller of `take_release` after `ready`.
    released: AtomicBool,
    lock: Mutex<()>,
    finished: Condvar,
}

impl DeferredPack {
    /// A pack of `rows` rows of `row_bytes` bytes each, in groups of `g` rows, into `dst`
    /// (fresh, as long as the data), in chunks of about `chunk_bytes`.
    pub(crate) fn new(dst: Region, g: usize, rows: usize, row_bytes: usize, chunk_bytes: usize) -> DeferredPack {
        assert!(g > 0 && rows.is_multiple_of(g) && dst.len() == rows * row_bytes, "a pack of the wrong shape");
        let (group_bytes, n_groups) = (g * row_bytes, rows / g);
        let per_chunk = chunk_bytes.div_ceil(group_bytes.max(1)).clamp(1, n_groups.max(1));
        let n_chunks = n_groups.div_ceil(per_chunk);
        DeferredPack {
            dst,
            g,
            group_bytes,
            n_groups,
            per_chunk,
            n_chunks,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            ready: AtomicBool::new(n_chunks == 0),
            released: AtomicBool::new(false),
            lock: Mutex::new(()),
            finished: Condvar::new(),
        }
    }

    /// The region of a complete pack, for its tensor to own.
    pub(crate) fn into_region(self) -> Region {
        assert!(self.ready.load(Ordering::Acquire), "a pack taken before it is complete");
        self.dst
    }

    /// Rows per group of the packed layout.
    pub(crate) fn rows_per_group(&self) -> usize {
        self.g
    }

    /// The packed bytes, once every chunk is written.
    pub(crate) fn packed(&self) -> Option<&[u8]> {
        self.ready.load(Ordering::Acquire).then(|| self.dst.bytes())
    }

    /// Whether the caller is the first to ask since the copy is complete: it then releases the
    /// source's pages once more, whole (the pages straddling chunk boundaries, and those that
    /// products reading the source faulted back in meanwhile).
    pub(crate) fn take_release(&self) -> bool {
        // A plain load first: products ask on every call.
        self.ready.load(Ordering::Acquire)
            && !self.released.load(Ordering::Relaxed)
            && !self.released.swap(true, Ordering::AcqRel)
    }

    /// Whether some thread has begun writing the packed copy.
    pub(crate) fn started(&self) -> bool {
        self.next.load(Ordering::Relaxed) > 0
    }

    /// Writes chunks until none is left to claim. `src` is the tensor's data row after row;
    /// `release(start, len)` is told each source range once it is packed, so that a large
    /// tensor (a tied embedding) is never resident twice.
    pub(crate) fn work(&self, qtype: QType, src: &[u8], release: &(dyn Fn(usize, usize) + Sync)) {
        assert_eq!(src.len(), self.dst.len(), "a pack from a source of another size");
        loop {
            let c = self.next.fetch_add(1, Ordering::Relaxed);
            if c >= self.n_chunks {
                return;
            }
            let groups = c * self.per_chunk..((c + 1) * self.per_chunk).min(self.n_groups);
            let range = groups.start * self.group_bytes..groups.end * self.group_bytes;
            // SAFETY: `range` lies inside `dst` (whole groups of it); chunk `c` is this thread's
            // alone (claimed above), chunks do not overlap, and nothing reads `dst` before
            // `ready`, which waits for every chunk.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.dst.as_mut_ptr().add(range.start), range.len()) };
            pack_groups(qtype, self.g, self.group_bytes / self.g, &src[range.clone()], dst);
            release(range.start, range.len());
            if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.n_chunks {
                let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                self.ready.store(true, Ordering::Release);
                self.finished.notify_all();
            }
        }
    }

    /// Packs what is left, on `pool`'s threads (or this one alone), and returns once every
    /// chunk is written, by whichever thread took it.
    pub(crate) fn finish(
        &self,
        qtype: QType,
        src: &[u8],
        release: &(dyn Fn(usize, usize) + Sync),
        pool: Option<&ThreadPool>,
    ) {
        if self.ready.load(Ordering::Acquire) {
            return;
        }
        match pool {
            Some(pool) => pool.run(&|_, _| self.work(qtype, src, release)),
            None => self.work(qtype, src, release),
        }
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while !self.ready.load(Ordering::Acquire) {
            guard = self.finished.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Packs whole groups of `g` rows of `row_bytes` bytes (`src`, row after row) into `dst`, the
/// same length: 16-row groups in the layout of `x16.rs`; smaller ones with block `i` of the
/// group's rows one after another, then block `i + 1`.
fn pack_groups(qtype: QType, g: usize, row_bytes: usize, src: &[u8], dst: &mut [u8]) {
    assert_eq!(src.len(), dst.len(), "packing into a region of another size");
    let ts = qtype.type_size();
    let group = g * row_bytes;
    for (dst, rows) in dst.chunks_exact_mut(group).zip(src.chunks_exact(group)) {
        for (i, dst) in dst.chunks_exact_mut(g * ts).enumerate() {
            let block = |r: usize| &rows[r * row_bytes + i * ts..r * row_bytes + (i + 1) * ts];
            if g == x16::ROWS {
                x16::pack_block(qtype, block, dst);
            } else {
                for (r, d) in dst.chunks_exact_mut(ts).enumerate() {
                    d.copy_from_slice(block(r));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{matmul::layout_rows, QTensor};

    /// Several threads packing one tensor at once, in chunks of one row group, give exactly the
    /// copy `interleaved` makes, whichever thread took which chunk.
    #[test]
    fn threads_packing_one_tensor_give_the_interleaved_copy() {
        for qtype in [QType::Q4_0, QType::Q8_0, QType::Q4_K, QType::Q6_K] {
            let g = layout_rows(qtype);
            if g == 1 {
                continue; // no tiles on this CPU (TALLOW_KERNELS=scalar)
            }
            let (rows, cols) = (12 * g, 2 * 256);
            let n = rows * qtype.row_bytes(cols as u64).unwrap() as usize;
            // Any bytes: packing moves them without reading them as numbers, except the K-quants'
            // scales, which x16 regroups bit by bit.
            let bytes: Vec<u8> = (0..n).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
            let plain = QTensor::from_bytes("w", qtype, rows, cols, &bytes).unwrap();
            let want = plain.clone().interleaved();
            for round in 0..8 {
                let t = plain.clone().deferred_into_chunks(g, Region::alloc(n).unwrap(), 1);
                assert_eq!((t.interleave(), t.data()), (1, &bytes[..]), "{qtype}: its own bytes until packed");
                std::thread::scope(|s| {
                    for k in 0..4 {
                        let t = &t;
                        s.spawn(move || if (k + round) % 2 == 0 { t.pack_some() } else { t.ensure_packed(None) });
                    }
                    t.ensure_packed(None);
                });
                assert_eq!(t.interleave(), g, "{qtype}");
                assert!(t.data() == want.data(), "{qtype}: round {round}");
            }
        }
    }

    /// A product of a weight whose pack has not begun reads it as it is where that costs less
    /// (Q8_0, a few tokens) and packs it first otherwise; either way its bits are those of the
    /// packed weight's product.
    #[test]
    fn products_read_plain_rows_or_pack_first_with_the_same_bits() {
        use crate::quant::{matmul, MatmulScratch};
        use crate::threadpool::ThreadPool;
        let pool = ThreadPool::new(2);
        for (qtype, n_tokens, packs) in [(QType::Q8_0, 3, false), (QType::Q8_0, 100, true), (QType::Q4_K, 3, true)] {
            let g = layout_rows(qtype);
            if g == 1 {
                continue; // no tiles on this CPU (TALLOW_KERNELS=scalar)
            }
            let (rows, cols) = (4 * g, 512);
            let n = rows * qtype.row_bytes(cols as u64).unwrap() as usize;
            let mut bytes: Vec<u8> = (0..n).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
            let ts = qtype.type_size();
            for blk in bytes.chunks_exact_mut(ts) {
                blk[1] = 0x14; // finite f16 scales: Q8_0's d; Q4_K's d and dmin
                blk[3] = 0x10;
            }
            let plain = QTensor::from_bytes("w", qtype, rows, cols, &bytes).unwrap();
            let x: Vec<f32> = (0..n_tokens * cols).map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 97.0).collect();
            let product = |w: &QTensor| {
                let mut y = vec![0f32; n_tokens * rows];
                matmul(w, &x, n_tokens, &mut y, &mut MatmulScratch::default(), &pool);
                y.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let want = product(&plain.clone().interleaved());
            let t = plain.deferred_into(g, Region::alloc(n).unwrap());
            assert_eq!(product(&t), want, "{qtype} x {n_tokens}");
            assert_eq!(t.interleave(), if packs { g } else { 1 }, "{qtype} x {n_tokens}: packed first?");
        }
    }
}
