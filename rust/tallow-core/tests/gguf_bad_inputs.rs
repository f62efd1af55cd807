//! One test per malformed-GGUF case G1–G25 of docs/reliability.md §2 (plus G30 and the extra
//! cases), built byte by byte like llama.cpp's test-gguf handcrafted files; test names keep
//! its case names. Each asserts the error's field and byte offset, not just that it failed.

use tallow_core::gguf::{Array, GgufFile, GgufWriter, Value};
use tallow_core::quant::QType;
use tallow_core::{Error, GgufError};

/// Low-level little-endian byte builder for files the writer refuses to produce.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn pos(&self) -> u64 {
        self.0.len() as u64
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes(&[v])
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// Magic, version 3 and the two counts.
    fn header(n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw::default();
        r.bytes(b"GGUF").u32(3).u64(n_tensors).u64(n_kv);
        r
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(4).u32(v)
    }
    fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.str(key).u32(8).str(v)
    }
    fn tensor_info(&mut self, name: &str, ne: &[u64], qtype: u32, offset: u64) -> &mut Self {
        self.str(name).u32(ne.len() as u32);
        for &d in ne {
            self.u64(d);
        }
        self.u32(qtype).u64(offset)
    }
    fn pad(&mut self, align: usize) -> &mut Self {
        let n = self.0.len().next_multiple_of(align);
        self.0.resize(n, 0);
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

/// With `TALLOW_FUZZ_SEEDS=dir`, every handcrafted file is also saved there as a fuzz seed.
fn save_seed(bytes: &[u8]) {
    if let Some(dir) = std::env::var_os("TALLOW_FUZZ_SEEDS") {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(std::path::Path::new(&dir).join(format!("{:016x}.gguf", h.finish())), bytes);
    }
}

#[track_caller]
fn expect_err(bytes: Vec<u8>) -> GgufError {
    if bytes.len() < 1 << 16 {
        save_seed(&bytes);
    }
    match GgufFile::from_bytes(bytes) {
        Err(Error::Gguf(e)) => e,
        Err(e) => panic!("expected a GGUF error, got {e}"),
        Ok(f) => panic!("expected a GGUF error, file loaded: {f:?}"),
    }
}

#[track_caller]
fn check(e: &GgufError, offset: u64, field: &str, message_part: &str) {
    assert_eq!(e.field, field, "{e}");
    assert_eq!(e.offset, offset, "{e}");
    assert!(e.message.contains(message_part), "message {:?} lacks {message_part:?}", e.message);
}

/// A valid file with one F32 tensor [4, 2] after `kvs`; returns (bytes, offset of tensor info).
fn one_tensor_file(extra: impl FnOnce(&mut Raw), n_kv: u64) -> Vec<u8> {
    let mut r = Raw::header(1, n_kv);
    extra(&mut r);
    r.tensor_info("t", &[4, 2], 0, 0).pad(32).zeros(32);
    r.0
}

// ---- G1: magic -------------------------------------------------------------------------

#[test]
fn g1_header_bad_magic() {
    let mut r = Raw::default();
    r.bytes(b"GGUX").u32(3).u64(0).u64(0);
    check(&expect_err(r.0), 0, "magic", "not a GGUF file");
    check(&expect_err(b"\x7fELF\x02\x01\x01\0".to_vec()), 0, "magic", "not a GGUF file");
    check(&expect_err(vec![]), 0, "magic", "not a GGUF file");
    check(&expect_err(b"GGU".to_vec()), 0, "magic", "shorter than 4 bytes");
}

#[test]
fn g1_header_byte_swapped_magic() {
    let mut r = Raw::default();
    r.bytes(b"FUGG").bytes(&3u32.to_be_bytes()).u64(0).u64(0);
    check(&expect_err(r.0), 0, "magic", "big-endian GGUF is not supported");
}

// ---- G2: version -----------------------------------------------------------------------

#[test]
fn g2_header_bad_version() {
    for (v, part) in [
        (0u32, "unsupported GGUF version 0; supported versions: 2, 3"),
        (1, "version 1 is no longer supported"),
        (4, "unsupported GGUF version 4; supported versions: 2, 3"),
        (u32::MAX, "supported versions: 2, 3"),
        (0x0300_0000, "big-endian GGUF is not supported"),
    ] {
        let mut r = Raw::default();
        r.bytes(b"GGUF").u32(v).u64(0).u64(0);
        check(&expect_err(r.0), 4, "version", part);
    }
}

#[test]
fn g2_writer_version_1_file_is_rejected_and_2_3_load() {
    for v in [1, 2, 3] {
        let mut w = GgufWriter::new();
        w.set_version(v).add_kv("general.architecture", Value::String("llama".into()));
        let r = GgufFile::from_bytes(w.to_bytes());
        if v == 1 {
            assert!(matches!(r, Err(Error::Gguf(ref e)) if e.field == "version"), "{r:?}");
        } else {
            assert_eq!(r.unwrap().version(), v);
        }
    }
}

// ---- G3: truncation --------------------------------------------------------------------

fn small_valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::String("llama".into()));
    w.add_kv("tokenizer.ggml.tokens", Value::Array(Array::String(vec!["a".into(), "bc".into(), "".into()])));
    w.add_kv("llama.block_count", Value::U32(2));
    w.add_f32_tensor("token_embd.weight", &[4, 3], &[1.0; 12]).unwrap();
    w.add_tensor("blk.0.attn_q.weight", &[32, 2], QType::Q8_0, vec![7; 68]).unwrap();
    w.to_bytes()
}

