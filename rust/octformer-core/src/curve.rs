//! Space-filling-curve serialization: z-order and Hilbert codes (plus their x/y-swapped
//! "-trans" variants) bit-identical to Point Transformer V3's encodings, their inverses,
//! and the batched (batch, code) sort with per-order permutation and inverse.
//!
//! Conventions (same as PTv3 for depth ≤ 16, extended to depth ≤ 21 = 63 code bits):
//! - z: Morton key with x most significant per triple (x→3i+2, y→3i+1, z→3i), i.e.
//!   [`crate::morton::encode`] truncated to `depth` levels.
//! - hilbert: Skilling's transpose algorithm applied the way PTv3 applies it: the
//!   coordinate bits are visited most significant level first and, per level, axis 0 (x),
//!   1 (y), 2 (z); a set bit inverts axis 0's lower bits, a clear bit exchanges axis 0's
//!   lower bits with that axis's. The resulting bits, interleaved level by level with x
//!   first, are read as a Gray code and converted to binary (prefix xor, most significant
//!   bit first).
//! - "-trans": x and y are swapped before encoding (and swapped back after decoding).
//!
//! The Hilbert transform is a finite automaton whose state is a signed permutation of
//! the three axes (48 states); it is run two levels (6 bits) per table lookup.

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::error::{CoreError, Result};
use crate::mem::{SendPtr, u64_vec_as_i64, vec_for_overwrite_huge};
use crate::morton;
use crate::sort::radix_sort;

/// Deepest level a curve code supports: 3 × 21 = 63 bits.
pub const MAX_CURVE_DEPTH: u8 = 21;

/// Items per parallel task for the element-wise passes.
const CHUNK: usize = 1 << 14;

/// One of the four PTv3 serialization orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Order {
    /// Morton / z-order on (x, y, z).
    Z,
    /// Morton on (y, x, z).
    ZTrans,
    /// Hilbert on (x, y, z).
    Hilbert,
    /// Hilbert on (y, x, z).
    HilbertTrans,
}

impl Order {
    /// All orders in PTv3's default sequence.
    pub const ALL: [Order; 4] = [Order::Z, Order::ZTrans, Order::Hilbert, Order::HilbertTrans];

    /// Parse PTv3's order name ("z", "z-trans", "hilbert", "hilbert-trans").
    pub fn parse(name: &str) -> Result<Order> {
        match name {
            "z" => Ok(Order::Z),
            "z-trans" => Ok(Order::ZTrans),
            "hilbert" => Ok(Order::Hilbert),
            "hilbert-trans" => Ok(Order::HilbertTrans),
            other => Err(CoreError::arg(
                "order",
                "one of 'z', 'z-trans', 'hilbert', 'hilbert-trans'",
                format!("{other:?}"),
            )),
        }
    }

    /// PTv3's name of this order.
    pub fn name(self) -> &'static str {
        match self {
            Order::Z => "z",
            Order::ZTrans => "z-trans",
            Order::Hilbert => "hilbert",
            Order::HilbertTrans => "hilbert-trans",
        }
    }

    fn swaps_xy(self) -> bool {
        matches!(self, Order::ZTrans | Order::HilbertTrans)
    }
}

// ---------------------------------------------------------------------------------------
// Hilbert automaton

/// A signed axis permutation: current bit of axis i = raw bit of axis `perm[i]` xor `flip[i]`.
#[derive(Clone, Copy, PartialEq, Eq)]
struct AxisMap {
    perm: [u8; 3],
    flip: [u8; 3],
}

const PERMS: [[u8; 3]; 6] = [
    [0, 1, 2],
    [0, 2, 1],
    [1, 0, 2],
    [1, 2, 0],
    [2, 0, 1],
    [2, 1, 0],
];

impl AxisMap {
    fn index(self) -> usize {
        let p = PERMS
            .iter()
            .position(|&p| p == self.perm)
            .expect("valid permutation");
        p * 8 + ((self.flip[0] << 2) | (self.flip[1] << 1) | self.flip[2]) as usize
    }

    fn from_index(i: usize) -> AxisMap {
        let f = (i % 8) as u8;
        AxisMap {
            perm: PERMS[i / 8],
            flip: [(f >> 2) & 1, (f >> 1) & 1, f & 1],
        }
    }

    /// Apply one level's updates, driven by that level's (already transformed) bits `g`.
    fn advance(mut self, g: [u8; 3]) -> AxisMap {
        for d in 0..3 {
            if g[d] == 1 {
                self.flip[0] ^= 1;
            } else {
                self.perm.swap(0, d);
                self.flip.swap(0, d);
            }
        }
        self
    }

    /// Transformed bits of one raw triple `r` (r[0] = x).
    fn forward(self, r: [u8; 3]) -> [u8; 3] {
        [0, 1, 2].map(|i| r[self.perm[i] as usize] ^ self.flip[i])
    }

    /// Raw triple whose transformed bits are `g`.
    fn backward(self, g: [u8; 3]) -> [u8; 3] {
        let mut r = [0u8; 3];
        for i in 0..3 {
            r[self.perm[i] as usize] = g[i] ^ self.flip[i];
        }
        r
    }
}

const STATES: usize = 48;
const IDENTITY: usize = 0; // perm [0,1,2], no flips

fn triple(v: usize) -> [u8; 3] {
    [((v >> 2) & 1) as u8, ((v >> 1) & 1) as u8, (v & 1) as u8]
}

fn untriple(t: [u8; 3]) -> usize {
    ((t[0] << 2) | (t[1] << 1) | t[2]) as usize
}

/// Lookup tables: entry = (out bits << 8) | next state.
struct HilbertTables {
    enc1: [u16; STATES * 8],
    enc2: [u16; STATES * 64],
    /// `enc2` as `(out << 16) | next_state * 64` (no multiply on the lookup chain)
    enc2x: [u32; STATES * 64],
    dec1: [u16; STATES * 8],
    dec2: [u16; STATES * 64],
}

fn tables() -> &'static HilbertTables {
    static T: OnceLock<HilbertTables> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = HilbertTables {
            enc1: [0; STATES * 8],
            enc2: [0; STATES * 64],
            enc2x: [0; STATES * 64],
            dec1: [0; STATES * 8],
            dec2: [0; STATES * 64],
        };
        for s in 0..STATES {
            let m = AxisMap::from_index(s);
            for v in 0..8 {
                let g = m.forward(triple(v));
                t.enc1[s * 8 + v] = ((untriple(g) as u16) << 8) | m.advance(g).index() as u16;
                let gv = triple(v);
                t.dec1[s * 8 + v] =
                    ((untriple(m.backward(gv)) as u16) << 8) | m.advance(gv).index() as u16;
            }
        }
        for s in 0..STATES {
            for v in 0..64 {
                let e_hi = t.enc1[s * 8 + (v >> 3)];
                let e_lo = t.enc1[(e_hi & 0xff) as usize * 8 + (v & 7)];
                t.enc2[s * 64 + v] = (((e_hi >> 8) << 3 | (e_lo >> 8)) << 8) | (e_lo & 0xff);
                t.enc2x[s * 64 + v] =
                    (((e_hi >> 8) << 3 | (e_lo >> 8)) as u32) << 16 | (e_lo & 0xff) as u32 * 64;
                let d_hi = t.dec1[s * 8 + (v >> 3)];
                let d_lo = t.dec1[(d_hi & 0xff) as usize * 8 + (v & 7)];
                t.dec2[s * 64 + v] = (((d_hi >> 8) << 3 | (d_lo >> 8)) << 8) | (d_lo & 0xff);
            }
        }
        t
    })
}

