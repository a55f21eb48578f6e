//! Octree construction from points, bit-compatible with ocnn's `Octree.build_octree`.
//!
//! Per sample: quantise points into the sample's box, Morton-encode, radix-sort,
//! collapse runs into non-empty leaves (or, for large clouds with many points per leaf,
//! dedup leaf keys through a hash table and sort only the distinct ones: [`hash_leaves`]),
//! then walk up the levels giving every split node all 8 children (empty ones included,
//! exactly as ocnn). Levels `0..=full_depth` are dense. Samples are built independently
//! and concatenated (flat batching).

use crate::error::{CoreError, Result};
use crate::leaf_table::{BLOCK_MAX, LeafTable};
use crate::morton;
use crate::sort::RadixKey;

use crate::MAX_DEPTH;
use crate::mem::SendPtr;
use rayon::prelude::*;

/// Float types accepted as point coordinates; arithmetic stays in that precision so
/// float32 input quantises exactly as torch does in ocnn.
pub trait Coord: Copy + Send + Sync + PartialOrd + 'static {
    /// See [`quantise12_generic`].
    fn quantise12(
        p: &[Self],
        o: &[Self; 12],
        i: &[Self; 12],
        top: Self,
        last: Self,
        q: &mut [u32],
    ) -> bool;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn is_finite(self) -> bool;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn floor(self) -> Self;
    /// Truncating conversion of a value already clamped into [0, 2^21).
    fn to_u32(self) -> u32;
    /// IEEE maxNum / minNum (a NaN operand yields the other one).
    fn fmax(self, o: Self) -> Self;
    fn fmin(self, o: Self) -> Self;
    /// [`Coord::to_u32`] without the saturation checks.
    ///
    /// # Safety
    /// `self` must be finite and in `[0, 2^21)`.
    unsafe fn to_u32_unchecked(self) -> u32;
}

macro_rules! impl_coord {
    ($t:ty, $q12:ident) => {
        impl Coord for $t {
            #[inline(always)]
            fn quantise12(
                p: &[Self],
                o: &[Self; 12],
                i: &[Self; 12],
                top: Self,
                last: Self,
                q: &mut [u32],
            ) -> bool {
                $q12(p, o, i, top, last, q)
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self - o
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self * o
            }
            #[inline(always)]
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            #[inline(always)]
            fn to_u32(self) -> u32 {
                self as u32
            }
            #[inline(always)]
            fn fmax(self, o: Self) -> Self {
                // written as a select so it vectorises to maxps/maxpd (NaN self -> o)
                if self > o { self } else { o }
            }
            #[inline(always)]
            fn fmin(self, o: Self) -> Self {
                if self < o { self } else { o }
            }
            #[inline(always)]
            unsafe fn to_u32_unchecked(self) -> u32 {
                // SAFETY: the caller guarantees a finite value in [0, 2^21)
                unsafe { self.to_int_unchecked::<i32>() as u32 }
            }
        }
    };
}
impl_coord!(f32, quantise12_f32);
impl_coord!(f64, quantise12_generic);

/// Scale 12 coordinates (4 points) into grid units, clamp into `[0, last]` and truncate;
/// true when every scaled value was inside `[0, top]` (false for NaN).
#[inline(always)]
fn quantise12_generic<T: Coord>(
    p: &[T],
    o: &[T; 12],
    i: &[T; 12],
    top: T,
    last: T,
    q: &mut [u32],
) -> bool {
    let zero = T::from_f64(0.0);
    let mut inside = true;
    for l in 0..12 {
        let t = p[l].sub(o[l]).mul(i[l]);
        inside &= (t >= zero) & (t <= top);
        // SAFETY: max/min map NaN and out-of-range values into [0, last] ⊂ [0, 2^21)
        q[l] = unsafe { t.fmax(zero).fmin(last).to_u32_unchecked() };
    }
    inside
}

/// [`quantise12_generic`] for float32 in SSE2 (baseline on x86_64): same arithmetic,
/// 4 lanes at a time (`maxps` returns its second operand for a NaN, like `fmax`).
#[inline(always)]
fn quantise12_f32(
    p: &[f32],
    o: &[f32; 12],
    i: &[f32; 12],
    top: f32,
    last: f32,
    q: &mut [u32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        assert!(p.len() >= 12 && q.len() >= 12);
        // SAFETY: SSE2 is part of x86_64; every load/store is unaligned and in bounds
        unsafe {
            let zero = _mm_setzero_ps();
            let topv = _mm_set1_ps(top);
            let lastv = _mm_set1_ps(last);
            let mut ok = _mm_castsi128_ps(_mm_set1_epi32(-1));
            for k in 0..3 {
                let t = _mm_mul_ps(
                    _mm_sub_ps(
                        _mm_loadu_ps(p.as_ptr().add(4 * k)),
                        _mm_loadu_ps(o.as_ptr().add(4 * k)),
                    ),
                    _mm_loadu_ps(i.as_ptr().add(4 * k)),
                );
                ok = _mm_and_ps(ok, _mm_and_ps(_mm_cmpge_ps(t, zero), _mm_cmple_ps(t, topv)));
                let c = _mm_min_ps(_mm_max_ps(t, zero), lastv);
                _mm_storeu_si128(
                    q.as_mut_ptr().add(4 * k) as *mut __m128i,
                    _mm_cvttps_epi32(c),
                );
            }
            _mm_movemask_ps(ok) == 0xf
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        quantise12_generic(p, o, i, top, last, q)
    }
}

/// Where a sample's grid sits in space: cell (x, y, z) covers
/// `origin + [x, x+1) * cell` per axis; the box spans `2^depth` cells per axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleBox {
    pub origin: [f64; 3],
    /// Leaf cell size per axis (equal for the usual cube).
    pub cell: [f64; 3],
}

/// Build parameters shared by every sample of a batch.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    pub depth: u8,
    pub full_depth: u8,
    /// Clamp points outside the box into it instead of failing.
    pub clip: bool,
}

/// A batch of octrees in ocnn's layout, one flat array per depth.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Octree {
    pub depth: u8,
    /// Levels `0..=full_depth` are dense (every node present).
    pub full_depth: u8,
    pub batch_size: usize,
    /// Sorted Morton keys of all nodes per depth, grouped by sample.
    pub keys: Vec<Vec<u64>>,
    /// -1 for an empty node, else its rank among the non-empty nodes of that depth.
    pub children: Vec<Vec<i32>>,
    /// Sample index of every node per depth.
    pub batch: Vec<Vec<i32>>,
    /// `batch_nnum[d][b]`: nodes of sample b at depth d.
    pub batch_nnum: Vec<Vec<usize>>,
    /// `batch_nnum_nempty[d][b]`: non-empty nodes of sample b at depth d.
    pub batch_nnum_nempty: Vec<Vec<usize>>,
    /// For every input point, the index of its leaf among the non-empty leaves at `depth`.
    pub point_leaf: Vec<i64>,
}

impl Octree {
    /// Total nodes at depth `d`.
    pub fn nnum(&self, d: usize) -> usize {
        self.keys[d].len()
    }
    /// Non-empty nodes at depth `d`.
    pub fn nnum_nempty(&self, d: usize) -> usize {
        self.batch_nnum_nempty[d].iter().sum()
    }
}

/// One sample's sorted non-empty leaf keys and, per point, its leaf's rank among them.
struct SampleLeaves {
    leaves: Vec<u64>,
    point_leaf: Vec<i64>,
}

/// Packs (key, point index) either into one u64 or a pair, whichever fits.
trait Item: RadixKey {
    fn make(key: u64, idx: usize, idx_bits: u32) -> Self;
    fn key(&self, idx_bits: u32) -> u64;
    fn idx(&self, idx_bits: u32) -> usize;
    /// Sort a slice by (key, point index): the stable order by key, since indices are unique.
    fn sort_small(v: &mut [Self]);
}

impl Item for u64 {
    #[inline(always)]
    fn make(key: u64, idx: usize, idx_bits: u32) -> Self {
        (key << idx_bits) | idx as u64
    }
    #[inline(always)]
    fn key(&self, idx_bits: u32) -> u64 {
        self >> idx_bits
    }
    #[inline(always)]
    fn idx(&self, idx_bits: u32) -> usize {
        // idx_bits < 64 (the key takes at least one bit); 0 bits give the mask 0
        (self & ((1u64 << idx_bits) - 1)) as usize
    }
    #[inline]
    fn sort_small(v: &mut [Self]) {
        // the index sits in the low bits, so the whole value orders by (key, index)
        sort_tiny_or(v, <[Self]>::sort_unstable);
    }
}

impl Item for (u64, u32) {
    #[inline(always)]
    fn make(key: u64, idx: usize, _: u32) -> Self {
        (key, idx as u32)
    }
    #[inline(always)]
    fn key(&self, _: u32) -> u64 {
        self.0
    }
    #[inline(always)]
    fn idx(&self, _: u32) -> usize {
        self.1 as usize
    }
    #[inline]
    fn sort_small(v: &mut [Self]) {
        sort_tiny_or(v, <[Self]>::sort_unstable);
    }
}

/// Insertion sort inline for the few items of a typical bucket (a call into the standard
/// sort cost more than the sorting there: ~4 items per bucket for a 4,096-point cloud),
/// else `sort`.
#[inline(always)]
fn sort_tiny_or<T: Ord + Copy>(v: &mut [T], sort: impl FnOnce(&mut [T])) {
    if v.len() > 16 {
        return sort(v);
    }
    for i in 1..v.len() {
        let x = v[i];
        let mut j = i;
        while j > 0 && v[j - 1] > x {
            v[j] = v[j - 1];
            j -= 1;
        }
        v[j] = x;
    }
}

/// Checks shared by all entry points.
pub fn validate_depths(depth: u8, full_depth: u8) -> Result<()> {
    if depth == 0 || depth > MAX_DEPTH {
        return Err(CoreError::arg(
            "depth",
            format!("an integer in 1..={MAX_DEPTH}"),
            depth,
        ));
    }
    if full_depth > depth {
        return Err(CoreError::arg(
            "full_depth",
            format!("at most depth ({depth})"),
            full_depth,
        ));
    }
    Ok(())
}

/// Build a batch of octrees. `points` is (N, 3) row-major, `offsets` (B+1,) with
/// sample b owning points `offsets[b]..offsets[b+1]`, `boxes` one per sample.
pub fn build_octree<T: Coord>(
    points: &[T],
    offsets: &[usize],
    boxes: &[SampleBox],
    opts: BuildOptions,
) -> Result<Octree> {
    build_octree_with(points, offsets, boxes, opts, true)
}

/// [`build_octree`]; with `fill_batch = false` a single-sample build leaves `batch[d]`
/// empty (every entry would be 0), for callers that make those arrays more cheaply
/// themselves (e.g. lazily zeroed pages). Batches of several samples always fill it.
pub fn build_octree_with<T: Coord>(
    points: &[T],
    offsets: &[usize],
    boxes: &[SampleBox],
    opts: BuildOptions,
    fill_batch: bool,
) -> Result<Octree> {
    validate_depths(opts.depth, opts.full_depth)?;
    if points.len() % 3 != 0 {
        return Err(CoreError::arg(
            "points",
            "a flat (N, 3) buffer",
            format!("{} values", points.len()),
        ));
    }
    let n = points.len() / 3;
    if offsets.is_empty() || offsets[0] != 0 || *offsets.last().unwrap() != n {
        return Err(CoreError::arg(
            "offsets",
            format!("(B+1,) starting at 0 and ending at N={n}"),
            format!("{offsets:?}"),
        ));
    }
    if offsets.windows(2).any(|w| w[1] < w[0]) {
        return Err(CoreError::arg(
            "offsets",
            "non-decreasing values",
            format!("{offsets:?}"),
        ));
    }
    let batch_size = offsets.len() - 1;
    if boxes.len() != batch_size {
        return Err(CoreError::arg(
            "boxes",
            format!("{batch_size} boxes (one per sample)"),
            boxes.len(),
        ));
    }
    for b in boxes {
        if b.cell.iter().any(|c| !(c.is_finite() && *c > 0.0))
            || b.origin.iter().any(|o| !o.is_finite())
        {
            return Err(CoreError::arg(
                "bbox",
                "finite origin and positive finite cell size",
                format!("{b:?}"),
            ));
        }
    }
    let build_one = |s: usize| {
        build_sample(
            &points[offsets[s] * 3..offsets[s + 1] * 3],
            offsets[s],
            &boxes[s],
            opts,
        )
    };
    if batch_size == 1 {
        let s = build_one(0)?;
        let (keys, children, nonempty) = grow_levels(s.leaves, opts.depth, opts.full_depth);
        let depth = opts.depth as usize;
        return Ok(Octree {
            depth: opts.depth,
            full_depth: opts.full_depth,
            batch_size: 1,
            batch_nnum: keys.iter().map(|k| vec![k.len()]).collect(),
            batch_nnum_nempty: nonempty.iter().map(|&c| vec![c]).collect(),
            batch: if fill_batch {
                keys.iter().map(|k| vec![0; k.len()]).collect()
            } else {
                vec![Vec::new(); depth + 1]
            },
            keys,
            children,
            point_leaf: s.point_leaf,
        });
    }
    let samples = (0..batch_size)
        .into_par_iter()
        .map(build_one)
        .collect::<Result<Vec<_>>>()?;
    Ok(assemble_batch(samples, offsets, opts))
}

fn build_sample<T: Coord>(
    pts: &[T],
    first: usize,
    bx: &SampleBox,
    opts: BuildOptions,
) -> Result<SampleLeaves> {
    let n = pts.len() / 3;
    // a box whose origin or inverse cell size overflows the input precision (float32 with
    // |bounds| beyond ~3e38) is quantised in float64 instead
    let side = (1u64 << opts.depth) as f64;
    let fits = (0..3).all(|a| {
        T::from_f64(bx.origin[a]).to_f64().is_finite()
            && T::from_f64(1.0 / bx.cell[a]).to_f64().is_finite()
            && T::from_f64(bx.origin[a] + bx.cell[a] * side)
                .to_f64()
                .is_finite()
    });
    if !fits && std::mem::size_of::<T>() < 8 {
        let wide: Vec<f64> = pts.iter().map(|v| v.to_f64()).collect();
        return build_sample(&wide, first, bx, opts);
    }
    let key_bits = 3 * opts.depth as u32;
    let idx_bits = if n <= 1 {
        0
    } else {
        usize::BITS - (n - 1).leading_zeros()
    };
    if key_bits + idx_bits < 64
        && n >= HASH_MIN
        && n <= u32::MAX as usize
        && let Some(built) = hash_leaves(pts, first, bx, opts)
    {
        return built;
    }
    if key_bits + idx_bits <= 64 {
        build_sample_with::<T, u64>(pts, first, bx, opts, idx_bits)
    } else {
        build_sample_with::<T, (u64, u32)>(pts, first, bx, opts, 0)
    }
}

/// Samples of at least this many points try the hash build ([`hash_leaves`]).
const HASH_MIN: usize = 1 << 16;
/// Where the hash build checks that it pays off, as (points of the chunk seen, fewest
/// points per distinct leaf so far to go on): a cheap early look after the first block,
/// which turns back clouds of nearly one point per leaf, then a firmer one.
const HASH_CHECKS: [(usize, usize); 2] = [(BLOCK_MAX, 2), (1 << 14, 3)];

/// A bare leaf key (no point index): what the hash build quantises points into.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct LeafKey(u64);

impl RadixKey for LeafKey {
    #[inline(always)]
    fn radix_key(&self) -> u64 {
        self.0
    }
}

impl Item for LeafKey {
    #[inline(always)]
    fn make(key: u64, _: usize, _: u32) -> Self {
        LeafKey(key)
    }
    #[inline(always)]
    fn key(&self, _: u32) -> u64 {
        self.0
    }
    #[inline(always)]
    fn idx(&self, _: u32) -> usize {
        0
    }
    fn sort_small(v: &mut [Self]) {
        v.sort_unstable_by_key(|k| k.0);
    }
}

