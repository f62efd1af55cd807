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
    Ok(())
}
