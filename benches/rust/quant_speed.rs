//! Quick per-type timing of tallow's quantized matmul against candle's path, one thread.
//!
//! `CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo run -p tallow-core --example quant_speed`
//! (dependencies are already built at opt-level 3 in the dev profile). Prints, per weight
//! type, µs per product for decode (1 token) and prefill (16 tokens): candle's generic path
//! (`matmul_candle`: candle's `from_float` + `vec_dot`), tallow's scalar table, and the table
//! this CPU gets (`kernels()`), with the speed-up over candle.
//!
//! `QUANT_SPEED_GEMM=Q4_K` (any type of the per-type table) times only that type's prefill GEMM,
//! one thread, the tiles models load: 8192x2048 (2048x8192 for Q6_K) × 128 tokens, or
//! `QUANT_SPEED_SHAPE=ROWSxCOLSxTOKENS` (`QUANT_SPEED_LAYOUT=plain`: the weights left row after
//! row); five medians of 1 s each, to show the spread. On x86
//! with AVX-512 VNNI it also prints the bound the multiply pipes set on that product: their
//! rate, measured here (independent 512-bit `vpdpbusd` chains: on Zen 4 `vpdpbusd`, `vpmulld`,
//! `vpmaddwd` and `vfmadd` share these pipes, one 512-bit operation a cycle, while `vcvtdq2ps`
//! and the shifts and masks mostly run beside them), times the multiplies the tile issues per 16
//! rows, block and token (`MULTIPLIES_PER_BLOCK`). "Mostly": on the 2026-12-04 machine, a 1:1 mix
//! of `vpdpbusd` or `vfmadd` with `vpaddd`, `vpandd`, `vpshufb`, `vpsrlw` or `vcvtdq2ps` (all
//! 512-bit, independent) took 1.35–1.47 cycles a pair, not 1, and with `vpmulld` 2; so a tile's
//! other operations cost it some of the bound too.

use std::time::{Duration, Instant};
use tallow_core::quant::{kernels, matmul, matmul_candle, matmul_with, Kernels, MatmulScratch, QTensor, QType};
use tallow_core::threadpool::ThreadPool;

