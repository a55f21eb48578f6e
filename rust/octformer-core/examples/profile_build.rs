//! Timing of the octree build on a raw float32 (N, 3) file:
//! `cargo run --release --example profile_build FILE DEPTH`; with `--once`, a single
//! 1-thread build for instruction counts
//! (`valgrind --tool=callgrind target/release/examples/profile_build FILE DEPTH --once`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use octformer_core::{BuildOptions, SampleBox, build_octree};
use std::time::Instant;

#[path = "support/mod.rs"]
mod support;
use support::{cpu_ms, read_f32_points};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let depth: u8 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(10);
    let pts = read_f32_points(&args[1]);
    let n = pts.len() / 3;
    let (mut lo, mut hi) = ([f64::MAX; 3], [f64::MIN; 3]);
    for i in 0..n {
        for a in 0..3 {
            lo[a] = lo[a].min(pts[3 * i + a] as f64);
            hi[a] = hi[a].max(pts[3 * i + a] as f64);
        }
    }
    let side = (0..3).map(|a| hi[a] - lo[a]).fold(0.0, f64::max);
    let cell = side / (1u64 << depth) as f64;
    let bx = SampleBox {
        origin: lo,
        cell: [cell; 3],
    };
    let opts = BuildOptions {
        depth,
        full_depth: 2,
        clip: true,
    };
    if args.iter().any(|a| a == "--once") {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let t = pool.install(|| build_octree(&pts, &[0, n], &[bx], opts).unwrap());
        println!("leaves {}", t.nnum_nempty(depth as usize));
        return;
    }
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut times = Vec::new();
        let mut cpu = Vec::new();
        // small clouds: enough calls for a stable median (and past the first-call faults)
        for _ in 0..(4_000_000 / n.max(1)).clamp(15, 2000) {
            let t0 = Instant::now();
            let c0 = cpu_ms();
            let t = pool.install(|| build_octree(&pts, &[0, n], &[bx], opts).unwrap());
            cpu.push(cpu_ms() - c0);
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(t);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        cpu.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "threads {threads}: wall median {:.2} ms min {:.2} ms; process CPU median {:.2} ms",
            times[times.len() / 2],
            times[0],
            cpu[cpu.len() / 2]
        );
    }
}
