//! Timing of the FlatFormer plan as the Python extension runs it (mimalloc, freed pages
//! kept mapped), warm or with the caches evicted before every call:
//! `ab_flatten FILE [WINDOW] [GROUP]` on a raw int64 (N, 3) grid file.
//!
//! `EVICT=1` writes to every cache line of a 640 MB buffer (more than the L3) before each
//! call, as the benchmark's interleaved peers do; `THREADS` (default 1), `RUNS` (15),
//! `ROUNDS` (1: repeat and report the median and min of the per-round medians). Run it
//! with `MIMALLOC_PURGE_DELAY=10000`, the delay the extension sets, or freed pages are
//! re-faulted every call. Process CPU time is the robust figure on a shared machine.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use octformer_core::flatten::{Axis, flatten};

#[path = "support/mod.rs"]
mod support;
use support::{cpu_ms, median};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |s| s.parse().expect("an integer"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).expect("read grid file");
    let w: u32 = args.get(2).map_or(16, |s| s.parse().unwrap());
    let g: usize = args.get(3).map_or(64, |s| s.parse().unwrap());
    let (runs, rounds, threads) = (env("RUNS", 15), env("ROUNDS", 1), env("THREADS", 1));
    let evict = env("EVICT", 0) == 1;
    let coords: Vec<i64> = bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let mut junk = vec![1u64; if evict { 80 << 20 } else { 0 }];
    let pool = support::pool(threads);
    let plan = || flatten(&coords, None, [w; 3], g, Axis::X, false).unwrap();
    let mut cpu_medians = Vec::new();
    for _ in 0..rounds {
        pool.install(|| {
            let (mut wall, mut cpu) = (Vec::new(), Vec::new());
            drop(plan());
            for _ in 0..runs {
                for v in junk.iter_mut().step_by(8) {
                    *v = v.wrapping_mul(3).wrapping_add(1);
                }
                let (t0, c0) = (std::time::Instant::now(), cpu_ms());
                let r = plan();
                wall.push(t0.elapsed().as_secs_f64() * 1e3);
                cpu.push(cpu_ms() - c0);
                drop(std::hint::black_box(r));
            }
            let min = wall.iter().cloned().fold(f64::MAX, f64::min);
            let c = median(cpu);
            cpu_medians.push(c);
            println!(
                "T{threads} evict={} wall median {:.2} (min {min:.2}) ms, CPU median {c:.2} ms",
                evict as u8,
                median(wall)
            );
        });
    }
    let lo = cpu_medians.iter().cloned().fold(f64::MAX, f64::min);
    println!(
        "CPU medians over {rounds} rounds: median {:.2}, min {lo:.2}",
        median(cpu_medians)
    );
    std::hint::black_box(&junk);
}
