//! Helpers shared by the profiling examples (`#[path = "support/mod.rs"] mod support;`).
#![allow(dead_code)]

/// Process CPU time in ms (robust to other load on a shared machine, for 1-thread runs).
pub fn cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// `runs` timed calls of `f` after one warm-up: (median wall ms, min wall ms, median
/// process-CPU ms); each result is dropped outside the timed region.
pub fn time<R>(runs: usize, mut f: impl FnMut() -> R) -> (f64, f64, f64) {
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    drop(f());
    for _ in 0..runs {
        let (t0, c0) = (std::time::Instant::now(), cpu_ms());
        let r = f();
        wall.push(t0.elapsed().as_secs_f64() * 1e3);
        cpu.push(cpu_ms() - c0);
        drop(r);
    }
    let min = wall.iter().cloned().fold(f64::MAX, f64::min);
    (median(wall), min, median(cpu))
}

/// Median of a sample (sorts it).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A raw little-endian float32 (N, 3) file, flattened.
pub fn read_f32_points(path: &str) -> Vec<f32> {
    std::fs::read(path)
        .expect("read points file")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A rayon pool of `threads` threads for one timing round.
pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
}

/// Print one [`time`] result: `T{threads} name median (min) / cpu`.
pub fn show(threads: usize, name: &str, (m, lo, c): (f64, f64, f64)) {
    println!("T{threads} {name:<28} {m:7.2} ({lo:6.2}) / {c:7.2}");
}
