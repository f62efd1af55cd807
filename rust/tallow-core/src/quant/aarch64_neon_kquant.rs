//! aarch64 NEON twins of the integer parts of the llama.cpp-order K-quant products
//! (`kquant_order::q4k_ints`, `kquant_order::q6k_lanes`, `kquant_order::q5k_ints`), with `sdot`. They are integers, so
//! any summation order gives the same bits; the f32 steps that follow them in
//! `kquant_order::row_dot` are shared with the portable path. `IntKernels::best` hands them out
//! only on CPUs with `dotprod`.

use super::aarch64_neon::sdot;
use super::kquant_order::{q4k_imin, q4k_scales_mins, q6k_sub_offsets, Q4KInts, Q5KInts};
use std::arch::aarch64::*;

/// NEON twin of `kquant_order::q4k_ints`.
pub(super) fn q4k_ints(w: &[u8], a: &[u8]) -> Q4KInts {
    assert!(w.len() >= 144 && a.len() >= 292);
    // SAFETY: only reachable through `IntKernels::best`, which checked for dotprod; the lengths
    // were checked above.
    unsafe { q4k_ints_neon(w, a) }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn q4k_ints_neon(w: &[u8], a: &[u8]) -> Q4KInts {
    let (sc, mn) = q4k_scales_mins(&w[4..16]);
    let mut out = Q4KInts::default();
    for j in 0..4 {
        // SAFETY: every load stays inside the 144-byte and 292-byte blocks (the caller's
        // guarantee); the CPU has dotprod.
        let (lo, hi) = unsafe {
            // Elements 64j..64j + 32 are the low nibbles of qs[32j..32j + 32], the next 32 the
            // high ones.
            let qs = |o: usize| vld1q_u8(w.as_ptr().add(16 + 32 * j + o));
            let y = |o: usize| vld1q_s8(a.as_ptr().add(4 + 64 * j + o) as *const i8);
            let (q0, q1) = (qs(0), qs(16));
            let nib = |v: uint8x16_t| vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f)));
            let top = |v: uint8x16_t| vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
            (
                vaddvq_s32(vaddq_s32(sdot(nib(q0), y(0)), sdot(nib(q1), y(16)))),
                vaddvq_s32(vaddq_s32(sdot(top(q0), y(32)), sdot(top(q1), y(48)))),
            )
        };
        out.isum[j] = sc[2 * j] as i32 * lo + sc[2 * j + 1] as i32 * hi;
        out.imin[j] = q4k_imin(&mn, a, j);
    }
    out
}

