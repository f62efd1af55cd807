//! Tiles of 16 weight rows × a few tokens with AVX-512 VNNI, on weights repacked by `x16.rs`:
//! lane `r` of every vector belongs to row `r`, so each 64-byte load of quants feeds 16 rows,
//! each token's 4 activation bytes are broadcast into `vpdpbusd`, and the 16 results are stored
//! with one instruction. No horizontal sums; every (row, token) still sums in llama.cpp's
//! order, lane by lane (`x86_x16_legacy.rs`, `x86_x16_kquant.rs`).

use super::kquant_order::KOrder;
use super::x86_legacy_tile::TileFn;
use super::x86_x16_kquant::{q4k, q5k, q5k_expand, q6k, q6k_expand, Q5K_EXPANDED, Q6K_EXPANDED};
use super::x86_x16_legacy::{legacy, q4_0_blocks, Q4_1, Q5_0, Q5_1, Q8_0};
use super::QType;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// The tiles of one repacked type, where this CPU has AVX-512 VNNI.
#[derive(Clone, Copy)]
pub struct X16Tiles(QType);

impl X16Tiles {
    pub fn for_type(qtype: QType) -> Option<X16Tiles> {
        let cpu = super::x86_avx2_detected() && super::x86_avx512::detected();
        (cpu && super::x16::repacks(qtype)).then_some(X16Tiles(qtype))
    }

    /// Whether a product of `n_tokens` tokens expands each group of rows before running its
    /// tiles over it ([`Self::expand`]): Q5_K and Q6_K, whose unpacking bounds their tiles,
    /// once 3 or more tiles of up to 4 tokens share each group.
    pub fn expands(self, n_tokens: usize) -> bool {
        matches!(self.0, QType::Q5_K | QType::Q6_K) && n_tokens > 8
    }

    /// Bytes of an expanded group block.
    pub fn expanded_block(self) -> usize {
        match self.0 {
            QType::Q5_K => Q5K_EXPANDED,
            QType::Q6_K => Q6K_EXPANDED,
            t => panic!("{t} has no expanded layout"),
        }
    }

    /// Expands `nb` group blocks at `w`, `b_stride` bytes apart, into `out`, for the tiles that
    /// [`Self::tile`] gives with `expanded`.
    ///
    /// # Safety
    /// `w` holds `nb` group blocks of this type and `out` `nb * self.expanded_block()` bytes.
    pub unsafe fn expand(self, nb: usize, w: *const u8, b_stride: usize, out: *mut u8) {
        debug_assert!(self.expands(usize::MAX));
        // SAFETY: the CPU has AVX-512 (`for_type`); buffers as the caller guarantees.
        unsafe {
            match self.0 {
                QType::Q5_K => q5k_expand(nb, w, b_stride, out),
                _ => q6k_expand(nb, w, b_stride, out),
            }
        }
    }

    /// The tile for the next `run` tokens (1 to 4) of a product, which all take the llama.cpp
    /// path `order` ([`super::kquant_order::k_order`]; `None` for the 32-element formats, whose
    /// order does not depend on the token count), and how many of them it takes. `expanded`:
    /// the tile reads expanded group blocks ([`Self::expand`]).
    pub fn tile(self, order: Option<KOrder>, run: usize, expanded: bool) -> (TileFn, usize) {
        debug_assert!((1..=4).contains(&run));
        debug_assert!(!expanded || self.expands(usize::MAX));
        // The 32-element formats: 8 accumulators per token, so 2 tokens fill the registers.
        let two = run >= 2;
        macro_rules! legacy {
            ($k:expr) => {
                if two {
                    (legacy::<$k, 2> as TileFn, 2)
                } else {
                    (legacy::<$k, 1> as TileFn, 1)
                }
            };
        }
        match self.0 {
            // llama.cpp's repacked order, one accumulator per token: 4 tokens fit.
            QType::Q4_0 => {
                return match run {
                    1 => (q4_0_blocks::<1>, 1),
                    2 => (q4_0_blocks::<2>, 2),
                    3 => (q4_0_blocks::<3>, 3),
                    _ => (q4_0_blocks::<4>, 4),
                }
            }
            QType::Q4_1 => return legacy!(Q4_1),
            QType::Q5_0 => return legacy!(Q5_0),
            QType::Q5_1 => return legacy!(Q5_1),
            QType::Q8_0 => return legacy!(Q8_0),
            _ => {}
        }
        let order = order.expect("a K-quant order for a repacked K-quant");
        let nt = run;
        // `f::<nt, flags..>` for 1 to 4 tokens.
        macro_rules! by_tokens {
            ($f:ident, $($flag:expr),+) => {
                match nt {
                    1 => $f::<1, $($flag),+> as TileFn,
                    2 => $f::<2, $($flag),+>,
                    3 => $f::<3, $($flag),+>,
                    _ => $f::<4, $($flag),+>,
                }
            };
        }
        let tile: TileFn = match order {
            // GEMM tokens come in whole groups of 4 in each sequence.
            KOrder::Q4KGemm => {
                assert_eq!(nt, 4, "Q4_K GEMM tokens come in groups of 4");
                q4k::<4, true>
            }
            KOrder::Q4KGemv => by_tokens!(q4k, false),
            KOrder::Q6KTiled if expanded => by_tokens!(q6k, true, true),
            KOrder::Q6KTiled => by_tokens!(q6k, true, false),
            KOrder::Q6KVecDot if expanded => by_tokens!(q6k, false, true),
            KOrder::Q6KVecDot => by_tokens!(q6k, false, false),
            KOrder::Q5KTiled if expanded => by_tokens!(q5k, true, true),
            KOrder::Q5KTiled => by_tokens!(q5k, true, false),
            KOrder::Q5KVecDot if expanded => by_tokens!(q5k, false, true),
            KOrder::Q5KVecDot => by_tokens!(q5k, false, false),
        };
        (tile, nt)
    }
}

#[inline(always)]
pub(super) unsafe fn load(p: *const u8) -> __m512i {
    unsafe { _mm512_loadu_si512(p as *const _) }
}

#[inline(always)]
pub(super) unsafe fn bcast_i32(p: *const u8) -> __m512i {
    unsafe { _mm512_set1_epi32((p as *const i32).read_unaligned()) }
}

/// A cache line, so that expanded blocks start on one.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

thread_local! {
    /// This thread's expanded group blocks, reused by every product: grown, never shrunk.
    static EXPANDED: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// This thread's buffer for expanded group blocks, of at least `bytes` bytes and aligned to a
/// cache line. It stays valid until the next call on this thread.
pub fn expansion_buffer(bytes: usize) -> *mut u8 {
    EXPANDED.with_borrow_mut(|v| {
        if v.len() * 64 < bytes {
            v.resize(bytes.div_ceil(64), Line([0; 64]));
        }
        v.as_mut_ptr() as *mut u8
    })
}
