//! The kernel dispatch point: one table of function pointers, chosen once per process from the
//! CPU's features (DESIGN.md rule 7), never from compile-time target features.
//!
//! `TALLOW_KERNELS=scalar|avx2|avx512vnni` forces a table (falling back to the best one the CPU
//! can run when the forced one needs features it lacks), so tests and users can compare paths.

use super::blocks::{BlockQ8K, BlockQ8_0, BlockQ8_1};
use super::scalar;
use super::QType;
use std::sync::OnceLock;

/// Dot product of `n` weights (`w`: weight blocks) with `n` quantized activations (`a`:
/// activation blocks of the weight type's partner). Unsafe only because a SIMD kernel must
/// run on a CPU with its features, which [`Kernels`]' constructors guarantee.
pub type VecDotFn = unsafe fn(n: usize, w: &[u8], a: &[u8]) -> f32;
type QuantizeFn<B> = unsafe fn(x: &[f32], y: &mut [B]);

/// One instruction set's kernels. Obtain with [`kernels()`] (the process-wide choice) or a
/// constructor (tests, benchmarks).
#[derive(Clone, Copy)]
pub struct Kernels {
    name: &'static str,
    quantize_q8_0: QuantizeFn<BlockQ8_0>,
    quantize_q8_1: QuantizeFn<BlockQ8_1>,
    quantize_q8_k: QuantizeFn<BlockQ8K>,
    q4_0: VecDotFn,
    q4_1: VecDotFn,
    q5_0: VecDotFn,
    q5_1: VecDotFn,
    q8_0: VecDotFn,
    q2_k: VecDotFn,
    q3_k: VecDotFn,
    q4_k: VecDotFn,
    q5_k: VecDotFn,
    q6_k: VecDotFn,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kernels({})", self.name)
    }
}

/// The process-wide kernels, chosen on first use.
pub fn kernels() -> &'static Kernels {
    static CHOSEN: OnceLock<Kernels> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        let forced = std::env::var("TALLOW_KERNELS").unwrap_or_default();
        match forced.trim().to_ascii_lowercase().as_str() {
            "scalar" => Kernels::scalar(),
            "avx2" => Kernels::avx2().unwrap_or_else(Kernels::scalar),
            _ => Kernels::best(),
        }
    })
}

impl Kernels {
    /// `"avx512vnni"`, `"avx2"`, `"scalar"`: what `build_info()` reports.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The reference path: candle's scalar routines. Runs everywhere.
    pub fn scalar() -> Kernels {
        Kernels {
            name: "scalar",
            quantize_q8_0: scalar::quantize_q8_0,
            quantize_q8_1: scalar::quantize_q8_1,
            quantize_q8_k: scalar::quantize_q8_k,
            q4_0: scalar::vec_dot_q4_0_q8_0,
            q4_1: scalar::vec_dot_q4_1_q8_1,
            q5_0: scalar::vec_dot_q5_0_q8_0,
            q5_1: scalar::vec_dot_q5_1_q8_1,
            q8_0: scalar::vec_dot_q8_0_q8_0,
            q2_k: scalar::vec_dot_q2_k_q8_k,
            q3_k: scalar::vec_dot_q3_k_q8_k,
            q4_k: scalar::vec_dot_q4_k_q8_k,
            q5_k: scalar::vec_dot_q5_k_q8_k,
            q6_k: scalar::vec_dot_q6_k_q8_k,
        }
    }

    /// AVX2 + FMA + F16C kernels, if this CPU has them.
    pub fn avx2() -> Option<Kernels> {
        #[cfg(target_arch = "x86_64")]
        if super::x86_avx2_detected() {
            use super::x86_avx2 as k;
            use candle_core::quantized::k_quants as ck;
            return Some(Kernels {
                name: "avx2",
                quantize_q8_0: k::quantize_q8_0,
                quantize_q8_1: k::quantize_q8_1,
                quantize_q8_k: k::quantize_q8_k,
                q4_0: k::vec_dot_q4_0_q8_0,
                q4_1: k::vec_dot_q4_1_q8_1,
                q5_0: k::vec_dot_q5_0_q8_0,
                q5_1: k::vec_dot_q5_1_q8_1,
                q8_0: k::vec_dot_q8_0_q8_0,
                // Not written yet: candle's own runtime-dispatched AVX2 routines.
                q2_k: scalar::candle_vec_dot::<ck::BlockQ2K>,
                q3_k: scalar::candle_vec_dot::<ck::BlockQ3K>,
                q4_k: k::vec_dot_q4_k_q8_k,
                q5_k: scalar::candle_vec_dot::<ck::BlockQ5K>,
                q6_k: k::vec_dot_q6_k_q8_k,
            });
        }
        None
    }

    /// AVX-512 VNNI kernels (AVX2 ones where no wider kernel exists), if this CPU has them.
    pub fn avx512vnni() -> Option<Kernels> {
        #[cfg(target_arch = "x86_64")]
        if super::x86_avx512::detected() {
            use super::x86_avx512 as k;
            let base = Kernels::avx2()?;
            return Some(Kernels {
                name: "avx512vnni",
                q4_0: k::vec_dot_q4_0_q8_0,
                q4_1: k::vec_dot_q4_1_q8_1,
                q5_0: k::vec_dot_q5_0_q8_0,
                q5_1: k::vec_dot_q5_1_q8_1,
                q8_0: k::vec_dot_q8_0_q8_0,
                ..base
            });
        }
        None
    }