/// NEON twin of `kquant_order::q6k_lanes` (the lanes of `ggml_vec_dot_q6_K_q8_K`).
pub(super) fn q6k_lanes(w: &[u8], a: &[u8]) -> [i32; 8] {
    assert!(w.len() >= 210 && a.len() >= 292);
    // SAFETY: as for `q4k_ints`.
    unsafe { q6k_lanes_neon(w, a) }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn q6k_lanes_neon(w: &[u8], a: &[u8]) -> [i32; 8] {
    let sc = &w[192..208];
    let mut lanes = [0i32; 8];
    // SAFETY: every load stays inside the 210-byte and 292-byte blocks (the caller's guarantee);
    // `lanes` holds 8 i32; the CPU has dotprod.
    unsafe {
        let m4 = vdupq_n_u8(0x0f);
        let mask = |v: uint8x16_t, m: u8| vandq_u8(v, vdupq_n_u8(m));
        // Lanes 0..4 take bytes 0..16 of every 32-element chunk, lanes 4..8 bytes 16..32, and
        // the two halves of a chunk have scales of their own.
        let mut acc = [vdupq_n_s32(0); 2];
        for h in 0..2 {
            for (half, acc) in acc.iter_mut().enumerate() {
                let o = 16 * half;
                let l0 = vld1q_u8(w.as_ptr().add(64 * h + o));
                let l1 = vld1q_u8(w.as_ptr().add(64 * h + 32 + o));
                let hb = vld1q_u8(w.as_ptr().add(128 + 32 * h + o));
                // Chunk c of the half: 4 low bits from ql, 2 high bits from qh, unsigned 0..63.
                let q = [
                    vorrq_u8(vandq_u8(l0, m4), vshlq_n_u8::<4>(mask(hb, 0x03))),
                    vorrq_u8(vandq_u8(l1, m4), vshlq_n_u8::<2>(mask(hb, 0x0c))),
                    vorrq_u8(vshrq_n_u8::<4>(l0), mask(hb, 0x30)),
                    vorrq_u8(vshrq_n_u8::<4>(l1), vshrq_n_u8::<2>(mask(hb, 0xc0))),
                ];
                for (c, &qc) in q.iter().enumerate() {
                    let y = vld1q_s8(a.as_ptr().add(4 + 128 * h + 32 * c + o) as *const i8);
                    let scale = sc[8 * h + 2 * c + half] as i8 as i32;
                    *acc = vmlaq_n_s32(*acc, sdot(vreinterpretq_s8_u8(qc), y), scale);
                }
            }
        }
        vst1q_s32(lanes.as_mut_ptr(), acc[0]);
        vst1q_s32(lanes.as_mut_ptr().add(4), acc[1]);
    }
    q6k_sub_offsets(&mut lanes, sc, a);
    lanes
}

/// NEON twin of `kquant_order::q5k_ints` (the lanes of `ggml_vec_dot_q5_K_q8_K`).
pub(super) fn q5k_ints(w: &[u8], a: &[u8]) -> Q5KInts {
    assert!(w.len() >= 176 && a.len() >= 292);
    // SAFETY: as for `q4k_ints`.
    unsafe { q5k_ints_neon(w, a) }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn q5k_ints_neon(w: &[u8], a: &[u8]) -> Q5KInts {
    let (sc, mn) = q4k_scales_mins(&w[4..16]);
    let mut out = Q5KInts::default();
    // SAFETY: every load stays inside the 176-byte and 292-byte blocks (the caller's guarantee);
    // `out.lanes` holds 8 i32; the CPU has dotprod.
    unsafe {
        let (m4, b4) = (vdupq_n_u8(0x0f), vdupq_n_u8(0x10));
        // Lanes 0..4 take bytes 0..16 of every 32-element sub-block, lanes 4..8 bytes 16..32
        // (`sdot` sums 4 neighbouring byte products into each 32-bit lane).
        let mut acc = [vdupq_n_s32(0); 2];
        for (half, acc) in acc.iter_mut().enumerate() {
            let o = 16 * half;
            let qh = vld1q_u8(w.as_ptr().add(16 + o));
            // Bit `b` of every qh byte as 16, the fifth bit of the quant.
            let high = |b: usize| vandq_u8(vtstq_u8(qh, vdupq_n_u8(1 << b)), b4);
            for j in 0..4 {
                let qs = vld1q_u8(w.as_ptr().add(48 + 32 * j + o));
                // Sub-block 2j: the low nibbles and bit 2j; sub-block 2j + 1: the high nibbles
                // and bit 2j + 1. Unsigned 0..31, so reading them as i8 changes nothing.
                let lo = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(qs, m4), high(2 * j)));
                let hi = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8::<4>(qs), high(2 * j + 1)));
                let y = |h: usize| vld1q_s8(a.as_ptr().add(4 + 64 * j + 32 * h + o) as *const i8);
                *acc = vmlaq_n_s32(*acc, sdot(lo, y(0)), sc[2 * j] as i32);
                *acc = vmlaq_n_s32(*acc, sdot(hi, y(1)), sc[2 * j + 1] as i32);
            }
        }
        vst1q_s32(out.lanes.as_mut_ptr(), acc[0]);
        vst1q_s32(out.lanes.as_mut_ptr().add(4), acc[1]);
    }
    out.imin = (0..4).map(|j| q4k_imin(&mn, a, j)).sum();
    out
}
