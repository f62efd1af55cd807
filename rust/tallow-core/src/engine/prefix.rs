//! Reusing another request's cached prompt prefix without changing a bit of the result.
//!
//! A prompt run alone computes its tokens in chunks of `n_batch` from position 0; one that
//! reuses `p` cached positions computes the rest in chunks from `p`. llama.cpp's summation
//! orders depend on a token's chunk (`Model::chunk_class`), so the reuse is exact when each
//! cached position ran with the class it has alone, and each remaining token gets its alone
//! class in the chunks from `p`. [`reusable`] finds the longest such `p`: with the 32-element
//! formats that is the shared prefix short of a token or two; with Q4_K weights, a multiple of
//! 4 tokens that leaves the last chunk its size class.

use crate::model::Model;

/// Candidates tried below the longest shared prefix before giving up (each costs a pass over
/// the prompt's remaining tokens).
const MAX_TRIES: usize = 64;

/// How many positions of `cached` (tokens and their classes) a prompt can start from, computing
/// the rest as it would alone, with `n_batch`-token chunks. Always leaves the last prompt token
/// to run (its logits start the generation).
pub(super) fn reusable(model: &dyn Model, n_batch: usize, tokens: &[u32], classes: &[u8], prompt: &[u32]) -> usize {
    let n = prompt.len();
    let shared = shared_prefix(tokens, prompt);
    // Class of position j in chunks of n_batch from `start`, over positions start..n.
    let class = |start: usize, j: usize| {
        let (k, at) = ((j - start) / n_batch, (j - start) % n_batch);
        model.chunk_class(at, n_batch.min(n - start - k * n_batch))
    };
    let alone = |j: usize| class(0, j);
    let same_prefix = (0..shared).take_while(|&j| classes.get(j) == Some(&alone(j))).count();
    (1..=same_prefix)
        .rev()
        .take(MAX_TRIES)
        // Backwards: the last chunk's tail differs first.
        .find(|&p| (p..n).rev().all(|j| class(p, j) == alone(j)))
        .unwrap_or(0)
}

/// Prompt tokens a cache holding `cached` shares with it: the common prefix, short of the
/// prompt's last token (which runs again for its logits). A session (chat) reuses all of it:
/// its results depend on its own history only.
pub(super) fn shared_prefix(cached: &[u32], prompt: &[u32]) -> usize {
    cached.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len().saturating_sub(1))
}
