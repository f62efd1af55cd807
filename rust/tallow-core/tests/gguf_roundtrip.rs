//! Property tests: writer -> reader round trips for every value type and every QType, and
//! random byte flips / truncations of a valid file never panic.

use proptest::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use tallow_core::gguf::{render_inspect, Array, GgufFile, GgufWriter, Value, GGUF_MAX_ALIGNMENT};
use tallow_core::quant::QType;
use tallow_core::Error;

// Floats are finite so `PartialEq` on the round-tripped values is meaningful.
fn f32s() -> impl Strategy<Value = f32> {
    -1e30f32..1e30
}
fn f64s() -> impl Strategy<Value = f64> {
    -1e300f64..1e300
}
fn strings() -> impl Strategy<Value = String> {
    ".{0,12}"
}

fn array() -> impl Strategy<Value = Array> {
    let n = 0..12usize;
    prop_oneof![
        prop::collection::vec(any::<u8>(), n.clone()).prop_map(Array::U8),
        prop::collection::vec(any::<i8>(), n.clone()).prop_map(Array::I8),
        prop::collection::vec(any::<u16>(), n.clone()).prop_map(Array::U16),
        prop::collection::vec(any::<i16>(), n.clone()).prop_map(Array::I16),
        prop::collection::vec(any::<u32>(), n.clone()).prop_map(Array::U32),
        prop::collection::vec(any::<i32>(), n.clone()).prop_map(Array::I32),
        prop::collection::vec(f32s(), n.clone()).prop_map(Array::F32),
        prop::collection::vec(any::<bool>(), n.clone()).prop_map(Array::Bool),
        prop::collection::vec(strings(), n.clone()).prop_map(Array::String),
        prop::collection::vec(any::<u64>(), n.clone()).prop_map(Array::U64),
        prop::collection::vec(any::<i64>(), n.clone()).prop_map(Array::I64),
        prop::collection::vec(f64s(), n).prop_map(Array::F64),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        f32s().prop_map(Value::F32),
        any::<bool>().prop_map(Value::Bool),
        strings().prop_map(Value::String),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        f64s().prop_map(Value::F64),
        array().prop_map(Value::Array),
    ]
}

/// A tensor of any QType: the row is a whole number of blocks, other dims are small.
#[derive(Debug, Clone)]
struct TensorSpec {
    qtype: QType,
    shape: Vec<u64>,
    seed: u8,
}

fn tensor() -> impl Strategy<Value = TensorSpec> {
    (prop::sample::select(QType::ALL.to_vec()), 0..3u64, prop::collection::vec(0..4u64, 0..3), any::<u8>()).prop_map(
        |(qtype, blocks, rest, seed)| {
            let mut shape = vec![blocks * qtype.block_size() as u64];
            shape.extend(rest);
            TensorSpec { qtype, shape, seed }
        },
    )
}

fn n_bytes(t: &TensorSpec) -> usize {
    let n: u64 = t.shape.iter().product();
    (n / t.qtype.block_size() as u64) as usize * t.qtype.type_size()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn roundtrip_metadata_and_tensors(
        version in 2u32..=3,
        align_log2 in prop::option::of(0u32..13),
        kvs in prop::collection::vec((strings(), value()), 0..10),
        tensors in prop::collection::vec(tensor(), 0..6),
    ) {
        let mut w = GgufWriter::new();
        w.set_version(version);
        if let Some(a) = align_log2 {
            w.set_alignment(1 << a);
        }
        // The index keeps keys unique and non-empty.
        let kvs: Vec<(String, Value)> = kvs.into_iter().enumerate().map(|(i, (k, v))| (format!("k{i}.{k}"), v)).collect();
        for (k, v) in &kvs {
            w.add_kv(k.clone(), v.clone());
        }
        let datas: Vec<Vec<u8>> = tensors
            .iter()
            .map(|t| (0..n_bytes(t)).map(|i| (i as u8).wrapping_mul(31).wrapping_add(t.seed)).collect())
            .collect();
        for (i, (t, d)) in tensors.iter().zip(&datas).enumerate() {
            w.add_tensor(format!("blk.{i}.{}", t.qtype), &t.shape, t.qtype, d.clone()).unwrap();
        }
        let bytes = w.to_bytes();
        let f = GgufFile::from_bytes(bytes).unwrap();
        prop_assert_eq!(f.version(), version);
        prop_assert_eq!(f.alignment(), align_log2.map_or(32, |a| 1u64 << a));
        let meta: Vec<(String, Value)> = f.metadata().iter().filter(|(k, _)| k != "general.alignment").cloned().collect();
        prop_assert_eq!(&meta, &kvs);
        prop_assert_eq!(f.tensors().len(), tensors.len());
        for ((info, t), d) in f.tensors().iter().zip(&tensors).zip(&datas) {
            prop_assert_eq!(info.qtype, t.qtype);
            prop_assert_eq!(&info.shape, &t.shape);
            prop_assert_eq!(info.n_elements, t.shape.iter().product::<u64>());
            prop_assert_eq!(info.offset % f.alignment(), 0);
            prop_assert_eq!(f.tensor_data(info), &d[..]);
        }
        // Read-from-offset mode gives the same file.
        let mut shifted = vec![0x55; 7];
        shifted.extend_from_slice(f.bytes());
        let g = GgufFile::from_bytes_at(shifted, 7).unwrap();
        prop_assert_eq!(g.metadata(), f.metadata());
        for (a, b) in g.tensors().iter().zip(f.tensors()) {
            prop_assert_eq!(g.tensor_data(a), f.tensor_data(b));
        }
    }
}

