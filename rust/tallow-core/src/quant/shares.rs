//! Row-group shares of a decode step's products: each worker works through its own contiguous
//! share from the front, and a worker that runs out takes groups from the back of the shares
//! still going.
//!
//! A decode product takes microseconds, and on a shared host one of two threads often finishes
//! its fixed half well before the other (in a 2-thread SmolLM2 decode with fixed halves, the
//! main thread spent 16% of its time waiting for the worker at the ends of products; 5% with
//! these shares). A counter that all threads claim chunks from evens that out but
//! interleaves the threads' reads, so neither streams one run of memory. Here each share is read
//! front to back by its owner at no contention (the owner's claims stay in its own cache line);
//! only the tail of a late share is split, from its far end.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// One share, `lo | hi << 32`: the groups `lo..hi` nobody has taken yet. On its own cache line,
/// so an owner's claims do not bounce another owner's line.
#[repr(align(64))]
#[derive(Default)]
struct Share(AtomicU64);

/// The shares of every (product, worker) pair of one pool run.
#[derive(Default)]
pub(crate) struct Shares {
    /// `[n_products, n_threads]`
    shares: Vec<Share>,
    n_threads: usize,
}

impl Shares {
    /// Splits each product's row groups (`groups`, one count per product) into `n_threads`
    /// contiguous shares. Grows only when a call needs more shares than any before.
    pub(crate) fn reset(&mut self, n_threads: usize, groups: impl Iterator<Item = usize>) {
        self.n_threads = n_threads;
        for (p, g) in groups.enumerate() {
            if self.shares.len() < (p + 1) * n_threads {
                self.shares.resize_with((p + 1) * n_threads, Share::default);
            }
            for t in 0..n_threads {
                let r = crate::threadpool::split_range(g, t, n_threads);
                self.share(p, t).store(pack(r.start, r.end), Ordering::Relaxed);
            }
        }
    }

    fn share(&self, product: usize, thread: usize) -> &AtomicU64 {
        &self.shares[product * self.n_threads + thread].0
    }

    /// The next groups from the front of `thread`'s share of `product`, if any are left: a
    /// quarter of what is left (at least one), so that an owner claims a few times per share
    /// and leaves the others single groups to take at the end.
    pub(crate) fn take_front(&self, product: usize, thread: usize) -> Option<Range<usize>> {
        self.take(product, thread, |lo, hi| {
            let end = lo + ((hi - lo) / 4).max(1);
            (lo..end, pack(end, hi))
        })
    }

    /// The last group left in `thread`'s share of `product`, if any.
    pub(crate) fn take_back(&self, product: usize, thread: usize) -> Option<Range<usize>> {
        self.take(product, thread, |lo, hi| (hi - 1..hi, pack(lo, hi - 1)))
    }

    /// Takes groups with one compare-exchange: `next(lo, hi)` gives them and the share left
    /// after them, for `lo < hi`.
    fn take(
        &self,
        product: usize,
        thread: usize,
        next: impl Fn(usize, usize) -> (Range<usize>, u64),
    ) -> Option<Range<usize>> {
        let share = self.share(product, thread);
        let mut cur = share.load(Ordering::Relaxed);
        loop {
            let (lo, hi) = unpack(cur);
            if lo >= hi {
                return None;
            }
            let (groups, left) = next(lo, hi);
            // Relaxed: the group's rows are published by the pool's end-of-run synchronization.
            match share.compare_exchange_weak(cur, left, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(groups),
                Err(now) => cur = now,
            }
        }
    }
}

fn pack(lo: usize, hi: usize) -> u64 {
    let (lo, hi) = (u32::try_from(lo).expect("row groups fit u32"), u32::try_from(hi).expect("row groups fit u32"));
    lo as u64 | (hi as u64) << 32
}

fn unpack(v: u64) -> (usize, usize) {
    (v as u32 as usize, (v >> 32) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_is_taken_once_whatever_the_race() {
        let pool = crate::threadpool::ThreadPool::new(3);
        let mut shares = Shares::default();
        for (n_products, groups) in [(1, 0), (1, 1), (2, 5), (3, 97)] {
            for round in 0..50 {
                let count = |p: usize| groups + p * 3;
                shares.reset(3, (0..n_products).map(count));
                let seen: Vec<Vec<std::sync::atomic::AtomicU32>> =
                    (0..n_products).map(|p| (0..count(p)).map(|_| Default::default()).collect()).collect();
                pool.run(&|i, n| {
                    // Thread 1 starts late on odd rounds, so the others steal its share.
                    if i == 1 && round % 2 == 1 {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    }
                    for p in 0..n_products {
                        while let Some(gs) = shares.take_front(p, i) {
                            gs.for_each(|g| _ = seen[p][g].fetch_add(1, Ordering::Relaxed));
                        }
                    }
                    for p in 0..n_products {
                        for t in (1..n).map(|k| (i + k) % n) {
                            while let Some(gs) = shares.take_back(p, t) {
                                gs.for_each(|g| _ = seen[p][g].fetch_add(1, Ordering::Relaxed));
                            }
                        }
                    }
                });
                for s in seen.iter().flatten() {
                    assert_eq!(s.load(Ordering::Relaxed), 1);
                }
            }
        }
    }
}