#[test]
fn g3_truncated_anywhere() {
    let full = small_valid_file();
    assert!(GgufFile::from_bytes(full.clone()).is_ok());
    // The last tensor is 68 bytes, padded to 96: cutting padding only is still valid.
    let data_end = full.len() - (96 - 68);
    for len in 0..data_end {
        let e = expect_err(full[..len].to_vec());
        assert!(e.offset <= len as u64 || e.field == "data", "cut at {len}: {e}");
    }
}

#[test]
fn g3_truncated_mid_key_and_mid_tensor_info() {
    // Mid key length: the second key's length field has only 5 bytes.
    let mut r = Raw::header(0, 2);
    r.kv_str("general.architecture", "llama");
    let at = r.pos();
    r.zeros(5);
    check(&expect_err(r.0), at, "kv[1].key", "file truncated: need 8 bytes, 5 remain");
    // Mid key bytes.
    let mut r = Raw::header(0, 1);
    r.u64(20).bytes(b"general.arch");
    check(&expect_err(r.0), 24, "kv[0].key", "string length 20 exceeds the 12 bytes left");
    // Mid tensor info.
    let full = small_valid_file();
    let f = GgufFile::from_bytes(full.clone()).unwrap();
    let info_start = f.offset_of("llama.block_count") + 8 + 17 + 4 + 4;
    let e = expect_err(full[..info_start as usize + 60].to_vec());
    check(&e, info_start + 57, "tensor_info[1].name", "file truncated: need 8 bytes, 3 remain");
}

#[test]
fn g3_data_not_enough_data() {
    let full = small_valid_file();
    let f = GgufFile::from_bytes(full.clone()).unwrap();
    let cut = (f.data_offset() + 64 + 68 - 1) as usize;
    check(&expect_err(full[..cut].to_vec()), f.data_offset(), "data", "tensor data needs 132 bytes");
}

// ---- G4: counts ------------------------------------------------------------------------

#[test]
fn g4_header_bad_n_tensors() {
    for n in [u64::MAX, 1 << 63, 1 << 31, 1000] {
        check(&expect_err(Raw::header(n, 0).0), 8, "n_tensors", "tensors cannot fit");
    }
}

#[test]
fn g4_header_bad_n_kv() {
    for n in [u64::MAX, 1 << 63, 1 << 31, 1] {
        check(&expect_err(Raw::header(0, n).0), 16, "n_kv", "metadata entries cannot fit");
    }
}

#[test]
fn g4_counts_bounded_together() {
    // Room for 2 minimal kvs (28 bytes) but not also for 1 tensor info.
    let mut r = Raw::header(1, 2);
    r.zeros(30);
    check(&expect_err(r.0), 8, "n_tensors", "cannot fit");
}

// ---- G5: string lengths ----------------------------------------------------------------