fn seed_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::String("llama".into()));
    w.add_kv("general.alignment", Value::U32(32));
    w.add_kv(
        "tokenizer.ggml.tokens",
        Value::Array(Array::String(vec!["<s>".into(), "a".into(), "".into(), "bc".into()])),
    );
    w.add_kv("tokenizer.ggml.scores", Value::Array(Array::F32(vec![0.0, -1.0, -2.0, -3.0])));
    w.add_kv("llama.block_count", Value::U32(1));
    w.add_kv("flag", Value::Bool(true));
    w.add_f32_tensor("token_embd.weight", &[4, 4], &[0.5; 16]).unwrap();
    w.add_tensor("blk.0.attn_q.weight", &[32, 2], QType::Q4_0, vec![3; 36]).unwrap();
    w.add_tensor("blk.0.ffn_up.weight", &[256], QType::Q4_K, vec![1; 144]).unwrap();
    w.to_bytes()
}

/// Parses `bytes` and, if it loads, touches every tensor and renders the report.
fn parse_all(bytes: Vec<u8>) -> Result<(), String> {
    let len = bytes.len() as u64;
    match GgufFile::from_bytes(bytes) {
        Ok(f) => {
            for t in f.tensors() {
                if f.tensor_data(t).len() as u64 != t.n_bytes {
                    return Err(format!("tensor {:?} view has the wrong size", t.name));
                }
            }
            let _ = render_inspect(&f, "fuzz.gguf");
            Ok(())
        }
        // The data section may start past a file cut short inside its padding.
        Err(Error::Gguf(e)) if e.offset <= len + GGUF_MAX_ALIGNMENT => Ok(()),
        Err(Error::Gguf(e)) => Err(format!("offset past the file: {e}")),
        Err(e) => Err(format!("non-GGUF error {e}")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn byte_flips_and_truncations_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = seed_file();
        for (i, b) in &flips {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len()));
        }
        let r = catch_unwind(AssertUnwindSafe(|| parse_all(bytes.clone())));
        match r {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => prop_assert!(false, "{msg} for flips {flips:?} cut {cut:?}"),
            Err(_) => prop_assert!(false, "panic for flips {flips:?} cut {cut:?}"),
        }
    }

    /// Header and count fields get targeted values (the random flips rarely hit them hard).
    #[test]
    fn hostile_words_in_header_never_panic(pos in 0usize..400, word in prop_oneof![
        Just(u64::MAX), Just(0u64), Just(1u64 << 63), Just(1u64 << 31), Just(u32::MAX as u64), any::<u64>()
    ]) {
        let mut bytes = seed_file();
        let pos = pos.min(bytes.len() - 8);
        bytes[pos..pos + 8].copy_from_slice(&word.to_le_bytes());
        let r = catch_unwind(AssertUnwindSafe(|| parse_all(bytes.clone())));
        prop_assert!(matches!(r, Ok(Ok(()))), "failure at pos {pos} word {word:#x}: {r:?}");
    }
}
