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

/// How long freed memory stays mapped for reuse: `OCTFORMER_PURGE_DELAY_MS`, else 10 s.
/// On the KVM machines we measure, re-faulting purged pages made a build called 1.5 s
/// after the previous one 3-4x slower (indoor200k: ~50 ms vs ~20 ms with 10 s).
fn purge_delay_ms() -> std::ffi::c_long {
    std::env::var("OCTFORMER_PURGE_DELAY_MS")
        .ok()
        .and_then(|v| v.trim().parse::<std::ffi::c_long>().ok())
        .unwrap_or(10_000)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // return idle memory to the OS after a delay instead of mimalloc's 10 ms default
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, purge_delay_ms()) };
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    octree::register(m)?;
    serialize::register(m)?;
    format::register(m)?;
    m.add_function(wrap_pyfunction!(threads::resolved_num_threads, m)?)?;
    Ok(())
}
