//! Tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata, matching llama.cpp's
//! `llama_vocab`: byte-level BPE with per-model pre-tokenizers (`gpt2`), SentencePiece BPE with
//! byte fallback (`llama`), WordPiece (`bert`) and Gemma 4's BPE (`gemma4`); special tokens are
//! split out first. Immutable after load and shared across threads.

mod bpe;
mod byte_level;
mod special;
mod spm;
mod stream;
mod vocab;
mod wpm;

pub use stream::StreamDecoder;

use bpe::BpeEncoder;
use special::{Fragment, SpecialMatcher};
use vocab::{TokenAttr, Vocab, VocabKind};
use wpm::WpmEncoder;

use crate::error::Result;
use crate::gguf::GgufFile;

enum Encoder {
    Spm,
    Bpe(BpeEncoder),
    Wpm(WpmEncoder),
}

pub struct Tokenizer {
    vocab: Vocab,
    special: SpecialMatcher,
    encoder: Encoder,
    /// The most bytes of text one token stands for; `None` for WordPiece, which drops
    /// whitespace and accents, so a token may stand for any amount of text.
    max_token_bytes: Option<usize>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.vocab.kind)
            .field("pre", &self.vocab.pre)
            .field("n_vocab", &self.vocab.n_tokens())
            .finish()
    }
}

impl Tokenizer {
    /// Reads and validates the vocabulary; malformed metadata is an `Error::Gguf`, a tokenizer type
    /// or pre-tokenizer tallow does not know is `Error::UnsupportedModel`.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
        let vocab = Vocab::load(file)?;
        let special = SpecialMatcher::new(&vocab)?;
        let encoder = match vocab.kind {
            VocabKind::Spm => Encoder::Spm,
            VocabKind::Bpe | VocabKind::Gemma4 => Encoder::Bpe(BpeEncoder::new(&vocab)?),
            VocabKind::Wpm => Encoder::Wpm(WpmEncoder::new(&vocab)?),
        };
        let mut tok = Tokenizer { vocab, special, encoder, max_token_bytes: None };
        if !matches!(tok.encoder, Encoder::Wpm(_)) {
            // A piece is the text it was cut from (SentencePiece's `▁` decodes to the space it
            // replaced); 4 covers an unknown character that becomes `<unk>`.
            let mut piece = Vec::new();
            let longest = (0..tok.n_vocab() as u32).fold(4, |m, id| {
                piece.clear();
                tok.append_piece(id, true, &mut piece);
                m.max(piece.len())
            });
            tok.max_token_bytes = Some(longest);
        }
        Ok(tok)
    }

    /// A size past which `n_tokens` tokens cannot hold a text, so a caller can refuse a huge
    /// prompt before tokenizing it; `None` when no such bound exists (WordPiece).
    pub fn max_text_bytes(&self, n_tokens: usize) -> Option<usize> {
        // + 8: a leading space SentencePiece adds, and BOS/EOS framing.
        self.max_token_bytes.map(|b| n_tokens.saturating_mul(b).saturating_add(8))
    }

    pub fn n_vocab(&self) -> usize {
        self.vocab.n_tokens()
    }

    /// Text -> ids. `add_bos`: add the framing tokens the vocabulary asks for (BOS if
    /// `add_bos()`, plus EOS / SEP where the metadata sets `add_eos_token` / `add_sep_token`), like
    /// llama.cpp's `add_special`. `special`: recognise control tokens written in the text
    /// (user-defined tokens are always recognised, as in llama.cpp).
    pub fn encode(&self, text: &str, add_bos: bool, special: bool) -> Result<Vec<u32>> {
        let v = &self.vocab;
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos && v.add_bos {
            out.extend(v.bos);
        }
        let fragments = self.special.partition(v, text, special);
        // SPM prefixes a space to the first text and to text that follows a special token.
        let mut prev_special = true;
        let mut escaped = String::new();
        for f in fragments {
            match f {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(t) => {
                    match &self.encoder {
                        Encoder::Spm => {
                            escaped.clear();
                            if v.add_space_prefix && prev_special {
                                escaped.push('▁');
                            }
                            for c in t.chars() {
                                escaped.push(if c == ' ' { '▁' } else { c });
                            }
                            spm::encode(v, &escaped, &mut out);
                        }
                        Encoder::Bpe(b) => b.encode(t, &mut out)?,
                        Encoder::Wpm(w) => w.encode(t, &mut out)?,
                    }
                    prev_special = false;
                }
            }
        }
        if add_bos && v.add_eos {
            out.extend(v.eos);
        }
        if add_bos && v.add_sep {
            out.extend(v.sep);
        }
        Ok(out)
    }

    /// Appends the bytes of one token. Control and unknown tokens give nothing unless `special`;
    /// out-of-range ids give nothing.
    pub(crate) fn append_piece(&self, id: u32, special: bool, out: &mut Vec<u8>) {
        let v = &self.vocab;
        let Some(text) = v.texts.get(id as usize) else {
            return;
        };
        let attr = v.attrs[id as usize];
        if attr.has(TokenAttr::UNKNOWN | TokenAttr::CONTROL) {
            if special {
                out.extend_from_slice(text.as_bytes());
            }
        } else if attr.has(TokenAttr::USER_DEFINED) {
            out.extend_from_slice(text.as_bytes());
        } else if attr.has(TokenAttr::NORMAL) {
            match v.kind {
                VocabKind::Bpe => byte_level::decode_into(text, out),
                VocabKind::Spm | VocabKind::Gemma4 | VocabKind::Wpm => {
                    for c in text.chars() {
                        if c == '▁' {
                            out.push(b' ');
                        } else {
                            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                        }
                    }
                }
            }
        } else if attr.has(TokenAttr::BYTE) {
            // Validated at load: byte tokens are `<0xHH>`.
            if let Some(b) = vocab::parse_byte_token(text) {
                out.push(b);
            }
        }
    }

    /// The raw bytes of one token (may be part of a UTF-8 character).
    pub fn token_to_piece(&self, id: u32, special: bool) -> Vec<u8> {
        let mut out = Vec::new();
        self.append_piece(id, special, &mut out);
        out
    }

    /// Ids -> text, the concatenation of the pieces; invalid UTF-8 becomes U+FFFD. `skip_special`
    /// drops control tokens (BOS, EOS, turn markers). No clean-up of spaces or leading-space
    /// removal, so decoding equals what a `StreamDecoder` emits for the same ids.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            self.append_piece(id, !skip_special, &mut bytes);
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    pub fn bos(&self) -> Option<u32> {
        self.vocab.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.vocab.eos
    }

    /// End of generation: EOS, EOT, EOM and the turn/end markers llama.cpp recognises by text.
    pub fn is_eog(&self, id: u32) -> bool {
        self.vocab.eog.binary_search(&id).is_ok()
    }

    /// The end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.vocab.eog
    }

    /// Whether prompts should start with BOS (`tokenizer.ggml.add_bos_token`, else the per-type default).
    pub fn add_bos(&self) -> bool {
        self.vocab.add_bos
    }

    /// The token's text as stored in the vocabulary (`Ġ`/`▁` and `<0xXX>` forms included).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.texts.get(id as usize).map(String::as_str)
    }

    /// Whether the token is a control/unknown token (hidden when decoding with `skip_special`).
    pub fn is_control(&self, id: u32) -> bool {
        self.vocab.attrs.get(id as usize).is_some_and(|a| a.has(TokenAttr::CONTROL | TokenAttr::UNKNOWN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Tokenizer>();
    }
}
