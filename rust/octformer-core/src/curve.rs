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
    check_depth(depth)?;
    if coords.len() % 3 != 0 {
        return Err(CoreError::arg(
            "grid_coords",
            "shape (N, 3)",
            format!("{} values (not a multiple of 3)", coords.len()),
        ));
    }
    let limit = 1i64 << depth;
    let (lo, hi) = min_max(coords);
    if lo < 0 || hi >= limit {
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
    Ok(())
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
pub fn serialize(
    coords: &[i64],
    batch: Option<&[i64]>,
    orders: &[Order],
    depth: u8,
) -> Result<Serialized> {
    check_coords(coords, depth)?;
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
            let max = check_batch(b, n)?;
            // SAFETY: checked non-negative above; i64 and u64 share size and alignment.
            let v: &[u64] =
                unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u64, b.len()) };
            Some((v, bit_length(max)))
        }
        None => None,
    };
    let o = orders.len();
    // SAFETY (all four): every element is written before it is read — codes by
    // `encode_into` (all chunks), perm and inverse by `perm_and_inverse_into` (perm
    // fully, inverse at every slot of a permutation), items by the packing loop below.
    let mut codes: Vec<u64> = unsafe { vec_for_overwrite_huge(o * n) };
    let mut perm: Vec<i64> = unsafe { vec_for_overwrite_huge(o * n) };
    let mut inverse: Vec<i64> = unsafe { vec_for_overwrite_huge(o * n) };
    let mut items_buf: Vec<u64> = Vec::new();
    for (k, &order) in orders.iter().enumerate() {
        let row = &mut codes[k * n..(k + 1) * n];
        encode_into(coords, order, depth, row);
        let (perm_row, inv_row) = (
            &mut perm[k * n..(k + 1) * n],
            &mut inverse[k * n..(k + 1) * n],
        );
        let code_bits = 3 * depth as u32;
        let batch_bits = batch_u64.map_or(0, |(_, b)| b);
        let idx_bits = bit_length(n.saturating_sub(1) as u64);
        if code_bits + batch_bits + idx_bits <= 64 && n <= u32::MAX as usize {
            // (batch, code, index) packed in one word: one radix sort, then perm and
            // inverse written straight from the sorted words
            let row = &*row;
            // reused across orders: a fresh 8 MB buffer per order costs page faults
            if items_buf.len() != n {
                items_buf = unsafe { vec_for_overwrite_huge(n) };
            }
            let items = &mut items_buf;
            items
                .par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(c, dst)| {
                    for (j, it) in dst.iter_mut().enumerate() {
                        let i = c * CHUNK + j;
                        let b = match batch_u64 {
                            Some((bv, bb)) if bb > 0 => bv[i] << code_bits,
                            _ => 0,
                        };
                        *it = ((b | row[i]) << idx_bits) | i as u64;
                    }
                });
            radix_sort(items, idx_bits, idx_bits + code_bits + batch_bits);
            let mask = (1u64 << idx_bits) - 1;
            perm_and_inverse_into(|k| (items[k] & mask) as usize, perm_row, inv_row);
        } else {
            let p = argsort_pair(batch_u64, row, code_bits)?;
            perm_and_inverse_into(|k| p[k] as usize, perm_row, inv_row);
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
        let mut s = 3u64;
        for depth in [1u8, 2, 7, 12, 16, 21] {
            let n = 1003;
            let coords: Vec<i64> = (0..3 * n)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
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

    #[test]
    fn serialize_sorts_by_batch_then_code_for_any_thread_count() {
        let mut s = 7u64;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let n = 100_000;
        let depth = 21u8;
        let coords: Vec<i64> = (0..3 * n).map(|_| (rnd() % (1 << 21)) as i64).collect();
        let batch: Vec<i64> = (0..n).map(|_| (rnd() % 5000) as i64).collect();
        let mut results = vec![];
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            results.push(
                pool.install(|| serialize(&coords, Some(&batch), &Order::ALL, depth).unwrap()),
            );
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
            decode(&[1 << 12], Order::Hilbert, 4),
            Err(CoreError::InvalidArgument { name: "codes", .. })
        ));
    }
}
