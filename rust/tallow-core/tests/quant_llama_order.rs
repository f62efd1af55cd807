//! The AVX2 dot products of the 32-element formats sum in llama.cpp's order, bit for bit equal
//! to `row_dot` (quant/legacy_dot.rs), so `matmul` may use them without changing a single
//! logit. (The AVX-512 VNNI kernels take two blocks per instruction, a different f32 order.)

use tallow_core::quant::{activation, row_dot, Kernels, QType};

const LEGACY: [QType; 5] = [QType::Q4_0, QType::Q4_1, QType::Q5_0, QType::Q5_1, QType::Q8_0];

/// Deterministic random weights and activations for the 32-element formats.
struct Inputs(u64);

impl Inputs {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A row length: 1 to 40 blocks.
    fn n(&mut self) -> usize {
        32 * (1 + (self.next() % 40) as usize)
    }

    /// `n` weights of `qtype`: random bits with finite f16 scales (and mins) of moderate size.
    fn weights(&mut self, qtype: QType, n: usize) -> Vec<u8> {
        let with_min = matches!(qtype, QType::Q4_1 | QType::Q5_1);
        let mut w: Vec<u8> = (0..n / 32 * qtype.type_size()).map(|_| self.next() as u8).collect();
        for blk in w.chunks_exact_mut(qtype.type_size()) {
            blk[0] = self.next() as u8;
            blk[1] = 0x18 + (self.next() % 16) as u8;
            if with_min {
                blk[2] = self.next() as u8;
                blk[3] = 0x98 + (self.next() % 16) as u8;
            }
        }
        w
    }

    /// `n` random activations quantized to `qtype`'s partner (Q8_1 for Q4_1/Q5_1, else Q8_0).
    fn activations(&mut self, qtype: QType, n: usize) -> Vec<u8> {
        let with_min = matches!(qtype, QType::Q4_1 | QType::Q5_1);
        let x: Vec<f32> = (0..n).map(|_| ((self.next() % 2001) as f32 - 1000.0) / 37.0).collect();
        let mut xq = vec![0u8; n / 32 * if with_min { 36 } else { 34 }];
        if with_min {
            activation::quantize_row_q8_1(&x, &mut xq)
        } else {
            activation::quantize_row_q8_0(&x, &mut xq)
        }
        xq
    }
}

#[test]
fn avx2_legacy_dots_are_bit_identical_to_llama_cpp_order() {
    let Some(k) = Kernels::avx2() else {
        // No AVX2 on this CPU: `matmul` uses `row_dot` itself, nothing to compare.
        assert!(!std::is_x86_feature_detected!("avx2"), "an AVX2 CPU must have the AVX2 table");
        return;
    };
    let mut inputs = Inputs(0x1234_5678_9abc_def0);
    for qtype in LEGACY {
        for _ in 0..200 {
            let n = inputs.n();
            let w = inputs.weights(qtype, n);
            let xq = inputs.activations(qtype, n);
            let want = row_dot(qtype).unwrap()(&w, &xq);
            let got = k.vec_dot(qtype, n, &w, &xq);
            assert_eq!(got.to_bits(), want.to_bits(), "{qtype}, n = {n}: {got} vs {want}");
        }
    }
}

/// The 4-token kernels give each token exactly the single-token kernel's bits.
#[cfg(target_arch = "x86_64")]
#[test]
fn four_token_dots_equal_single_dots_bit_for_bit() {
    use tallow_core::quant::x86_legacy_x4::dot_x4_fn;
    let Some(k) = Kernels::avx2() else {
        assert!(dot_x4_fn(QType::Q4_0).is_none(), "no AVX2, no 4-token kernels");
        return;
    };
    let mut inputs = Inputs(0x0bad_cafe_1234_5678);
    for qtype in LEGACY {
        let dot4 = dot_x4_fn(qtype).expect("AVX2 CPU has the 4-token kernels");
        for _ in 0..100 {
            let n = inputs.n();
            let w = inputs.weights(qtype, n);
            let acts: Vec<Vec<u8>> = (0..4).map(|_| inputs.activations(qtype, n)).collect();
            // SAFETY: the kernel came from dot_x4_fn, which checked the CPU; lengths match n.
            let got = unsafe { dot4(n, &w, [&acts[0], &acts[1], &acts[2], &acts[3]]) };
            for (t, a) in acts.iter().enumerate() {
                let want = k.vec_dot(qtype, n, &w, a);
                assert_eq!(got[t].to_bits(), want.to_bits(), "{qtype}, n = {n}, token {t}");
            }
        }
    }
}
