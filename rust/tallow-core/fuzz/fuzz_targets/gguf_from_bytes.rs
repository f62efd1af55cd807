//! Any input either loads (and every tensor view has its declared size) or is a GGUF error;
//! a panic, abort or out-of-memory is a bug. Seed corpus: the G-case files written by
//! `TALLOW_FUZZ_SEEDS=fuzz/corpus/gguf_from_bytes cargo test -p tallow-core --test gguf_bad_inputs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tallow_core::gguf::{render_inspect, GgufFile};

fuzz_target!(|data: &[u8]| {
    // Run with `-rss_limit_mb` to catch allocation beyond the reader's budget.
    if let Ok(f) = GgufFile::from_bytes(data.to_vec()) {
        for t in f.tensors() {
            assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
        }
        let _ = render_inspect(&f, "fuzz");
    }
});
