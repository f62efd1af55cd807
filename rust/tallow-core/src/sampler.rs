//! Token sampler: turns one row of logits into a token id.
//!
//! The chain follows llama.cpp's default order (`common/sampling.cpp`):
//!
//! ```text
//! logit_bias -> penalties (repeat, frequency, presence) -> top_k -> top_p -> min_p
//!            -> temperature -> dist (seeded ChaCha20 draw)
//! ```
//!
//! so top_p and min_p see the temperature-1 distribution, as in llama.cpp. Semantics pinned down
//! here (the invariants S1–S16 of `docs/reliability.md` test them):
//! - Greedy: `temperature <= 0` or `top_k == 1` picks the argmax of the biased and penalized logits;
//!   ties go to the lowest token id. Greedy never consumes randomness.
//! - `top_k <= 0` or `top_k >= n` is a no-op; otherwise exactly `top_k` tokens are kept, ties at the
//!   cut broken by lowest id. `top_p >= 1` and `min_p <= 0` are no-ops. Every filter keeps at least
//!   one token (llama.cpp's `min_keep = 1`).
//! - top_p keeps the shortest prefix of the tokens sorted by descending probability whose mass is
//!   `>= top_p` (so `top_p = 0` keeps one token). min_p keeps tokens with `p >= min_p * p_max`.
//! - Penalties look at the last `repeat_last_n` tokens of `history` (`0` disables, `-1` means the
//!   whole history). For a token seen `c > 0` times there:
//!   `logit = (logit <= 0 ? logit * repeat_penalty : logit / repeat_penalty) - c * frequency_penalty
//!   - presence_penalty`; every other logit is untouched.
//! - Ids outside the vocabulary, in `history` or `logit_bias`, are ignored.
//! - NaN and -inf logits are never sampled. A +inf logit (e.g. a `logit_bias` of +inf) forces its
//!   token, the lowest such id. No samplable token at all is [`Error::Sampling`].
//! - The caller's logits are never modified; the sampler works on its own scratch copy.

use std::cmp::Ordering;
use std::hash::{BuildHasher, Hasher};

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// Sampling settings of one generation request. Defaults are llama.cpp's.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// `<= 0` means greedy.
    pub temperature: f32,
    /// `<= 0` disables.
    pub top_k: i32,
    /// In `[0, 1]`; `1` disables.
    pub top_p: f32,
    /// In `[0, 1]`; `0` disables.
    pub min_p: f32,
    /// `> 0`; `1` disables.
    pub repeat_penalty: f32,
    /// Penalty window over the end of the history: `0` disables, `-1` is the whole history.
    pub repeat_last_n: i32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// `None` draws a fresh seed (see [`Sampler::seed`] to read it back).
    pub seed: Option<u64>,
    /// Added to the logit of a token before anything else; `-inf` bans, `+inf` forces.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Settings for deterministic argmax decoding.
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if !t.is_finite() || t < 0.0 {
            return Err(Error::invalid("temperature", format!("must be a finite number >= 0, got {t}")));
        }
        let p = self.top_p;
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid("top_p", format!("must be in [0, 1], got {p}")));
        }
        let p = self.min_p;
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid("min_p", format!("must be in [0, 1], got {p}")));
        }
        let r = self.repeat_penalty;
        if !r.is_finite() || r <= 0.0 {
            return Err(Error::invalid("repeat_penalty", format!("must be a finite number > 0, got {r}")));
        }
        if self.repeat_last_n < -1 {
            return Err(Error::invalid(
                "repeat_last_n",
                format!("must be >= -1 (-1 = whole history), got {}", self.repeat_last_n),
            ));
        }
        if !self.frequency_penalty.is_finite() {
            return Err(Error::invalid("frequency_penalty", format!("must be finite, got {}", self.frequency_penalty)));
        }
        if !self.presence_penalty.is_finite() {
            return Err(Error::invalid("presence_penalty", format!("must be finite, got {}", self.presence_penalty)));
        }
        if let Some(&(id, b)) = self.logit_bias.iter().find(|(_, b)| b.is_nan()) {
            return Err(Error::invalid("logit_bias", format!("bias for token {id} is {b}")));
        }
        Ok(())
    }

    fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }

    fn penalties_active(&self) -> bool {
        self.repeat_last_n != 0
            && (self.repeat_penalty != 1.0 || self.frequency_penalty != 0.0 || self.presence_penalty != 0.0)
    }
}

