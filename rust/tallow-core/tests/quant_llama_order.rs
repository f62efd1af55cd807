//! The AVX2 dot products of the 32-element formats sum in llama.cpp's order, bit for bit equal
//! to `row_dot` (quant/legacy_dot.rs), so `matmul` may use them without changing a single
//! logit. (The AVX-512 VNNI kernels take two blocks per instruction, a different f32 order.)

use tallow_core::quant::{row_dot, Kernels, QType};

mod legacy_inputs;
use legacy_inputs::{Inputs, LEGACY};

#[test]
fn avx2_legacy_dots_are_bit_identical_to_llama_cpp_order() {
    let Some(k) = Kernels::avx2() else {
        // No AVX2 on this CPU: `matmul` uses `row_dot` itself, nothing to compare.
        #[cfg(target_arch = "x86_64")]
        assert!(!std::is_x86_feature_detected!("avx2"), "an AVX2 CPU must have the AVX2 table");
        return;
    };
    let mut inputs = Inputs(0x1234_5678_9abc_def0);
    for qtype in LEGACY {
        for _ in 0..200 {
            let n = inputs.n();
            let w = inputs.weights(qtype, n);
            let xq = inputs.activations(qtype, n);
            let want = row_dot(qtype).unwrap()(&w, qtype.type_size(), &xq);
            let got = k.vec_dot(qtype, n, &w, &xq);
            assert_eq!(got.to_bits(), want.to_bits(), "{qtype}, n = {n}: {got} vs {want}");
        }
    }
}

