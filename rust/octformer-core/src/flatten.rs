//! Flattening plans: FlatFormer's window sort with equal-size groups, and curve-order
//! patches, both reduced to one gather index (sort then pad) and one scatter index
//! (un-pad then inverse) plus varlen `cu_seqlens`.
//!
//! Window order (axis = X; axis = Y swaps the roles of x and y), outermost key first:
//! sample, z-window, y-window `Y`, x-window `X` (reversed when `Y` is odd), x-offset `u`
//! (reversed when `Y` is odd), y-offset `v` (reversed when `u + Y` is odd), z-offset.
//! On 2-D input (all z in one window) this is exactly FlatFormer's two-level
//! boustrophedon key `(N_x·Y + (−1)^Y·X)·W_x·W_y + (−1)^Y·(W_y·u + (−1)^u·v)`.
//! With `shift`, every coordinate first moves by half a window (`w / 2`, floored).
//!
//! Grouping, per sample of `n` tokens and group size `g`: `n ≤ g` gives one sequence of
//! `n` tokens (no padding); otherwise the sample is padded to `⌈n/g⌉·g` slots, slot
//! `j ≥ n` repeating the token of slot `j − g` (the tokens just before the last group,
//! always of the same sample), and cut into sequences of exactly `g`.

use rayon::prelude::*;

use crate::curve::{argsort_by_key, argsort_pair};
use crate::error::{CoreError, Result};
use crate::mem::{
    SendPtr, prefetch, u64_vec_as_i64, vec_for_overwrite_huge as vec_for_overwrite,
    vec_with_capacity_for_overwrite as vec_for_overwrite_cap,
};
use crate::sort::radix_sort_spare;

const CHUNK: usize = 1 << 14;

/// Division of numbers < 2^32 by a fixed divisor < 2^32 with one multiply (Lemire et al.).
#[derive(Clone, Copy)]
struct FastDiv {
    magic: u64,
}

impl FastDiv {
    /// `magic` = ⌊(2^64 − 1)/d⌋ + 1; d = 1 would overflow it, so 0 marks "divide by one".
    fn new(d: u64) -> FastDiv {
        debug_assert!(d > 0 && d < 1 << 32);
        FastDiv {
            magic: if d == 1 { 0 } else { u64::MAX / d + 1 },
        }
    }

    #[inline(always)]
    fn div(self, n: u64) -> u64 {
        debug_assert!(n < 1 << 32);
        if self.magic == 0 {
            n
        } else {
            ((self.magic as u128 * n as u128) >> 64) as u64
        }
    }
}

#[cfg(test)]
#[test]
fn fast_division_is_exact() {
    let mut next = crate::testing::xorshift(99u64);
    for d in (1u64..70).chain([1 << 21, (1 << 32) - 1, 12345679]) {
        let f = FastDiv::new(d);
        for n in (0u64..300).chain([(1 << 32) - 1, (1 << 31) + 7]) {
            assert_eq!(f.div(n), n / d, "{n} / {d}");
        }
        for _ in 0..2000 {
            let s = next();
            let n = s >> 32;
            assert_eq!(f.div(n), n / d, "{n} / {d}");
        }
    }
}

/// Which axis the window sort runs along (FlatFormer alternates x and y per layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    X,
    Y,
}

impl Axis {
    /// Parse "x" or "y".
    pub fn parse(name: &str) -> Result<Axis> {
        match name {
            "x" => Ok(Axis::X),
            "y" => Ok(Axis::Y),
            other => Err(CoreError::arg("axis", "'x' or 'y'", format!("{other:?}"))),
        }
    }
}

/// One composed gather and one scatter for a layer, plus the varlen sequence layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlattenPlan {
    /// (M,) token index read into each padded slot (sort then pad); M = padded tokens.
    pub gather: Vec<i64>,
    /// (N,) padded slot holding each original token's own (non-duplicate) copy.
    pub scatter: Vec<i64>,
    /// (S + 1,) start of every sequence in the padded order, ending with M.
    pub cu_seqlens: Vec<i32>,
    /// (S,) sample index of every sequence.
    pub seq_sample: Vec<i32>,
    /// Longest sequence.
    pub max_seqlen: usize,
    /// Requested group size.
    pub group_size: usize,
}

fn bit_length(v: u64) -> u32 {
    64 - v.leading_zeros()
}

/// Tokens per sample: bincount of `batch` (one sample when `batch` is None).
fn sample_counts(batch: Option<&[i64]>, n: usize) -> Result<Vec<usize>> {
    match batch {
        None => Ok(vec![n]),
        Some(b) => {
            let max = crate::curve::check_batch(b, n)?;
            if max >= i32::MAX as u64 {
                return Err(CoreError::arg(
                    "batch",
                    format!("sample indices < {}", i32::MAX),
                    max,
                ));
            }
            let mut counts = vec![0usize; if n == 0 { 0 } else { max as usize + 1 }];
            for &s in b {
                counts[s as usize] += 1;
            }
            Ok(counts)
        }
    }
}

/// Build the plan from a permutation in which each sample's tokens are contiguous and
/// samples appear in order (`counts[b]` tokens of sample b). `perm` must be valid.
fn build_plan(perm: &[u32], counts: &[usize], group_size: usize) -> Result<FlattenPlan> {
    build_plan_with(perm.len(), |k| perm[k] as usize, counts, group_size)
}

/// Where each sample's tokens go: sorted-order start, padded start, sequences.
struct Layout {
    /// (B + 1,) first sorted position of every sample
    start: Vec<usize>,
    /// (B + 1,) first padded slot of every sample
    pad_start: Vec<usize>,
    cu_seqlens: Vec<i32>,
    seq_sample: Vec<i32>,
    max_seqlen: usize,
}

impl Layout {
    fn new(counts: &[usize], g: usize) -> Result<Layout> {
        if g == 0 {
            return Err(CoreError::arg("group_size", "a positive integer", 0));
        }
        let b = counts.len();
        let mut start = vec![0usize; b + 1];
        let mut pad_start = vec![0usize; b + 1];
        let mut cu_seqlens = vec![0i32];
        let mut seq_sample = Vec::new();
        let mut max_seqlen = 0usize;
        for (s, &c) in counts.iter().enumerate() {
            let padded = if c <= g { c } else { c.div_ceil(g) * g };
            start[s + 1] = start[s] + c;
            pad_start[s + 1] = pad_start[s] + padded;
            if pad_start[s + 1] > i32::MAX as usize {
                return Err(CoreError::arg(
                    "group_size",
                    format!(
                        "a plan with at most {} padded tokens (int32 cu_seqlens)",
                        i32::MAX
                    ),
                    format!("{} padded tokens", pad_start[s + 1]),
                ));
            }
            let mut at = pad_start[s];
            while at < pad_start[s + 1] {
                let len = (pad_start[s + 1] - at).min(g);
                at += len;
                max_seqlen = max_seqlen.max(len);
                cu_seqlens.push(at as i32);
                seq_sample.push(s as i32);
            }
        }
        Ok(Layout {
            start,
            pad_start,
            cu_seqlens,
            seq_sample,
            max_seqlen,
        })
    }

