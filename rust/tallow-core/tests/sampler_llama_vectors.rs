//! llama.cpp's published expected vectors (`tests/test-sampling.cpp`) for the samplers tallow
//! implements, run through tallow's chain with every other stage switched off.
//!
//! llama.cpp builds logits as `ln(p)` and checks the renormalized probabilities to 1e-5. Tokens
//! llama.cpp reports with p = 0 may be absent from tallow's distribution; both count as 0 here.

use tallow_core::sampler::{Sampler, SamplingParams};

/// Every stage a no-op, temperature 1: the plain softmax.
fn neutral() -> SamplingParams {
    SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: Some(0), ..Default::default() }
}

fn probs_of(params: SamplingParams, probs: &[f32], history: &[u32]) -> Vec<f32> {
    let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let mut s = Sampler::new(params).unwrap();
    let dist = s.distribution(&logits, history).unwrap();
    let mut out = vec![0.0f32; probs.len()];
    for c in dist {
        out[c.id as usize] = c.p;
    }
    out
}

/// `expected` lists the surviving probabilities by descending probability, as llama.cpp prints
/// them after sorting; compare as sorted multisets so order conventions do not matter.
fn check(params: SamplingParams, probs: &[f32], history: &[u32], expected: &[f32]) {
    let mut got: Vec<f32> = probs_of(params.clone(), probs, history).into_iter().filter(|&p| p > 1e-7).collect();
    let mut want: Vec<f32> = expected.iter().copied().filter(|&p| p > 1e-7).collect();
    got.sort_by(|a, b| b.total_cmp(a));
    want.sort_by(|a, b| b.total_cmp(a));
    assert_eq!(got.len(), want.len(), "{params:?}: got {got:?}, want {want:?}");
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{params:?}: got {got:?}, want {want:?}");
    }
}

const P4: [f32; 4] = [0.1, 0.2, 0.3, 0.4];

#[test]
fn temp() {
    check(neutral(), &P4, &[], &[0.1, 0.2, 0.3, 0.4]);
    let out = probs_of(SamplingParams { temperature: 0.0, ..neutral() }, &P4, &[]);
    assert_eq!(out, vec![0.0, 0.0, 0.0, 1.0]);
}

#[test]
fn top_k() {
    check(SamplingParams { top_k: 1, ..neutral() }, &P4, &[], &[1.0]);
    check(SamplingParams { top_k: 3, ..neutral() }, &P4, &[], &[0.44444, 0.33333, 0.22222]);
    check(SamplingParams { top_k: 4, ..neutral() }, &P4, &[], &[0.4, 0.3, 0.2, 0.1]);
    check(SamplingParams { top_k: 0, ..neutral() }, &P4, &[], &[0.1, 0.2, 0.3, 0.4]);
}

#[test]
fn top_p() {
    check(SamplingParams { top_p: 0.0, ..neutral() }, &P4, &[], &[1.0]);
    check(SamplingParams { top_p: 0.7, ..neutral() }, &P4, &[], &[0.571429, 0.428571]);
    check(SamplingParams { top_p: 0.8, ..neutral() }, &P4, &[], &[0.44444, 0.33333, 0.22222]);
    check(SamplingParams { top_p: 1.0, ..neutral() }, &P4, &[], &[0.1, 0.2, 0.3, 0.4]);
}

#[test]
fn min_p() {
    let cases: [(f32, &[f32]); 8] = [
        (0.00, &[0.1, 0.2, 0.3, 0.4]),
        (0.24, &[0.1, 0.2, 0.3, 0.4]),
        (0.26, &[0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9]),
        (0.49, &[0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9]),
        (0.51, &[0.3 / 0.7, 0.4 / 0.7]),
        (0.74, &[0.3 / 0.7, 0.4 / 0.7]),
        (0.76, &[1.0]),
        (1.00, &[1.0]),
    ];
    for (p, want) in cases {
        check(SamplingParams { min_p: p, ..neutral() }, &P4, &[], want);
    }
    // llama.cpp also accepts min_p = 1.05 (keeps the top token); tallow rejects p > 1.
    assert!(Sampler::new(SamplingParams { min_p: 1.05, ..neutral() }).is_err());
}

