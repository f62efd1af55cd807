//! Streaming detokenization: for random token sequences (byte tokens and multi-byte pieces
//! included, so characters split across tokens), the concatenated chunks equal `decode` of the
//! whole sequence, and every chunk is complete UTF-8 (a `String`, checked again at the byte level).

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use tallow_core::gguf::GgufFile;
use tallow_core::tokenizer::{StreamDecoder, Tokenizer};

fn load(path: PathBuf) -> Tokenizer {
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(&file).unwrap()
}

/// Byte-level BPE: ids below 256 are the single-byte alphabet, many of them UTF-8 fragments.
fn qwen2() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        load(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vocab/ggml-vocab-qwen2.gguf"))
    })
}

/// SPM with `<0xXX>` byte-fallback tokens.
fn llama_spm() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        load(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vocab/ggml-vocab-llama-spm.gguf"))
    })
}

fn check_stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) {
    let mut dec = StreamDecoder::new(skip_special);
    let mut all = String::new();
    let mut chunks: Vec<String> = ids.iter().filter_map(|&id| dec.push(tok, id)).collect();
    chunks.extend(dec.flush());
    for c in &chunks {
        assert!(std::str::from_utf8(c.as_bytes()).is_ok());
        assert!(!c.is_empty());
        all.push_str(c);
    }
    assert_eq!(all, tok.decode(ids, skip_special), "ids {ids:?}");
}

/// Mostly small ids (byte tokens, fragments), some anywhere in the vocabulary, a few out of range.
fn ids(n_vocab: u32) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(prop_oneof![6 => 0u32..300, 3 => 0..n_vocab, 1 => n_vocab..n_vocab + 10], 0..48)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn byte_level_bpe_stream_equals_decode(ids in ids(151_936), skip in any::<bool>()) {
        check_stream(qwen2(), &ids, skip);
    }

    #[test]
    fn spm_byte_fallback_stream_equals_decode(ids in ids(32_000), skip in any::<bool>()) {
        check_stream(llama_spm(), &ids, skip);
    }

    #[test]
    fn encode_then_stream_round_trips(text in "\\PC{0,40}") {
        let tok = qwen2();
        let ids = tok.encode(&text, false, false).unwrap();
        let mut dec = StreamDecoder::new(true);
        let mut out = String::new();
        for &id in &ids {
            dec.push_into(tok, id, &mut out);
        }
        out.extend(dec.flush());
        prop_assert_eq!(out, text);
    }
}

#[test]
fn split_character_is_held_back() {
    // "é" is C3 A9: two byte tokens in the byte-level alphabet.
    let tok = qwen2();
    let ids = tok.encode("é", false, false).unwrap();
    let mut dec = StreamDecoder::new(true);
    let c3 = tok.encode("\u{00C3}", false, false).unwrap(); // sanity: some other ids exist
    assert!(!c3.is_empty());
    let pieces: Vec<Vec<u8>> = ids.iter().map(|&id| tok.token_to_piece(id, false)).collect();
    assert_eq!(pieces.concat(), "é".as_bytes());
    // Feed the two bytes as separate single-byte tokens.
    let byte_ids: Vec<u32> = "é"
        .bytes()
        .map(|b| (0..300u32).find(|&id| tok.token_to_piece(id, false) == [b]).expect("byte token"))
        .collect();
    assert_eq!(dec.push(tok, byte_ids[0]), None);
    assert_eq!(dec.push(tok, byte_ids[1]).as_deref(), Some("é"));
    assert_eq!(dec.flush(), None);
    // A dangling lead byte at the end of the stream is flushed lossily.
    assert_eq!(dec.push(tok, byte_ids[0]), None);
    assert_eq!(dec.flush().as_deref(), Some("\u{FFFD}"));
}
