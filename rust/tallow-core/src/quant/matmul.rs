//! `matmul`: quantized weights × f32 activations, through the dispatched kernels.
//!
//! Activations are quantized once per call into the scratch buffer (Q8_0, Q8_1 or Q8_K, per the
//! weight type), then each worker takes a contiguous range of weight rows and multiplies every
//! row with all tokens while it is in L1, so prefill reads each weight once per call.

use super::blocks::{ActBlock, BlockQ8K, BlockQ8_0, BlockQ8_1};
use super::kernels::{kernels, Kernels};
use super::kquant_order::{self, k_order, IntKernels};
use super::{reference, QTensor, QType};
use crate::threadpool::{split_range, ThreadPool};

/// Reusable buffer for quantized activations: once it has grown to the largest product of a
/// model, calls allocate nothing.
#[derive(Default)]
pub struct MatmulScratch {
    buf: Vec<u64>,
}

impl MatmulScratch {
    /// `n` blocks of `T` (zeroed on growth, otherwise left over from earlier calls).
    pub(crate) fn blocks<T>(&mut self, n: usize) -> &mut [T] {
        assert!(std::mem::align_of::<T>() <= 8);
        let bytes = n.checked_mul(std::mem::size_of::<T>()).expect("scratch size overflows");
        if self.buf.len() * 8 < bytes {
            self.buf.resize(bytes.div_ceil(8), 0);
        }
        // SAFETY: the buffer holds at least `bytes` bytes, is 8-aligned (enough for every block
        // type) and every bit pattern is a valid block (plain ints and floats).
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr() as *mut T, n) }
    }

    /// Bytes currently reserved (tests check that a warm scratch stops growing).
    pub fn capacity_bytes(&self) -> usize {
        self.buf.capacity() * 8
    }
}

/// A raw output pointer that workers write disjoint parts of.
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);
// SAFETY: every user writes only indices no other worker touches in the same `run`.
unsafe impl<T> Sync for SyncPtr<T> {}

