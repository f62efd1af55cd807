//! The two real models tokenize like llama.cpp (ids from llama-cpp-python 0.3.36, with BOS as
//! each model's metadata asks): Chinese, code, emoji with ZWJ sequences, whitespace runs, and chat
//! markup with special-token parsing on and off.

use std::path::PathBuf;

use tallow_core::gguf::GgufFile;
use tallow_core::tokenizer::{StreamDecoder, Tokenizer};

fn load(name: &str) -> Tokenizer {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/.models").join(name);
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(&file).unwrap()
}

/// (text, parse special tokens, expected ids with add_bos = true)
type Case = (&'static str, bool, &'static [u32]);

const SMOLLM2: &[Case] = &[
    ("Hello world! 123", false, &[19556, 905, 17, 216, 33, 34, 35]),
    ("你好，世界！我想在apple工作1314151天～", false, &[18645, 250, 48392, 138, 12831, 7906, 240, 178, 239, 230, 8083, 219, 19805, 235, 177, 221, 128, 32632, 21949, 36149, 115, 40994, 33, 35, 33, 36, 33, 37, 33, 18614, 119, 186, 138, 248]),
    ("fn main() {\n    println!(\"{}\", 42);\n}\n\tdef f(x): return x**2  # comment", false, &[7853, 1085, 1000, 1662, 472, 1628, 34115, 17, 43331, 1002, 216, 36, 34, 4258, 198, 109, 198, 197, 1604, 275, 24, 104, 727, 1003, 1792, 828, 34, 216, 907, 5189]),
    ("Emojis 🦙🚀 😶‍🌫️ ✅ and ZWJ 👨‍👩‍👧 done", false, &[10809, 21658, 271, 15107, 116, 243, 10813, 244, 218, 40303, 131, 321, 231, 10813, 230, 121, 31752, 4636, 246, 223, 284, 1777, 71, 58, 15107, 235, 118, 321, 231, 10813, 235, 119, 321, 231, 10813, 235, 117, 2294]),
    ("   leading spaces and trailing   \n\n\n", false, &[256, 2899, 5600, 284, 35079, 333, 16506]),
    ("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n", true, &[1, 9690, 198, 2683, 359, 5356, 30, 2, 198, 1, 4093, 198, 26843, 665, 17, 2, 198, 1, 520, 9531, 198]),
    ("<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n", true, &[44, 3738, 79, 1714, 79, 20589, 46, 4093, 198, 1780, 314, 216, 34, 27, 34, 15137, 486, 79, 1714, 79, 20589, 46, 198, 44, 3738, 79, 1714, 79, 20589, 46, 3980, 198]),
    ("<|im_start|>user not parsed<|im_end|> <start_of_turn>", false, &[44, 108, 306, 79, 3738, 108, 46, 4093, 441, 26259, 44, 108, 306, 79, 486, 108, 46, 2067, 3738, 79, 1714, 79, 20589, 46]),
];

const GEMMA3: &[Case] = &[
    ("Hello world! 123", false, &[2, 9259, 1902, 236888, 236743, 236770, 236778, 236800]),
    ("你好，世界！我想在apple工作1314151天～", false, &[2, 144626, 236900, 12811, 237354, 62133, 237075, 17641, 11700, 236770, 236800, 236770, 236812, 236770, 236810, 236770, 237471, 238352]),
    ("fn main() {\n    println!(\"{}\", 42);\n}\n\tdef f(x): return x**2  # comment", false, &[2, 15059, 1689, 825, 642, 107, 140, 4629, 183228, 236743, 236812, 236778, 626, 107, 236783, 107, 255968, 2063, 517, 236769, 236781, 1473, 994, 1123, 1018, 236778, 138, 236865, 5739]),
    ("Emojis 🦙🚀 😶‍🌫️ ✅ and ZWJ 👨‍👩‍👧 done", false, &[2, 152501, 236743, 478, 397, 404, 391, 242015, 236743, 247717, 237243, 248989, 238178, 113452, 532, 1491, 236824, 236863, 236743, 243874, 237243, 243767, 237243, 244814, 3028]),
    ("   leading spaces and trailing   \n\n\n", false, &[2, 139, 26016, 9952, 532, 45330, 139, 109]),
    ("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n", true, &[2, 236820, 236909, 548, 236779, 3041, 111038, 9731, 107, 3048, 659, 11045, 21603, 236909, 548, 236779, 643, 111038, 107, 236820, 236909, 548, 236779, 3041, 111038, 2364, 107, 10979, 993, 200322, 236909, 548, 236779, 643, 111038, 107, 236820, 236909, 548, 236779, 3041, 111038, 111457, 107]),
    ("<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n", true, &[2, 105, 2364, 107, 3689, 563, 236743, 236778, 236862, 236778, 236881, 106, 107, 105, 4368, 107]),
    ("<|im_start|>user not parsed<|im_end|> <start_of_turn>", false, &[2, 236820, 236909, 548, 236779, 3041, 111038, 2364, 711, 45271, 236820, 236909, 548, 236779, 643, 111038, 655, 3041, 236779, 1340, 236779, 887, 236813]),
];

fn check(tok: &Tokenizer, cases: &[Case]) {
    for &(text, special, want) in cases {
        let got = tok.encode(text, true, special).unwrap();
        assert_eq!(got, want, "{text:?} (special={special})");
        // Decoding gives the text back (minus BOS, and the SPM space prefix where there is one).
        let decoded = tok.decode(&got, !special);
        assert!(decoded.ends_with(text.trim_start()), "{text:?} decoded to {decoded:?}");
        let mut stream = StreamDecoder::new(!special);
        let mut streamed = String::new();
        for &id in &got {
            streamed.extend(stream.push(tok, id));
        }
        streamed.extend(stream.flush());
        assert_eq!(streamed, decoded);
    }
}

#[test]
fn smollm2_matches_llama_cpp() {
    let tok = load("smollm2-135m-q4_1.gguf");
    assert!(!tok.add_bos());
    assert_eq!(tok.n_vocab(), 49152);
    check(&tok, SMOLLM2);
    // <|im_end|> ends a chat turn, <|endoftext|> is EOS.
    assert!(tok.is_eog(2) && tok.eos() == Some(2));
    assert!(tok.is_eog(0));
    assert!(!tok.is_eog(1));
}

#[test]
fn gemma3_matches_llama_cpp() {
    let t0 = std::time::Instant::now();
    let tok = load("gemma-3-270m-q4_k_m.gguf");
    eprintln!("gemma3 vocab loaded in {:?}", t0.elapsed());
    assert!(tok.add_bos());
    assert_eq!(tok.bos(), Some(2));
    assert_eq!(tok.n_vocab(), 262144);
    check(&tok, GEMMA3);
    let end_of_turn = tok.encode("<end_of_turn>", false, true).unwrap();
    assert_eq!(end_of_turn.len(), 1);
    assert!(tok.is_eog(end_of_turn[0]) && tok.is_eog(1));
}

#[test]
fn gemma3_long_prompt_is_fast() {
    let tok = load("gemma-3-270m-q4_k_m.gguf");
    let text = "The quick brown fox jumps over the lazy dog. 你好世界 🦙 fn main() {} ".repeat(400);
    let t0 = std::time::Instant::now();
    let ids = tok.encode(&text, true, true).unwrap();
    let dt = t0.elapsed();
    eprintln!("{} bytes -> {} tokens in {dt:?}", text.len(), ids.len());
    // Generous for a debug build on a shared machine; quadratic behaviour would take far longer.
    assert!(dt.as_secs_f64() < 5.0, "{dt:?}");
    assert_eq!(tok.decode(&ids, true), text);
}
