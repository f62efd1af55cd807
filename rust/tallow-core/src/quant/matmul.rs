//! `matmul`: quantized weights × f32 activations, through the dispatched kernels.
//!
//! Activations are quantized once per call into the scratch buffer (Q8_0, Q8_1 or Q8_K, per the
//! weight type), then the workers split the weight rows (for a token or a few, a contiguous
//! share each, whose end the others take over if they finish first; for more, chunks claimed
//! from a counter) and multiply every row with all tokens while it is in L1, so prefill reads
//! each weight once per call.
//! [`matmul_fused`] runs several products of the same input (Q, K, V; gate, up) in one pass over
//! the pool, quantizing the input once per activation type.
//!
//! [`matmul_fused_seqs`] runs the tokens of several sequences in one product (continuous
//! batching: the weights are read once for all of them). llama.cpp picks a token's summation
//! order from the size of the product it is in (`kquant_order::k_order`), so each token here
//! takes the order of its own sequence's product: a sequence's results do not depend on what
//! else shares the batch.

use super::blocks::{ActBlock, BlockQ8K, BlockQ8_0, BlockQ8_1};
use super::kernels::{kernels, Kernels, VecDotFn};
use super::kquant_order::{self, k_order, IntKernels, KOrder};
use super::legacy_dot::RowDot;
use super::shares::Shares;
use super::{reference, x16, QTensor, QType};
#[cfg(target_arch = "x86_64")]
use super::{
    x86_legacy_tile::{LegacyTiles, TileArgs},
    x86_x16::{self, X16Tiles},
};
use crate::threadpool::{split_range, SyncPtr, ThreadPool};

/// Activation block types, one scratch buffer each.
const ACT_TYPES: [QType; 3] = [QType::Q8_0, QType::Q8_1, QType::Q8_K];

/// Reusable buffers for quantized activations: once they have grown to the largest product of
/// a model, calls allocate nothing.
#[derive(Default)]
pub struct MatmulScratch {
    /// One per entry of [`ACT_TYPES`], so fused products of mixed types keep every input.
    bufs: [Vec<u64>; 3],
    /// Accumulator starts of the x16 tiles that offset signed weights to unsigned ones (and
    /// Q4_K's sub-block sums), one table per entry of [`OFFSET_TYPES`] (`TileArgs::a_offsets`):
    /// computed from the activations once per product, not once per row group.
    offsets: [Vec<i32>; 5],
    /// The f16 scales of the Q8_0 and Q8_1 activation blocks as f32, for the x16 tiles of the
    /// 32-element formats (`TileArgs::a_scales`).
    scales: [Vec<f32>; 2],
    /// Row-group shares of decode products (`shares.rs`).
    shares: Shares,
    /// Per token of the product: its index in its sequence's tokens and their count, which pick
    /// its summation order.
    seq_pos: Vec<SeqPos>,
}

/// Token `t` of a sequence's `n` tokens in a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SeqPos {
    t: u32,
    n: u32,
}

impl MatmulScratch {
    /// `n` blocks of `T` in the first buffer.
    pub(crate) fn blocks<T>(&mut self, n: usize) -> &mut [T] {
        blocks_in(&mut self.bufs[0], n)
    }

    /// Bytes currently reserved (tests check that a warm scratch stops growing).
    pub fn capacity_bytes(&self) -> usize {
        self.bufs.iter().map(|b| b.capacity() * 8).sum::<usize>()
            + self.offsets.iter().map(|o| o.capacity() * 4).sum::<usize>()
            + self.scales.iter().map(|s| s.capacity() * 4).sum::<usize>()
            + self.seq_pos.capacity() * size_of::<SeqPos>()
    }
}

/// `n` blocks of `T` in `buf` (zeroed on growth, otherwise left over from earlier calls).
fn blocks_in<T>(buf: &mut Vec<u64>, n: usize) -> &mut [T] {
    assert!(std::mem::align_of::<T>() <= 8);
    let bytes = n.checked_mul(std::mem::size_of::<T>()).expect("scratch size overflows");
    if buf.len() * 8 < bytes {
        buf.resize(bytes.div_ceil(8), 0);
    }
    // SAFETY: the buffer holds at least `bytes` bytes, is 8-aligned (enough for every block
    // type) and every bit pattern is a valid block (plain ints and floats).
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut T, n) }
}

