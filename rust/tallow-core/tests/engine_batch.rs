//! The engine's continuous batching: requests submitted together from several threads run as
//! one batch per step, and each produces exactly the tokens it produces alone (same prompt,
//! seed and parameters), whatever else runs and in whatever order they arrive. Cancelled
//! requests stop and leave the engine ready.

use std::path::PathBuf;
use std::sync::mpsc;
use tallow_core::engine::{CancelToken, Engine, EngineConfig, Event, FinishReason, GenerateParams, Job, Prompt};
use tallow_core::sampler::SamplingParams;
use tallow_core::{load, LoadOptions, LoadedModel};

fn model(file: &str) -> LoadedModel {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/.models").join(file);
    let options =
        LoadOptions { n_threads: Some(2), n_ctx: Some(256), max_sequences: Some(4), ..LoadOptions::default() };
    load(&path, &options).expect("load model")
}

/// Request `i`: its own prompt, greedy or seeded sampling, 12 to 24 tokens.
fn request(m: &LoadedModel, i: usize) -> (Vec<u32>, GenerateParams) {
    let text = ["The capital of France is", "Once upon a time", "1, 2, 3,", "def fib(n):", "Hello"][i % 5];
    let text = format!("{text}{}", " and".repeat(i / 5));
    let prompt = m.engine.prepare_prompt(&Prompt::Text { text, add_bos: true, special: false }).unwrap();
    let sampling = if i.is_multiple_of(2) {
        SamplingParams::greedy()
    } else {
        SamplingParams { seed: Some(1000 + i as u64), temperature: 0.9, ..SamplingParams::default() }
    };
    (
        prompt,
        GenerateParams { max_tokens: 12 + 3 * (i % 5), sampling, stop: Vec::new(), ignore_eos: true, logprobs: None },
    )
}

/// Submits a request; its events arrive on the returned receiver.
fn submit(m: &LoadedModel, prompt: Vec<u32>, params: GenerateParams, cancel: CancelToken) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel();
    m.engine.submit(Job { prompt, params, session: None, cancel, sink: Box::new(tx), deadline: None }).unwrap();
    rx
}

/// The tokens of a request and how it finished.
fn collect(rx: mpsc::Receiver<Event>) -> (Vec<u32>, FinishReason) {
    let mut ids = Vec::new();
    for ev in rx {
        match ev {
            Event::Token { id, .. } => ids.push(id),
            Event::Text(_) => {}
            Event::Done { finish_reason, .. } => return (ids, finish_reason),
            Event::Error(e) => panic!("request failed: {e}"),
        }
    }
    panic!("the engine dropped a request without Done")
}

