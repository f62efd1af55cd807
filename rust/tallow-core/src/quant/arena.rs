//! Memory for repacked weights: regions carved one after another from large anonymous
//! mappings backed by transparent huge pages.
//!
//! A decode step streams every weight once, tensor after tensor. Tensors smaller than a huge
//! page, each in its own mapping, sit on 4 KiB pages: a TLB miss every 4 KiB, and the hardware
//! prefetchers stop at every page boundary. Carved from 2 MiB-aligned chunks in load order (the
//! order a forward pass reads them), they form a few long runs of huge pages instead
//! (SmolLM2-135M decode: ~6% faster). Larger tensors get a huge-page mapping of their own.
//!
//! Pages are only backed once written, so a chunk's unused tail costs at most one huge page.
//! A chunk lives as long as any region carved from it.

use std::sync::{Arc, Mutex};

/// Bytes per shared chunk.
const CHUNK: usize = 64 << 20;

/// Transparent huge page size (x86-64 and most aarch64 kernels); chunks start on this boundary.
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// Regions start on a cache line.
const ALIGN: usize = 64;

/// `len` bytes of a mapping: anonymous memory, zero until written, or a repack cache file
/// (`repack_cache.rs`). Written once, by `QTensor::interleaved` before the tensor is shared, or
/// chunk by chunk by a `DeferredPack` (`deferred.rs`) before it is marked ready; read-only
/// afterwards.
pub(crate) struct Region {
    map: Arc<memmap2::MmapRaw>,
    start: usize,
    len: usize,
}

impl Region {
    /// Carves `len` bytes from the current chunk, or from a new mapping. `None` when the system
    /// refuses the mapping (the caller keeps the tensor in its original layout).
    pub(crate) fn alloc(len: usize) -> Option<Region> {
        // Chunk being carved and the first free offset in it.
        static CURRENT: Mutex<Option<(Arc<memmap2::MmapRaw>, usize)>> = Mutex::new(None);
        if len >= HUGE_PAGE {
            // A mapping of its own. Huge pages here too: 1.7B Q8_0 without the repack cache,
            // 8 alternating runs, load 0.64 s and decode 20.1 tok/s (medians) on huge pages
            // against 0.81 s and 17.5 tok/s on 4 KiB ones. (An earlier VM of this class had
            // the first touch of huge pages slower; the decode never lost.)
            let (map, start) = huge_map(len)?;
            return Some(Region { map, start, len });
        }
        let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
        let fits = current.as_ref().is_some_and(|(map, used)| used.next_multiple_of(ALIGN) + len <= map.len());
        if !fits {
            let (map, start) = huge_map(CHUNK)?;
            *current = Some((map, start));
        }
        let (map, used) = current.as_mut().expect("a chunk was just made");
        let start = used.next_multiple_of(ALIGN);
        *used = start + len;
        Some(Region { map: map.clone(), start, len })
    }

    /// `len` bytes at `start` of `map` (a repack cache file). Writing them needs a map made
    /// for writing.
    pub(crate) fn in_map(map: Arc<memmap2::MmapRaw>, start: usize, len: usize) -> Region {
        assert!(start.checked_add(len).is_some_and(|end| end <= map.len()), "region past the end of its map");
        Region { map, start, len }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `start..start + len` lies inside the mapping, which `self.map` keeps alive;
        // no one writes it once it is shared for reading.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.start), self.len) }
    }

    /// The region's first byte, for writing: regions of one mapping never overlap, so distinct
    /// regions, or distinct ranges of one, may be written at the same time, as long as nothing
    /// reads those bytes meanwhile.
    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        // SAFETY: `start` lies inside the mapping (checked where the region was made).
        unsafe { self.map.as_mut_ptr().add(self.start) }
    }
}

/// An anonymous mapping of at least `len` bytes, advised for huge pages, and the offset in it
/// of its first huge page boundary (the bytes before it are never touched, so never backed).
fn huge_map(len: usize) -> Option<(Arc<memmap2::MmapRaw>, usize)> {
    let map = memmap2::MmapMut::map_anon(len.checked_add(HUGE_PAGE)?).ok()?;
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage); // fewer TLB misses; optional
    let start = (map.as_ptr() as usize).next_multiple_of(HUGE_PAGE) - map.as_ptr() as usize;
    Some((Arc::new(memmap2::MmapRaw::from(map)), start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_aligned_disjoint_and_zeroed() {
        let a = Region::alloc(1000).unwrap();
        let b = Region::alloc(3000).unwrap();
        let big = Region::alloc(2 * HUGE_PAGE).unwrap();
        for r in [&a, &b, &big] {
            assert_eq!(r.bytes().as_ptr() as usize % ALIGN, 0);
            assert!(r.bytes().iter().all(|&x| x == 0));
        }
        // SAFETY: each region is written once, before it is read.
        unsafe {
            std::ptr::write_bytes(a.as_mut_ptr(), 1, a.len());
            std::ptr::write_bytes(b.as_mut_ptr(), 2, b.len());
        }
        assert!(a.bytes().iter().all(|&x| x == 1) && b.bytes().iter().all(|&x| x == 2));
    }
}
