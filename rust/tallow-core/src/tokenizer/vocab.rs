//! The token table from GGUF `tokenizer.ggml.*` metadata: texts, scores, attributes, special ids
//! and the flags llama.cpp derives from them. Everything read from the file is validated here, so
//! the encoders can index without checks (G26, G27).

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::gguf::Array;
use crate::gguf::GgufFile;

/// Longest token text accepted. Real vocabularies stay under a few hundred bytes; a huge entry is a
/// hostile file (G27), and bounding it bounds every per-token buffer.
pub(crate) const MAX_TOKEN_BYTES: usize = 1 << 16;

/// Per-token attributes, llama.cpp's `llama_token_attr` bits.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) struct TokenAttr(pub u16);

impl TokenAttr {
    pub const UNDEFINED: TokenAttr = TokenAttr(0);
    pub const UNKNOWN: TokenAttr = TokenAttr(1 << 0);
    pub const UNUSED: TokenAttr = TokenAttr(1 << 1);
    pub const NORMAL: TokenAttr = TokenAttr(1 << 2);
    pub const CONTROL: TokenAttr = TokenAttr(1 << 3);
    pub const USER_DEFINED: TokenAttr = TokenAttr(1 << 4);
    pub const BYTE: TokenAttr = TokenAttr(1 << 5);
    pub const LSTRIP: TokenAttr = TokenAttr(1 << 7);
    pub const RSTRIP: TokenAttr = TokenAttr(1 << 8);

    pub fn has(self, any: TokenAttr) -> bool {
        self.0 & any.0 != 0
    }

    fn set(&mut self, a: TokenAttr, on: bool) {
        if on {
            self.0 |= a.0;
        } else {
            self.0 &= !a.0;
        }
    }

    /// GGUF `tokenizer.ggml.token_type` value -> attribute.
    fn from_gguf_type(t: i64) -> TokenAttr {
        match t {
            1 => TokenAttr::NORMAL,
            2 => TokenAttr::UNKNOWN,
            3 => TokenAttr::CONTROL,
            4 => TokenAttr::USER_DEFINED,
            5 => TokenAttr::UNUSED,
            6 => TokenAttr::BYTE,
            _ => TokenAttr::UNDEFINED,
        }
    }
}

/// Which algorithm turns text into ids (`tokenizer.ggml.model`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum VocabKind {
    /// `llama`: SentencePiece BPE, score-ordered merges, `<0xXX>` byte fallback.
    Spm,
    /// `gpt2`: byte-level BPE with a regex pre-tokenizer chosen by `tokenizer.ggml.pre`.
    Bpe,
    /// `gemma4`: rank-ordered BPE over raw UTF-8 with `▁` for spaces and `<0xXX>` byte fallback.
    Gemma4,
    /// `bert`: WordPiece over BERT-normalized words, `▁` marks a word start.
    Wpm,
}

pub(crate) struct Vocab {
    pub kind: VocabKind,
    /// `tokenizer.ggml.pre`, empty when absent.
    pub pre: String,
    pub texts: Vec<String>,
    pub scores: Vec<f32>,
    pub attrs: Vec<TokenAttr>,
    pub token_to_id: HashMap<String, u32>,
    /// Byte -> `<0xXX>` token (SPM, Gemma 4), or the single-character token for SPM vocabularies
    /// without byte tokens.
    pub byte_to_token: [Option<u32>; 256],
    /// BPE merges as (left, right), in rank order. Empty for SPM and WordPiece.
    pub merges: Vec<(String, String)>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    /// End-of-generation ids, sorted.
    pub eog: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_sep: bool,
    /// SPM: prepend a space to text that starts the prompt or follows a special token.
    pub add_space_prefix: bool,
    /// WordPiece normalizer options.
    pub lowercase: bool,
    pub strip_accents: bool,
}

fn kv_err(file: &GgufFile, key: &str, msg: impl Into<String>) -> Error {
    Error::gguf(file.offset_of(key), format!("kv[{key:?}]"), msg)
}

/// An optional per-token numeric array; its length must equal the vocabulary size (G26).
fn per_token_f32(file: &GgufFile, key: &str, n: usize) -> Result<Option<Vec<f32>>> {
    let Some(arr) = file.get_array(key)? else {
        return Ok(None);
    };
    let v: Vec<f32> = match arr {
        Array::F32(v) => v.clone(),
        Array::I32(v) => v.iter().map(|&x| x as f32).collect(),
        other => return Err(kv_err(file, key, format!("expected f32 array, found {}", other.element_type()))),
    };
    if v.len() != n {
        return Err(kv_err(file, key, format!("has {} entries but the vocabulary has {n} tokens", v.len())));
    }
    Ok(Some(v))
}