#[test]
fn g5_kv_bad_key_size() {
    for n in [u64::MAX, 1 << 31, 1 << 63, 100] {
        let mut r = Raw::header(0, 1);
        r.u64(n).bytes(b"general.name").u32(4).u32(0);
        check(&expect_err(r.0), 24, "kv[0].key", "exceeds the");
    }
}

#[test]
fn g5_string_value_length_beyond_file() {
    let mut r = Raw::header(0, 1);
    r.str("general.name").u32(8);
    let at = r.pos();
    r.u64(u64::MAX - 1).bytes(b"abc");
    check(&expect_err(r.0), at, "kv[\"general.name\"]", "string length 18446744073709551614 exceeds the 3 bytes left");
}

// ---- G6: arrays ------------------------------------------------------------------------

#[test]
fn g6_array_count_huge() {
    for (elem, count) in [(8u32, u64::MAX), (8, 1 << 31), (0, 1 << 40), (10, u64::MAX / 4)] {
        let mut r = Raw::header(0, 1);
        r.str("tokenizer.ggml.tokens").u32(9).u32(elem);
        let at = r.pos();
        r.u64(count).zeros(64);
        check(&expect_err(r.0), at, "kv[\"tokenizer.ggml.tokens\"].count", "cannot fit in the 64 bytes left");
    }
}

#[test]
fn g6_many_empty_strings_stay_within_budget() {
    // 100k empty strings: 800 KB on disk, 2.4 MB as Vec<String> — allowed (3x), and parsed.
    let n = 100_000u64;
    let mut r = Raw::header(0, 1);
    r.str("tokenizer.ggml.tokens").u32(9).u32(8).u64(n);
    for _ in 0..n {
        r.u64(0);
    }
    let f = GgufFile::from_bytes(r.0).unwrap();
    assert_eq!(f.get_array("tokenizer.ggml.tokens").unwrap().unwrap().len(), n as usize);
}

#[test]
fn g6_metadata_memory_budget() {
    // 100k minimal kvs: 1.4 MB on disk, but ~11 MB as parsed entries: over 4x + 1 MiB.
    let n = 100_000u64;
    let mut r = Raw::header(0, n);
    for i in 0..n {
        r.str(&format!("{:x}", i % 16)).u32(0).u8(0);
    }
    check(&expect_err(r.0), 16, "n_kv", "over the budget");
}

// ---- G7: nested arrays -----------------------------------------------------------------

#[test]
fn g7_nested_arrays() {
    let mut r = Raw::header(0, 1);
    r.str("a").u32(9);
    let at = r.pos();
    // 10^4 levels of "array of array"; rejected at the first level, no recursion.
    for _ in 0..10_000 {
        r.u32(9).u64(1);
    }
    check(&expect_err(r.0), at, "kv[\"a\"].elem_type", "arrays of arrays are not supported");
}

// ---- G8: value types -------------------------------------------------------------------

#[test]
fn g8_kv_bad_type() {
    for ty in [13u32, 0xFFFF_FFFF] {
        let mut r = Raw::header(0, 1);
        r.str("general.name");
        let at = r.pos();
        r.u32(ty).u64(0);
        check(&expect_err(r.0), at, "kv[\"general.name\"].type", &format!("unknown value type {ty}"));
    }
    // Inside an array too.
    let mut r = Raw::header(0, 1);
    r.str("a").u32(9);
    let at = r.pos();
    r.u32(13).u64(0);
    check(&expect_err(r.0), at, "kv[\"a\"].elem_type", "unknown value type 13");
}

// ---- G9: bool --------------------------------------------------------------------------

#[test]
fn g9_bool_byte_2() {
    let mut r = Raw::header(0, 1);
    r.str("b").u32(7);
    let at = r.pos();
    r.u8(2);
    check(&expect_err(r.0), at, "kv[\"b\"]", "invalid bool byte 2");

    let mut r = Raw::header(0, 1);
    r.str("b").u32(9).u32(7).u64(3).u8(1).u8(0);
    let at = r.pos();
    r.u8(0xff);
    check(&expect_err(r.0), at, "kv[\"b\"][2]", "invalid bool byte 255");
}