    /// Padded tokens M.
    fn padded(&self) -> usize {
        *self.pad_start.last().expect("B + 1 entries")
    }

    /// Padding: slot j of a long sample repeats slot j − g (a real token of that sample).
    fn pad(&self, counts: &[usize], g: usize, gather: &mut [i64]) {
        for (s, &c) in counts.iter().enumerate() {
            for slot in self.pad_start[s] + c..self.pad_start[s + 1] {
                gather[slot] = gather[slot - g];
            }
        }
    }

    fn into_plan(self, gather: Vec<i64>, scatter: Vec<i64>, group_size: usize) -> FlattenPlan {
        FlattenPlan {
            gather,
            scatter,
            cu_seqlens: self.cu_seqlens,
            seq_sample: self.seq_sample,
            max_seqlen: self.max_seqlen,
            group_size,
        }
    }
}

/// [`build_plan`] reading the permutation through `tok(sorted position) → token`.
fn build_plan_with(
    n: usize,
    tok: impl Fn(usize) -> usize + Sync,
    counts: &[usize],
    group_size: usize,
) -> Result<FlattenPlan> {
    let g = group_size;
    let layout = Layout::new(counts, g)?;
    let (start, pad_start) = (&layout.start, &layout.pad_start);
    debug_assert_eq!(start[counts.len()], n);
    let m = layout.padded();
    // SAFETY: the pass below writes every real slot of gather and every token of
    // scatter; the padding loop after it writes the remaining slots of gather
    let (mut gather, mut scatter): (Vec<i64>, Vec<i64>) =
        unsafe { (vec_for_overwrite(m), vec_for_overwrite(n)) };
    // one pass over sorted positions: the real slot of each token gets it (sequential
    // writes) and the token learns its slot (scattered writes)
    let (gdst, sdst) = (SendPtr(gather.as_mut_ptr()), SendPtr(scatter.as_mut_ptr()));
    (0..n.div_ceil(CHUNK)).into_par_iter().for_each(|c| {
        let (gdst, sdst) = (gdst, sdst);
        let k0 = c * CHUNK;
        let mut s = start.partition_point(|&o| o <= k0).saturating_sub(1);
        for k in k0..(k0 + CHUNK).min(n) {
            while start[s + 1] <= k {
                s += 1;
            }
            let slot = pad_start[s] + k - start[s];
            let t = tok(k);
            assert!(t < n && slot < m);
            // SAFETY: `tok` is a permutation of 0..n (checked by every caller) and
            // k ↦ slot is injective, so all writes go to distinct slots, in bounds by
            // the assert above.
            unsafe {
                *gdst.0.add(slot) = t as i64;
                *sdst.0.add(t) = slot as i64;
            }
        }
    });
    layout.pad(counts, g, &mut gather);
    Ok(layout.into_plan(gather, scatter, group_size))
}

/// The plan from sorted `key << idx_bits | token` words (`mask` keeps the token), built
/// in the sort's own memory: gather is written over `items` (whose capacity must hold the
/// padded plan) and scatter into `spare` (the sort's other buffer) when there is one, so
/// no fresh multi-megabyte output is faulted in.
fn plan_from_packed(
    mut items: Vec<u64>,
    spare: Option<Vec<u64>>,
    mask: u64,
    counts: &[usize],
    group_size: usize,
) -> Result<FlattenPlan> {
    let g = group_size;
    let n = items.len();
    let layout = Layout::new(counts, g)?;
    let m = layout.padded();
    let mut scatter: Vec<u64> = match spare {
        Some(v) if v.len() == n => v,
        // SAFETY: the passes below write every token's slot
        _ => unsafe { vec_for_overwrite(n) },
    };
    items.reserve_exact(m - n);
    let sdst = SendPtr(scatter.as_mut_ptr());
    if counts.len() <= 1 {
        // one sample: slot = sorted position, so gather is the tokens in place
        items
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                let sdst = sdst;
                let k0 = c * CHUNK;
                for (j, it) in chunk.iter_mut().enumerate() {
                    let t = (*it & mask) as usize;
                    assert!(t < n);
                    *it = t as u64;
                    // SAFETY: the tokens of a sort of 0..n are a permutation, so the
                    // writes are distinct, and in bounds by the assert.
                    unsafe { *sdst.0.add(t) = (k0 + j) as u64 };
                }
            });
    } else {
        // slot(k) = pad_start[s] + k − start[s] ≥ k: moving tokens from the end
        // backwards never overwrites a word not yet read
        // SAFETY: capacity ≥ m (reserved above); slots n..m are real or padding slots,
        // all written below (real ones here, padding by `pad`) before being read
        unsafe { items.set_len(m) };
        let (start, pad_start) = (&layout.start, &layout.pad_start);
        let mut s = counts.len() - 1;
        for k in (0..n).rev() {
            while start[s] > k {
                s -= 1;
            }
            let slot = pad_start[s] + k - start[s];
            let t = (items[k] & mask) as usize;
            items[slot] = t as u64;
            scatter[t] = slot as u64;
        }
    }
    // SAFETY: see above (single sample: slots n..m are padding, written by `pad`)
    unsafe { items.set_len(m) };
    let mut gather = u64_vec_as_i64(items);
    layout.pad(counts, g, &mut gather);
    Ok(layout.into_plan(gather, u64_vec_as_i64(scatter), group_size))
}

