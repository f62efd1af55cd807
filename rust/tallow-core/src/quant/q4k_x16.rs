//! Q4_K weights repacked 16 rows at a time, for the AVX-512 tile (`x86_q4k_tile.rs`) that keeps
//! one row per 32-bit lane (GGML's `block_q4_Kx8` does the same with 8 rows for AVX2).
//!
//! Block `i` of rows `16g..16g + 16` becomes one group block of 16 × 144 bytes:
//!
//! | bytes | holds |
//! |---|---|
//! | `0..32` | `d` of rows 0..16 (f16) |
//! | `32..64` | `dmin` of rows 0..16 (f16) |
//! | `64..256` | the 12 packed scale bytes as 3 little-endian words, word `w` of row `r` at `64 + 64w + 4r` |
//! | `256..2304` | the 128 quant bytes in 4-byte chunks, chunk `c` of row `r` at `256 + 64c + 4r` |
//!
//! so one 64-byte load gives one field of all 16 rows, each in its own lane. The bytes are
//! only moved, never changed: [`unpack_block`] gives back the original block.

/// Rows of a group.
pub const ROWS: usize = 16;
/// Bytes of one Q4_K block.
const BLOCK: usize = 144;
/// Bytes of one group block.
pub const GROUP_BLOCK: usize = ROWS * BLOCK;

/// Where byte `b` of row `r`'s block lies in its group block.
#[inline]
fn at(r: usize, b: usize) -> usize {
    match b {
        0..2 => 2 * r + b,
        2..4 => 32 + 2 * r + (b - 2),
        4..16 => 64 + 64 * ((b - 4) / 4) + 4 * r + (b - 4) % 4,
        _ => 256 + 64 * ((b - 16) / 4) + 4 * r + (b - 16) % 4,
    }
}

/// Packs block `i` of 16 rows (`block(r)` is row `r`'s 144 bytes) into `out` (2304 bytes).
pub fn pack_block<'a>(block: impl Fn(usize) -> &'a [u8], out: &mut [u8]) {
    assert_eq!(out.len(), GROUP_BLOCK);
    for r in 0..ROWS {
        for (b, &v) in block(r)[..BLOCK].iter().enumerate() {
            out[at(r, b)] = v;
        }
    }
}

/// Row `r`'s original block from a group block.
pub fn unpack_block(group: &[u8], r: usize) -> [u8; BLOCK] {
    std::array::from_fn(|b| group[at(r, b)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_has_one_place_and_comes_back() {
        let rows: Vec<Vec<u8>> = (0..ROWS).map(|r| (0..BLOCK).map(|b| (r * 31 + b * 7) as u8).collect()).collect();
        let mut group = vec![0u8; GROUP_BLOCK];
        pack_block(|r| &rows[r], &mut group);
        let mut seen = vec![false; GROUP_BLOCK];
        for r in 0..ROWS {
            for b in 0..BLOCK {
                assert!(!std::mem::replace(&mut seen[at(r, b)], true), "byte {b} of row {r} collides");
            }
            assert_eq!(unpack_block(&group, r)[..], rows[r][..]);
        }
    }
}
