//! Weights repacked 16 rows at a time, for the AVX-512 VNNI tiles (`x86_x16*.rs`) that keep one
//! row per 32-bit lane (GGML's `block_q4_Kx8` does the same with 8 rows for AVX2).
//!
//! Block `i` of rows `16g..16g + 16` becomes one group block of 16 blocks' bytes, field by field
//! in the block's own field order, each field gathered across the 16 rows: an f16 field holds
//! row `r`'s value at `2r`; a wider field is cut into 4-byte chunks, chunk `c` of row `r` at
//! `64c + 4r`. So one 64-byte load gives one chunk of all 16 rows, each in its own lane:
//!
//! | type | fields (bytes per row) | group block offsets |
//! |---|---|---|
//! | Q4_0 | `d` 2, `qs` 16 | 0, 32 (of 288) |
//! | Q4_1 | `d` 2, `m` 2, `qs` 16 | 0, 32, 64 (of 320) |
//! | Q5_0 | `d` 2, `qh` 4, `qs` 16 | 0, 32, 96 (of 352) |
//! | Q5_1 | `d` 2, `m` 2, `qh` 4, `qs` 16 | 0, 32, 64, 128 (of 384) |
//! | Q8_0 | `d` 2, `qs` 32 | 0, 32 (of 544) |
//! | Q4_K | `d` 2, `dmin` 2, `scales` 12, `qs` 128 | 0, 32, 64, 256 (of 2304) |
//!
//! Q6_K's quants are spread over six chunk streams (`ql` low and high halves of each 128
//! elements, `qh` of each 128), so its group block follows the tile's reading order instead,
//! one sequential stream (six interleaved ones ran at half the DRAM bandwidth): `d` at 0, the
//! 16 `scales` as 4 chunks at 32, then for k = 0..8 the chunks at `ql` bytes `4k`, `32 + 4k`,
//! `64 + 4k`, `96 + 4k` and `qh` bytes `4k`, `32 + 4k`, at `288 + 384k` (of 3360). Q5_K's too
//! (`d dmin scales[12] qh[32] qs[128]`): `d` at 0, `dmin` at 32, the scales as 3 chunks at 64,
//! then for k = 0..8 the chunks at `qs` bytes `4k`, `32 + 4k`, `64 + 4k`, `96 + 4k` and `qh`
//! bytes `4k` at `256 + 320k` (of 2816): a decode step reads each group block front to back
//! (read field by field, five streams 512 bytes apart, the 1.7B Q5_K decoded at 11.7 tok/s).
//!
//! The bytes are only moved, with one exception: Q8_0's quants are stored as unsigned bytes,
//! `q + 128` (`q ^ 0x80`), the operand `vpdpbusd` wants, so the tile does not flip them for
//! every product. [`unpack_block`] gives back the original block.

use super::QType;

/// Rows of a group.
pub const ROWS: usize = 16;

/// Field widths of a block in bytes, in block order, for the repacked types.
fn fields(qtype: QType) -> &'static [usize] {
    match qtype {
        QType::Q4_0 => &[2, 16],
        QType::Q4_1 => &[2, 2, 16],
        QType::Q5_0 => &[2, 4, 16],
        QType::Q5_1 => &[2, 2, 4, 16],
        QType::Q8_0 => &[2, 32],
        QType::Q4_K => &[2, 2, 12, 128],
        _ => panic!("{qtype} has no 16-row layout"),
    }
}

/// Whether `qtype` has a 16-row layout.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86 tiles
pub fn repacks(qtype: QType) -> bool {
    use QType::*;
    matches!(qtype, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K)
}

/// Bytes of one group block of `qtype`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86 tiles
pub fn group_block(qtype: QType) -> usize {
    ROWS * qtype.type_size()
}

/// Where byte `b` of row `r`'s block lies in its group block.
#[inline]
fn at(qtype: QType, r: usize, b: usize) -> usize {
    match qtype {
        QType::Q6_K => q6k_at(r, b),
        QType::Q5_K => q5k_at(r, b),
        _ => field_at(fields(qtype), r, b),
    }
}

/// [`at`] for Q5_K (`d dmin scales[12] qh[32] qs[128]`), in the tile's reading order.
fn q5k_at(r: usize, b: usize) -> usize {
    let byte = 4 * r + b % 4;
    match b {
        0..4 => 32 * (b / 2) + 2 * r + b % 2,
        4..16 => 64 + 64 * ((b - 4) / 4) + byte,
        // qh byte l: chunk k = l / 4, after the four qs chunks of that k.
        16..48 => 256 + 320 * ((b - 16) / 4) + 256 + byte,
        // qs byte 32j + l: chunk k = l / 4, the j-th of that k's.
        _ => 256 + 320 * ((b - 48) % 32 / 4) + 64 * ((b - 48) / 32) + byte,
    }
}

/// [`at`] for Q6_K (`ql[128] qh[64] scales[16] d`), in the tile's reading order.
fn q6k_at(r: usize, b: usize) -> usize {
    let byte = 4 * r + b % 4;
    match b {
        208..210 => 2 * r + (b - 208),
        192..208 => 32 + 64 * ((b - 192) / 4) + byte,
        // ql: half h = b / 64, its low (0..32) or high (32..64) part, k = b % 32 / 4.
        0..128 => 288 + 384 * (b % 32 / 4) + 64 * (2 * (b / 64) + b % 64 / 32) + byte,
        // qh: half h = (b - 128) / 32.
        _ => 288 + 384 * ((b - 128) % 32 / 4) + 64 * (4 + (b - 128) / 32) + byte,
    }
}