/// Plan for curve-order patches: `perm` is one row of a serialization (sorted by
/// (batch, code)), `batch` the per-point samples it was sorted with.
pub fn plan_from_perm(
    perm: &[i64],
    batch: Option<&[i64]>,
    group_size: usize,
) -> Result<FlattenPlan> {
    let n = perm.len();
    if n > u32::MAX as usize {
        return Err(CoreError::arg(
            "perm",
            format!("at most {} tokens", u32::MAX),
            n,
        ));
    }
    let mut seen = vec![false; n];
    let mut p32 = Vec::with_capacity(n);
    for (k, &t) in perm.iter().enumerate() {
        if t < 0 || t as usize >= n || seen[t as usize] {
            return Err(CoreError::arg(
                "perm",
                format!("a permutation of 0..{n}"),
                format!("{t} at position {k}"),
            ));
        }
        seen[t as usize] = true;
        p32.push(t as u32);
    }
    let counts = sample_counts(batch, n)?;
    if let Some(b) = batch {
        if let Some(k) = (1..n).find(|&k| b[perm[k - 1] as usize] > b[perm[k] as usize]) {
            return Err(CoreError::arg(
                "perm",
                "an order in which samples are contiguous and ascending (sorted by (batch, code))",
                format!(
                    "sample {} after sample {} at position {k}",
                    b[perm[k] as usize],
                    b[perm[k - 1] as usize]
                ),
            ));
        }
    }
    build_plan(&p32, &counts, group_size)
}

/// Where the window key's fields sit, for coordinates bounded by `or3` (per axis, the OR
/// of every value or of some of them: only its bit length matters) and samples `0..=max_b`.
struct KeyLayout {
    /// field widths, outermost first: batch, Z, Wa, Wc', oc', oa', w
    widths: [u32; 7],
    total: u32,
    /// bit position of each field (each value is < 2^width, so fields never overlap)
    pos: [u32; 7],
    max_win: [u64; 3],
}

/// The window-key geometry shared by every pass: shift, sizes and the (outer a, inner c)
/// window axes (the traversal runs along c).
#[derive(Clone, Copy)]
struct Geometry {
    window: [u32; 3],
    sh: [u64; 3],
    w64: [u64; 3],
    a: usize,
    c: usize,
}

impl Geometry {
    fn new(window: [u32; 3], axis: Axis, shift: bool) -> Geometry {
        let (a, c) = match axis {
            Axis::X => (1usize, 0usize),
            Axis::Y => (0, 1),
        };
        Geometry {
            window,
            sh: if shift {
                window.map(|w| (w / 2) as u64)
            } else {
                [0; 3]
            },
            w64: window.map(|w| w as u64),
            a,
            c,
        }
    }

    fn layout(&self, or3: [u64; 3], max_b: u64) -> KeyLayout {
        let (w64, sh, a, c) = (self.w64, self.sh, self.a, self.c);
        // largest value with the OR's bit length: an upper bound of every coordinate
        let max_c: [u64; 3] = or3.map(|v| {
            if v == 0 {
                0
            } else {
                u64::MAX >> v.leading_zeros()
            }
        });
        let max_win = [0, 1, 2].map(|k| (max_c[k] + sh[k]) / w64[k]);
        let widths = [
            bit_length(max_b),
            bit_length(max_win[2]),
            bit_length(max_win[a]),
            bit_length(max_win[c]),
            bit_length(w64[c] - 1),
            bit_length(w64[a] - 1),
            bit_length(w64[2] - 1),
        ];
        let total: u32 = widths.iter().sum();
        let mut pos = [0u32; 7];
        let mut acc = 0u32;
        for f in (0..7).rev() {
            pos[f] = acc;
            acc += widths[f];
        }
        KeyLayout {
            widths,
            total,
            pos,
            max_win,
        }
    }

    fn fast_key(&self, lay: &KeyLayout) -> FastKey {
        let w = lay.widths;
        FastKey {
            sh: self.sh,
            w: self.w64,
            log2: self.window.map(|w| w.trailing_zeros()),
            inv: self.window.map(|w| 1.0 / w as f64),
            masks: [w[3], w[4], w[5]].map(|w| if w == 0 { 0 } else { u64::MAX >> (64 - w) }),
            pos: lay.pos,
        }
    }
}

const LIMIT: i64 = 1 << 31;