/// The sample's leaves by hashing instead of sorting every point, for clouds where many
/// points share a leaf: each worker (one per thread) takes pieces of the cloud from a
/// [`PieceQueue`], quantises them block by block and maps each leaf key to a dense id
/// through its own [`LeafTable`]; then only the distinct keys (all tables' together) are
/// sorted, and ids mapped to ranks. Which worker took which piece changes only which
/// table an id refers to, so the result does not depend on scheduling. `None` when a
/// table's first points show too few points per leaf for this to beat the sort
/// ([`HASH_CHECKS`]; the caller then sorts). Needs `3·depth + bits(n) < 64` and n < 2^32.
fn hash_leaves<T: Coord>(
    pts: &[T],
    first: usize,
    bx: &SampleBox,
    opts: BuildOptions,
) -> Option<Result<SampleLeaves>> {
    let n = pts.len() / 3;
    let depth = opts.depth as usize;
    let key_bits = 3 * depth as u32;
    let workers = if n <= SERIAL_MAX {
        1
    } else {
        rayon::current_num_threads().max(1)
    };
    // whole blocks, about PIECES_PER_WORKER per worker (one piece on one thread)
    let piece = if workers == 1 {
        n.max(1)
    } else {
        n.div_ceil(workers * PIECES_PER_WORKER).div_ceil(BLOCK_MAX) * BLOCK_MAX
    };
    let pieces = n.div_ceil(piece);
    let queue = PieceQueue::new(pieces, workers);
    // a table's ids are below the number of points it saw
    let id_bits = usize::BITS - n.saturating_sub(1).leading_zeros();
    // SAFETY: every piece, taken by exactly one worker, writes the id of each of its points
    let mut ids: Vec<u32> = unsafe { crate::sort::vec_for_overwrite(n) };
    // per piece: its report and the worker (table) whose ids it holds, each written once
    let mut reports = vec![ChunkReport::default(); pieces];
    let mut owner = vec![0usize; pieces];
    let (ids_ptr, reports_ptr, owner_ptr) = (
        SendPtr(ids.as_mut_ptr()),
        SendPtr(reports.as_mut_ptr()),
        SendPtr(owner.as_mut_ptr()),
    );
    // set by the first worker that gives up: the others stop at their next block instead
    // of hashing on for nothing (the sort runs either way)
    let gave_up = std::sync::atomic::AtomicBool::new(false);
    let run_worker = |w: usize| -> Option<LeafTable> {
        let (ids_ptr, reports_ptr, owner_ptr) = (ids_ptr, reports_ptr, owner_ptr);
        let mut table = LeafTable::new(key_bits, id_bits, n / workers / 64);
        let mut keys = [LeafKey(0); BLOCK_MAX];
        let mut seen = 0usize;
        while let Some(p) = queue.take(w) {
            let (lo, hi) = (p * piece, ((p + 1) * piece).min(n));
            // SAFETY: piece p is handed out once, so only this worker touches its ids
            let piece_ids = unsafe { std::slice::from_raw_parts_mut(ids_ptr.0.add(lo), hi - lo) };
            let mut report = ChunkReport::default();
            for (b, block_ids) in piece_ids.chunks_mut(BLOCK_MAX).enumerate() {
                if gave_up.load(std::sync::atomic::Ordering::Relaxed) {
                    return None;
                }
                let start = lo + b * BLOCK_MAX;
                let m = block_ids.len();
                let block = &mut keys[..m];
                let args = QuantiseArgs {
                    pts,
                    base: start,
                    first,
                    bx,
                    depth,
                    idx_bits: 0,
                    shift0: 0,
                    width: 0,
                };
                report.merge(quantise_keys(args, block));
                // SAFETY: LeafKey is a transparent u64
                let block: &[u64] = unsafe { std::slice::from_raw_parts(block.as_ptr().cast(), m) };
                // the next block's points are fetched while this block is looked up (the
                // hardware prefetcher stops following them while the lookups run)
                let next = (start + m) * 3;
                crate::mem::prefetch_lines(pts.as_ptr(), next, next + 3 * m, pts.len());
                table.lookup_block(block, block_ids);
                let before = seen;
                seen += m;
                let distinct = table.keys().len();
                if HASH_CHECKS
                    .iter()
                    .any(|&(at, per_leaf)| before < at && seen >= at && distinct * per_leaf > seen)
                {
                    gave_up.store(true, std::sync::atomic::Ordering::Relaxed);
                    return None;
                }
            }
            // SAFETY: p < pieces, and piece p is handed out once
            unsafe {
                *reports_ptr.0.add(p) = report;
                *owner_ptr.0.add(p) = w;
            }
        }
        Some(table)
    };
    let tables: Vec<LeafTable> = if workers == 1 {
        vec![run_worker(0)?]
    } else {
        (0..workers)
            .into_par_iter()
            .map(run_worker)
            .collect::<Option<Vec<_>>>()?
    };
    // in point order, so the first non-finite point reported is the first in the cloud
    let mut report = ChunkReport::default();
    for r in &reports {
        report.merge(*r);
    }
    if let Err(e) = report.check(bx, opts) {
        return Some(Err(e));
    }
    let mut id_base = Vec::with_capacity(tables.len());
    let mut distinct = 0usize;
    for t in &tables {
        id_base.push(distinct);
        distinct += t.keys().len();
    }

    // every table's distinct keys, tagged with a global id (table base + id), sorted by key
    let gid_bits = usize::BITS - distinct.leading_zeros();
    let mut tagged: Vec<u64> = Vec::with_capacity(distinct);
    for (t, &b) in tables.iter().zip(&id_base) {
        tagged.extend(
            t.keys()
                .iter()
                .enumerate()
                .map(|(id, &k)| (k << gid_bits) | (b + id) as u64),
        );
    }
    drop(tables);
    crate::sort::radix_sort(&mut tagged, gid_bits, gid_bits + key_bits);
    // equal keys from different tables share a rank
    let mut rank_of = vec![0u32; distinct];
    let mut leaves: Vec<u64> = Vec::with_capacity(distinct);
    let gid_mask = (1u64 << gid_bits) - 1;
    for &t in &tagged {
        let k = t >> gid_bits;
        if leaves.last() != Some(&k) {
            leaves.push(k);
        }
        rank_of[(t & gid_mask) as usize] = (leaves.len() - 1) as u32;
    }
    drop(tagged);

    // SAFETY: every piece writes the leaf of each of its points
    let mut point_leaf: Vec<i64> = unsafe { crate::sort::vec_for_overwrite(n) };
    let remap = |(p, (out, ids)): (usize, (&mut [i64], &[u32]))| {
        let ranks = &rank_of[id_base[owner[p]]..];
        for (o, &id) in out.iter_mut().zip(ids) {
            *o = ranks[id as usize] as i64;
        }
    };
    if workers == 1 {
        remap((0, (&mut point_leaf[..], &ids[..])));
    } else {
        point_leaf
            .par_chunks_mut(piece)
            .zip(ids.par_chunks(piece))
            .enumerate()
            .for_each(remap);
    }
    Some(Ok(SampleLeaves { leaves, point_leaf }))
}

/// Pieces per worker in the hash build: small enough that a worker which starts late (a
/// busy or sleeping core) leaves most of its share to the others.
const PIECES_PER_WORKER: usize = 8;

/// The pieces of a sample, handed to the hash build's workers: worker w owns a contiguous
/// run of pieces and takes them from its front; once its run is empty it takes the last
/// piece of the run with the most left. So each table sees mostly contiguous points (few
/// keys shared between tables) and no worker waits for a late one.
struct PieceQueue {
    runs: std::sync::Mutex<Vec<(usize, usize)>>,
}

impl PieceQueue {
    fn new(pieces: usize, workers: usize) -> Self {
        let runs = (0..workers)
            .map(|w| (w * pieces / workers, (w + 1) * pieces / workers))
            .collect();
        PieceQueue {
            runs: std::sync::Mutex::new(runs),
        }
    }

    /// The next piece for worker `w`, if any is left.
    fn take(&self, w: usize) -> Option<usize> {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let (lo, hi) = runs[w];
        if lo < hi {
            runs[w].0 += 1;
            return Some(lo);
        }
        let (v, &(lo, hi)) = runs.iter().enumerate().max_by_key(|(_, r)| r.1 - r.0)?;
        if lo < hi {
            runs[v].1 -= 1;
            Some(hi - 1)
        } else {
            None
        }
    }
}

/// Below this many points everything runs on the calling thread.
const SERIAL_MAX: usize = 1 << 15;
/// Buckets up to this size are sorted by comparison, larger ones by LSD radix passes.
const CMP_SORT_MAX: usize = 384;

fn build_sample_with<T: Coord, I: Item>(
    pts: &[T],
    first: usize,
    bx: &SampleBox,
    opts: BuildOptions,
    idx_bits: u32,
) -> Result<SampleLeaves> {
    let n = pts.len() / 3;
    let depth = opts.depth as usize;
    let key_bits = 3 * depth as u32;
    // sort bits lo..hi of the radix key; the top digit (hi - tb..hi) is scattered first
    let (lo, hi) = if std::mem::size_of::<I>() == 8 {
        (idx_bits, idx_bits + key_bits)
    } else {
        (0, key_bits)
    };
    let log_n = usize::BITS - n.max(1).leading_zeros();
    let lsd_ok = std::mem::size_of::<I>() == 8
        && n >= LSD_MIN
        && (12..=3 * LSD_DIGIT_MAX).contains(&key_bits);
    let threads = rayon::current_num_threads();
    // several threads and keys LSD passes could sort: few top buckets of thousands of
    // items, each then sorted by LSD passes in one thread's cache ([`HYBRID_MIN`])
    let hybrid = lsd_ok && threads > 1 && n >= HYBRID_MIN;
    let tb = if hybrid {
        log_n
            .saturating_sub(HYBRID_BUCKET_BITS)
            .max(HYBRID_TOP_BITS_MIN)
            .min(key_bits)
    } else {
        // about 8 items per bucket on average, so skewed clouds (a scan's ground) still
        // split into cache-sized buckets; at most 2^16 buckets
        log_n.saturating_sub(3).clamp(4, 16).min(key_bits)
    };
    let top_shift = hi - tb;
    let nb = 1usize << tb;
    let serial = !hybrid && (n <= SERIAL_MAX || threads <= 1 || lsd_ok);
    // the whole sample sorted by LSD passes on this thread
    let lsd_whole = lsd_ok && serial;
    // one thread, packed items, keys of 12..=33 bits (depths 4..=11): the whole sample is
    // sorted by LSD passes (the histograms of every digit come from the quantise pass)
    // instead of a top-digit scatter followed by sorts of tiny buckets (2^15 buckets of ~6
    // items for 200k points): at 1 thread, depth 10, 7.2 vs 9.0 ms CPU for indoor200k and
    // 16.2 vs 21.8 ms for lidar1M. Digits of ≤ 11 bits (3 passes, 2 for ≤ 22-bit keys);
    // from LSD_WIDE_MIN items, keys of ≤ 32 bits take 2 passes of ≤ 16-bit digits (count
    // tables of ≤ 1/2 of the items): lidar1M d10 15.0-15.5 vs 17.6-18.2 ms, lidar 200k
    // 2.2 vs 2.6
    let lsd_digits = if key_bits <= 2 * LSD_DIGIT_MAX
        || (n >= LSD_WIDE_MIN && key_bits <= 2 * LSD_WIDE_DIGIT_MAX)
    {
        2
    } else {
        3
    };
    let lsd_width = key_bits.div_ceil(lsd_digits);

    // 1. quantise + encode + histogram of the top digit (or every LSD digit), per chunk
    // SAFETY: the quantise loop below writes every item
    let mut items: Vec<I> = unsafe { crate::sort::vec_for_overwrite(n) };
    // serial: one chunk (one histogram); parallel: one chunk per thread
    let chunk = if serial {
        n.max(1)
    } else {
        n.div_ceil(threads).max(1)
    };
    let sample_args = QuantiseArgs {
        pts,
        base: 0,
        first,
        bx,
        depth,
        idx_bits,
        shift0: 0,
        width: 0,
    };
    let quant = |c: usize, out: &mut [I]| {
        let args = QuantiseArgs {
            base: c * chunk,
            shift0: top_shift,
            width: tb,
            ..sample_args
        };
        quantise_dispatch::<T, I, 1>(args, out)
    };
    // chunk c with the histograms of all its LSD digits
    let quant_lsd = |c: usize, out: &mut [I]| {
        let args = QuantiseArgs {
            base: c * chunk,
            shift0: lo,
            width: lsd_width,
            ..sample_args
        };
        if lsd_digits == 2 {
            quantise_dispatch::<T, I, 2>(args, out)
        } else {
            quantise_dispatch::<T, I, 3>(args, out)
        }
    };
    let parts: Vec<(ChunkReport, Vec<u32>)> = if serial {
        if n == 0 {
            Vec::new()
        } else if lsd_whole {
            // the whole sample as one chunk
            vec![quant_lsd(0, &mut items[..])]
        } else {
            vec![quant(0, &mut items[..])]
        }
    } else {
        items
            .par_chunks_mut(chunk)
            .enumerate()
            .map(|(c, out)| quant(c, out))
            .collect()
    };
    let mut total = ChunkReport::default();
    let mut hists = Vec::with_capacity(parts.len());
    for (r, h) in parts {
        total.merge(r);
        hists.push(h);
    }
    total.check(bx, opts)?;

    // 2. stable scatter by the top digit (chunk c's items of bucket b go after chunk c-1's)
    let mut starts = vec![0usize; nb + 1];
    // SAFETY: the scatter writes every index 0..n exactly once (offsets partition 0..n)
    let mut buf: Vec<I> = unsafe { crate::sort::vec_for_overwrite(n) };
    if lsd_whole {
        // the whole sample sorted: one bucket, nothing left to sort in it
        lsd_sort_items(&mut items, &mut buf, &mut hists[0], lo, lsd_width);
        starts = vec![0, n];
    } else if n <= u32::MAX as usize {
        // 32-bit offsets: half the cache footprint of the (up to 2^16-entry) table
        let mut run = 0u32;
        for b in 0..nb {
            starts[b] = run as usize;
            for h in hists.iter_mut() {
                let c = h[b];
                h[b] = run;
                run += c;
            }
        }
        scatter_top(&items, &mut buf, chunk, hists, top_shift, nb, serial);
    } else {
        let mut offsets: Vec<Vec<usize>> = vec![vec![0usize; nb]; hists.len()];
        let mut run = 0usize;
        for b in 0..nb {
            starts[b] = run;
            for (c, h) in hists.iter().enumerate() {
                offsets[c][b] = run;
                run += h[b] as usize;
            }
        }
        scatter_top(&items, &mut buf, chunk, offsets, top_shift, nb, serial);
    }
    let nb = starts.len() - 1;
    starts[nb] = n;

    // 3. sort every bucket in cache and collapse runs of equal keys into leaves
    // SAFETY: every point index occurs in exactly one item, so the collapse writes each entry
    let mut point_leaf: Vec<i64> =
        if std::mem::size_of::<I>() == 8 && std::mem::align_of::<I>() == 8 {
            // the scattered-from buffer is free now: reuse its (already mapped) memory
            let mut v = std::mem::ManuallyDrop::new(items);
            // SAFETY: same size and alignment as i64 (so the same allocation layout), and
            // I is plain old data; every entry is overwritten before it is read
            unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut i64, v.len(), v.capacity()) }
        } else {
            drop(items);
            unsafe { crate::sort::vec_for_overwrite(n) }
        };
    let sort_bucket = |bucket: &mut [I], scratch: &mut Vec<I>| {
        if bucket.len() <= 1 || top_shift <= lo || lsd_whole {
            return;
        }
        if bucket.len() <= CMP_SORT_MAX {
            I::sort_small(bucket);
        } else {
            crate::sort::small_lsd(bucket, lo, top_shift, scratch);
        }
    };
    let leaves: Vec<u64> = if serial {
        // at most n leaves; written through a pointer, the length set at the end
        let mut leaves: Vec<u64> = Vec::with_capacity(n);
        let leaves_ptr = leaves.as_mut_ptr();
        let leaf_ptr = point_leaf.as_mut_ptr();
        let mut scratch = Vec::new();
        let mut rank = -1i64;
        for b in 0..nb {
            let bucket = &mut buf[starts[b]..starts[b + 1]];
            if bucket.is_empty() {
                continue;
            }
            sort_bucket(bucket, &mut scratch);
            // SAFETY: the leaves so far and this bucket's fit in the capacity n; every
            // point index occurs in exactly one item and is below n = point_leaf.len()
            rank = unsafe { collapse_sorted(bucket, idx_bits, leaves_ptr, leaf_ptr, rank) };
        }
        // SAFETY: entries 0..=rank were written above
        unsafe { leaves.set_len((rank + 1) as usize) };
        leaves
    } else {
        // groups of whole buckets, about equal in items, sorted and counted in parallel
        let pieces = rayon::current_num_threads() * 8;
        let per = n.div_ceil(pieces).max(1);
        let mut bounds = vec![0usize];
        let mut acc = 0usize;
        for b in 0..nb {
            acc += starts[b + 1] - starts[b];
            if acc >= per && b + 1 < nb {
                bounds.push(b + 1);
                acc = 0;
            }
        }
        bounds.push(nb);
        let mut groups: Vec<(usize, usize, &mut [I])> = Vec::with_capacity(bounds.len());
        let mut rest: &mut [I] = &mut buf[..];
        for w in bounds.windows(2) {
            let (head, tail) = rest.split_at_mut(starts[w[1]] - starts[w[0]]);
            groups.push((w[0], w[1], head));
            rest = tail;
        }
        let counts: Vec<usize> = groups
            .par_iter_mut()
            .map_init(Vec::new, |scratch, (b0, b1, items)| {
                let base = starts[*b0];
                let mut count = 0usize;
                for b in *b0..*b1 {
                    let bucket = &mut items[starts[b] - base..starts[b + 1] - base];
                    sort_bucket(bucket, scratch);
                    let mut prev = u64::MAX;
                    for it in bucket.iter() {
                        let k = it.key(idx_bits);
                        count += (k != prev) as usize;
                        prev = k;
                    }
                }
                count
            })
            .collect();
        let total_leaves: usize = counts.iter().sum();
        // SAFETY: group g writes leaves base_g..base_g + counts[g]; together all of them
        let mut leaves: Vec<u64> = unsafe { crate::sort::vec_for_overwrite(total_leaves) };
        let leaves_ptr = SendPtr(leaves.as_mut_ptr());
        let leaf_ptr = SendPtr(point_leaf.as_mut_ptr());
        let mut bases = Vec::with_capacity(counts.len());
        let mut acc = 0usize;
        for c in &counts {
            bases.push(acc);
            acc += c;
        }
        groups
            .into_par_iter()
            .zip(bases.into_par_iter())
            .for_each(|((_, _, items), base)| {
                let (leaves_ptr, leaf_ptr) = (leaves_ptr, leaf_ptr);
                // SAFETY: the group's leaves are base..base + its count, disjoint from the
                // other groups' ranges of 0..total_leaves (a group starts a new key); every
                // point index appears in exactly one item, below n = point_leaf.len()
                unsafe {
                    collapse_sorted(items, idx_bits, leaves_ptr.0, leaf_ptr.0, base as i64 - 1)
                };
            });
        leaves
    };
    drop(buf);

    Ok(SampleLeaves { leaves, point_leaf })
}