/// Run the automaton over a 3·depth-bit string, most significant level first.
#[inline(always)]
fn run_automaton(bits: u64, depth: u32, one: &[u16; STATES * 8], two: &[u16; STATES * 64]) -> u64 {
    let mut state = IDENTITY;
    let mut out = 0u64;
    let mut level = depth;
    if level % 2 == 1 {
        level -= 1;
        let e = one[state * 8 + ((bits >> (3 * level)) & 7) as usize];
        out = (e >> 8) as u64;
        state = (e & 0xff) as usize;
    }
    while level > 0 {
        level -= 2;
        let e = two[state * 64 + ((bits >> (3 * level)) & 63) as usize];
        out = (out << 6) | (e >> 8) as u64;
        state = (e & 0xff) as usize;
    }
    out
}

/// [`run_automaton`] for four independent bit strings at once (four dependency chains
/// in flight instead of one); `two` entries are `(out << 16) | next_state * 64`.
#[inline(always)]
fn run_automaton_x4(
    bits: [u64; 4],
    depth: u32,
    one: &[u16; STATES * 8],
    two: &[u32; STATES * 64],
) -> [u64; 4] {
    let mut state = [IDENTITY * 64; 4];
    let mut out = [0u64; 4];
    let mut level = depth;
    if level % 2 == 1 {
        level -= 1;
        for j in 0..4 {
            let e = one[IDENTITY * 8 + ((bits[j] >> (3 * level)) & 7) as usize];
            out[j] = (e >> 8) as u64;
            state[j] = (e & 0xff) as usize * 64;
        }
    }
    while level > 0 {
        level -= 2;
        for j in 0..4 {
            let e = two[state[j] + ((bits[j] >> (3 * level)) & 63) as usize];
            out[j] = (out[j] << 6) | (e >> 16) as u64;
            state[j] = (e & 0xffff) as usize;
        }
    }
    out
}

/// Gray → binary over the whole code: every bit xor all bits above it.
#[inline(always)]
fn gray_to_binary(gray: u64) -> u64 {
    let mut h = gray;
    h ^= h >> 1;
    h ^= h >> 2;
    h ^= h >> 4;
    h ^= h >> 8;
    h ^= h >> 16;
    h ^= h >> 32;
    h
}

/// Hilbert code of a cell (coordinates < 2^depth, depth 1..=21), PTv3's bit layout.
#[inline]
pub fn hilbert_encode(x: u32, y: u32, z: u32, depth: u32) -> u64 {
    let t = tables();
    let gray = run_automaton(morton::encode(x, y, z), depth, &t.enc1, &t.enc2);
    // Gray → binary: every bit xor all bits above it
    let mut h = gray;
    h ^= h >> 1;
    h ^= h >> 2;
    h ^= h >> 4;
    h ^= h >> 8;
    h ^= h >> 16;
    h ^= h >> 32;
    h
}

/// Cell coordinates of a Hilbert code produced by [`hilbert_encode`] at the same depth.
#[inline]
pub fn hilbert_decode(code: u64, depth: u32) -> [u32; 3] {
    let t = tables();
    let gray = code ^ (code >> 1);
    morton::decode(run_automaton(gray, depth, &t.dec1, &t.dec2))
}

/// Code of one cell in `order` at `depth` (coordinates must be < 2^depth).
#[inline]
pub fn encode_one(order: Order, x: u32, y: u32, z: u32, depth: u32) -> u64 {
    let (x, y) = if order.swaps_xy() { (y, x) } else { (x, y) };
    match order {
        Order::Z | Order::ZTrans => morton::encode(x, y, z),
        Order::Hilbert | Order::HilbertTrans => hilbert_encode(x, y, z, depth),
    }
}

/// Cell of one code in `order` at `depth` (inverse of [`encode_one`]).
#[inline]
pub fn decode_one(order: Order, code: u64, depth: u32) -> [u32; 3] {
    let [a, b, c] = match order {
        Order::Z | Order::ZTrans => morton::decode(code),
        Order::Hilbert | Order::HilbertTrans => hilbert_decode(code, depth),
    };
    if order.swaps_xy() {
        [b, a, c]
    } else {
        [a, b, c]
    }
}

// ---------------------------------------------------------------------------------------
// Validation

/// (min, max) of a slice, scanned in parallel chunks ((0, 0) when empty).
pub(crate) fn min_max(v: &[i64]) -> (i64, i64) {
    if v.is_empty() {
        return (0, 0);
    }
    v.par_chunks(CHUNK * 4)
        .map(|c| {
            c.iter()
                .fold((i64::MAX, i64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)))
        })
        .reduce(|| (i64::MAX, i64::MIN), |a, b| (a.0.min(b.0), a.1.max(b.1)))
}

/// Check a depth is in 1..=21.
pub fn check_depth(depth: u8) -> Result<()> {
    if depth == 0 || depth > MAX_CURVE_DEPTH {
        return Err(CoreError::arg(
            "depth",
            format!("an integer in 1..={MAX_CURVE_DEPTH}"),
            depth,
        ));
    }
    Ok(())
}

/// Smallest depth (≥ 1) whose grid holds every coordinate: bit length of the largest one.
pub fn depth_for(coords: &[i64]) -> u8 {
    let max = min_max(coords).1.max(1);
    (64 - (max as u64).leading_zeros()) as u8
}

/// Check (N, 3) grid coordinates (row-major, flat) lie in [0, 2^depth).
pub fn check_coords(coords: &[i64], depth: u8) -> Result<()> {
    check_coords_max(coords, depth).map(|_| ())
}

/// Bitwise OR of all values (0 when empty), in parallel chunks: negative iff a value is,
/// else of the same bit length as the largest value. One vectorised pass (SSE2 has no
/// 64-bit min/max, so a min/max scan runs scalar).
fn or_all(v: &[i64]) -> i64 {
    v.par_chunks(CHUNK * 4)
        .map(|c| c.iter().fold(0, |a, &x| a | x))
        .reduce(|| 0, |a, b| a | b)
}

/// Bit length of the largest batch value, with the checks of [`check_batch`] (one OR
/// pass; `check_batch` itself names any error).
fn batch_bits(batch: &[i64], n: usize) -> Result<u32> {
    let or = if batch.len() == n { or_all(batch) } else { -1 };
    if or < 0 {
        return check_batch(batch, n).map(bit_length);
    }
    Ok(bit_length(or as u64))
}

