//! A warm decode step allocates nothing on the heap, counted with a global allocator.
//!
//! The counter is process-wide, so it sees the thread pool's workers (they run the matmuls and
//! the attention) and the engine's scheduler thread as well as the calling thread. One test in
//! this binary, so no other test allocates while it measures.
//!
//! What one step is, as `engine::Worker::run` does it per generated token:
//! - model: `Model::forward` of the one new token (all layers, the output head), the copy of
//!   its logits, the token appended to the history;
//! - sampler: `Sampler::sample` over the logits and the history (greedy, and the default chain
//!   with penalties, top-k, top-p, min-p, temperature and the seeded draw);
//! - text: `Tokenizer::is_eog` and the incremental detokenizer (`StreamDecoder::push_into`).
//!
//! [`engine_steps`] then runs the real loop in `Engine` and checks that the one allocation left
//! per token is the `String` of the `Event::Token` handed to the caller (none when the token
//! completes no text). Delivering the event (a channel, Python) is the sink's business and is
//! outside the count here.
//!
//! To find an allocation that makes this fail, run with `TALLOW_ALLOC_TRACE=1`: the backtrace of
//! every counted allocation is printed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use tallow_core::engine::{CancelToken, Event, EventSink, GenerateParams, Job, Prompt};
use tallow_core::gguf::GgufFile;
use tallow_core::model::load_model;
use tallow_core::sampler::{Sampler, SamplingParams};
use tallow_core::threadpool::ThreadPool;
use tallow_core::tokenizer::{StreamDecoder, Tokenizer};

struct Counting;

/// Allocations (including reallocations) made while `COUNTING` is on.
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);
/// Print a backtrace for each counted allocation (`TALLOW_ALLOC_TRACE`).
static TRACE: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set while this thread prints a backtrace, whose own allocations are not counted.
    static TRACING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if !COUNTING.load(SeqCst) || TRACING.with(Cell::get) {
        return;
    }
    ALLOCS.fetch_add(1, SeqCst);
    if TRACE.load(SeqCst) {
        TRACING.with(|t| t.set(true));
        eprintln!("allocation in a decode step:\n{}", Backtrace::force_capture());
        TRACING.with(|t| t.set(false));
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from this allocator with `layout`; forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Turns counting on and returns the count so far.
fn start_counting() -> usize {
    COUNTING.store(true, SeqCst);
    ALLOCS.load(SeqCst)
}

fn stop_counting() -> usize {
    COUNTING.store(false, SeqCst);
    ALLOCS.load(SeqCst)
}

const N_CTX: usize = 128;
const N_BATCH: usize = 32;
const N_THREADS: usize = 2;
/// Steps run before counting: the first ones size the sampler's buffers.
const WARMUP: usize = 4;
/// Steps counted.
const STEPS: usize = 16;
const PROMPT: &str = "The quick brown fox jumps over the lazy dog. Once upon a time,";

fn model_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/.models").join(file)
}

/// The default sampling chain with every stage active and a fixed seed.
fn sampled() -> SamplingParams {
    SamplingParams { seed: Some(7), repeat_penalty: 1.1, frequency_penalty: 0.1, ..SamplingParams::default() }
}

/// Prefills `PROMPT`, runs `WARMUP` steps, then returns the allocations of each of `STEPS`
/// further steps.
fn direct_steps(file: &str, params: SamplingParams) -> [usize; STEPS] {
    let gguf = Arc::new(GgufFile::open(model_path(file)).expect("open model"));
    let tokenizer = Tokenizer::from_gguf(&gguf).expect("tokenizer");
    let model = load_model(gguf).expect("load model");
    let n_vocab = model.config().n_vocab;
    let pool = ThreadPool::new(N_THREADS);
    let mut cache = model.new_cache(N_CTX).unwrap();
    let mut scratch = model.new_scratch(N_BATCH).unwrap();
    let mut logits = vec![0.0f32; n_vocab];
    let mut history: Vec<u32> = Vec::with_capacity(N_CTX);
    let prompt = tokenizer.encode(PROMPT, true, false).unwrap();
    assert!(prompt.len() + WARMUP + STEPS <= N_CTX);

    let out = model.forward(&prompt, &mut cache, &mut scratch, &pool, false).unwrap();
    logits.copy_from_slice(out);
    history.extend_from_slice(&prompt);
    let mut sampler = Sampler::new(params).unwrap();
    let mut decoder = StreamDecoder::new(true);
    let mut text = String::with_capacity(256);
    let mut n_text = 0;

    let mut step = || {
        let id = sampler.sample(&logits, &history).unwrap();
        let eog = tokenizer.is_eog(id);
        text.clear();
        decoder.push_into(&tokenizer, id, &mut text);
        n_text += text.len() + eog as usize;
        let out = model.forward(&[id], &mut cache, &mut scratch, &pool, false).unwrap();
        logits.copy_from_slice(&out[out.len() - n_vocab..]);
        history.push(id);
    };
    for _ in 0..WARMUP {
        step();
    }
    let mut per_step = [0; STEPS];
    for n in &mut per_step {
        let before = start_counting();
        step();
        *n = stop_counting() - before;
    }
    assert!(n_text > 0, "{file}: the steps produced no text");
    per_step
}

