//! `tallow._tallow`: conversions, GIL release and exception mapping over tallow-core.
//! No math here: every method extracts arguments, calls the core (GIL released where it
//! computes) and converts the result.

mod errors;
mod model;
mod sampler;
mod stream;

use pyo3::prelude::*;

/// Text rendering of a GGUF file's header, metadata and tensor table (`tallow inspect`).
#[pyfunction]
fn inspect(py: Python<'_>, path: std::path::PathBuf) -> PyResult<String> {
    errors::guard_detached(py, move || {
        let file = tallow_core::gguf::GgufFile::open(&path)?;
        Ok(tallow_core::gguf::render_inspect(&file, &path.display().to_string()))
    })
}

/// What this build runs with: version, chosen kernels, CPU features.
/// Waits up to `timeout` seconds (without one: until done) for the repack cache files this
/// process is writing; whether none is left. The GIL is released meanwhile.
#[pyfunction]
#[pyo3(signature = (timeout = None))]
fn wait_for_repack_writes(py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
    let timeout = match timeout {
        None => None,
        Some(s) if s.is_finite() => std::time::Duration::try_from_secs_f64(s.max(0.0)).ok(),
        Some(s) => {
            let msg = format!("timeout must be a finite number of seconds or None, got {s}");
            return Err(pyo3::exceptions::PyValueError::new_err(msg));
        }
    };
    Ok(py.detach(|| tallow_core::quant::wait_for_repack_writes(timeout)))
}

#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
    let d = pyo3::types::PyDict::new(py);
    for (k, v) in tallow_core::build_info() {
        d.set_item(k, v)?;
    }
    Ok(d)
}

#[pymodule]
fn _tallow(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::ChatSession>()?;
    m.add_class::<stream::Stream>()?;
    m.add_class::<stream::LoopWaker>()?;
    m.add_class::<sampler::PySampler>()?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add_function(wrap_pyfunction!(wait_for_repack_writes, m)?)?;
    Ok(())
}