/// A weight as one product reads it: its bytes and layout taken once, so that every worker
/// reads the same ones while a deferred pack (`deferred.rs`) completes meanwhile. Both layouts
/// give the same bits (`tests/quant_llama_order.rs`); the packed one is faster.
#[derive(Clone, Copy)]
struct Weight<'w> {
    t: &'w QTensor,
    data: &'w [u8],
    g: usize,
}

impl<'w> Weight<'w> {
    fn of(t: &'w QTensor) -> Weight<'w> {
        let (data, g) = t.layout();
        Weight { t, data, g }
    }

    fn data(&self) -> &'w [u8] {
        self.data
    }

    fn interleave(&self) -> usize {
        self.g
    }
}

impl std::ops::Deref for Weight<'_> {
    type Target = QTensor;
    fn deref(&self) -> &QTensor {
        self.t
    }
}

impl std::fmt::Debug for Weight<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} (rows in groups of {})", self.t, self.g)
    }
}

/// How one product's rows are computed.
#[derive(Clone, Copy)]
enum RowKernel {
    /// Tiles of rows × tokens for the 32-element formats, in llama.cpp's order: `x16` on
    /// weights repacked 16 rows at a time by [`QTensor::interleaved`], `legacy` otherwise.
    #[cfg(target_arch = "x86_64")]
    Tiles { legacy: LegacyTiles, x16: Option<X16Tiles> },
    /// The portable llama.cpp-order products of the 32-element formats.
    Exact(RowDot),
    /// Q4_K and Q6_K in the order of the llama.cpp path this shape and token take; `table` for
    /// the other k-quants. Q4_K and Q6_K weights repacked 16 rows at a time go through `x16`
    /// tiles, in the same orders.
    KQuant {
        ints: IntKernels,
        table: VecDotFn,
        #[cfg(target_arch = "x86_64")]
        x16: Option<X16Tiles>,
    },
    /// One table's kernel for everything ([`matmul_with`]).
    Table(VecDotFn),
}

/// How activations are quantized.
#[derive(Clone, Copy)]
enum Quantizer<'k> {
    /// Rounded exactly as llama.cpp rounds them (`activation.rs`).
    Exact,
    /// A table's quantizers ([`matmul_with`]).
    Table(&'k Kernels),
}

/// Whether `matmul` computes `qtype` with row tiles on this CPU, which read weights stored as
/// [`QTensor::interleaved`] fastest.
pub fn tiles_for(qtype: QType) -> bool {
    layout_rows(qtype) > 1
}

/// Rows per group of the layout the tiles for `qtype` read on this CPU: 16 (`x16.rs`), 4
/// (`INTERLEAVE`, the AVX2 tiles) or 1 (no tiles: rows one after another).
pub(crate) fn layout_rows(qtype: QType) -> usize {
    match RowKernel::exact(kernels(), qtype, 0) {
        #[cfg(target_arch = "x86_64")]
        Some(RowKernel::Tiles { x16: Some(_), .. } | RowKernel::KQuant { x16: Some(_), .. }) => x16::ROWS,
        #[cfg(target_arch = "x86_64")]
        Some(RowKernel::Tiles { .. }) => super::INTERLEAVE,
        _ => 1,
    }
}

impl RowKernel {
    /// `matmul`'s choice for a `qtype` weight of `rows` rows (None for float weights).
    fn exact(k: &Kernels, qtype: QType, rows: usize) -> Option<RowKernel> {
        let table = k.vec_dot_fn(qtype)?;
        let simd = k.name() != "scalar";
        #[cfg(target_arch = "x86_64")]
        let x16 = X16Tiles::for_type(qtype).filter(|_| k.name() == "avx512vnni");
        #[cfg(target_arch = "x86_64")]
        if let Some(legacy) = LegacyTiles::for_weight(qtype, rows, k.name() == "avx512vnni").filter(|_| simd) {
            return Some(RowKernel::Tiles { legacy, x16 });
        }
        #[cfg(target_arch = "aarch64")]
        if let Some(neon) = super::aarch64_neon::row_dot_for(qtype, rows).filter(|_| simd) {
            return Some(RowKernel::Exact(neon));
        }
        if let Some(exact) = super::legacy_dot::row_dot_for(qtype, rows) {
            return Some(RowKernel::Exact(exact));
        }
        let ints = if simd { IntKernels::best() } else { IntKernels::PORTABLE };
        Some(RowKernel::KQuant {
            ints,
            table,
            #[cfg(target_arch = "x86_64")]
            x16,
        })
    }

