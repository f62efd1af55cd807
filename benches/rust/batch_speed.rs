//! Decode throughput of `Model::forward_batch` against the number of sequences per step: the
//! Rust engine alone, no Python, no scheduler (benches/concurrency.py measures the whole path).
//!
//! `cargo run --release -p tallow-core --example batch_speed -- MODEL.gguf`
//! Each sequence first runs a 16-token prompt alone, then every step decodes one token of each
//! (greedy, so attention reads a growing cache). Prints tok/s for each batch size: the median
//! of `REPS` (default 3) runs of `STEPS` (default 64) steps. `SEQS=1,8` picks the batch sizes,
//! `THREADS` the pool's threads (default 2).

use std::sync::Arc;
use std::time::Instant;
use tallow_core::gguf::GgufFile;
use tallow_core::model::{load_model, SeqBatch};
use tallow_core::threadpool::ThreadPool;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::MIN), |a, (i, &x)| if x > a.1 { (i, x) } else { a }).0 as u32
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: batch_speed MODEL.gguf");
    let seqs: Vec<usize> = std::env::var("SEQS")
        .map(|v| v.split(',').filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_else(|_| vec![1, 2, 4, 8, 16, 32]);
    let (reps, steps, prompt_len) = (env_or("REPS", 3usize).max(1), env_or("STEPS", 64usize), 16);
    let pool = ThreadPool::new(env_or("THREADS", 2usize));
    let model = load_model(Arc::new(GgufFile::open(&path).expect("open model"))).expect("load model");
    let n_vocab = model.config().n_vocab as u32;
    let max_seqs = seqs.iter().copied().max().unwrap_or(1);
    let mut scratch = model.new_scratch(max_seqs.max(prompt_len)).expect("scratch");
    println!("{path}: {} threads, {steps} decode steps after a {prompt_len}-token prompt", pool.n_threads());
    println!("{:>9} {:>9} {:>12}", "sequences", "tok/s", "ms per step");
    for &n in &seqs {
        let mut rates = Vec::new();
        for rep in 0..reps {
            let mut caches: Vec<_> = (0..n).map(|_| model.new_cache(prompt_len + steps + 1).expect("cache")).collect();
            let mut next: Vec<u32> = Vec::new();
            for (i, cache) in caches.iter_mut().enumerate() {
                let seed = (rep * max_seqs + i) as u32 + 1;
                let prompt: Vec<u32> =
                    (0..prompt_len as u32).map(|t| (seed * 7919 + t * 104_729 + 17) % n_vocab).collect();
                next.push(argmax(model.forward(&prompt, cache, &mut scratch, &pool, false).expect("prompt")));
            }
            let start = Instant::now();
            for _ in 0..steps {
                let tokens: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
                let mut batch: Vec<SeqBatch<'_>> = caches
                    .iter_mut()
                    .zip(&tokens)
                    .map(|(cache, t)| SeqBatch { tokens: t, cache, logits: true })
                    .collect();
                let out = model.forward_batch(&mut batch, &mut scratch, &pool).expect("step");
                next = out.chunks_exact(n_vocab as usize).map(argmax).collect();
            }
            rates.push((n * steps) as f64 / start.elapsed().as_secs_f64());
        }
        rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let rate = rates[rates.len() / 2];
        println!("{n:>9} {rate:>9.0} {:>12.2}", n as f64 * 1e3 / rate);
    }
}