/// Every tile shape (rows × tokens), AVX2 and AVX-512 VNNI, gives each (row, token) exactly the
/// single product's bits: llama.cpp's `vec_dot` order, and for Q4_0 weights of a multiple of 8
/// rows its repacked order (`row_dot_for`).
#[cfg(target_arch = "x86_64")]
#[test]
fn tiles_equal_single_dots_bit_for_bit() {
    use tallow_core::quant::row_dot_for;
    use tallow_core::quant::x86_legacy_tile::{LegacyTiles, TileArgs};
    let Some(k) = Kernels::avx2() else {
        assert!(LegacyTiles::for_type(QType::Q4_0, true).is_none(), "no AVX2, no tiles");
        return;
    };
    let mut inputs = Inputs(0x0bad_cafe_1234_5678);
    // (type, weight rows): 8 rows of Q4_0 take the repacked order.
    let cases = LEGACY.iter().map(|&q| (q, 4)).chain([(QType::Q4_0, 8)]);
    for (qtype, weight_rows) in cases {
        for avx512 in [false, true] {
            let tiles = LegacyTiles::for_weight(qtype, weight_rows, avx512).expect("AVX2 CPU has the tiles");
            let single = |w: &[u8], a: &[u8], n: usize| match weight_rows {
                8 => row_dot_for(qtype, 8).unwrap()(w, qtype.type_size(), a),
                _ => k.vec_dot(qtype, n, w, a),
            };
            for _ in 0..40 {
                let n = inputs.n();
                let rows: Vec<Vec<u8>> = (0..4).map(|_| inputs.weights(qtype, n)).collect();
                let acts: Vec<Vec<u8>> = (0..4).map(|_| inputs.activations(qtype, n)).collect();
                let (w, a) = (rows.concat(), acts.concat());
                let (w_stride, a_stride) = (rows[0].len(), acts[0].len());
                for (nr, nt) in [(1, 1), (4, 1), (1, 4), (4, 4)] {
                    if nr * nt == 16 && tiles.row_group(4) != 4 {
                        continue; // no 4 × 4 tile without AVX-512
                    }
                    let mut out = vec![f32::NAN; 4 * 4];
                    let args = TileArgs {
                        w: w.as_ptr(),
                        w_stride,
                        b_stride: qtype.type_size(),
                        a: a.as_ptr(),
                        a_stride,
                        out: out.as_mut_ptr(),
                        out_stride: 4,
                        a_offsets: std::ptr::null(),
                        a_scales: std::ptr::null(),
                    };
                    // SAFETY: the tiles came from for_type, which checked the CPU; 4 rows and 4
                    // tokens of n values lie at the strides, and out is [4 tokens, 4 rows].
                    unsafe { tiles.tile(nr, nt)(n / 32, &args) };
                    for r in 0..nr {
                        for t in 0..nt {
                            let want = single(&rows[r], &acts[t], n);
                            let got = out[t * 4 + r];
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{qtype} ({weight_rows} rows) {nr}x{nt} avx512={avx512} n={n} r={r} t={t}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// `w` and its repacked copy `wi` dequantize to the same rows and give the same products, bit
/// for bit, for each token count.
fn assert_same_rows_and_products(
    w: &tallow_core::quant::QTensor,
    wi: &tallow_core::quant::QTensor,
    token_counts: &[usize],
    pool: &tallow_core::threadpool::ThreadPool,
) {
    use tallow_core::quant::{matmul, MatmulScratch};
    let (rows, cols, g) = (w.rows, w.cols, wi.interleave());
    for r in 0..rows {
        let (mut a, mut b) = (vec![0.0; cols], vec![0.0; cols]);
        w.dequantize_row_into(r, &mut a);
        wi.dequantize_row_into(r, &mut b);
        assert_eq!(a, b, "{w:?} row {r}");
    }
    for &n_tokens in token_counts {
        let x: Vec<f32> = (0..n_tokens * cols).map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 97.0).collect();
        let (mut y, mut yi) = (vec![0.0; n_tokens * rows], vec![0.0; n_tokens * rows]);
        let mut scratch = MatmulScratch::default();
        matmul(w, &x, n_tokens, &mut y, &mut scratch, pool);
        matmul(wi, &x, n_tokens, &mut yi, &mut scratch, pool);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y), bits(&yi), "{w:?} in groups of {g}, {n_tokens} tokens");
    }
}

/// Weights stored in the tiles' layout (groups of 16 rows with AVX-512 VNNI, of 4 with AVX2:
/// run this test under `TALLOW_KERNELS=avx2` too) give the same products, bit for bit, and
/// the same rows when dequantized.
#[test]
fn interleaved_layout_changes_no_bit() {
    use tallow_core::quant::{tiles_for, QTensor};
    use tallow_core::threadpool::ThreadPool;
    let pool = ThreadPool::new(2);
    let mut inputs = Inputs(0x5eed_f00d_0000_0001);
    for qtype in LEGACY {
        for rows in [4, 8, 16, 20, 48] {
            let cols = inputs.n();
            let bytes: Vec<u8> = (0..rows).flat_map(|_| inputs.weights(qtype, cols)).collect();
            let w = QTensor::from_bytes("w", qtype, rows, cols, &bytes).unwrap();
            let wi = w.clone().interleaved();
            let g = wi.interleave();
            assert!([1, 4, 16].contains(&g) && rows % g == 0, "{qtype}: {rows} rows in groups of {g}");
            if tiles_for(qtype) && rows % 16 == 0 {
                assert!(g > 1, "{qtype}: {rows} rows not repacked");
            }
            assert_same_rows_and_products(&w, &wi, &[1, 2, 3, 4, 5, 9], &pool);
        }
    }
}

/// Q4_K, Q5_K and Q6_K weights repacked in groups of 16 rows (where this CPU has the AVX-512
/// tiles) give the bits of the row-by-row llama.cpp-order products, in every order (Q4_K: GEMM
/// for tokens in groups of 4, GEMV for the rest; Q5_K and Q6_K: tiled from 8 tokens, vec_dot
/// below), and the same rows when dequantized.
#[test]
fn kquant_tiles_change_no_bit() {
    use tallow_core::quant::{tiles_for, QTensor};
    use tallow_core::threadpool::ThreadPool;
    let pool = ThreadPool::new(2);
    let mut inputs = Inputs(0x5eed_f00d_0000_0004);
    for (qtype, rows) in [
        (QType::Q4_K, 16),
        (QType::Q4_K, 48),
        (QType::Q6_K, 16),
        (QType::Q6_K, 64),
        (QType::Q5_K, 16),
        (QType::Q5_K, 48),
    ] {
        let ts = qtype.type_size();
        let cols = 256 * (1 + inputs.next() as usize % 8);
        let mut bytes: Vec<u8> = (0..rows * cols / 256 * ts).map(|_| inputs.next() as u8).collect();
        for blk in bytes.chunks_exact_mut(ts) {
            // Finite f16 scales of moderate size: Q4_K's and Q5_K's d and dmin, Q6_K's d.
            if qtype != QType::Q6_K {
                blk[1] = 0x14 + (inputs.next() % 8) as u8;
                blk[3] = 0x10 + (inputs.next() % 8) as u8;
            } else {
                blk[209] = 0x14 + (inputs.next() % 8) as u8;
            }
        }
        let w = QTensor::from_bytes("w", qtype, rows, cols, &bytes).unwrap();
        let wi = w.clone().interleaved();
        assert_eq!(wi.interleave(), if tiles_for(qtype) { 16 } else { 1 });
        assert_same_rows_and_products(&w, &wi, &[1, 2, 3, 4, 5, 7, 8, 11, 16], &pool);
    }
}

/// Fused products of several weights, split over pools of 1 to 4 threads (contiguous shares for
/// a token or a few, claimed chunks of row groups for more), give the bits of each product
/// computed alone on one thread: every row is computed once, by the same kernel.
#[test]
fn fused_products_on_any_pool_equal_one_thread() {
    use tallow_core::quant::{matmul, matmul_fused, MatmulScratch, QTensor};
    use tallow_core::threadpool::ThreadPool;
    let mut inputs = Inputs(0x5eed_f00d_0000_0005);
    let cols = 512;
    let weight = |inputs: &mut Inputs, qtype: QType, rows: usize| {
        let bytes: Vec<u8> = if qtype == QType::Q4_K {
            let mut b: Vec<u8> = (0..rows * cols / 256 * qtype.type_size()).map(|_| inputs.next() as u8).collect();
            for blk in b.chunks_exact_mut(qtype.type_size()) {
                blk[1] = 0x14; // finite d and dmin
                blk[3] = 0x10;
            }
            b
        } else {
            (0..rows).flat_map(|_| inputs.weights(qtype, cols)).collect()
        };
        QTensor::from_bytes("w", qtype, rows, cols, &bytes).unwrap().interleaved()
    };
    // Row counts that split unevenly into groups and chunks, one not a multiple of 16.
    let ws = [
        weight(&mut inputs, QType::Q8_0, 400),
        weight(&mut inputs, QType::Q4_1, 36),
        weight(&mut inputs, QType::Q4_K, 64),
    ];
    let one = ThreadPool::new(1);
    for n_tokens in [1, 7, 8, 13, 40] {
        let x: Vec<f32> = (0..n_tokens * cols).map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 97.0).collect();
        let mut scratch = MatmulScratch::default();
        let alone: Vec<Vec<f32>> = ws
            .iter()
            .map(|w| {
                let mut y = vec![0.0; n_tokens * w.rows];
                matmul(w, &x, n_tokens, &mut y, &mut scratch, &one);
                y
            })
            .collect();
        for threads in 1..=4 {
            let pool = ThreadPool::new(threads);
            let mut ys: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; n_tokens * w.rows]).collect();
            let [a, b, c] = &mut ys[..] else { unreachable!() };
            matmul_fused(
                [(&ws[0], &mut a[..]), (&ws[1], &mut b[..]), (&ws[2], &mut c[..])],
                &x,
                n_tokens,
                &mut scratch,
                &pool,
            );
            for (w, (y, want)) in ws.iter().zip(ys.iter().zip(&alone)) {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(y), bits(want), "{w:?}, {n_tokens} tokens, {threads} threads");
            }
        }
    }
}

