//! Timing of the octree build on a raw float32 (N, 3) file:
//! `cargo run --release --example profile_build FILE DEPTH [--cube] [--threads T] [--runs R]`;
//! `--cube` builds in the fixed box [-1, 1]³ (as benchmarks/bench_octree.py does) instead
//! of the points' tight cube. Prints median wall / process-CPU ms and minor page faults per
//! call. Run it with `MIMALLOC_PURGE_DELAY=10000` (what the Python bindings set): with
//! mimalloc's 10 ms default, memory freed early in one call is returned before the next and
//! re-faulted (indoor200k: ~20 faults and ~12% of the time in page clearing per call).
//! With `--once`, a single 1-thread build for instruction counts
//! (`valgrind --tool=callgrind target/release/examples/profile_build FILE DEPTH --once`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use octformer_core::{BuildOptions, SampleBox, build_octree_with};
use std::time::Instant;

#[path = "support/mod.rs"]
mod support;
use support::{cpu_ms, median, read_f32_points};

fn minflt() -> i64 {
    // SAFETY: getrusage writes the struct it is given
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_minflt
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let depth: u8 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(10);
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].parse::<usize>().unwrap())
    };
    let pts = read_f32_points(&args[1]);
    let n = pts.len() / 3;
    let bx = if args.iter().any(|a| a == "--cube") {
        SampleBox {
            origin: [-1.0; 3],
            cell: [2.0 / (1u64 << depth) as f64; 3],
        }
    } else {
        let (mut lo, mut hi) = ([f64::MAX; 3], [f64::MIN; 3]);
        for i in 0..n {
            for a in 0..3 {
                lo[a] = lo[a].min(pts[3 * i + a] as f64);
                hi[a] = hi[a].max(pts[3 * i + a] as f64);
            }
        }
        let side = (0..3).map(|a| hi[a] - lo[a]).fold(0.0, f64::max);
        SampleBox {
            origin: lo,
            cell: [side / (1u64 << depth) as f64; 3],
        }
    };
    let opts = BuildOptions {
        depth,
        full_depth: 2,
        clip: true,
    };
    // as the Python binding's single-sample build: batch arrays left to the caller
    let build = || build_octree_with(&pts, &[0, n], &[bx], opts, false).unwrap();
    if args.iter().any(|a| a == "--once") {
        let t = support::pool(1).install(build);
        println!("leaves {}", t.nnum_nempty(depth as usize));
        return;
    }
    let threads: Vec<usize> = opt("--threads").map_or(vec![1, 2], |t| vec![t]);
    let runs = opt("--runs").unwrap_or((4_000_000 / n.max(1)).clamp(15, 2000));
    for threads in threads {
        let pool = support::pool(threads);
        let (mut times, mut cpu, mut faults) = (Vec::new(), Vec::new(), Vec::new());
        drop(pool.install(build));
        for _ in 0..runs {
            let (t0, c0, f0) = (Instant::now(), cpu_ms(), minflt());
            let t = pool.install(build);
            cpu.push(cpu_ms() - c0);
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            faults.push((minflt() - f0) as f64);
            drop(t);
        }
        let lo = times.iter().cloned().fold(f64::MAX, f64::min);
        let fault_mean = faults.iter().sum::<f64>() / faults.len() as f64;
        println!(
            "threads {threads}: wall median {:.2} ms min {:.2} ms; process CPU median {:.2} ms; minor faults median {:.0} mean {:.1}",
            median(times),
            lo,
            median(cpu),
            median(faults),
            fault_mean
        );
    }
}