/// FlatFormer window order, packed when key and token index fit one word.
/// `cap`: capacity to give the packed words (≥ N; the padded plan size when the plan
/// will be built in them). With `plan` (sample counts, group size) the plan itself may
/// come back ([`Sorted::Plan`], built by the fused path).
fn window_sorted(
    coords: &[i64],
    batch: Option<&[i64]>,
    window: [u32; 3],
    axis: Axis,
    shift: bool,
    cap: usize,
    plan: Option<(&[usize], usize)>,
) -> Result<Sorted> {
    if coords.len() % 3 != 0 {
        return Err(CoreError::arg(
            "grid_coords",
            "shape (N, 3)",
            format!("{} values (not a multiple of 3)", coords.len()),
        ));
    }
    let n = coords.len() / 3;
    if let Some(i) = window.iter().position(|&w| w == 0 || w > 1 << 21) {
        return Err(CoreError::arg(
            "window",
            "three integers in 1..=2^21",
            format!("{window:?} (axis {i})"),
        ));
    }
    let geo = Geometry::new(window, axis, shift);
    if let Some((counts, g)) = plan
        && let Some(p) = fused_plan(coords, batch, &geo, axis, cap, counts, g)?
    {
        return Ok(Sorted::Plan(p));
    }
    // OR of every value per axis: its bit length is the maximum's, so it bounds the
    // windows as tightly as the maximum does up to one bit, and any value outside
    // [0, 2^31) (negative ones set bit 63) shows in it; unlike min/max it vectorises
    let or3 = coords
        .par_chunks(CHUNK * 3)
        .map(|rows| {
            let mut acc = [0u64; 24];
            let mut blocks = rows.chunks_exact(24);
            for b in &mut blocks {
                for (a, &v) in acc.iter_mut().zip(b) {
                    *a |= v as u64;
                }
            }
            let mut o = [0u64; 3];
            for (j, &a) in acc.iter().enumerate() {
                o[j % 3] |= a;
            }
            // rows and blocks start at multiples of 3: position mod 3 is the axis
            for (j, &v) in blocks.remainder().iter().enumerate() {
                o[j % 3] |= v as u64;
            }
            o
        })
        .reduce(|| [0u64; 3], |x, y| [x[0] | y[0], x[1] | y[1], x[2] | y[2]]);
    if or3.iter().any(|&v| v >= LIMIT as u64) {
        let i = coords
            .iter()
            .position(|&v| !(0..LIMIT).contains(&v))
            .expect("an out-of-range value exists");
        return Err(CoreError::arg(
            "grid_coords",
            "coordinates in [0, 2^31)",
            format!("{} at row {}, axis {}", coords[i], i / 3, i % 3),
        ));
    }
    let max_b = match batch {
        Some(b) => crate::curve::check_batch(b, n)?,
        None => 0,
    };
    let Geometry { sh, w64, a, c, .. } = geo;
    let lay = geo.layout(or3, max_b);
    let (total, pos, max_win) = (lay.total, lay.pos, lay.max_win);
    let wk = WindowKey {
        sh,
        w: w64,
        div: w64.map(FastDiv::new),
        a,
        c,
        max_wc: max_win[c],
        pos,
    };
    let batch = batch.unwrap_or(&[]);
    let fields = |i: usize| {
        wk.fields(
            &coords[3 * i..3 * i + 3],
            if batch.is_empty() { 0 } else { batch[i] as u64 },
        )
    };
    if total <= 64 {
        let fast = geo.fast_key(&lay);
        let idx_bits = bit_length(n.saturating_sub(1) as u64);
        if total + idx_bits <= 64 {
            // key and index in one word, filled by a loop the key computation inlines into
            // SAFETY: fill_packed writes every item
            let mut items: Vec<u64> = unsafe { vec_for_overwrite_cap(n, cap) };
            // power-of-two windows: shifts and masks, which vectorise (the general
            // path's 64×64→128 multiplies do not)
            let pow2 = window.iter().all(|w| w.is_power_of_two());
            let f = match (axis, pow2) {
                (Axis::X, true) => fill_packed::<true, true>,
                (Axis::X, false) => fill_packed::<true, false>,
                (Axis::Y, true) => fill_packed::<false, true>,
                (Axis::Y, false) => fill_packed::<false, false>,
            };
            f(&fast, coords, batch, idx_bits, &mut items);
            let spare = radix_sort_spare(&mut items, idx_bits, idx_bits + total);
            return Ok(Sorted::Packed {
                items,
                spare,
                mask: (1u64 << idx_bits) - 1,
            });
        }
        let perm = match axis {
            Axis::X => argsort_by_key(n, total, |i| {
                fast.key::<true, false>(&coords[3 * i..3 * i + 3], batch_at(batch, i))
            }),
            Axis::Y => argsort_by_key(n, total, |i| {
                fast.key::<false, false>(&coords[3 * i..3 * i + 3], batch_at(batch, i))
            }),
        };
        perm.map(Sorted::Perm)
    } else {
        let key = |i: usize| -> u128 {
            let f = fields(i);
            f.iter()
                .zip(&wk.pos)
                .fold(0u128, |k, (&v, &p)| k | ((v as u128) << p))
        };
        let mut lo = vec![0u64; n];
        let mut hi = vec![0u64; n];
        lo.par_chunks_mut(CHUNK)
            .zip(hi.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, (l, h))| {
                for (j, (ol, oh)) in l.iter_mut().zip(h.iter_mut()).enumerate() {
                    let k = key(c * CHUNK + j);
                    *ol = k as u64;
                    *oh = (k >> 64) as u64;
                }
            });
        argsort_pair(Some((&hi, total - 64)), &lo, 64).map(Sorted::Perm)
    }
}

/// A window order: packed `key << idx_bits | token` words (sorted), or a plain permutation.
enum Sorted {
    /// `spare`: the sort's other buffer (N words), if it made one
    Packed {
        items: Vec<u64>,
        spare: Option<Vec<u64>>,
        mask: u64,
    },
    Perm(Vec<u32>),
    /// the plan itself (fused path)
    Plan(FlattenPlan),
}

/// FlatFormer window order: the stable permutation (sorted position → token).
pub fn window_order(
    coords: &[i64],
    batch: Option<&[i64]>,
    window: [u32; 3],
    axis: Axis,
    shift: bool,
) -> Result<Vec<u32>> {
    let n = coords.len() / 3;
    Ok(
        match window_sorted(coords, batch, window, axis, shift, n, None)? {
            Sorted::Perm(p) => p,
            Sorted::Plan(_) => unreachable!("no plan was asked for"),
            Sorted::Packed { items, mask, .. } => {
                items.iter().map(|&it| (it & mask) as u32).collect()
            }
        },
    )
}

/// Below this many tokens the plan takes the unfused passes.
const FUSED_MIN: usize = 1 << 16;

/// The plan in one pass over the coordinates plus one sort, when key and token index fit
/// one word and the sort takes the hybrid (leading-digit) path; `Ok(None)` where it does
/// not apply (the caller then runs the unfused passes, which also report bad input).
///
/// - Bounds: the key layout only depends on the bit length of each axis' OR, so it is
///   taken from a sample of rows, and the key pass ORs every coordinate as it goes; if the
///   full OR is longer on some axis the pass reruns once with it (same keys as from a
///   separate bound pass either way).
/// - The key pass also counts the sort's leading digit, per chunk while in cache.
/// - After the leading-digit scatter, every bucket is sorted in cache and its words turned
///   into gather entries (their tokens) at once; scatter goes into the sort's old buffer.
fn fused_plan(
    coords: &[i64],
    batch: Option<&[i64]>,
    geo: &Geometry,
    axis: Axis,
    cap: usize,
    counts: &[usize],
    g: usize,
) -> Result<Option<FlattenPlan>> {
    let n = coords.len() / 3;
    if n < FUSED_MIN || n > u32::MAX as usize {
        return Ok(None);
    }
    // every 1/4096 of the rows plus the last one
    let mut est = [0u64; 3];
    for i in (0..n).step_by((n / 4096).max(1)).chain([n - 1]) {
        for (e, &v) in est.iter_mut().zip(&coords[3 * i..3 * i + 3]) {
            *e |= v as u64;
        }
    }
    if est.iter().any(|&v| v >= LIMIT as u64) {
        return Ok(None);
    }
    let max_b = match batch {
        Some(b) => match crate::curve::check_batch(b, n) {
            Ok(m) => m,
            // the unfused path reports coordinate errors before batch ones
            Err(_) => return Ok(None),
        },
        None => 0,
    };
    let batch = batch.unwrap_or(&[]);
    let idx_bits = bit_length((n - 1) as u64);
    let pow2 = geo.window.iter().all(|w| w.is_power_of_two());
    // SAFETY: the key pass below writes every item before anything reads it
    let mut items: Vec<u64> = unsafe { vec_for_overwrite_cap(n, cap) };
    for _ in 0..2 {
        let lay = geo.layout(est, max_b);
        let bits = idx_bits + lay.total;
        if bits > 64 || !crate::sort::is_hybrid(idx_bits, bits) {
            return Ok(None);
        }
        let top_bits = crate::sort::hybrid_top_bits(idx_bits, bits);
        let top = bits - top_bits;
        let mask = (1usize << top_bits) - 1;
        let fast = geo.fast_key(&lay);
        // one thread still takes four chunks: the leading-digit scatter interleaves them
        // (see `scatter_with_hists`), ~1 ms less per 1M words
        let chunks = match crate::sort::chunk_count(n) {
            1 => crate::sort::SERIAL_CHUNKS,
            c => c,
        };
        let chunk_len = n.div_ceil(chunks);
        let f = match (axis, pow2) {
            (Axis::X, true) => fused_fill::<true, true>,
            (Axis::X, false) => fused_fill::<true, false>,
            (Axis::Y, true) => fused_fill::<false, true>,
            (Axis::Y, false) => fused_fill::<false, false>,
        };
        let key = FusedKey {
            fast,
            idx_bits,
            top,
            mask,
        };
        let parts: Vec<([u64; 3], Vec<u32>)> = if chunks == 1 {
            vec![f(&key, coords, batch, 0, &mut items)]
        } else {
            items
                .par_chunks_mut(chunk_len)
                .enumerate()
                .map(|(r, dst)| f(&key, coords, batch, r * chunk_len, dst))
                .collect()
        };
        let or3 = parts.iter().fold([0u64; 3], |o, (p, _)| {
            [o[0] | p[0], o[1] | p[1], o[2] | p[2]]
        });
        if or3.iter().any(|&v| v >= LIMIT as u64) {
            return Ok(None);
        }
        if (0..3).any(|k| bit_length(or3[k]) != bit_length(est[k])) {
            est = or3; // the sample missed a top bit: once more with the exact bounds
            continue;
        }
        let hists: Vec<Vec<u32>> = parts.into_iter().map(|(_, h)| h).collect();
        return plan_from_hists(items, &hists, chunk_len, idx_bits, top, mask, counts, g).map(Some);
    }
    Ok(None)
}

