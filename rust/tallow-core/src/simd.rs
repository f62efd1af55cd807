//! Plain Rust loops compiled for the CPU's vector extensions, chosen at run time.
//!
//! The element-wise steps of a forward pass (activation quantizers, norms, RoPE, SwiGLU) are
//! written as scalar Rust whose every operation is spelled out, which is what keeps them equal
//! to llama.cpp bit for bit. Built for baseline x86-64, though, `mul_add` and round-to-even are
//! libm calls and nothing vectorizes. [`simd_fn!`] compiles the same code a second time with
//! AVX2 + FMA + F16C enabled: the same operations in the same order (Rust never fuses or
//! reorders float arithmetic on its own), as single instructions and vectorized loops.

/// Whether this CPU has AVX2, FMA and F16C (std caches the detection).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// Defines a function whose body runs compiled for AVX2 + FMA + F16C where the CPU has them,
/// and as plain code elsewhere. Helpers the body calls must be `#[inline(always)]` to be
/// compiled inside the enabled copy.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            if $crate::simd::avx2() {
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn enabled($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                // SAFETY: the features were detected just above.
                return unsafe { enabled($($arg),*) };
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_fn;