fn concurrent_equals_alone(file: &str) {
    let m = model(file);
    let n = 12; // more than max_sequences (4): some wait for a slot
    let alone: Vec<Vec<u32>> = (0..n)
        .map(|i| {
            let (prompt, params) = request(&m, i);
            collect(submit(&m, prompt, params, CancelToken::new())).0
        })
        .collect();
    // All at once, from 4 threads, in a shuffled order.
    let receivers: Vec<(usize, mpsc::Receiver<Event>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let m = &m;
                scope.spawn(move || {
                    (0..n)
                        .filter(|i| (i * 7 + 3) % 4 == t)
                        .map(|i| {
                            let (prompt, params) = request(m, i);
                            (i, submit(m, prompt, params, CancelToken::new()))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    for (i, rx) in receivers {
        let (ids, reason) = collect(rx);
        assert_eq!(reason, FinishReason::Length, "{file}: request {i}");
        assert_eq!(ids, alone[i], "{file}: request {i} gave other tokens under load than alone");
    }
    let stats = m.engine.stats();
    let generated: usize = alone.iter().map(Vec::len).sum();
    assert_eq!((stats.active, stats.queued, stats.kv_slots_in_use, stats.kv_slots), (0, 0, 0, 4), "{stats:?}");
    assert_eq!((stats.finished, stats.cancelled, stats.failed), (2 * n as u64, 0, 0), "{stats:?}");
    assert_eq!(stats.generated_tokens, 2 * generated as u64, "{stats:?}");
    assert!(stats.prompt_tokens > 0 && stats.busy_seconds > 0.0 && stats.generated_per_second() > 0.0);
}

#[test]
fn smollm2_concurrent_requests_equal_alone() {
    concurrent_equals_alone("smollm2-135m-q4_1.gguf");
}

#[test]
fn gemma3_concurrent_requests_equal_alone() {
    concurrent_equals_alone("gemma-3-270m-q4_k_m.gguf");
}

#[test]
fn cancelled_requests_stop_and_the_rest_finish() {
    let m = model("smollm2-135m-q4_1.gguf");
    let (prompt, mut params) = request(&m, 0);
    params.max_tokens = 200;
    // Cancelled while waiting in the queue, and while running.
    let early = CancelToken::new();
    early.cancel();
    let running = CancelToken::new();
    let a = submit(&m, prompt.clone(), params.clone(), running.clone());
    let b = submit(&m, prompt.clone(), params.clone(), early);
    let c = submit(&m, prompt.clone(), GenerateParams { max_tokens: 5, ..params.clone() }, CancelToken::new());
    let mut seen = 0;
    let mut reason = None;
    for ev in a {
        match ev {
            Event::Token { .. } => {
                seen += 1;
                if seen == 3 {
                    running.cancel();
                }
            }
            Event::Done { finish_reason, .. } => {
                reason = Some(finish_reason);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(reason, Some(FinishReason::Cancelled));
    assert!(seen < 200, "stopped within a step of the cancel: {seen} tokens");
    assert_eq!(collect(b), (vec![], FinishReason::Cancelled));
    assert_eq!(collect(c).0.len(), 5);
    // A dropped receiver cancels its request; the engine then serves the next one.
    drop(submit(&m, prompt.clone(), params.clone(), CancelToken::new()));
    let (ids, reason) = collect(submit(&m, prompt, GenerateParams { max_tokens: 4, ..params }, CancelToken::new()));
    assert_eq!((ids.len(), reason), (4, FinishReason::Length));
    // Nothing left running or holding a cache.
    let stats = m.engine.stats();
    assert_eq!((stats.active, stats.queued, stats.kv_slots_in_use), (0, 0, 0), "{stats:?}");
    assert_eq!((stats.finished, stats.cancelled, stats.failed), (2, 3, 0), "{stats:?}");
}

#[test]
fn a_full_engine_refuses_or_waits_for_room() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/.models/smollm2-135m-q4_1.gguf");
    let options = LoadOptions {
        n_threads: Some(2),
        n_ctx: Some(256),
        max_sequences: Some(1),
        max_queue: Some(1),
        ..LoadOptions::default()
    };
    let m = load(&path, &options).expect("load model");
    let (prompt, mut params) = request(&m, 0);
    params.max_tokens = 200;
    let job = |cancel: CancelToken, sink: mpsc::Sender<Event>| Job {
        prompt: prompt.clone(),
        params: params.clone(),
        session: None,
        cancel,
        sink: Box::new(sink),
        deadline: None,
    };
    // One running, one waiting: the engine is full.
    let (running, waiting) = (CancelToken::new(), CancelToken::new());
    let (tx_a, rx_a) = mpsc::channel();
    m.engine.submit(job(running.clone(), tx_a)).unwrap();
    assert!(matches!(rx_a.recv().unwrap(), Event::Token { .. }), "the first request runs");
    let (tx_b, rx_b) = mpsc::channel();
    m.engine.submit(job(waiting.clone(), tx_b)).unwrap();
    let (tx, _rx) = mpsc::channel();
    assert!(matches!(m.engine.submit(job(CancelToken::new(), tx.clone())), Err(tallow_core::Error::Overloaded(_))));
    let t0 = std::time::Instant::now();
    let short = Some(std::time::Duration::from_millis(100));
    assert!(matches!(m.engine.submit_wait(job(CancelToken::new(), tx), short), Err(tallow_core::Error::Overloaded(_))));
    assert!(t0.elapsed() >= std::time::Duration::from_millis(100), "waited for room until the timeout");
    let stats = m.engine.stats();
    assert_eq!((stats.active, stats.queued), (1, 1), "{stats:?}");
    // Room appears when the running request ends and the waiting one starts: a request that
    // waits gets in.
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let (tx, rx) = mpsc::channel();
            let mut quick = job(CancelToken::new(), tx);
            quick.params.max_tokens = 3;
            m.engine.submit_wait(quick, Some(std::time::Duration::from_secs(60))).map(|()| collect(rx))
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        running.cancel();
        waiting.cancel();
        let (ids, reason) = waiter.join().unwrap().expect("got in once there was room");
        assert_eq!((ids.len(), reason), (3, FinishReason::Length));
    });
    assert_eq!(collect(rx_a).1, FinishReason::Cancelled);
    assert_eq!(collect(rx_b).1, FinishReason::Cancelled);
    let stats = m.engine.stats();
    assert_eq!((stats.active, stats.queued, stats.finished, stats.cancelled), (0, 0, 1, 2), "{stats:?}");
}

/// An engine on `m`'s model with its own chunk size and slots (a fresh one has no cached
/// prefixes).
fn engine(m: &LoadedModel, n_batch: usize) -> Engine {
    let config = EngineConfig { n_threads: 2, n_ctx: 256, n_batch, max_sequences: 4, max_queue: 64 };
    Engine::new(m.engine.model().clone(), m.engine.tokenizer().clone(), config).unwrap()
}

fn run_on(e: &Engine, prompt: &[u32], max_tokens: usize) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel();
    let params = GenerateParams {
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos: true,
        logprobs: None,
    };
    let job = Job {
        prompt: prompt.to_vec(),
        params,
        session: None,
        cancel: CancelToken::new(),
        sink: Box::new(tx),
        deadline: None,
    };
    e.submit(job).unwrap();
    rx
}

/// Prompts that share prefixes of many lengths: a system prompt with different questions, the
/// same prompt again, and extensions of it by 1 to 9 tokens (every alignment of Q4_K's groups
/// of 4 and both sides of Q6_K's 8-token threshold).
fn shared_prefix_prompts(m: &LoadedModel) -> Vec<Vec<u32>> {
    let enc =
        |t: &str| m.engine.prepare_prompt(&Prompt::Text { text: t.into(), add_bos: true, special: false }).unwrap();
    let system = "You are a helpful assistant. Answer briefly and precisely, in plain English. Question:";
    let mut prompts: Vec<Vec<u32>> = [" What is the capital of France?", " Name three colours.", " What is 2 + 2?"]
        .iter()
        .map(|q| enc(&format!("{system}{q}")))
        .collect();
    prompts.push(prompts[0].clone());
    let base = enc(system);
    let extra = enc(" one two three four five six seven eight nine ten");
    for k in 1..=9 {
        prompts.push([&base[..], &extra[1..1 + k]].concat());
    }
    prompts
}

/// Reusing another request's cached prefix, finished or still running, gives exactly the
/// tokens the request gives on a fresh engine, and does reuse.
fn prefix_reuse_is_exact(file: &str) {
    let m = model(file);
    for n_batch in [512, 8] {
        let prompts = shared_prefix_prompts(&m);
        let fresh: Vec<Vec<u32>> = prompts.iter().map(|p| collect(run_on(&engine(&m, n_batch), p, 6)).0).collect();
        // One after another: each can start from the caches the earlier ones left.
        let e = engine(&m, n_batch);
        for (p, want) in prompts.iter().zip(&fresh) {
            assert_eq!(
                &collect(run_on(&e, p, 6)).0,
                want,
                "{file}, n_batch {n_batch}, after others, {} tokens",
                p.len()
            );
        }
        let reused = e.stats().cached_prompt_tokens;
        assert!(reused as usize > prompts.len() * 8, "{file}: only {reused} prompt tokens reused");
        // While a long request with the system prompt runs: the others copy its prefix.
        let e = engine(&m, n_batch);
        let long = run_on(&e, &prompts[1], 200);
        let first = long.recv().unwrap();
        assert!(matches!(first, Event::Token { .. }));
        for (p, want) in prompts.iter().zip(&fresh).skip(2) {
            assert_eq!(&collect(run_on(&e, p, 6)).0, want, "{file}, n_batch {n_batch}, beside a running one");
        }
        assert!(e.stats().cached_prompt_tokens > 0, "{file}: nothing copied from the running request");
        drop(long);
    }
}

#[test]
fn smollm2_prefix_reuse_is_exact() {
    prefix_reuse_is_exact("smollm2-135m-q4_1.gguf");
}

#[test]
fn gemma3_prefix_reuse_is_exact() {
    prefix_reuse_is_exact("gemma-3-270m-q4_k_m.gguf");
}

/// Sends a request's events, tagged with its index, into one channel shared by several
/// requests: the channel then holds them in the order the scheduler sent them.
struct Tagged(usize, mpsc::Sender<(usize, Event)>);

impl tallow_core::engine::EventSink for Tagged {
    fn send(&mut self, event: Event) -> bool {
        self.1.send((self.0, event)).is_ok()
    }
}

/// A greedy request with logprobs, its events into `tx` tagged `tag`.
fn job_with_logprobs(prompt: &[u32], max_tokens: usize, tag: usize, tx: &mpsc::Sender<(usize, Event)>) -> Job {
    let params = GenerateParams {
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos: true,
        logprobs: Some(0),
    };
    let (cancel, sink) = (CancelToken::new(), Box::new(Tagged(tag, tx.clone())));
    Job { prompt: prompt.to_vec(), params, session: None, cancel, sink, deadline: None }
}

/// Each token of a request with the bits of its log-probability.
fn token_bits(events: impl Iterator<Item = Event>) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for ev in events {
        match ev {
            Event::Token { id, logprobs, .. } => out.push((id, logprobs.expect("asked for").logprob.to_bits())),
            Event::Done { .. } => break,
            Event::Error(e) => panic!("request failed: {e}"),
            Event::Text(_) => {}
        }
    }
    out
}

/// A prompt that arrives while another request decodes runs in pieces over several steps
/// (`engine/piece.rs`), and gives the tokens and log-probabilities, bit for bit, that it gives
/// alone. (A last-bit change in a hidden state rarely survives the next product's int8
/// rounding, so this is a coarse check of the bits; `piece.rs`'s tests check that every token
/// keeps its summation orders, and tests/model_batch.rs that equal orders give equal bits.)
fn prompt_pieces_beside_decodes_equal_alone(file: &str) {
    let m = model(file);
    let enc =
        |t: &str| m.engine.prepare_prompt(&Prompt::Text { text: t.into(), add_bos: true, special: false }).unwrap();
    // 57 tokens, in pieces of about 8 beside one decode (not 7 of 8 and one of 1, which would
    // take the one-token path; with Q6_K weights none shorter than 8).
    let long = enc(&"The quick brown fox jumps over the lazy dog. ".repeat(8))[..57].to_vec();
    let (tx, rx) = mpsc::channel();
    let e = engine(&m, 512);
    e.submit(job_with_logprobs(&long, 8, 0, &tx)).unwrap();
    let alone = token_bits(rx.iter().map(|(_, ev)| ev));

    let e = engine(&m, 512);
    e.submit(job_with_logprobs(&enc("Once upon a time"), 60, 1, &tx)).unwrap();
    // Once the first request decodes, the long prompt arrives.
    let mut events = rx.iter();
    assert!(matches!(events.next(), Some((1, Event::Token { .. }))));
    e.submit(job_with_logprobs(&long, 8, 0, &tx)).unwrap();
    let (mut beside, mut decoded_before_first) = (Vec::new(), 0);
    for (tag, ev) in events {
        match (tag, &ev) {
            (1, Event::Token { .. }) if beside.is_empty() => decoded_before_first += 1,
            (0, Event::Token { .. } | Event::Done { .. }) => {
                let done = matches!(ev, Event::Done { .. });
                beside.push(ev);
                if done {
                    break;
                }
            }
            _ => {}
        }
    }
    assert_eq!(token_bits(beside.into_iter()), alone, "{file}: other bits beside a decoding request");
    // Whole, the prompt would run in one step; in pieces of at least 8 tokens (a sixth of it
    // or less), the other request decodes a token beside each piece but the last.
    assert!(decoded_before_first >= 5, "{file}: {decoded_before_first} tokens decoded while the prompt ran");
}

#[test]
fn smollm2_prompt_pieces_beside_decodes_equal_alone() {
    prompt_pieces_beside_decodes_equal_alone("smollm2-135m-q4_1.gguf");
}

#[test]
fn gemma3_prompt_pieces_beside_decodes_equal_alone() {
    prompt_pieces_beside_decodes_equal_alone("gemma-3-270m-q4_k_m.gguf");
}