/// Runs of equal keys in the sorted `items` collapsed into leaves: the first item takes
/// rank `rank + 1` and each new key the next one; `leaves[r]` gets rank r's key and
/// `point_leaf[idx]` every item's rank. Returns the last rank. Branch-free (a run's leaf
/// slot is rewritten by each of its items) and without software prefetch of the
/// point_leaf writes: dropping the prefetch (16 items ahead) measured faster everywhere,
/// in separate processes at 1 thread: kitti000000 d10 0.74 -> 0.68 ms, d8 0.52 -> 0.49;
/// indoor200k d8 1.22 -> 1.12; 1M indoor points 11.8 -> 11.5; lidar1M d11 8.5 -> 7.9 (2
/// threads: kitti 0.88 -> 0.84). The loop is ~10 instructions per item; cutting it down
/// from ~30 (this function, not inlined) changed nothing measurable, so its time is in
/// the stores, not the instructions.
///
/// # Safety
/// `leaves` has room for ranks up to `rank + items.len()`, and every item's point index
/// is in bounds of `point_leaf`, written by no one else meanwhile.
#[inline(never)]
unsafe fn collapse_sorted<I: Item>(
    items: &[I],
    idx_bits: u32,
    leaves: *mut u64,
    point_leaf: *mut i64,
    mut rank: i64,
) -> i64 {
    let mut prev = u64::MAX; // keys are below 2^63: the first item starts a new rank
    for it in items {
        let k = it.key(idx_bits);
        rank += (k != prev) as i64;
        prev = k;
        // SAFETY: rank <= rank0 + items seen, within `leaves` (the caller); index in bounds
        unsafe {
            *leaves.add(rank as usize) = k;
            *point_leaf.add(it.idx(idx_bits)) = rank;
        }
    }
    rank
}

/// On several threads, LSD-sortable samples of at least this many points are sorted by a
/// parallel scatter into a few top buckets ([`HYBRID_BUCKET_BITS`]), each bucket then
/// sorted by LSD passes in one thread's cache. Medians of single calls at depth 10, 2
/// threads, one process alternating (env switch), against the whole sample's LSD passes
/// on one thread (levels still split on two): the SemanticKITTI scan (123k points) 0.754
/// -> 0.654 ms and 0.774 -> 0.660 (1 thread: 0.75, 0.83), 80k of it 0.56 -> 0.51-0.52,
/// indoor200k 1.94 -> 1.79 (1 thread: 1.81-1.83).
///
/// It replaced LSD passes that each ran in parallel pieces (every pass moved all items
/// between the two cores' caches). Same-process medians, 2 threads, in a slow hour: kitti
/// 0.91 -> 0.71 ms, indoor200k 2.75 -> 2.20, a 209k-point stereo scan (table_scene) 1.24
/// -> 0.95, two kitti scans (247k) 1.62 -> 1.25, indoor-like 600k points 7.2 -> 5.6-5.8;
/// a 293k-point forest submap (karawatha) 2.07 -> 2.10-2.20, the one cloud not faster.
/// Separate processes, old build against new, alternating, 2 threads: kitti 0.87-1.25 ->
/// 0.66-0.88 ms, table_scene 1.21-1.61 -> 0.99-1.41, two kitti scans 2.10-2.40 ->
/// 1.22-1.80; indoor200k (1.81-2.53 vs 1.77-2.42), karawatha and 600k indoor-like points
/// unchanged within the noise. So clouds of several points per leaf gain; clouds of about
/// one point per leaf gain in one process only.
const HYBRID_MIN: usize = 1 << 16;
/// Top buckets of about 2^13 items on average (two passes of ≤ 13-bit digits in L2)...
const HYBRID_BUCKET_BITS: u32 = 13;
/// ...but at least 32 of them, so the 16 bucket groups of two threads balance.
const HYBRID_TOP_BITS_MIN: u32 = 5;
/// Samples of at least this many points are sorted by LSD passes (below, the top-digit
/// scatter and bucket sorts are faster: 300-700 points at depth 11, 0.009 vs 0.011 ms and
/// 0.014 vs 0.015). From 2^10 rather than 2^14 points (same-process medians, 1 thread):
/// oxford4096 d9 0.045 -> 0.040 ms, d6 0.029 -> 0.019; a 10k-point scan at d9 0.083 ->
/// 0.065; the 128 × 4,096-point oxford_batch at d9 10.3 -> 8.0 ms (2 threads 5.7 -> 4.7)
const LSD_MIN: usize = 1 << 10;
/// Widest LSD digit (a 2^11-entry count table stays in L1).
const LSD_DIGIT_MAX: u32 = 11;
/// Samples of at least this many points may take 2 LSD passes of digits up to
/// [`LSD_WIDE_DIGIT_MAX`] bits on one thread. Same-process medians, 1 thread, depth 10,
/// 2 passes of 15 bits against 3 of 10 (from 2^18 before): the SemanticKITTI scan
/// (123k points, scan order) 1.26-1.28 -> 0.92-0.96 ms, 115k of it 1.19 -> 0.92,
/// depth 9 0.95 -> 0.82; indoor200k (random order) 2.02-2.18 -> 1.90-2.08, 150k of it
/// 1.63 -> 1.59, but 70k of it 0.815 -> 0.845 (kept at 3 passes below 2^16)
const LSD_WIDE_MIN: usize = 1 << 16;
/// ...this wide (2 count tables of 2^16 entries).
const LSD_WIDE_DIGIT_MAX: u32 = 16;

/// Stable LSD sort of `items` by `hist.len() >> width` digits of `width` bits from bit
/// `shift0` of the radix key (bits above the last digit must be zero), given the histogram
/// of every digit (`hist[d << width..]`, consumed). Ends with the sorted items in `buf` and
/// `items` as scratch of the same length. Passes whose digit is the same for every item are
/// skipped.
fn lsd_sort_items<I: Item>(
    items: &mut Vec<I>,
    buf: &mut Vec<I>,
    hist: &mut [u32],
    shift0: u32,
    width: u32,
) {
    debug_assert_eq!(buf.len(), items.len());
    let digits = 1usize << width;
    // the sorted data is in `items` until a pass moves it
    let mut in_items = true;
    for (d, count) in hist.chunks_exact_mut(digits).enumerate() {
        let shift = shift0 + d as u32 * width;
        let (src, dst): (&[I], &mut [I]) = if in_items {
            (&items[..], &mut buf[..])
        } else {
            (&buf[..], &mut items[..])
        };
        if crate::sort::counting_pass(src, dst, count, shift) {
            in_items = !in_items;
        }
    }
    if in_items {
        std::mem::swap(items, buf);
    }
}

/// Boundaries `0 = c0 < c1 < ... < n` of about `pieces` equal parts of `0..n`, each cut moved
/// forward past positions `i` where `same(i)` (item i continues item i - 1's run), so no
/// run is split between parts.
fn aligned_cuts(n: usize, pieces: usize, same: impl Fn(usize) -> bool) -> Vec<usize> {
    let pieces = pieces.max(1);
    let mut cuts: Vec<usize> = (0..pieces).map(|i| i * n / pieces).collect();
    for c in cuts.iter_mut().skip(1) {
        while *c > 0 && *c < n && same(*c) {
            *c += 1;
        }
    }
    cuts.push(n);
    cuts.dedup();
    cuts
}

/// A bucket write position (32-bit when the sample allows, to halve the table).
trait Offset: Copy + Send {
    fn get(self) -> usize;
    fn bump(&mut self);
}
impl Offset for u32 {
    #[inline(always)]
    fn get(self) -> usize {
        self as usize
    }
    #[inline(always)]
    fn bump(&mut self) {
        *self += 1;
    }
}
impl Offset for usize {
    #[inline(always)]
    fn get(self) -> usize {
        self
    }
    #[inline(always)]
    fn bump(&mut self) {
        *self += 1;
    }
}

/// Stable scatter of `items` into `buf` by the top digit; `offsets[c][b]` is where chunk c's
/// first item of bucket b goes (the offsets partition `0..n`).
fn scatter_top<I: Item, O: Offset>(
    items: &[I],
    buf: &mut [I],
    chunk: usize,
    offsets: Vec<Vec<O>>,
    top_shift: u32,
    nb: usize,
    serial: bool,
) {
    let out = SendPtr(buf.as_mut_ptr());
    let scatter = |(part, mut off): (&[I], Vec<O>)| {
        let out = out;
        let off = &mut off[..nb];
        for v in part {
            let b = (v.radix_key() >> top_shift) as usize & (nb - 1);
            // SAFETY: b < nb; offsets partition 0..n disjointly across chunks and buckets
            unsafe {
                let o = off.get_unchecked_mut(b);
                *out.0.add(o.get()) = *v;
                o.bump();
            }
        }
    };
    if serial {
        items.chunks(chunk).zip(offsets).for_each(scatter);
    } else {
        items
            .par_chunks(chunk)
            .zip(offsets.into_par_iter())
            .for_each(scatter);
    }
}

/// Morton key by bit deposit (BMI2): [`morton::encode`] in 3 instructions.
///
/// # Safety
/// BMI2 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi2")]
#[inline]
unsafe fn encode_pdep(x: u32, y: u32, z: u32) -> u64 {
    use std::arch::x86_64::_pdep_u64;
    const M: u64 = 0x1249_2492_4924_9249; // bits 0, 3, 6, ..
    _pdep_u64(x as u64, M << 2) | _pdep_u64(y as u64, M << 1) | _pdep_u64(z as u64, M)
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn encode_pdep(x: u32, y: u32, z: u32) -> u64 {
    morton::encode(x, y, z)
}

/// Whether [`quantise_chunk_bmi2`] may run (cached by std after the first call).
fn has_avx2_bmi2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("bmi2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`quantise_chunk`] compiled for AVX2 (8-lane quantisation) with BMI2 Morton keys; the
/// same keys, histograms and report.
///
/// # Safety
/// AVX2 and BMI2 must be available ([`has_avx2_bmi2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,bmi2")]
unsafe fn quantise_chunk_bmi2<T: Coord, I: Item, const P: usize>(
    args: QuantiseArgs<'_, T>,
    out: &mut [I],
) -> (ChunkReport, Vec<u32>) {
    quantise_chunk::<T, I, P, true>(args, out)
}

/// [`quantise_chunk`] through [`quantise_chunk_bmi2`] where the CPU allows.
fn quantise_dispatch<T: Coord, I: Item, const P: usize>(
    args: QuantiseArgs<'_, T>,
    out: &mut [I],
) -> (ChunkReport, Vec<u32>) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_bmi2() {
        // SAFETY: AVX2 and BMI2 detected
        return unsafe { quantise_chunk_bmi2::<T, I, P>(args, out) };
    }
    quantise_chunk::<T, I, P, false>(args, out)
}

/// The hash build's bare keys: [`quantise_dispatch`], except that float32 points at depth
/// ≤ 10 go 16 at a time through AVX-512 where the CPU has it (same keys and report: groups
/// with a point outside the box or not finite, and the last partial group, take the
/// portable path).
fn quantise_keys<T: Coord>(args: QuantiseArgs<'_, T>, out: &mut [LeafKey]) -> ChunkReport {
    #[cfg(target_arch = "x86_64")]
    if args.depth <= 10
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && crate::morton_avx512::available()
    {
        let m = out.len();
        let pts = &args.pts[args.base * 3..(args.base + m) * 3];
        // SAFETY: T is f32 (checked above), so the slice is the same memory read as f32
        let pts: &[f32] = unsafe { std::slice::from_raw_parts(pts.as_ptr().cast(), pts.len()) };
        // SAFETY: LeafKey is a transparent u64
        let keys: &mut [u64] =
            unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast(), m) };
        let grid = crate::morton_avx512::Grid::new(args.bx, args.depth);
        let mut redo = Vec::new();
        let whole = m / 16 * 16;
        // SAFETY: AVX-512F detected; depth ≤ 10, so last = 2^depth - 1 < 1024
        unsafe { crate::morton_avx512::keys_depth10(pts, &grid, &mut keys[..whole], &mut redo) };
        // groups in point order, then the tail: the first non-finite point stays first
        let mut rep = ChunkReport::default();
        for (lo, hi) in redo
            .iter()
            .map(|&g| (16 * g, 16 * g + 16))
            .chain([(whole, m)])
        {
            if lo < hi {
                let part = QuantiseArgs {
                    base: args.base + lo,
                    ..args
                };
                rep.merge(quantise_dispatch::<T, LeafKey, 0>(part, &mut out[lo..hi]).0);
            }
        }
        return rep;
    }
    quantise_dispatch::<T, LeafKey, 0>(args, out).0
}

/// What a quantise call reads besides its output: the sample's points (`pts`, from which
/// the chunk starting at point `base` is taken; `first` is the sample's first point in the
/// batch), its box and depth, the index bits of an item, and which digits to histogram.
#[derive(Clone, Copy)]
struct QuantiseArgs<'a, T> {
    pts: &'a [T],
    base: usize,
    first: usize,
    bx: &'a SampleBox,
    depth: usize,
    idx_bits: u32,
    shift0: u32,
    width: u32,
}

/// Quantise + encode points `base..base + out.len()` of the sample into `out`; returns the
/// chunk's report and the histograms of the `P` digits `(key >> (shift0 + d·width)) & mask`
/// (`width` bits each), histogram d at `d << width..(d + 1) << width`.
#[inline(always)]
fn quantise_chunk<T: Coord, I: Item, const P: usize, const PDEP: bool>(
    args: QuantiseArgs<'_, T>,
    out: &mut [I],
) -> (ChunkReport, Vec<u32>) {
    let QuantiseArgs {
        pts,
        base,
        first,
        bx,
        depth,
        idx_bits,
        shift0,
        width,
    } = args;
    let side = (1u64 << depth) as f64;
    let top = T::from_f64(side);
    let last = T::from_f64(side - 1.0);
    let zero = T::from_f64(0.0);
    let origin = bx.origin.map(T::from_f64);
    let inv = bx.cell.map(|c| T::from_f64(1.0 / c));
    let mut rep = ChunkReport::default();
    let digit_mask = (1usize << width) - 1;
    let mut hist = vec![0u32; P << width];
    let chunk_pts = &pts[base * 3..(base + out.len()) * 3];
    let small = depth <= 11;
    // the per-axis constants repeated to 12 lanes (4 points), so stage 1 vectorises
    let o12: [T; 12] = std::array::from_fn(|l| origin[l % 3]);
    let i12: [T; 12] = std::array::from_fn(|l| inv[l % 3]);
    // stage 2 for one point: its item (point `idx` of the sample) and its digits counted
    let mut emit = |idx: usize, key: u64, slot: &mut I| {
        let item = I::make(key, idx, idx_bits);
        let r = item.radix_key() >> shift0;
        for d in 0..P {
            let at = (d << width) + ((r >> (d as u32 * width)) as usize & digit_mask);
            // SAFETY: at < (d + 1) << width ≤ P << width = hist.len()
            unsafe { *hist.get_unchecked_mut(at) += 1 };
        }
        *slot = item;
    };
    const BLOCK: usize = 64; // points per block
    let mut q = [0u32; BLOCK * 3];
    // float32 at depth ≤ 10 with AVX-512: whole blocks get their keys 16 points at a time
    // (morton_avx512), the same keys as stages 1 and 2 below, which still run for a block
    // with a point outside the box or not finite (and for a last partial block)
    #[cfg(target_arch = "x86_64")]
    let simd_keys = depth <= 10
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && crate::morton_avx512::available();
    #[cfg(target_arch = "x86_64")]
    let grid = crate::morton_avx512::Grid::new(bx, depth);
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut block_keys = [0u64; BLOCK];
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut, unused_variables))]
    let mut redo: Vec<usize> = Vec::new();
    for (bi, (outb, pb)) in out
        .chunks_mut(BLOCK)
        .zip(chunk_pts.chunks(BLOCK * 3))
        .enumerate()
    {
        let b0 = base + bi * BLOCK;
        let m = outb.len();
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut have_keys = false;
        #[cfg(target_arch = "x86_64")]
        if simd_keys && m == BLOCK {
            // SAFETY: T is f32 (checked above), so the block is the same memory read as f32
            let p32: &[f32] = unsafe { std::slice::from_raw_parts(pb.as_ptr().cast(), pb.len()) };
            redo.clear();
            // SAFETY: AVX-512F detected; depth ≤ 10, so last < 1024
            unsafe { crate::morton_avx512::keys_depth10(p32, &grid, &mut block_keys, &mut redo) };
            have_keys = redo.is_empty();
        }
        if have_keys {
            for (j, (slot, &key)) in outb.iter_mut().zip(&block_keys).enumerate() {
                emit(b0 + j, key, slot);
            }
            continue;
        }
        // stage 1: scaled coordinates, clamped into the grid, and whether every one of
        // them was inside the box (NaN compares false, so it fails the check)
        let mut inside = true;
        let full = m / 4 * 12;
        for (qc, pc) in q[..full]
            .chunks_exact_mut(12)
            .zip(pb[..full].chunks_exact(12))
        {
            inside &= T::quantise12(pc, &o12, &i12, top, last, qc);
        }
        for l in full..m * 3 {
            let t = pb[l].sub(o12[l % 12]).mul(i12[l % 12]);
            inside &= (t >= zero) & (t <= top);
            // SAFETY: as above
            q[l] = unsafe { t.fmax(zero).fmin(last).to_u32_unchecked() };
        }
        if !inside {
            // rare: redo this block point by point, reporting non-finite / outside points
            for (j, p) in pb.chunks_exact(3).enumerate() {
                let t = [0, 1, 2].map(|a| p[a].sub(origin[a]).mul(inv[a]));
                if t.iter().all(|&v| v >= zero && v <= top) {
                    continue;
                }
                if let Some(a) = (0..3).find(|&a| !p[a].is_finite()) {
                    rep.non_finite
                        .get_or_insert((first + b0 + j, a, p[a].to_f64()));
                    q[3 * j..3 * j + 3].fill(0);
                } else {
                    rep.add_outside([p[0].to_f64(), p[1].to_f64(), p[2].to_f64()]);
                }
            }
        }
        // stage 2: Morton keys, items and the top-digit histogram
        for (j, (slot, c)) in outb.iter_mut().zip(q.chunks_exact(3)).enumerate() {
            let key = if PDEP {
                // SAFETY: PDEP is only set by quantise_chunk_bmi2 (BMI2 detected)
                unsafe { encode_pdep(c[0], c[1], c[2]) }
            } else if small {
                morton::encode_small(c[0], c[1], c[2])
            } else {
                morton::encode(c[0], c[1], c[2])
            };
            emit(b0 + j, key, slot);
        }
    }
    (rep, hist)
}