/// [`check_coords`] that also returns the OR of all coordinates (same bit length as the
/// largest one; 0 when empty).
fn check_coords_max(coords: &[i64], depth: u8) -> Result<u64> {
    check_depth(depth)?;
    if coords.len() % 3 != 0 {
        return Err(CoreError::arg(
            "grid_coords",
            "shape (N, 3)",
            format!("{} values (not a multiple of 3)", coords.len()),
        ));
    }
    let limit = 1i64 << depth;
    // every value in [0, 2^depth) iff their OR is (the limit is a power of two)
    let or = or_all(coords);
    if !(0..limit).contains(&or) {
        let i = coords
            .iter()
            .position(|&v| v < 0 || v >= limit)
            .expect("an out-of-range value exists");
        let v = coords[i];
        let what = if v < 0 {
            "non-negative coordinates".to_string()
        } else {
            format!("coordinates < 2^depth = {limit} (depth={depth})")
        };
        return Err(CoreError::arg(
            "grid_coords",
            what,
            format!("{v} at row {}, axis {}", i / 3, i % 3),
        ));
    }
    Ok(or as u64)
}

/// Check a batch vector: length `n`, values ≥ 0; returns its largest value.
pub fn check_batch(batch: &[i64], n: usize) -> Result<u64> {
    if batch.len() != n {
        return Err(CoreError::arg(
            "batch",
            format!("length {n} (one entry per point)"),
            batch.len(),
        ));
    }
    let (lo, hi) = min_max(batch);
    if lo < 0 {
        let i = batch
            .iter()
            .position(|&b| b < 0)
            .expect("a negative value exists");
        return Err(CoreError::arg(
            "batch",
            "non-negative sample indices",
            format!("{} at position {i}", batch[i]),
        ));
    }
    Ok(hi.max(0) as u64)
}

// ---------------------------------------------------------------------------------------
// Encode / decode arrays

/// Codes of (N, 3) coordinates (flat, row-major) in `order`; coordinates are checked.
pub fn encode(coords: &[i64], order: Order, depth: u8) -> Result<Vec<u64>> {
    check_coords(coords, depth)?;
    let mut out = vec![0u64; coords.len() / 3];
    encode_into(coords, order, depth, &mut out);
    Ok(out)
}

fn encode_into(coords: &[i64], order: Order, depth: u8, out: &mut [u64]) {
    let d = depth as u32;
    let hilbert = matches!(order, Order::Hilbert | Order::HilbertTrans);
    // Morton bits of a row, x and y swapped for the "-trans" orders
    let (ix, iy) = if order.swaps_xy() { (1, 0) } else { (0, 1) };
    let morton_of = move |p: &[i64]| morton::encode(p[ix] as u32, p[iy] as u32, p[2] as u32);
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, dst)| {
        let src = &coords[c * CHUNK * 3..(c * CHUNK + dst.len()) * 3];
        if !hilbert {
            for (o, p) in dst.iter_mut().zip(src.chunks_exact(3)) {
                *o = morton_of(p);
            }
            return;
        }
        let t = tables();
        let mut outs = dst.chunks_exact_mut(4);
        let mut rows = src.chunks_exact(12);
        for (o4, p4) in (&mut outs).zip(&mut rows) {
            let m = [0, 1, 2, 3].map(|j| morton_of(&p4[3 * j..3 * j + 3]));
            let g = run_automaton_x4(m, d, &t.enc1, &t.enc2x);
            for j in 0..4 {
                o4[j] = gray_to_binary(g[j]);
            }
        }
        for (o, p) in outs
            .into_remainder()
            .iter_mut()
            .zip(rows.remainder().chunks_exact(3))
        {
            *o = gray_to_binary(run_automaton(morton_of(p), d, &t.enc1, &t.enc2));
        }
    });
}

/// (N, 3) coordinates (flat) of codes in `order`; codes must be < 2^(3·depth).
pub fn decode(codes: &[u64], order: Order, depth: u8) -> Result<Vec<i64>> {
    check_depth(depth)?;
    let limit = 1u64 << (3 * depth as u32);
    let largest = codes
        .par_chunks(CHUNK * 4)
        .map(|c| c.iter().copied().max().unwrap_or(0))
        .max()
        .unwrap_or(0);
    if largest >= limit {
        let i = codes
            .iter()
            .position(|&c| c >= limit)
            .expect("an out-of-range code exists");
        return Err(CoreError::arg(
            "codes",
            format!("values in [0, 2^(3*depth)) = [0, {limit}) (depth={depth})"),
            format!("{} at position {i}", codes[i] as i64),
        ));
    }
    let d = depth as u32;
    let mut out = vec![0i64; codes.len() * 3];
    out.par_chunks_mut(CHUNK * 3)
        .enumerate()
        .for_each(|(c, dst)| {
            let src = &codes[c * CHUNK..c * CHUNK + dst.len() / 3];
            for (o, &code) in dst.chunks_exact_mut(3).zip(src) {
                let p = decode_one(order, code, d);
                o[0] = p[0] as i64;
                o[1] = p[1] as i64;
                o[2] = p[2] as i64;
            }
        });
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Sorting

fn bit_length(v: u64) -> u32 {
    64 - v.leading_zeros()
}

/// Stable argsort by (major, minor): `minor` uses bits 0..minor_bits, `major` (if any)
/// bits 0..major_bits. Returns the permutation (sorted position → original index).
/// Packs both into one 64-bit key when they fit, else sorts twice (LSD, stable).
pub fn argsort_pair(
    major: Option<(&[u64], u32)>,
    minor: &[u64],
    minor_bits: u32,
) -> Result<Vec<u32>> {
    let n = minor.len();
    if n > u32::MAX as usize {
        return Err(CoreError::arg(
            "grid_coords",
            format!("at most {} points", u32::MAX),
            n,
        ));
    }
    let (one_key, key_bits) = match major {
        None => (true, minor_bits),
        Some((_, 0)) => (true, minor_bits),
        Some((_, mb)) => (minor_bits + mb <= 64, minor_bits + mb),
    };
    let key_of = |i: usize| -> u64 {
        match major {
            Some((m, mb)) if mb > 0 && minor_bits < 64 => (m[i] << minor_bits) | minor[i],
            _ => minor[i],
        }
    };
    if one_key {
        return argsort_by_key(n, key_bits, key_of);
    }
    // (major, minor) wider than 64 bits: stable LSD, minor first, then major
    let mut items: Vec<(u64, u32)> = vec![(0, 0); n];
    items
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, dst)| {
            for (j, it) in dst.iter_mut().enumerate() {
                let i = c * CHUNK + j;
                *it = (minor[i], i as u32);
            }
        });
    radix_sort(&mut items, 0, minor_bits);
    let (m, mb) = major.expect("two-pass sort has a major key");
    items.par_chunks_mut(CHUNK).for_each(|dst| {
        for it in dst.iter_mut() {
            it.0 = m[it.1 as usize];
        }
    });
    radix_sort(&mut items, 0, mb);
    let mut perm = vec![0u32; n];
    perm.par_chunks_mut(CHUNK)
        .zip(items.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            for (o, it) in d.iter_mut().zip(s) {
                *o = it.1;
            }
        });
    Ok(perm)
}

