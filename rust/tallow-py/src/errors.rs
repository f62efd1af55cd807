//! Maps engine errors to Python exceptions. The exception classes live in `tallow.errors`
//! (Python), so `GGUFError` can subclass both `TallowError` and `ValueError`.

use pyo3::exceptions::{PyFileNotFoundError, PyIsADirectoryError, PyOSError, PyPermissionError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyType;
use tallow_core::Error;

fn tallow_exception(py: Python<'_>, class: &str, message: String) -> PyErr {
    let made = py
        .import("tallow.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match made {
        Ok(cls) => PyErr::from_type(cls, message),
        // tallow.errors missing means a broken install; still raise something meaningful.
        Err(_) => PyValueError::new_err(message),
    }
}

pub fn to_pyerr(py: Python<'_>, e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Gguf(_) => tallow_exception(py, "GGUFError", msg),
        Error::UnsupportedModel(_) => tallow_exception(py, "UnsupportedModelError", msg),
        Error::ContextOverflow(_) => tallow_exception(py, "ContextOverflowError", msg),
        Error::Overloaded(_) => tallow_exception(py, "OverloadedError", msg),
        Error::Template(_) => tallow_exception(py, "TemplateError", msg),
        Error::Closed => tallow_exception(py, "ModelClosedError", msg),
        Error::Timeout(_) => tallow_exception(py, "RequestTimeoutError", msg),
        Error::InvalidArgument { .. } => PyValueError::new_err(msg),
        Error::Io { path, source } => {
            let text = format!("{path}: {source}");
            match source.kind() {
                std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(text),
                std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(text),
                std::io::ErrorKind::IsADirectory => PyIsADirectoryError::new_err(text),
                _ if source.to_string().contains("is a directory") => PyIsADirectoryError::new_err(text),
                _ => PyOSError::new_err(text),
            }
        }
        Error::Tokenizer(_) | Error::Sampling(_) | Error::Cancelled | Error::Internal(_) => {
            tallow_exception(py, "TallowError", msg)
        }
    }
}

/// Runs `f` (engine code, GIL released by the caller where it computes) and turns both its
/// errors and any panic into Python exceptions, so `PanicException` never reaches users.
pub fn guard<T>(py: Python<'_>, f: impl FnOnce() -> tallow_core::Result<T>) -> PyResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_pyerr(py, e)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(tallow_exception(py, "TallowError", format!("internal error (please report): {what}")))
        }
    }
}

/// `guard` with the GIL released for the duration of `f`.
pub fn guard_detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> tallow_core::Result<T> + Send) -> PyResult<T> {
    let r = py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    guard(py, || match r {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    })
}