/// Key parameters of the fused pass.
struct FusedKey {
    fast: FastKey,
    idx_bits: u32,
    /// leading sort digit: `(word >> top) & mask`
    top: u32,
    mask: usize,
}

/// Packed words of the cells `base..base + dst.len()`, the OR of their coordinates per
/// axis, and the histogram of the sort's leading digit.
fn fused_fill<const AXIS_X: bool, const POW2: bool>(
    key: &FusedKey,
    coords: &[i64],
    batch: &[i64],
    base: usize,
    dst: &mut [u64],
) -> ([u64; 3], Vec<u32>) {
    let avx2 = has_avx2();
    // four interleaved count tables: neighbouring cells mostly share a window (and so a
    // digit), and one table would chain every increment on the previous one's store
    let digits = key.mask + 1;
    let mut hist4 = vec![0u32; 4 * digits];
    let mut or = [0u64; 3];
    let (top, mask) = (key.top, key.mask);
    for (j, sub) in dst.chunks_mut(CHUNK).enumerate() {
        let o = fill_rows::<AXIS_X, POW2>(
            &key.fast,
            coords,
            batch,
            key.idx_bits,
            base + j * CHUNK,
            sub,
            avx2,
        );
        for k in 0..3 {
            or[k] |= o[k];
        }
        let (h01, h23) = hist4.split_at_mut(2 * digits);
        let (h0, h1) = h01.split_at_mut(digits);
        let (h2, h3) = h23.split_at_mut(digits);
        let mut quads = sub.chunks_exact(4);
        for q in &mut quads {
            h0[(q[0] >> top) as usize & mask] += 1;
            h1[(q[1] >> top) as usize & mask] += 1;
            h2[(q[2] >> top) as usize & mask] += 1;
            h3[(q[3] >> top) as usize & mask] += 1;
        }
        for &w in quads.remainder() {
            h0[(w >> top) as usize & mask] += 1;
        }
    }
    let (h0, rest) = hist4.split_at(digits);
    let hist: Vec<u32> = (0..digits)
        .map(|d| h0[d] + rest[d] + rest[digits + d] + rest[2 * digits + d])
        .collect();
    (or, hist)
}

/// Sort the packed words by the leading digit counted in `hists`, then per bucket in
/// cache, and build the plan in the sort's two buffers (see [`fused_plan`]).
#[allow(clippy::too_many_arguments)]
fn plan_from_hists(
    mut items: Vec<u64>,
    hists: &[Vec<u32>],
    chunk_len: usize,
    idx_bits: u32,
    top: u32,
    mask: usize,
    counts: &[usize],
    g: usize,
) -> Result<FlattenPlan> {
    let n = items.len();
    let layout = Layout::new(counts, g)?;
    let m = layout.padded();
    debug_assert_eq!(layout.start[counts.len()], n);
    let (start, pad_start) = (&layout.start, &layout.pad_start);
    let tok_mask = (1u64 << idx_bits) - 1;
    // gather: the token of every sorted word, written while its bucket is in cache (as
    // the sort copies it back from its scratch, where it does)
    let sort_bucket = |b: &mut [u64], scratch: &mut Vec<u64>| {
        if b.len() <= 64 {
            // the whole words are distinct and their low bits are the token, ascending
            // within the bucket after the stable scatter: sorting whole words is the
            // stable sort by key
            b.sort_unstable();
            for w in b.iter_mut() {
                *w &= tok_mask;
            }
        } else {
            crate::sort::small_lsd_map(b, idx_bits, top, scratch, |w| w & tok_mask);
        }
    };
    let visit = |_: usize, _: &mut [u64], _: SendPtr<u64>| {};
    // the sorted buffer gets this capacity too: room for the padded gather
    items.reserve_exact(m - n);
    // SAFETY: `hists` count the leading digit of exactly the `chunk_len` chunks of `items`
    let mut scatter = unsafe {
        crate::sort::hybrid_from_hists(&mut items, hists, chunk_len, top, mask, sort_bucket, visit)
    };
    // scatter: every token learns its slot, in a pass of its own (writing it from the
    // bucket loop measured slower: its scattered stores competed with the in-cache sort;
    // so did a two-pass version grouping (slot, token) pairs by token range first)
    let sdst = SendPtr(scatter.as_mut_ptr());
    let sorted = &items;
    (0..n.div_ceil(CHUNK)).into_par_iter().for_each(|c| {
        let sdst = sdst;
        let (k0, k1) = (c * CHUNK, ((c + 1) * CHUNK).min(n));
        // one run per sample in the chunk: slot = sorted position + the sample's padding
        // so far, so the inner loop has no per-item sample bookkeeping
        let mut s = start.partition_point(|&o| o <= k0) - 1;
        let mut a = k0;
        while a < k1 {
            let b = start[s + 1].min(k1);
            let shift = pad_start[s] - start[s];
            for (k, &w) in (a..b).zip(&sorted[a..b]) {
                let t = w as usize;
                // the targets are random: ask for the line of a later one now (cold
                // caches: ~1.5 ms less per 1M tokens)
                if let Some(&ahead) = sorted.get(k + PREFETCH_AHEAD) {
                    prefetch(sdst.0, ahead as usize, n);
                }
                assert!(t < n);
                // SAFETY: the tokens of the sorted words are a permutation of 0..n (each
                // word was made with its own index), so all writes go to distinct
                // elements of `scatter` (n items), in bounds by the assert
                unsafe { *sdst.0.add(t) = (k + shift) as u64 };
            }
            a = b;
            s += 1;
        }
    });
    assert!(items.capacity() >= m);
    if counts.len() > 1 {
        // SAFETY: capacity ≥ m (asserted); slots n..m are written below (real ones by the
        // moves, padding by `pad`) before being read
        unsafe { items.set_len(m) };
        // samples move to their padded starts (≥ their sorted starts), the last first,
        // so no sample overwrites one not yet moved
        for s in (0..counts.len()).rev() {
            if pad_start[s] != start[s] {
                items.copy_within(start[s]..start[s + 1], pad_start[s]);
            }
        }
    } else {
        // SAFETY: capacity ≥ m (asserted); slots n..m are padding, written by `pad`
        unsafe { items.set_len(m) };
    }
    let mut gather = u64_vec_as_i64(items);
    layout.pad(counts, g, &mut gather);
    Ok(layout.into_plan(gather, u64_vec_as_i64(scatter), g))
}

