//! Peak heap used while parsing hostile GGUFs stays within the reader's metadata budget
//! (4 × file size + 1 MiB), measured with a counting global allocator. One test in this
//! binary, so no other thread allocates while it measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use tallow_core::gguf::{metadata_budget, Array, GgufFile, GgufWriter, Value};
use tallow_core::quant::QType;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(now, Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap allocated by parsing `bytes` on top of what was live before (the input itself).
fn peak_parse(bytes: Vec<u8>) -> (usize, bool) {
    // The input is already allocated, so it is part of `base`.
    let base = CURRENT.load(Relaxed);
    PEAK.store(base, Relaxed);
    let ok = GgufFile::from_bytes(bytes).is_ok();
    (PEAK.load(Relaxed) - base, ok)
}

fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend_from_slice(&3u32.to_le_bytes());
    v.extend_from_slice(&n_tensors.to_le_bytes());
    v.extend_from_slice(&n_kv.to_le_bytes());
    v
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn peak_allocation_is_bounded_by_the_budget() {
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

    // Array of 200k empty strings: the worst per-element amplification the format allows.
    let mut v = header(0, 1);
    v.extend_from_slice(&1u64.to_le_bytes());
    v.extend_from_slice(b"a");
    v.extend_from_slice(&9u32.to_le_bytes());
    v.extend_from_slice(&8u32.to_le_bytes());
    v.extend_from_slice(&200_000u64.to_le_bytes());
    v.resize(v.len() + 8 * 200_000, 0);
    cases.push(("empty strings", v));

    // 100k one-byte kvs with distinct keys.
    let mut v = header(0, 100_000);
    for i in 0..100_000u32 {
        let key = format!("{i:05}");
        v.extend_from_slice(&(key.len() as u64).to_le_bytes());
        v.extend_from_slice(key.as_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.push(0);
    }
    cases.push(("many kvs", v));

    // 50k minimal tensor infos (0-dim F32) with 4 bytes of data each.
    let n = 50_000u64;
    let mut v = header(n, 0);
    for i in 0..n {
        let name = format!("{i}");
        v.extend_from_slice(&(name.len() as u64).to_le_bytes());
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&(i * 32).to_le_bytes());
    }
    v.resize(v.len().next_multiple_of(32) + 32 * n as usize, 0);
    cases.push(("many tensors", v));

    // A realistic vocab-like file and random mutations of it.
    let mut w = GgufWriter::new();
    let tokens: Vec<String> = (0..20_000).map(|i| format!("tok{i}")).collect();
    w.add_kv("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)));
    w.add_kv("tokenizer.ggml.scores", Value::Array(Array::F32(vec![0.0; 20_000])));
    w.add_tensor("w", &[256, 4], QType::Q4_K, vec![0; 576]).unwrap();
    let base = w.to_bytes();
    cases.push(("vocab", base.clone()));
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..300 {
        let mut m = base.clone();
        for _ in 0..1 + xorshift(&mut state) % 6 {
            let i = (xorshift(&mut state) % m.len() as u64) as usize;
            m[i] = xorshift(&mut state) as u8;
        }
        // Put hostile words on count/length fields now and then.
        if xorshift(&mut state).is_multiple_of(2) {
            let i = (xorshift(&mut state) % 256) as usize;
            m[i..i + 8].copy_from_slice(&(xorshift(&mut state) >> (xorshift(&mut state) % 64)).to_le_bytes());
        }
        cases.push(("mutation", m));
    }

    for (name, bytes) in cases {
        let len = bytes.len() as u64;
        let (peak, ok) = peak_parse(bytes);
        if name == "empty strings" {
            // The counter works: 200k `String`s of 24 bytes were really allocated.
            assert!(ok && peak >= 24 * 200_000, "{name}: peak {peak}");
        }
        // Budgeted metadata plus the file-independent parser overhead (hash maps, field names).
        let bound = metadata_budget(len) + (64 << 10);
        assert!(peak as u64 <= bound, "{name}: peak {peak} bytes > bound {bound} for a {len}-byte file (loaded: {ok})");
    }
}