/// Sequences that share a K-quant product (continuous batching) get, each, the bits of their
/// own product alone: more than 8 tokens together expand Q5_K and Q6_K row groups once for all
/// of them, in every order their sequences take (one-token `vec_dot`, tiled from 8 tokens).
#[test]
fn sequences_sharing_an_expanded_product_equal_alone() {
    use tallow_core::quant::{matmul, matmul_fused_seqs, MatmulScratch, QTensor};
    use tallow_core::threadpool::ThreadPool;
    let pool = ThreadPool::new(2);
    let mut inputs = Inputs(0x5eed_f00d_0000_0005);
    for qtype in [QType::Q5_K, QType::Q6_K] {
        let (rows, ts) = (48, qtype.type_size());
        let cols = 256 * (1 + inputs.next() as usize % 4);
        let mut bytes: Vec<u8> = (0..rows * cols / 256 * ts).map(|_| inputs.next() as u8).collect();
        for blk in bytes.chunks_exact_mut(ts) {
            // Finite f16 scales of moderate size (as in `kquant_tiles_change_no_bit`).
            if qtype == QType::Q5_K {
                blk[1] = 0x14 + (inputs.next() % 8) as u8;
                blk[3] = 0x10 + (inputs.next() % 8) as u8;
            } else {
                blk[209] = 0x14 + (inputs.next() % 8) as u8;
            }
        }
        let w = QTensor::from_bytes("w", qtype, rows, cols, &bytes).unwrap().interleaved();
        for seqs in [&[1usize; 10][..], &[6, 1, 9, 3], &[8, 1]] {
            let n: usize = seqs.iter().sum();
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 97.0).collect();
            let mut y = vec![0.0; n * rows];
            let mut scratch = MatmulScratch::default();
            matmul_fused_seqs([(&w, &mut y[..])], &x, seqs, &mut scratch, &pool);
            let mut t0 = 0;
            for &k in seqs {
                let mut alone = vec![0.0; k * rows];
                matmul(&w, &x[t0 * cols..(t0 + k) * cols], k, &mut alone, &mut scratch, &pool);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y[t0 * rows..(t0 + k) * rows]), bits(&alone), "{qtype}, sequences {seqs:?}, at {t0}");
                t0 += k;
            }
        }
    }
}