/// [`at`] for the field-ordered layouts.
#[inline]
fn field_at(fields: &[usize], r: usize, b: usize) -> usize {
    let (mut off, mut start) = (0, 0);
    for &len in fields {
        if b < off + len {
            let w = b - off;
            return start + if len == 2 { 2 * r + w } else { 64 * (w / 4) + 4 * r + w % 4 };
        }
        off += len;
        start += ROWS * len;
    }
    unreachable!("byte {b} is past the block")
}

/// Packs block `i` of 16 rows (`block(r)` is row `r`'s block) into `out`, field by field.
pub fn pack_block<'a>(qtype: QType, block: impl Fn(usize) -> &'a [u8], out: &mut [u8]) {
    let ts = qtype.type_size();
    assert_eq!(out.len(), ROWS * ts);
    let rows: [&[u8]; ROWS] = std::array::from_fn(|r| &block(r)[..ts]);
    // The reading-ordered layouts: 4-byte chunks and 2-byte scales, each where `at` puts it.
    let ordered = |chunks: std::ops::Range<usize>, halves: &[usize], out: &mut [u8]| {
        for (r, row) in rows.iter().enumerate() {
            for b in chunks.clone().step_by(4) {
                let at = at(qtype, r, b);
                out[at..at + 4].copy_from_slice(&row[b..b + 4]);
            }
            for &b in halves {
                let at = at(qtype, r, b);
                out[at..at + 2].copy_from_slice(&row[b..b + 2]);
            }
        }
    };
    match qtype {
        QType::Q6_K => return ordered(0..208, &[208], out),
        QType::Q5_K => return ordered(4..176, &[0, 2], out),
        _ => {}
    }
    let (mut off, mut start) = (0, 0);
    for &len in fields(qtype) {
        let out = &mut out[start..start + ROWS * len];
        if len == 2 {
            for (o, row) in out.chunks_exact_mut(2).zip(&rows) {
                o.copy_from_slice(&row[off..off + 2]);
            }
        } else {
            // Chunk c of every row, then chunk c + 1: 64 bytes at a time.
            for (c, o) in out.chunks_exact_mut(4 * ROWS).enumerate() {
                for (o, row) in o.chunks_exact_mut(4).zip(&rows) {
                    o.copy_from_slice(&row[off + 4 * c..off + 4 * c + 4]);
                }
            }
        }
        off += len;
        start += ROWS * len;
    }
    if qtype == QType::Q8_0 {
        out[2 * ROWS..].iter_mut().for_each(|q| *q ^= 0x80);
    }
}

/// Row `r`'s original block from a group block, into `out` (one block).
pub fn unpack_block(qtype: QType, group: &[u8], r: usize, out: &mut [u8]) {
    for (b, o) in out[..qtype.type_size()].iter_mut().enumerate() {
        // Q8_0's quants (after the 2-byte d) are stored as q ^ 0x80.
        let flip = if qtype == QType::Q8_0 && b >= 2 { 0x80 } else { 0 };
        *o = group[at(qtype, r, b)] ^ flip;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_has_one_place_and_comes_back() {
        for qtype in
            [QType::Q4_0, QType::Q4_1, QType::Q5_0, QType::Q5_1, QType::Q8_0, QType::Q4_K, QType::Q5_K, QType::Q6_K]
        {
            let ts = qtype.type_size();
            if !matches!(qtype, QType::Q5_K | QType::Q6_K) {
                assert_eq!(fields(qtype).iter().sum::<usize>(), ts);
            }
            let rows: Vec<Vec<u8>> = (0..ROWS).map(|r| (0..ts).map(|b| (r * 31 + b * 7) as u8).collect()).collect();
            let mut group = vec![0u8; group_block(qtype)];
            pack_block(qtype, |r| &rows[r], &mut group);
            let mut seen = vec![false; group.len()];
            for r in 0..ROWS {
                for b in 0..ts {
                    assert!(!std::mem::replace(&mut seen[at(qtype, r, b)], true), "{qtype}: byte {b} of row {r}");
                }
                let mut back = vec![0u8; ts];
                unpack_block(qtype, &group, r, &mut back);
                assert_eq!(back, rows[r]);
            }
        }
    }

    #[test]
    fn fields_sit_where_the_tiles_read_them() {
        let at = |q: QType, r: usize, b: usize| at(q, r, b);
        assert_eq!((at(QType::Q5_1, 0, 2), at(QType::Q5_1, 0, 4), at(QType::Q5_1, 0, 8)), (32, 64, 128));
        assert_eq!((at(QType::Q5_0, 0, 2), at(QType::Q5_0, 0, 6), at(QType::Q5_0, 1, 6)), (32, 96, 100));
        let q4k = |b: usize| at(QType::Q4_K, 0, b);
        assert_eq!((q4k(0), q4k(2), q4k(4), q4k(16)), (0, 32, 64, 256));
        // Q5_K: d, dmin, scales, then per k: qs (j = 0..4), qh.
        let q5k = |b: usize| at(QType::Q5_K, 0, b);
        assert_eq!(
            (q5k(0), q5k(2), q5k(4), q5k(48), q5k(80), q5k(176 - 32), q5k(16), q5k(52), q5k(20)),
            (0, 32, 64, 256, 320, 448, 512, 576, 832)
        );
        // Q6_K: d, scales, then per k: ql (h0 low, h0 high, h1 low, h1 high), qh (h0, h1).
        let q6k = |b: usize| at(QType::Q6_K, 0, b);
        assert_eq!(
            (q6k(208), q6k(192), q6k(0), q6k(32), q6k(64), q6k(96), q6k(128), q6k(160)),
            (0, 32, 288, 352, 416, 480, 544, 608)
        );
        assert_eq!((q6k(4), q6k(132), at(QType::Q6_K, 1, 4)), (288 + 384, 544 + 384, 288 + 384 + 4));
    }
}