/// Stable argsort of `n` keys of `key_bits` bits given by `key(i)` (sorted position →
/// index); packs key and index into one word when they fit, else sorts (key, index) pairs.
pub fn argsort_by_key(
    n: usize,
    key_bits: u32,
    key: impl Fn(usize) -> u64 + Sync,
) -> Result<Vec<u32>> {
    if n > u32::MAX as usize {
        return Err(CoreError::arg(
            "grid_coords",
            format!("at most {} points", u32::MAX),
            n,
        ));
    }
    let idx_bits = bit_length(n.saturating_sub(1) as u64);
    let mut perm = vec![0u32; n];
    if key_bits + idx_bits <= 64 {
        let mut items = vec![0u64; n];
        items
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, dst)| {
                for (j, it) in dst.iter_mut().enumerate() {
                    let i = c * CHUNK + j;
                    *it = (key(i) << idx_bits) | i as u64;
                }
            });
        radix_sort(&mut items, idx_bits, idx_bits + key_bits);
        let mask = (1u64 << idx_bits) - 1;
        perm.par_chunks_mut(CHUNK)
            .zip(items.par_chunks(CHUNK))
            .for_each(|(d, s)| {
                for (o, it) in d.iter_mut().zip(s) {
                    *o = (it & mask) as u32;
                }
            });
    } else {
        let mut items: Vec<(u64, u32)> = vec![(0, 0); n];
        items
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, dst)| {
                for (j, it) in dst.iter_mut().enumerate() {
                    let i = c * CHUNK + j;
                    *it = (key(i), i as u32);
                }
            });
        radix_sort(&mut items, 0, key_bits);
        perm.par_chunks_mut(CHUNK)
            .zip(items.par_chunks(CHUNK))
            .for_each(|(d, s)| {
                for (o, it) in d.iter_mut().zip(s) {
                    *o = it.1;
                }
            });
    }
    Ok(perm)
}

/// `perm[k] = tok(k)` and `inverse[tok(k)] = k` for a permutation `tok` built by a sort.
fn perm_and_inverse_into(
    tok: impl Fn(usize) -> usize + Sync,
    perm: &mut [i64],
    inverse: &mut [i64],
) {
    assert_eq!(perm.len(), inverse.len());
    let n = inverse.len();
    let dst = SendPtr(inverse.as_mut_ptr());
    perm.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        let dst = dst;
        let base = c * CHUNK;
        for (j, o) in out.iter_mut().enumerate() {
            let t = tok(base + j);
            assert!(t < n);
            *o = t as i64;
            // SAFETY: `tok` is a permutation of 0..n (the output of a sort of 0..n), so
            // every write goes to a distinct slot, in bounds by the assert above.
            unsafe { *dst.0.add(t) = (base + j) as i64 };
        }
    });
}

/// Codes, sort permutation and inverse of every requested order, row-major (O, N).
#[derive(Debug, Clone, PartialEq)]
pub struct Serialized {
    pub depth: u8,
    pub orders: Vec<Order>,
    /// (O, N) codes without the batch (PTv3's `encode(..., batch=None)`).
    pub codes: Vec<u64>,
    /// (O, N) permutation: sorted position → point index, sorted by (batch, code), stable.
    pub perm: Vec<i64>,
    /// (O, N) inverse: point index → sorted position.
    pub inverse: Vec<i64>,
}

/// Codes as int64 without a copy (codes have at most 63 bits: depth ≤ 21).
pub fn codes_as_i64(codes: Vec<u64>) -> Vec<i64> {
    debug_assert!(codes.iter().all(|&c| c < 1 << 63));
    u64_vec_as_i64(codes)
}

/// Serialize (N, 3) grid coordinates in every order; sorts by (batch, code) when a batch
/// vector is given (no bit budget: batch and code are sorted as separate keys if needed).
///
/// When (batch, code, point index) fit one 64-bit word (any depth ≤ 14 at 1M points
/// without a batch) every order runs as one serial pipeline ([`serialize_row`]): codes and
/// the digit histograms in one pass over the coordinates, LSD passes whose first one packs
/// the words and whose last one writes perm and inverse. Orders run on different threads
/// (longest first), so the result does not depend on the thread count. Wider keys take
/// the general path: per order, a parallel encode and a two-key sort.
pub fn serialize(
    coords: &[i64],
    batch: Option<&[i64]>,
    orders: &[Order],
    depth: u8,
) -> Result<Serialized> {
    let coord_or = check_coords_max(coords, depth)?;
    let n = coords.len() / 3;
    if orders.is_empty() {
        return Err(CoreError::arg(
            "orders",
            "at least one order",
            "an empty list",
        ));
    }
    let batch_u64: Option<(&[u64], u32)> = match batch {
        Some(b) => {
            let bits = batch_bits(b, n)?;
            // SAFETY: checked non-negative above; i64 and u64 share size and alignment.
            let v: &[u64] =
                unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u64, b.len()) };
            Some((v, bits))
        }
        None => None,
    };
    let o = orders.len();
    // SAFETY (all three): every element is written before it is read — codes by the
    // encode pass (every row, every slot), perm and inverse by the last sort pass or
    // `perm_and_inverse_into` (perm fully, inverse at every slot of a permutation).
    let mut codes: Vec<u64> = unsafe { vec_for_overwrite_huge(o * n) };
    let mut perm: Vec<i64> = unsafe { vec_for_overwrite_huge(o * n) };
    let mut inverse: Vec<i64> = unsafe { vec_for_overwrite_huge(o * n) };
    let code_bits = 3 * depth as u32;
    let batch_bits = batch_u64.map_or(0, |(_, b)| b);
    let idx_bits = bit_length(n.saturating_sub(1) as u64);
    if code_bits + batch_bits + idx_bits <= 64 && n <= u32::MAX as usize {
        let batch = batch_u64.filter(|&(_, b)| b > 0).map(|(v, _)| v);
        // key = (batch << code_bits) | code; without a batch every code is below
        // 2^(3·L), L the bit length of the largest coordinate (both curves map levels
        // above L to zero bits), so fewer digits need sorting
        let key_bits = if batch.is_some() {
            code_bits + batch_bits
        } else {
            3 * bit_length(coord_or)
        };
        serialize_rows(
            coords,
            batch,
            orders,
            depth,
            key_bits,
            &mut codes,
            &mut perm,
            &mut inverse,
        );
    } else {
        for (k, &order) in orders.iter().enumerate() {
            let row = &mut codes[k * n..(k + 1) * n];
            encode_into(coords, order, depth, row);
            let p = argsort_pair(batch_u64, row, code_bits)?;
            perm_and_inverse_into(
                |j| p[j] as usize,
                &mut perm[k * n..(k + 1) * n],
                &mut inverse[k * n..(k + 1) * n],
            );
        }
    }
    Ok(Serialized {
        depth,
        orders: orders.to_vec(),
        codes,
        perm,
        inverse,
    })
}