    /// Whether a product of `n_tokens` tokens had better read a `qtype` weight whose packed
    /// copy no one has begun writing (a first load, `deferred.rs`) in its GGUF layout than
    /// pack it first. Packing costs a first touch of fresh memory, about 1 ms per MB on our VMs;
    /// reading the rows as they are costs more multiplies. One thread, 8192x2048 × 32 tokens,
    /// plain rows against packed: Q8_0 13.0 against 6.0 ms (17.8 MB: reading plain wins up to
    /// about 80 tokens), Q5_0 2.3x, Q5_1 2.2x, Q4_1 2.9x, Q4_0 7.7x (28 against 3.7 ms for 9.4 MB),
    /// the K-quants' row-by-row path far more; one token, 4-9x.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] // the tiles are x86's
    fn reads_plain_rows(self, qtype: QType, n_tokens: usize) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            RowKernel::Tiles { .. } => qtype == QType::Q8_0 && n_tokens <= 64,
            _ => false,
        }
    }

    /// Granularity of the row split of `w`: a worker's rows start at a multiple of this.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] // the tiles are x86's
    fn row_group(self, w: &Weight<'_>, n_tokens: usize) -> usize {
        match self {
            _ if w.interleave() == x16::ROWS => x16::ROWS,
            #[cfg(target_arch = "x86_64")]
            RowKernel::Tiles { legacy, .. } => legacy.row_group(n_tokens),
            _ => 1,
        }
    }

    /// `out[t * w.rows + r]` for `r` in `rows` and every token. `xq` holds `n_tokens` rows of
    /// `act_row` bytes; `out` points at `[n_tokens, w.rows]` floats no other worker writes in
    /// `rows`; `seq_pos[t]` places token `t` in its sequence.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] // the tiles are x86's
    fn rows(self, w: &Weight<'_>, rows: std::ops::Range<usize>, act: &Acts<'_>, seq_pos: &[SeqPos], out: *mut f32) {
        let Acts { xq, act_row, offsets, scales } = *act;
        let n_tokens = seq_pos.len();
        // The llama.cpp path token `t` takes for this weight (the K-quants' orders differ).
        let order = |t: usize| k_order(w.qtype, w.rows, seq_pos[t].t as usize, seq_pos[t].n as usize);
        let data = w.data();
        let row_bytes = w.qtype.row_bytes(w.cols as u64).expect("QTensor has whole blocks") as usize;
        assert!(rows.end <= w.rows && data.len() >= w.rows * row_bytes && xq.len() >= n_tokens * act_row);
        let cols = w.cols;
        let at = |t: usize| &xq[t * act_row..(t + 1) * act_row];
        let put = |r: usize, t: usize, v: f32| {
            // SAFETY: row r belongs to this caller only; index in bounds of [n_tokens, w.rows].
            unsafe { *out.add(t * w.rows + r) = v }
        };
        // Row r's first block, and the distance between two blocks of a row, in either layout.
        let (ts, g) = (w.qtype.type_size(), w.interleave());
        let b_stride = g * ts;
        let row_start = |r: usize| (r / g) * g * row_bytes + (r % g) * ts;
        match self {
            #[cfg(target_arch = "x86_64")]
            RowKernel::Tiles { x16: Some(tiles), .. } | RowKernel::KQuant { x16: Some(tiles), .. }
                if g == x16::ROWS =>
            {
                // The 32-element formats read every token's activation scales.
                assert!(w.qtype.block_size() != 32 || scales.len() >= n_tokens * (cols / 32));
                let nb = cols / w.qtype.block_size();
                // Many tokens: each group is expanded once into this thread's buffer, and the
                // tiles read it there.
                let expanded = tiles.expands(n_tokens);
                let buf = if expanded {
                    x86_x16::expansion_buffer(nb * tiles.expanded_block())
                } else {
                    std::ptr::null_mut()
                };
                for r in rows.step_by(g) {
                    // SAFETY: group r / g is in bounds (asserted above; rows start at multiples of g).
                    let group = unsafe { data.as_ptr().add(r / g * g * row_bytes) };
                    let (group, b_stride) = if expanded {
                        // SAFETY: the group holds nb group blocks; the buffer nb expanded ones.
                        unsafe { tiles.expand(nb, group, x16::group_block(w.qtype), buf) };
                        (buf as *const u8, tiles.expanded_block())
                    } else {
                        (group, x16::group_block(w.qtype))
                    };
                    let mut t = 0;
                    while t < n_tokens {
                        // Up to 4 tokens of one order share a tile, from one sequence or several.
                        let o = order(t);
                        let run = (t..n_tokens.min(t + 4)).take_while(|&u| order(u) == o).count();
                        let (tile, nt) = tiles.tile(o, run, expanded);
                        // SAFETY: tokens t..t + nt are in bounds (asserted above), outputs are
                        // this caller's; the tiles exist on this CPU and the layout is theirs
                        // (interleave g, or expanded).
                        unsafe {
                            tile(
                                nb,
                                &TileArgs {
                                    w: group,
                                    w_stride: 0,
                                    b_stride,
                                    a: xq.as_ptr().add(t * act_row),
                                    a_stride: act_row,
                                    out: out.add(t * w.rows + r),
                                    out_stride: w.rows,
                                    a_offsets: offsets
                                        .as_ptr()
                                        .wrapping_add(t * (cols / w.qtype.block_size()) * offsets_per_block(w.qtype)),
                                    a_scales: scales.as_ptr().wrapping_add(t * scales.len() / n_tokens),
                                },
                            )
                        };
                        t += nt;
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            RowKernel::Tiles { legacy: tiles, .. } => {
                let w_stride = if g == 1 { row_bytes } else { ts }; // between a tile's rows
                let group = tiles.row_group(n_tokens);
                let mut r = rows.start;
                while r < rows.end {
                    let nr = if rows.end - r >= group && (g == 1 || r.is_multiple_of(g)) { group } else { 1 };
                    let mut t = 0;
                    while t < n_tokens {
                        let nt = if n_tokens - t >= 4 { 4 } else { 1 };
                        // SAFETY: rows r..r + nr and tokens t..t + nt are in bounds (asserted
                        // above), outputs are this caller's; the tiles match this CPU.
                        unsafe {
                            tiles.tile(nr, nt)(
                                cols / 32,
                                &TileArgs {
                                    w: data.as_ptr().add(row_start(r)),
                                    w_stride,
                                    b_stride,
                                    a: xq.as_ptr().add(t * act_row),
                                    a_stride: act_row,
                                    out: out.add(t * w.rows + r),
                                    out_stride: w.rows,
                                    a_offsets: std::ptr::null(),
                                    a_scales: std::ptr::null(),
                                },
                            )
                        };
                        t += nt;
                    }
                    r += nr;
                }
            }
            RowKernel::Exact(dot) => {
                for r in rows {
                    let wr = &data[row_start(r)..];
                    (0..n_tokens).for_each(|t| put(r, t, dot(wr, b_stride, at(t))));
                }
            }
            _ if w.interleave() != 1 => panic!("{w:?}: interleaved rows need a layout-aware kernel"),
            RowKernel::KQuant { ints, table, .. } => {
                for r in rows {
                    let wr = &data[r * row_bytes..(r + 1) * row_bytes];
                    for t in 0..n_tokens {
                        let v = match order(t).filter(|&o| ints.covers(o)) {
                            Some(order) => kquant_order::row_dot(order, &ints, wr, at(t)),
                            // SAFETY: the table matches this CPU; both hold `cols` values.
                            None => unsafe { table(cols, wr, at(t)) },
                        };
                        put(r, t, v);
                    }
                }
            }
            RowKernel::Table(dot) => {
                for r in rows {
                    let wr = &data[r * row_bytes..(r + 1) * row_bytes];
                    // SAFETY: the table matches this CPU; both hold `cols` values.
                    (0..n_tokens).for_each(|t| put(r, t, unsafe { dot(cols, wr, at(t)) }));
                }
            }
        }
    }
}

/// `y[t * rows + r] = Σ_c W[r, c] · x[t * cols + c]` for `t in 0..n_tokens`, with llama.cpp's
/// numerics: activations are quantized exactly as llama.cpp rounds them (`activation.rs`), the
/// 32-element formats are summed in its order (`legacy_dot.rs`, `x86_legacy_tile.rs`), Q4_K and
/// Q6_K in the order of the path llama.cpp takes for this shape and token count
/// (`kquant_order.rs`), and the other k-quants go through the process-wide SIMD kernels
/// ([`kernels()`]). Bit-level agreement matters: one ulp of difference flips an int8 rounding
/// in a later layer now and then, and those flips compound.
///
/// `x` is `[n_tokens, cols]`, `y` is `[n_tokens, rows]`, both row-major.
pub fn matmul(w: &QTensor, x: &[f32], n_tokens: usize, y: &mut [f32], scratch: &mut MatmulScratch, pool: &ThreadPool) {
    matmul_fused([(w, y)], x, n_tokens, scratch, pool);
}

/// [`matmul`] of several weights with the same input `x` (`[n_tokens, cols]`, every weight
/// having `cols` columns), each into its own output: the same results, with the input
/// quantized once per activation type and one pass over the pool instead of `N`.
pub fn matmul_fused<const N: usize>(
    products: [(&QTensor, &mut [f32]); N],
    x: &[f32],
    n_tokens: usize,
    scratch: &mut MatmulScratch,
    pool: &ThreadPool,
) {
    matmul_fused_seqs(products, x, &[n_tokens], scratch, pool);
}

/// [`matmul_fused`] over the tokens of several sequences at once: `x` holds `seq_tokens[0]`
/// rows of the first sequence, then `seq_tokens[1]` of the second, and so on (and `y` the
/// same). Every output is bit for bit what a product of its own sequence's tokens alone gives,
/// while each weight is read once for all of them.
pub fn matmul_fused_seqs<const N: usize>(
    products: [(&QTensor, &mut [f32]); N],
    x: &[f32],
    seq_tokens: &[usize],
    scratch: &mut MatmulScratch,
    pool: &ThreadPool,
) {
    let k = kernels();
    let n_tokens = seq_tokens.iter().sum();
    let mut quantized: [Option<Product<'_>>; N] = std::array::from_fn(|_| None);
    for (slot, (w, y)) in quantized.iter_mut().zip(products) {
        check_shapes(w, x, n_tokens, y);
        match RowKernel::exact(k, w.qtype, w.rows) {
            Some(kernel) => {
                // A weight still to be packed after a first load: pack it now (with whichever
                // threads are packing it already), unless reading it as it is costs less.
                if !(w.pack_pending() && kernel.reads_plain_rows(w.qtype, n_tokens)) {
                    w.ensure_packed(Some(pool));
                }
                *slot = Some((Weight::of(w), SyncPtr(y.as_mut_ptr()), kernel))
            }
            // F32/F16/BF16: candle's generic path, a sequence at a time (its blocking may
            // depend on the token count).
            None => {
                let (mut t0, cols) = (0, w.cols);
                for &n in seq_tokens {
                    let (xs, ys) = (&x[t0 * cols..(t0 + n) * cols], &mut y[t0 * w.rows..(t0 + n) * w.rows]);
                    reference::matmul_candle(w, xs, n, ys, scratch, pool);
                    t0 += n;
                }
            }
        }
    }
    run(&quantized, x, seq_tokens, scratch, pool, Quantizer::Exact);
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
        return reference::matmul_candle(w, x, n_tokens, y, scratch, pool);
    };
    let product = Some((Weight::of(w), SyncPtr(y.as_mut_ptr()), RowKernel::Table(dot)));
    run(&[product], x, &[n_tokens], scratch, pool, Quantizer::Table(k));
}

/// A weight, where its products go (`[n_tokens, rows]`) and how its rows are computed.
type Product<'w> = (Weight<'w>, SyncPtr<f32>, RowKernel);

/// Quantizes `x` for every activation type the products need, then computes all products in
/// one pass over the pool, each worker taking its share of every product's rows.
fn run(
    products: &[Option<Product<'_>>],
    x: &[f32],
    seq_tokens: &[usize],
    scratch: &mut MatmulScratch,
    pool: &ThreadPool,
    quantizer: Quantizer<'_>,
) {
    let Some(cols) = products.iter().flatten().map(|(w, ..)| w.cols).next() else { return };
    let n_tokens: usize = seq_tokens.iter().sum();
    if n_tokens == 0 {
        return;
    }
    scratch.seq_pos.clear();
    for &n in seq_tokens {
        scratch.seq_pos.extend((0..n).map(|t| SeqPos { t: t as u32, n: n as u32 }));
    }
    // Byte view of each activation type's buffer, quantized here if some product needs it.
    let mut acts: [&[u8]; 3] = [&[]; 3];
    for ((act, buf), view) in ACT_TYPES.iter().zip(scratch.bufs.iter_mut()).zip(acts.iter_mut()) {
        if products.iter().flatten().any(|(w, ..)| super::act_type(w.qtype) == Some(*act)) {
            let (x, q) = (x, quantizer);
            *view = match act {
                QType::Q8_0 => quantize::<BlockQ8_0>(buf, x, cols, n_tokens, pool, &|x, b| match q {
                    Quantizer::Exact => super::activation::quantize_row_q8_0(x, super::blocks::as_bytes_mut(b)),
                    Quantizer::Table(k) => k.quantize_q8_0(x, b),
                }),
                QType::Q8_1 => quantize::<BlockQ8_1>(buf, x, cols, n_tokens, pool, &|x, b| match q {
                    Quantizer::Exact => super::activation::quantize_row_q8_1(x, super::blocks::as_bytes_mut(b)),
                    Quantizer::Table(k) => k.quantize_q8_1(x, b),
                }),
                _ => quantize::<BlockQ8K>(buf, x, cols, n_tokens, pool, &|x, b| match q {
                    Quantizer::Exact => super::activation::quantize_row_q8_k(x, super::blocks::as_bytes_mut(b)),
                    Quantizer::Table(k) => k.quantize_q8_k(x, b),
                }),
            };
        }
    }
    // Accumulator starts of the x16 tiles of signed types, Q4_K's sub-block sums, Q6_K's group
    // offsets (which only its tiled order reads: a decode's `vec_dot` order forms its own).
    let reads_offsets = |w: &Weight<'_>| {
        w.interleave() == x16::ROWS
            && (w.qtype != QType::Q6_K
                || scratch
                    .seq_pos
                    .iter()
                    .any(|p| k_order(w.qtype, w.rows, p.t as usize, p.n as usize) == Some(KOrder::Q6KTiled)))
    };
    for (ty, table) in OFFSET_TYPES.iter().zip(scratch.offsets.iter_mut()) {
        table.clear();
        if products.iter().flatten().any(|(w, ..)| offsets_type(w.qtype) == *ty && reads_offsets(w)) {
            fill_offsets(table, *ty, acts[act_slot(*ty)], n_tokens, pool);
        }
    }
    // f32 scales of the Q8_0 and Q8_1 blocks, for the x16 tiles of the 32-element formats.
    for ((act, table), xq) in ACT_TYPES.iter().zip(scratch.scales.iter_mut()).zip(acts) {
        table.clear();
        let x16_legacy = |w: &Weight<'_>| w.interleave() == x16::ROWS && super::act_type(w.qtype) == Some(*act);
        if products.iter().flatten().any(|(w, ..)| x16_legacy(w)) {
            fill_scales(table, *act, xq, n_tokens, pool);
        }
    }
    let (offsets, scales, seq_pos) = (&scratch.offsets, &scratch.scales, &scratch.seq_pos[..]);
    let product_rows = |(w, out, kernel): &Product<'_>, groups: std::ops::Range<usize>| {
        let a = act_slot(w.qtype);
        let xq = acts[a];
        let acts = Acts {
            xq,
            act_row: xq.len() / n_tokens,
            offsets: OFFSET_TYPES.iter().position(|t| *t == offsets_type(w.qtype)).map_or(&[][..], |i| &offsets[i][..]),
            scales: scales.get(a).map_or(&[][..], |s| &s[..]),
        };
        let group = kernel.row_group(w, n_tokens);
        let rows = (groups.start * group).min(w.rows)..(groups.end * group).min(w.rows);
        kernel.rows(w, rows, &acts, seq_pos, out.0);
    };
    let n_groups = |(w, _, kernel): &Product<'_>| w.rows.div_ceil(kernel.row_group(w, n_tokens));
    if pool.n_threads() == 1 {
        return pool.run(&|_, _| products.iter().flatten().for_each(|p| product_rows(p, 0..n_groups(p))));
    }
    if n_tokens < CLAIM_MIN_TOKENS {
        // A few tokens: each product takes microseconds. Each worker streams its contiguous
        // share of every product from the front, then takes what is left of the others' from
        // the back (`shares.rs`).
        let live = || products.iter().flatten().enumerate();
        scratch.shares.reset(pool.n_threads(), products.iter().flatten().map(n_groups));
        let shares = &scratch.shares;
        return pool.run(&|i, n| {
            for (pi, p) in live() {
                while let Some(groups) = shares.take_front(pi, i) {
                    product_rows(p, groups);
                }
            }
            for (pi, p) in live() {
                for t in (1..n).map(|k| (i + k) % n) {
                    while let Some(groups) = shares.take_back(pi, t) {
                        product_rows(p, groups);
                    }
                }
            }
        });
    }
    // Several tokens: each product takes milliseconds, in chunks of row groups that the
    // workers claim from a counter, so a thread that falls behind (its core busy with another
    // process, say) leaves its last chunks to the others instead of keeping them waiting.
    let next = std::sync::atomic::AtomicUsize::new(0);
    pool.run(&|_, _| {
        let mut claimed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Chunks of earlier products than the current one.
        let mut before = 0;
        for p in products.iter().flatten() {
            let groups = n_groups(p);
            let per = groups.div_ceil(pool.n_threads() * CHUNKS_PER_THREAD).max(1); // groups per chunk
            let chunks = groups.div_ceil(per);
            while claimed - before < chunks {
                let c = claimed - before;
                product_rows(p, c * per..((c + 1) * per).min(groups));
                claimed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            before += chunks;
        }
    });
}

/// Products of at least this many tokens split their rows into claimed chunks.
const CLAIM_MIN_TOKENS: usize = 8;

/// Chunks per thread and product when rows are claimed.
const CHUNKS_PER_THREAD: usize = 8;

/// Index in [`ACT_TYPES`] (and `MatmulScratch::bufs`) of the activations a quantized weight
/// type multiplies.
fn act_slot(qtype: QType) -> usize {
    let act = super::act_type(qtype).expect("a quantized weight type");
    ACT_TYPES.iter().position(|a| *a == act).expect("an activation type")
}

/// One product's quantized activations and the tables computed from them once per call.
#[derive(Clone, Copy)]
struct Acts<'a> {
    /// `n_tokens` rows of `act_row` bytes.
    xq: &'a [u8],
    act_row: usize,
    /// `TileArgs::a_offsets` of every token (empty where the product takes none).
    offsets: &'a [i32],
    /// `TileArgs::a_scales` of every token (empty where the product takes none).
    scales: &'a [f32],
}