/// From the sorted non-empty keys at `depth`, make every level: keys and children.
pub fn grow_levels(
    leaves: Vec<u64>,
    depth: u8,
    full_depth: u8,
) -> (Vec<Vec<u64>>, Vec<Vec<i32>>, Vec<usize>) {
    grow_levels_with(leaves, depth, full_depth, STREAM_MIN_BYTES, ROW_BLOCK)
}

/// Parents per block in [`grow_serial`]: any size from 8 to 256 measured the same
/// (indoor200k d10, 1 thread); 1,024 lost most of the gain.
const ROW_BLOCK: usize = 64;

/// [`grow_levels`] with the streaming threshold (bytes of a level's keys and children) and
/// the parents per block of the 1-thread path as arguments.
fn grow_levels_with(
    leaves: Vec<u64>,
    depth: u8,
    full_depth: u8,
    stream_min_bytes: usize,
    block: usize,
) -> (Vec<Vec<u64>>, Vec<Vec<i32>>, Vec<usize>) {
    let depth = depth as usize;
    let fd = full_depth as usize;
    let mut keys = vec![Vec::new(); depth + 1];
    let mut children = vec![Vec::new(); depth + 1];
    let mut nonempty = vec![0usize; depth + 1];
    let mut level = leaves;
    if rayon::current_num_threads() == 1 {
        if depth > fd {
            let out = (&mut keys[..], &mut children[..], &mut nonempty[..]);
            level = grow_serial(level, depth, fd, out, stream_min_bytes, block);
        }
    } else {
        for d in (fd + 1..=depth).rev() {
            let (kd, cd, parents) = split_level(&level, stream_min_bytes);
            nonempty[d] = level.len();
            keys[d] = kd;
            children[d] = cd;
            level = parents;
        }
    }
    // dense top: level `fd` records real occupancy, levels above are all non-empty
    let size = 1usize << (3 * fd);
    let mut cd = vec![-1i32; size];
    for (rank, &k) in level.iter().enumerate() {
        cd[k as usize] = rank as i32;
    }
    nonempty[fd] = level.len();
    keys[fd] = (0..size as u64).collect();
    children[fd] = cd;
    for d in 0..fd {
        let size = 1usize << (3 * d);
        keys[d] = (0..size as u64).collect();
        children[d] = (0..size as i32).collect();
        nonempty[d] = size;
    }
    (keys, children, nonempty)
}

/// Levels `fd + 1..=depth` on one thread from the sorted non-empty `leaves` (at `depth`)
/// into `out` (keys, children, non-empty counts); returns the non-empty keys at `fd`.
///
/// Each level's rows are written in blocks of `block` parents, and between two blocks the
/// parents just written are collected one level up. Where the rows go out with streaming
/// stores (levels of at least `stream_min_bytes`), that work runs while the stores drain:
/// indoor200k d10 2.01-2.03 -> 1.88-1.89 ms (medians in one process, the level-at-a-time
/// path behind a switch; 1.86-1.93 -> 1.70-1.78 in a quieter hour).
fn grow_serial(
    leaves: Vec<u64>,
    depth: usize,
    fd: usize,
    out: (&mut [Vec<u64>], &mut [Vec<i32>], &mut [usize]),
    stream_min_bytes: usize,
    block: usize,
) -> Vec<u64> {
    let (keys, children, nonempty) = out;
    let block = block.max(1);
    // room for the parents of `n` keys (the non-empty keys one level up) and their
    // children's occupancy masks
    let scratch = |n: usize| -> (Vec<u64>, Vec<u8>) {
        // SAFETY: the collection writes entries 0..count before anything reads them, and
        // the vectors are truncated to count
        unsafe {
            (
                crate::sort::vec_for_overwrite(n),
                crate::sort::vec_for_overwrite(n),
            )
        }
    };
    let (mut p, mut m) = scratch(leaves.len());
    let count = collect_parents(&leaves, &mut p, &mut m);
    p.truncate(count);
    m.truncate(count);
    nonempty[depth] = leaves.len();
    drop(leaves);
    let mut d = depth;
    loop {
        // level d's rows from (p, m); p holds the non-empty keys at d - 1
        let cnt = p.len();
        // SAFETY: the blocks below write all 8 key / child slots of every parent
        let mut kd: Vec<u64> = unsafe { crate::sort::vec_for_overwrite(cnt * 8) };
        let mut cd: Vec<i32> = unsafe { crate::sort::vec_for_overwrite(cnt * 8) };
        let stream = cnt * 8 * 12 >= stream_min_bytes;
        nonempty[d - 1] = cnt;
        // the level below the dense top is not collected further
        let up = d - 1 > fd;
        let (mut p_up, mut m_up) = if up {
            scratch(cnt)
        } else {
            (Vec::new(), Vec::new())
        };
        let mut state = COLLECT_START;
        let mut first = 0i32;
        let mut fence = false;
        let step = if stream { block } else { cnt.max(1) };
        for a in (0..cnt).step_by(step) {
            let b = (a + step).min(cnt);
            let (k, c) = (&mut kd[8 * a..8 * b], &mut cd[8 * a..8 * b]);
            let (next, streamed) = write_rows_unfenced(&p[a..b], &m[a..b], first, k, c, stream);
            first = next;
            fence |= streamed;
            if up {
                state = collect_parents_cont(&p[a..b], &mut p_up, &mut m_up, state);
            }
        }
        if fence {
            store_fence();
        }
        keys[d] = kd;
        children[d] = cd;
        if !up {
            return p;
        }
        let count = state.0.wrapping_add(1);
        p_up.truncate(count);
        m_up.truncate(count);
        (p, m) = (p_up, m_up);
        d -= 1;
    }
}

/// One level up: from sorted non-empty keys, every parent's 8 child keys, their children
/// ranks (-1 empty) and the parents' keys, on several threads (one thread takes
/// [`grow_serial`]). Chunks cut at parent boundaries run in parallel.
///
/// Two passes per chunk: the parents and their children's occupancy masks are collected
/// into cache-resident scratch (branch-free, which also counts them), then the rows are
/// written from those without data-dependent loops.
fn split_level(level: &[u64], stream_min_bytes: usize) -> (Vec<u64>, Vec<i32>, Vec<u64>) {
    let n = level.len();
    let threads = rayon::current_num_threads().max(1);
    let pieces = if n < 1 << 15 { 1 } else { threads * 4 };
    // chunks start at the first key of a new parent
    let starts = aligned_cuts(n, pieces, |i| level[i] >> 3 == level[i - 1] >> 3);
    let ranges: Vec<(usize, usize)> = starts.windows(2).map(|w| (w[0], w[1])).collect();
    // pass 1: chunk [a, b) has at most b - a parents, kept at a.. of the scratch arrays
    // SAFETY: collect_parents writes entries a..a + count before anything reads them
    let mut pbuf: Vec<u64> = unsafe { crate::sort::vec_for_overwrite(n) };
    let mut mbuf: Vec<u8> = unsafe { crate::sort::vec_for_overwrite(n) };
    let mut scratch = Vec::with_capacity(ranges.len());
    let (mut p_rest, mut m_rest) = (&mut pbuf[..], &mut mbuf[..]);
    for &(a, b) in &ranges {
        let (p, pr) = p_rest.split_at_mut(b - a);
        let (m, mr) = m_rest.split_at_mut(b - a);
        scratch.push((a, b, p, m));
        (p_rest, m_rest) = (pr, mr);
    }
    let collect = |(a, b, p, m): &mut (usize, usize, &mut [u64], &mut [u8])| {
        collect_parents(&level[*a..*b], p, m)
    };
    let counts: Vec<usize> = if scratch.len() <= 1 {
        scratch.iter_mut().map(collect).collect()
    } else {
        scratch.par_iter_mut().map(collect).collect()
    };
    let total: usize = counts.iter().sum();
    // SAFETY: the jobs below write all 8 key / child slots of every parent
    let mut kd: Vec<u64> = unsafe { crate::sort::vec_for_overwrite(total * 8) };
    let mut cd: Vec<i32> = unsafe { crate::sort::vec_for_overwrite(total * 8) };
    // large outputs bypass the caches (no read-for-ownership of lines that are written whole)
    let stream = cfg!(target_arch = "x86_64")
        && total * 8 * 12 >= stream_min_bytes
        && (kd.as_ptr() as usize) & 15 == 0
        && (cd.as_ptr() as usize) & 15 == 0;
    // several chunks: their parents gathered into one array (one chunk: the scratch is it)
    let gathered: Option<Vec<u64>> = (scratch.len() > 1).then(|| {
        let mut parents = Vec::with_capacity(total);
        for ((_, _, p, _), &cnt) in scratch.iter().zip(&counts) {
            parents.extend_from_slice(&p[..cnt]);
        }
        parents
    });
    // hand each chunk its own disjoint output windows
    let mut jobs = Vec::with_capacity(ranges.len());
    let (mut k_rest, mut c_rest) = (&mut kd[..], &mut cd[..]);
    for ((a, _, p, m), &cnt) in scratch.into_iter().zip(&counts) {
        let (k, kr) = k_rest.split_at_mut(8 * cnt);
        let (c, cr) = c_rest.split_at_mut(8 * cnt);
        jobs.push((a, &p[..cnt], &m[..cnt], k, c));
        (k_rest, c_rest) = (kr, cr);
    }
    let job = |(a, p, m, k, c): (usize, &[u64], &[u8], &mut [u64], &mut [i32])| {
        write_rows(p, m, a as i32, k, c, stream)
    };
    if jobs.len() == 1 {
        jobs.into_iter().for_each(job);
    } else {
        jobs.into_par_iter().for_each(job);
    }
    let parents = gathered.unwrap_or_else(|| {
        // the only chunk's parents sit at the start of the scratch
        pbuf.truncate(total);
        pbuf
    });
    (kd, cd, parents)
}

/// Parents (`key >> 3`) of sorted keys `part` into `p` and, per parent, the mask of its
/// occupied children into `m`; returns the number of parents. Branch-free: every key
/// stores its parent's entry, the last store per parent holds the complete mask.
fn collect_parents(part: &[u64], p: &mut [u64], m: &mut [u8]) -> usize {
    collect_parents_cont(part, p, m, COLLECT_START)
        .0
        .wrapping_add(1)
}

/// Where a parent collection stands after some keys: the index of the last parent
/// (usize::MAX: none yet), its key (u64::MAX: none) and its mask so far.
type CollectState = (usize, u64, u8);

/// The state before the first key.
const COLLECT_START: CollectState = (usize::MAX, u64::MAX, 0);

/// [`collect_parents`] of the keys `part` that follow earlier ones whose collection left
/// `state` (entries up to its index already in `p`, `m`); returns the state after them.
fn collect_parents_cont(
    part: &[u64],
    p: &mut [u64],
    m: &mut [u8],
    state: CollectState,
) -> CollectState {
    let (j, prev, mask) = state;
    // at most one parent per key, and a run going on from earlier keys is rewritten at j
    let room = j.wrapping_add(1) + part.len();
    assert!(p.len() >= room && m.len() >= room);
    #[cfg(target_arch = "x86_64")]
    if part.len() >= 8
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("popcnt")
    {
        // SAFETY: AVX-512F and POPCNT detected; lengths asserted above
        let (j, prev, mask, done) = unsafe { collect_parents_avx512(part, p, m, j, prev, mask) };
        return collect_parents_from(&part[done..], p, m, (j, prev, mask));
    }
    collect_parents_from(part, p, m, state)
}

/// [`collect_parents_cont`], one key at a time.
#[inline(always)]
fn collect_parents_from(
    part: &[u64],
    p: &mut [u64],
    m: &mut [u8],
    state: CollectState,
) -> CollectState {
    let (mut j, mut prev, mut mask) = state;
    for &key in part {
        let parent = key >> 3;
        let new = parent != prev;
        j = j.wrapping_add(new as usize);
        let bit = 1u8 << (key & 7);
        mask = if new { bit } else { mask | bit };
        prev = parent;
        // SAFETY: j ≤ (earlier parents) + index of this key < p.len(), m.len() (asserted
        // by every caller)
        unsafe {
            *p.get_unchecked_mut(j) = parent;
            *m.get_unchecked_mut(j) = mask;
        }
    }
    (j, prev, mask)
}

/// [`collect_parents_cont`] for the whole 8-key groups of `part` with AVX-512, from the
/// state (`j`, `prev`, `mask`) after earlier keys: per group the
/// parents, a segmented OR scan of the child bits over runs of equal parents within the
/// group, then the previous group's last run carried into the lanes that continue it, and
/// each run's last lane compress-stored at its parent's index (a run that goes on into
/// the next group is rewritten there, as in the scalar loop). Only the carry (one masked
/// OR and a broadcast) links one group to the next, so the scans of successive groups
/// overlap. Returns the scalar loop's state after the groups, and how many keys they took.
///
/// # Safety
/// AVX-512F must be available; `p.len()` and `m.len()` at least `j + 1 + part.len()`
/// (`j + 1` wrapping: 0 for no earlier parent).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,popcnt")]
unsafe fn collect_parents_avx512(
    part: &[u64],
    p: &mut [u64],
    m: &mut [u8],
    j: usize,
    prev: u64,
    mask: u8,
) -> (usize, u64, u8, usize) {
    use std::arch::x86_64::*;
    let groups = part.len() / 8;
    let none = _mm512_set1_epi64(-1); // u64::MAX: no parent (keys are below 2^63)
    let zero = _mm512_setzero_si512();
    let mut prev_par = _mm512_set1_epi64(prev as i64);
    // the previous group's last run's mask so far, in every lane
    let mut carry = _mm512_set1_epi64(mask as i64);
    let mut last_j = j; // index of the previous group's last parent
    let seven = _mm512_set1_epi64(7);
    let one = _mm512_set1_epi64(1);
    for g in 0..groups {
        // SAFETY: 8 keys at 8g (g < part.len() / 8)
        let k = unsafe { _mm512_loadu_si512(part.as_ptr().add(8 * g) as *const __m512i) };
        let par = _mm512_srli_epi64::<3>(k);
        let mut acc = _mm512_sllv_epi64(one, _mm512_and_si512(k, seven));
        // lane i against lane i - s of this group (lanes below s have none)
        macro_rules! step {
            ($s:literal) => {{
                let back_par = _mm512_alignr_epi64::<{ 8 - $s }>(par, none);
                let back_acc = _mm512_alignr_epi64::<{ 8 - $s }>(acc, zero);
                let same = _mm512_cmpeq_epi64_mask(par, back_par);
                acc = _mm512_mask_or_epi64(acc, same, acc, back_acc);
            }};
        }
        step!(1);
        step!(2);
        step!(4);
        // lane i has the parent of lane i - 1 (lane 0: of the previous group's last lane)
        let continues = _mm512_cmpeq_epi64_mask(par, _mm512_alignr_epi64::<7>(par, prev_par));
        // the lanes that continue the previous group's last run (a prefix: keys are sorted)
        let carried = _mm512_cmpeq_epi64_mask(par, _mm512_permutexvar_epi64(seven, prev_par));
        acc = _mm512_mask_or_epi64(acc, carried, acc, carry);
        carry = _mm512_permutexvar_epi64(seven, acc);
        let new = !continues;
        // the last lane of each run in this group: the next lane starts a new parent
        let last: __mmask8 = (new >> 1) | 0x80;
        let j0 = last_j.wrapping_add((new & 1) as usize);
        let runs = last.count_ones() as usize;
        // SAFETY: j0 <= 8g (at most one parent per key), so j0 + 8 <= part.len() <= p.len(),
        // m.len(); the byte store writes 8 bytes of which `runs` are kept, the rest being
        // rewritten later or lying past the final count
        unsafe {
            _mm512_mask_compressstoreu_epi64(p.as_mut_ptr().add(j0) as *mut i64, last, par);
            let masks = _mm512_cvtepi64_epi8(_mm512_maskz_compress_epi64(last, acc));
            _mm_storel_epi64(m.as_mut_ptr().add(j0) as *mut __m128i, masks);
        }
        last_j = j0 + runs - 1;
        prev_par = par;
    }
    // the scalar loop's state: the last parent, its index and its mask so far
    if groups == 0 {
        return (j, prev, mask, 0);
    }
    let last_mask = _mm_cvtsi128_si64(_mm512_castsi512_si128(carry)) as u8;
    let last_parent = part[8 * groups - 1] >> 3;
    (last_j, last_parent, last_mask, 8 * groups)
}

/// Every parent's 8 child keys into `k` and children ranks into `c` (8 per parent), from the
/// parents `p` and their occupancy masks `m`; the first occupied child gets `first_rank`.
/// `stream`: store with non-temporal stores (for outputs nothing reads back soon), done
/// where both outputs are at least 16-byte aligned. Used by the build and the OCTF decoder.
pub(crate) fn write_rows(
    p: &[u64],
    m: &[u8],
    first_rank: i32,
    k: &mut [u64],
    c: &mut [i32],
    stream: bool,
) {
    if write_rows_unfenced(p, m, first_rank, k, c, stream).1 {
        // orders the streaming stores before whatever follows (a join, a read)
        store_fence();
    }
}

