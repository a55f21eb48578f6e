//! (placeholder: bindings filled in by the serialization work, issue 3)

use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