// ---- G10/G11: keys ---------------------------------------------------------------------

#[test]
fn g10_kv_duplicate_key() {
    let mut r = Raw::header(0, 3);
    let first = r.pos();
    r.kv_u32("general.alignment", 32).kv_str("general.name", "x");
    let second = r.pos();
    r.kv_u32("general.alignment", 64);
    let e = expect_err(r.0);
    check(&e, second, "kv[\"general.alignment\"]", &format!("duplicate metadata key (first at byte {first})"));
}

#[test]
fn g11_kv_empty_key() {
    let mut r = Raw::header(0, 2);
    r.kv_u32("ok", 1);
    let at = r.pos();
    r.kv_u32("", 1);
    check(&expect_err(r.0), at, "kv[1].key", "name must be 1..=65535 bytes, got 0");
}

#[test]
fn g11_kv_key_not_utf8() {
    let mut r = Raw::header(0, 1);
    r.u64(2).bytes(&[0xff, 0xfe]).u32(4).u32(1);
    check(&expect_err(r.0), 24, "kv[0].key", "not valid UTF-8");
}

// ---- G12/G13: alignment ----------------------------------------------------------------

#[test]
fn g12_alignment_zero() {
    let bytes = one_tensor_file(
        |r| {
            r.kv_u32("general.alignment", 0);
        },
        1,
    );
    check(&expect_err(bytes), 24, "kv[\"general.alignment\"]", "alignment 0 is not a power of two");
}

#[test]
fn g13_kv_bad_align() {
    for a in [3u32, 13, 1 << 31, 1 << 21] {
        let bytes = one_tensor_file(
            |r| {
                r.kv_u32("general.alignment", a);
            },
            1,
        );
        check(&expect_err(bytes), 24, "kv[\"general.alignment\"]", &format!("alignment {a} is not a power of two"));
    }
}

#[test]
fn g13_kv_wrong_type_align() {
    for (ty, value, name) in [(5u32, vec![32u8, 0, 0, 0], "I32"), (10, vec![32, 0, 0, 0, 0, 0, 0, 0], "U64")] {
        let bytes = one_tensor_file(
            |r| {
                r.str("general.alignment").u32(ty).bytes(&value);
            },
            1,
        );
        check(&expect_err(bytes), 24, "kv[\"general.alignment\"]", &format!("must be a u32, found {name}"));
    }
    let bytes = one_tensor_file(
        |r| {
            r.kv_str("general.alignment", "32");
        },
        1,
    );
    check(&expect_err(bytes), 24, "kv[\"general.alignment\"]", "must be a u32, found String");
}

#[test]
fn custom_alignment_loads() {
    let mut w = GgufWriter::new();
    w.set_alignment(64);
    w.add_f32_tensor("a", &[3], &[1.0, 2.0, 3.0]).unwrap();
    w.add_f32_tensor("b", &[2], &[4.0, 5.0]).unwrap();
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensor("b").unwrap().offset, 64);
    assert_eq!(f.tensor_data(f.tensor("b").unwrap()), [4f32.to_le_bytes(), 5f32.to_le_bytes()].concat());
}

// ---- G14–G20: tensor shapes and types ---------------------------------------------------

/// A file whose only tensor info is written by `info`; returns (bytes, offset of the info).
fn tensor_file(info: impl FnOnce(&mut Raw)) -> (Vec<u8>, u64) {
    let mut r = Raw::header(1, 0);
    let at = r.pos();
    info(&mut r);
    r.pad(32).zeros(256);
    (r.0, at)
}

#[test]
fn g14_tensors_bad_n_dims() {
    for n in [5u32, u32::MAX] {
        let (bytes, at) = tensor_file(|r| {
            r.str("t").u32(n).u64(1).u64(1).u64(1).u64(1).u64(1);
        });
        check(&expect_err(bytes), at + 9, "tensor_info[0].n_dims", &format!("{n} dimensions (at most 4)"));
    }
}

