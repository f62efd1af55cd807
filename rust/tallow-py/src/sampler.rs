//! `Sampler`: the engine's sampler on caller-supplied logits (for tests and custom loops).

use crate::errors::guard;
use numpy::PyReadonlyArray1;
use pyo3::prelude::*;
use std::sync::Mutex;
use tallow_core::sampler::{Sampler as CoreSampler, SamplingParams};

#[pyclass(frozen, module = "tallow._tallow", name = "Sampler")]
pub struct PySampler {
    inner: Mutex<CoreSampler>,
}

#[pymethods]
impl PySampler {
    #[new]
    #[pyo3(signature = (*, temperature = 0.8, top_k = 40, top_p = 0.95, min_p = 0.05, repeat_penalty = 1.0,
                        repeat_last_n = 64, frequency_penalty = 0.0, presence_penalty = 0.0, seed = None))]
    fn new(
        py: Python<'_>,
        temperature: f32,
        top_k: i32,
        top_p: f32,
        min_p: f32,
        repeat_penalty: f32,
        repeat_last_n: i32,
        frequency_penalty: f32,
        presence_penalty: f32,
        seed: Option<u64>,
    ) -> PyResult<Self> {
        let params = SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            repeat_last_n,
            frequency_penalty,
            presence_penalty,
            seed,
            ..SamplingParams::default()
        };
        let inner = guard(py, || CoreSampler::new(params))?;
        Ok(PySampler { inner: Mutex::new(inner) })
    }

    /// Samples a token id from `logits` (float32, one per vocabulary entry) given the
    /// previously generated `history`. The array is not modified.
    #[pyo3(signature = (logits, history = Vec::new()))]
    fn sample(&self, py: Python<'_>, logits: PyReadonlyArray1<'_, f32>, history: Vec<u32>) -> PyResult<u32> {
        let logits = logits
            .as_slice()
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("invalid value for 'logits': {e}")))?;
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard(py, || s.sample(logits, &history))
    }
}