/// Points per block of the fused encode pass (its Morton words stay in L1).
const ENCODE_BLOCK: usize = 256;

/// Codes of every order, their digit counts, then [`serialize_row`] per order.
///
/// Phase 1 reads the coordinates once for all orders, in point ranges (one per thread):
/// Morton words per block of points, z-trans by swapping the x and y bit of every triple,
/// Hilbert by the automaton over either, and the digit counts of each order's LSD passes.
/// Phase 2 sorts: workers take the orders longest first (Hilbert before z) from a shared
/// counter, each with its own scratch buffers. Counts are sums and each order's sort runs
/// on one thread, so nothing depends on the thread count.
#[allow(clippy::too_many_arguments)]
fn serialize_rows(
    coords: &[i64],
    batch: Option<&[u64]>,
    orders: &[Order],
    depth: u8,
    key_bits: u32,
    codes: &mut [u64],
    perm: &mut [i64],
    inverse: &mut [i64],
) {
    let n = coords.len() / 3;
    if n == 0 {
        return;
    }
    let (passes, w) = row_digits(key_bits, n);
    let table = passes << w;
    // phase 1: one point range per thread, each with its own counts
    let threads = rayon::current_num_threads().max(1);
    let ranges = if n < 1 << 16 { 1 } else { threads };
    let range_len = n.div_ceil(ranges).next_multiple_of(ENCODE_BLOCK);
    let ranges = n.div_ceil(range_len);
    let mut pieces: Vec<Vec<&mut [u64]>> = (0..ranges).map(|_| Vec::new()).collect();
    for row in codes.chunks_exact_mut(n) {
        for (r, piece) in row.chunks_mut(range_len).enumerate() {
            pieces[r].push(piece);
        }
    }
    let count_range = |(r, mut rows): (usize, Vec<&mut [u64]>)| {
        let lo = r * range_len;
        let len = rows.first().map_or(0, |p| p.len());
        let mut h = vec![0u32; orders.len() * table * COUNT_COPIES];
        encode_counting(
            &coords[3 * lo..3 * (lo + len)],
            batch.map(|b| &b[lo..lo + len]),
            orders,
            depth,
            &mut rows,
            &mut h,
            passes,
            w,
        );
        h
    };
    let counts: Vec<Vec<u32>> = if ranges == 1 {
        pieces.into_iter().enumerate().map(count_range).collect()
    } else {
        pieces
            .into_par_iter()
            .enumerate()
            .map(count_range)
            .collect()
    };
    // per order: the sum over ranges and copies
    let mut hists: Vec<Vec<u32>> = vec![vec![0u32; table]; orders.len()];
    for c in counts.iter().filter(|_| table > 0) {
        for (k, h) in hists.iter_mut().enumerate() {
            for copy in
                c[k * table * COUNT_COPIES..(k + 1) * table * COUNT_COPIES].chunks_exact(table)
            {
                for (a, b) in h.iter_mut().zip(copy) {
                    *a += b;
                }
            }
        }
    }
    drop(counts);
    // phase 2: one order per task
    let codes = &*codes;
    let mut tasks: Vec<RowTask> = orders
        .iter()
        .copied()
        .zip(codes.chunks_exact(n).zip(hists))
        .zip(perm.chunks_exact_mut(n).zip(inverse.chunks_exact_mut(n)))
        .map(|((o, (c, h)), (p, i))| (o, c, h, p, i))
        .collect();
    // stable: equal-cost orders keep the caller's sequence
    tasks.sort_by_key(|t| !matches!(t.0, Order::Hilbert | Order::HilbertTrans));
    let workers = threads.min(tasks.len());
    let queue: Vec<std::sync::Mutex<Option<RowTask>>> = tasks
        .into_iter()
        .map(|t| std::sync::Mutex::new(Some(t)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut scratch = RowScratch::default();
        loop {
            let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(slot) = queue.get(k) else { break };
            let (_, c, h, p, i) = slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .expect("each task is taken once");
            sort_row(batch, depth, c, h, passes, w, p, i, &mut scratch);
        }
    };
    if workers == 1 {
        work();
    } else {
        (0..workers).into_par_iter().for_each(|_| work());
    }
}

/// One order's sort task: (order, codes, digit counts, perm, inverse).
type RowTask<'a> = (Order, &'a [u64], Vec<u32>, &'a mut [i64], &'a mut [i64]);

/// Count tables per order in phase 1: alternate points count into separate copies, so
/// runs of equal digits (neighbouring points share their high digits) do not chain every
/// increment through one memory location.
const COUNT_COPIES: usize = 2;

const Z_BITS: u64 = 0x1249_2492_4924_9249;

/// Morton word of (y, x, z) from that of (x, y, z): swap the x and y bit of every triple.
#[inline(always)]
fn swap_xy_bits(m: u64) -> u64 {
    (m & Z_BITS) | ((m >> 1) & (Z_BITS << 1)) | ((m & (Z_BITS << 1)) << 1)
}

/// Morton words of a block of (x, y, z) rows (coordinates < 2^21).
#[inline(always)]
fn morton_block(rows: &[i64], out: &mut [u64]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("bmi2") {
        // SAFETY: the CPU supports BMI2 (checked just above)
        unsafe { morton_block_bmi2(rows, out) };
        return;
    }
    for (o, p) in out.iter_mut().zip(rows.chunks_exact(3)) {
        *o = morton::encode(p[0] as u32, p[1] as u32, p[2] as u32);
    }
}

/// [`morton_block`] by bit deposit (three `pdep` instead of six table lookups).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi2")]
unsafe fn morton_block_bmi2(rows: &[i64], out: &mut [u64]) {
    use std::arch::x86_64::_pdep_u64;
    for (o, p) in out.iter_mut().zip(rows.chunks_exact(3)) {
        *o = _pdep_u64(p[0] as u64, Z_BITS << 2)
            | _pdep_u64(p[1] as u64, Z_BITS << 1)
            | _pdep_u64(p[2] as u64, Z_BITS);
    }
}

/// Hilbert codes of a block of Morton words (four automaton chains at a time).
#[inline(always)]
fn hilbert_block(m: &[u64], depth: u32, out: &mut [u64]) {
    let t = tables();
    let mut outs = out.chunks_exact_mut(4);
    let mut ins = m.chunks_exact(4);
    for (o4, m4) in (&mut outs).zip(&mut ins) {
        let g = run_automaton_x4([m4[0], m4[1], m4[2], m4[3]], depth, &t.enc1, &t.enc2x);
        for j in 0..4 {
            o4[j] = gray_to_binary(g[j]);
        }
    }
    for (o, &v) in outs.into_remainder().iter_mut().zip(ins.remainder()) {
        *o = gray_to_binary(run_automaton(v, depth, &t.enc1, &t.enc2));
    }
}