/// The f16 scales of `n_tokens` rows of `act` blocks (Q8_0: `d`; Q8_1: `d, s`) as f32, in
/// parallel over tokens when there are several.
fn fill_scales(table: &mut Vec<f32>, act: QType, xq: &[u8], n_tokens: usize, pool: &ThreadPool) {
    let (block, per_block) = if act == QType::Q8_1 { (size_of::<BlockQ8_1>(), 2) } else { (size_of::<BlockQ8_0>(), 1) };
    table.resize(xq.len() / block * per_block, 0.0);
    let fill = |blocks: &[u8], out: &mut [f32]| {
        for (blk, out) in blocks.chunks_exact(block).zip(out.chunks_exact_mut(per_block)) {
            for (k, o) in out.iter_mut().enumerate() {
                *o = half::f16::from_le_bytes([blk[2 * k], blk[2 * k + 1]]).to_f32();
            }
        }
    };
    per_token(table, xq, n_tokens, pool, &fill);
}

/// Weight types whose x16 tiles read a table computed from the activations: the signed ones
/// take their accumulator starts from it, Q4_K the sums its minimums multiply.
const OFFSET_TYPES: [QType; 5] = [QType::Q4_0, QType::Q5_0, QType::Q8_0, QType::Q4_K, QType::Q6_K];

