//! The one place where core errors and panics become Python exceptions.

use octformer_core::CoreError;
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

create_exception!(
    _core,
    OctformerError,
    PyValueError,
    "Bad input to octformer: names the argument, the expected and the actual value."
);
create_exception!(
    _core,
    OutOfBoundsError,
    OctformerError,
    "Points lie outside the explicit bounding box."
);
create_exception!(
    _core,
    CorruptDataError,
    OctformerError,
    "A byte stream or file could not be decoded."
);
create_exception!(
    _core,
    InternalError,
    PyRuntimeError,
    "A bug in octformer's native code (please report it)."
);

/// Map a core error to its Python exception.
pub fn to_py(err: CoreError) -> PyErr {
    let msg = err.to_string();
    match err {
        CoreError::OutOfBounds { .. } => OutOfBoundsError::new_err(msg),
        CoreError::Corrupt { .. } => CorruptDataError::new_err(msg),
        CoreError::InvalidArgument { .. } | CoreError::NonFinite { .. } => {
            OctformerError::new_err(msg)
        }
    }
}

/// Run native work, turning a panic into `InternalError` instead of letting it cross into Python.
pub fn guarded<R>(f: impl FnOnce() -> Result<R, CoreError>) -> PyResult<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(to_py),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(InternalError::new_err(format!(
                "native code panicked: {what}"
            )))
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("OctformerError", py.get_type::<OctformerError>())?;
    m.add("OutOfBoundsError", py.get_type::<OutOfBoundsError>())?;
    m.add("CorruptDataError", py.get_type::<CorruptDataError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    Ok(())
}
