//! Decode attention on SmolLM2-135M's shapes (30 layers, 9 query heads over 3 KV heads of 64),
//! 2 threads, with the KV cache evicted from the CPU caches before each layer, as the weight
//! stream of a real decode step evicts it.
//!
//! `cargo run --release -p tallow-core --example attention_speed`
//! Prints µs per token (all layers) for each context length: median and fastest of `REPS`
//! (default 7). `KEYS=64,512` picks the context lengths; `EVICT_MB=0` keeps the caches warm
//! (default: 48 MiB, more than the last-level cache, are read between layers). `LAYERS`,
//! `HEADS`, `KV_HEADS` and `HEAD_DIM` set other shapes (Gemma 3 270M: 18, 4, 1, 256), `THREADS`
//! the pool's size.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;
use tallow_core::kv_cache::KvCache;
use tallow_core::model::{attention, scratch_per_thread, AttnParams};
use tallow_core::threadpool::{split_range, ThreadPool};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let (n_layer, n_ctx) = (env_or("LAYERS", 30usize), 2048);
    let (n_head, n_head_kv, hd) = (env_or("HEADS", 9usize), env_or("KV_HEADS", 3usize), env_or("HEAD_DIM", 64usize));
    let keys: Vec<usize> = std::env::var("KEYS")
        .map(|v| v.split(',').filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_else(|_| vec![1, 16, 64, 128, 512, 2048]);
    let reps = env_or("REPS", 7usize).max(1);
    let evict = vec![1u64; env_or("EVICT_MB", 48usize) << 17];

    let pool = ThreadPool::new(env_or("THREADS", 2usize));
    let kv_dim = n_head_kv * hd;
    let mut cache = KvCache::new(n_layer, n_ctx, n_head_kv, hd).expect("cache");
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    for pos in 0..n_ctx {
        let k: Vec<f32> = (0..kv_dim).map(|_| rnd()).collect();
        let v: Vec<f32> = (0..kv_dim).map(|_| rnd()).collect();
        for il in 0..n_layer {
            cache.store(il, pos, &k, &v);
        }
    }
    let sums: Vec<AtomicU64> = (0..pool.n_threads()).map(|_| AtomicU64::new(0)).collect();
    let mut scores = vec![0.0f32; pool.n_threads() * scratch_per_thread(n_ctx, hd)];
    let mut out = vec![0.0f32; n_head * hd];
    for n_kv in keys.into_iter().filter(|&n| (1..=n_ctx).contains(&n)) {
        let p = AttnParams {
            n_head,
            n_head_kv,
            head_dim: hd,
            pos0: n_kv - 1,
            n_tokens: 1,
            window: None,
            scale: (hd as f32).sqrt().recip(),
        };
        let mut per_token = Vec::new();
        for _ in 0..reps {
            let mut t = 0.0;
            for il in 0..n_layer {
                // Both threads evict: a worker left idle for milliseconds would park, and its
                // wake-up would be timed too.
                pool.run(&|i, n| {
                    let s = evict[split_range(evict.len(), i, n)].iter().step_by(8).sum::<u64>();
                    sums[i].fetch_add(s, Relaxed);
                });
                let mut q: Vec<f32> = (0..n_head * hd).map(|_| rnd()).collect();
                let start = Instant::now();
                attention(&p, &mut q, cache.layer(il), &mut out, &mut scores, &pool);
                t += start.elapsed().as_secs_f64();
            }
            per_token.push(t * 1e6);
        }
        per_token.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{n_kv:>5} keys: {:>7.1} µs per token ({n_layer} layers), fastest {:>7.1}",
            per_token[per_token.len() / 2],
            per_token[0]
        );
    }
    std::hint::black_box(&sums);
}
