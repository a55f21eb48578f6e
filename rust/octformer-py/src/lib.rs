//! `octformer._core`: converts, checks, releases the GIL, maps errors. No algorithms here.

use pyo3::prelude::*;

mod convert;
mod errors;
mod format;
mod octree;
mod serialize;
mod threads;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    octree::register(m)?;
    serialize::register(m)?;
    format::register(m)?;
    m.add_function(wrap_pyfunction!(threads::resolved_num_threads, m)?)?;
    Ok(())
}
