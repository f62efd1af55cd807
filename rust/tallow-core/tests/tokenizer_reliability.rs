//! G26/G27: inconsistent or malformed vocabulary metadata is a clean error at load, never a panic.

use tallow_core::gguf::GgufFile;
use tallow_core::tokenizer::Tokenizer;
use tallow_core::Error;

/// A GGUF metadata value, enough of the format to write tokenizer keys.
enum V {
    Str(&'static str),
    U32(u32),
    Bool(bool),
    Strs(Vec<String>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A GGUF v3 file with no tensors and the given metadata.
fn gguf(kvs: &[(&str, V)]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        put_str(&mut out, k);
        match v {
            V::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            V::U32(x) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&x.to_le_bytes());
            }
            V::Bool(b) => {
                out.extend_from_slice(&7u32.to_le_bytes());
                out.push(*b as u8);
            }
            V::Strs(xs) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(xs.len() as u64).to_le_bytes());
                for s in xs {
                    put_str(&mut out, s);
                }
            }
            V::F32s(xs) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&6u32.to_le_bytes());
                out.extend_from_slice(&(xs.len() as u64).to_le_bytes());
                xs.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
            V::I32s(xs) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&(xs.len() as u64).to_le_bytes());
                xs.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
        }
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    out
}

fn strs(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

/// A small valid SPM vocabulary: <unk> <s> </s>, two byte tokens, and a few pieces.
fn spm(overrides: Vec<(&'static str, V)>) -> Vec<u8> {
    let mut kvs = vec![
        ("general.architecture", V::Str("llama")),
        ("tokenizer.ggml.model", V::Str("llama")),
        (
            "tokenizer.ggml.tokens",
            V::Strs(strs(&["<unk>", "<s>", "</s>", "<0x0A>", "<0x41>", "▁", "a", "b", "▁a", "ab"])),
        ),
        ("tokenizer.ggml.scores", V::F32s(vec![0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -0.5, -0.7])),
        ("tokenizer.ggml.token_type", V::I32s(vec![2, 3, 3, 6, 6, 1, 1, 1, 1, 1])),
        ("tokenizer.ggml.bos_token_id", V::U32(1)),
        ("tokenizer.ggml.eos_token_id", V::U32(2)),
    ];
    for (k, v) in overrides {
        match kvs.iter_mut().find(|(key, _)| *key == k) {
            Some(slot) => slot.1 = v,
            None => kvs.push((k, v)),
        }
    }
    gguf(&kvs)
}

/// A small valid byte-level BPE vocabulary.
fn bpe(merges: Vec<String>) -> Vec<u8> {
    gguf(&[
        ("general.architecture", V::Str("gpt2")),
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.pre", V::Str("gpt-2")),
        ("tokenizer.ggml.tokens", V::Strs(strs(&["a", "b", "ab", "Ġ", "Ġab", "<|endoftext|>"]))),
        ("tokenizer.ggml.token_type", V::I32s(vec![1, 1, 1, 1, 1, 3])),
        ("tokenizer.ggml.merges", V::Strs(merges)),
        ("tokenizer.ggml.eos_token_id", V::U32(5)),
    ])
}

fn load(bytes: Vec<u8>) -> tallow_core::Result<Tokenizer> {
    Tokenizer::from_gguf(&GgufFile::from_bytes(bytes)?)
}

fn assert_gguf_error(r: tallow_core::Result<Tokenizer>, needle: &str) {
    match r {
        Err(Error::Gguf(e)) => {
            assert!(e.to_string().contains(needle), "error {e} lacks {needle:?}")
        }
        Err(e) => panic!("expected a GGUF error mentioning {needle:?}, got {e}"),
        Ok(_) => panic!("expected a GGUF error mentioning {needle:?}, got a tokenizer"),
    }
}

#[test]
fn valid_fixtures_load_and_tokenize() {
    let t = load(spm(vec![])).unwrap();
    assert_eq!(t.encode("ab", true, false).unwrap(), vec![1, 8, 7]);
    assert_eq!(t.encode("A\n", false, false).unwrap(), vec![5, 4, 3], "byte fallback");
    assert_eq!(t.decode(&[1, 8, 7, 4, 3], true), " abA\n");
    let t = load(bpe(strs(&["a b", "Ġ ab"]))).unwrap();
    assert_eq!(t.encode(" ab<|endoftext|>", false, true).unwrap(), vec![4, 5]);
    assert!(t.is_eog(5));
}

#[test]
fn g26_scores_length_mismatch() {
    assert_gguf_error(load(spm(vec![("tokenizer.ggml.scores", V::F32s(vec![0.0; 9]))])), "tokenizer.ggml.scores");
}

#[test]
fn g26_token_type_length_mismatch() {
    assert_gguf_error(
        load(spm(vec![("tokenizer.ggml.token_type", V::I32s(vec![1; 11]))])),
        "tokenizer.ggml.token_type",
    );
}

#[test]
fn g26_special_ids_outside_vocab() {
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.unknown_token_id",
    ] {
        assert_gguf_error(load(spm(vec![(key, V::U32(10))])), key);
        assert_gguf_error(load(spm(vec![(key, V::U32(u32::MAX))])), key);
    }
}

#[test]
fn g26_add_bos_without_bos() {
    let bytes = gguf(&[
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.pre", V::Str("gpt-2")),
        ("tokenizer.ggml.tokens", V::Strs(strs(&["a"]))),
        ("tokenizer.ggml.merges", V::Strs(vec![])),
        ("tokenizer.ggml.add_bos_token", V::Bool(true)),
    ]);
    assert_gguf_error(load(bytes), "add_bos_token");
}

#[test]
fn g27_malformed_byte_tokens() {
    for bad in ["<0xZZ>", "<0x-1>", "<0x>", "<0x123>", "0x41", "<0x4>", "<0x41"] {
        let tokens = V::Strs(strs(&["<unk>", "<s>", "</s>", "<0x0A>", bad, "▁", "a", "b", "▁a", "ab"]));
        assert_gguf_error(load(spm(vec![("tokenizer.ggml.tokens", tokens)])), "malformed");
    }
}

#[test]
fn g27_merge_without_space() {
    assert_gguf_error(load(bpe(strs(&["a b", "ab"]))), "no space");
    assert_gguf_error(load(bpe(strs(&[""]))), "no space");
    assert_gguf_error(load(bpe(strs(&[" "]))), "no space");
}

#[test]
fn g27_merges_outside_vocab_are_ignored() {
    // Parts or result not in the vocabulary: the merge cannot apply; no panic, no bogus id.
    let t = load(bpe(strs(&["a b", "x y", "Ġ b", "ab ab"]))).unwrap();
    assert_eq!(t.encode("abab", false, false).unwrap(), vec![2, 2]);
}

#[test]
fn g27_huge_token_text() {
    let huge = "x".repeat(1 << 20);
    let tokens = V::Strs(vec![
        "<unk>".into(),
        "<s>".into(),
        "</s>".into(),
        "<0x0A>".into(),
        "<0x41>".into(),
        "▁".into(),
        huge,
        "b".into(),
        "▁a".into(),
        "ab".into(),
    ]);
    assert_gguf_error(load(spm(vec![("tokenizer.ggml.tokens", tokens)])), "bytes long");
}

#[test]
fn g27_duplicate_and_empty_tokens() {
    let tokens = V::Strs(strs(&["<unk>", "<s>", "</s>", "<0x0A>", "<0x41>", "▁", "a", "a", "▁a", "ab"]));
    assert_gguf_error(load(spm(vec![("tokenizer.ggml.tokens", tokens)])), "duplicate");
    // Empty token texts are renamed, not matched against every position of the input.
    let tokens = V::Strs(strs(&["<unk>", "<s>", "", "<0x0A>", "<0x41>", "▁", "a", "b", "▁a", "ab"]));
    let t = load(spm(vec![("tokenizer.ggml.tokens", tokens)])).unwrap();
    assert_eq!(t.encode("ab", false, true).unwrap(), vec![8, 7]);
}

#[test]
fn wrong_types_and_missing_keys_are_errors() {
    assert_gguf_error(load(spm(vec![("tokenizer.ggml.tokens", V::F32s(vec![1.0]))])), "tokenizer.ggml.tokens");
    assert_gguf_error(load(spm(vec![("tokenizer.ggml.scores", V::Strs(strs(&["x"])))])), "tokenizer.ggml.scores");
    assert_gguf_error(load(gguf(&[("general.architecture", V::Str("llama"))])), "tokenizer.ggml.model");
    assert_gguf_error(load(spm(vec![("tokenizer.ggml.tokens", V::Strs(vec![]))])), "tokenizer.ggml.tokens");
    assert!(matches!(load(spm(vec![("tokenizer.ggml.model", V::Str("rwkv"))])), Err(Error::UnsupportedModel(_))));
    let mut no_merges = bpe(vec![]);
    no_merges.clear();
    no_merges
        .extend(gguf(&[("tokenizer.ggml.model", V::Str("gpt2")), ("tokenizer.ggml.tokens", V::Strs(strs(&["a"])))]));
    assert_gguf_error(load(no_merges), "merges");
}

#[test]
fn out_of_range_ids_decode_to_nothing() {
    let t = load(spm(vec![])).unwrap();
    assert!(t.token_to_piece(10, true).is_empty());
    assert!(t.token_to_piece(u32::MAX, true).is_empty());
    assert_eq!(t.decode(&[u32::MAX, 6, 99], false), "a");
    assert_eq!(t.token_text(99), None);
}
