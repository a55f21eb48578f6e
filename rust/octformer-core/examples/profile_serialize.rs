//! Timing of curve serialization on a raw int64 (N, 3) grid file:
//! `cargo run --release -p octformer-core --example profile_serialize FILE [DEPTH]`.
//!
//! Prints wall and process-CPU medians of `serialize` (4 orders, z alone), of the encode
//! step alone per order kind and of a radix sort of the packed (code, index) words, at 1
//! and 2 threads. mimalloc as in the Python extension (set `MIMALLOC_PURGE_DELAY=10000`
//! to match its 10 s purge delay, so outputs reuse pages faulted by the previous run).
use octformer_core::curve::{Order, encode, serialize};
use octformer_core::sort::radix_sort;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "support/mod.rs"]
mod support;
use support::{pool, show, time};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).expect("read grid file");
    let depth: u8 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(12);
    let runs: usize = std::env::var("RUNS")
        .map(|s| s.parse().unwrap())
        .unwrap_or(9);
    let only: Option<String> = std::env::var("ONLY").ok();
    let threads_list: Vec<usize> = std::env::var("THREADS")
        .map(|s| s.split(',').map(|t| t.parse().unwrap()).collect())
        .unwrap_or(vec![1, 2]);
    let coords: Vec<i64> = bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let n = coords.len() / 3;
    let batch = vec![0i64; n];
    let idx_bits = 64 - (n as u64 - 1).leading_zeros();
    let code_bits = 3 * depth as u32;
    let codes = encode(&coords, Order::Hilbert, depth).unwrap();
    let packed: Vec<u64> = codes
        .iter()
        .enumerate()
        .map(|(i, &c)| (c << idx_bits) | i as u64)
        .collect();
    println!("N = {n}, depth {depth}, {runs} runs; median (min) wall ms / median CPU ms");
    for threads in threads_list {
        pool(threads).install(|| {
            let show = |name: &str, t| show(threads, name, t);
            let want = |k: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == k));
            if want("all") {
                show(
                    "serialize 4 orders",
                    time(runs, || {
                        serialize(&coords, Some(&batch), &Order::ALL, depth).unwrap()
                    }),
                );
            }
            if want("z") {
                show(
                    "serialize z",
                    time(runs, || {
                        serialize(&coords, Some(&batch), &[Order::Z], depth).unwrap()
                    }),
                );
            }
            if want("hilbert") {
                show(
                    "serialize hilbert",
                    time(runs, || {
                        serialize(&coords, Some(&batch), &[Order::Hilbert], depth).unwrap()
                    }),
                );
            }
            if want("parts") {
                show(
                    "  encode z",
                    time(runs, || encode(&coords, Order::Z, depth).unwrap()),
                );
                show(
                    "  encode hilbert",
                    time(runs, || encode(&coords, Order::Hilbert, depth).unwrap()),
                );
                show(
                    "  radix_sort packed hilbert",
                    time(runs, || {
                        let mut v = packed.clone();
                        radix_sort(&mut v, idx_bits, idx_bits + code_bits);
                        v
                    }),
                );
                show("  clone of those words", time(runs, || packed.clone()));
            }
        });
    }
}
