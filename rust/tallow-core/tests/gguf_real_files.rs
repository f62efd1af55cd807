//! The reader accepts every real GGUF we have: llama.cpp's vocab files and the two catalog models.

use std::path::PathBuf;
use tallow_core::gguf::GgufFile;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn parses_every_vocab_file() {
    // `shared/` sits beside the main checkout, and two levels up from a helper worktree.
    let dir = ["../shared/vocab", "../../shared/vocab"]
        .iter()
        .map(|d| repo().join(d))
        .find(|d| d.is_dir())
        .expect("shared/vocab not found beside the checkout");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("../shared/vocab") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "gguf") {
            let f = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(f.get_array("tokenizer.ggml.tokens").unwrap().is_some(), "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 15, "found only {n} vocab files");
}

#[test]
fn parses_catalog_models() {
    for (name, arch, n_tensors) in
        [("smollm2-135m-q4_1.gguf", "llama", 272), ("gemma-3-270m-q4_k_m.gguf", "gemma3", 236)]
    {
        let path = repo().join("tests/.models").join(name);
        let f = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(f.architecture().unwrap(), arch);
        assert_eq!(f.tensors().len(), n_tensors, "{name}");
        for t in f.tensors() {
            assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
        }
    }
}
