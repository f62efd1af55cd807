//! `tallow._tallow`: conversions, GIL release and exception mapping over tallow-core. No math here.

use pyo3::prelude::*;

#[pymodule]
fn _tallow(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