#[test]
fn penalties() {
    let p5 = [0.2f32; 5];
    let pen = |rep: f32, freq: f32, pres: f32, n: usize| SamplingParams {
        repeat_penalty: rep,
        frequency_penalty: freq,
        presence_penalty: pres,
        repeat_last_n: n as i32,
        ..neutral()
    };
    // (history, repeat, frequency, presence, expected)
    type Case<'a> = (&'a [u32], f32, f32, f32, [f32; 5]);
    let cases: [Case; 6] = [
        (&[0], 50.0, 0.0, 0.0, [0.0, 0.25, 0.25, 0.25, 0.25]),
        (&[0, 1, 2], 50.0, 0.0, 0.0, [0.0, 0.0, 0.0, 0.5, 0.5]),
        (&[0, 1, 2, 0, 0], 50.0, 0.0, 0.0, [0.0, 0.0, 0.0, 0.5, 0.5]),
        (&[0], 1.0, 5.0, 5.0, [0.000011, 0.249997, 0.249997, 0.249997, 0.249997]),
        (&[0, 1, 2], 1.0, 5.0, 5.0, [0.000023, 0.000023, 0.000023, 0.499966, 0.499966]),
        (&[0, 1, 2, 0, 0], 1.0, 5.0, 5.0, [0.0, 0.000023, 0.000023, 0.499977, 0.499977]),
    ];
    for (hist, rep, freq, pres, want) in cases {
        let got = probs_of(pen(rep, freq, pres, hist.len()), &p5, hist);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "history {hist:?}: got {got:?}, want {want:?}");
        }
    }
}

/// Shape of llama.cpp's `test_sampler_queue`: on the ramp `logit = ln(id)` of 10k tokens
/// (`p ∝ id`; token 0 is -inf and never a candidate) each stage keeps an analytically known set.
#[test]
fn sampler_queue_on_ramp() {
    const N: u32 = 10_000;
    let logits: Vec<f32> = (0..N).map(|i| (i as f32).ln()).collect();
    let kept = |params: SamplingParams| -> Vec<u32> {
        let mut s = Sampler::new(params).unwrap();
        let mut ids: Vec<u32> = s.distribution(&logits, &[]).unwrap().iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids
    };
    let range = |lo: u32| (lo..N).collect::<Vec<u32>>();

    // top_k keeps the k highest ids.
    assert_eq!(kept(SamplingParams { top_k: 100, ..neutral() }), range(N - 100));
    assert_eq!(kept(SamplingParams { top_k: N as i32, ..neutral() }), range(1));

    // top_p keeps the shortest run of highest ids whose mass (∝ sum of ids) reaches p.
    let top_p_lo = |lo: u32, p: f64| -> u32 {
        let total: f64 = (lo..N).map(f64::from).sum();
        let (mut cum, mut id) = (0.0, N);
        while cum < p * total {
            id -= 1;
            cum += f64::from(id);
        }
        id
    };
    for p in [0.0003f32, 0.8] {
        assert_eq!(kept(SamplingParams { top_p: p, ..neutral() }), range(top_p_lo(1, p as f64)), "top_p {p}");
    }
    assert_eq!(kept(SamplingParams { top_p: 0.0, ..neutral() }), vec![N - 1]);

    // min_p keeps ids >= min_p * (N - 1).
    for m in [0.1f32, 1e-12] {
        let lo = ((m as f64 * f64::from(N - 1)).ceil() as u32).max(1);
        assert_eq!(kept(SamplingParams { min_p: m, ..neutral() }), range(lo), "min_p {m}");
    }
    assert_eq!(kept(SamplingParams { min_p: 1.0, ..neutral() }), vec![N - 1]);

    // The chain k -> p -> m composes: each stage works on what the previous one kept.
    let after_k = N - 100;
    let after_p = top_p_lo(after_k, 0.8);
    let lo = after_p.max(((0.1 * f64::from(N - 1)).ceil()) as u32);
    assert_eq!(kept(SamplingParams { top_k: 100, top_p: 0.8, min_p: 0.1, ..neutral() }), range(lo));
}