/// [`write_rows`] without the closing store fence: returns the rank after the last
/// occupied child and whether streaming stores were used (then the caller fences before
/// the rows are read).
fn write_rows_unfenced(
    p: &[u64],
    m: &[u8],
    first_rank: i32,
    k: &mut [u64],
    c: &mut [i32],
    stream: bool,
) -> (i32, bool) {
    assert!(m.len() == p.len() && k.len() == 8 * p.len() && c.len() == 8 * p.len());
    let stream = stream && (k.as_ptr() as usize) & 15 == 0 && (c.as_ptr() as usize) & 15 == 0;
    #[cfg(target_arch = "x86_64")]
    if stream {
        let (ka, ca) = (k.as_ptr() as usize, c.as_ptr() as usize);
        // SAFETY (both): the CPU feature is detected; lengths asserted above, alignment
        // checked here
        if ka & 63 == 0 && ca & 31 == 0 && std::is_x86_feature_detected!("avx512f") {
            return (unsafe { write_rows_avx512(p, m, first_rank, k, c) }, true);
        }
        if ka & 31 == 0 && ca & 31 == 0 && std::is_x86_feature_detected!("avx2") {
            return (unsafe { write_rows_avx2(p, m, first_rank, k, c) }, true);
        }
    }
    let mut first = first_rank;
    for (((&parent, &mask), kj), cj) in p
        .iter()
        .zip(m)
        .zip(k.chunks_exact_mut(8))
        .zip(c.chunks_exact_mut(8))
    {
        let row = child_row(mask as usize, first);
        first += mask.count_ones() as i32;
        let base = parent << 3;
        let keys: [u64; 8] = std::array::from_fn(|c8| base | c8 as u64);
        if stream {
            // SAFETY: `stream` is only kept when both outputs are 16-byte aligned; rows
            // start at multiples of 64 / 32 bytes from there
            unsafe { stream_row(kj, &keys, cj, &row) };
        } else {
            kj.copy_from_slice(&keys);
            cj.copy_from_slice(&row);
        }
    }
    (first, stream && cfg!(target_arch = "x86_64"))
}

/// Orders earlier streaming stores before later memory operations (nothing off x86-64,
/// where no streaming stores are issued).
fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86_64
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// [`child_row`] in one register: `first + rank` for occupied children, -1 for empty ones.
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn rank_row_avx2(mask: u8, first: i32) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // SAFETY: a row of CHILD_RANKS is 8 i32 (32 bytes); unaligned load
    let t = unsafe { _mm256_loadu_si256(CHILD_RANKS[mask as usize].as_ptr() as *const __m256i) };
    // occupied: rank + first; empty (-1): the sign mask keeps -1
    _mm256_or_si256(
        _mm256_add_epi32(t, _mm256_set1_epi32(first)),
        _mm256_srai_epi32::<31>(t),
    )
}

/// [`write_rows`] with 32-byte non-temporal stores (2 per parent's keys, 1 for its ranks).
///
/// Returns the rank after the last occupied child; the caller fences before the rows are
/// read by another thread.
///
/// # Safety
/// AVX2 must be available; `k` (8 per parent) and `c` (8 per parent) 32-byte aligned, of
/// lengths `8 * p.len()`, and `m.len() == p.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn write_rows_avx2(
    p: &[u64],
    m: &[u8],
    first_rank: i32,
    k: &mut [u64],
    c: &mut [i32],
) -> i32 {
    use std::arch::x86_64::*;
    let kp = k.as_mut_ptr() as *mut __m256i;
    let cp = c.as_mut_ptr() as *mut __m256i;
    let iota_lo = _mm256_set_epi64x(3, 2, 1, 0);
    let iota_hi = _mm256_set_epi64x(7, 6, 5, 4);
    let mut first = first_rank;
    for (j, (&parent, &mask)) in p.iter().zip(m).enumerate() {
        // SAFETY: AVX2 per the caller
        let row = unsafe { rank_row_avx2(mask, first) };
        first += mask.count_ones() as i32;
        let base = _mm256_set1_epi64x((parent << 3) as i64);
        // SAFETY: j < p.len(); rows j of k (64 B) and c (32 B) are in bounds and 32-byte
        // aligned per the caller
        unsafe {
            _mm256_stream_si256(kp.add(2 * j), _mm256_or_si256(base, iota_lo));
            _mm256_stream_si256(kp.add(2 * j + 1), _mm256_or_si256(base, iota_hi));
            _mm256_stream_si256(cp.add(j), row);
        }
    }
    first
}

/// [`write_rows`] with 64-byte non-temporal stores: a parent's 8 keys fill one cache line,
/// two parents' ranks another, so every line is written whole in one store (32-byte
/// stores leave half-written lines in the write-combining buffers between rows). Returns
/// the rank after the last occupied child; the caller fences before the rows are read by
/// another thread.
///
/// # Safety
/// AVX-512F must be available; `k` (8 per parent) 64-byte aligned, `c` (8 per parent)
/// 32-byte aligned, of lengths `8 * p.len()`, and `m.len() == p.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,popcnt")]
unsafe fn write_rows_avx512(
    p: &[u64],
    m: &[u8],
    first_rank: i32,
    k: &mut [u64],
    c: &mut [i32],
) -> i32 {
    use std::arch::x86_64::*;
    let n = p.len();
    let kp = k.as_mut_ptr() as *mut __m512i;
    let cp = c.as_mut_ptr();
    let iota = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    let mut first = first_rank;
    // one parent's ranks (8 × i32) from its mask; advances `first`
    let mut ranks = |mask: u8| {
        // SAFETY: AVX-512F (so AVX2) per the caller
        let row = unsafe { rank_row_avx2(mask, first) };
        first += mask.count_ones() as i32;
        row
    };
    let keys = |parent: u64| _mm512_or_si512(_mm512_set1_epi64((parent << 3) as i64), iota);
    let mut j = 0;
    // a leading row of ranks alone when `c` sits half way into a line
    if n > 0 && (cp as usize) & 63 != 0 {
        // SAFETY: row 0 is in bounds; k 64-byte and c 32-byte aligned per the caller
        unsafe {
            _mm512_stream_si512(kp, keys(p[0]));
            _mm256_stream_si256(cp as *mut __m256i, ranks(m[0]));
        }
        j = 1;
    }
    while j + 2 <= n {
        let lo = ranks(m[j]);
        let hi = ranks(m[j + 1]);
        // SAFETY: rows j, j + 1 are in bounds; k rows are 64-byte aligned, and after the
        // leading row c's pair of rows starts on a 64-byte line
        unsafe {
            _mm512_stream_si512(kp.add(j), keys(p[j]));
            _mm512_stream_si512(kp.add(j + 1), keys(p[j + 1]));
            _mm512_stream_si512(
                cp.add(8 * j) as *mut __m512i,
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi),
            );
        }
        j += 2;
    }
    if j < n {
        // SAFETY: the last row, in bounds; c's row is 32-byte aligned
        unsafe {
            _mm512_stream_si512(kp.add(j), keys(p[j]));
            _mm256_stream_si256(cp.add(8 * j) as *mut __m256i, ranks(m[j]));
        }
    }
    first
}

/// `CHILD_RANKS[m][c]`: for an occupancy mask `m` of a parent's 8 children, child c's rank
/// among the occupied ones, or -1 when c is empty.
static CHILD_RANKS: [[i32; 8]; 256] = child_ranks();

const fn child_ranks() -> [[i32; 8]; 256] {
    let mut t = [[-1i32; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let (mut c, mut r) = (0, 0);
        while c < 8 {
            if (m >> c) & 1 == 1 {
                t[m][c] = r;
                r += 1;
            }
            c += 1;
        }
        m += 1;
    }
    t
}

/// One parent's children row: `first + rank` for occupied children, -1 for empty ones
/// (`(rank + first) | (rank >> 31)`: the sign mask turns empty slots into -1).
#[inline(always)]
fn child_row(mask: usize, first: i32) -> [i32; 8] {
    let t = &CHILD_RANKS[mask & 255];
    std::array::from_fn(|c| t[c].wrapping_add(first) | (t[c] >> 31))
}

/// Level outputs at least this large are written with streaming (non-temporal) stores.
pub(crate) const STREAM_MIN_BYTES: usize = 1 << 21;

/// `out.fill(v)`, with non-temporal stores where `stream` (16-byte stores from the first
/// 16-byte boundary; the batch ids of large levels, written once and not read back soon).
fn fill_i32(out: &mut [i32], v: i32, stream: bool) {
    #[cfg(target_arch = "x86_64")]
    if stream {
        use std::arch::x86_64::{__m128i, _mm_set1_epi32, _mm_sfence, _mm_stream_si128};
        let head = (out.as_ptr() as usize).wrapping_neg() % 16 / 4;
        let head = head.min(out.len());
        let (lead, rest) = out.split_at_mut(head);
        lead.fill(v);
        let whole = rest.len() / 4 * 4;
        let (body, tail) = rest.split_at_mut(whole);
        // SAFETY: SSE2 is part of x86_64; `body` starts 16-byte aligned (after `head`) and
        // holds whole 4-value groups
        unsafe {
            let x = _mm_set1_epi32(v);
            let p = body.as_mut_ptr() as *mut __m128i;
            for i in 0..whole / 4 {
                _mm_stream_si128(p.add(i), x);
            }
            _mm_sfence();
        }
        tail.fill(v);
        return;
    }
    let _ = stream;
    out.fill(v);
}

/// Store one parent's 8 child keys and 8 child ranks with non-temporal stores.
///
/// # Safety
/// `k` must be 16-byte aligned (8 u64) and `c` 16-byte aligned (8 i32).
#[inline(always)]
unsafe fn stream_row(k: &mut [u64], keys: &[u64; 8], c: &mut [i32], row: &[i32; 8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        debug_assert!(k.len() == 8 && c.len() == 8);
        // SAFETY: lengths 8 (chunks_exact), alignment per the caller; SSE2 is baseline x86_64
        unsafe {
            let kp = k.as_mut_ptr() as *mut __m128i;
            let ks = keys.as_ptr() as *const __m128i;
            for i in 0..4 {
                _mm_stream_si128(kp.add(i), _mm_loadu_si128(ks.add(i)));
            }
            let cp = c.as_mut_ptr() as *mut __m128i;
            let rs = row.as_ptr() as *const __m128i;
            _mm_stream_si128(cp, _mm_loadu_si128(rs));
            _mm_stream_si128(cp.add(1), _mm_loadu_si128(rs.add(1)));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        k.copy_from_slice(keys);
        c.copy_from_slice(row);
    }
}

/// Non-empty node counts at depths `fd..=depth` of the tree grown from sorted unique leaf
/// keys (index d; entries below fd are 0): adjacent leaves first differ at the depth of
/// their highest differing key bit, and every such pair adds a node from there down.
fn level_counts(leaves: &[u64], depth: usize, fd: usize) -> Vec<usize> {
    let mut first_diff = vec![0usize; depth + 1];
    for w in leaves.windows(2) {
        let bit = 63 - (w[0] ^ w[1]).leading_zeros() as usize;
        // keys at depth d are leaf >> 3(depth - d): they differ there iff d >= depth - bit / 3
        first_diff[depth - (bit / 3).min(depth)] += 1;
    }
    let mut counts = vec![0usize; depth + 1];
    let mut run = usize::from(!leaves.is_empty());
    for (d, c) in counts.iter_mut().enumerate() {
        run += first_diff[d];
        if d >= fd {
            *c = run;
        }
    }
    counts
}

/// Lay the samples' levels out straight into the batch arrays: count every sample's nodes per
/// depth first, then each sample grows its levels into its own windows (in parallel).
fn assemble_batch(samples: Vec<SampleLeaves>, offsets: &[usize], opts: BuildOptions) -> Octree {
    let depth = opts.depth as usize;
    let fd = opts.full_depth as usize;
    let batch_size = samples.len();
    let mut batch_nnum = vec![vec![0usize; batch_size]; depth + 1];
    let mut batch_nnum_nempty = vec![vec![0usize; batch_size]; depth + 1];
    let counts: Vec<Vec<usize>> = samples
        .par_iter()
        .map(|s| level_counts(&s.leaves, depth, fd))
        .collect();
    for (b, ne) in counts.iter().enumerate() {
        for d in 0..=depth {
            let dense = 1usize << (3 * d);
            batch_nnum[d][b] = if d <= fd { dense } else { 8 * ne[d - 1] };
            batch_nnum_nempty[d][b] = if d < fd { dense } else { ne[d] };
        }
    }
    let totals: Vec<usize> = batch_nnum.iter().map(|v| v.iter().sum()).collect();
    // SAFETY: every sample writes all entries of its windows below (the windows partition
    // each depth's arrays), and every point's entry of point_leaf
    let mut keys: Vec<Vec<u64>> = unsafe { crate::mem::vecs_for_overwrite(&totals) };
    let mut children: Vec<Vec<i32>> = unsafe { crate::mem::vecs_for_overwrite(&totals) };
    let mut batch: Vec<Vec<i32>> = unsafe { crate::mem::vecs_for_overwrite(&totals) };
    let n = *offsets.last().unwrap();
    let mut point_leaf: Vec<i64> = unsafe { crate::sort::vec_for_overwrite(n) };
    // large levels are written with streaming stores, as in the single-sample build (every
    // window starts a whole number of 8-entry rows into a 16-byte aligned array)
    let stream: Vec<bool> = (0..=depth)
        .map(|d| {
            cfg!(target_arch = "x86_64")
                && totals[d] * 12 >= STREAM_MIN_BYTES
                && (keys[d].as_ptr() as usize) & 15 == 0
                && (children[d].as_ptr() as usize) & 15 == 0
        })
        .collect();

    // per sample: its windows of every depth's arrays, rank bases and leaf base
    struct Job<'a> {
        b: usize,
        leaves: Vec<u64>,
        local_leaf: Vec<i64>,
        point_leaf: &'a mut [i64],
        leaf_base: i64,
        levels: Vec<(&'a mut [u64], &'a mut [i32], &'a mut [i32], i32)>,
    }
    let mut rests: Vec<(&mut [u64], &mut [i32], &mut [i32])> = keys
        .iter_mut()
        .zip(children.iter_mut())
        .zip(batch.iter_mut())
        .map(|((k, c), t)| (&mut k[..], &mut c[..], &mut t[..]))
        .collect();
    let mut rank_base = vec![0i32; depth + 1];
    let mut leaf_base = 0i64;
    let mut pl_rest = &mut point_leaf[..];
    let mut jobs = Vec::with_capacity(batch_size);
    for (b, s) in samples.into_iter().enumerate() {
        let mut levels = Vec::with_capacity(depth + 1);
        for (d, rest) in rests.iter_mut().enumerate() {
            let m = batch_nnum[d][b];
            let (k, kr) = std::mem::take(&mut rest.0).split_at_mut(m);
            let (c, cr) = std::mem::take(&mut rest.1).split_at_mut(m);
            let (t, tr) = std::mem::take(&mut rest.2).split_at_mut(m);
            *rest = (kr, cr, tr);
            levels.push((k, c, t, rank_base[d]));
            rank_base[d] += batch_nnum_nempty[d][b] as i32;
        }
        let (pl, pr) = std::mem::take(&mut pl_rest).split_at_mut(offsets[b + 1] - offsets[b]);
        pl_rest = pr;
        jobs.push(Job {
            b,
            leaves: s.leaves,
            local_leaf: s.point_leaf,
            point_leaf: pl,
            leaf_base,
            levels,
        });
        leaf_base += batch_nnum_nempty[depth][b] as i64;
    }
    jobs.into_par_iter().for_each(|job| {
        for (o, &l) in job.point_leaf.iter_mut().zip(&job.local_leaf) {
            *o = l + job.leaf_base;
        }
        drop(job.local_leaf);
        let mut levels = job.levels;
        let mut level = job.leaves;
        for d in (fd + 1..=depth).rev() {
            let (k, c, t, base) = &mut levels[d];
            // SAFETY: collect_parents writes entries 0..count before they are read
            let mut up: Vec<u64> = unsafe { crate::sort::vec_for_overwrite(level.len()) };
            let mut masks: Vec<u8> = unsafe { crate::sort::vec_for_overwrite(level.len()) };
            let count = collect_parents(&level, &mut up, &mut masks);
            up.truncate(count);
            // (asserts that the precounted window holds exactly these parents' rows)
            write_rows(&up, &masks[..count], *base, k, c, stream[d]);
            fill_i32(t, job.b as i32, stream[d]);
            level = up;
        }
        // dense top: level fd records real occupancy, levels above are all non-empty
        for (d, (k, c, t, base)) in levels.iter_mut().enumerate().take(fd + 1) {
            for (i, key) in k.iter_mut().enumerate() {
                *key = i as u64;
            }
            if d < fd {
                for (i, r) in c.iter_mut().enumerate() {
                    *r = *base + i as i32;
                }
            } else {
                c.fill(-1);
                for (rank, &key) in level.iter().enumerate() {
                    c[key as usize] = *base + rank as i32;
                }
            }
            t.fill(job.b as i32);
        }
    });
    Octree {
        depth: opts.depth,
        full_depth: opts.full_depth,
        batch_size,
        keys,
        children,
        batch,
        batch_nnum,
        batch_nnum_nempty,
        point_leaf,
    }
}

#[derive(Default, Clone, Copy)]
struct ChunkReport {
    non_finite: Option<(usize, usize, f64)>,
    outside: usize,
    min: [f64; 3],
    max: [f64; 3],
}

impl ChunkReport {
    fn add_outside(&mut self, p: [f64; 3]) {
        if self.outside == 0 {
            self.min = p;
            self.max = p;
        } else {
            for a in 0..3 {
                self.min[a] = self.min[a].min(p[a]);
                self.max[a] = self.max[a].max(p[a]);
            }
        }
        self.outside += 1;
    }
    /// The sample's error, if its points had one: the first non-finite coordinate, else
    /// the points outside the box (unless clipping).
    fn check(&self, bx: &SampleBox, opts: BuildOptions) -> Result<()> {
        if let Some((index, axis, value)) = self.non_finite {
            return Err(CoreError::NonFinite { index, axis, value });
        }
        if self.outside > 0 && !opts.clip {
            let side = (1u64 << opts.depth) as f64;
            let bbox_max = [0, 1, 2].map(|a| bx.origin[a] + bx.cell[a] * side);
            return Err(CoreError::OutOfBounds {
                count: self.outside,
                bbox_min: bx.origin,
                bbox_max,
                min: self.min,
                max: self.max,
            });
        }
        Ok(())
    }
    fn merge(&mut self, o: ChunkReport) {
        if self.non_finite.is_none() {
            self.non_finite = o.non_finite;
        }
        if o.outside > 0 {
            if self.outside == 0 {
                self.min = o.min;
                self.max = o.max;
            } else {
                for a in 0..3 {
                    self.min[a] = self.min[a].min(o.min[a]);
                    self.max[a] = self.max[a].max(o.max[a]);
                }
            }
            self.outside += o.outside;
        }
    }
}

/// Coordinates this large or larger are refused when the box is automatic: the cube
/// arithmetic (centre, side) would overflow f64.
pub const AUTO_BOX_MAX_COORD: f64 = f64::MAX / 4.0;

/// An axis-aligned box or bounds as `(min_xyz, max_xyz)`.
pub type Bounds = ([f64; 3], [f64; 3]);

/// The automatic box of one sample: the tight cube around its bounds (centred on them, side
/// the largest extent; side 1 for an empty or single-point sample). The one implementation
/// of that rule: the single-cloud fast path and the batch path both call it.
pub fn auto_cube(bounds: Option<Bounds>) -> Bounds {
    let (lo, hi) = bounds.unwrap_or(([0.0; 3], [0.0; 3]));
    let center = [0, 1, 2].map(|a| (lo[a] + hi[a]) / 2.0);
    let mut side = (0..3).map(|a| hi[a] - lo[a]).fold(0.0, f64::max);
    if side <= 0.0 {
        side = 1.0;
    }
    (
        center.map(|c| c - side / 2.0),
        center.map(|c| c + side / 2.0),
    )
}

/// Per-sample axis-aligned bounds `(min, max)` of (N, 3) points, the input of an automatic box;
/// empty samples give `None`. Fails on the first (in point order) coordinate that is not finite
/// or whose magnitude is at least [`AUTO_BOX_MAX_COORD`].
pub fn sample_bounds<T: Coord>(points: &[T], offsets: &[usize]) -> Result<Vec<Option<Bounds>>> {
    let n = points.len() / 3;
    if offsets.is_empty()
        || offsets[0] != 0
        || *offsets.last().unwrap() != n
        || offsets.windows(2).any(|w| w[1] < w[0])
    {
        return Err(CoreError::arg(
            "offsets",
            format!("non-decreasing (B+1,) from 0 to N={n}"),
            format!("{offsets:?}"),
        ));
    }
    const CHUNK: usize = 1 << 15;
    let mut out = Vec::with_capacity(offsets.len() - 1);
    for w in offsets.windows(2) {
        let pts = &points[w[0] * 3..w[1] * 3];
        if pts.is_empty() {
            out.push(None);
            continue;
        }
        let partial: Vec<std::result::Result<Bounds, (usize, usize, f64)>> = pts
            .par_chunks(CHUNK * 3)
            .enumerate()
            .map(|(c, part)| {
                if let Some(b) = chunk_bounds(part) {
                    return Ok(b);
                }
                // the error path re-scans the chunk for its first offender, in point order
                for (j, p) in part.chunks_exact(3).enumerate() {
                    for a in 0..3 {
                        let v = p[a].to_f64();
                        if !v.is_finite() || v.abs() >= AUTO_BOX_MAX_COORD {
                            return Err((w[0] + c * CHUNK + j, a, v));
                        }
                    }
                }
                unreachable!("chunk_bounds refused a chunk with no offending coordinate")
            })
            .collect();
        let (mut lo, mut hi) = ([f64::INFINITY; 3], [f64::NEG_INFINITY; 3]);
        for r in partial {
            let (l, h) = r.map_err(|(index, axis, value)| {
                if value.is_finite() {
                    CoreError::arg(
                        "points",
                        format!("|coordinates| < {AUTO_BOX_MAX_COORD:.3e} for an automatic bbox"),
                        format!("{value:e} at point {index}, axis {axis}"),
                    )
                } else {
                    CoreError::NonFinite { index, axis, value }
                }
            })?;
            for a in 0..3 {
                lo[a] = lo[a].min(l[a]);
                hi[a] = hi[a].max(h[a]);
            }
        }
        out.push(Some((lo, hi)));
    }
    Ok(out)
}

/// Per-axis bounds of interleaved (x, y, z) coordinates, or None when one of them is not
/// finite or has magnitude at least [`AUTO_BOX_MAX_COORD`] (the caller then finds which).
fn chunk_bounds<T: Coord>(part: &[T]) -> Option<Bounds> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 detected
        return unsafe { chunk_bounds_avx2(part) };
    }
    chunk_bounds_lanes(part)
}

