//! octformer-core: the algorithmic heart of octformer, free of Python and torch.
//!
//! Slices in, owned `Vec`s out, typed errors ([`CoreError`]). The PyO3 crate
//! `octformer-py` only converts arrays, releases the GIL and maps errors.
//!
//! Conventions (see `docs/architecture.md`):
//! - Morton keys put the x bit most significant in each triple (x→3i+2, y→3i+1, z→3i);
//!   depth 1..=21, so keys fit in 63 bits. The batch index lives in its own array.
//! - Child index within a parent is `4x + 2y + z`.
//! - Neighbour slot for offset (dx, dy, dz) ∈ {-1,0,1}³ is `(dx+1)*9 + (dy+1)*3 + (dz+1)`.

pub mod curve;
pub mod error;
pub mod flatten;
pub mod format;
mod leaf_table;
pub mod lzf;
mod mem;
pub mod merge;
pub mod morton;
#[cfg(target_arch = "x86_64")]
mod morton_avx512;
pub mod neighbors;
pub mod octree;
pub mod omnitree;
pub mod sort;

pub use error::{CoreError, Result};
pub use octree::{BuildOptions, Octree, SampleBox, build_octree, build_octree_with};

/// Deepest supported octree level: 3 × 21 = 63 key bits.
pub const MAX_DEPTH: u8 = 21;

/// Helpers shared by the unit tests of several modules.
#[cfg(test)]
pub(crate) mod testing {
    /// A xorshift64 stream (deterministic test data without a dependency): each call
    /// advances the state and returns it.
    pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }

    /// `f` run inside a fresh rayon pool of `threads` threads (results must not depend on it).
    pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    /// Uniform f64 in [0, 1) from the top 53 bits of a [`xorshift`] stream.
    pub fn unit(seed: u64) -> impl FnMut() -> f64 {
        let mut next = xorshift(seed);
        move || (next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
