//! Timing of the OCTF full decode against the cost of merely writing its output:
//! `MIMALLOC_PURGE_DELAY=10000 cargo run --release -p octformer-core --example profile_decode FILE.octf`.
//!
//! One thread throughout. Prints median wall / CPU ms and M occupancy bytes per second of
//! the structure decode, the full decode (single sample: batch left unwritten, as the
//! Python wrapper asks), and of writing the full decode's keys (8 B) and children (4 B)
//! per node: into buffers allocated per call (mimalloc, freed memory reused) and into the
//! same buffers every call, with plain and with non-temporal stores.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use octformer_core::format::{DecodeOptions, decode_levels, decode_octree_with};

#[path = "support/mod.rs"]
mod support;
use support::time;

/// keys[i] = i, children[i] = i with plain stores.
fn write_plain(keys: &mut [u64], ch: &mut [i32]) {
    for (i, k) in keys.iter_mut().enumerate() {
        *k = i as u64;
    }
    for (i, c) in ch.iter_mut().enumerate() {
        *c = i as i32;
    }
}

/// The same values with non-temporal (streaming) stores, 32 bytes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn write_nt(keys: &mut [u64], ch: &mut [i32]) {
    use std::arch::x86_64::*;
    // SAFETY: only whole, 32-byte aligned vectors inside the slices are stored to; the
    // unaligned head and the tail are written with plain stores
    unsafe {
        let (h, body, t) = keys.align_to_mut::<__m256i>();
        write_plain(h, &mut []);
        let mut v = _mm256_setr_epi64x(
            h.len() as i64,
            h.len() as i64 + 1,
            h.len() as i64 + 2,
            h.len() as i64 + 3,
        );
        let four = _mm256_set1_epi64x(4);
        for b in body.iter_mut() {
            _mm256_stream_si256(b, v);
            v = _mm256_add_epi64(v, four);
        }
        for k in t.iter_mut() {
            *k = 0;
        }
        let (h, body, t) = ch.align_to_mut::<__m256i>();
        write_plain(&mut [], h);
        let base = h.len() as i32;
        let mut v = _mm256_setr_epi32(
            base,
            base + 1,
            base + 2,
            base + 3,
            base + 4,
            base + 5,
            base + 6,
            base + 7,
        );
        let eight = _mm256_set1_epi32(8);
        for b in body.iter_mut() {
            _mm256_stream_si256(b, v);
            v = _mm256_add_epi32(v, eight);
        }
        for c in t.iter_mut() {
            *c = 0;
        }
        _mm_sfence();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data = std::fs::read(&args[1]).expect("read OCTF file");
    let runs: usize = std::env::var("RUNS")
        .map(|s| s.parse().unwrap())
        .unwrap_or(15);
    let opts = DecodeOptions::default();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| {
        let lv = decode_levels(&data, &opts).unwrap();
        let occ: usize = lv.occupancy.iter().map(|o| o.len()).sum();
        let tree = decode_octree_with(&data, &opts, false).unwrap().tree;
        let sizes: Vec<usize> = tree.keys.iter().map(|k| k.len()).collect();
        let nodes: usize = sizes.iter().sum();
        drop((lv, tree));
        println!(
            "{occ} occupancy bytes, {nodes} nodes, {:.1} MB keys + children; {runs} runs, 1 thread; median wall / CPU ms, M occupancy B/s (wall)",
            nodes as f64 * 12.0 / 1e6
        );
        let show = |name: &str, (w, _, c): (f64, f64, f64)| {
            println!("{name:<46} {w:7.2} / {c:7.2}  {:6.0} M/s", occ as f64 / w / 1e3);
        };
        show("structure decode (decode_levels)", time(runs, || decode_levels(&data, &opts).unwrap()));
        show("full decode, batch left to the caller", time(runs, || decode_octree_with(&data, &opts, false).unwrap()));
        show("full decode, batch filled", time(runs, || decode_octree_with(&data, &opts, true).unwrap()));
        let alloc = || -> Vec<(Vec<u64>, Vec<i32>)> {
            sizes
                .iter()
                .map(|&n| (Vec::with_capacity(n), Vec::with_capacity(n)))
                .map(|(mut k, mut c): (Vec<u64>, Vec<i32>)| {
                    // SAFETY: u64/i32 have no invalid bit patterns; every element is
                    // written below before being read
                    unsafe {
                        k.set_len(k.capacity());
                        c.set_len(c.capacity());
                    }
                    (k, c)
                })
                .collect()
        };
        show("write 12 B/node, allocated per call, plain", time(runs, || {
            let mut bufs = alloc();
            for (k, c) in bufs.iter_mut() {
                write_plain(k, c);
            }
            bufs
        }));
        let mut bufs = alloc();
        show("write 12 B/node, same buffers, plain", time(runs, || {
            for (k, c) in bufs.iter_mut() {
                write_plain(k, c);
            }
        }));
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            show("write 12 B/node, same buffers, non-temporal", time(runs, || {
                for (k, c) in bufs.iter_mut() {
                    // SAFETY: AVX2 checked above
                    unsafe { write_nt(k, c) };
                }
            }));
            show("write 12 B/node, allocated per call, non-temporal", time(runs, || {
                let mut b = alloc();
                for (k, c) in b.iter_mut() {
                    // SAFETY: AVX2 checked above
                    unsafe { write_nt(k, c) };
                }
                b
            }));
        }
    });
}
