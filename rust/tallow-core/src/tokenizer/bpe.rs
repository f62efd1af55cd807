//! Rank-ordered BPE (`tokenizer.ggml.model = gpt2` and `gemma4`) over the `tokenizers` crate's BPE
//! model. GPT-2-style vocabularies split the text with the regexes that `tokenizer.ggml.pre` names,
//! then map bytes to GPT-2's printable alphabet; Gemma 4 merges over raw UTF-8 with `▁` for spaces
//! and falls back to `<0xXX>` byte tokens.

use std::collections::HashMap;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{Model, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior};

use super::vocab::{is_llama3_pre, Vocab, VocabKind};
use crate::error::{Error, Result};

/// GPT-2's split regex.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's; contractions spelled out case by case, as llama.cpp does, so that Unicode case
/// folding cannot make `'ſ` a contraction.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2: Llama 3's with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 3.5: Qwen 2's with combining marks kept inside words.
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const CJK: &str = "[一-龥ࠀ-一가-퟿]+";
const DEEPSEEK_LLM_LETTERS: &str = r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\x{1F7D}ᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-\x{1FD3}ῖ-\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+";

/// The split regexes (applied in order, each to every piece the previous ones left) and whether
/// a piece that is itself a token skips the merges.
fn pre_tokenizer_for(pre: &str) -> Option<(Vec<&'static str>, bool)> {
    let regexes = match pre {
        "" | "default" => vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
        p if is_llama3_pre(p) => return Some((vec![LLAMA3], true)),
        "dbrx" | "smaug-bpe" | "chatglm-bpe" | "glm4" => vec![LLAMA3],
        "deepseek-llm" => {
            vec!["[\r\n]", DEEPSEEK_LLM_LETTERS, r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$", CJK, r"\p{N}+"]
        }
        "deepseek-coder" => vec!["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK, r"\p{N}"],
        "falcon" => vec![r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"],
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            vec![r"\p{N}", GPT2]
        }
        "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" | "jina-es" | "jina-de"
        | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4"
        | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" => {
            vec![GPT2]
        }
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan" | "solar-open" => {
            vec![QWEN2]
        }
        "qwen35" => vec![QWEN35],
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => vec![GPT4O],
        "tekken" => return Some((vec![TEKKEN], true)),
        _ => return None,
    };
    Some((regexes, false))
}

pub(crate) struct BpeEncoder {
    model: BPE,
    /// Regex splits then byte-level mapping (GPT-2 style); `None` for Gemma 4.
    splits: Option<Vec<Split>>,
    /// Gemma 4: runs of newlines that are tokens themselves skip the merges (llama.cpp does the same).
    newline_tokens: HashMap<usize, u32>,
}

fn tk_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{what}: {e}"))
}

impl BpeEncoder {
    pub fn new(vocab: &Vocab) -> Result<BpeEncoder> {
        let (splits, ignore_merges) = match vocab.kind {
            VocabKind::Gemma4 => (None, false),
            _ => {
                let (regexes, ignore_merges) = pre_tokenizer_for(&vocab.pre)
                    .ok_or_else(|| Error::unsupported(format!("BPE pre-tokenizer '{}'", vocab.pre)))?;
                let splits = regexes
                    .into_iter()
                    .map(|re| {
                        Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
                            .map_err(|e| tk_err("pre-tokenizer regex", e))
                    })
                    .collect::<Result<Vec<_>>>()?;
                (Some(splits), ignore_merges)
            }
        };

        // The BPE model needs every merge's parts and result in the vocabulary (it would fail or
        // index out of bounds otherwise); llama.cpp ignores such merges in effect, so drop them.
        let mut seen = std::collections::HashSet::with_capacity(vocab.merges.len());
        let mut merges = Vec::with_capacity(vocab.merges.len());
        let mut joined = String::new();
        for (l, r) in &vocab.merges {
            joined.clear();
            joined.push_str(l);
            joined.push_str(r);
            let ok = vocab.token_to_id.contains_key(l.as_str())
                && vocab.token_to_id.contains_key(r.as_str())
                && vocab.token_to_id.contains_key(joined.as_str());
            if ok && seen.insert((l.as_str(), r.as_str())) {
                merges.push((l.clone(), r.clone()));
            }
        }
        let bpe_vocab: tokenizers::models::bpe::Vocab =
            vocab.token_to_id.iter().map(|(t, &id)| (t.clone(), id)).collect();
        let model = BPE::builder()
            .vocab_and_merges(bpe_vocab, merges)
            .ignore_merges(ignore_merges)
            .byte_fallback(vocab.kind == VocabKind::Gemma4)
            .build()
            .map_err(|e| tk_err("BPE model", e))?;

        let mut newline_tokens = HashMap::new();
        if vocab.kind == VocabKind::Gemma4 {
            for n in 1..=64 {
                if let Some(&id) = vocab.token_to_id.get("\n".repeat(n).as_str()) {
                    newline_tokens.insert(n, id);
                }
            }
        }
        Ok(BpeEncoder { model, splits, newline_tokens })
    }

    fn encode_word(&self, word: &str, out: &mut Vec<u32>) -> Result<()> {
        let tokens = self.model.tokenize(word).map_err(|e| tk_err("BPE", e))?;
        out.extend(tokens.iter().map(|t| t.id));
        Ok(())
    }

    /// Tokenizes one fragment of ordinary text and appends ids to `out`.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let Some(splits) = &self.splits else {
            return self.encode_gemma4(text, out);
        };
        let mut pretok = PreTokenizedString::from(text);
        for s in splits {
            s.pre_tokenize(&mut pretok).map_err(|e| tk_err("pre-tokenizer", e))?;
        }
        ByteLevel::new(false, false, false).pre_tokenize(&mut pretok).map_err(|e| tk_err("byte-level", e))?;
        for (word, _, _) in pretok.get_splits(OffsetReferential::Original, OffsetType::None) {
            self.encode_word(word, out)?;
        }
        Ok(())
    }

    /// Gemma 4: spaces become `▁`, the text is cut only at newline runs, and each run is merged whole.
    fn encode_gemma4(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let escaped = text.replace(' ', "▁");
        let mut rest = escaped.as_str();
        while !rest.is_empty() {
            let newlines = rest.bytes().take_while(|&b| b == b'\n').count();
            let run_len = if newlines > 0 { newlines } else { rest.find('\n').unwrap_or(rest.len()) };
            let (run, tail) = rest.split_at(run_len);
            match self.newline_tokens.get(&newlines).filter(|_| newlines > 0) {
                Some(&id) => out.push(id),
                None => self.encode_word(run, out)?,
            }
            rest = tail;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pre_tokenizer_regex_compiles() {
        let pres = [
            "default",
            "llama-bpe",
            "dbrx",
            "deepseek-llm",
            "deepseek-coder",
            "falcon",
            "smollm",
            "gpt-2",
            "qwen2",
            "qwen35",
            "gpt-4o",
            "tekken",
        ];
        for pre in pres {
            let (regexes, _) = pre_tokenizer_for(pre).unwrap();
            for re in regexes {
                if let Err(e) = Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
                {
                    panic!("{pre}: {re:?}: {e:?}");
                }
            }
        }
        assert!(pre_tokenizer_for("no-such-pre").is_none());
    }
}
