//! WordPiece (`tokenizer.ggml.model = bert`) over the `tokenizers` crate: BERT normalization
//! (clean-up, CJK isolation, lowercase, accent stripping), split on whitespace and punctuation,
//! then greedy longest-match pieces. GGUF stores word-initial pieces with a `▁` prefix and
//! continuation pieces bare (HF's `##` removed), so each word is looked up as `▁word` with an
//! empty continuation prefix.

use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{
    Model, NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
};

use super::vocab::Vocab;
use crate::error::{Error, Result};

pub(crate) struct WpmEncoder {
    normalizer: BertNormalizer,
    model: WordPiece,
}

fn tk_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{what}: {e}"))
}

impl WpmEncoder {
    pub fn new(vocab: &Vocab) -> Result<WpmEncoder> {
        let unk = vocab.unk.map(|id| vocab.texts[id as usize].clone()).ok_or_else(|| {
            Error::gguf(0, "kv[\"tokenizer.ggml.unknown_token_id\"]", "WordPiece vocabulary without an unknown token")
        })?;
        let wp_vocab: tokenizers::models::bpe::Vocab =
            vocab.token_to_id.iter().map(|(t, &id)| (t.clone(), id)).collect();
        let model = WordPiece::builder()
            .vocab(wp_vocab)
            .unk_token(unk)
            .continuing_subword_prefix(String::new())
            // HF's limit is 100 characters per word; the `▁` prefix adds one.
            .max_input_chars_per_word(101)
            .build()
            .map_err(|e| tk_err("WordPiece model", e))?;
        let normalizer = BertNormalizer::new(true, true, Some(vocab.strip_accents), vocab.lowercase);
        Ok(WpmEncoder { normalizer, model })
    }

    /// Tokenizes one fragment of ordinary text and appends ids to `out`.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let mut normalized = NormalizedString::from(text);
        self.normalizer.normalize(&mut normalized).map_err(|e| tk_err("BERT normalizer", e))?;
        let mut pretok = PreTokenizedString::from(normalized);
        BertPreTokenizer.pre_tokenize(&mut pretok).map_err(|e| tk_err("BERT pre-tokenizer", e))?;
        let mut word = String::new();
        for (w, _, _) in pretok.get_splits(OffsetReferential::Normalized, OffsetType::None) {
            word.clear();
            word.push('▁');
            word.push_str(w);
            let tokens = self.model.tokenize(&word).map_err(|e| tk_err("WordPiece", e))?;
            out.extend(tokens.iter().map(|t| t.id));
        }
        Ok(())
    }
}
