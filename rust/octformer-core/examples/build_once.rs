//! One single-threaded octree build of a raw float32 (N, 3) file in a [-1, 1] box, for
//! instruction-count comparisons: `valgrind --tool=callgrind target/release/examples/build_once FILE DEPTH`.
use octformer_core::{BuildOptions, SampleBox, build_octree};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).expect("read points file");
    let depth: u8 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(10);
    let pts: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let n = pts.len() / 3;
    let cell = 2.0 / (1u64 << depth) as f64;
    let bx = SampleBox {
        origin: [-1.0; 3],
        cell: [cell; 3],
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let t = pool.install(|| {
        build_octree(
            &pts,
            &[0, n],
            &[bx],
            BuildOptions {
                depth,
                full_depth: 2,
                clip: false,
            },
        )
        .unwrap()
    });
    println!("leaves {}", t.nnum_nempty(depth as usize));
}
