//! aarch64 NEON row products of the 32-element formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) with the
//! `dotprod` extension (ARMv8.2+: Apple M, Graviton 2+, Cortex-A76+), bit for bit in the order of
//! `legacy_dot.rs`.
//!
//! That order fits NEON without any shuffling: `sdot` (`vdotq_s32`) sums 4 neighbouring byte products
//! into each 32-bit lane, so the two dot products of a block's halves are exactly the 8 lanes of
//! llama.cpp's x86 order (lane `k`: elements `4k..4k + 4`), and `vfmaq_f32` is the same fused
//! multiply-add as the portable `mul_add`. Weights are unpacked to signed bytes first (nibbles,
//! Q5's fifth bit from a 256-entry table, the format's offset subtracted).
//!
//! Without `dotprod` (Cortex-A72, Raspberry Pi 4), [`row_dot_for`] hands out nothing and
//! `matmul` keeps the portable products.

use super::legacy_dot::{self, hsum8, RowDot};
use super::QType;
use half::f16;
use std::arch::aarch64::*;

/// Whether this CPU has the `dotprod` instructions these kernels use.
pub fn detected() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// The NEON row product for a `qtype` weight of `rows` rows, in the order
/// [`legacy_dot::row_dot_for`] gives it (None without `dotprod` or for other types).
pub fn row_dot_for(qtype: QType, rows: usize) -> Option<RowDot> {
    if !detected() {
        return None;
    }
    if legacy_dot::q4_0_repacked(qtype, rows) {
        return Some(|w, s, x| checked::<Q4_0, true>(w, s, x));
    }
    Some(match qtype {
        QType::Q4_0 => |w, s, x| checked::<Q4_0, false>(w, s, x),
        QType::Q4_1 => |w, s, x| checked::<Q4_1, false>(w, s, x),
        QType::Q5_0 => |w, s, x| checked::<Q5_0, false>(w, s, x),
        QType::Q5_1 => |w, s, x| checked::<Q5_1, false>(w, s, x),
        QType::Q8_0 => |w, s, x| checked::<Q8_0, false>(w, s, x),
        _ => return None,
    })
}

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;

/// Byte `i` is 0x10 where bit `i` of the index is set: one byte of Q5's `qh` as the fifth bits of
/// its 8 quants.
static BIT4: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut v = 0;
    while v < 256 {
        let mut i = 0;
        while i < 8 {
            if v >> i & 1 == 1 {
                t[v] |= 0x10 << (8 * i);
            }
            i += 1;
        }
        v += 1;
    }
    t
};

/// Safe entry: the blocks both slices hold (as `legacy_dot`'s products take them), then the
/// kernel, or the portable product on a CPU without `dotprod`.
fn checked<const K: u8, const BLOCKS: bool>(w: &[u8], b_stride: usize, x: &[u8]) -> f32 {
    let qtype = [QType::Q4_0, QType::Q4_1, QType::Q5_0, QType::Q5_1, QType::Q8_0][K as usize];
    if !detected() {
        let portable = if BLOCKS { legacy_dot::row_dot_for(qtype, 8) } else { legacy_dot::row_dot(qtype) };
        return portable.expect("a 32-element format")(w, b_stride, x);
    }
    let (w_bytes, (x_bytes, _)) = (qtype.type_size(), act_layout::<K>());
    let n_w = if w.len() >= w_bytes { (w.len() - w_bytes) / b_stride.max(1) + 1 } else { 0 };
    let n = n_w.min(x.len() / x_bytes);
    // SAFETY: the CPU has dotprod (checked above); `n` blocks lie inside both slices.
    unsafe { dot::<K, BLOCKS>(n, w.as_ptr(), b_stride, x.as_ptr()) }
}

/// Bytes of one activation block of type `K`'s partner and where its quants start: Q8_1
/// (`d`, `s`, 32 × i8) for Q4_1/Q5_1, Q8_0 (`d`, 32 × i8) for the others.
const fn act_layout<const K: u8>() -> (usize, usize) {
    if matches!(K, Q4_1 | Q5_1) {
        (36, 4)
    } else {
        (34, 2)
    }
}