/// How many sorted positions ahead the scatter-slot pass prefetches its target.
const PREFETCH_AHEAD: usize = 64;

/// `key << idx_bits | index` for every cell, in parallel chunks.
fn fill_packed<const AXIS_X: bool, const POW2: bool>(
    fast: &FastKey,
    coords: &[i64],
    batch: &[i64],
    idx_bits: u32,
    items: &mut [u64],
) {
    let avx2 = has_avx2();
    items
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, dst)| {
            fill_rows::<AXIS_X, POW2>(fast, coords, batch, idx_bits, c * CHUNK, dst, avx2);
        });
}

/// Whether the AVX2 build of [`fill_chunk`] may run (checked once per call).
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`fill_chunk`] for the cells `base..base + dst.len()`: slices their rows and batch ids
/// and takes the AVX2 build when `avx2` (from [`has_avx2`]).
#[inline(always)]
fn fill_rows<const AXIS_X: bool, const POW2: bool>(
    fast: &FastKey,
    coords: &[i64],
    batch: &[i64],
    idx_bits: u32,
    base: usize,
    dst: &mut [u64],
    avx2: bool,
) -> [u64; 3] {
    let rows = &coords[3 * base..3 * (base + dst.len())];
    let b = if batch.is_empty() {
        batch
    } else {
        &batch[base..base + dst.len()]
    };
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` comes from `has_avx2`, a run-time check of the CPU
        return unsafe { fill_chunk_avx2::<AXIS_X, POW2>(fast, rows, b, idx_bits, base, dst) };
    }
    let _ = avx2;
    fill_chunk::<AXIS_X, POW2>(fast, rows, b, idx_bits, base, dst)
}

/// [`fill_chunk`] compiled for AVX2 (16 vector registers of 4 lanes: the general
/// window path no longer spills, ~2× faster than the baseline SSE2 build).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fill_chunk_avx2<const AXIS_X: bool, const POW2: bool>(
    fast: &FastKey,
    rows: &[i64],
    batch: &[i64],
    idx_bits: u32,
    base: usize,
    dst: &mut [u64],
) -> [u64; 3] {
    fill_chunk::<AXIS_X, POW2>(fast, rows, batch, idx_bits, base, dst)
}

/// Packed words of one chunk of cells (`batch` empty: one sample); returns the OR of
/// the chunk's coordinates per axis.
#[inline(always)]
fn fill_chunk<const AXIS_X: bool, const POW2: bool>(
    fast: &FastKey,
    rows: &[i64],
    batch: &[i64],
    idx_bits: u32,
    base: usize,
    dst: &mut [u64],
) -> [u64; 3] {
    // a local copy: through the reference the loop compiled to a slow 2-lane SIMD form
    // (~14 ns per point instead of ~6)
    let fk = *fast;
    let mut idx = base as u64;
    let mut or = [0u64; 3];
    if batch.is_empty() {
        for (it, p) in dst.iter_mut().zip(rows.chunks_exact(3)) {
            *it = (fk.key::<AXIS_X, POW2>(p, 0) << idx_bits) | idx;
            idx += 1;
            or[0] |= p[0] as u64;
            or[1] |= p[1] as u64;
            or[2] |= p[2] as u64;
        }
    } else {
        for ((it, p), &bv) in dst.iter_mut().zip(rows.chunks_exact(3)).zip(batch) {
            *it = (fk.key::<AXIS_X, POW2>(p, bv as u64) << idx_bits) | idx;
            idx += 1;
            or[0] |= p[0] as u64;
            or[1] |= p[1] as u64;
            or[2] |= p[2] as u64;
        }
    }
    or
}

#[inline(always)]
fn batch_at(batch: &[i64], i: usize) -> u64 {
    if batch.is_empty() { 0 } else { batch[i] as u64 }
}

/// A cell moved by the window shift.
#[inline(always)]
fn shifted(p: &[i64], sh: &[u64; 3]) -> [u64; 3] {
    [
        p[0] as u64 + sh[0],
        p[1] as u64 + sh[1],
        p[2] as u64 + sh[2],
    ]
}

/// Window index and in-window offset per axis of a shifted cell (any window sizes).
#[inline(always)]
fn split_window(q: [u64; 3], w: &[u64; 3], div: &[FastDiv; 3]) -> ([u64; 3], [u64; 3]) {
    let win = [div[0].div(q[0]), div[1].div(q[1]), div[2].div(q[2])];
    let off = [
        q[0] - win[0] * w[0],
        q[1] - win[1] * w[1],
        q[2] - win[2] * w[2],
    ];
    (win, off)
}

/// [`split_window`] through f64: `q · (1/w)` rounded to the nearest integer is ⌊q/w⌋ or
/// ⌊q/w⌋ + 1 (q < 2^33 and w < 2^22, so the product is off by < 2^-18), and the exact
/// integer offset `q − r·w` says which; one correction makes it exact. Unlike the 128-bit
/// multiply of [`FastDiv`], every step vectorises with baseline SSE2.
#[inline(always)]
fn split_window_f64(q: [u64; 3], w: &[u64; 3], inv: &[f64; 3]) -> ([u64; 3], [u64; 3]) {
    // 2^52: adding it to a non-negative double < 2^52 leaves the rounded integer in the
    // low mantissa bits, and `bits | 2^52's bits` − 2^52 converts an integer < 2^52 exactly
    const TWO52_BITS: u64 = 0x4330_0000_0000_0000;
    const LOW52: u64 = (1 << 52) - 1;
    let two52 = f64::from_bits(TWO52_BITS);
    let mut win = [0u64; 3];
    let mut off = [0u64; 3];
    for k in 0..3 {
        debug_assert!(q[k] < 1 << 33 && w[k] < 1 << 22);
        let x = f64::from_bits(q[k] | TWO52_BITS) - two52;
        let r = (x * inv[k] + two52).to_bits() & LOW52;
        let o = q[k].wrapping_sub(r.wrapping_mul(w[k]));
        // o < 0 (as i64) iff r = ⌊q/w⌋ + 1
        let over = ((o as i64) >> 63) as u64; // all ones or zero
        win[k] = r.wrapping_add(over); // r − 1 when over
        off[k] = o.wrapping_add(over & w[k]);
    }
    (win, off)
}

