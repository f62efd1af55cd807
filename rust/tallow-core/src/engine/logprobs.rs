//! Log-probabilities of sampled tokens, for callers that ask for them (OpenAI's `logprobs`).
//!
//! They are the log-softmax of the model's logits for the position: the model's own
//! distribution, before `logit_bias`, penalties, truncation and temperature (llama.cpp's server
//! and llama-cpp-python report the same).

/// The most alternatives a request may ask for (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One sampled token's log-probability and the `top` most likely tokens at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub logprob: f32,
    /// `(id, logprob)`, most likely first; ties go to the lower id.
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprobs {
    /// `logits` is one row `[n_vocab]`; NaN logits count as impossible (-inf).
    pub fn of(logits: &[f32], id: u32, n_top: usize) -> TokenLogprobs {
        let max = logits.iter().copied().filter(|l| !l.is_nan()).fold(f32::NEG_INFINITY, f32::max);
        // All -inf: every token is impossible; report -inf rather than NaN.
        let log_total = if max == f32::NEG_INFINITY {
            f64::INFINITY
        } else {
            let sum: f64 = logits.iter().filter(|l| !l.is_nan()).map(|&l| (l as f64 - max as f64).exp()).sum();
            max as f64 + sum.ln()
        };
        let logprob = |l: f32| if l.is_nan() { f32::NEG_INFINITY } else { (l as f64 - log_total) as f32 };
        let mut top: Vec<(u32, f32)> = Vec::with_capacity(n_top + 1);
        if n_top > 0 {
            // One pass keeping the best `n_top` sorted; most logits fail the first comparison.
            for (i, &l) in logits.iter().enumerate() {
                if l.is_nan() || (top.len() == n_top && l <= top[n_top - 1].1) {
                    continue;
                }
                let at = top.partition_point(|&(_, t)| t >= l);
                top.insert(at, (i as u32, l));
                top.truncate(n_top);
            }
        }
        for t in &mut top {
            t.1 = logprob(t.1);
        }
        let own = logits.get(id as usize).copied().unwrap_or(f32::NAN);
        TokenLogprobs { logprob: logprob(own), top }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_top() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, f32::NAN, -1.0];
        let lp = TokenLogprobs::of(&logits, 2, 3);
        let total: f64 = [1.0f64, 3.0, 2.0, 3.0, -1.0].iter().map(|l| l.exp()).sum();
        assert!((lp.logprob as f64 - (2.0 - total.ln())).abs() < 1e-6);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 2], "descending, ties by lower id");
        assert!((lp.top[0].1 as f64 - (3.0 - total.ln())).abs() < 1e-6);
        let p: f64 = [0usize, 1, 2, 3, 5]
            .iter()
            .map(|&i| TokenLogprobs::of(&logits, i as u32, 0).logprob as f64)
            .map(f64::exp)
            .sum();
        assert!((p - 1.0).abs() < 1e-6, "probabilities sum to 1, got {p}");
        assert_eq!(TokenLogprobs::of(&logits, 4, 0).logprob, f32::NEG_INFINITY, "NaN is impossible");
        assert_eq!(TokenLogprobs::of(&logits, 0, 10).top.len(), 5, "at most the non-NaN tokens");
    }

    #[test]
    fn all_impossible() {
        let lp = TokenLogprobs::of(&[f32::NEG_INFINITY; 4], 1, 2);
        assert_eq!(lp.logprob, f32::NEG_INFINITY);
        assert!(lp.top.iter().all(|t| t.1 == f32::NEG_INFINITY));
    }
}