/// [`chunk_bounds_lanes`] compiled for AVX2.
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn chunk_bounds_avx2<T: Coord>(part: &[T]) -> Option<Bounds> {
    chunk_bounds_lanes(part)
}

/// [`chunk_bounds`], branch-free so it vectorises: 16 points (48 values) per step in 48
/// lanes of the input's own precision, lane l holding axis l % 3. Against the early-exit
/// f64 loop it replaces: 123k float32 points 212 -> 36 µs; `build_octree(points, 10)`
/// with its default automatic box, 1 thread, kitti000000 1.12-1.17 -> 0.82-0.83 ms and
/// lidar1M 6.7-7.1 -> 4.0-4.2 ms (separate processes, alternating).
#[inline(always)]
fn chunk_bounds_lanes<T: Coord>(part: &[T]) -> Option<Bounds> {
    const LANES: usize = 48;
    // in float32 the limit rounds to +inf, so the test is just "finite"
    let (lim, neg) = (
        T::from_f64(AUTO_BOX_MAX_COORD),
        T::from_f64(-AUTO_BOX_MAX_COORD),
    );
    let mut lo = [T::from_f64(f64::INFINITY); LANES];
    let mut hi = [T::from_f64(f64::NEG_INFINITY); LANES];
    let mut ok = [true; LANES];
    let mut step = |l: usize, v: T| {
        // NaN compares false: it fails `ok` and leaves lo / hi alone
        ok[l] &= (v < lim) & (v > neg);
        lo[l] = v.fmin(lo[l]);
        hi[l] = v.fmax(hi[l]);
    };
    let mut blocks = part.chunks_exact(LANES);
    for block in blocks.by_ref() {
        for (l, &v) in block.iter().enumerate() {
            step(l, v);
        }
    }
    // the rest starts at a multiple of 48 values, so value j is on axis j % 3, like lane j
    for (l, &v) in blocks.remainder().iter().enumerate() {
        step(l, v);
    }
    if ok.iter().any(|&o| !o) {
        return None;
    }
    let (mut blo, mut bhi) = ([f64::INFINITY; 3], [f64::NEG_INFINITY; 3]);
    for l in 0..LANES {
        blo[l % 3] = blo[l % 3].min(lo[l].to_f64());
        bhi[l % 3] = bhi[l % 3].max(hi[l].to_f64());
    }
    Some((blo, bhi))
}

/// Average per-point values (N, C) over each non-empty leaf; optionally re-normalise
/// each averaged row to unit length (normals). Sums in f64, in point order; a leaf with
/// no points averages to 0. Fails on a leaf index outside `0..num_leaves`.
pub fn average_per_leaf(
    values: &[f32],
    channels: usize,
    point_leaf: &[i64],
    num_leaves: usize,
    normalize: bool,
) -> Result<Vec<f32>> {
    if channels == 0 || values.len() != point_leaf.len() * channels {
        return Err(CoreError::arg(
            "features",
            format!("({}, C) values", point_leaf.len()),
            format!("{} values with C={channels}", values.len()),
        ));
    }
    // a row per leaf of its C sums and its point count, so each point touches one place
    match channels {
        1 => average_rows::<2>(values, point_leaf, num_leaves, normalize),
        2 => average_rows::<3>(values, point_leaf, num_leaves, normalize),
        3 => average_rows::<4>(values, point_leaf, num_leaves, normalize),
        4 => average_rows::<5>(values, point_leaf, num_leaves, normalize),
        _ => average_any(values, channels, point_leaf, num_leaves, normalize),
    }
}

/// [`average_per_leaf`] for `W - 1` channels (kitti000000's 123k points, 1 thread: C = 1
/// 0.37 -> 0.17 ms, C = 3 normals 0.56 -> 0.35 ms against separate sum and count arrays).
fn average_rows<const W: usize>(
    values: &[f32],
    point_leaf: &[i64],
    num_leaves: usize,
    normalize: bool,
) -> Result<Vec<f32>> {
    let c = W - 1;
    let mut acc = vec![[0f64; W]; num_leaves];
    for (i, (row, &l)) in values.chunks_exact(c).zip(point_leaf).enumerate() {
        // a negative index wraps to a huge one, so one test covers both ends
        let Some(a) = acc.get_mut(l as usize) else {
            return Err(bad_leaf(l, i, num_leaves));
        };
        for k in 0..c {
            a[k] += row[k] as f64;
        }
        a[c] += 1.0;
    }
    let mut out = vec![0f32; num_leaves * c];
    out.par_chunks_mut(c)
        .zip(acc.par_iter())
        .for_each(|(o, a)| finish_row(o, &a[..c], a[c], normalize));
    Ok(out)
}

/// [`average_per_leaf`] for any channel count.
fn average_any(
    values: &[f32],
    channels: usize,
    point_leaf: &[i64],
    num_leaves: usize,
    normalize: bool,
) -> Result<Vec<f32>> {
    let mut sums = vec![0f64; num_leaves * channels];
    let mut counts = vec![0f64; num_leaves];
    for (i, (row, &l)) in values.chunks_exact(channels).zip(point_leaf).enumerate() {
        let Some(n) = counts.get_mut(l as usize) else {
            return Err(bad_leaf(l, i, num_leaves));
        };
        *n += 1.0;
        let l = l as usize;
        for (s, v) in sums[l * channels..(l + 1) * channels].iter_mut().zip(row) {
            *s += *v as f64;
        }
    }
    let mut out = vec![0f32; num_leaves * channels];
    out.par_chunks_mut(channels).enumerate().for_each(|(l, o)| {
        finish_row(
            o,
            &sums[l * channels..(l + 1) * channels],
            counts[l],
            normalize,
        )
    });
    Ok(out)
}

/// One leaf's output row from its sums and point count: the mean, or the unit-length
/// direction of the sum (`normalize`; zero stays zero).
#[inline]
fn finish_row(out: &mut [f32], sums: &[f64], count: f64, normalize: bool) {
    if normalize {
        let norm = sums.iter().map(|v| v * v).sum::<f64>().sqrt();
        let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        for (o, v) in out.iter_mut().zip(sums) {
            *o = (v * scale) as f32;
        }
    } else {
        let c = count.max(1.0);
        for (o, v) in out.iter_mut().zip(sums) {
            *o = (v / c) as f32;
        }
    }
}