/// The entry of [`OFFSET_TYPES`] whose table a `qtype` weight's tiles read: Q5_K's minimums
/// multiply the same sub-block sums as Q4_K's.
fn offsets_type(qtype: QType) -> QType {
    if qtype == QType::Q5_K {
        QType::Q4_K
    } else {
        qtype
    }
}

/// The offset table of `qtype` (one of [`OFFSET_TYPES`]) for `n_tokens` rows of its
/// activation blocks `xq` (Q8_0, or Q8_K for Q4_K), in parallel over tokens when there are
/// several.
fn fill_offsets(table: &mut Vec<i32>, qtype: QType, xq: &[u8], n_tokens: usize, pool: &ThreadPool) {
    let per_block = offsets_per_block(qtype);
    let block = if matches!(qtype, QType::Q4_K | QType::Q6_K) { size_of::<BlockQ8K>() } else { size_of::<BlockQ8_0>() };
    table.resize(xq.len() / block * per_block, 0);
    let fill = |blocks: &[u8], out: &mut [i32]| {
        for (blk, out) in blocks.chunks_exact(block).zip(out.chunks_exact_mut(per_block)) {
            let y = |k: usize| blk[2 + 4 * k..6 + 4 * k].iter().map(|&q| q as i8 as i32).sum::<i32>();
            let bsum = |g: usize| i16::from_le_bytes([blk[260 + 2 * g], blk[261 + 2 * g]]) as i32;
            match qtype {
                // Σ (u - 32) · y over each 16-element group: its accumulator starts at -32 · Σ y.
                QType::Q6_K => out.iter_mut().enumerate().for_each(|(g, o)| *o = -32 * bsum(g)),
                // Word j: the sums of sub-blocks 2j and 2j + 1 (32 activations each, from the
                // block's 16-element `bsums`) as the low and high i16, the pair `vpmaddwd`
                // multiplies with the pair of minimums (|sum| <= 32 · 128 fits).
                QType::Q4_K => {
                    let sub = |s: usize| (bsum(2 * s) + bsum(2 * s + 1)) as u16 as u32;
                    out.iter_mut().enumerate().for_each(|(j, o)| *o = (sub(2 * j) | sub(2 * j + 1) << 16) as i32);
                }
                // Σ (u - 8) · y: the block's one accumulator starts at -8 · Σ y.
                QType::Q4_0 => out[0] = -8 * (0..8).map(y).sum::<i32>(),
                // Lane k (elements 4k..4k + 4) starts at -bias · Σ of its activations.
                QType::Q5_0 => out.iter_mut().enumerate().for_each(|(k, o)| *o = -16 * y(k)),
                _ => out.iter_mut().enumerate().for_each(|(k, o)| *o = -128 * y(k)),
            }
        }
    };
    per_token(table, xq, n_tokens, pool, &fill);
}

