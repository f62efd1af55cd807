//! Dot products of the 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) with their
//! quantized activations, summed in exactly the order of llama.cpp's x86 kernels (AVX2
//! `ggml_vec_dot_*` and llamafile's tinyBLAS agree on it):
//! - per block, the 32 integer products go to 8 lanes, lane `k` holding elements `4k..4k+4`;
//! - each lane accumulates `fma(d_w · d_x, lane_sum, acc[k])` over the blocks, in f32;
//! - the lanes are reduced as `((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))`;
//! - Q4_1/Q5_1 add `Σ m · s` (summed in block order) at the end.
//!
//! Q4_0 weights with a multiple of 8 rows are the exception: llama.cpp's x86 build repacks them
//! at load (`block_q4_0x8`) and multiplies them with `ggml_gemm_q4_0_8x8_q8_0` and
//! `ggml_gemv_q4_0_8x8_q8_0`, which keep one f32 accumulator per output and add
//! `fma(Σ_block q · x, d_w · d_x, acc)` once per block ([`row_dot_for`]).
//!
//! The integer parts are exact whatever the order; only these f32 roundings differ from a plain
//! loop, by an ulp or so, but an ulp is enough to flip an int8 rounding in the next layer now
//! and then. candle's scalar fallbacks sum per block instead, so these types are routed here.
//! SIMD kernels for these types must keep this order to stay bit-identical with llama.cpp.

use super::QType;
use half::f16;

/// Bytes of the activation blocks these products read: Q8_0 (d, 32 × i8) / Q8_1 (d, s, 32 × i8).
const Q8_0_BYTES: usize = 34;
const Q8_1_BYTES: usize = 36;