#[cfg(test)]
#[test]
fn f64_window_split_is_exact() {
    let mut next = crate::testing::xorshift(7u64);
    for w in (1u64..70).chain([1 << 21, (1 << 21) - 1, 1_000_003, 13, 9]) {
        let ws = [w; 3];
        let inv = [1.0 / w as f64; 3];
        let check = |q: u64| {
            let (win, off) = split_window_f64([q; 3], &ws, &inv);
            assert_eq!((win[0], off[0]), (q / w, q % w), "{q} / {w}");
        };
        for q in (0u64..500).chain([(1 << 31) + (1 << 20), (1 << 31) - 1, 1 << 31]) {
            check(q);
        }
        // multiples and their neighbours near the top of the range (where rounding bites)
        for m in [
            (1u64 << 31) / w,
            ((1u64 << 31) + (1 << 20)) / w,
            12345 % ((1 << 31) / w),
        ] {
            for q in [m * w, m * w + 1, (m * w).saturating_sub(1)] {
                check(q);
            }
        }
        for _ in 0..3000 {
            let s = next();
            check(s % ((1 << 31) + (1 << 20)));
        }
    }
}

/// The packed 64-bit window key, branch-free: a reversal is an xor with the field's
/// all-ones mask (order-equivalent to `max − v` within the field's width).
#[derive(Clone, Copy)]
struct FastKey {
    sh: [u64; 3],
    w: [u64; 3],
    /// log2 of the window sizes (used only when all are powers of two)
    log2: [u32; 3],
    /// 1 / window size (the general path)
    inv: [f64; 3],
    /// all-ones masks of the Wc', oc', oa' fields
    masks: [u64; 3],
    pos: [u32; 7],
}

impl FastKey {
    #[inline(always)]
    /// `POW2`: every window size is a power of two (`log2` holds the exponents).
    fn key<const AXIS_X: bool, const POW2: bool>(&self, p: &[i64], b: u64) -> u64 {
        let q = shifted(p, &self.sh);
        let (win, off) = if POW2 {
            let l = self.log2;
            (
                [q[0] >> l[0], q[1] >> l[1], q[2] >> l[2]],
                [
                    q[0] & (self.w[0] - 1),
                    q[1] & (self.w[1] - 1),
                    q[2] & (self.w[2] - 1),
                ],
            )
        } else {
            split_window_f64(q, &self.w, &self.inv)
        };
        let (wa, wc, oa, oc) = if AXIS_X {
            (win[1], win[0], off[1], off[0])
        } else {
            (win[0], win[1], off[0], off[1])
        };
        let odd_row = (wa & 1).wrapping_neg();
        let oa = oa ^ (((oc + wa) & 1).wrapping_neg() & self.masks[2]);
        let wc = wc ^ (odd_row & self.masks[0]);
        let oc = oc ^ (odd_row & self.masks[1]);
        let pos = &self.pos;
        // a zero-width field is 0 and may sit at bit 64: wrapping_shl keeps it 0
        b.wrapping_shl(pos[0])
            | win[2].wrapping_shl(pos[1])
            | wa.wrapping_shl(pos[2])
            | wc.wrapping_shl(pos[3])
            | oc.wrapping_shl(pos[4])
            | oa.wrapping_shl(pos[5])
            | off[2]
    }
}

/// Everything needed to turn one cell into its window-order fields.
struct WindowKey {
    sh: [u64; 3],
    w: [u64; 3],
    div: [FastDiv; 3],
    /// outer window axis `a`, inner window axis `c` (the traversal runs along c)
    a: usize,
    c: usize,
    max_wc: u64,
    pos: [u32; 7],
}

impl WindowKey {
    /// (batch, Z, Wa, Wc', oc', oa', w) of one cell, outermost first.
    #[inline(always)]
    fn fields(&self, p: &[i64], b: u64) -> [u64; 7] {
        let (a, c) = (self.a, self.c);
        let (win, off) = split_window(shifted(p, &self.sh), &self.w, &self.div);
        let odd_row = win[a] & 1 == 1;
        let wc = if odd_row {
            self.max_wc - win[c]
        } else {
            win[c]
        };
        let oc = if odd_row {
            self.w[c] - 1 - off[c]
        } else {
            off[c]
        };
        let oa = if (off[c] + win[a]) & 1 == 1 {
            self.w[a] - 1 - off[a]
        } else {
            off[a]
        };
        [b, win[2], win[a], wc, oc, oa, off[2]]
    }
}

