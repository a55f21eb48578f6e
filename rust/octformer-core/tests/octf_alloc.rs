//! The OCTF decoders allocate only what the verified input can back: a counting global
//! allocator records the peak live bytes while decoding valid, mutated and
//! hostile-header files (its own test binary, so the allocator affects nothing else).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use octformer_core::format::{self, DecodeOptions, EncodeOptions, decode_octree, encode_octree};
use octformer_core::octree::{BuildOptions, SampleBox, build_octree};
use octformer_core::omnitree::{Omnitree, Rule};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(l.size(), Ordering::SeqCst) + l.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::SeqCst);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// The counters are process-wide: each test holds this lock for its whole body, so a test
/// running on another harness thread cannot add its allocations to the peak.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    MEASURING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Peak bytes allocated (above what was live before) while running `f`.
fn peak_during<R>(f: impl FnOnce() -> R) -> usize {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let r = f();
    drop(r);
    PEAK.load(Ordering::SeqCst) - base
}

fn sample_file() -> Vec<u8> {
    let pts: Vec<f32> = (0..3000)
        .map(|i| ((i * 7919 % 2003) as f32 / 1002.0) - 1.0)
        .collect();
    let c = 2.0 / 256.0;
    let boxes = vec![
        SampleBox {
            origin: [-1.0; 3],
            cell: [c; 3]
        };
        2
    ];
    let tree = build_octree(
        &pts,
        &[0, 400, 1000],
        &boxes,
        BuildOptions {
            depth: 8,
            full_depth: 2,
            clip: true,
        },
    )
    .unwrap();
    let owned = format::OctfOctree {
        tree: octformer_core::Octree {
            point_leaf: Vec::new(),
            ..tree
        },
        origin: vec![-1.0; 6],
        scale: vec![c; 6],
        coords: format::Coords::Cartesian,
        features: None,
        normals: None,
    };
    encode_octree(&owned.view(), EncodeOptions::default()).unwrap()
}

/// Re-write the header of `data` with `edit` applied, keeping every CRC valid.
fn with_header(data: &[u8], edit: impl FnOnce(&mut format::Header)) -> Vec<u8> {
    let mut h = format::read_header_only(data).unwrap();
    // header chunk = tag, varint length, body, crc
    let mut pos = 9;
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let b = data[pos];
        pos += 1;
        len |= ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b < 0x80 {
            break;
        }
    }
    let rest = &data[pos + len + 4..data.len() - format::FOOTER_LEN];
    edit(&mut h);
    let mut out = Vec::new();
    format::put_header(&mut out, &h);
    out.extend_from_slice(rest);
    format::put_footer(&mut out);
    out
}

#[test]
fn decoding_allocates_at_most_the_backed_sizes() {
    let _only_me = exclusive();
    let data = sample_file();
    let opts = DecodeOptions::default();
    // a valid file: output is at most 16 bytes (key, child, batch) x 8 children per occupancy byte
    let valid = peak_during(|| decode_octree(&data, &opts).unwrap());
    eprintln!("valid file {} B, decode peak {valid} B", data.len());
    assert!(
        valid <= 200 * data.len() + (1 << 16),
        "valid decode peaked at {valid} B for {} B",
        data.len()
    );
    // hostile headers with valid checksums: absurd counts, batch sizes, dense levels
    let hostile = [
        with_header(&data, |h| h.counts = vec![u64::MAX / 2; h.counts.len()]),
        with_header(&data, |h| h.counts[0] = 1 << 40),
        with_header(&data, |h| *h.counts.last_mut().unwrap() = 1 << 50),
        with_header(&data, |h| {
            h.full_depth = 8;
            h.counts.truncate(1);
        }),
        with_header(&data, |h| {
            h.batch_size = 1 << 30;
            h.origin = vec![0.0; 3 * 40];
            h.scale = vec![1.0; 3 * 40];
        }),
    ];
    for (i, bad) in hostile.iter().enumerate() {
        let peak = peak_during(|| {
            assert!(
                decode_octree(bad, &opts).is_err(),
                "hostile file {i} decoded"
            )
        });
        assert!(
            peak <= 64 * bad.len() + (1 << 16),
            "hostile file {i}: peak {peak} B for {} B of input",
            bad.len()
        );
    }
    // every single-byte mutation, checksums on and off: bounded by the input size
    let unchecked = DecodeOptions {
        max_depth: None,
        verify_checksums: false,
    };
    for i in 0..data.len() {
        let mut b = data.clone();
        b[i] ^= 0xa5;
        for o in [&opts, &unchecked] {
            let peak = peak_during(|| decode_octree(&b, o));
            assert!(
                peak <= 200 * data.len() + (1 << 16),
                "byte {i}: peak {peak} B"
            );
        }
    }
}

#[test]
fn omnitree_decoding_is_bounded_too() {
    let _only_me = exclusive();
    let cells: Vec<u32> = (0..3000).map(|i| (i * 7919 % 1021) as u32 % 64).collect();
    let t = Omnitree::from_cells(3, 6, &cells, Rule::Carve, vec![0.0; 3], vec![1.0; 3]).unwrap();
    let data = t.encode();
    let opts = DecodeOptions {
        max_depth: None,
        verify_checksums: false,
    };
    let hostile = with_header(&data, |h| h.counts = vec![1 << 60, 1 << 59]);
    let peak = peak_during(|| assert!(Omnitree::decode(&hostile, &opts).is_err()));
    assert!(peak <= 64 * hostile.len() + (1 << 16), "peak {peak}");
    let valid = peak_during(|| Omnitree::decode(&data, &opts).unwrap());
    assert!(
        valid <= 128 * data.len() + (1 << 16),
        "valid omnitree decode peaked at {valid} B for {} B",
        data.len()
    );
}