/// Phase 1 over one point range: codes of every order into `rows` (one slice per order)
/// and, per order, `COUNT_COPIES` count tables of `passes` digits of `w` bits of the key
/// `(batch << 3·depth) | code`.
#[allow(clippy::too_many_arguments)]
fn encode_counting(
    coords: &[i64],
    batch: Option<&[u64]>,
    orders: &[Order],
    depth: u8,
    rows: &mut [&mut [u64]],
    hist: &mut [u32],
    passes: usize,
    w: u32,
) {
    let d = depth as u32;
    let table = passes << w;
    let n = coords.len() / 3;
    let trans = orders.iter().any(|o| o.swaps_xy());
    let mut m = [0u64; ENCODE_BLOCK];
    let mut mt = [0u64; ENCODE_BLOCK];
    let mut start = 0;
    while start < n {
        let len = ENCODE_BLOCK.min(n - start);
        morton_block(&coords[3 * start..3 * (start + len)], &mut m[..len]);
        if trans {
            for (t, &v) in mt[..len].iter_mut().zip(&m[..len]) {
                *t = swap_xy_bits(v);
            }
        }
        for (k, &order) in orders.iter().enumerate() {
            let out = &mut rows[k][start..start + len];
            let src = if order.swaps_xy() {
                &mt[..len]
            } else {
                &m[..len]
            };
            match order {
                Order::Z | Order::ZTrans => out.copy_from_slice(src),
                Order::Hilbert | Order::HilbertTrans => hilbert_block(src, d, out),
            }
            let h = &mut hist[k * table * COUNT_COPIES..(k + 1) * table * COUNT_COPIES];
            let b = batch.map(|b| &b[start..start + len]);
            count_digits(h, out, b, 3 * d, passes, w);
        }
        start += len;
    }
}

/// Add the digits of each key `(batch << code_bits) | code` to `COUNT_COPIES` tables.
fn count_digits(
    hist: &mut [u32],
    codes: &[u64],
    batch: Option<&[u64]>,
    code_bits: u32,
    passes: usize,
    w: u32,
) {
    macro_rules! go {
        ($np:literal) => {
            match batch {
                Some(b) => count_n::<$np>(
                    hist,
                    codes.iter().zip(b).map(|(&c, &b)| (b << code_bits) | c),
                    w,
                ),
                None => count_n::<$np>(hist, codes.iter().copied(), w),
            }
        };
    }
    match passes {
        0 => {}
        1 => go!(1),
        2 => go!(2),
        3 => go!(3),
        4 => go!(4),
        5 => go!(5),
        6 => go!(6),
        7 => go!(7),
        8 => go!(8),
        _ => unreachable!("digits are at least 8 bits wide, so keys take at most 8 passes"),
    }
}

#[inline(always)]
fn count_n<const NP: usize>(hist: &mut [u32], keys: impl Iterator<Item = u64>, w: u32) {
    let table = NP << w;
    let mask = (1u64 << w) - 1;
    assert!(hist.len() == table * COUNT_COPIES);
    for (i, k) in keys.enumerate() {
        let base = (i % COUNT_COPIES) * table;
        for p in 0..NP {
            let b = base + (p << w) + ((k >> (p as u32 * w)) & mask) as usize;
            // SAFETY: b < base + (p + 1) << w ≤ hist.len() (asserted above)
            unsafe { *hist.get_unchecked_mut(b) += 1 };
        }
    }
}

/// Two item buffers a worker reuses across its orders.
#[derive(Default)]
struct RowScratch {
    a: Vec<u64>,
    b: Vec<u64>,
}

impl RowScratch {
    fn buffers(&mut self, n: usize) -> (&mut [u64], &mut [u64]) {
        for v in [&mut self.a, &mut self.b] {
            if v.len() != n {
                // SAFETY: every sort pass writes all n entries of its destination before
                // the next pass reads them
                *v = unsafe { vec_for_overwrite_huge(n) };
            }
        }
        (&mut self.a, &mut self.b)
    }
}

/// Widest LSD digit (4096 buckets: the count table stays in L1, the write streams in L2).
const ROW_DIGIT_MAX: u32 = 12;

/// (passes, digit width) covering `key_bits` for `n` items: narrower digits for small
/// inputs (the count tables must stay small against n), equal widths.
fn row_digits(key_bits: u32, n: usize) -> (usize, u32) {
    if key_bits == 0 {
        return (0, 0);
    }
    let max_w = (bit_length(n as u64).saturating_sub(4)).clamp(8, ROW_DIGIT_MAX);
    let passes = key_bits.div_ceil(max_w);
    (passes as usize, key_bits.div_ceil(passes))
}

/// Stable (batch, code) sort of one order on the calling thread, from its codes and the
/// counts of every LSD digit (`passes` digits of `w` bits, from phase 1).
///
/// Sort items are `(key << idx_bits) | point`; the first LSD pass builds them from the
/// code row as it scatters, the last one writes `perm[pos] = point` and
/// `inverse[point] = pos` instead of items. Passes whose digit is equal for every item
/// are skipped. LSD passes are stable and the first reads points in index order, so ties
/// keep index order (the sort is unique, hence thread-count independent).
#[allow(clippy::too_many_arguments)]
fn sort_row(
    batch: Option<&[u64]>,
    depth: u8,
    codes: &[u64],
    mut hist: Vec<u32>,
    passes: usize,
    w: u32,
    perm: &mut [i64],
    inverse: &mut [i64],
    scratch: &mut RowScratch,
) {
    let n = codes.len();
    let idx_bits = bit_length(n.saturating_sub(1) as u64);
    let code_bits = 3 * depth as u32;
    let digits = 1usize << w;
    let live: Vec<usize> = (0..passes)
        .filter(|&p| {
            !hist[p * digits..(p + 1) * digits]
                .iter()
                .any(|&c| c as usize == n)
        })
        .collect();
    if live.is_empty() {
        // every key equal: the stable order is the identity
        for (i, (p, v)) in perm.iter_mut().zip(inverse.iter_mut()).enumerate() {
            *p = i as i64;
            *v = i as i64;
        }
        return;
    }
    for &p in &live {
        let mut run = 0u32;
        for c in hist[p * digits..(p + 1) * digits].iter_mut() {
            let t = *c;
            *c = run;
            run += t;
        }
    }
    let mask = (digits - 1) as u64;
    let idx_mask = (1u64 << idx_bits) - 1;
    let (mut a, mut b) = scratch.buffers(n);
    let last = live.len() - 1;
    for (j, &p) in live.iter().enumerate() {
        let shift = idx_bits + p as u32 * w;
        let offs = &mut hist[p * digits..(p + 1) * digits];
        match (j == 0, j == last) {
            (true, true) => {
                // one pass: scatter point indices straight into perm / inverse
                let key = |i: usize| match batch {
                    Some(bv) => (bv[i] << code_bits) | codes[i],
                    None => codes[i],
                };
                for (i, inv) in inverse.iter_mut().enumerate() {
                    let d = ((key(i) >> (p as u32 * w)) & mask) as usize;
                    let pos = offs[d] as usize;
                    offs[d] += 1;
                    perm[pos] = i as i64;
                    *inv = pos as i64;
                }
            }
            (true, false) => match batch {
                Some(bv) => scatter_first(
                    n,
                    |i| (bv[i] << code_bits) | codes[i],
                    idx_bits,
                    p as u32 * w,
                    mask,
                    offs,
                    a,
                ),
                None => scatter_first(n, |i| codes[i], idx_bits, p as u32 * w, mask, offs, a),
            },
            (false, false) => {
                scatter_items(a, b, shift, mask, offs);
                std::mem::swap(&mut a, &mut b);
            }
            (false, true) => scatter_last(a, shift, mask, idx_mask, offs, perm, inverse),
        }
    }
}

