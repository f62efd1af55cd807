//! Splitting text around special tokens before the model-specific tokenizer runs
//! (llama.cpp's `tokenizer_st_partition`): longer special tokens win, user-defined tokens are always
//! recognised, control/unknown tokens only when the caller asks to parse special tokens.
//!
//! llama.cpp scans the text once per special token (thousands for Gemma). Here an Aho-Corasick
//! automaton first finds which special tokens occur at all, and only those are split on.

use aho_corasick::AhoCorasick;

use super::vocab::{TokenAttr, Vocab};
use crate::error::{Error, Result};

/// A piece of the input: text still to tokenize, or a special token already recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

pub(crate) struct SpecialMatcher {
    automaton: Option<AhoCorasick>,
    /// Pattern index -> token id, in priority order (longest text first, then lowest id).
    ids: Vec<u32>,
}

impl SpecialMatcher {
    pub fn new(vocab: &Vocab) -> Result<SpecialMatcher> {
        let mut ids: Vec<u32> = (0..vocab.n_tokens() as u32)
            .filter(|&id| {
                vocab.attrs[id as usize].has(TokenAttr::CONTROL | TokenAttr::USER_DEFINED | TokenAttr::UNKNOWN)
            })
            .collect();
        ids.sort_by_key(|&id| std::cmp::Reverse(vocab.texts[id as usize].len()));
        let automaton = if ids.is_empty() {
            None
        } else {
            let patterns = ids.iter().map(|&id| vocab.texts[id as usize].as_str());
            Some(AhoCorasick::new(patterns).map_err(|e| Error::Tokenizer(format!("special-token matcher: {e}")))?)
        };
        Ok(SpecialMatcher { automaton, ids })
    }

    /// Splits `text` into fragments. `parse_special` = false leaves control and unknown tokens as text.
    pub fn partition<'a>(&self, vocab: &Vocab, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(text));
        let Some(ac) = &self.automaton else {
            return frags;
        };

        // Priority ranks of the special tokens present in the text.
        let mut present: Vec<usize> = ac
            .find_overlapping_iter(text)
            .map(|m| m.pattern().as_usize())
            .filter(|&p| {
                parse_special || !vocab.attrs[self.ids[p] as usize].has(TokenAttr::CONTROL | TokenAttr::UNKNOWN)
            })
            .collect();
        present.sort_unstable();
        present.dedup();

        let mut next = Vec::new();
        for p in present {
            let id = self.ids[p];
            let special = vocab.texts[id as usize].as_str();
            let attr = vocab.attrs[id as usize];
            next.clear();
            for f in &frags {
                let Fragment::Text(mut rest) = *f else {
                    next.push(*f);
                    continue;
                };
                while let Some(at) = rest.find(special) {
                    let mut left = &rest[..at];
                    if attr.has(TokenAttr::LSTRIP) {
                        left = left.trim_end_matches(is_c_space);
                    }
                    if !left.is_empty() {
                        next.push(Fragment::Text(left));
                    }
                    next.push(Fragment::Token(id));
                    rest = &rest[at + special.len()..];
                    if attr.has(TokenAttr::RSTRIP) {
                        rest = rest.trim_start_matches(is_c_space);
                    }
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            std::mem::swap(&mut frags, &mut next);
        }
        frags
    }
}

/// C `isspace`, which llama.cpp uses for lstrip/rstrip.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}