#[test]
fn g15_zero_dim_tensors_load() {
    let mut w = GgufWriter::new();
    w.add_tensor("scalar", &[], QType::F32, 1f32.to_le_bytes().to_vec()).unwrap();
    w.add_tensor("empty", &[0, 4], QType::Q4_K, vec![]).unwrap();
    w.add_tensor("empty2", &[256, 0, 3], QType::Q6_K, vec![]).unwrap();
    w.add_f32_tensor("after", &[2], &[1.0, 2.0]).unwrap();
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    let s = f.tensor("scalar").unwrap();
    assert_eq!((s.shape.len(), s.n_elements, s.n_bytes), (0, 1, 4));
    for name in ["empty", "empty2"] {
        let t = f.tensor(name).unwrap();
        assert_eq!((t.n_elements, t.n_bytes), (0, 0));
        assert!(f.tensor_data(t).is_empty());
    }
    assert_eq!(f.tensor_data(f.tensor("after").unwrap()).len(), 8);
}

#[test]
fn g16_tensors_bad_shape() {
    let (bytes, at) = tensor_file(|r| {
        r.tensor_info("t", &[4, u64::MAX], 0, 0);
    });
    check(&expect_err(bytes), at + 9 + 4 + 8, "tensor_info[0].ne[1]", "negative dimension -1");
    let (bytes, at) = tensor_file(|r| {
        r.tensor_info("t", &[1 << 63], 0, 0);
    });
    check(&expect_err(bytes), at + 9 + 4, "tensor_info[0].ne[0]", "negative dimension");
}

#[test]
fn g17_tensors_ne_too_big() {
    let (bytes, at) = tensor_file(|r| {
        r.tensor_info("t", &[1 << 32, 1 << 32], 0, 0);
    });
    check(&expect_err(bytes), at + 9 + 4 + 8, "tensor_info[0].ne[1]", "element count overflows");
    let (bytes, at) = tensor_file(|r| {
        r.tensor_info("t", &[i64::MAX as u64, 2, 1, 1], 0, 0);
    });
    check(&expect_err(bytes), at + 9 + 4 + 8, "tensor_info[0].ne[1]", "element count overflows");
    let m = 4 * (i32::MAX as u64);
    let (bytes, at) = tensor_file(|r| {
        r.tensor_info("t", &[m, m, m, m], 0, 0);
    });
    check(&expect_err(bytes), at + 9 + 4 + 8, "tensor_info[0].ne[1]", "element count overflows");
}

#[test]
fn g18_tensors_nbytes_too_big() {
    // 2^62 F64 elements: 2^65 bytes.
    let (bytes, at) = tensor_file(|r| {
        r.tensor_info("t", &[1 << 62], QType::F64 as u32, 0);
    });
    check(
        &expect_err(bytes),
        at + 9 + 4,
        "tensor_info[0].ne[0]",
        "byte size of 4611686018427387904 F64 elements overflows",
    );
    // Fits in u64 but not in the file.
    let (bytes, _) = tensor_file(|r| {
        r.tensor_info("t", &[1 << 40, 1 << 20], QType::Q4_K as u32, 0);
    });
    let e = expect_err(bytes);
    assert_eq!(e.field, "data", "{e}");
}

#[test]
fn g19_row_not_multiple_of_block() {
    let (bytes, at) = tensor_file(|r| {
        r.tensor_info("t", &[100, 2], QType::Q4_K as u32, 0);
    });
    check(
        &expect_err(bytes),
        at + 9 + 4,
        "tensor_info[0].ne[0]",
        "row length 100 is not a multiple of the Q4_K block size 256",
    );
    let (bytes, at) = tensor_file(|r| {
        r.tensor_info("t", &[], QType::Q4_0 as u32, 0);
    });
    check(&expect_err(bytes), at + 9 + 4, "tensor_info[0].ne[0]", "row length 1 is not a multiple");
}

#[test]
fn g20_tensors_bad_type() {
    // 4 and 5 are the removed Q4_2/Q4_3, 40 is past the last type, 9999 arbitrary.
    for ty in [4u32, 5, 31, 40, 9999, u32::MAX] {
        let (bytes, at) = tensor_file(|r| {
            r.tensor_info("blk.0.ffn_up", &[32], ty, 0);
        });
        let e = expect_err(bytes);
        check(
            &e,
            at + 20 + 4 + 8,
            "tensor_info[0].type",
            &format!("tensor \"blk.0.ffn_up\" has unknown GGML type {ty}"),
        );
    }
}