/// `fill(tokens' activation rows, their rows of table)` over all `n_tokens` rows of `xq` and
/// `table`, in parallel over tokens when there are several.
fn per_token<T: Send>(
    table: &mut [T],
    xq: &[u8],
    n_tokens: usize,
    pool: &ThreadPool,
    fill: &(dyn Fn(&[u8], &mut [T]) + Sync),
) {
    if n_tokens == 1 || xq.len() <= SERIAL_BYTES {
        return fill(xq, table);
    }
    let (row, out_row) = (xq.len() / n_tokens, table.len() / n_tokens);
    let out = SyncPtr(table.as_mut_ptr());
    pool.run(&|i, n| {
        let (out, tokens) = (&out, split_range(n_tokens, i, n));
        // SAFETY: each worker writes the table rows of its own tokens, inside the table.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.0.add(tokens.start * out_row), tokens.len() * out_row) };
        fill(&xq[tokens.start * row..tokens.end * row], dst);
    });
}

/// Activations of at most this many values (quantized) or bytes (tables) are prepared by the
/// calling thread: a dispatch to the pool and back costs more than a few microseconds of work
/// (a decode step of 8 sequences ran 6 pool dispatches per layer for these alone).
const SERIAL_BYTES: usize = 16 * 1024;

/// Entries of a type's offset table per activation block.
fn offsets_per_block(qtype: QType) -> usize {
    match offsets_type(qtype) {
        QType::Q4_0 => 1,
        QType::Q4_K => 4,
        QType::Q6_K => 16,
        _ => 8,
    }
}