/// First LSD pass: items `(key(i) << idx_bits) | i` scattered by digit `(key >> kshift) & mask`.
#[inline(always)]
fn scatter_first(
    n: usize,
    key: impl Fn(usize) -> u64,
    idx_bits: u32,
    kshift: u32,
    mask: u64,
    offs: &mut [u32],
    dst: &mut [u64],
) {
    assert!(dst.len() == n && offs.len() > mask as usize);
    for i in 0..n {
        let k = key(i);
        let d = ((k >> kshift) & mask) as usize;
        // SAFETY: d ≤ mask < offs.len() (asserted); the prefix sums of this pass's
        // histogram give each item a distinct position below n = dst.len()
        unsafe {
            let o = offs.get_unchecked_mut(d);
            *dst.get_unchecked_mut(*o as usize) = (k << idx_bits) | i as u64;
            *o += 1;
        }
    }
}

/// Middle LSD pass: `src` scattered into `dst` by digit `(item >> shift) & mask`.
#[inline(always)]
fn scatter_items(src: &[u64], dst: &mut [u64], shift: u32, mask: u64, offs: &mut [u32]) {
    assert!(dst.len() == src.len() && offs.len() > mask as usize);
    for &v in src {
        let d = ((v >> shift) & mask) as usize;
        // SAFETY: as in `scatter_first`
        unsafe {
            let o = offs.get_unchecked_mut(d);
            *dst.get_unchecked_mut(*o as usize) = v;
            *o += 1;
        }
    }
}

/// How many items ahead the last pass prefetches its inverse write.
const AHEAD: usize = 16;

/// Hint the cache line of `v[i]` (clamped into `v`) into L1 before a store to it (random
/// destinations, which the hardware prefetcher does not follow).
#[inline(always)]
fn prefetch_at<T>(v: &[T], i: usize) {
    if let Some(last) = v.len().checked_sub(1) {
        crate::mem::prefetch(v.as_ptr(), i.min(last), v.len());
    }
}

