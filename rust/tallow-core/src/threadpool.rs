//! Persistent worker pool the kernels split their rows over.
//!
//! Workers are created once. `run` publishes a job by bumping a generation counter; workers
//! spin on it briefly (a decode step issues matmuls microseconds apart, and waking a parked
//! thread costs far more), yielding the core now and then to any thread waiting for it, then
//! park. The calling thread works as worker 0, then waits for the others. A panic in a task is
//! caught on whichever thread it happens, the remaining workers finish, and `run` re-raises the
//! first panic on the caller: the pool never deadlocks and stays usable afterwards.

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Spins before a worker parks (each is one `spin_loop` hint: tens of µs in all).
const SPIN_ROUNDS: u32 = 20_000;

type Task = dyn Fn(usize, usize) + Sync;

struct Shared {
    /// Bumped once per `run`; workers run the job when it changes.
    generation: AtomicUsize,
    /// Workers that have not finished the current job.
    pending: AtomicUsize,
    /// The current job, lifetime erased. Written by `run` before bumping `generation`,
    /// read by workers after observing the bump, and not touched again until `pending`
    /// drops to zero, so the borrow it erases is live whenever it is read.
    job: UnsafeCell<Option<*const Task>>,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    shutdown: AtomicBool,
}

// SAFETY: `job` is only written while no worker reads it (see the field's comment); the other
// fields are atomics and a mutex.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// A pool of `n_threads` workers (the calling thread counts as one).
pub struct ThreadPool {
    n_threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serializes `run` calls from different threads sharing the pool.
    run_lock: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool").field("n_threads", &self.n_threads).finish()
    }
}

impl ThreadPool {
    /// Starts `n_threads - 1` workers (at least 1 thread in all).
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            panic: Mutex::new(None),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..n_threads)
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("tallow-worker-{i}"))
                    .spawn(move || worker_loop(&shared, i, n_threads))
                    .expect("spawning a worker thread")
            })
            .collect();
        ThreadPool { n_threads, shared, workers, run_lock: Mutex::new(()) }
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Calls `f(thread_index, n_threads)` once on each worker and returns when all are done.
    /// Work is partitioned by the callee from the two indices. If any call panics, the others
    /// still complete and the first panic is resumed here. Must not be called from inside `f`
    /// on the same pool.
    pub fn run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        let n = self.n_threads;
        if n == 1 {
            f(0, 1);
            return;
        }
        let _guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let sh = &*self.shared;
        // SAFETY: no worker reads `job` now: the previous run ended with pending == 0.
        // The transmute only erases the borrow's lifetime; we wait below until no worker can
        // still use it.
        unsafe {
            let erased = std::mem::transmute::<&(dyn Fn(usize, usize) + Sync), &'static Task>(f);
            *sh.job.get() = Some(erased as *const Task);
        }
        sh.pending.store(n - 1, Ordering::Relaxed);
        sh.generation.fetch_add(1, Ordering::Release);
        for w in &self.workers {
            w.thread().unpark();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0, n)));
        let mut spins = 0u32;
        while sh.pending.load(Ordering::Acquire) != 0 {
            if spins < SPIN_ROUNDS {
                spins += 1;
                relax(spins);
            } else {
                std::thread::yield_now();
            }
        }
        let theirs = sh.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if let Some(p) = theirs {
            resume_unwind(p);
        }
    }
}

/// Elements below which [`ThreadPool::for_rows`] runs on the calling thread alone: a decode
/// step's row-wise steps (a few thousand values) take less time than the workers' hand-off.
const ROWS_MIN_ELEMENTS: usize = 16 * 1024;

impl ThreadPool {
    /// Calls `f(first_row, rows)` on contiguous runs of whole rows of `data` (`row_len` values
    /// each), one run per thread, or once with all of it on the calling thread when `data` holds
    /// fewer than 16 Ki values. For the row-wise steps of a forward pass (norms, RoPE,
    /// activations): each row comes out the same whichever thread computes it, and a prefill's
    /// rows no longer leave the other threads idle.
    pub fn for_rows<T: Send>(&self, data: &mut [T], row_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
        let (len, n_rows) = (data.len(), data.len() / row_len.max(1));
        if self.n_threads == 1 || len < ROWS_MIN_ELEMENTS || n_rows < 2 {
            return f(0, data);
        }
        let base = SyncPtr(data.as_mut_ptr());
        self.run(&|i, n| {
            let rows = split_range(n_rows, i, n);
            if !rows.is_empty() {
                let base = &base;
                // The last run also takes a partial row at the end (element-wise steps pass a
                // `row_len` that need not divide `data`).
                let end = if rows.end == n_rows { len } else { rows.end * row_len };
                // SAFETY: the runs are disjoint and inside `data`, which `run` borrows until
                // every worker is done.
                let part = unsafe {
                    std::slice::from_raw_parts_mut(base.0.add(rows.start * row_len), end - rows.start * row_len)
                };
                f(rows.start, part);
            }
        });
    }
}

/// A raw pointer that workers read or write disjoint parts of.
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);
// SAFETY: every user touches only indices no other worker touches in the same `run`.
unsafe impl<T> Sync for SyncPtr<T> {}

/// One round of a spin-wait: a `spin_loop` hint, and every [`YIELD_EVERY`] rounds a
/// `yield_now`, which returns at once unless another thread waits for this core. On a machine
/// with as many cores as compute threads, that other thread is typically the one that takes
/// the tokens a step produced (an asyncio loop, say): it gets the core while this one waits,
/// not in the middle of the next product, where it would hold back the whole pool.
#[inline]
fn relax(spins: u32) {
    if spins.is_multiple_of(YIELD_EVERY) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// Spin rounds between two yields in a spin-wait (about 1.6 µs on Zen 4, 25 ns a `spin_loop`).
const YIELD_EVERY: u32 = 64;

fn worker_loop(sh: &Shared, i: usize, n: usize) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0u32;
        let generation = loop {
            let g = sh.generation.load(Ordering::Acquire);
            if g != seen {
                break g;
            }
            if spins < SPIN_ROUNDS {
                spins += 1;
                relax(spins);
            } else {
                // unpark() before park() leaves a token, so a bump between the load and here
                // is not lost.
                std::thread::park();
            }
        };
        seen = generation;
        if sh.shutdown.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: the generation bump (Acquire above) published `job`, and `run` keeps it alive
        // until this worker decrements `pending`.
        let job = unsafe { (*sh.job.get()).expect("job set before generation bump") };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(i, n) })) {
            let mut slot = sh.panic.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(p);
        }
        sh.pending.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::Release);
        for w in self.workers.drain(..) {
            w.thread().unpark();
            let _ = w.join();
        }
    }
}

/// The contiguous sub-range of `0..len` that worker `i` of `n` owns.
pub fn split_range(len: usize, i: usize, n: usize) -> std::ops::Range<usize> {
    let per = len.div_ceil(n);
    let start = (i * per).min(len);
    start..(start + per).min(len)
}