/// FlatFormer flattening plan: window sort, then equal-size groups with per-sample tails.
pub fn flatten(
    coords: &[i64],
    batch: Option<&[i64]>,
    window: [u32; 3],
    group_size: usize,
    axis: Axis,
    shift: bool,
) -> Result<FlattenPlan> {
    if group_size == 0 {
        return Err(CoreError::arg("group_size", "a positive integer", 0));
    }
    let n = coords.len() / 3;
    // counts first, so the sort's words can be allocated with room for the padded plan;
    // their errors are reported after window_sorted's, as before
    let counts = sample_counts(batch, n);
    let g = group_size;
    let cap = counts.as_ref().map_or(n, |c| {
        c.iter()
            .map(|&c| if c <= g { c } else { c.div_ceil(g) * g })
            .sum()
    });
    let want = counts.as_ref().ok().map(|c| (&c[..], g));
    let sorted = window_sorted(coords, batch, window, axis, shift, cap, want)?;
    let counts = counts?;
    match sorted {
        Sorted::Plan(p) => Ok(p),
        Sorted::Perm(perm) => build_plan(&perm, &counts, group_size),
        Sorted::Packed { items, spare, mask } => {
            plan_from_packed(items, spare, mask, &counts, group_size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s >> 33
        }
    }

    #[test]
    fn plan_reads_every_token_once_and_stays_in_sample() {
        let mut r = lcg(3);
        let n = 5000;
        let coords: Vec<i64> = (0..3 * n).map(|_| (r() % 200) as i64).collect();
        // samples of very different sizes, including one shorter than a group
        let batch: Vec<i64> = (0..n)
            .map(|i| if i < 10 { 3 } else { (r() % 3) as i64 })
            .collect();
        for g in [1usize, 7, 64, 6000] {
            let p = flatten(&coords, Some(&batch), [9, 9, 4], g, Axis::X, true).unwrap();
            for (i, &s) in p.scatter.iter().enumerate() {
                assert_eq!(p.gather[s as usize], i as i64);
            }
            let mut hits = vec![0; n];
            for &t in &p.gather {
                hits[t as usize] += 1;
            }
            assert!(hits.iter().all(|&h| h >= 1));
            for (k, w) in p.cu_seqlens.windows(2).enumerate() {
                let (lo, hi) = (w[0] as usize, w[1] as usize);
                assert!(hi - lo <= g);
                for q in lo..hi {
                    assert_eq!(batch[p.gather[q] as usize], p.seq_sample[k] as i64);
                }
            }
            // the 10-token sample is one sequence when g >= 10
            let short = p.seq_sample.iter().filter(|&&s| s == 3).count();
            assert_eq!(short, if g >= 10 { 1 } else { 10usize.div_ceil(g) });
        }
    }

    #[test]
    fn same_plan_for_any_thread_count() {
        let mut r = lcg(11);
        let n = 200_000;
        let coords: Vec<i64> = (0..3 * n).map(|_| (r() % 3000) as i64).collect();
        let batch: Vec<i64> = (0..n).map(|i| (i * 4 / n) as i64).collect();
        // general and power-of-two windows; several samples and one (in-place paths)
        for (window, b) in [
            ([13, 13, 32], Some(&batch[..])),
            ([16, 16, 16], Some(&batch[..])),
            ([16, 16, 16], None),
            ([13, 13, 32], None),
        ] {
            let plans: Vec<_> = [1, 2, 3]
                .iter()
                .map(|&t| {
                    crate::testing::with_threads(t, || {
                        flatten(&coords, b, window, 144, Axis::Y, false).unwrap()
                    })
                })
                .collect();
            assert_eq!(plans[0], plans[1]);
            assert_eq!(plans[0], plans[2]);
            let order = window_order(&coords, b, window, Axis::Y, false).unwrap();
            let real: Vec<i64> = {
                let mut slots = plans[0].scatter.clone();
                slots.sort_unstable();
                slots.iter().map(|&s| plans[0].gather[s as usize]).collect()
            };
            assert!(real.iter().zip(&order).all(|(&a, &b)| a == b as i64));
        }
    }

    #[test]
    fn fused_plan_equals_unfused() {
        // the fused path (sampled bounds, key pass with histograms, per-bucket plan) must
        // give the plan built from the unfused window order; an odd N leaves a tail for the
        // 4-wide key loop, and one far cell on an unsampled row (the sample takes every
        // (N / 4096)-th row and the last) forces the rerun with the exact bounds
        let mut r = lcg(5);
        let n = 150_001;
        let mut coords: Vec<i64> = (0..3 * n).map(|_| (r() % 700) as i64).collect();
        let batch: Vec<i64> = (0..n).map(|i| (i * 3 / n) as i64).collect();
        // samples 0, 2, 4: the empty samples 1 and 3 sit inside a chunk of the scatter pass
        let gapped: Vec<i64> = batch.iter().map(|&b| 2 * b).collect();
        for far in [false, true] {
            if far {
                coords[3 + 1] = 40_000; // row 1, y
            }
            for (window, b, axis, shift) in [
                ([16, 16, 16], None, Axis::X, false),
                ([16, 8, 4], Some(&batch[..]), Axis::Y, true),
                ([32, 16, 8], Some(&batch[..]), Axis::X, true),
                ([13, 13, 32], None, Axis::Y, true),
                ([13, 9, 5], Some(&batch[..]), Axis::X, false),
                ([16, 16, 16], Some(&gapped[..]), Axis::X, false),
            ] {
                let counts = sample_counts(b, n).unwrap();
                for g in [64usize, 100] {
                    let order = window_order(&coords, b, window, axis, shift).unwrap();
                    let want = build_plan(&order, &counts, g).unwrap();
                    let got = flatten(&coords, b, window, g, axis, shift).unwrap();
                    assert_eq!(
                        got, want,
                        "{window:?} {axis:?} shift={shift} g={g} far={far}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_inputs_are_named() {
        let e = |r: Result<FlattenPlan>| match r {
            Err(CoreError::InvalidArgument { name, .. }) => name,
            other => panic!("expected an error, got {other:?}"),
        };
        assert_eq!(
            e(flatten(&[0, 0, -1], None, [2, 2, 2], 4, Axis::X, false)),
            "grid_coords"
        );
        assert_eq!(
            e(flatten(&[0, 0, 1], None, [0, 2, 2], 4, Axis::X, false)),
            "window"
        );
        assert_eq!(
            e(flatten(&[0, 0, 1], None, [2, 2, 2], 0, Axis::X, false)),
            "group_size"
        );
        assert_eq!(
            e(flatten(
                &[0, 0, 1],
                Some(&[0, 1]),
                [2, 2, 2],
                3,
                Axis::X,
                false
            )),
            "batch"
        );
        assert_eq!(e(plan_from_perm(&[0, 0], None, 3)), "perm");
        assert_eq!(e(plan_from_perm(&[1, 0], Some(&[0, 1]), 3)), "perm");
    }
}