#[inline(always)]
pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Horizontal sum of 8 lanes in the order of ggml's `hsum_float_8`.
#[inline(always)]
pub(super) fn hsum8(l: &[f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// The 32 weight values of one block as small integers, in element order.
type Unpack = fn(&[u8], &mut [i32; 32]);

fn unpack_q4_0(b: &[u8], q: &mut [i32; 32]) {
    for (j, &byte) in b[2..18].iter().enumerate() {
        q[j] = (byte & 0x0f) as i32 - 8;
        q[j + 16] = (byte >> 4) as i32 - 8;
    }
}

fn unpack_q4_1(b: &[u8], q: &mut [i32; 32]) {
    for (j, &byte) in b[4..20].iter().enumerate() {
        q[j] = (byte & 0x0f) as i32;
        q[j + 16] = (byte >> 4) as i32;
    }
}

/// Q5: 4 low bits in the nibbles, bit `j` of the little-endian `qh` is bit 4 of element `j`.
fn unpack_q5(qh: u32, qs: &[u8], offset: i32, q: &mut [i32; 32]) {
    for (j, &byte) in qs.iter().enumerate() {
        let hi_lo = ((qh >> j) & 1) as i32;
        let hi_hi = ((qh >> (j + 16)) & 1) as i32;
        q[j] = ((byte & 0x0f) as i32 | (hi_lo << 4)) - offset;
        q[j + 16] = ((byte >> 4) as i32 | (hi_hi << 4)) - offset;
    }
}

fn unpack_q5_0(b: &[u8], q: &mut [i32; 32]) {
    unpack_q5(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &b[6..22], 16, q);
}

fn unpack_q5_1(b: &[u8], q: &mut [i32; 32]) {
    unpack_q5(u32::from_le_bytes([b[4], b[5], b[6], b[7]]), &b[8..24], 0, q);
}

fn unpack_q8_0(b: &[u8], q: &mut [i32; 32]) {
    for (q, &byte) in q.iter_mut().zip(&b[2..34]) {
        *q = byte as i8 as i32;
    }
}

/// `Σ w · x` over one row: `w` holds the row's `qtype` blocks `b_stride` bytes apart (the block
/// size for a plain row, more in an interleaved layout), `x` the activation blocks (Q8_0 for
/// Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1) of the same length.
fn dot(qtype: QType, unpack: Unpack, w: &[u8], b_stride: usize, x: &[u8]) -> f32 {
    let (w_bytes, with_min) = (qtype.type_size(), matches!(qtype, QType::Q4_1 | QType::Q5_1));
    let x_bytes = if with_min { Q8_1_BYTES } else { Q8_0_BYTES };
    let x_qs = x_bytes - 32;
    let mut acc = [0.0f32; 8];
    let mut summs = 0.0f32;
    let mut qw = [0i32; 32];
    let blocks = (0..).map(|i| w.get(i * b_stride..i * b_stride + w_bytes)).map_while(|b| b);
    for (wb, xb) in blocks.zip(x.chunks_exact(x_bytes)) {
        unpack(wb, &mut qw);
        let qx = &xb[x_qs..];
        // f16 × f16 is exact in f32, as is m · s below.
        let dd = f16_at(wb, 0) * f16_at(xb, 0);
        for (k, a) in acc.iter_mut().enumerate() {
            let lane: i32 = (4 * k..4 * k + 4).map(|i| qw[i] * qx[i] as i8 as i32).sum();
            *a = dd.mul_add(lane as f32, *a);
        }
        if with_min {
            summs = f16_at(wb, 2).mul_add(f16_at(xb, 2), summs);
        }
    }
    hsum8(&acc) + summs
}

/// Q4_0 in the order of llama.cpp's repacked Q4_0: one accumulator, one fma per block.
fn dot_q4_0_blocks(w: &[u8], b_stride: usize, x: &[u8]) -> f32 {
    let mut acc = 0.0f32;
    let mut qw = [0i32; 32];
    let blocks = (0..).map(|i| w.get(i * b_stride..i * b_stride + 18)).map_while(|b| b);
    for (wb, xb) in blocks.zip(x.chunks_exact(Q8_0_BYTES)) {
        unpack_q4_0(wb, &mut qw);
        let isum: i32 = qw.iter().zip(&xb[2..]).map(|(&q, &y)| q * y as i8 as i32).sum();
        acc = (isum as f32).mul_add(f16_at(wb, 0) * f16_at(xb, 0), acc);
    }
    acc
}

/// Whether llama.cpp multiplies a `qtype` weight of `rows` rows in its repacked-Q4_0 order.
pub fn q4_0_repacked(qtype: QType, rows: usize) -> bool {
    qtype == QType::Q4_0 && rows.is_multiple_of(8)
}

/// `Σ w · x` of one weight row and its quantized activations (raw blocks): `w` starts at the
/// row's first block, and its blocks lie the given number of bytes apart (the block size for a
/// plain row, more in an interleaved layout).
pub type RowDot = fn(w: &[u8], b_stride: usize, x: &[u8]) -> f32;

/// The llama.cpp-order row product for `qtype`, or `None` for types computed elsewhere.
pub fn row_dot(qtype: QType) -> Option<RowDot> {
    Some(match qtype {
        QType::Q4_0 => |w, s, x| dot(QType::Q4_0, unpack_q4_0, w, s, x),
        QType::Q4_1 => |w, s, x| dot(QType::Q4_1, unpack_q4_1, w, s, x),
        QType::Q5_0 => |w, s, x| dot(QType::Q5_0, unpack_q5_0, w, s, x),
        QType::Q5_1 => |w, s, x| dot(QType::Q5_1, unpack_q5_1, w, s, x),
        QType::Q8_0 => |w, s, x| dot(QType::Q8_0, unpack_q8_0, w, s, x),
        _ => return None,
    })
}

/// [`row_dot`] for a weight of `rows` rows: the repacked-Q4_0 order where llama.cpp takes it.
pub fn row_dot_for(qtype: QType, rows: usize) -> Option<RowDot> {
    if q4_0_repacked(qtype, rows) {
        return Some(dot_q4_0_blocks);
    }
    row_dot(qtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::activation::{quantize_row_q8_0, quantize_row_q8_1};
    use crate::quant::dequantize_row;

    /// Deterministic pseudo-random bytes (xorshift), with valid small f16 scales patched in.
    fn blocks(qtype: QType, n_blocks: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        let mut out: Vec<u8> = (0..n_blocks * qtype.type_size())
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect();
        for (i, b) in out.chunks_exact_mut(qtype.type_size()).enumerate() {
            b[..2].copy_from_slice(&f16::from_f32(0.01 + 0.001 * i as f32).to_le_bytes());
            if matches!(qtype, QType::Q4_1 | QType::Q5_1) {
                b[2..4].copy_from_slice(&f16::from_f32(-0.05 * i as f32).to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn matches_dequantized_product() {
        let n = 256;
        let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        for qtype in [QType::Q4_0, QType::Q4_1, QType::Q5_0, QType::Q5_1, QType::Q8_0] {
            let w = blocks(qtype, n / 32, 0x9e37_79b9_7f4a_7c15);
            let with_min = matches!(qtype, QType::Q4_1 | QType::Q5_1);
            let mut xq = vec![0u8; n / 32 * if with_min { Q8_1_BYTES } else { Q8_0_BYTES }];
            let mut xd = vec![0.0f32; n];
            if with_min {
                quantize_row_q8_1(&x, &mut xq);
            } else {
                quantize_row_q8_0(&x, &mut xq);
            }
            let xb = xq.len() / (n / 32);
            for (blk, out) in xq.chunks_exact(xb).zip(xd.chunks_exact_mut(32)) {
                for (o, &q) in out.iter_mut().zip(&blk[xb - 32..]) {
                    *o = f16_at(blk, 0) * q as i8 as f32;
                }
            }
            let mut wd = vec![0.0f32; n];
            dequantize_row(qtype, &w, &mut wd);
            let mut want: f64 = wd.iter().zip(&xd).map(|(&a, &b)| a as f64 * b as f64).sum();
            if with_min {
                // The product uses s = f16(d · Σq), not the exact Σ d·q of the dequantized row.
                want += xq
                    .chunks_exact(Q8_1_BYTES)
                    .zip(w.chunks_exact(qtype.type_size()))
                    .map(|(xb, wb)| {
                        let exact: f64 = xb[4..].iter().map(|&q| q as i8 as f64).sum::<f64>() * f16_at(xb, 0) as f64;
                        f16_at(wb, 2) as f64 * (f16_at(xb, 2) as f64 - exact)
                    })
                    .sum::<f64>();
            }
            let got = row_dot(qtype).unwrap()(&w, qtype.type_size(), &xq) as f64;
            assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{qtype}: {got} vs {want}");
            let got = row_dot_for(qtype, 8).unwrap()(&w, qtype.type_size(), &xq) as f64;
            assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{qtype} (8 rows): {got} vs {want}");
        }
        assert!(row_dot(QType::Q4_K).is_none());
    }
}
