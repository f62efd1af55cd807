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
    reusable_with(&|t, n| model.chunk_class(t, n), n_batch, tokens, classes, prompt)
}

/// [`reusable`] with the chunk classes given as `class(t, n)`.
fn reusable_with(
    class_of: &dyn Fn(usize, usize) -> u8,
    n_batch: usize,
    tokens: &[u32],
    classes: &[u8],
    prompt: &[u32],
) -> usize {
    let n = prompt.len();
    let shared = shared_prefix(tokens, prompt);
    // Class of position j in chunks of n_batch from `start`, over positions start..n.
    let class = |start: usize, j: usize| {
        let (k, at) = ((j - start) / n_batch, (j - start) % n_batch);
        class_of(at, n_batch.min(n - start - k * n_batch))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The classes of positions `0..n` of a sequence computed in chunks of `n_batch` from
    /// `start` (positions before `start` are not its).
    fn chunked(class_of: &dyn Fn(usize, usize) -> u8, n_batch: usize, start: usize, n: usize) -> Vec<u8> {
        (start..n)
            .map(|j| class_of((j - start) % n_batch, n_batch.min(n - start - (j - start) / n_batch * n_batch)))
            .collect()
    }

    /// Whether starting `prompt` from `p` cached positions of a donor with `classes` gives every
    /// position the class it has alone: the definition `reusable_with` must meet.
    fn exact(class_of: &dyn Fn(usize, usize) -> u8, n_batch: usize, classes: &[u8], n: usize, p: usize) -> bool {
        let alone = chunked(class_of, n_batch, 0, n);
        classes[..p] == alone[..p] && chunked(class_of, n_batch, p, n) == alone[p..]
    }

    #[test]
    fn reuse_is_exact_and_the_longest_within_reach() {
        let one = |_: usize, n: usize| u8::from(n == 1); // the 32-element formats
        let q4k = |t: usize, n: usize| u8::from(n == 1) | u8::from(t < n - n % 4) << 1 | u8::from(n >= 8) << 2;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |m: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m as u64) as usize
        };
        let fns: [&dyn Fn(usize, usize) -> u8; 2] = [&one, &q4k];
        for case in 0..4000 {
            let class_of = fns[case % 2];
            let n_batch = 1 + rnd(20);
            let (donor_len, n) = (1 + rnd(60), 1 + rnd(60));
            let shared = rnd(donor_len.min(n) + 1);
            let prompt: Vec<u32> = (0..n as u32).collect();
            let mut tokens: Vec<u32> = (0..donor_len as u32).collect();
            tokens.iter_mut().skip(shared).for_each(|t| *t += 1000);
            // The donor ran its prompt (a random length) in chunks, then decoded one by one.
            let donor_prompt = 1 + rnd(donor_len);
            let mut classes = chunked(class_of, n_batch, 0, donor_prompt);
            classes.resize(donor_len, class_of(0, 1));
            let p = reusable_with(class_of, n_batch, &tokens, &classes, &prompt);
            let common = shared.min(n - 1);
            assert!(p <= common, "case {case}: {p} > {common}");
            assert!(p == 0 || exact(class_of, n_batch, &classes, n, p), "case {case}: {p} is not exact");
            // No longer exact reuse within the tries.
            let lo = (common + 1).saturating_sub(MAX_TRIES).max(p + 1);
            for q in lo..=common {
                assert!(!exact(class_of, n_batch, &classes, n, q), "case {case}: {q} > {p} is exact too");
            }
        }
    }

    #[test]
    fn the_32_element_formats_keep_all_but_a_token_or_two() {
        let one = |_: usize, n: usize| u8::from(n == 1);
        let cached: Vec<u32> = (0..50).collect();
        let classes = vec![0; 50];
        let prompt: Vec<u32> = (0..80).collect();
        assert_eq!(reusable_with(&one, 512, &cached, &classes, &prompt), 50);
        // The prompt ends one token after the shared part: that token would run alone.
        assert_eq!(reusable_with(&one, 512, &cached, &classes, &prompt[..51]), 49);
        assert_eq!(shared_prefix(&cached, &prompt[..51]), 50);
    }
}
