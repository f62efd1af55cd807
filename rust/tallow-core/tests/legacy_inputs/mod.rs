//! Random inputs for the 32-element formats' dot products, shared by the tests that compare
//! their kernels bit for bit (`quant_llama_order.rs`, `neon_row_dot.rs`).

#![allow(dead_code)] // each test file uses part of it

use tallow_core::quant::{activation, QType};

pub const LEGACY: [QType; 5] = [QType::Q4_0, QType::Q4_1, QType::Q5_0, QType::Q5_1, QType::Q8_0];

/// Deterministic random weights and activations for the 32-element formats.
pub struct Inputs(pub u64);

impl Inputs {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A row length: 1 to 40 blocks.
    pub fn n(&mut self) -> usize {
        32 * (1 + (self.next() % 40) as usize)
    }

    /// `n` weights of `qtype`: random bits with finite f16 scales (and mins) of moderate size.
    pub fn weights(&mut self, qtype: QType, n: usize) -> Vec<u8> {
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
    pub fn activations(&mut self, qtype: QType, n: usize) -> Vec<u8> {
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