fn bad_leaf(l: i64, point: usize, num_leaves: usize) -> CoreError {
    CoreError::arg(
        "point_leaf",
        format!("values in 0..{num_leaves}"),
        format!("{l} at point {point}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cube(depth: u8) -> SampleBox {
        let c = 2.0 / (1u64 << depth) as f64;
        SampleBox {
            origin: [-1.0; 3],
            cell: [c; 3],
        }
    }

    fn opts(depth: u8) -> BuildOptions {
        BuildOptions {
            depth,
            full_depth: 2.min(depth),
            clip: false,
        }
    }

    proptest! {
        #[test]
        fn structure_invariants(pts in proptest::collection::vec(-0.99f32..0.99, 0..600), depth in 1u8..9) {
            let n = pts.len() / 3;
            let pts = &pts[..n * 3];
            let t = build_octree(pts, &[0, n], &[cube(depth)], opts(depth)).unwrap();
            for d in 0..=depth as usize {
                prop_assert!(t.keys[d].windows(2).all(|w| w[0] < w[1]));
                let ne: Vec<i32> = t.children[d].iter().copied().filter(|&c| c >= 0).collect();
                prop_assert_eq!(ne, (0..t.nnum_nempty(d) as i32).collect::<Vec<_>>());
                if d > 0 && d > t.full_depth as usize {
                    // parent of every node is a non-empty node one level up
                    for (i, k) in t.keys[d].iter().enumerate() {
                        let rank = i / 8;
                        let parent = t.children[d - 1].iter().position(|&c| c == rank as i32).unwrap();
                        prop_assert_eq!(t.keys[d - 1][parent], k >> 3);
                    }
                }
            }
            // every point lies inside its leaf cell
            let leaf_keys: Vec<u64> = t.keys[depth as usize].iter().zip(&t.children[depth as usize]).filter(|(_, c)| **c >= 0).map(|(k, _)| *k).collect();
            let cell = 2.0 / (1u64 << depth) as f64;
            for i in 0..n {
                let [x, y, z] = morton::decode(leaf_keys[t.point_leaf[i] as usize]);
                for (a, q) in [x, y, z].into_iter().enumerate() {
                    let lo = -1.0 + q as f64 * cell;
                    let p = pts[3 * i + a] as f64;
                    prop_assert!(p >= lo - 1e-6 && p < lo + cell + 1e-6);
                }
            }
        }

        #[test]
        fn batch_equals_concatenation(a in proptest::collection::vec(-0.99f32..0.99, 0..300), b in proptest::collection::vec(-0.99f32..0.99, 0..300)) {
            let (a, b) = (&a[..a.len() / 3 * 3], &b[..b.len() / 3 * 3]);
            let ta = build_octree(a, &[0, a.len() / 3], &[cube(5)], opts(5)).unwrap();
            let tb = build_octree(b, &[0, b.len() / 3], &[cube(5)], opts(5)).unwrap();
            let all: Vec<f32> = a.iter().chain(b).copied().collect();
            let t = build_octree(&all, &[0, a.len() / 3, all.len() / 3], &[cube(5), cube(5)], opts(5)).unwrap();
            for d in 0..=5 {
                prop_assert_eq!(t.keys[d].clone(), [ta.keys[d].clone(), tb.keys[d].clone()].concat());
            }
        }

        #[test]
        fn batch_laid_out_like_separate_trees(
            clouds in proptest::collection::vec(proptest::collection::vec(-0.99f32..0.99, 0..240), 2..6),
            depth in 1u8..8,
            fd in 0u8..4,
        ) {
            // every field of a batch equals the separately built single-sample trees (built
            // by the single-sample path), concatenated with ranks and leaves shifted
            let o = BuildOptions { depth, full_depth: fd.min(depth), clip: false };
            let clouds: Vec<&[f32]> = clouds.iter().map(|c| &c[..c.len() / 3 * 3]).collect();
            let singles: Vec<Octree> = clouds
                .iter()
                .map(|c| build_octree(c, &[0, c.len() / 3], &[cube(depth)], o).unwrap())
                .collect();
            let all: Vec<f32> = clouds.concat();
            let mut offsets = vec![0usize];
            for c in &clouds {
                offsets.push(offsets.last().unwrap() + c.len() / 3);
            }
            let boxes = vec![cube(depth); clouds.len()];
            let t = build_octree(&all, &offsets, &boxes, o).unwrap();
            let (mut leaf_base, mut rank_base) = (0i64, vec![0i32; depth as usize + 1]);
            let mut want = Octree { depth, full_depth: o.full_depth, batch_size: clouds.len(), ..Default::default() };
            want.keys = vec![Vec::new(); depth as usize + 1];
            want.children = want.keys.iter().map(|_| Vec::new()).collect();
            want.batch = want.children.clone();
            want.batch_nnum = vec![Vec::new(); depth as usize + 1];
            want.batch_nnum_nempty = want.batch_nnum.clone();
            for (b, s) in singles.iter().enumerate() {
                for d in 0..=depth as usize {
                    want.keys[d].extend(&s.keys[d]);
                    want.children[d].extend(s.children[d].iter().map(|&c| if c < 0 { -1 } else { c + rank_base[d] }));
                    want.batch[d].extend(std::iter::repeat_n(b as i32, s.keys[d].len()));
                    want.batch_nnum[d].push(s.batch_nnum[d][0]);
                    want.batch_nnum_nempty[d].push(s.batch_nnum_nempty[d][0]);
                    rank_base[d] += s.batch_nnum_nempty[d][0] as i32;
                }
                want.point_leaf.extend(s.point_leaf.iter().map(|&l| l + leaf_base));
                leaf_base += s.batch_nnum_nempty[depth as usize][0] as i64;
            }
            prop_assert_eq!(t, want);
        }
    }

    #[test]
    fn parallel_build_matches_serial_and_oracle() {
        // enough points for the parallel path (chunks, bucket groups), skewed like a scan
        let mut rnd = crate::testing::unit(0x9e3779b97f4a7c15u64);
        let n = 120_000;
        let mut pts = Vec::with_capacity(3 * n);
        for i in 0..n {
            let flat = i % 3 != 0; // two thirds on a thin "ground" slab
            pts.push((rnd() * 1.98 - 0.99) as f32);
            pts.push((rnd() * 1.98 - 0.99) as f32);
            pts.push(if flat {
                (rnd() * 0.02 - 0.5) as f32
            } else {
                (rnd() * 1.98 - 0.99) as f32
            });
        }
        // 6..=11: LSD passes over the whole sample on one thread, the hybrid sort (top
        // buckets, each sorted by LSD passes) on several; 13: top digit + tiny buckets, in
        // parallel at 2, 3 and 12 threads (more threads than cores, 16 bucket groups each)
        for depth in [6u8, 7, 8, 9, 10, 11, 13] {
            same_tree_at_thread_counts_and_oracle(&pts, depth, &[1, 2, 3, 12]);
        }
    }

    /// Builds `pts` at each thread count: every tree the same, and the non-empty leaves and
    /// every point's leaf as an oracle of plain float math and a std sort gives them.
    fn same_tree_at_thread_counts_and_oracle(pts: &[f32], depth: u8, threads: &[usize]) {
        let n = pts.len() / 3;
        let trees: Vec<Octree> = threads
            .iter()
            .map(|&threads| {
                crate::testing::with_threads(threads, || {
                    build_octree(pts, &[0, n], &[cube(depth)], opts(depth)).unwrap()
                })
            })
            .collect();
        for (t, &th) in trees.iter().zip(threads) {
            assert_eq!(t, &trees[0], "depth {depth}, {th} threads");
        }
        // oracle: keys by plain float math, sorted and deduplicated by the standard library
        let side = (1u64 << depth) as f32;
        let key_of = |i: usize| {
            let q = [0, 1, 2].map(|a| {
                (((pts[3 * i + a] + 1.0) * (side / 2.0)).floor() as u32).min(side as u32 - 1)
            });
            morton::encode(q[0], q[1], q[2])
        };
        let mut keys: Vec<u64> = (0..n).map(key_of).collect();
        keys.sort_unstable();
        keys.dedup();
        let t = &trees[0];
        let d = depth as usize;
        let leaf_keys: Vec<u64> = t.keys[d]
            .iter()
            .zip(&t.children[d])
            .filter(|(_, c)| **c >= 0)
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(leaf_keys, keys, "depth {depth}");
        for i in 0..n {
            assert_eq!(
                leaf_keys[t.point_leaf[i] as usize],
                key_of(i),
                "depth {depth}"
            );
        }
    }

    #[test]
    fn auto_cube_is_the_tight_cube() {
        // centred on the bounds, side the largest extent, every bound inside
        let (lo, hi) = auto_cube(Some(([-1.0, 2.0, 0.5], [3.0, 2.5, 0.5])));
        assert_eq!((lo, hi), ([-1.0, 0.25, -1.5], [3.0, 4.25, 2.5]));
        // no extent (one point) or no points: side 1
        assert_eq!(auto_cube(Some(([1.0; 3], [1.0; 3]))), ([0.5; 3], [1.5; 3]));
        assert_eq!(auto_cube(None), ([-0.5; 3], [0.5; 3]));
    }

    #[test]
    fn sample_bounds_refuses_what_an_auto_box_cannot_hold() {
        let pts = [0.0f64, 0.0, 0.0, 0.0, -1e308, 0.0, f64::NAN, 0.0, 0.0];
        match sample_bounds(&pts, &[0, 3]) {
            Err(CoreError::InvalidArgument { name, actual, .. }) => {
                assert_eq!(name, "points");
                assert!(actual.contains("at point 1, axis 1"), "{actual}");
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        // the first bad coordinate in point order decides
        assert!(matches!(
            sample_bounds(&pts[6..], &[0, 1]),
            Err(CoreError::NonFinite {
                index: 0,
                axis: 0,
                ..
            })
        ));
        let ok = sample_bounds(&pts[..3], &[0, 1, 1]).unwrap();
        assert_eq!(ok, vec![Some(([0.0; 3], [0.0; 3])), None]);
    }

    /// A plain per-point fold: bounds per sample, or the first bad coordinate in point order.
    fn naive_bounds<T: Coord>(
        pts: &[T],
        offsets: &[usize],
    ) -> std::result::Result<Vec<Option<Bounds>>, (usize, usize)> {
        let mut out = Vec::new();
        for w in offsets.windows(2) {
            let mut b: Option<Bounds> = None;
            for i in w[0]..w[1] {
                let p = [0, 1, 2].map(|a| pts[3 * i + a].to_f64());
                if let Some(a) =
                    (0..3).find(|&a| !(p[a].is_finite() && p[a].abs() < AUTO_BOX_MAX_COORD))
                {
                    return Err((i, a));
                }
                let (lo, hi) = b.get_or_insert((p, p));
                for a in 0..3 {
                    lo[a] = lo[a].min(p[a]);
                    hi[a] = hi[a].max(p[a]);
                }
            }
            out.push(b);
        }
        Ok(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The per-channel-count row layouts give the generic path's result bit for bit
        /// (same f64 sums in point order), means and normalised rows, empty leaves as 0.
        #[test]
        fn leaf_averages_match_the_generic_path(
            seed in any::<u64>(),
            n in 0usize..2000,
            channels in 1usize..6,
            spare in 0usize..4,
            normalize in any::<bool>(),
        ) {
            let mut next = crate::testing::unit(seed | 1);
            let leaves = n / 3 + 1;
            let point_leaf: Vec<i64> = (0..n).map(|_| (next() * leaves as f64) as i64).collect();
            let values: Vec<f32> = (0..n * channels).map(|_| (next() * 20.0 - 10.0) as f32).collect();
            let got = average_per_leaf(&values, channels, &point_leaf, leaves + spare, normalize).unwrap();
            let want = average_any(&values, channels, &point_leaf, leaves + spare, normalize).unwrap();
            prop_assert_eq!(got, want);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// The vectorised bounds equal a per-point fold, for any length (whole 48-value
        /// blocks and the rest), both precisions and several samples; a planted NaN, ±inf
        /// or too-large coordinate is reported at the first offending point and axis.
        #[test]
        fn sample_bounds_match_a_per_point_fold(
            seed in any::<u64>(),
            n in 0usize..3000,
            cuts in proptest::collection::vec(0usize..3000, 0..3),
            bad in proptest::collection::vec((0usize..9000, 0usize..5), 0..3),
            wide in any::<bool>(),
        ) {
            let mut rnd = crate::testing::xorshift(seed | 1);
            let mut vals: Vec<f64> = (0..3 * n).map(|_| (rnd() % 2_000_001) as f64 / 1000.0 - 1000.0).collect();
            for &(at, kind) in &bad {
                if at < vals.len() {
                    vals[at] = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e308, -1e308][kind];
                }
            }
            let mut offsets: Vec<usize> = cuts.iter().map(|&c| c.min(n)).collect();
            offsets.extend([0, n]);
            offsets.sort_unstable();
            let check = |got: Result<Vec<Option<Bounds>>>, want: std::result::Result<Vec<Option<Bounds>>, (usize, usize)>| {
                match (got, want) {
                    (Ok(g), Ok(w)) => prop_assert_eq!(g, w),
                    (Err(CoreError::NonFinite { index, axis, .. }), Err(w)) => prop_assert_eq!((index, axis), w),
                    (Err(CoreError::InvalidArgument { actual, .. }), Err((i, a))) => {
                        let want = format!("at point {i}, axis {a}");
                        prop_assert!(actual.ends_with(&want), "{} vs {}", actual, want);
                    }
                    (g, w) => prop_assert!(false, "got {:?}, want {:?}", g, w),
                }
                Ok(())
            };
            if wide {
                check(sample_bounds(&vals, &offsets), naive_bounds(&vals, &offsets))?;
            } else {
                let narrow: Vec<f32> = vals.iter().map(|&v| v as f32).collect();
                check(sample_bounds(&narrow, &offsets), naive_bounds(&narrow, &offsets))?;
            }
        }
    }

    #[test]
    fn split_passes_match_a_naive_split() {
        let mut rnd = crate::testing::xorshift(0x853c49e6748fea9bu64);
        // sorted unique keys with 1..8 children per parent
        let mut keys: Vec<u64> = (0..20_000).map(|_| rnd() % 60_000).collect();
        keys.sort_unstable();
        keys.dedup();
        let n = keys.len();
        // oracle: parents by dedup, rows by a per-parent scan
        let mut parents: Vec<u64> = keys.iter().map(|k| k >> 3).collect();
        parents.dedup();
        let first_rank = 7;
        let mut want_k = Vec::new();
        let mut want_c = Vec::new();
        for &p in &parents {
            for c in 0..8u64 {
                want_k.push(p << 3 | c);
                want_c.push(match keys.binary_search(&(p << 3 | c)) {
                    Ok(r) => first_rank + r as i32,
                    Err(_) => -1,
                });
            }
        }
        let (mut p, mut m) = (vec![0u64; n], vec![0u8; n]);
        let count = collect_parents(&keys, &mut p, &mut m);
        assert_eq!(&p[..count], &parents[..]);
        let m = &m[..count];
        // every store path: plain, 16-byte streaming, (where there is AVX2) 32-byte and
        // (AVX-512) 64-byte streaming, the last with the ranks starting on a cache line and
        // half way into one, and an even and an odd number of rows; outputs placed at
        // 32-byte (64-byte for AVX-512 keys) aligned offsets of larger buffers
        let mut paths: Vec<(&str, bool, bool, usize)> = vec![("plain", false, false, 0)];
        paths.push(("sse2 stream", true, false, 0));
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            paths.push(("avx2 stream", true, true, 0));
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            paths.push(("avx512 stream, ranks on a line", true, true, 64));
            paths.push(("avx512 stream, ranks mid-line", true, true, 32));
        }
        for (name, stream, avx2, avx512) in paths {
            for rows in [count, count - 1] {
                let mut kb = vec![0u64; 8 * rows + 8];
                let mut cb = vec![0i32; 8 * rows + 32];
                let ko = (kb.as_ptr() as usize / 8).wrapping_neg() % 8;
                let co = (cb.as_ptr() as usize / 4).wrapping_neg() % 16
                    + if avx512 == 32 { 8 } else { 0 };
                let k = &mut kb[ko..ko + 8 * rows];
                let c = &mut cb[co..co + 8 * rows];
                let (p, m) = (&p[..rows], &m[..rows]);
                let next_rank = first_rank + m.iter().map(|b| b.count_ones() as i32).sum::<i32>();
                if avx512 > 0 {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: AVX-512F detected above; keys 64-byte, ranks 32-byte aligned
                    let next = unsafe { write_rows_avx512(p, m, first_rank, k, c) };
                    #[cfg(target_arch = "x86_64")]
                    assert_eq!(next, next_rank, "{name}");
                } else if avx2 {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: AVX2 detected above; both outputs 32-byte aligned, lengths 8·count
                    let next = unsafe { write_rows_avx2(p, m, first_rank, k, c) };
                    #[cfg(target_arch = "x86_64")]
                    assert_eq!(next, next_rank, "{name}");
                } else if stream {
                    // the 16-byte path: write_rows without the AVX2 dispatch
                    let mut first = first_rank;
                    for (j, (&par, &mask)) in p.iter().zip(m).enumerate() {
                        let row = child_row(mask as usize, first);
                        first += mask.count_ones() as i32;
                        let keys8: [u64; 8] = std::array::from_fn(|c8| par << 3 | c8 as u64);
                        // SAFETY: both outputs 32-byte aligned (so 16), rows of 8 entries
                        unsafe {
                            stream_row(
                                &mut k[8 * j..8 * j + 8],
                                &keys8,
                                &mut c[8 * j..8 * j + 8],
                                &row,
                            )
                        };
                    }
                } else {
                    write_rows(p, m, first_rank, k, c, false);
                }
                assert_eq!(k, &want_k[..8 * rows], "{name}, {rows} rows");
                assert_eq!(c, &want_c[..8 * rows], "{name}, {rows} rows");
            }
        }
    }

    /// `n` points of a random walk in (-0.99, 0.99)³ with steps up to `step / 2` per axis
    /// and a jump every 5000 points: coherent order and dense surfaces, like a scan.
    fn walk(n: usize, step: f64, seed: u64) -> Vec<f32> {
        let mut rnd = crate::testing::unit(seed);
        let mut p = [0.0f64; 3];
        let mut pts = Vec::with_capacity(3 * n);
        for i in 0..n {
            for v in p.iter_mut() {
                *v = if i % 5000 == 0 {
                    rnd() * 1.9 - 0.95
                } else {
                    (*v + (rnd() - 0.5) * step).clamp(-0.99, 0.99)
                };
                pts.push(*v as f32);
            }
        }
        pts
    }

    #[test]
    fn wide_digit_lsd_build_matches_oracle() {
        // 2^18 points at depth 10: 2 LSD passes of 15-bit digits on one thread, the hybrid
        // sort (top buckets sorted in parallel) at 2 and 6 threads (the walk's ~1.3 points
        // per leaf are too few for the hash build, which gives up)
        let pts = walk((1 << 18) + 1000, 0.01, 0x6a09e667f3bcc909);
        assert!(hash_leaves(&pts, 0, &cube(10), opts(10)).is_none());
        same_tree_at_thread_counts_and_oracle(&pts, 10, &[1, 2, 6]);
    }

    #[test]
    fn hybrid_sort_build_equals_one_thread_build() {
        // from HYBRID_MIN points on several threads the leaves come from the hybrid sort
        // (a parallel scatter into top buckets, each sorted by LSD passes); on one thread
        // from LSD passes over the whole sample. Every LSD-sortable depth (4..=11), a scan-
        // like walk and the same walk with 80% of its points in one small blob (one top
        // bucket holding most items)
        let n = HYBRID_MIN + 3001;
        let walked = walk(n, 0.01, 0x3c6ef372fe94f82b);
        let mut blob = walked.clone();
        let mut rnd = crate::testing::unit(0xa54ff53a5f1d36f1);
        for (i, v) in blob.iter_mut().enumerate() {
            if i % 5 != 0 {
                *v = (0.3 + rnd() * 0.02) as f32;
            }
        }
        let idx_bits = usize::BITS - (n - 1).leading_zeros();
        for (name, pts) in [("walk", &walked), ("blob", &blob)] {
            for depth in [4u8, 6, 8, 10, 11] {
                let build = |threads: usize| {
                    crate::testing::with_threads(threads, || {
                        build_sample_with::<f32, u64>(pts, 0, &cube(depth), opts(depth), idx_bits)
                            .unwrap()
                    })
                };
                let one = build(1);
                for threads in [2, 3, 6] {
                    let many = build(threads);
                    assert_eq!(
                        many.leaves, one.leaves,
                        "{name} depth {depth}, {threads} threads"
                    );
                    assert_eq!(many.point_leaf, one.point_leaf, "{name} depth {depth}");
                }
            }
        }
        // and the public entry point against the float-math oracle (the walk at depth 10
        // has too few points per leaf for the hash build)
        same_tree_at_thread_counts_and_oracle(&walked, 10, &[1, 2]);
    }

    #[test]
    fn hash_build_equals_sort_build() {
        // a dense walk: ~50 points per leaf at depth 7 down to ~2 at depth 11
        let pts = walk(150_000, 0.002, 0xbb67ae8584caa73b);
        let n = pts.len() / 3;
        let idx_bits = usize::BITS - (n - 1).leading_zeros();
        let mut hashed_depths = Vec::new();
        for depth in [3u8, 7, 9, 10, 11] {
            let sorted =
                build_sample_with::<f32, u64>(&pts, 0, &cube(depth), opts(depth), idx_bits)
                    .unwrap();
            let ratio = n / sorted.leaves.len();
            for threads in [1, 2] {
                let hashed = crate::testing::with_threads(threads, || {
                    hash_leaves(&pts, 0, &cube(depth), opts(depth))
                });
                match hashed {
                    Some(h) => {
                        let h = h.unwrap();
                        assert_eq!(h.leaves, sorted.leaves, "depth {depth}, {threads} threads");
                        assert_eq!(h.point_leaf, sorted.point_leaf, "depth {depth}");
                        hashed_depths.push(depth);
                    }
                    // giving up is only allowed where points per leaf are few
                    None => assert!(ratio < 2 * HASH_CHECKS[1].1, "depth {depth}: {ratio}"),
                }
            }
            // the public entry point, whichever build it picks, gives the same tree
            let t = build_octree(&pts, &[0, n], &[cube(depth)], opts(depth)).unwrap();
            assert_eq!(t.point_leaf, sorted.point_leaf);
        }
        assert!(hashed_depths.contains(&9) && hashed_depths.contains(&3));

        // errors: the same first non-finite point, and the same count and extent outside
        let mut bad = pts.clone();
        bad[3 * 100_000 + 1] = 1.5;
        bad[3 * 120_000 + 2] = -3.0;
        let (d, bx) = (7, cube(7));
        let want = build_sample_with::<f32, u64>(&bad, 5, &bx, opts(d), idx_bits).err();
        for threads in [1, 2] {
            let got = crate::testing::with_threads(threads, || {
                hash_leaves(&bad, 5, &bx, opts(d)).unwrap().err()
            });
            assert!(matches!(got, Some(CoreError::OutOfBounds { count: 2, .. })));
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }
        bad[3 * 130_000] = f32::NAN;
        bad[3 * 140_000 + 1] = f32::INFINITY;
        let want = build_sample_with::<f32, u64>(&bad, 5, &bx, opts(d), idx_bits).err();
        for threads in [1, 2] {
            let got = crate::testing::with_threads(threads, || {
                hash_leaves(&bad, 5, &bx, opts(d)).unwrap().err()
            });
            assert!(matches!(
                got,
                Some(CoreError::NonFinite {
                    index: 130_005,
                    axis: 0,
                    ..
                })
            ));
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }
    }

    /// `points` random points inside the unit cube's grid, then coordinate `axis` of point
    /// `at` set to `values[kind]` for each `(at, axis, kind)` (ignored past the end).
    fn odd_cloud(
        seed: u64,
        points: usize,
        odd: &[(usize, usize, u8)],
        values: [f32; 5],
    ) -> Vec<f32> {
        let mut rnd = crate::testing::unit(seed | 1);
        let mut pts: Vec<f32> = (0..3 * points)
            .map(|_| (rnd() * 1.98 - 0.99) as f32)
            .collect();
        for &(at, axis, kind) in odd {
            if let Some(c) = pts.get_mut(3 * at + axis) {
                *c = values[kind as usize];
            }
        }
        pts
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The hash build's keys (AVX-512 for float32 at depth ≤ 10) equal the portable
        /// quantisation's, with the same report, for any length (partial last group) and
        /// with points outside the box, on its faces, and not finite in random groups.
        #[test]
        fn quantise_keys_matches_the_portable_one(
            seed in 0u64..u64::MAX,
            n in 0usize..300,
            base in 0usize..40,
            depth in 1usize..=11,
            odd in proptest::collection::vec((0usize..340, 0usize..3, 0u8..5), 0..6),
        ) {
            let pts = odd_cloud(seed, base + n, &odd, [f32::NAN, f32::INFINITY, 1.5, -1.0, 1.0]);
            let bx = cube(depth as u8);
            let args = QuantiseArgs { pts: &pts, base, first: 3, bx: &bx, depth, idx_bits: 0, shift0: 0, width: 0 };
            let mut want = vec![LeafKey(0); n];
            let mut got = vec![LeafKey(u64::MAX); n];
            let a = quantise_chunk::<f32, LeafKey, 0, false>(args, &mut want).0;
            let b = quantise_keys(args, &mut got);
            let (want, got): (Vec<u64>, Vec<u64>) = (want.iter().map(|k| k.0).collect(), got.iter().map(|k| k.0).collect());
            proptest::prop_assert_eq!(want, got);
            proptest::prop_assert_eq!(format!("{:?}", a.non_finite), format!("{:?}", b.non_finite));
            proptest::prop_assert_eq!((a.outside, a.min, a.max), (b.outside, b.min, b.max));
        }

        /// The sort build's quantisation (whichever of its paths this CPU takes: AVX-512
        /// blocks, BMI2, portable) against a point-by-point float32 oracle: items
        /// (`key << idx_bits | index`), digit histograms and the report, with points outside
        /// the box, on its faces and not finite, for any length (partial last block).
        #[test]
        fn sort_quantisation_matches_a_pointwise_oracle(
            seed in 0u64..u64::MAX,
            n in 0usize..400,
            base in 0usize..70,
            depth in 1usize..=11,
            odd in proptest::collection::vec((0usize..470, 0usize..3, 0u8..5), 0..6),
        ) {
            let pts = odd_cloud(seed, base + n, &odd, [f32::NAN, f32::NEG_INFINITY, -1.5, -1.0, 1.0]);
            let bx = cube(depth as u8);
            let (idx_bits, key_bits) = (9u32, 3 * depth as u32);
            let width = (key_bits + idx_bits).div_ceil(3);
            let args = QuantiseArgs { pts: &pts, base, first: 0, bx: &bx, depth, idx_bits, shift0: 0, width };
            let mut got = vec![0u64; n];
            let (rep, hist) = quantise_dispatch::<f32, u64, 3>(args, &mut got);
            // the oracle: scale in float32, clamp into the grid, key; non-finite points key 0
            let side = (1u64 << depth) as f32;
            let (o, inv) = (bx.origin.map(|v| v as f32), bx.cell.map(|c| (1.0 / c) as f32));
            let mut want_hist = vec![0u32; 3 << width];
            let (mut outside, mut first_bad) = (0usize, None);
            let want: Vec<u64> = (0..n).map(|j| {
                let p = &pts[3 * (base + j)..3 * (base + j) + 3];
                let t = [0, 1, 2].map(|a| (p[a] - o[a]) * inv[a]);
                let finite = p.iter().all(|v| v.is_finite());
                if !finite {
                    first_bad.get_or_insert(base + j);
                } else if !t.iter().all(|&v| (0.0..=side).contains(&v)) {
                    outside += 1;
                }
                let c = t.map(|v| if finite { v.max(0.0).min(side - 1.0) as u32 } else { 0 });
                let item = (morton::encode(c[0], c[1], c[2]) << idx_bits) | (base + j) as u64;
                for d in 0..3 {
                    want_hist[(d << width) + ((item >> (d as u32 * width)) as usize & ((1 << width) - 1))] += 1;
                }
                item
            }).collect();
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert_eq!(hist, want_hist);
            proptest::prop_assert_eq!(rep.outside, outside);
            proptest::prop_assert_eq!(rep.non_finite.map(|x| x.0), first_bad);
        }
    }

    proptest::proptest! {
        /// Whatever order the workers ask in, every piece is handed out exactly once, a
        /// worker takes its own run front to back first, and then steals from the back of
        /// the fullest run.
        #[test]
        fn piece_queue_hands_out_every_piece_once(
            pieces in 0usize..70,
            workers in 1usize..5,
            asks in proptest::collection::vec(0usize..4, 0..200),
        ) {
            let q = PieceQueue::new(pieces, workers);
            let run = |w: usize| w * pieces / workers..(w + 1) * pieces / workers;
            let mut got = vec![0u32; pieces];
            let left = |got: &[u32], w: usize| run(w).filter(|&p| got[p] == 0).collect::<Vec<_>>();
            for w in asks.into_iter().map(|a| a % workers).chain(std::iter::repeat(0)) {
                let own = left(&got, w);
                let fullest = (0..workers).map(|v| left(&got, v).len()).max().unwrap_or(0);
                let Some(p) = q.take(w) else {
                    proptest::prop_assert_eq!(fullest, 0);
                    break;
                };
                if let Some(&front) = own.first() {
                    proptest::prop_assert_eq!(p, front);
                } else {
                    // a steal: the last piece left of a run with the most left
                    let v = (0..workers).find(|&v| run(v).contains(&p)).unwrap();
                    let theirs = left(&got, v);
                    proptest::prop_assert_eq!(Some(&p), theirs.last());
                    proptest::prop_assert_eq!(theirs.len(), fullest);
                }
                got[p] += 1;
            }
            proptest::prop_assert!(got.iter().all(|&c| c == 1), "{:?}", got);
        }
    }

    proptest::proptest! {
        /// Parents and child masks of sorted distinct keys (the dispatched path: AVX-512
        /// groups plus the scalar tail where the CPU has it) equal the scalar loop's, for
        /// runs of every length crossing group boundaries anywhere; so do those of the keys
        /// collected in two parts, the second continuing from the first's state.
        #[test]
        fn collect_parents_matches_the_scalar_loop(
            runs in proptest::collection::vec((1u64..40, 0u8..=255), 0..60),
            split in 0usize..500,
        ) {
            // each run: a gap to the next parent, then its children (the mask's set bits)
            let mut keys = Vec::new();
            let mut parent = 0u64;
            for &(gap, mask) in &runs {
                parent += gap;
                keys.extend((0..8).filter(|c| mask >> c & 1 == 1).map(|c| parent << 3 | c));
            }
            let n = keys.len();
            let (mut p, mut m) = (vec![0u64; n], vec![0u8; n]);
            let (mut wp, mut wm) = (vec![0u64; n], vec![0u8; n]);
            let got = collect_parents(&keys, &mut p, &mut m);
            let want = collect_parents_from(&keys, &mut wp, &mut wm, COLLECT_START).0.wrapping_add(1);
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert_eq!(&p[..got], &wp[..want]);
            proptest::prop_assert_eq!(&m[..got], &wm[..want]);
            let (a, b) = keys.split_at(split.min(n));
            let (mut p2, mut m2) = (vec![0u64; n], vec![0u8; n]);
            let state = collect_parents_cont(a, &mut p2, &mut m2, COLLECT_START);
            let two = collect_parents_cont(b, &mut p2, &mut m2, state).0.wrapping_add(1);
            proptest::prop_assert_eq!(two, want);
            proptest::prop_assert_eq!(&p2[..two], &wp[..want]);
            proptest::prop_assert_eq!(&m2[..two], &wm[..want]);
        }
    }

    #[test]
    fn bmi2_quantise_matches_the_portable_one() {
        if !has_avx2_bmi2() {
            eprintln!("skipped: no AVX2 + BMI2 on this CPU");
            return;
        }
        let mut rnd = crate::testing::unit(0x3c6ef372fe94f82bu64);
        // inside, on the faces, outside and non-finite coordinates, at a small and a deep depth
        let mut pts: Vec<f32> = (0..3 * 5003).map(|_| (rnd() * 2.2 - 1.1) as f32).collect();
        pts[7] = 1.0;
        pts[8] = -1.0;
        pts[3 * 4000 + 1] = f32::NAN;
        for depth in [5usize, 10, 17] {
            let bx = cube(depth as u8);
            let n = pts.len() / 3;
            let idx_bits = 13;
            let key_bits = 3 * depth as u32;
            let width = key_bits.div_ceil(3);
            let mut a = vec![0u64; n];
            let mut b = vec![0u64; n];
            let args = QuantiseArgs {
                pts: &pts,
                base: 0,
                first: 0,
                bx: &bx,
                depth,
                idx_bits,
                shift0: idx_bits,
                width,
            };
            let ra = quantise_chunk::<f32, u64, 3, false>(args, &mut a);
            // SAFETY: AVX2 and BMI2 checked above
            let rb = unsafe { quantise_chunk_bmi2::<f32, u64, 3>(args, &mut b) };
            assert_eq!(a, b, "depth {depth}");
            assert_eq!(ra.1, rb.1, "depth {depth}");
            assert_eq!(ra.0.outside, rb.0.outside);
            assert_eq!(ra.0.non_finite.map(|x| x.0), rb.0.non_finite.map(|x| x.0));
            assert!(ra.0.outside > 0 && ra.0.non_finite.is_some());
        }
        for _ in 0..10_000 {
            let c = [0, 1, 2].map(|_| (rnd() * (1u64 << 21) as f64) as u32);
            // SAFETY: BMI2 checked above
            assert_eq!(
                unsafe { encode_pdep(c[0], c[1], c[2]) },
                morton::encode(c[0], c[1], c[2])
            );
        }
    }

    #[test]
    fn large_batch_levels_equal_separate_trees() {
        // levels over STREAM_MIN_BYTES: the batch path writes them with streaming stores
        let mut unit = crate::testing::unit(0xbb67ae8584caa73bu64);
        let mut rnd = || (unit() * 1.98 - 0.99) as f32;
        let clouds: Vec<Vec<f32>> = [90_000usize, 1, 70_001]
            .iter()
            .map(|&m| (0..3 * m).map(|_| rnd()).collect())
            .collect();
        let depth = 10u8;
        let one = |p: &[f32]| build_octree(p, &[0, p.len() / 3], &[cube(depth)], opts(depth));
        let trees: Vec<Octree> = clouds.iter().map(|c| one(c).unwrap()).collect();
        let all: Vec<f32> = clouds.concat();
        let mut offsets = vec![0usize];
        for c in &clouds {
            offsets.push(offsets.last().unwrap() + c.len() / 3);
        }
        let t = build_octree(&all, &offsets, &[cube(depth); 3], opts(depth)).unwrap();
        assert!(t.keys[depth as usize].len() * 12 >= STREAM_MIN_BYTES);
        for d in 0..=depth as usize {
            let keys: Vec<u64> = trees.iter().flat_map(|s| s.keys[d].clone()).collect();
            assert_eq!(t.keys[d], keys, "depth {d}");
            // children ranks continue across samples
            let mut base = 0;
            let mut children = Vec::new();
            for s in &trees {
                children.extend(
                    s.children[d]
                        .iter()
                        .map(|&c| if c < 0 { c } else { c + base }),
                );
                base += s.nnum_nempty(d) as i32;
            }
            assert_eq!(t.children[d], children, "depth {d}");
        }
    }

    /// Histograms of `digits` digits of `width` bits above the index bits, one after another
    /// (the layout the quantise pass hands the LSD sorts).
    fn digit_histograms(items: &[u64], idx_bits: u32, digits: usize, width: u32) -> Vec<u32> {
        let mut hist = vec![0u32; digits << width];
        for v in items {
            for d in 0..digits {
                let at = (v >> (idx_bits + d as u32 * width)) as usize & ((1 << width) - 1);
                hist[(d << width) + at] += 1;
            }
        }
        hist
    }

    #[test]
    fn lsd_sort_items_is_a_stable_sort() {
        let mut rnd = crate::testing::xorshift(0x2545f4914f6cdd1du64);
        let idx_bits = 17;
        let n = 100_000;
        // 30-bit keys with many duplicates; in the second case the top digit is the same for
        // every item (its pass is skipped), in the third the low two are
        for (and, or) in [
            ((1u64 << 30) - 1, 0u64),
            ((1u64 << 20) - 1, 5 << 20),
            ((1u64 << 30) - (1 << 20), 0),
        ] {
            let items: Vec<u64> = (0..n)
                .map(|i| {
                    let key = (rnd() % 40_000 * 26_843) & and | or;
                    <u64 as Item>::make(key, i, idx_bits)
                })
                .collect();
            let mut expected = items.clone();
            expected.sort_by_key(|v| v >> idx_bits); // stable: ties keep the index order
            // 3 digits of 10 bits, 2 of 15
            for (digits, width) in [(3usize, 10u32), (2, 15)] {
                let mut hist = digit_histograms(&items, idx_bits, digits, width);
                let mut got = items.clone();
                let mut buf = vec![0u64; n];
                lsd_sort_items(&mut got, &mut buf, &mut hist, idx_bits, width);
                assert_eq!(buf, expected, "{digits} digits");
                assert_eq!(got.len(), n);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The 1-thread levels (rows written in blocks, the parents collected one level up
        /// between blocks) equal the split levels of the several-thread path, for any block
        /// size, with streaming stores or without.
        #[test]
        fn blocked_serial_levels_equal_split_levels(
            seed in 0u64..u64::MAX,
            n in 0usize..4000,
            depth in 1u8..9,
            full_depth in 0u8..3,
            block in 1usize..300,
            stream in proptest::bool::ANY,
            cluster in 1u64..5000,
        ) {
            let mut rnd = crate::testing::xorshift(seed | 1);
            let full_depth = full_depth.min(depth - 1);
            let side = 1u64 << (3 * depth as u32);
            // keys near a few centres, so parents have several occupied children
            let centres: Vec<u64> = (0..4).map(|_| rnd() % side).collect();
            let mut leaves: Vec<u64> = (0..n)
                .map(|_| (centres[(rnd() % 4) as usize] + rnd() % cluster).min(side - 1))
                .collect();
            leaves.sort_unstable();
            leaves.dedup();
            let stream_min = if stream { 0 } else { usize::MAX };
            let grow = |threads: usize| {
                crate::testing::with_threads(threads, || {
                    grow_levels_with(leaves.clone(), depth, full_depth, stream_min, block)
                })
            };
            proptest::prop_assert_eq!(grow(1), grow(2));
        }
    }

    #[test]
    fn streaming_fill_writes_every_entry_and_nothing_else() {
        // every start alignment and length around the 4-value groups
        for start in 0..6 {
            for len in 0..40 {
                for stream in [false, true] {
                    let mut buf = vec![7i32; start + len + 3];
                    fill_i32(&mut buf[start..start + len], -5, stream);
                    let want: Vec<i32> = (0..buf.len())
                        .map(|i| {
                            if (start..start + len).contains(&i) {
                                -5
                            } else {
                                7
                            }
                        })
                        .collect();
                    assert_eq!(buf, want, "start {start} len {len} stream {stream}");
                }
            }
        }
    }

    #[test]
    fn float32_points_in_a_huge_box() {
        let p = [0.5f32, -0.25, 0.0];
        let bx = SampleBox {
            origin: [-1e39; 3],
            cell: [2e39 / 8.0; 3],
        };
        let t = build_octree(&p, &[0, 1], &[bx], opts(3)).unwrap();
        let t64 = build_octree(&[0.5f64, -0.25, 0.0], &[0, 1], &[bx], opts(3)).unwrap();
        assert_eq!(t, t64);
    }

    #[test]
    fn errors_are_typed() {
        let p = [0.0f32, f32::NAN, 0.0];
        assert!(matches!(
            build_octree(&p, &[0, 1], &[cube(4)], opts(4)),
            Err(CoreError::NonFinite {
                index: 0,
                axis: 1,
                ..
            })
        ));
        let p = [0.0f32, 1.5, 0.0, 0.0, 0.0, 0.0];
        match build_octree(&p, &[0, 2], &[cube(4)], opts(4)) {
            Err(CoreError::OutOfBounds { count, .. }) => assert_eq!(count, 1),
            other => panic!("{other:?}"),
        }
        let clipped = build_octree(
            &p,
            &[0, 2],
            &[cube(4)],
            BuildOptions {
                clip: true,
                ..opts(4)
            },
        )
        .unwrap();
        assert_eq!(clipped.nnum_nempty(4), 2);
        assert!(build_octree(&p, &[0, 2], &[cube(4)], opts(0)).is_err());
        assert!(build_octree(&p, &[0, 2], &[cube(4)], opts(22)).is_err());
        assert!(build_octree(&p, &[0, 1], &[cube(4)], opts(4)).is_err());
    }

    #[test]
    fn deep_tree_uses_pair_items() {
        // 3*21 key bits + index bits > 64 forces the (key, idx) sort path
        let pts: Vec<f64> = (0..3000)
            .map(|i| ((i * 7919) % 1999) as f64 / 1000.0 - 0.999)
            .collect();
        let c = 2.0 / (1u64 << 21) as f64;
        let t = build_octree(
            &pts,
            &[0, 1000],
            &[SampleBox {
                origin: [-1.0; 3],
                cell: [c; 3],
            }],
            opts(21),
        )
        .unwrap();
        assert!(t.keys[21].windows(2).all(|w| w[0] < w[1]));
        assert_eq!(t.point_leaf.len(), 1000);
    }
}