// ---- G21/G22: tensor names -------------------------------------------------------------

#[test]
fn g21_tensors_bad_name_size() {
    let long = "x".repeat(64);
    let (bytes, at) = tensor_file(|r| {
        r.tensor_info(&long, &[4], 0, 0);
    });
    check(&expect_err(bytes), at, "tensor_info[0].name", "name must be 1..=63 bytes, got 64");
    let (bytes, at) = tensor_file(|r| {
        r.tensor_info("", &[4], 0, 0);
    });
    check(&expect_err(bytes), at, "tensor_info[0].name", "got 0");
    let (bytes, at) = tensor_file(|r| {
        r.u64(3).bytes(b"a\xffb").u32(1).u64(4).u32(0).u64(0);
    });
    check(&expect_err(bytes), at, "tensor_info[0].name", "not valid UTF-8");
    let ok = "y".repeat(63);
    let (bytes, _) = tensor_file(|r| {
        r.tensor_info(&ok, &[4], 0, 0);
    });
    assert_eq!(GgufFile::from_bytes(bytes).unwrap().tensors()[0].name, ok);
}

#[test]
fn g22_tensors_duplicate_name() {
    let mut r = Raw::header(2, 0);
    let first = r.pos();
    r.tensor_info("t", &[8], 0, 0);
    let second = r.pos();
    r.tensor_info("t", &[8], 0, 32).pad(32).zeros(64);
    check(
        &expect_err(r.0),
        second,
        "tensor_info[1].name",
        &format!("duplicate tensor name \"t\" (first at byte {first})"),
    );
}

// ---- G23–G25: offsets and data layout --------------------------------------------------

fn two_tensor_file(second_offset: u64) -> (Vec<u8>, u64) {
    let mut r = Raw::header(2, 0);
    r.tensor_info("a", &[8], 0, 0);
    let at = r.pos() + 9 + 4 + 8 + 4;
    r.tensor_info("b", &[8], 0, second_offset).pad(32).zeros(1024);
    (r.0, at)
}

#[test]
fn g23_tensors_bad_offset() {
    for off in [u64::MAX, 1 << 63, 4096] {
        let (bytes, at) = two_tensor_file(off);
        check(&expect_err(bytes), at, "tensor_info[1].offset", &format!("has offset {off}, expected 32"));
    }
    // Past EOF for the last tensor: the data section check catches it.
    let mut r = Raw::header(1, 0);
    r.tensor_info("a", &[1024], 0, 0).pad(32).zeros(100);
    let data = r.0.len() as u64 - 100;
    check(&expect_err(r.0), data, "data", "tensor data needs 4096 bytes");
}

#[test]
fn g24_tensors_bad_align_overlap_gap() {
    // Unaligned (TENSORS_BAD_ALIGN), overlapping, gap (INCONSISTENT_ALIGN).
    for off in [1u64, 0, 16, 64] {
        let (bytes, at) = two_tensor_file(off);
        check(&expect_err(bytes), at, "tensor_info[1].offset", "expected 32 (tensor data must be contiguous");
    }
    // Out of order: the first tensor does not start at 0.
    let mut r = Raw::header(2, 0);
    r.tensor_info("a", &[8], 0, 32).tensor_info("b", &[8], 0, 0).pad(32).zeros(64);
    check(&expect_err(r.0), 24 + 9 + 4 + 8 + 4, "tensor_info[0].offset", "has offset 32, expected 0");
}

#[test]
fn g25_data_mem_size_overflow() {
    // Two I8 tensors of i64::MAX bytes: the padded running size passes 2^64.
    let mut r = Raw::header(2, 0);
    r.tensor_info("a", &[i64::MAX as u64], QType::I8 as u32, 0);
    let at = r.pos() + 9 + 4 + 8 + 4;
    r.tensor_info("b", &[i64::MAX as u64], QType::I8 as u32, 1 << 63).pad(32).zeros(64);
    check(&expect_err(r.0), at, "tensor_info[1].offset", "data section size overflows");
}

// ---- G30 and I/O -----------------------------------------------------------------------