/// `y[t * rows + r] = Σ_c W[r, c] · x[t * cols + c]` for `t in 0..n_tokens`, with llama.cpp's
/// numerics: activations are quantized exactly as llama.cpp rounds them (`activation.rs`), the
/// 32-element formats are summed in its order (`legacy_dot.rs`), Q4_K and Q6_K in the order of the
/// path llama.cpp takes for this shape and token count (`kquant_order.rs`), and the other
/// k-quants go through the process-wide SIMD kernels ([`kernels()`]). Bit-level agreement matters: one ulp of difference
/// flips an int8 rounding in a later layer now and then, and those flips compound.
///
/// `x` is `[n_tokens, cols]`, `y` is `[n_tokens, rows]`, both row-major.
pub fn matmul(w: &QTensor, x: &[f32], n_tokens: usize, y: &mut [f32], scratch: &mut MatmulScratch, pool: &ThreadPool) {
    check_shapes(w, x, n_tokens, y);
    let k = kernels();
    let Some(table_dot) = k.vec_dot_fn(w.qtype) else {
        return reference::matmul_candle(w, x, n_tokens, y, scratch, pool);
    };
    // The 32-element formats must sum in llama.cpp's order: the AVX2 kernels do (bit-identical,
    // tests/quant_llama_order.rs); elsewhere, or with TALLOW_KERNELS=scalar, the portable `row_dot`.
    let legacy = super::legacy_dot::row_dot(w.qtype)
        .map(|exact| (exact, Kernels::avx2().filter(|_| k.name() != "scalar").and_then(|t| t.vec_dot_fn(w.qtype))));
    let cols = w.cols;
    // Q4_K and Q6_K: the order of the llama.cpp path this shape and token count would take.
    let ints = if k.name() == "scalar" { IntKernels::PORTABLE } else { IntKernels::best() };
    let dot = |wr: &[u8], at: &[u8], t: usize| match legacy {
        // SAFETY: the AVX2 table exists only on CPUs with AVX2; `wr` and `at` hold `cols` values.
        Some((_, Some(avx2))) => unsafe { avx2(cols, wr, at) },
        Some((exact, None)) => exact(wr, at),
        None => match k_order(w.qtype, w.rows, t, n_tokens) {
            Some(order) => kquant_order::row_dot(order, &ints, wr, at),
            // SAFETY: the table matches this CPU; `wr` and `at` hold exactly `cols` values.
            None => unsafe { table_dot(cols, wr, at) },
        },
    };
    // Where the AVX2 kernels run, 4 tokens at a time share each weight block (same bits).
    #[cfg(target_arch = "x86_64")]
    let x4 = match legacy {
        Some((_, Some(_))) => super::x86_legacy_x4::dot_x4_fn(w.qtype),
        _ => None,
    };
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the kernel exists only on CPUs with AVX2; `wr` and every `at` hold `cols` values.
    let dot4 = x4.map(|f| move |wr: &[u8], at: [&[u8]; 4]| unsafe { f(cols, wr, at) });
    #[cfg(not(target_arch = "x86_64"))]
    let dot4: Option<fn(&[u8], [&[u8]; 4]) -> [f32; 4]> = None;
    let dot4 = dot4.as_ref().map(|f| f as &RowDotX4<'_>);
    match super::act_type(w.qtype) {
        Some(QType::Q8_0) => run::<BlockQ8_0>(w, x, n_tokens, y, scratch, pool, &dot, dot4, &|x, b| {
            super::activation::quantize_row_q8_0(x, super::blocks::as_bytes_mut(b))
        }),
        Some(QType::Q8_1) => run::<BlockQ8_1>(w, x, n_tokens, y, scratch, pool, &dot, dot4, &|x, b| {
            super::activation::quantize_row_q8_1(x, super::blocks::as_bytes_mut(b))
        }),
        Some(QType::Q8_K) => run::<BlockQ8K>(w, x, n_tokens, y, scratch, pool, &dot, dot4, &|x, b| {
            super::activation::quantize_row_q8_k(x, super::blocks::as_bytes_mut(b))
        }),
        other => unreachable!("{} pairs with {other:?}", w.qtype),
    }
}

/// Panics unless `x` is `[n_tokens, w.cols]` and `y` is `[n_tokens, w.rows]` (a caller bug).
pub(crate) fn check_shapes(w: &QTensor, x: &[f32], n_tokens: usize, y: &[f32]) {
    assert_eq!(x.len(), n_tokens * w.cols, "matmul {}: x has {} values, want {}x{}", w.name, x.len(), n_tokens, w.cols);
    assert_eq!(y.len(), n_tokens * w.rows, "matmul {}: y has {} values, want {}x{}", w.name, y.len(), n_tokens, w.rows);
}

/// [`matmul`] with an explicit kernel table (tests and benchmarks compare tables).
pub fn matmul_with(
    k: &Kernels,
    w: &QTensor,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
    scratch: &mut MatmulScratch,
    pool: &ThreadPool,
) {
    check_shapes(w, x, n_tokens, y);
    let Some(dot) = k.vec_dot_fn(w.qtype) else {
        // F32/F16/BF16: candle's generic path.
        return reference::matmul_candle(w, x, n_tokens, y, scratch, pool);
    };
    let cols = w.cols;
    // SAFETY: the table matches this CPU; `wr` and `at` hold exactly `cols` values.
    let dot = |wr: &[u8], at: &[u8], _t: usize| unsafe { dot(cols, wr, at) };
    match super::act_type(w.qtype) {
        Some(QType::Q8_0) => {
            run::<BlockQ8_0>(w, x, n_tokens, y, scratch, pool, &dot, None, &|x, b| k.quantize_q8_0(x, b))
        }
        Some(QType::Q8_1) => {
            run::<BlockQ8_1>(w, x, n_tokens, y, scratch, pool, &dot, None, &|x, b| k.quantize_q8_1(x, b))
        }
        Some(QType::Q8_K) => {
            run::<BlockQ8K>(w, x, n_tokens, y, scratch, pool, &dot, None, &|x, b| k.quantize_q8_k(x, b))
        }
        other => unreachable!("{} pairs with {other:?}", w.qtype),
    }
}

/// `dot(weight_row, token_activations, token_index)`: the index picks llama.cpp's order where
/// it depends on the token's place in the batch (`kquant_order.rs`).
type RowTokenDot<'a> = dyn Fn(&[u8], &[u8], usize) -> f32 + Sync + 'a;

/// `dot4(weight_row, [4 tokens' activations])`: the same 4 results as `dot`, faster.
type RowDotX4<'a> = dyn Fn(&[u8], [&[u8]; 4]) -> [f32; 4] + Sync + 'a;

fn run<A: ActBlock + Send + Sync>(
    w: &QTensor,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
    scratch: &mut MatmulScratch,
    pool: &ThreadPool,
    dot: &RowTokenDot<'_>,
    dot4: Option<&RowDotX4<'_>>,
    quantize: &(dyn Fn(&[f32], &mut [A]) + Sync),
) {
    let (rows, cols) = (w.rows, w.cols);
    let nb_a = cols / A::BLCK_SIZE; // activation blocks per token
    let act_row = nb_a * std::mem::size_of::<A>();
    let xq = scratch.blocks::<A>(n_tokens * nb_a); // [n_tokens, nb_a]
    if n_tokens == 1 {
        quantize(x, xq);
    } else {
        let xq_ptr = SyncPtr(xq.as_mut_ptr());
        pool.run(&|i, n| {
            let p = &xq_ptr;
            for t in split_range(n_tokens, i, n) {
                // SAFETY: token t's blocks are disjoint from other workers' tokens and in bounds.
                let dst = unsafe { std::slice::from_raw_parts_mut(p.0.add(t * nb_a), nb_a) };
                quantize(&x[t * cols..(t + 1) * cols], dst);
            }
        });
    }
    let xq_bytes = super::blocks::as_bytes::<A>(xq);
    let data = w.data();
    let row_bytes = w.qtype.row_bytes(cols as u64).expect("QTensor has whole blocks") as usize;
    assert!(data.len() >= rows * row_bytes && xq_bytes.len() >= n_tokens * act_row);
    let out = SyncPtr(y.as_mut_ptr());
    pool.run(&|i, n| {
        let out = &out;
        for r in split_range(rows, i, n) {
            let wr = &data[r * row_bytes..(r + 1) * row_bytes];
            let at = |t: usize| &xq_bytes[t * act_row..(t + 1) * act_row];
            let mut t = 0;
            if let Some(dot4) = dot4 {
                while t + 4 <= n_tokens {
                    let v = dot4(wr, [at(t), at(t + 1), at(t + 2), at(t + 3)]);
                    for (k, v) in v.into_iter().enumerate() {
                        // SAFETY: row r of every token belongs to this worker only; in bounds.
                        unsafe { *out.0.add((t + k) * rows + r) = v };
                    }
                    t += 4;
                }
            }
            for t in t..n_tokens {
                let v = dot(wr, at(t), t);
                // SAFETY: row r of every token belongs to this worker only; index in bounds.
                unsafe { *out.0.add(t * rows + r) = v };
            }
        }
    });
}