/// One surviving candidate (llama.cpp's `llama_token_data`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenProb {
    pub id: u32,
    /// Logit after bias and penalties, before temperature.
    pub logit: f32,
    /// Final probability (after every filter and the temperature).
    pub p: f32,
}

/// Stateful sampler of one sequence: the seeded RNG plus scratch reused across tokens, so a warm
/// sampler does not allocate per token.
pub struct Sampler {
    params: SamplingParams,
    seed: u64,
    rng: ChaCha20Rng,
    /// [n_vocab] working copy of the logits (bias and penalties applied).
    work: Vec<f32>,
    /// [n_vocab] token counts in the penalty window; all zero between calls.
    counts: Vec<u32>,
    /// Candidates still in play; after [`Sampler::filter`], a normalized distribution.
    cands: Vec<TokenProb>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Sampler> {
        params.validate()?;
        let seed = params.seed.unwrap_or_else(fresh_seed);
        Ok(Sampler {
            params,
            seed,
            rng: ChaCha20Rng::seed_from_u64(seed),
            work: Vec::new(),
            counts: Vec::new(),
            cands: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The seed in use (the drawn one when `params.seed` is `None`), to reproduce a run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Restarts the random stream as if freshly built with this seed.
    pub fn reseed(&mut self, seed: u64) {
        self.seed = seed;
        self.rng = ChaCha20Rng::seed_from_u64(seed);
    }

    /// Picks the next token. `logits` is one row `[n_vocab]`; `history` is the sequence so far
    /// (prompt and generated tokens), used by the penalties.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        if let Some(id) = self.filter(logits, history)? {
            return Ok(id);
        }
        // Inverse-CDF draw over the kept candidates; 53 random bits give a uniform in [0, 1).
        let total: f64 = self.cands.iter().map(|c| c.p as f64).sum();
        let u = (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let target = u * total;
        let mut acc = 0.0f64;
        let mut last = self.cands[0].id;
        for c in &self.cands {
            if c.p <= 0.0 {
                continue;
            }
            acc += c.p as f64;
            last = c.id;
            if acc > target {
                return Ok(c.id);
            }
        }
        // Rounding left `target` at the very top of the range.
        Ok(last)
    }

    /// The distribution [`Sampler::sample`] draws from: the kept candidates with their final
    /// probabilities (sum 1; order unspecified). Greedy or forced picks give one token with p = 1.
    /// Consumes no randomness.
    pub fn distribution(&mut self, logits: &[f32], history: &[u32]) -> Result<&[TokenProb]> {
        if let Some(id) = self.filter(logits, history)? {
            let logit = self.work[id as usize];
            self.cands.clear();
            self.cands.push(TokenProb { id, logit, p: 1.0 });
        }
        Ok(&self.cands)
    }

    /// Runs the chain up to (not including) the draw. Returns `Some(id)` when the choice is already
    /// made (greedy, forced); otherwise `self.cands` holds the distribution.
    fn filter(&mut self, logits: &[f32], history: &[u32]) -> Result<Option<u32>> {
        let n_vocab = logits.len();
        if n_vocab == 0 {
            return Err(Error::invalid("logits", "empty logits row"));
        }
        if u32::try_from(n_vocab).is_err() {
            return Err(Error::invalid("logits", format!("{n_vocab} logits exceed the u32 token id range")));
        }
        self.work.clear();
        self.work.extend_from_slice(logits);
        self.apply_logit_bias();
        self.apply_penalties(history);

        if self.params.is_greedy() {
            // One pass, no candidate list (it would write 12 bytes per vocabulary entry per
            // token): the first +inf wins, then the first of the largest finite logits; NaN
            // and -inf never compare greater.
            let mut best = None;
            let mut best_logit = f32::NEG_INFINITY;
            for (id, &logit) in self.work.iter().enumerate() {
                if logit > best_logit {
                    if logit == f32::INFINITY {
                        return Ok(Some(id as u32));
                    }
                    (best, best_logit) = (Some(id as u32), logit);
                }
            }
            return best.map(Some).ok_or_else(|| Error::Sampling(format!("all {n_vocab} logits are -inf or NaN")));
        }

        // Collect samplable tokens; +inf forces the lowest such id.
        self.cands.clear();
        for (id, &logit) in self.work.iter().enumerate() {
            if logit == f32::INFINITY {
                return Ok(Some(id as u32));
            }
            if logit.is_finite() {
                self.cands.push(TokenProb { id: id as u32, logit, p: 0.0 });
            }
        }
        if self.cands.is_empty() {
            return Err(Error::Sampling(format!("all {n_vocab} logits are -inf or NaN")));
        }

        self.top_k();
        self.top_p();
        self.min_p();
        self.temperature();
        Ok(None)
    }

    fn apply_logit_bias(&mut self) {
        for &(id, bias) in &self.params.logit_bias {
            if let Some(l) = self.work.get_mut(id as usize) {
                *l += bias;
            }
        }
    }

    fn apply_penalties(&mut self, history: &[u32]) {
        let p = &self.params;
        if !p.penalties_active() {
            return;
        }
        let window = match usize::try_from(p.repeat_last_n) {
            Ok(n) => &history[history.len().saturating_sub(n)..],
            Err(_) => history, // -1: the whole history
        };
        let n_vocab = self.work.len();
        self.counts.resize(n_vocab, 0);
        for &id in window {
            if let Some(c) = self.counts.get_mut(id as usize) {
                *c = c.saturating_add(1);
            }
        }
        // Second pass applies each distinct token once and resets its count to zero.
        for &id in window {
            let Some(count) = self.counts.get_mut(id as usize) else {
                continue;
            };
            if *count == 0 {
                continue;
            }
            let c = *count as f32;
            *count = 0;
            let l = &mut self.work[id as usize];
            *l = if *l <= 0.0 { *l * p.repeat_penalty } else { *l / p.repeat_penalty };
            *l -= c * p.frequency_penalty + p.presence_penalty;
        }
    }

    fn top_k(&mut self) {
        let k = self.params.top_k;
        if k <= 0 || k as usize >= self.cands.len() {
            return;
        }
        let k = k as usize;
        self.cands.select_nth_unstable_by(k - 1, by_logit_desc);
        self.cands.truncate(k);
    }

    fn top_p(&mut self) {
        let top_p = self.params.top_p as f64;
        if top_p >= 1.0 || self.cands.len() == 1 {
            return;
        }
        self.cands.sort_unstable_by(by_logit_desc);
        let max = self.cands[0].logit;
        let total: f64 = self.cands.iter().map(|c| (c.logit as f64 - max as f64).exp()).sum();
        let mut cum = 0.0f64;
        let mut keep = self.cands.len();
        for (i, c) in self.cands.iter().enumerate() {
            cum += (c.logit as f64 - max as f64).exp() / total;
            if cum >= top_p {
                keep = i + 1;
                break;
            }
        }
        self.cands.truncate(keep);
    }

    fn min_p(&mut self) {
        let min_p = self.params.min_p;
        if min_p <= 0.0 {
            return;
        }
        // p_i >= min_p * p_max  <=>  logit_i >= logit_max + ln(min_p); the max always survives.
        let max = self.cands.iter().map(|c| c.logit).fold(f32::NEG_INFINITY, f32::max);
        let threshold = max as f64 + (min_p as f64).ln();
        self.cands.retain(|c| c.logit as f64 >= threshold);
    }

    /// Softmax of `logit / T` into `p`; subtracting the max first keeps tiny T from overflowing.
    fn temperature(&mut self) {
        let t = self.params.temperature as f64;
        let max = self.cands.iter().map(|c| c.logit).fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0f64;
        for c in &self.cands {
            total += ((c.logit as f64 - max as f64) / t).exp();
        }
        for c in &mut self.cands {
            c.p = (((c.logit as f64 - max as f64) / t).exp() / total) as f32;
        }
    }
}

/// Descending logit, then ascending id: a total order, so ties are cut deterministically.
/// Adding +0.0 turns -0.0 into +0.0, so the two zeros tie (by id) as they compare equal.
fn by_logit_desc(a: &TokenProb, b: &TokenProb) -> Ordering {
    (b.logit + 0.0).total_cmp(&(a.logit + 0.0)).then(a.id.cmp(&b.id))
}

/// A seed for `seed: None`: std's per-process random hasher keys mixed with the clock.
fn fresh_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}
