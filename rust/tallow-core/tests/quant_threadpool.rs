//! The persistent pool: every index runs exactly once per `run`, over many runs; a panicking
//! task is reported to the caller without hanging the pool, which stays usable.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tallow_core::threadpool::{split_range, ThreadPool};

#[test]
fn every_index_runs_once_per_run_many_times() {
    for n in [1, 2, 3, 4] {
        let pool = ThreadPool::new(n);
        assert_eq!(pool.n_threads(), n);
        let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..500 {
            pool.run(&|i, nn| {
                assert_eq!(nn, n);
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        for c in &counts {
            assert_eq!(c.load(Ordering::Relaxed), 500);
        }
    }
}

#[test]
fn results_written_by_workers_are_visible_after_run() {
    let pool = ThreadPool::new(3);
    let mut out = vec![0usize; 1000];
    for round in 1..50 {
        let slots: Vec<AtomicUsize> = (0..out.len()).map(|_| AtomicUsize::new(0)).collect();
        pool.run(&|i, n| {
            for j in split_range(slots.len(), i, n) {
                slots[j].store(j * round, Ordering::Relaxed);
            }
        });
        for (o, s) in out.iter_mut().zip(&slots) {
            *o = s.load(Ordering::Relaxed);
        }
        assert!(out.iter().enumerate().all(|(j, &v)| v == j * round));
    }
}

#[test]
fn a_panicking_task_is_reported_and_the_pool_survives() {
    let pool = ThreadPool::new(3);
    for bad in [0, 1, 2] {
        let done = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|i, _| {
                if i == bad {
                    panic!("task {i} failed");
                }
                done.fetch_add(1, Ordering::Relaxed);
            })
        }));
        let msg = r.expect_err("the panic reaches the caller");
        let text = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert_eq!(text, format!("task {bad} failed"));
        assert_eq!(done.load(Ordering::Relaxed), 2, "the other tasks still ran");
        // Still usable afterwards.
        let seen = AtomicUsize::new(0);
        pool.run(&|_, _| {
            seen.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(seen.load(Ordering::Relaxed), 3);
    }
}

#[test]
fn runs_from_several_threads_are_serialized_safely() {
    let pool = ThreadPool::new(2);
    let total = Mutex::new(0usize);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                for _ in 0..200 {
                    let c = AtomicUsize::new(0);
                    pool.run(&|_, _| {
                        c.fetch_add(1, Ordering::Relaxed);
                    });
                    assert_eq!(c.load(Ordering::Relaxed), 2);
                    *total.lock().unwrap() += 1;
                }
            });
        }
    });
    assert_eq!(*total.lock().unwrap(), 600);
}

#[test]
fn parked_workers_wake_up() {
    let pool = ThreadPool::new(2);
    std::thread::sleep(std::time::Duration::from_millis(50)); // long enough to park
    let c = AtomicUsize::new(0);
    pool.run(&|_, _| {
        c.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(c.load(Ordering::Relaxed), 2);
}

#[test]
fn split_range_covers_everything_once() {
    for len in 0..40 {
        for n in 1..6 {
            let mut seen = vec![0; len];
            for i in 0..n {
                for j in split_range(len, i, n) {
                    seen[j] += 1;
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "len {len} n {n}");
        }
    }
}