fn floats(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// Median µs per call of `f` over ~`budget`.
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || samples.len() < 5 {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

fn main() {
    if let Ok(name) = std::env::var("QUANT_SPEED_GEMM") {
        return gemm_only(&name);
    }
    let (rows, cols) = (1024, 2048);
    let pool = ThreadPool::new(1);
    let best = kernels();
    let scalar = Kernels::scalar();
    let budget = Duration::from_millis(300);
    println!("kernels: {}; W {rows}x{cols}, 1 thread, median µs per matmul", best.name());
    println!("{:6} {:>6} {:>10} {:>10} {:>10} {:>8}", "type", "tokens", "candle", "scalar", best.name(), "speedup");
    let types = [
        QType::Q4_0,
        QType::Q4_1,
        QType::Q5_0,
        QType::Q5_1,
        QType::Q8_0,
        QType::Q2_K,
        QType::Q3_K,
        QType::Q4_K,
        QType::Q5_K,
        QType::Q6_K,
    ];
    for qtype in types {
        let wf = floats(1, rows * cols);
        let bytes = quantize(qtype, &wf);
        let w = QTensor::from_bytes("w", qtype, rows, cols, &bytes).unwrap();
        for n_tokens in [1usize, 16] {
            let x = floats(2, n_tokens * cols);
            let mut y = vec![0f32; n_tokens * rows];
            let mut scratch = MatmulScratch::default();
            let c = time(budget, || matmul_candle(&w, &x, n_tokens, &mut y, &mut scratch, &pool));
            let s = time(budget, || matmul_with(&scalar, &w, &x, n_tokens, &mut y, &mut scratch, &pool));
            let b = time(budget, || matmul_with(best, &w, &x, n_tokens, &mut y, &mut scratch, &pool));
            println!("{:6} {:>6} {:>10.1} {:>10.1} {:>10.1} {:>7.2}x", qtype.name(), n_tokens, c, s, b, c / b);
        }
    }
    model_shapes(budget);
}

/// `matmul` (llama.cpp's numerics, tiles) on the shapes of the catalog models and a 1.7B llama,
/// with every thread of the machine: µs, weight GB/s, and the speed-up over one table dot per
/// (row, token) (what `matmul` did before tiles).
fn model_shapes(budget: Duration) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = ThreadPool::new(threads);
    let row_at_a_time = Kernels::avx2().unwrap_or_else(Kernels::scalar);
    println!("\nmodel shapes, {threads} threads: tallow matmul vs {} row at a time", row_at_a_time.name());
    println!(
        "{:6} {:>12} {:>6} {:>10} {:>10} {:>8} {:>8}",
        "type", "rows x cols", "tokens", "row dot", "matmul", "GB/s", "speedup"
    );
    let shapes = [
        (QType::Q4_1, 1536, 576),
        (QType::Q4_1, 576, 1536),
        (QType::Q8_0, 49152, 576),
        (QType::Q4_0, 8192, 2048),
        (QType::Q8_0, 8192, 2048),
        (QType::Q4_K, 8192, 2048),
        (QType::Q6_K, 2048, 8192),
        // Larger than the last-level cache: decode streams these from DRAM.
        (QType::Q4_K, 16384, 4096),
        (QType::Q6_K, 16384, 4096),
    ];
    for (qtype, rows, cols) in shapes {
        let w = QTensor::from_bytes("w", qtype, rows, cols, &quantize(qtype, &floats(1, rows * cols))).unwrap();
        for n_tokens in [1usize, 64] {
            let x = floats(2, n_tokens * cols);
            let mut y = vec![0f32; n_tokens * rows];
            let mut scratch = MatmulScratch::default();
            let a = time(budget, || matmul_with(&row_at_a_time, &w, &x, n_tokens, &mut y, &mut scratch, &pool));
            let wi = w.clone().interleaved(); // as models load them, where tiles run
            let b = time(budget, || matmul(&wi, &x, n_tokens, &mut y, &mut scratch, &pool));
            let gbs = w.data().len() as f64 / b / 1e3;
            println!(
                "{:6} {:>12} {n_tokens:>6} {a:>10.1} {b:>10.1} {gbs:>8.1} {:>7.2}x",
                qtype.name(),
                format!("{rows}x{cols}"),
                a / b
            );
        }
    }
}

/// `QUANT_SPEED_GEMM` (see the file's docs).
fn gemm_only(name: &str) {
    let qtype = QType::ALL
        .into_iter()
        .find(|q| q.name() == name)
        .unwrap_or_else(|| panic!("QUANT_SPEED_GEMM: unknown type {name}"));
    let (rows, cols, n_tokens) = match std::env::var("QUANT_SPEED_SHAPE") {
        Ok(shape) => {
            let n: Vec<usize> =
                shape.split('x').map(|n| n.parse().expect("QUANT_SPEED_SHAPE: ROWSxCOLSxTOKENS")).collect();
            (n[0], n[1], n[2])
        }
        Err(_) if qtype == QType::Q6_K => (2048, 8192, 128),
        Err(_) => (8192, 2048, 128),
    };
    let pool = ThreadPool::new(1);
    let w = QTensor::from_bytes("w", qtype, rows, cols, &quantize(qtype, &floats(1, rows * cols))).unwrap();
    // `QUANT_SPEED_LAYOUT=plain`: the GGUF's row-after-row layout, as products read a weight
    // whose packed copy a first load is still writing (quant/deferred.rs).
    let plain = std::env::var("QUANT_SPEED_LAYOUT").is_ok_and(|v| v == "plain");
    let w = if plain { w } else { w.interleaved() };
    let x = floats(2, n_tokens * cols);
    let mut y = vec![0f32; n_tokens * rows];
    let mut scratch = MatmulScratch::default();
    let runs: Vec<String> = (0..5)
        .map(|_| {
            format!("{:.0}", time(Duration::from_secs(1), || matmul(&w, &x, n_tokens, &mut y, &mut scratch, &pool)))
        })
        .collect();
    let layout = if plain { "plain rows" } else { "packed" };
    println!("{name} {rows}x{cols} x {n_tokens} tokens, {layout}, 1 thread, µs: {}", runs.join(" "));
    #[cfg(target_arch = "x86_64")]
    if let (Some(rate), Some(&(_, per_block))) =
        (multiply_rate(), MULTIPLIES_PER_BLOCK.iter().find(|(q, _)| *q == qtype))
    {
        let blocks = (rows / 16) * (cols / qtype.block_size()) * n_tokens;
        let bound_us = (blocks * per_block) as f64 / rate * 1e6;
        println!(
            "multiply pipes: {:.2} G 512-bit operations/s; {per_block} per 16 rows, block and token -> bound {bound_us:.0} µs",
            rate / 1e9
        );
    }
}

/// Multiplies (`vpdpbusd`, `vpmulld`, `vpmaddwd`, `vfmadd`, `vmulps`) the x16 prefill tiles
/// issue per 16 rows, weight block and token, read off `x86_x16_legacy.rs` and
/// `x86_x16_kquant.rs`.
#[cfg(target_arch = "x86_64")]
const MULTIPLIES_PER_BLOCK: [(QType, usize); 5] = [
    // 8 `vpdpbusd` for 16 × 32 products, 8 fmas (one per vec_dot lane), d_w · d_y.
    (QType::Q8_0, 17),
    // As Q8_0, and one fma more for the minimums (m_w · s_y).
    (QType::Q4_1, 18),
    // 8 `vpdpbusd`, one fma per block (llama.cpp's repacked order), d_w · d_y.
    (QType::Q4_0, 10),
    // 64 `vpdpbusd`, 8 `vpmulld` (scales), 4 `vpmaddwd` (minimums), 8 fmas, 2 multiplies.
    (QType::Q4_K, 86),
    // 64 `vpdpbusd`, 16 `vpmulld` (scales), one multiply, one fma.
    (QType::Q6_K, 82),
];

/// 512-bit `vpdpbusd` per second on this core (12 independent chains, so latency does not
/// bound it), or `None` without AVX-512 VNNI.
#[cfg(target_arch = "x86_64")]
fn multiply_rate() -> Option<f64> {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx512f,avx512vnni")]
    fn chains(n: usize) -> [__m512i; 12] {
        let (x, y) = std::hint::black_box((_mm512_set1_epi8(3), _mm512_set1_epi8(5)));
        let mut acc = [_mm512_setzero_si512(); 12];
        for _ in 0..n {
            for a in acc.iter_mut() {
                *a = _mm512_dpbusd_epi32(*a, x, y);
            }
        }
        acc
    }
    if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")) {
        return None;
    }
    let n = 20_000_000;
    let best = (0..3)
        .map(|_| {
            let t = Instant::now();
            // SAFETY: the features were detected above.
            std::hint::black_box(unsafe { chains(n) });
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    Some((12 * n) as f64 / best)
}

fn quantize(qtype: QType, xs: &[f32]) -> Vec<u8> {
    use candle_core::quantized::k_quants::*;
    use candle_core::quantized::GgmlType;
    fn q<T: GgmlType>(xs: &[f32]) -> Vec<u8> {
        let mut b = vec![T::zeros(); xs.len() / T::BLCK_SIZE];
        T::from_float(xs, &mut b);
        // SAFETY: candle's blocks are repr(C) plain data.
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u8, std::mem::size_of_val(&b[..])) }.to_vec()
    }
    match qtype {
        QType::Q4_0 => q::<BlockQ4_0>(xs),
        QType::Q4_1 => q::<BlockQ4_1>(xs),
        QType::Q5_0 => q::<BlockQ5_0>(xs),
        QType::Q5_1 => q::<BlockQ5_1>(xs),
        QType::Q8_0 => q::<BlockQ8_0>(xs),
        QType::Q2_K => q::<BlockQ2K>(xs),
        QType::Q3_K => q::<BlockQ3K>(xs),
        QType::Q4_K => q::<BlockQ4K>(xs),
        QType::Q5_K => q::<BlockQ5K>(xs),
        QType::Q6_K => q::<BlockQ6K>(xs),
        other => panic!("{other}"),
    }
}
