//! Worker pool the kernels split their rows over.
//!
//! First cut: scoped threads per call. To be replaced by a persistent spin-then-park pool
//! (same interface) so a decode step does not spawn threads.

/// A pool of `n_threads` workers (the calling thread counts as one).
#[derive(Debug)]
pub struct ThreadPool {
    n_threads: usize,
}

impl ThreadPool {
    pub fn new(n_threads: usize) -> ThreadPool {
        ThreadPool {
            n_threads: n_threads.max(1),
        }
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Calls `f(thread_index, n_threads)` once on each worker and returns when all are done.
    /// Work is partitioned by the callee from the two indices.
    pub fn run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        let n = self.n_threads;
        if n == 1 {
            f(0, 1);
            return;
        }
        std::thread::scope(|s| {
            for i in 1..n {
                s.spawn(move || f(i, n));
            }
            f(0, n);
        });
    }
}

/// The contiguous sub-range of `0..len` that worker `i` of `n` owns.
pub fn split_range(len: usize, i: usize, n: usize) -> std::ops::Range<usize> {
    let per = len.div_ceil(n);
    let start = (i * per).min(len);
    start..(start + per).min(len)
}
