//! `Model::forward_batch` (continuous batching) against `Model::forward`: every sequence of a
//! batch must get the same logits, bit for bit, as when it runs alone, whatever shares the
//! batch with it (other sequences' prefills and decode steps, in any order). llama.cpp's
//! summation orders depend on a product's token count (Q4_K GEMM in groups of 4 then GEMV,
//! Q6_K tiled from 8 tokens, attention's GEMM or vec_dot), so each sequence's tokens must keep
//! the orders of its own product; these models have all of those (smollm2: Q4_1, Q8_0; gemma3:
//! Q4_K, Q6_K, Q5_0, Q8_0, sliding-window layers).

use std::path::PathBuf;
use std::sync::Arc;
use tallow_core::gguf::GgufFile;
use tallow_core::kv_cache::KvCache;
use tallow_core::model::{load_model, Model, SeqBatch};
use tallow_core::threadpool::ThreadPool;
use tallow_core::Error;

fn open(file: &str) -> Arc<dyn Model> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/.models").join(file);
    load_model(Arc::new(GgufFile::open(path).expect("open model"))).expect("load model")
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::MIN), |a, (i, &x)| if x > a.1 { (i, x) } else { a }).0 as u32
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A prompt of `n` tokens, different for every `seed`.
fn prompt(seed: u32, n: usize, n_vocab: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (seed * 7919 + i * 104_729 + 17) % n_vocab as u32).collect()
}

/// One sequence: what it has run, its cache, and the logits of every batch it took part in.
struct Seq {
    prompt: Vec<u32>,
    /// Tokens run so far: the prompt, then the greedy tokens.
    run: Vec<u32>,
    cache: KvCache,
    logits: Vec<Vec<f32>>,
}

/// Runs `schedule` (per step: the sequences in it, in batch order) with `forward_batch`: a
/// sequence's first step runs its whole prompt, each later one the greedy token of its last
/// logits. Then replays every sequence alone with `forward`, in the same chunks, and compares.
fn check(model: &dyn Model, prompts: &[usize], schedule: &[&[usize]]) {
    let cfg = model.config();
    let pool = ThreadPool::new(2);
    let mut scratch = model.new_scratch(64).unwrap();
    let mut seqs: Vec<Seq> = prompts
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let p = prompt(i as u32 + 1, n, cfg.n_vocab);
            Seq { prompt: p, run: Vec::new(), cache: model.new_cache(256).unwrap(), logits: Vec::new() }
        })
        .collect();
    for step in schedule {
        // The tokens each scheduled sequence runs in this step.
        let chunks: Vec<Vec<u32>> = step
            .iter()
            .map(|&i| {
                let s = &seqs[i];
                match s.logits.last() {
                    None => s.prompt.clone(),
                    Some(l) => vec![argmax(l)],
                }
            })
            .collect();
        // Disjoint &mut caches of the scheduled sequences, in batch order.
        let mut caches: Vec<Option<&mut KvCache>> = seqs.iter_mut().map(|s| Some(&mut s.cache)).collect();
        let mut batch: Vec<SeqBatch<'_>> = step
            .iter()
            .zip(&chunks)
            .map(|(&i, tokens)| SeqBatch { tokens, cache: caches[i].take().expect("once per step"), logits: true })
            .collect();
        let out = model.forward_batch(&mut batch, &mut scratch, &pool).unwrap().to_vec();
        drop(batch);
        for ((&i, tokens), logits) in step.iter().zip(&chunks).zip(out.chunks_exact(cfg.n_vocab)) {
            seqs[i].run.extend_from_slice(tokens);
            seqs[i].logits.push(logits.to_vec());
        }
    }
    let mut alone = model.new_scratch(64).unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let mut cache = model.new_cache(256).unwrap();
        assert_eq!(s.cache.len(), s.run.len());
        let steps = std::iter::once(&s.run[..s.prompt.len()]).chain(s.run[s.prompt.len()..].chunks(1));
        for (k, tokens) in steps.enumerate() {
            let want = model.forward(tokens, &mut cache, &mut alone, &pool, false).unwrap();
            assert!(
                bits(want) == bits(&s.logits[k]),
                "sequence {i} (prompt {} tokens), step {k}: batched logits differ from alone (max diff {})",
                s.prompt.len(),
                want.iter().zip(&s.logits[k]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
            );
        }
    }
}

/// Prompts of 13 (Q4_K: 3 GEMM groups and a GEMV token; Q6_K tiled), 6, 9 and 1 tokens;
/// prefills joining while others decode, in changing orders.
const PROMPTS: [usize; 4] = [13, 6, 9, 1];
const SCHEDULE: [&[usize]; 7] =
    [&[0, 1], &[0, 2, 1], &[3, 2, 0, 1], &[1, 0, 3, 2], &[2, 3], &[3, 1, 2, 0], &[0, 1, 2, 3]];

#[test]
fn smollm2_batched_sequences_equal_alone() {
    check(&*open("smollm2-135m-q4_1.gguf"), &PROMPTS, &SCHEDULE);
}

#[test]
fn gemma3_batched_sequences_equal_alone() {
    check(&*open("gemma-3-270m-q4_k_m.gguf"), &PROMPTS, &SCHEDULE);
}

#[test]
fn batch_errors_change_nothing() {
    let model = open("smollm2-135m-q4_1.gguf");
    let cfg = model.config();
    let pool = ThreadPool::new(2);
    let mut scratch = model.new_scratch(8).unwrap();
    let (mut a, mut b) = (model.new_cache(16).unwrap(), model.new_cache(16).unwrap());
    let (ok, bad) = (vec![1u32, 2, 3], vec![1u32, cfg.n_vocab as u32]);
    let cases: [(&[u32], &[u32]); 3] = [(&ok, &bad), (&ok, &[]), (&[5; 6], &[6; 3])];
    for (ta, tb) in cases {
        let mut batch = [
            SeqBatch { tokens: ta, cache: &mut a, logits: true },
            SeqBatch { tokens: tb, cache: &mut b, logits: true },
        ];
        let err = model.forward_batch(&mut batch, &mut scratch, &pool).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
        assert_eq!((a.len(), b.len()), (0, 0));
    }
    // A sequence whose cache is full fails the batch before anything runs.
    let mut full = model.new_cache(2).unwrap();
    let mut batch = [
        SeqBatch { tokens: &ok, cache: &mut a, logits: true },
        SeqBatch { tokens: &ok, cache: &mut full, logits: false },
    ];
    assert!(matches!(model.forward_batch(&mut batch, &mut scratch, &pool), Err(Error::ContextOverflow(_))));
    assert_eq!((a.len(), full.len()), (0, 0));
    // Sequences without `logits` return none.
    let mut batch = [SeqBatch { tokens: &ok, cache: &mut a, logits: false }];
    assert!(model.forward_batch(&mut batch, &mut scratch, &pool).unwrap().is_empty());
    assert_eq!(a.len(), 3);
}