/// Records the allocation count whenever a token event arrives; allocates nothing itself.
struct Recorder {
    /// Per token: the count when its event arrived, and whether it carried text.
    marks: Arc<Mutex<Vec<(usize, bool)>>>,
    done: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
}

impl EventSink for Recorder {
    fn send(&mut self, event: Event) -> bool {
        let n = ALLOCS.load(SeqCst);
        match event {
            Event::Token { text, .. } => {
                let mut marks = self.marks.lock().unwrap();
                if marks.len() < marks.capacity() {
                    marks.push((n, !text.is_empty()));
                }
            }
            Event::Text(_) => {}
            Event::Done { .. } => self.done.store(true, SeqCst),
            Event::Error(_) => {
                self.failed.store(true, SeqCst);
                self.done.store(true, SeqCst);
            }
        }
        true
    }
}

/// Generates `WARMUP + STEPS + 1` tokens with the engine; returns, for each of the last
/// `STEPS` tokens, the allocations since the previous token's event and whether its event
/// carried text.
fn engine_steps(file: &str, params: SamplingParams, stop: &[&str]) -> [(usize, bool); STEPS] {
    let options = tallow_core::LoadOptions { n_threads: Some(N_THREADS), n_ctx: Some(N_CTX), ..Default::default() };
    let loaded = tallow_core::load(&model_path(file), &options).expect("load model");
    let engine = &loaded.engine;
    let prompt = engine.prepare_prompt(&Prompt::Text { text: PROMPT.into(), add_bos: true, special: false }).unwrap();
    let n_tokens = WARMUP + STEPS + 1;
    let marks = Arc::new(Mutex::new(Vec::with_capacity(n_tokens)));
    let (done, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let sink = Recorder { marks: marks.clone(), done: done.clone(), failed: failed.clone() };
    let params = GenerateParams {
        max_tokens: n_tokens,
        sampling: params,
        stop: stop.iter().map(|s| s.to_string()).collect(),
        ignore_eos: true,
        logprobs: None,
    };
    let job = Job { prompt, params, session: None, cancel: CancelToken::new(), sink: Box::new(sink), deadline: None };
    // This thread only sleeps until the engine is done, so every count is the engine's.
    start_counting();
    engine.submit(job).unwrap();
    while !done.load(SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    stop_counting();
    assert!(!failed.load(SeqCst), "{file}: the engine reported an error");
    let marks = marks.lock().unwrap();
    assert_eq!(marks.len(), n_tokens, "{file}: tokens generated");
    std::array::from_fn(|i| {
        let t = WARMUP + 1 + i;
        (marks[t].0 - marks[t - 1].0, marks[t].1)
    })
}

#[test]
fn warm_decode_steps_allocate_nothing() {
    TRACE.store(std::env::var_os("TALLOW_ALLOC_TRACE").is_some(), SeqCst);
    for file in ["smollm2-135m-q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"] {
        for (name, params) in [("greedy", SamplingParams::greedy()), ("sampled", sampled())] {
            let per_step = direct_steps(file, params);
            assert_eq!(per_step, [0; STEPS], "{file}, {name}: heap allocations per decode step");
        }
    }

    // The engine's loop: the event's text is the one allocation a token may make.
    for (file, stop) in [("smollm2-135m-q4_1.gguf", &[][..]), ("gemma-3-270m-q4_k_m.gguf", &["<<never>>"][..])] {
        let steps = engine_steps(file, sampled(), stop);
        assert!(steps.iter().any(|&(_, text)| text), "{file}: no token carried text");
        for (i, &(n, text)) in steps.iter().enumerate() {
            assert!(n <= text as usize, "{file}: engine step {i} made {n} allocations (text: {text}); {steps:?}");
        }
    }
}