#[test]
fn g30_open_truncated_file_directory_and_missing() {
    let dir = std::env::temp_dir().join(format!("tallow-gguf-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cut.gguf");
    let full = small_valid_file();
    std::fs::write(&path, &full[..full.len() - 40]).unwrap();
    assert!(matches!(GgufFile::open(&path), Err(Error::Gguf(ref e)) if e.field == "data"));
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(GgufFile::open(&path), Err(Error::Gguf(ref e)) if e.field == "magic"));
    assert!(matches!(GgufFile::open(&dir), Err(Error::Io { .. })));
    assert!(matches!(GgufFile::open(dir.join("missing.gguf")), Err(Error::Io { .. })));
    std::fs::write(&path, &full).unwrap();
    assert_eq!(GgufFile::open(&path).unwrap().tensors().len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- Extra cases -----------------------------------------------------------------------

#[test]
fn file_offset_embedded_gguf() {
    let gguf = small_valid_file();
    let mut with_prefix = vec![0xAB; 13];
    with_prefix.extend_from_slice(&gguf);
    // Read from the start, the prefix is not a GGUF.
    check(&expect_err(with_prefix.clone()), 0, "magic", "not a GGUF file");
    let f = GgufFile::from_bytes_at(with_prefix.clone(), 13).unwrap();
    let g = GgufFile::from_bytes(gguf.clone()).unwrap();
    assert_eq!(f.start(), 13);
    assert_eq!(f.data_offset(), g.data_offset() + 13);
    assert_eq!(f.metadata(), g.metadata());
    for (a, b) in f.tensors().iter().zip(g.tensors()) {
        assert_eq!(a, b);
        assert_eq!(f.tensor_data(a), g.tensor_data(b));
    }
    // Errors inside an embedded GGUF report offsets in the outer file.
    let mut bad = vec![0u8; 13];
    bad.extend_from_slice(&Raw::header(u64::MAX, 0).0);
    match GgufFile::from_bytes_at(bad, 13) {
        Err(Error::Gguf(e)) => check(&e, 13 + 8, "n_tensors", "cannot fit"),
        r => panic!("{r:?}"),
    }
    check_start_past_end();
}

fn check_start_past_end() {
    match GgufFile::from_bytes_at(vec![0; 4], 5) {
        Err(Error::Gguf(e)) => check(&e, 5, "magic", "past the end"),
        r => panic!("{r:?}"),
    }
}

#[test]
fn bytes_after_end_are_ignored() {
    let mut bytes = small_valid_file();
    let g = GgufFile::from_bytes(bytes.clone()).unwrap();
    bytes.extend_from_slice(b"trailing garbage \x1b[2J");
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(f.metadata(), g.metadata());
    assert_eq!(f.tensors(), g.tensors());
}

#[test]
fn control_characters_in_strings_are_kept_verbatim() {
    let mut r = Raw::header(0, 3);
    r.kv_str("general.name", "a\x1b[2J\nb\0c").kv_str("key\twith\x07bell", "x");
    r.str("general.description").u32(8).u64(3).bytes(b"\xffok");
    let f = GgufFile::from_bytes(r.0).unwrap();
    assert_eq!(f.get_str("general.name").unwrap(), Some("a\x1b[2J\nb\0c"));
    assert_eq!(f.get_str("key\twith\x07bell").unwrap(), Some("x"));
    // Invalid UTF-8 in values is kept readable, not refused.
    assert_eq!(f.get_str("general.description").unwrap(), Some("\u{fffd}ok"));
}

#[test]
fn typed_getters_report_key_and_offset() {
    let mut r = Raw::header(0, 2);
    r.kv_u32("a", 1);
    let at = r.pos();
    r.kv_str("llama.block_count", "many");
    let f = GgufFile::from_bytes(r.0).unwrap();
    match f.get_u64("llama.block_count") {
        Err(Error::Gguf(e)) => {
            check(&e, at, "kv[\"llama.block_count\"]", "expected a non-negative integer, found String")
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(f.get_u64("missing").unwrap(), None);
    assert!(matches!(f.architecture(), Err(Error::Gguf(ref e)) if e.message.contains("general.architecture")));
}
