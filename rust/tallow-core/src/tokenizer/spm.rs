//! SentencePiece-BPE (`tokenizer.ggml.model = llama`), the algorithm llama.cpp uses: start from
//! UTF-8 characters and repeatedly merge the adjacent pair whose concatenation is the vocabulary
//! token with the highest score (leftmost on ties); characters that never form a token fall back
//! to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::vocab::Vocab;

/// A run of the input, linked to its neighbours; `len == 0` once merged into its left neighbour.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the pair when queued; a mismatch later means a side has changed.
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

/// Tokenizes `text` (spaces already replaced by `▁`) and appends ids to `out`.
pub(crate) fn encode(vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (start, c) in text.char_indices() {
        let i = symbols.len();
        symbols.push(Symbol { start, len: c.len_utf8(), prev: i.checked_sub(1), next: Some(i + 1) });
    }
    let Some(last) = symbols.last_mut() else {
        return;
    };
    last.next = None;

    let mut queue = BinaryHeap::new();
    let try_add = |queue: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: Option<usize>, right: Option<usize>| {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let (sl, sr) = (symbols[l], symbols[r]);
        let pair = &text[sl.start..sr.start + sr.len];
        if let Some(&id) = vocab.token_to_id.get(pair) {
            queue.push(Bigram { score: vocab.scores[id as usize], left: l, right: r, len: pair.len() });
        }
    };
    for i in 1..symbols.len() {
        try_add(&mut queue, &symbols, Some(i - 1), Some(i));
    }
    while let Some(b) = queue.pop() {
        let (l, r) = (symbols[b.left], symbols[b.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
            continue; // stale: one side was merged elsewhere since
        }
        symbols[b.left].len += r.len;
        symbols[b.left].next = r.next;
        symbols[b.right].len = 0;
        if let Some(n) = r.next {
            symbols[n].prev = Some(b.left);
        }
        try_add(&mut queue, &symbols, l.prev, Some(b.left));
        try_add(&mut queue, &symbols, Some(b.left), r.next);
    }

    let mut i = Some(0);
    while let Some(s) = i {
        let sym = symbols[s];
        let piece = &text[sym.start..sym.start + sym.len];
        match vocab.token_to_id.get(piece) {
            Some(&id) => out.push(id),
            None => {
                for &b in piece.as_bytes() {
                    if let Some(id) = vocab.byte_to_token[b as usize].or(vocab.unk) {
                        out.push(id);
                    }
                }
            }
        }
        i = sym.next;
    }
}