    /// aarch64: candle's NEON dot products (NEON is baseline there, so candle compiles them in).
    /// `matmul` itself takes tallow's `aarch64_neon.rs` row products for the 32-element formats
    /// (llama.cpp's order) where the CPU has dotprod; this table serves `matmul_with`.
    #[cfg(target_arch = "aarch64")]
    pub fn neon() -> Option<Kernels> {
        {
            use candle_core::quantized::k_quants as ck;
            Some(Kernels {
                name: "neon",
                q4_0: scalar::candle_vec_dot::<ck::BlockQ4_0>,
                q4_1: scalar::candle_vec_dot::<ck::BlockQ4_1>,
                q5_0: scalar::candle_vec_dot::<ck::BlockQ5_0>,
                q5_1: scalar::candle_vec_dot::<ck::BlockQ5_1>,
                q8_0: scalar::candle_vec_dot::<ck::BlockQ8_0>,
                q2_k: scalar::candle_vec_dot::<ck::BlockQ2K>,
                q3_k: scalar::candle_vec_dot::<ck::BlockQ3K>,
                q4_k: scalar::candle_vec_dot::<ck::BlockQ4K>,
                q5_k: scalar::candle_vec_dot::<ck::BlockQ5K>,
                q6_k: scalar::candle_vec_dot::<ck::BlockQ6K>,
                ..Kernels::scalar()
            })
        }
    }

    /// aarch64 only.
    #[cfg(not(target_arch = "aarch64"))]
    pub fn neon() -> Option<Kernels> {
        None
    }

    /// The fastest table this CPU runs.
    pub fn best() -> Kernels {
        Kernels::avx512vnni().or_else(Kernels::avx2).or_else(Kernels::neon).unwrap_or_else(Kernels::scalar)
    }

    /// Every table this CPU can run, best last (tests compare each against `scalar`).
    pub fn available() -> Vec<Kernels> {
        [Some(Kernels::scalar()), Kernels::avx2(), Kernels::avx512vnni(), Kernels::neon()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// f32 -> Q8_0, one block per 32 values.
    pub fn quantize_q8_0(&self, x: &[f32], y: &mut [BlockQ8_0]) {
        assert_eq!(x.len(), y.len() * 32, "quantize_q8_0: {} values for {} blocks", x.len(), y.len());
        // SAFETY: this table was built for this CPU.
        unsafe { (self.quantize_q8_0)(x, y) }
    }

    /// f32 -> Q8_1, one block per 32 values.
    pub fn quantize_q8_1(&self, x: &[f32], y: &mut [BlockQ8_1]) {
        assert_eq!(x.len(), y.len() * 32, "quantize_q8_1: {} values for {} blocks", x.len(), y.len());
        // SAFETY: this table was built for this CPU.
        unsafe { (self.quantize_q8_1)(x, y) }
    }

    /// f32 -> Q8_K, one block per 256 values.
    pub fn quantize_q8_k(&self, x: &[f32], y: &mut [BlockQ8K]) {
        assert_eq!(x.len(), y.len() * 256, "quantize_q8_k: {} values for {} blocks", x.len(), y.len());
        // SAFETY: this table was built for this CPU.
        unsafe { (self.quantize_q8_k)(x, y) }
    }

    /// The dot-product kernel for weights of `qtype` (None for float and unsupported types).
    /// Callers check slice lengths once per matrix, then call it per row.
    pub fn vec_dot_fn(&self, qtype: QType) -> Option<VecDotFn> {
        Some(match qtype {
            QType::Q4_0 => self.q4_0,
            QType::Q4_1 => self.q4_1,
            QType::Q5_0 => self.q5_0,
            QType::Q5_1 => self.q5_1,
            QType::Q8_0 => self.q8_0,
            QType::Q2_K => self.q2_k,
            QType::Q3_K => self.q3_k,
            QType::Q4_K => self.q4_k,
            QType::Q5_K => self.q5_k,
            QType::Q6_K => self.q6_k,
            _ => return None,
        })
    }

    /// Safe single dot product (tests, benchmarks): `n` weights of `qtype` in `w` with the
    /// matching activation blocks in `a`. Panics if the byte lengths do not match `n`.
    pub fn vec_dot(&self, qtype: QType, n: usize, w: &[u8], a: &[u8]) -> f32 {
        let f = self.vec_dot_fn(qtype).unwrap_or_else(|| panic!("no quantized dot product for {qtype}"));
        let act = super::act_type(qtype).expect("quantized type has an activation type");
        assert_eq!(Some(w.len() as u64), qtype.row_bytes(n as u64), "vec_dot {qtype}: weight bytes");
        assert_eq!(Some(a.len() as u64), act.row_bytes(n as u64), "vec_dot {qtype}: activation bytes");
        // SAFETY: this table was built for this CPU; lengths checked above.
        unsafe { f(n, w, a) }
    }
}
