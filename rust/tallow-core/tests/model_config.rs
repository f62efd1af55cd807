//! Hyperparameter validation (reliability.md G28) and forward passes on tiny synthetic models,
//! written as GGUF bytes in memory by a minimal writer below.

use std::sync::Arc;
use tallow_core::gguf::GgufFile;
use tallow_core::model::{load_model, Arch, ModelConfig, RopeStyle};
use tallow_core::threadpool::ThreadPool;
use tallow_core::Error;

#[derive(Clone)]
enum V {
    U32(u32),
    I32(i32),
    F32(f32),
    Str(&'static str),
}

/// A GGUF v3 file under construction: metadata and F32 tensors.
#[derive(Clone)]
struct Tiny {
    kv: Vec<(String, V)>,
    /// (name, GGML shape, data)
    tensors: Vec<(String, Vec<u64>, Vec<f32>)>,
}

const N_EMBD: u64 = 8;
const N_HEAD: u64 = 2;
const N_HEAD_KV: u64 = 1;
const HEAD_DIM: u64 = 4;
const N_FF: u64 = 16;
const N_VOCAB: u64 = 10;
const N_LAYER: u64 = 2;

impl Tiny {
    fn new(arch: &'static str) -> Tiny {
        let mut t = Tiny { kv: vec![], tensors: vec![] };
        let k = |s: &str| format!("{arch}.{s}");
        t.kv.push(("general.architecture".into(), V::Str(arch)));
        t.kv.push((k("context_length"), V::U32(32)));
        t.kv.push((k("embedding_length"), V::U32(N_EMBD as u32)));
        t.kv.push((k("block_count"), V::U32(N_LAYER as u32)));
        t.kv.push((k("feed_forward_length"), V::U32(N_FF as u32)));
        t.kv.push((k("attention.head_count"), V::U32(N_HEAD as u32)));
        t.kv.push((k("attention.head_count_kv"), V::U32(N_HEAD_KV as u32)));
        t.kv.push((k("attention.layer_norm_rms_epsilon"), V::F32(1e-6)));
        t.kv.push((k("rope.freq_base"), V::F32(10000.0)));
        if arch == "gemma3" {
            t.kv.push((k("attention.sliding_window"), V::U32(3)));
        }
        let mut seed = 1u32;
        let mut tensor = |name: String, shape: Vec<u64>, is_norm: bool| {
            let n = shape.iter().product::<u64>() as usize;
            let data = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    let r = ((seed >> 8) as f32 / (1u32 << 24) as f32) - 0.5;
                    if is_norm {
                        1.0 + 0.2 * r
                    } else {
                        r
                    }
                })
                .collect();
            (name, shape, data)
        };
        let (e, q, kv) = (N_EMBD, N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM);
        t.tensors.push(tensor("token_embd.weight".into(), vec![e, N_VOCAB], false));
        t.tensors.push(tensor("output_norm.weight".into(), vec![e], true));
        for il in 0..N_LAYER {
            let n = |s: &str| format!("blk.{il}.{s}.weight");
            t.tensors.push(tensor(n("attn_norm"), vec![e], true));
            t.tensors.push(tensor(n("attn_q"), vec![e, q], false));
            t.tensors.push(tensor(n("attn_k"), vec![e, kv], false));
            t.tensors.push(tensor(n("attn_v"), vec![e, kv], false));
            t.tensors.push(tensor(n("attn_output"), vec![q, e], false));
            t.tensors.push(tensor(n("ffn_norm"), vec![e], true));
            t.tensors.push(tensor(n("ffn_gate"), vec![e, N_FF], false));
            t.tensors.push(tensor(n("ffn_up"), vec![e, N_FF], false));
            t.tensors.push(tensor(n("ffn_down"), vec![N_FF, e], false));
            if arch == "gemma3" {
                t.tensors.push(tensor(n("attn_q_norm"), vec![HEAD_DIM], true));
                t.tensors.push(tensor(n("attn_k_norm"), vec![HEAD_DIM], true));
                t.tensors.push(tensor(n("post_attention_norm"), vec![e], true));
                t.tensors.push(tensor(n("post_ffw_norm"), vec![e], true));
            }
        }
        t
    }

    fn set(mut self, key: &str, v: V) -> Tiny {
        self.kv.retain(|(k, _)| k != key);
        self.kv.push((key.into(), v));
        self
    }

    fn without_tensor(mut self, name: &str) -> Tiny {
        self.tensors.retain(|(n, ..)| n != name);
        self
    }

    fn bytes(&self) -> Vec<u8> {
        fn s(b: &mut Vec<u8>, x: &str) {
            b.extend((x.len() as u64).to_le_bytes());
            b.extend(x.as_bytes());
        }
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            s(&mut b, k);
            match v {
                V::U32(x) => b.extend(4u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
                V::I32(x) => b.extend(5u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
                V::F32(x) => b.extend(6u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
                V::Str(x) => {
                    b.extend(8u32.to_le_bytes());
                    s(&mut b, x);
                }
            }
        }
        let mut offset = 0u64;
        for (name, shape, data) in &self.tensors {
            s(&mut b, name);
            b.extend((shape.len() as u32).to_le_bytes());
            shape.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(0u32.to_le_bytes()); // F32
            b.extend(offset.to_le_bytes());
            offset += (data.len() as u64 * 4).next_multiple_of(32);
        }
        for (_, _, data) in &self.tensors {
            b.resize(b.len().next_multiple_of(32), 0);
            data.iter().for_each(|x| b.extend(x.to_le_bytes()));
        }
        b.resize(b.len().next_multiple_of(32), 0);
        b
    }

    fn file(&self) -> GgufFile {
        GgufFile::from_bytes(self.bytes()).expect("valid GGUF container")
    }
}

fn config_err(t: Tiny) -> Error {
    let f = t.file();
    let err = ModelConfig::from_gguf(&f).expect_err("config must be rejected");
    // load_model validates the same way before touching any weight.
    assert!(load_model(Arc::new(f)).is_err());
    err
}

fn assert_gguf_err(t: Tiny, field_part: &str) {
    match config_err(t) {
        Error::Gguf(e) => assert!(e.field.contains(field_part), "field {:?} lacks {field_part:?}: {e}", e.field),
        other => panic!("expected a GGUF error about {field_part}, got {other}"),
    }
}

#[test]
fn tiny_models_load_with_expected_config() {
    let c = ModelConfig::from_gguf(&Tiny::new("llama").file()).unwrap();
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!((c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.rope_dim, c.n_vocab), (8, 2, 1, 4, 4, 10));
    assert_eq!((c.rope_style, c.sliding_window, c.tied_embeddings), (RopeStyle::Normal, None, true));
    assert_eq!(c.n_params, 10 * 8 + 8 + 2 * (8 + 64 + 32 + 32 + 64 + 8 + 3 * 128));
    let g = ModelConfig::from_gguf(&Tiny::new("gemma3").file()).unwrap();
    assert_eq!((g.arch, g.rope_style, g.sliding_window), (Arch::Gemma3, RopeStyle::Neox, Some(3)));
    assert_eq!((g.rope_freq_base, g.rope_freq_base_local), (10000.0, 10000.0));
    assert!(g.is_swa_layer(0) && g.is_swa_layer(4) && !g.is_swa_layer(5));
}

#[test]
fn g28_head_counts() {
    assert_gguf_err(Tiny::new("llama").set("llama.attention.head_count", V::U32(0)), "head_count");
    assert_gguf_err(Tiny::new("llama").set("llama.attention.head_count_kv", V::U32(0)), "head_count_kv");
    // 2 query heads cannot share 3 KV heads.
    assert_gguf_err(Tiny::new("llama").set("llama.attention.head_count_kv", V::U32(3)), "head_count_kv");
    // 8 % 3 != 0 and no explicit key_length.
    assert_gguf_err(
        Tiny::new("llama").set("llama.attention.head_count", V::U32(3)).set("llama.attention.head_count_kv", V::U32(3)),
        "head_count",
    );
    // A negative count stored as i32 is not a count.
    assert_gguf_err(Tiny::new("llama").set("llama.attention.head_count", V::I32(-2)), "head_count");
}

#[test]
fn g28_rope_and_sizes() {
    assert_gguf_err(Tiny::new("llama").set("llama.rope.dimension_count", V::U32(6)), "rope.dimension_count");
    assert_gguf_err(Tiny::new("llama").set("llama.rope.dimension_count", V::U32(3)), "rope.dimension_count");
    assert_gguf_err(Tiny::new("llama").set("llama.block_count", V::U32(u32::MAX)), "block_count");
    assert_gguf_err(Tiny::new("llama").set("llama.block_count", V::U32(0)), "block_count");
    assert_gguf_err(Tiny::new("llama").set("llama.context_length", V::U32(0)), "context_length");
    assert_gguf_err(Tiny::new("llama").set("llama.embedding_length", V::U32(0)), "embedding_length");
    // More layers than the file has tensors for: caught at the first missing tensor.
    assert_gguf_err(Tiny::new("llama").set("llama.block_count", V::U32(3)), "blk.2.attn_norm");
    // Dimensions that disagree with the tensor shapes.
    assert_gguf_err(Tiny::new("llama").set("llama.feed_forward_length", V::U32(12)), "ffn_gate");
    assert_gguf_err(Tiny::new("llama").set("llama.vocab_size", V::U32(11)), "vocab_size");
    assert_gguf_err(Tiny::new("llama").set("llama.attention.key_length", V::U32(8)), "attn_q");
}

#[test]
fn g28_floats() {
    for key in ["llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base"] {
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert_gguf_err(Tiny::new("llama").set(key, V::F32(bad)), key);
        }
    }
}

