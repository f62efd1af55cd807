//! Spreading a prompt chunk over several steps without changing a bit of its result.
//!
//! Every step waits for its slowest part: a step that runs a whole prompt chunk beside
//! decoding sequences delays each of their next tokens by the chunk's compute. Run in pieces
//! over several steps, the same chunk delays them a little at a time. A token's bits depend on
//! the chunk it runs in only through its class there (`Model::chunk_class`: the llama.cpp
//! summation orders its products and attention take), so a piece may run on its own where
//! every token of it keeps the class it has in the whole chunk, and so does every token left
//! after it (they must be able to run as one piece next). With the 32-element formats a piece
//! needs only 2 tokens or more; with Q4_K weights it covers whole groups of 4, and with Q5_K or
//! Q6_K ones it keeps 8 tokens or more where the chunk has them.

use std::ops::Range;

/// A step that decodes spreads a prompt chunk over at most this many steps.
pub(super) const STEPS_PER_CHUNK: usize = 8;

/// Prompt tokens a step may run beside `n_decoding` decoding sequences, for a chunk of
/// `chunk_len` tokens: half as many as it decodes (a batched step costs about its token count,
/// so its decodes wait at most half again as long), at least 4, and enough to finish the chunk
/// within [`STEPS_PER_CHUNK`] steps. A step without decodes runs whole chunks.
pub(super) fn room_beside(n_decoding: usize, chunk_len: usize) -> usize {
    (n_decoding / 2).max(4).max(chunk_len.div_ceil(STEPS_PER_CHUNK))
}

/// The chunk of a prompt that token `next` belongs to, where the tokens `run` (from the first one
/// not taken from a cache to the prompt's end) run in chunks of `n_batch`, as alone (`prefix.rs`).
pub(super) fn chunk_of(run: Range<usize>, n_batch: usize, next: usize) -> Range<usize> {
    debug_assert!(run.contains(&next));
    let start = run.start + (next - run.start) / n_batch * n_batch;
    start..(start + n_batch).min(run.end)
}

/// Length of the piece from `next` to run now, with `room` prompt tokens left in the step, where
/// the prompt's tokens `run` go in chunks of `n_batch` ([`chunk_of`]): the rest of the chunk if
/// it fits; else the longest piece within `room` that keeps every token's class (`class_of(t,
/// n)`: token `t` of an `n`-token chunk), here and in the rest of the chunk; else the shortest
/// such piece (at worst the rest of the chunk).
pub(super) fn piece_len(
    class_of: &dyn Fn(usize, usize) -> u8,
    run: Range<usize>,
    n_batch: usize,
    next: usize,
    room: usize,
) -> usize {
    let Range { start, end } = chunk_of(run, n_batch, next);
    let rest = end - next;
    if rest <= room {
        return rest;
    }
    let in_chunk = |j: usize| class_of(j - start, end - start);
    let runs_alone = |a: usize, b: usize| (a..b).all(|j| class_of(j - a, b - a) == in_chunk(j));
    let keeps = |m: usize| runs_alone(next, next + m) && runs_alone(next + m, end);
    (1..=room).rev().find(|&m| keeps(m)).or_else(|| (room + 1..rest).find(|&m| keeps(m))).unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(seed: &mut u64, m: usize) -> usize {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed % m as u64) as usize
    }

    /// Random prompts (the first tokens from a cache, the rest in chunks of `n_batch`) run in
    /// pieces with random room until none is left: every token gets the class it has alone,
    /// no piece crosses a chunk's end, a piece exceeds its room only where no piece within it
    /// keeps the classes, and is the longest that does otherwise.
    #[test]
    fn pieces_keep_every_class_and_fill_their_room() {
        let one = |_: usize, n: usize| u8::from(n == 1); // the 32-element formats
        let q4k = |t: usize, n: usize| u8::from(n == 1) | u8::from(t < n - n % 4) << 1; // Q4_K only
        let kq = |t: usize, n: usize| u8::from(n == 1) | u8::from(t < n - n % 4) << 1 | u8::from(n >= 8) << 2;
        let fns: [&dyn Fn(usize, usize) -> u8; 3] = [&one, &q4k, &kq];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for case in 0..3000 {
            let class_of = fns[case % 3];
            let (start, n_batch) = (rnd(&mut seed, 40), 1 + rnd(&mut seed, 40));
            let end = start + 1 + rnd(&mut seed, 100);
            // Alone: chunks of n_batch from `start`.
            let alone = |j: usize| {
                let c = (j - start) / n_batch * n_batch + start;
                class_of(j - c, n_batch.min(end - c))
            };
            let mut next = start;
            while next < end {
                let room = 1 + rnd(&mut seed, 12);
                let m = piece_len(class_of, start..end, n_batch, next, room);
                let chunk_end = start + ((next - start) / n_batch + 1) * n_batch;
                assert!(m >= 1 && next + m <= end.min(chunk_end), "case {case}: piece {m} from {next}");
                for t in 0..m {
                    assert_eq!(class_of(t, m), alone(next + t), "case {case}: token {} of {next}..", next + t);
                }
                let rest = end.min(chunk_end) - next;
                let keeps = |k: usize| {
                    (0..k).all(|t| class_of(t, k) == alone(next + t))
                        && (k..rest).all(|t| class_of(t - k, rest - k) == alone(next + t))
                };
                if m > room {
                    assert!((1..=room).all(|k| !keeps(k)), "case {case}: a piece within {room} was possible");
                } else if m < rest {
                    assert!((m + 1..=room).all(|k| !keeps(k)), "case {case}: {m} is not the longest within {room}");
                }
                next += m;
            }
        }
    }

    #[test]
    fn the_32_element_formats_take_their_room() {
        let one = |_: usize, n: usize| u8::from(n == 1);
        assert_eq!(piece_len(&one, 0..12, 512, 0, 5), 5);
        assert_eq!(piece_len(&one, 0..12, 512, 5, 5), 5);
        // 1 token would be left: it would take the one-token path.
        assert_eq!(piece_len(&one, 0..12, 512, 6, 5), 4);
        assert_eq!(piece_len(&one, 0..12, 512, 10, 5), 2);
        // A one-token piece of a longer chunk changes its class: never taken.
        assert_eq!(piece_len(&one, 0..12, 512, 0, 1), 2);
    }

    #[test]
    fn k_quants_keep_their_groups_and_tiles() {
        let kq = |t: usize, n: usize| u8::from(n == 1) | u8::from(t < n - n % 4) << 1 | u8::from(n >= 8) << 2;
        assert_eq!(piece_len(&kq, 0..40, 512, 0, 5), 8, "tiled from 8: no piece shorter");
        assert_eq!(piece_len(&kq, 0..40, 512, 0, 13), 12);
        assert_eq!(piece_len(&kq, 0..14, 512, 0, 6), 14, "8 + 6 would leave 6 untiled tokens");
        // Chunks of 16 from token 3 (3 tokens came from a cache): token 20 is in 19..35.
        assert_eq!(chunk_of(3..40, 16, 20), 19..35);
        assert_eq!(piece_len(&kq, 3..40, 16, 20, 64), 15);
        assert_eq!(room_beside(7, 12), 4);
        assert_eq!(room_beside(16, 12), 8);
        assert_eq!(room_beside(1, 500), 63);
        assert_eq!(room_beside(0, 3), 4);
    }
}