/// `x` (`[n_tokens, cols]`) quantized into `buf` as `n_tokens` rows of `A` blocks, in
/// parallel over tokens when there are several.
fn quantize<'b, A: ActBlock + Send + Sync>(
    buf: &'b mut Vec<u64>,
    x: &[f32],
    cols: usize,
    n_tokens: usize,
    pool: &ThreadPool,
    one: &(dyn Fn(&[f32], &mut [A]) + Sync),
) -> &'b [u8] {
    let nb_a = cols / A::BLCK_SIZE; // activation blocks per token
    let xq = blocks_in::<A>(buf, n_tokens * nb_a); // [n_tokens, nb_a]
    if n_tokens == 1 || n_tokens * cols <= SERIAL_BYTES {
        for (x, xq) in x.chunks_exact(cols).zip(xq.chunks_exact_mut(nb_a)) {
            one(x, xq);
        }
    } else {
        let xq_ptr = SyncPtr(xq.as_mut_ptr());
        pool.run(&|i, n| {
            let p = &xq_ptr;
            for t in split_range(n_tokens, i, n) {
                // SAFETY: token t's blocks are disjoint from other workers' tokens and in bounds.
                let dst = unsafe { std::slice::from_raw_parts_mut(p.0.add(t * nb_a), nb_a) };
                one(&x[t * cols..(t + 1) * cols], dst);
            }
        });
    }
    super::blocks::as_bytes::<A>(xq)
}