/// Last LSD pass: the sorted position of each item is final, so write perm and inverse.
#[inline(always)]
fn scatter_last(
    src: &[u64],
    shift: u32,
    mask: u64,
    idx_mask: u64,
    offs: &mut [u32],
    perm: &mut [i64],
    inverse: &mut [i64],
) {
    let n = src.len();
    assert!(perm.len() == n && inverse.len() == n && offs.len() > mask as usize);
    for (k, &v) in src.iter().enumerate() {
        // the inverse writes land anywhere in an n-entry array: fetch the line of the
        // item AHEAD places later now, so its store does not wait for memory (~8% of a
        // 4-order call on lidar1M; prefetching the bucket streams too measured no gain)
        if let Some(&u) = src.get(k + AHEAD) {
            prefetch_at(inverse, (u & idx_mask) as usize);
        }
        let d = ((v >> shift) & mask) as usize;
        let i = (v & idx_mask) as usize;
        assert!(i < n);
        // SAFETY: d ≤ mask < offs.len() (asserted), pos < n by the prefix sums, i < n
        // by the assert
        unsafe {
            let o = offs.get_unchecked_mut(d);
            let pos = *o as usize;
            *o += 1;
            *perm.get_unchecked_mut(pos) = i as i64;
            *inverse.get_unchecked_mut(i) = pos as i64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bit-serial transcription of PTv3's Hilbert encoder (per point, per bit).
    fn hilbert_reference(p: [u32; 3], depth: u32) -> u64 {
        // bits[dim][k], k = 0 is the most significant of `depth` bits
        let mut bits = [[0u8; 21]; 3];
        for dim in 0..3 {
            for k in 0..depth as usize {
                bits[dim][k] = ((p[dim] >> (depth as usize - 1 - k)) & 1) as u8;
            }
        }
        for bit in 0..depth as usize {
            for dim in 0..3 {
                let mask = bits[dim][bit];
                for k in bit + 1..depth as usize {
                    bits[0][k] ^= mask;
                }
                for k in bit + 1..depth as usize {
                    let to_flip = (1 - mask) & (bits[0][k] ^ bits[dim][k]);
                    bits[dim][k] ^= to_flip;
                    bits[0][k] ^= to_flip;
                }
            }
        }
        let mut out = 0u64;
        let mut acc = 0u8;
        for k in 0..depth as usize {
            for bit_row in bits.iter() {
                acc ^= bit_row[k];
                out = (out << 1) | acc as u64;
            }
        }
        out
    }

    proptest! {
        #[test]
        fn hilbert_matches_bit_serial(depth in 1u32..=21, x in any::<u32>(), y in any::<u32>(), z in any::<u32>()) {
            let m = (1u32 << depth) - 1;
            let p = [x & m, y & m, z & m];
            let h = hilbert_encode(p[0], p[1], p[2], depth);
            prop_assert_eq!(h, hilbert_reference(p, depth));
            prop_assert_eq!(hilbert_decode(h, depth), p);
        }

        #[test]
        fn every_order_round_trips(depth in 1u32..=21, x in any::<u32>(), y in any::<u32>(), z in any::<u32>()) {
            let m = (1u32 << depth) - 1;
            for order in Order::ALL {
                let c = encode_one(order, x & m, y & m, z & m, depth);
                prop_assert!(c < 1u64 << (3 * depth));
                prop_assert_eq!(decode_one(order, c, depth), [x & m, y & m, z & m]);
            }
        }
    }

    #[test]
    fn array_encode_matches_per_cell_reference() {
        // covers the 4-wide path and its remainder, for every order and a few depths
        let mut next = crate::testing::xorshift(3);
        for depth in [1u8, 2, 7, 12, 16, 21] {
            let n = 1003;
            let coords: Vec<i64> = (0..3 * n)
                .map(|_| {
                    let s = next();
                    (s % (1 << depth)) as i64
                })
                .collect();
            for order in Order::ALL {
                let got = encode(&coords, order, depth).unwrap();
                for (i, p) in coords.chunks_exact(3).enumerate() {
                    let q = [p[0] as u32, p[1] as u32, p[2] as u32];
                    let q = if order.swaps_xy() {
                        [q[1], q[0], q[2]]
                    } else {
                        q
                    };
                    let want = match order {
                        Order::Z | Order::ZTrans => crate::morton::encode(q[0], q[1], q[2]),
                        _ => hilbert_reference(q, depth as u32),
                    };
                    assert_eq!(got[i], want, "{order:?} depth {depth} row {i}");
                }
            }
        }
    }

    #[test]
    fn hilbert_is_a_curve() {
        // consecutive codes are face-adjacent cells, and every cell is visited once
        for depth in 1..=4u32 {
            let n = 1u64 << (3 * depth);
            let mut prev = hilbert_decode(0, depth);
            for c in 1..n {
                let p = hilbert_decode(c, depth);
                let dist: i64 = (0..3).map(|i| (p[i] as i64 - prev[i] as i64).abs()).sum();
                assert_eq!(dist, 1, "depth {depth} code {c}");
                assert_eq!(hilbert_encode(p[0], p[1], p[2], depth), c);
                prev = p;
            }
        }
    }

    /// Every order's codes, perm and inverse against per-cell encoding and a comparison
    /// sort by (batch, code, index), for 1-3 threads: small and large inputs (one or
    /// several phase-1 ranges), depths above the coordinates' bit length (fewer key
    /// digits), clustered coordinates with many duplicates, batches of 1 to 64 bits in
    /// the key, all-equal keys, and every subset order of the four orders.
    #[test]
    fn serialize_equals_reference_sort() {
        let mut rnd = crate::testing::xorshift(11);
        let cases: [(usize, u8, u32, Option<u64>); 10] = [
            (1, 3, 3, None),
            (500, 4, 2, None),
            (70, 5, 2, Some(3)),
            (1000, 21, 4, None),
            (1000, 10, 10, Some(1)),
            (5000, 16, 0, None),
            (70_000, 12, 12, None),
            (70_000, 13, 6, Some(40)),
            (140_001, 21, 21, Some(7)),
            (3000, 8, 8, Some(1 << 40)),
        ];
        let order_sets: [&[Order]; 3] = [
            &Order::ALL,
            &[Order::HilbertTrans, Order::Z],
            &[Order::ZTrans, Order::Hilbert, Order::Z],
        ];
        for (case, &(n, depth, bits, batch_max)) in cases.iter().enumerate() {
            // clustered: a few centres, points near them, duplicates included
            let centres: Vec<[u64; 3]> = (0..5)
                .map(|_| [0, 0, 0].map(|_: u64| if bits == 0 { 0 } else { rnd() % (1 << bits) }))
                .collect();
            let coords: Vec<i64> = (0..n)
                .flat_map(|_| {
                    let c = centres[(rnd() % 5) as usize];
                    let spread = rnd() % 4;
                    c.map(|v| {
                        let off = rnd() % (1 << spread);
                        (v ^ off).min(if bits == 0 { 0 } else { (1 << bits) - 1 }) as i64
                    })
                })
                .collect();
            let batch: Option<Vec<i64>> =
                batch_max.map(|m| (0..n).map(|_| (rnd() % (m + 1)) as i64).collect());
            let orders = order_sets[case % 3];
            let mut first: Option<Serialized> = None;
            for threads in [1, 2, 3] {
                let r = crate::testing::with_threads(threads, || {
                    serialize(&coords, batch.as_deref(), orders, depth).unwrap()
                });
                match &first {
                    Some(f) => assert_eq!(&r, f, "case {case}: threads {threads} differ"),
                    None => first = Some(r),
                }
            }
            let r = first.unwrap();
            for (k, &order) in orders.iter().enumerate() {
                let codes: Vec<u64> = coords
                    .chunks_exact(3)
                    .map(|p| encode_one(order, p[0] as u32, p[1] as u32, p[2] as u32, depth as u32))
                    .collect();
                assert_eq!(
                    &r.codes[k * n..(k + 1) * n],
                    &codes[..],
                    "case {case} {order:?} codes"
                );
                let mut want: Vec<usize> = (0..n).collect();
                want.sort_by_key(|&i| (batch.as_ref().map_or(0, |b| b[i]), codes[i], i));
                let perm: Vec<usize> = r.perm[k * n..(k + 1) * n]
                    .iter()
                    .map(|&p| p as usize)
                    .collect();
                assert_eq!(perm, want, "case {case} {order:?} perm");
                for (pos, &i) in want.iter().enumerate() {
                    assert_eq!(
                        r.inverse[k * n + i],
                        pos as i64,
                        "case {case} {order:?} inverse"
                    );
                }
            }
        }
    }

    #[test]
    fn serialize_sorts_by_batch_then_code_for_any_thread_count() {
        let mut rnd = crate::testing::xorshift(7u64);
        let n = 100_000;
        let depth = 21u8;
        let coords: Vec<i64> = (0..3 * n).map(|_| (rnd() % (1 << 21)) as i64).collect();
        let batch: Vec<i64> = (0..n).map(|_| (rnd() % 5000) as i64).collect();
        let mut results = vec![];
        for threads in [1, 2] {
            results.push(crate::testing::with_threads(threads, || {
                serialize(&coords, Some(&batch), &Order::ALL, depth).unwrap()
            }));
        }
        assert_eq!(results[0], results[1]);
        let r = &results[0];
        for k in 0..4 {
            let perm = &r.perm[k * n..(k + 1) * n];
            let codes = &r.codes[k * n..(k + 1) * n];
            for w in perm.windows(2) {
                let (a, b) = (w[0] as usize, w[1] as usize);
                assert!((batch[a], codes[a], a) < (batch[b], codes[b], b));
            }
            for (i, &p) in perm.iter().enumerate() {
                assert_eq!(r.inverse[k * n + p as usize], i as i64);
            }
        }
    }

    #[test]
    fn bad_inputs_are_named() {
        assert!(matches!(
            check_depth(22),
            Err(CoreError::InvalidArgument { name: "depth", .. })
        ));
        assert!(matches!(
            encode(&[0, 0, -1], Order::Z, 4),
            Err(CoreError::InvalidArgument {
                name: "grid_coords",
                ..
            })
        ));
        assert!(matches!(
            encode(&[0, 16, 0], Order::Z, 4),
            Err(CoreError::InvalidArgument {
                name: "grid_coords",
                ..
            })
        ));
        assert!(matches!(
            serialize(&[0, 0, 0], Some(&[0, 1]), &Order::ALL, 4),
            Err(CoreError::InvalidArgument { name: "batch", .. })
        ));
        assert!(matches!(
            serialize(&[0, 0, 0, 1, 1, 1], Some(&[0, -1]), &Order::ALL, 4),
            Err(CoreError::InvalidArgument { name: "batch", .. })
        ));
        assert!(matches!(
            serialize(&[0, 0, 0, 1, 16, 1], None, &Order::ALL, 4),
            Err(CoreError::InvalidArgument {
                name: "grid_coords",
                ..
            })
        ));
        assert!(matches!(
            decode(&[1 << 12], Order::Hilbert, 4),
            Err(CoreError::InvalidArgument { name: "codes", .. })
        ));
    }
}