fn per_token_i64(file: &GgufFile, key: &str, n: usize) -> Result<Option<Vec<i64>>> {
    let Some(arr) = file.get_array(key)? else {
        return Ok(None);
    };
    let v: Vec<i64> = match arr {
        Array::I32(v) => v.iter().map(|&x| x as i64).collect(),
        Array::U32(v) => v.iter().map(|&x| x as i64).collect(),
        Array::I8(v) => v.iter().map(|&x| x as i64).collect(),
        Array::U8(v) => v.iter().map(|&x| x as i64).collect(),
        other => return Err(kv_err(file, key, format!("expected i32 array, found {}", other.element_type()))),
    };
    if v.len() != n {
        return Err(kv_err(file, key, format!("has {} entries but the vocabulary has {n} tokens", v.len())));
    }
    Ok(Some(v))
}

/// `<0xHH>` -> HH. Strict: exactly two hex digits.
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Token texts that end generation, as llama.cpp recognises them.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Fill-in-the-middle tokens: all are control tokens; pad/repo/file-separator also end generation.
const FIM_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
];
const FIM_EOG_TEXTS: &[&str] = &[
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "[PAD]",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

impl Vocab {
    pub fn n_tokens(&self) -> usize {
        self.texts.len()
    }

    pub fn load(file: &GgufFile) -> Result<Vocab> {
        const MODEL: &str = "tokenizer.ggml.model";
        let model = file
            .get_str(MODEL)?
            .ok_or_else(|| Error::gguf(0, format!("kv[{MODEL:?}]"), "missing tokenizer.ggml.model"))?;
        let kind = match model {
            "llama" => VocabKind::Spm,
            "gpt2" => VocabKind::Bpe,
            "gemma4" => VocabKind::Gemma4,
            "bert" => VocabKind::Wpm,
            other => return Err(Error::unsupported(format!("tokenizer model '{other}'"))),
        };
        let pre = file.get_str("tokenizer.ggml.pre")?.unwrap_or("").to_string();

        const TOKENS: &str = "tokenizer.ggml.tokens";
        let tokens = match file.get_array(TOKENS)? {
            Some(Array::String(v)) => v,
            Some(other) => {
                return Err(kv_err(file, TOKENS, format!("expected string array, found {}", other.element_type())))
            }
            None => return Err(Error::gguf(0, format!("kv[{TOKENS:?}]"), "missing tokenizer.ggml.tokens")),
        };
        let n = tokens.len();
        if n == 0 || n > i32::MAX as usize {
            return Err(kv_err(file, TOKENS, format!("vocabulary size {n} out of range")));
        }
        let scores = per_token_f32(file, "tokenizer.ggml.scores", n)?.unwrap_or_else(|| vec![0.0; n]);
        let types = per_token_i64(file, "tokenizer.ggml.token_type", n)?;

        let mut texts = Vec::with_capacity(n);
        let mut attrs = Vec::with_capacity(n);
        let mut token_to_id = HashMap::with_capacity(n);
        let mut byte_to_token = [None; 256];
        for (i, t) in tokens.iter().enumerate() {
            if t.len() > MAX_TOKEN_BYTES {
                return Err(kv_err(file, TOKENS, format!("token {i} is {} bytes long", t.len())));
            }
            // llama.cpp names empty tokens so that lookups and special-token matching stay sane.
            let text = if t.is_empty() { format!("[EMPTY_{i}]") } else { t.clone() };
            let attr = types.as_ref().map_or(TokenAttr::NORMAL, |ty| TokenAttr::from_gguf_type(ty[i]));
            if attr.has(TokenAttr::BYTE) {
                let b = parse_byte_token(&text)
                    .ok_or_else(|| kv_err(file, TOKENS, format!("byte token {i} has malformed text {text:?}")))?;
                byte_to_token[b as usize].get_or_insert(i as u32);
            }
            if token_to_id.insert(text.clone(), i as u32).is_some() {
                return Err(kv_err(file, TOKENS, format!("duplicate token {text:?} at id {i}")));
            }
            texts.push(text);
            attrs.push(attr);
        }
        if kind == VocabKind::Spm {
            // SPM vocabularies without `<0xXX>` tokens fall back to single-character tokens.
            for b in 0u8..128 {
                if byte_to_token[b as usize].is_none() {
                    byte_to_token[b as usize] = token_to_id.get((b as char).encode_utf8(&mut [0; 4]) as &str).copied();
                }
            }
        }

        let merges = match kind {
            VocabKind::Bpe | VocabKind::Gemma4 => load_merges(file)?,
            _ => Vec::new(),
        };

        let mut v = Vocab {
            kind,
            pre,
            texts,
            scores,
            attrs,
            token_to_id,
            byte_to_token,
            merges,
            bos: None,
            eos: None,
            unk: None,
            sep: None,
            eog: Vec::new(),
            add_bos: false,
            add_eos: false,
            add_sep: false,
            add_space_prefix: false,
            lowercase: true,
            strip_accents: true,
        };
        v.load_special(file)?;
        v.mark_special_texts(file)?;
        Ok(v)
    }

    /// Special ids, `add_*` flags and per-model defaults, following llama.cpp's `llama_vocab::load`.
    fn load_special(&mut self, file: &GgufFile) -> Result<()> {
        let n = self.n_tokens() as u64;
        // Defaults per tokenizer type; a default outside the vocabulary is simply absent.
        let (bos, eos, unk, sep): (Option<u64>, Option<u64>, Option<u64>, Option<u64>) = match self.kind {
            VocabKind::Spm => (Some(1), Some(2), Some(0), None),
            VocabKind::Wpm => (Some(101), None, Some(100), Some(102)),
            VocabKind::Bpe => (Some(11), Some(11), None, None),
            VocabKind::Gemma4 => (None, None, None, None),
        };
        let in_range = |d: Option<u64>| d.filter(|&d| d < n).map(|d| d as u32);
        let read = |key: &str, default: Option<u32>| -> Result<Option<u32>> {
            match file.get_i64(key)? {
                // Some converters write -1 for "none".
                Some(id) if id < 0 => Ok(None),
                Some(id) if id as u64 >= n => {
                    Err(kv_err(file, key, format!("special token id {id} is outside the vocabulary of {n} tokens")))
                }
                Some(id) => Ok(Some(id as u32)),
                None => Ok(default),
            }
        };
        self.bos = read("tokenizer.ggml.bos_token_id", in_range(bos))?;
        self.eos = read("tokenizer.ggml.eos_token_id", in_range(eos))?;
        self.unk = read("tokenizer.ggml.unknown_token_id", in_range(unk))?;
        self.sep = read("tokenizer.ggml.seperator_token_id", in_range(sep))?;
        let eot = read("tokenizer.ggml.eot_token_id", None)?;
        let eom = read("tokenizer.ggml.eom_token_id", None)?;
        // Validated for G26 even though only the end-of-generation set uses them.
        read("tokenizer.ggml.padding_token_id", None)?;
        read("tokenizer.ggml.mask_token_id", None)?;

        let (mut add_bos, mut add_eos, mut add_sep, mut add_space_prefix) = match self.kind {
            VocabKind::Spm => (true, false, false, true),
            VocabKind::Wpm => (true, false, true, false),
            VocabKind::Bpe | VocabKind::Gemma4 => (false, false, false, false),
        };
        if self.kind == VocabKind::Bpe && is_llama3_pre(&self.pre) {
            add_bos = true;
        }
        if matches!(self.pre.as_str(), "chatglm-bpe" | "glm4") {
            self.bos = None;
        }
        if let Some(b) = file.get_bool("tokenizer.ggml.add_space_prefix")? {
            add_space_prefix = b;
        }
        if let Some(b) = file.get_bool("tokenizer.ggml.add_bos_token")? {
            add_bos = b;
        }
        if let Some(b) = file.get_bool("tokenizer.ggml.add_eos_token")? {
            add_eos = b;
        }
        if let Some(b) = file.get_bool("tokenizer.ggml.add_sep_token")? {
            add_sep = b;
        }
        // Gemma 4 needs BOS whatever its metadata says (llama.cpp applies the same override).
        if self.kind == VocabKind::Gemma4 {
            add_bos = true;
        }
        for (flag, id, what) in [
            (add_bos, self.bos, "add_bos_token"),
            (add_eos, self.eos, "add_eos_token"),
            (add_sep, self.sep, "add_sep_token"),
        ] {
            if flag && id.is_none() {
                return Err(Error::gguf(
                    0,
                    format!("kv[\"tokenizer.ggml.{what}\"]"),
                    format!("{what} is set but the token id is not"),
                ));
            }
        }
        self.add_bos = add_bos;
        self.add_eos = add_eos;
        self.add_sep = add_sep;
        self.add_space_prefix = self.kind == VocabKind::Spm && add_space_prefix;
        if let Some(b) = file.get_bool("tokenizer.ggml.normalizer.lowercase")? {
            self.lowercase = b;
        }
        self.strip_accents = self.lowercase;
        if let Some(b) = file.get_bool("tokenizer.ggml.normalizer.strip_accents")? {
            self.strip_accents = b;
        }

        let mut eog: Vec<u32> = Vec::new();
        for &t in EOG_TEXTS.iter().chain(FIM_EOG_TEXTS) {
            if let Some(&id) = self.token_to_id.get(t) {
                // EOG-looking tokens converted as normal text are control tokens, as in llama.cpp.
                self.attrs[id as usize].set(TokenAttr::CONTROL, true);
                eog.push(id);
            }
        }
        eog.extend(self.eos.into_iter().chain(eot).chain(eom));
        eog.sort_unstable();
        eog.dedup();
        let eog_id = |t: &str| self.token_to_id.get(t).copied().filter(|id| eog.contains(id));
        let (ret, call, calls, flush, end) =
            (eog_id("<|return|>"), eog_id("<|call|>"), eog_id("<|calls|>"), eog_id("<|flush|>"), eog_id("<|end|>"));
        let (tool_response, s_close) = (eog_id("<|tool_response>"), eog_id("</s>"));
        // gpt-oss and solar-open use <|end|> between messages: not an end of generation there.
        if let Some(end) = end {
            if (ret.is_some() && call.is_some()) || (calls.is_some() && flush.is_some()) {
                eog.retain(|&id| id != end);
                self.attrs[end as usize] = TokenAttr::USER_DEFINED;
            }
        }
        // Gemma 4 keeps </s> as ordinary text.
        if let (Some(_), Some(s)) = (tool_response, s_close) {
            eog.retain(|&id| id != s);
            self.attrs[s as usize] = TokenAttr::NORMAL;
        }
        self.eog = eog;
        Ok(())
    }

    /// Attribute fix-ups llama.cpp applies by token text and model name.
    fn mark_special_texts(&mut self, file: &GgufFile) -> Result<()> {
        for &t in FIM_TEXTS {
            if let Some(&id) = self.token_to_id.get(t) {
                self.attrs[id as usize].set(TokenAttr::CONTROL, true);
            }
        }
        for (text, attr) in self.texts.iter().zip(self.attrs.iter_mut()) {
            if attr.has(TokenAttr::CONTROL) && text.contains("unused") {
                attr.set(TokenAttr::UNUSED, true);
            }
        }
        let name = file.get_str("general.name")?.unwrap_or("").to_lowercase();
        let arch = file.get_str("general.architecture")?.unwrap_or("");
        if ["jina-v2-de", "jina-v2-es", "jina-v2-code"].iter().any(|p| self.pre.contains(p))
            || ["nomic-bert-moe", "jina-bert-v3"].iter().any(|a| arch.contains(a))
        {
            if let Some(&id) = self.token_to_id.get("<mask>") {
                self.attrs[id as usize].set(TokenAttr::LSTRIP, true);
            }
        } else if name.contains("phi-3") || name.contains("phi3") {
            // Phi-3's special tokens swallow the whitespace after them.
            for a in self.attrs.iter_mut() {
                if a.has(TokenAttr::CONTROL | TokenAttr::USER_DEFINED | TokenAttr::UNKNOWN) {
                    a.set(TokenAttr::RSTRIP, true);
                }
            }
            for (t, on) in [("</s>", true), ("<unk>", false), ("<s>", false), ("<|endoftext|>", false)] {
                if let Some(&id) = self.token_to_id.get(t) {
                    self.attrs[id as usize].set(TokenAttr::RSTRIP, on);
                }
            }
        } else if name.contains("modern-bert") {
            if let Some(&id) = self.token_to_id.get("[MASK]") {
                self.attrs[id as usize].set(TokenAttr::LSTRIP, true);
            }
        }
        Ok(())
    }
}

impl std::ops::BitOr for TokenAttr {
    type Output = TokenAttr;
    fn bitor(self, rhs: TokenAttr) -> TokenAttr {
        TokenAttr(self.0 | rhs.0)
    }
}

pub(crate) fn is_llama3_pre(pre: &str) -> bool {
    matches!(pre, "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2")
}

/// `tokenizer.ggml.merges`: "left right" strings, split at the first space after the first byte
/// (so a merge whose left side is a space still parses). A merge without a separator is an error (G27).
fn load_merges(file: &GgufFile) -> Result<Vec<(String, String)>> {
    const MERGES: &str = "tokenizer.ggml.merges";
    let list = match file.get_array(MERGES)? {
        Some(Array::String(v)) => v,
        Some(other) => {
            return Err(kv_err(file, MERGES, format!("expected string array, found {}", other.element_type())))
        }
        None => return Err(Error::gguf(0, format!("kv[{MERGES:?}]"), "BPE vocabulary without tokenizer.ggml.merges")),
    };
    let mut merges = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let pos = m
            .bytes()
            .skip(1)
            .position(|b| b == b' ')
            .map(|p| p + 1)
            .ok_or_else(|| kv_err(file, MERGES, format!("merge {i} ({m:?}) has no space separator")))?;
        let (left, right) = (&m[..pos], &m[pos + 1..]);
        if right.is_empty() || m.len() > 2 * MAX_TOKEN_BYTES {
            return Err(kv_err(file, MERGES, format!("merge {i} ({m:?}) is malformed")));
        }
        merges.push((left.to_string(), right.to_string()));
    }
    Ok(merges)
}