#[test]
fn missing_keys_tensors_and_unsupported_architectures() {
    let mut t = Tiny::new("llama");
    t.kv.retain(|(k, _)| k != "llama.embedding_length");
    assert_gguf_err(t, "embedding_length");
    let mut t = Tiny::new("llama");
    t.kv.retain(|(k, _)| k != "llama.attention.layer_norm_rms_epsilon");
    assert_gguf_err(t, "layer_norm_rms_epsilon");
    assert_gguf_err(Tiny::new("llama").without_tensor("blk.1.ffn_down.weight"), "blk.1.ffn_down");
    assert_gguf_err(Tiny::new("gemma3").without_tensor("blk.0.attn_q_norm.weight"), "attn_q_norm");

    match config_err(Tiny::new("llama").set("general.architecture", V::Str("mamba"))) {
        Error::UnsupportedModel(m) => assert!(m.contains("mamba"), "{m}"),
        other => panic!("{other}"),
    }
    assert!(matches!(config_err(Tiny::new("llama").set("llama.expert_count", V::U32(8))), Error::UnsupportedModel(_)));
    assert!(matches!(
        config_err(Tiny::new("llama").set("llama.rope.scaling.type", V::Str("yarn"))),
        Error::UnsupportedModel(_)
    ));
}

/// Runs `tokens` in one batch and one at a time; both must agree and be finite.
fn forward_both_ways(arch: &'static str, tokens: &[u32]) -> Vec<f32> {
    let model = load_model(Arc::new(Tiny::new(arch).file())).unwrap();
    let pool = ThreadPool::new(2);
    let mut cache = model.new_cache(32).unwrap();
    let mut scratch = model.new_scratch(8).unwrap();
    let all = model.forward(tokens, &mut cache, &mut scratch, &pool, true).unwrap().to_vec();
    assert_eq!(all.len(), tokens.len() * 10);
    assert!(all.iter().all(|v| v.is_finite()));
    let mut cache = model.new_cache(32).unwrap();
    for (i, &t) in tokens.iter().enumerate() {
        let l = model.forward(&[t], &mut cache, &mut scratch, &pool, false).unwrap();
        let d = l.iter().zip(&all[i * 10..(i + 1) * 10]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(d < 1e-5, "{arch} position {i}: {d}");
    }
    assert!(matches!(model.new_cache(33), Err(Error::InvalidArgument { param: "n_ctx", .. })));
    all
}

#[test]
fn tiny_llama_and_gemma3_forward() {
    let tokens = [1, 5, 9, 0, 3, 3, 7, 2, 8, 4, 6];
    let l = forward_both_ways("llama", &tokens);
    let g = forward_both_ways("gemma3", &tokens);
    assert_ne!(l, g);
}

/// Window 3: a query sees itself and the 2 positions before it. Both tiny layers slide, so
/// position 5 sees layer-0 outputs at 3..=5, which saw tokens 1..=5: token 0 cannot matter.
#[test]
fn sliding_window_bounds_the_receptive_field() {
    let model = load_model(Arc::new(Tiny::new("gemma3").file())).unwrap();
    let pool = ThreadPool::new(1);
    let mut scratch = model.new_scratch(8).unwrap();
    let mut last = |tokens: &[u32]| {
        let mut cache = model.new_cache(32).unwrap();
        model.forward(tokens, &mut cache, &mut scratch, &pool, false).unwrap().to_vec()
    };
    let a = last(&[1, 5, 9, 0, 3, 3]);
    let b = last(&[7, 5, 9, 0, 3, 3]);
    assert_eq!(a, b, "token 0 is outside the 2-layer x window-3 receptive field of position 5");
    let c = last(&[1, 2, 9, 0, 3, 3]);
    assert_ne!(a, c, "token 1 is inside it");
}
