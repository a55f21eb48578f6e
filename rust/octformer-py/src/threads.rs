//! Sized rayon pools that survive `fork()` (DataLoader workers fork on Linux).
//!
//! A pool's worker threads do not exist in a forked child, so each pool remembers the
//! pid that built it; a child that finds pools from its parent abandons them (leaks,
//! never joins) and builds fresh ones.

use pyo3::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

struct Pools {
    pid: u32,
    by_size: HashMap<usize, Arc<rayon::ThreadPool>>,
}

static POOLS: Mutex<Option<Pools>> = Mutex::new(None);

/// Thread count: the argument, else `OCTFORMER_NUM_THREADS`, else the machine's cores.
pub fn resolve(num_threads: Option<usize>) -> PyResult<usize> {
    if let Some(n) = num_threads {
        if n == 0 {
            return Err(crate::errors::OctformerError::new_err(
                "num_threads: expected a positive integer, got 0",
            ));
        }
        return Ok(n);
    }
    if let Ok(v) = std::env::var("OCTFORMER_NUM_THREADS") {
        return match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(crate::errors::OctformerError::new_err(format!(
                "OCTFORMER_NUM_THREADS: expected a positive integer, got {v:?}"
            ))),
        };
    }
    Ok(std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1))
}

fn pool(n: usize) -> PyResult<Arc<rayon::ThreadPool>> {
    let pid = std::process::id();
    let mut guard = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    if guard.as_ref().is_some_and(|p| p.pid != pid) {
        // inherited from the parent across fork: its threads are gone, never touch it
        let stale = guard.take().unwrap();
        std::mem::forget(stale);
    }
    let pools = guard.get_or_insert_with(|| Pools {
        pid,
        by_size: HashMap::new(),
    });
    if let Some(p) = pools.by_size.get(&n) {
        return Ok(p.clone());
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("octformer-{i}"))
        .build()
        .map_err(|e| {
            crate::errors::InternalError::new_err(format!("could not start {n} threads: {e}"))
        })?;
    let p = Arc::new(p);
    pools.by_size.insert(n, p.clone());
    Ok(p)
}

/// Below this many points a build (or a per-leaf average) runs inline on the calling
/// thread whatever the thread count: waking a second thread costs more than it saves (a
/// 4,096-point build took 0.25 ms on 1 thread and 0.6 ms on 2). Results never depend on
/// the thread count.
pub const SMALL_BUILD: usize = 1 << 16;

/// Below this many child entries a neighbour step runs inline. A step is one parallel
/// pass over 1,024-parent tasks, so from two tasks on a second thread pays, even though
/// the first parallel call also pays for waking it (lidar1M d10, every depth in turn on 2
/// threads: 0.52 ms with this cutoff, 0.58 ms with the build's).
pub const SMALL_STEP: usize = 1 << 13;

/// [`install`] for a call over `items` work items: calls below `small` items run inline.
pub fn install_for<R: Send>(
    num_threads: Option<usize>,
    items: usize,
    small: usize,
    f: impl FnOnce() -> R + Send,
) -> PyResult<R> {
    let n = resolve(num_threads)?;
    install(Some(if items < small { 1 } else { n }), f)
}

/// Run `f` on a pool of `num_threads` (resolved as in [`resolve`]).
pub fn install<R: Send>(num_threads: Option<usize>, f: impl FnOnce() -> R + Send) -> PyResult<R> {
    let n = resolve(num_threads)?;
    if n == 1 {
        return SERIAL.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(serial_pool()?);
            }
            Ok(slot.as_ref().unwrap().install(f))
        });
    }
    Ok(pool(n)?.install(f))
}

thread_local! {
    /// Per calling thread: a one-worker pool whose worker is that thread itself, so
    /// single-threaded calls run inline (no hand-off to another thread and no wake-up
    /// latency on a loaded machine) while rayon still reports one thread to the algorithms.
    /// A forked child keeps it: its only worker is the thread that forked.
    static SERIAL: std::cell::RefCell<Option<rayon::ThreadPool>> = const { std::cell::RefCell::new(None) };
}

fn serial_pool() -> PyResult<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .use_current_thread()
        .build()
        .map_err(|e| {
            crate::errors::InternalError::new_err(format!(
                "could not set up the calling thread as a pool: {e}"
            ))
        })
}

#[pyfunction]
#[pyo3(signature = (num_threads=None))]
/// The thread count native calls will use for this argument.
pub fn resolved_num_threads(num_threads: Option<usize>) -> PyResult<usize> {
    resolve(num_threads)
}