/// The little-endian f16 at `p`, which must point at 2 readable bytes.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the caller's guarantee.
    f16::from_le_bytes(unsafe { [*p, *p.add(1)] }).to_f32()
}

/// Elements 0..16 and 16..32 of the weight block at `b` as signed bytes.
#[inline(always)]
unsafe fn unpack<const K: u8>(b: *const u8) -> (int8x16_t, int8x16_t) {
    // SAFETY: `b` points at a whole block of type K (the caller's guarantee).
    unsafe {
        if K == Q8_0 {
            return (vld1q_s8(b.add(2) as *const i8), vld1q_s8(b.add(18) as *const i8));
        }
        let qs_at = match K {
            Q4_0 => 2,
            Q4_1 => 4,
            Q5_0 => 6,
            _ => 8,
        };
        let qs = vld1q_u8(b.add(qs_at));
        let (mut lo, mut hi) = (vandq_u8(qs, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(qs));
        if matches!(K, Q5_0 | Q5_1) {
            let qh = u32::from_le_bytes(std::ptr::read_unaligned(b.add(qs_at - 4) as *const [u8; 4]));
            let bits = |s: u32| vcreate_u8(BIT4[(qh >> s & 0xff) as usize]);
            lo = vorrq_u8(lo, vcombine_u8(bits(0), bits(8)));
            hi = vorrq_u8(hi, vcombine_u8(bits(16), bits(24)));
        }
        let offset = match K {
            Q4_0 => 8,
            Q5_0 => 16,
            _ => 0,
        };
        let s = |v: uint8x16_t| vsubq_s8(vreinterpretq_s8_u8(v), vdupq_n_s8(offset));
        (s(lo), s(hi))
    }
}

/// Lane `i`: `Σ_j a[4i + j] · b[4i + j]` (`vdotq_s32` from zero; the intrinsic is still
/// unstable in Rust 1.96, the instruction is not).
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) unsafe fn sdot(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = vdupq_n_s32(0);
    // SAFETY: `sdot` reads and writes only these registers; the CPU has dotprod (the caller's
    // guarantee).
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack)
        )
    };
    acc
}

/// `n` blocks of type `K` at `w` (`b_stride` bytes apart) times the activation blocks at `x`:
/// `legacy_dot`'s 8-lane order, or with `BLOCKS` its repacked-Q4_0 order.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot<const K: u8, const BLOCKS: bool>(n: usize, w: *const u8, b_stride: usize, x: *const u8) -> f32 {
    let with_min = matches!(K, Q4_1 | Q5_1);
    let (x_bytes, x_qs) = act_layout::<K>();
    // SAFETY (whole body): `n` blocks at `w` and `x` (the caller's guarantee).
    unsafe {
        let (mut acc_lo, mut acc_hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
        let (mut acc, mut summs) = (0.0f32, 0.0f32);
        for i in 0..n {
            let (wb, xb) = (w.add(i * b_stride), x.add(i * x_bytes));
            let (w0, w1) = unpack::<K>(wb);
            let (y0, y1) = (vld1q_s8(xb.add(x_qs) as *const i8), vld1q_s8(xb.add(x_qs + 16) as *const i8));
            // Lane k of `lo`: elements 4k..4k + 4; of `hi`: 16 + 4k..16 + 4k + 4.
            let lo = sdot(w0, y0);
            let hi = sdot(w1, y1);
            let dd = f16_at(wb) * f16_at(xb); // f16 × f16: exact in f32
            if BLOCKS {
                acc = (vaddvq_s32(vaddq_s32(lo, hi)) as f32).mul_add(dd, acc);
            } else {
                acc_lo = vfmaq_n_f32(acc_lo, vcvtq_f32_s32(lo), dd);
                acc_hi = vfmaq_n_f32(acc_hi, vcvtq_f32_s32(hi), dd);
            }
            if with_min {
                summs = f16_at(wb.add(2)).mul_add(f16_at(xb.add(2)), summs);
            }
        }
        if BLOCKS {
            return acc;
        }
        let mut l = [0.0f32; 8];
        vst1q_f32(l.as_mut_ptr(), acc_lo);
        vst1q_f32(l.as_mut_ptr().add(4), acc_hi);
        hsum8(&l) + summs
    }
}
