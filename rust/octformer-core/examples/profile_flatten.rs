//! Timing of the FlatFormer plan on a raw int64 (N, 3) grid file:
//! `cargo run --release -p octformer-core --example profile_flatten FILE [WINDOW] [GROUP]`.
//!
//! Prints wall and process-CPU medians of the whole plan, of the window order alone
//! (key pass + sort) and of a plain radix sort of the same number of random words, at 1
//! and 2 threads (`THREADS=1` for one of them; `PLAN_ONLY=1` times the plan alone, e.g.
//! under a profiler). System allocator (the Python extension uses mimalloc), so page faults count.
use octformer_core::flatten::{Axis, flatten, window_order};
use octformer_core::sort::radix_sort;

#[path = "support/mod.rs"]
mod support;
use support::{pool, show, time};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).expect("read grid file");
    let w: u32 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(16);
    let g: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(64);
    let runs: usize = std::env::var("RUNS")
        .map(|s| s.parse().unwrap())
        .unwrap_or(15);
    let coords: Vec<i64> = bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let n = coords.len() / 3;
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let random: Vec<u64> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s >> 1
        })
        .collect();
    println!("N = {n}, window {w}³, group {g}, {runs} runs; median (min) wall ms / median CPU ms");
    let thread_counts: Vec<usize> = std::env::var("THREADS")
        .map(|s| s.split(',').map(|t| t.parse().unwrap()).collect())
        .unwrap_or(vec![1, 2]);
    let plan_only = std::env::var("PLAN_ONLY").is_ok_and(|v| v == "1");
    for threads in thread_counts {
        pool(threads).install(|| {
            let show = |name: &str, t| show(threads, name, t);
            show(
                "flatten plan",
                time(runs, || {
                    flatten(&coords, None, [w; 3], g, Axis::X, false).unwrap()
                }),
            );
            if plan_only {
                return;
            }
            show(
                "flatten plan, shift, axis y",
                time(runs, || {
                    flatten(&coords, None, [w; 3], g, Axis::Y, true).unwrap()
                }),
            );
            show(
                "window order (key + sort)",
                time(runs, || {
                    window_order(&coords, None, [w; 3], Axis::X, false).unwrap()
                }),
            );
            show(
                "radix_sort 1M random u64 (63b)",
                time(runs, || {
                    let mut v = random.clone();
                    radix_sort(&mut v, 0, 64);
                    v
                }),
            );
            show("  clone of those words", time(runs, || random.clone()));
        });
    }
}
