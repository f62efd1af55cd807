//! Incremental detokenization: pieces of a token stream are buffered until they form whole UTF-8
//! characters, so no emitted chunk ever splits a character (byte-level BPE and byte-fallback
//! tokens routinely do).

use super::Tokenizer;

#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    /// Bytes received but not yet emitted: at most an incomplete UTF-8 sequence (<= 3 bytes).
    pending: Vec<u8>,
    skip_special: bool,
}

impl StreamDecoder {
    /// `skip_special` as in [`Tokenizer::decode`].
    pub fn new(skip_special: bool) -> StreamDecoder {
        StreamDecoder { pending: Vec::with_capacity(16), skip_special }
    }

    /// Adds one token; appends to `out` every character it completes. Invalid bytes become
    /// U+FFFD exactly as `decode` would render them.
    pub fn push_into(&mut self, tok: &Tokenizer, id: u32, out: &mut String) {
        tok.append_piece(id, !self.skip_special, &mut self.pending);
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    // Valid by construction: `valid_up_to` bytes decoded.
                    out.push_str(std::str::from_utf8(&self.pending[start..valid]).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = valid + bad;
                        }
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            start = valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
    }

    /// Adds one token; returns the text it completes, `None` if it completed no character.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Option<String> {
        let mut s = String::new();
        self.push_into(tok, id, &mut s);
        (!s.is_empty()).then_some(s)
    }

    /// Ends the stream: a dangling incomplete character becomes U+FFFD.
    pub fn flush(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(s)
    }
}
