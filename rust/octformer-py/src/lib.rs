//! `octformer._core`: converts, checks, releases the GIL, maps errors. No algorithms here.

use pyo3::prelude::*;

mod convert;
mod errors;
mod format;
mod octree;
mod serialize;
mod threads;

/// mimalloc keeps freed pages mapped for a while, so back-to-back builds (training loops,
/// DataLoader workers) reuse memory instead of paying a page fault per 4 KiB every call.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's option enum.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // return idle memory to the OS after 1 s instead of mimalloc's 10 ms default
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000) };
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    octree::register(m)?;
    serialize::register(m)?;
    format::register(m)?;
    m.add_function(wrap_pyfunction!(threads::resolved_num_threads, m)?)?;
    Ok(())
}
