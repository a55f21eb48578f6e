//! 3×3×3 neighbour tables, derived level by level from the parent's table (no search).
//!
//! A node's neighbour at offset o lies in the parent's neighbour at offset
//! floor((slot + o) / 2), in child slot (slot + o) mod 2. Rows are only ever needed
//! for non-empty parents, so the chain down to depth d touches non-empty nodes only.

use crate::error::{CoreError, Result};
use crate::mem::SendPtr;
use crate::octree::{Octree, STREAM_MIN_BYTES};
use rayon::prelude::*;

/// Slot of offset (dx, dy, dz) in a 27-row: `(dx+1)*9 + (dy+1)*3 + (dz+1)`.
#[inline(always)]
pub fn slot(dx: i32, dy: i32, dz: i32) -> usize {
    ((dx + 1) * 9 + (dy + 1) * 3 + (dz + 1)) as usize
}

/// Table at depth `d`: rows for non-empty nodes (`nonempty`) or all nodes, entries the
/// neighbour's index among the same set, -1 where absent. `periodic_y` wraps the y axis
/// (φ in cylindrical trees). Returns a flat (M × 27) vector.
pub fn neighbors(
    tree: &Octree,
    depth: usize,
    nonempty: bool,
    periodic_y: bool,
) -> Result<Vec<i32>> {
    let keys: Vec<&[u64]> = tree.keys.iter().map(|k| k.as_slice()).collect();
    let children: Vec<&[i32]> = tree.children.iter().map(|c| c.as_slice()).collect();
    neighbors_from_levels(&keys, &children, depth, nonempty, periodic_y)
}

/// [`neighbors`] over borrowed per-depth `keys` and `children` (depths `0..=depth` needed).
pub fn neighbors_from_levels(
    keys: &[&[u64]],
    children: &[&[i32]],
    depth: usize,
    nonempty: bool,
    periodic_y: bool,
) -> Result<Vec<i32>> {
    if depth >= keys.len() || depth >= children.len() {
        return Err(CoreError::arg(
            "depth",
            format!("0..={}", keys.len().min(children.len()) as i64 - 1),
            depth,
        ));
    }
    for d in 0..=depth {
        if keys[d].len() != children[d].len() {
            return Err(CoreError::arg(
                "children",
                format!("{} entries at depth {d} (one per key)", keys[d].len()),
                children[d].len(),
            ));
        }
    }
    let last = depth == 0;
    let mut table = root_table(
        children[0],
        last && !nonempty,
        last && !nonempty,
        periodic_y,
    )?;
    for d in 1..=depth {
        let last = d == depth;
        table = step(
            &table,
            children[d - 1],
            children[d],
            last && !nonempty,
            last && !nonempty,
        )?;
    }
    Ok(table)
}

/// Non-empty nodes in `children`, after checking their ranks run 0, 1, 2, ... in order.
fn count_nonempty(children: &[i32], name: &'static str) -> Result<usize> {
    // branch-free scan (empty / non-empty patterns are irregular); the error path re-scans
    let mut next_rank = 0i32;
    let mut bad = false;
    for &c in children {
        let ne = c >= 0;
        bad |= ne & (c != next_rank);
        next_rank += ne as i32;
    }
    if bad {
        let mut due = 0i32;
        for &c in children {
            if c >= 0 {
                if c != due {
                    return Err(CoreError::arg(
                        name,
                        "non-empty ranks 0, 1, 2, ... in key order",
                        format!("rank {c} where {due} was due"),
                    ));
                }
                due += 1;
            }
        }
    }
    Ok(next_rank as usize)
}

/// Depth-0 table (one root per sample): each root is its own centre neighbour, and its own
/// ±y neighbour when y wraps. Rows: all roots or the non-empty ones; entries: root index
/// or non-empty rank.
pub fn root_table(
    root_children: &[i32],
    rows_all: bool,
    entries_all: bool,
    periodic_y: bool,
) -> Result<Vec<i32>> {
    count_nonempty(root_children, "children")?;
    let mut table = Vec::new();
    for (r, &c) in root_children.iter().enumerate() {
        if !rows_all && c < 0 {
            continue;
        }
        let me = if entries_all { r as i32 } else { c };
        let mut row = [-1i32; 27];
        row[slot(0, 0, 0)] = me;
        if periodic_y {
            row[slot(0, -1, 0)] = me;
            row[slot(0, 1, 0)] = me;
        }
        table.extend_from_slice(&row);
    }
    Ok(table)
}

/// For child slot c and offset o (as a 27-slot): the parent-level neighbour slot holding the
/// neighbour, and the neighbour's own child slot — ocnn's `lut_parent` / `lut_child`.
const fn step_luts() -> ([[u8; 27]; 8], [[u8; 27]; 8]) {
    let mut parent = [[0u8; 27]; 8];
    let mut child = [[0u8; 27]; 8];
    let mut c = 0;
    while c < 8 {
        let s = [(c >> 2) & 1, (c >> 1) & 1, c & 1];
        let mut o = 0;
        while o < 27 {
            let off = [o / 9, (o / 3) % 3, o % 3]; // each in 0..3, i.e. offset + 1
            let t = [s[0] + off[0], s[1] + off[1], s[2] + off[2]]; // slot + offset + 1, in 0..4
            // parent offset = floor((t - 1) / 2) + 1 = (t + 1) / 2 ; child slot = (t - 1) mod 2 = (t + 1) & 1
            let p = [(t[0] + 1) / 2, (t[1] + 1) / 2, (t[2] + 1) / 2];
            parent[c][o] = (p[0] * 9 + p[1] * 3 + p[2]) as u8;
            child[c][o] =
                ((((t[0] + 1) & 1) << 2) | (((t[1] + 1) & 1) << 1) | ((t[2] + 1) & 1)) as u8;
            o += 1;
        }
        c += 1;
    }
    (parent, child)
}

static LUTS: ([[u8; 27]; 8], [[u8; 27]; 8]) = step_luts();

/// The 4×4×4 child-level cells around a parent's 2×2×2 children (cell (X, Y, Z), X in
/// 0..4, covers child-level offset X - 1 from the parent's first child): for each cell the
/// parent-level neighbour slot holding it and its child slot in that neighbour; and for
/// each child slot c and offset o, the cell of that neighbour.
const fn block_luts() -> ([u8; 64], [u8; 64], [[u8; 27]; 8]) {
    let mut pslot = [0u8; 64];
    let mut cslot = [0u8; 64];
    let mut cell = 0;
    while cell < 64 {
        let x = [cell / 16, (cell / 4) % 4, cell % 4];
        // parent offset + 1 = (X + 1) / 2; child bit = (X + 1) & 1
        pslot[cell] = (((x[0] + 1) / 2) * 9 + ((x[1] + 1) / 2) * 3 + (x[2] + 1) / 2) as u8;
        cslot[cell] = ((((x[0] + 1) & 1) << 2) | (((x[1] + 1) & 1) << 1) | ((x[2] + 1) & 1)) as u8;
        cell += 1;
    }
    let mut of = [[0u8; 27]; 8];
    let mut c = 0;
    while c < 8 {
        let s = [(c >> 2) & 1, (c >> 1) & 1, c & 1];
        let mut o = 0;
        while o < 27 {
            // own cell is 1 + s; neighbour at offset (o/9 - 1, ...) sits in cell s + o-digit
            of[c][o] = ((s[0] + o / 9) * 16 + (s[1] + (o / 3) % 3) * 4 + (s[2] + o % 3)) as u8;
            o += 1;
        }
        c += 1;
    }
    (pslot, cslot, of)
}

static BLOCK: ([u8; 64], [u8; 64], [[u8; 27]; 8]) = block_luts();

/// One level down. `parent` is the table at d-1 with rows for the non-empty nodes and
/// entries as non-empty ranks (-1 absent or empty); `children` is level d (8 per non-empty
/// parent). Returns the table at d: rows for all nodes (`rows_all`) or the non-empty ones,
/// entries as all-node indices (`entries_all`) or non-empty ranks. No search: a child's
/// neighbours are children of its parent's neighbours.
///
/// Checks are fused into the pass that uses the data: the parent table's entries are
/// range-checked as they are turned into child-block addresses (out-of-range ones are
/// clamped so nothing is read out of bounds, then reported), and each non-empty child's
/// rank is compared with the row it is written to (rows are numbered by counting, so
/// writes stay disjoint and in bounds whatever the input holds).
pub fn step(
    parent: &[i32],
    parent_children: &[i32],
    children: &[i32],
    rows_all: bool,
    entries_all: bool,
) -> Result<Vec<i32>> {
    step_with(
        parent,
        parent_children,
        children,
        rows_all,
        entries_all,
        simd::available(),
        STREAM_MIN_BYTES,
    )
}

/// [`step`], with the AVX-512 rows (`simd`, which must only be set where the CPU has
/// them) or the portable ones; both give the same table and the same errors. AVX-512
/// all-node tables of at least `stream_min_bytes` are written with streaming stores.
fn step_with(
    parent: &[i32],
    parent_children: &[i32],
    children: &[i32],
    rows_all: bool,
    entries_all: bool,
    simd: bool,
    stream_min_bytes: usize,
) -> Result<Vec<i32>> {
    let parents = count_nonempty(parent_children, "parent_children")?;
    if parent.len() != parents * 27 {
        return Err(CoreError::arg(
            "parent_table",
            format!("({parents}, 27): one row per non-empty parent"),
            format!("{} values", parent.len()),
        ));
    }
    if children.len() != 8 * parents {
        return Err(CoreError::arg(
            "children",
            format!("{} entries: 8 per non-empty parent", 8 * parents),
            children.len(),
        ));
    }
    const PARENTS_PER_TASK: usize = 1024;
    let tasks = parents.div_ceil(PARENTS_PER_TASK);
    let parallel = tasks > 1 && rayon::current_num_threads() > 1;
    // first row of each task: all children, or a count of the non-empty ones before it
    // (a plain count vectorises; the ranks themselves are checked in the main pass)
    let first_row: Vec<usize> = if rows_all {
        (0..=tasks)
            .map(|t| (t * PARENTS_PER_TASK).min(parents) * 8)
            .collect()
    } else {
        let count = |t: usize| {
            let lo = t * PARENTS_PER_TASK * 8;
            let hi = ((t + 1) * PARENTS_PER_TASK).min(parents) * 8;
            children[lo..hi].iter().filter(|&&c| c >= 0).count()
        };
        let counts: Vec<usize> = if parallel {
            (0..tasks).into_par_iter().map(count).collect()
        } else {
            (0..tasks).map(count).collect()
        };
        let mut acc = 0usize;
        std::iter::once(0)
            .chain(counts.iter().map(|&c| {
                acc += c;
                acc
            }))
            .collect()
    };
    let rows = first_row[tasks.min(first_row.len() - 1)];
    // SAFETY: every row index below `rows` is written exactly once, absent entries
    // included: row 8p + c for all children, or for non-empty ones the running count of
    // non-empty children, which starts each task at `first_row[task]` and reaches
    // `first_row[task + 1]` at its end
    let mut out: Vec<i32> = unsafe { crate::sort::vec_for_overwrite(rows * 27) };
    let out_ptr = SendPtr(out.as_mut_ptr());
    // large all-node tables bypass the caches (whole lines written, no read-for-ownership):
    // lidar1M d10, every depth's all-node table after a fresh build, 1 thread: 1.14 -> 0.97
    // ms; 2 threads 0.75 -> 0.64; indoor200k 14.7-17.2 -> 12.3-13.2 ms
    let stream_all = rows_all
        && entries_all
        && rows * 27 * 4 >= stream_min_bytes
        && (out.as_ptr() as usize) % 32 == 0;
    // a neighbour that is absent at the parent level reads its 8 child entries from here
    static ABSENT: [i32; 8] = [-1; 8];
    let limit = parents as u32; // entries + 1 must lie in 0..=parents
    // Ok(()) or the first bad value seen: (parent table entry) or (rank, row it was due)
    let task = |task: usize| -> std::result::Result<(), (Option<i32>, Option<(i32, usize)>)> {
        let out_ptr = out_ptr;
        let lo = task * PARENTS_PER_TASK;
        let mut row_index = first_row[task];
        let mut bad_entry = false;
        let mut bad_rank = false;
        // the AVX-512 rows cover the two kinds of table the API asks for: non-empty rows
        // and entries, or all-node rows and entries
        let fast = simd && rows_all == entries_all && cfg!(target_arch = "x86_64");
        #[cfg(target_arch = "x86_64")]
        if fast {
            let hi = (lo + PARENTS_PER_TASK).min(parents);
            // SAFETY: `simd` is only set when the CPU has AVX-512F; rows first_row[task]..
            // first_row[task + 1] belong to this task (as in the portable loop below)
            (bad_entry, bad_rank) = unsafe {
                if rows_all {
                    (
                        simd::all_rows(&parent[lo * 27..hi * 27], limit, lo, out_ptr.0, stream_all),
                        false,
                    )
                } else {
                    simd::nonempty_rows(
                        &parent[lo * 27..hi * 27],
                        &children[lo * 8..hi * 8],
                        children,
                        limit,
                        row_index,
                        out_ptr.0,
                    )
                }
            };
        }
        // the portable loop covers the task's parents where the AVX-512 rows did not
        let end = if fast {
            lo
        } else {
            (lo + PARENTS_PER_TASK).min(parents)
        };
        for p in lo..end {
            let prow: &[i32; 27] = parent[p * 27..p * 27 + 27].try_into().unwrap();
            // neighbour o's 8 children start at src[o]; rank r -> children[8r..], absent ->
            // ABSENT; with entries_all the entry is computed (8r + slot) from r instead
            let mut r = [0i32; 27];
            for o in 0..27 {
                let v = prow[o];
                bad_entry |= (v as u32).wrapping_add(1) > limit;
                // clamp to -1..parents: no out-of-bounds read whatever the input
                r[o] = if (v as u32).wrapping_add(1) > limit {
                    -1
                } else {
                    v
                };
            }
            let entry = |o: usize, slot: usize| -> i32 {
                let v = r[o];
                if entries_all {
                    if v < 0 { -1 } else { 8 * v + slot as i32 }
                } else {
                    let src: *const i32 = if v < 0 {
                        ABSENT.as_ptr()
                    } else {
                        // SAFETY: 0 <= v < parents, so 8v + 7 < children.len()
                        unsafe { children.as_ptr().add(8 * v as usize) }
                    };
                    // SAFETY: src points at 8 readable entries and slot < 8
                    unsafe { *src.add(slot) }
                }
            };
            if rows_all {
                // every child gets a row: gather the 64 surrounding cells once, then each
                // row is 27 copies out of that block
                let (pslot, cslot, of) = &BLOCK;
                let block: [i32; 64] =
                    std::array::from_fn(|x| entry(pslot[x] as usize, cslot[x] as usize));
                for (c, ofc) in of.iter().enumerate() {
                    let row: [i32; 27] = std::array::from_fn(|o| block[ofc[o] as usize]);
                    // SAFETY: row 8p + c < 8 * parents = rows, written once
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            row.as_ptr(),
                            out_ptr.0.add((8 * p + c) * 27),
                            27,
                        )
                    };
                }
                continue;
            }
            let (lut_parent, lut_child) = &LUTS;
            for c in 0..8 {
                let rank = children[8 * p + c];
                if rank < 0 {
                    continue;
                }
                bad_rank |= rank as usize != row_index;
                let (lp, lc) = (&lut_parent[c], &lut_child[c]);
                let row: [i32; 27] = std::array::from_fn(|o| entry(lp[o] as usize, lc[o] as usize));
                // SAFETY: row_index < first_row[task + 1] <= rows (counted above), and no
                // other task writes rows in this task's range
                unsafe {
                    std::ptr::copy_nonoverlapping(row.as_ptr(), out_ptr.0.add(row_index * 27), 27)
                };
                row_index += 1;
            }
        }
        if !(bad_entry || bad_rank) {
            return Ok(());
        }
        // the error path re-scans this task's share for the first offender
        let hi = (lo + PARENTS_PER_TASK).min(parents);
        if bad_entry {
            let v = parent[lo * 27..hi * 27]
                .iter()
                .copied()
                .find(|&v| (v as u32).wrapping_add(1) > limit);
            return Err((v, None));
        }
        let mut due = first_row[task];
        for &c in &children[lo * 8..hi * 8] {
            if c >= 0 {
                if c as usize != due {
                    return Err((None, Some((c, due))));
                }
                due += 1;
            }
        }
        Err((None, None))
    };
    let results: Vec<_> = if parallel {
        (0..tasks).into_par_iter().map(task).collect()
    } else {
        (0..tasks).map(task).collect()
    };
    // the first failing task in order reports (deterministic for any thread count)
    if let Some(Err((entry, rank))) = results.into_iter().find(|r| r.is_err()) {
        if let Some(v) = entry {
            return Err(CoreError::arg(
                "parent_table",
                format!("-1 or non-empty ranks below {parents}"),
                format!("entry {v}"),
            ));
        }
        let got = rank.map_or_else(
            || "ranks out of order".to_string(),
            |(c, due)| format!("rank {c} where {due} was due"),
        );
        return Err(CoreError::arg(
            "children",
            "non-empty ranks 0, 1, 2, ... in key order",
            got,
        ));
    }
    Ok(out)
}

/// AVX-512 rows of [`step`]. Non-empty tables: a child's 27 entries are picked by permutes
/// out of the 8-entry child groups of the 8 parent-level neighbours around its corner, each
/// loaded whole (no gathers). All-node tables: a parent's 27 neighbour ranks sit in two
/// registers and each child's entries are a permutation of them (the LUTs), turned into
/// all-node indices.
mod simd {
    /// Whether this CPU runs [`nonempty_rows`] (AVX-512F).
    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    #[cfg(target_arch = "x86_64")]
    pub use x86::{all_rows, nonempty_rows};

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use super::super::LUTS;
        use std::arch::x86_64::*;

        /// LUTS widened to two 16-lane halves per child slot (slots 0..16 and 16..27, the
        /// last 5 lanes unused): parent-level neighbour slot and child slot per entry.
        static WIDE: ([[i32; 32]; 8], [[i32; 32]; 8]) = widen();

        const fn widen() -> ([[i32; 32]; 8], [[i32; 32]; 8]) {
            let mut p = [[0i32; 32]; 8];
            let mut c = [[0i32; 32]; 8];
            let mut s = 0;
            while s < 8 {
                let mut o = 0;
                while o < 27 {
                    p[s][o] = LUTS.0[s][o] as i32;
                    c[s][o] = LUTS.1[s][o] as i32;
                    o += 1;
                }
                s += 1;
            }
            (p, c)
        }

        /// Per child slot c: the 8 parent-level neighbour slots around c's corner of the
        /// parent (index 4i + 2j + k for steps i, j, k in 0..2 from the low corner), and for
        /// each of c's 27 entries its place in those 8 parents' child groups laid end to end
        /// (8 × corner index + child slot), in 32 lanes (the last 5 unused).
        static CORNERS: ([[u8; 8]; 8], [[i32; 32]; 8]) = corners();

        const fn corners() -> ([[u8; 8]; 8], [[i32; 32]; 8]) {
            let mut slots = [[0u8; 8]; 8];
            let mut place = [[0i32; 32]; 8];
            let mut c = 0;
            while c < 8 {
                let s = [(c >> 2) & 1, (c >> 1) & 1, c & 1];
                let mut m = 0;
                while m < 8 {
                    let step = [(m >> 2) & 1, (m >> 1) & 1, m & 1];
                    slots[c][m] =
                        ((s[0] + step[0]) * 9 + (s[1] + step[1]) * 3 + s[2] + step[2]) as u8;
                    m += 1;
                }
                let mut o = 0;
                while o < 27 {
                    // the neighbour's parent slot, as steps from the corner's low parent
                    let p = LUTS.0[c][o] as usize;
                    let m = (p / 9 - s[0]) * 4 + ((p / 3) % 3 - s[1]) * 2 + (p % 3 - s[2]);
                    place[c][o] = (8 * m + LUTS.1[c][o] as usize) as i32;
                    o += 1;
                }
                c += 1;
            }
            (slots, place)
        }

        /// Child group read for a parent-level neighbour that is absent.
        static ABSENT: [i32; 8] = [-1; 8];

        /// Rows for the non-empty children of the parents whose table rows are `prows`
        /// (27 each) and child entries `pchildren` (8 each), the first written at row
        /// `first_row` of `out`; `children` is the whole level. A child's 27 neighbours are
        /// children of the 8 parent-level neighbours around its corner: their 8-entry child
        /// groups are loaded whole (64 values in four registers) and the row is picked out
        /// of them by permutes, no gathers. Returns (a parent entry was outside
        /// -1..limit-1, a child rank differed from its row): the caller reports either.
        /// Bad entries read as -1, so nothing is read out of bounds.
        ///
        /// # Safety
        /// The CPU has AVX-512F; `out` holds the rows first_row.. first_row + (non-empty
        /// entries of `pchildren`) × 27 values; `children.len() >= 8 * limit`.
        #[target_feature(enable = "avx512f")]
        pub unsafe fn nonempty_rows(
            prows: &[i32],
            pchildren: &[i32],
            children: &[i32],
            limit: u32,
            first_row: usize,
            out: *mut i32,
        ) -> (bool, bool) {
            let tail: __mmask16 = (1 << 11) - 1;
            let high = _mm512_set1_epi32(32);
            let (corner_slots, places) = &CORNERS;
            let mut bad_entries: __mmask16 = 0;
            let mut bad_rank = false;
            let mut row = first_row;
            for (prow, pc) in prows.chunks_exact(27).zip(pchildren.chunks_exact(8)) {
                // SAFETY: 27 values per row (chunks_exact)
                let (_, _, bad_here) = unsafe { parent_row(prow, limit) };
                bad_entries |= bad_here;
                // the child group of the parent-level neighbour in slot `o`: ABSENT for -1
                // and for bad entries (as u32, both are >= limit), so nothing is read out
                // of bounds
                let group = |o: u8| -> __m256i {
                    let v = prow[o as usize];
                    let src = if v as u32 >= limit {
                        ABSENT.as_ptr()
                    } else {
                        // SAFETY: 0 <= v < limit, so 8v + 7 < children.len()
                        unsafe { children.as_ptr().add(8 * v as usize) }
                    };
                    // SAFETY: src points at 8 readable values
                    unsafe { _mm256_loadu_si256(src as *const __m256i) }
                };
                let mut nonempty = pc
                    .iter()
                    .enumerate()
                    .fold(0u32, |m, (c, &r)| m | (((r >= 0) as u32) << c));
                while nonempty != 0 {
                    let c = nonempty.trailing_zeros() as usize;
                    nonempty &= nonempty - 1;
                    bad_rank |= pc[c] as usize != row;
                    let slots = &corner_slots[c];
                    let pair = |m: usize| {
                        _mm512_inserti64x4::<1>(
                            _mm512_castsi256_si512(group(slots[m])),
                            group(slots[m + 1]),
                        )
                    };
                    let (g01, g23, g45, g67) = (pair(0), pair(2), pair(4), pair(6));
                    // SAFETY: row < first_row + this task's non-empty children (caller)
                    let dst = unsafe { out.add(row * 27) };
                    for half in 0..2 {
                        let lanes: __mmask16 = if half == 0 { 0xffff } else { tail };
                        // SAFETY: each places row holds 32 lanes, 16 half + 16 <= 32
                        let at = unsafe {
                            _mm512_loadu_si512(places[c].as_ptr().add(16 * half) as *const __m512i)
                        };
                        let low = _mm512_permutex2var_epi32(g01, at, g23);
                        let upper = _mm512_permutex2var_epi32(g45, at, g67);
                        let e =
                            _mm512_mask_blend_epi32(_mm512_test_epi32_mask(at, high), low, upper);
                        // SAFETY: lanes of this row only
                        unsafe { _mm512_mask_storeu_epi32(dst.add(16 * half), lanes, e) };
                    }
                    row += 1;
                }
            }
            (bad_entries != 0, bad_rank)
        }

        /// Entries 16 half.. of child slot `c`'s row (`half` 0 or 1): the parent-level
        /// neighbour rank each reads from the parent's entries `a`, `b` (-1 absent), and the
        /// child slot it takes in that neighbour.
        ///
        /// # Safety
        /// The CPU has AVX-512F.
        #[target_feature(enable = "avx512f")]
        unsafe fn child_half(a: __m512i, b: __m512i, c: usize, half: usize) -> (__m512i, __m512i) {
            let (lut_p, lut_c) = &WIDE;
            let lanes = 16 * (half & 1);
            // SAFETY: each LUT row holds 32 lanes, lanes + 16 <= 32
            let (ip, ic) = unsafe {
                (
                    _mm512_loadu_si512(lut_p[c & 7].as_ptr().add(lanes) as *const __m512i),
                    _mm512_loadu_si512(lut_c[c & 7].as_ptr().add(lanes) as *const __m512i),
                )
            };
            (_mm512_permutex2var_epi32(a, ip, b), ic)
        }

        /// A parent's 27 table entries in two registers (lanes 16..27 in the second), entries
        /// outside -1..limit-1 read as -1; the mask of those is returned with them.
        #[target_feature(enable = "avx512f")]
        unsafe fn parent_row(prow: &[i32], limit: u32) -> (__m512i, __m512i, __mmask16) {
            let tail: __mmask16 = (1 << 11) - 1;
            // SAFETY: prow has 27 values: lanes 0..16, then the 11 of the tail mask
            let (a, b) = unsafe {
                (
                    _mm512_loadu_si512(prow.as_ptr() as *const __m512i),
                    _mm512_maskz_loadu_epi32(tail, prow.as_ptr().add(16)),
                )
            };
            // entries + 1 must lie in 0..=limit (unsigned)
            let one = _mm512_set1_epi32(1);
            let lim = _mm512_set1_epi32(limit as i32);
            let bad_a = _mm512_cmpgt_epu32_mask(_mm512_add_epi32(a, one), lim);
            let bad_b = _mm512_cmpgt_epu32_mask(_mm512_add_epi32(b, one), lim) & tail;
            let minus1 = _mm512_set1_epi32(-1);
            (
                _mm512_mask_mov_epi32(a, bad_a, minus1),
                _mm512_mask_mov_epi32(b, bad_b, minus1),
                bad_a | bad_b,
            )
        }

        /// All-node rows and entries: row 8p + c for child c of parent p (the parents of
        /// `prows`, the first being parent `first_parent`), entry 8v + slot for a neighbour in
        /// the child level of parent-level neighbour v, -1 where v is absent. Returns whether
        /// a parent entry was outside -1..limit-1.
        ///
        /// With `stream`, a parent's 8 rows (864 bytes = 27 × 32) are put together in a
        /// staging block and written with 32-byte streaming stores.
        ///
        /// # Safety
        /// The CPU has AVX-512F; `out` holds rows 8 first_parent.. of 27 values for every
        /// parent of `prows`; with `stream`, `out` is 32-byte aligned.
        #[target_feature(enable = "avx512f")]
        pub unsafe fn all_rows(
            prows: &[i32],
            limit: u32,
            first_parent: usize,
            out: *mut i32,
            stream: bool,
        ) -> bool {
            let tail: __mmask16 = (1 << 11) - 1;
            let minus1 = _mm512_set1_epi32(-1);
            let mut bad: __mmask16 = 0;
            if stream {
                #[repr(align(64))]
                struct Stage([i32; 8 * 27 + 5]);
                let mut stage = Stage([0; 8 * 27 + 5]);
                for (i, prow) in prows.chunks_exact(27).enumerate() {
                    // SAFETY: 27 values per row (chunks_exact)
                    let (a, b, bad_here) = unsafe { parent_row(prow, limit) };
                    bad |= bad_here;
                    let st = stage.0.as_mut_ptr();
                    for c in 0..8 {
                        for half in 0..2 {
                            // SAFETY: AVX-512F (this function's own requirement)
                            let (v, ic) = unsafe { child_half(a, b, c, half) };
                            let present = _mm512_cmpge_epi32_mask(v, _mm512_setzero_si512());
                            let e = _mm512_mask_add_epi32(
                                minus1,
                                present,
                                _mm512_slli_epi32::<3>(v),
                                ic,
                            );
                            // SAFETY: 27c + 16 half + 16 <= 8 · 27 + 5 (the 5 lanes past a
                            // row's end are overwritten by the next row or left unused)
                            unsafe { _mm512_storeu_si512(st.add(27 * c + 16 * half).cast(), e) };
                        }
                    }
                    // SAFETY: the parent's 8 rows start at 864 (first_parent + i) bytes into
                    // the 32-byte aligned `out`, so every 32-byte store is aligned
                    let dst = unsafe { out.add(8 * (first_parent + i) * 27) };
                    for k in 0..27 {
                        // SAFETY: 8k + 8 <= 216 staged values; dst + 8k is 32-byte aligned
                        unsafe {
                            let v = _mm256_load_si256(st.add(8 * k).cast());
                            _mm256_stream_si256(dst.add(8 * k).cast(), v);
                        }
                    }
                }
                _mm_sfence();
                return bad != 0;
            }
            for (i, prow) in prows.chunks_exact(27).enumerate() {
                // SAFETY: 27 values per row (chunks_exact)
                let (a, b, bad_here) = unsafe { parent_row(prow, limit) };
                bad |= bad_here;
                for c in 0..8 {
                    // SAFETY: row 8 (first_parent + i) + c is this task's (caller)
                    let dst = unsafe { out.add((8 * (first_parent + i) + c) * 27) };
                    for half in 0..2 {
                        let lanes: __mmask16 = if half == 0 { 0xffff } else { tail };
                        // SAFETY: AVX-512F (this function's own requirement)
                        let (v, ic) = unsafe { child_half(a, b, c, half) };
                        let present = _mm512_cmpge_epi32_mask(v, _mm512_setzero_si512());
                        let e =
                            _mm512_mask_add_epi32(minus1, present, _mm512_slli_epi32::<3>(v), ic);
                        // SAFETY: lanes of this row only
                        unsafe { _mm512_mask_storeu_epi32(dst.add(16 * half), lanes, e) };
                    }
                }
            }
            bad != 0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::morton;
    use crate::octree::{BuildOptions, SampleBox, build_octree};
    use std::collections::HashMap;

    fn brute(tree: &Octree, d: usize, nonempty: bool, periodic: bool) -> Vec<i32> {
        let side = 1i64 << d;
        let mut index = HashMap::new();
        let mut rank = 0;
        for (i, (&k, &c)) in tree.keys[d].iter().zip(&tree.children[d]).enumerate() {
            let b = tree.batch[d][i];
            if !nonempty || c >= 0 {
                index.insert((b, k), if nonempty { c } else { i as i32 });
                rank += 1;
            }
        }
        let _ = rank;
        let mut out = Vec::new();
        for (i, (&k, &c)) in tree.keys[d].iter().zip(&tree.children[d]).enumerate() {
            if nonempty && c < 0 {
                continue;
            }
            let b = tree.batch[d][i];
            let [x, y, z] = morton::decode(k).map(|v| v as i64);
            for dx in -1..=1 {
                for dy in -1..=1 {
                    for dz in -1..=1 {
                        let (nx, mut ny, nz) = (x + dx, y + dy, z + dz);
                        if periodic {
                            ny = ny.rem_euclid(side);
                        }
                        let inside = [nx, ny, nz].iter().all(|v| (0..side).contains(v));
                        let v = if inside {
                            let key = morton::encode(nx as u32, ny as u32, nz as u32);
                            *index.get(&(b, key)).unwrap_or(&-1)
                        } else {
                            -1
                        };
                        out.push(v);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn empty_sample_with_sparse_root() {
        // full_depth 0: an empty sample's root is an empty node with no children
        let pts = [0.5f64, 0.5, 0.5, -0.5, 0.25, 0.1];
        let bx = SampleBox {
            origin: [-1.0; 3],
            cell: [0.25; 3],
        };
        let opts = BuildOptions {
            depth: 3,
            full_depth: 0,
            clip: false,
        };
        let t = build_octree(&pts, &[0, 0, 2], &[bx, bx], opts).unwrap();
        assert_eq!(t.children[0], vec![-1, 0]);
        for d in 0..=3 {
            for nonempty in [true, false] {
                assert_eq!(
                    neighbors(&t, d, nonempty, false).unwrap(),
                    brute(&t, d, nonempty, false)
                );
            }
        }
    }

    #[test]
    fn matches_brute_force() {
        let mut state = 7u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) * 1.98 - 0.99
        };
        let pts: Vec<f64> = (0..3 * 700).map(|_| rnd()).collect();
        for depth in [1u8, 2, 3, 5] {
            let c = 2.0 / (1u64 << depth) as f64;
            let bx = SampleBox {
                origin: [-1.0; 3],
                cell: [c; 3],
            };
            let t = build_octree(
                &pts,
                &[0, 300, 300, 700],
                &[bx, bx, bx],
                BuildOptions {
                    depth,
                    full_depth: 2.min(depth),
                    clip: false,
                },
            )
            .unwrap();
            for d in 0..=depth as usize {
                for nonempty in [true, false] {
                    for periodic in [false, true] {
                        assert_eq!(
                            neighbors(&t, d, nonempty, periodic).unwrap(),
                            brute(&t, d, nonempty, periodic),
                            "depth {depth} d {d} nonempty {nonempty} periodic {periodic}"
                        );
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// The AVX-512 rows equal the portable ones, for non-empty and for all-node tables
        /// (these also with streaming stores): same table on trees of random clouds
        /// (several tasks), and the same error once an entry or a rank is corrupted.
        #[test]
        fn simd_rows_equal_portable_rows(
            seed in 0u64..u64::MAX,
            n in 1usize..6000,
            depth in 2u8..8,
            corrupt in 0usize..3,
            at in 0usize..usize::MAX,
            value in proptest::prelude::any::<i32>(),
        ) {
            if !simd::available() {
                return Ok(()); // nothing to compare on this CPU
            }
            let mut next = crate::testing::xorshift(seed | 1);
            let pts: Vec<f64> = (0..3 * n)
                .map(|_| {
                    let state = next();
                    // clustered: a third of the points near a plane, so parents have few children
                    let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                    if state % 3 == 0 { u * 0.01 } else { u * 1.98 - 0.99 }
                })
                .collect();
            let bx = SampleBox { origin: [-1.0; 3], cell: [2.0 / (1u64 << depth) as f64; 3] };
            let t = build_octree(&pts, &[0, n], &[bx], BuildOptions { depth, full_depth: 1, clip: false }).unwrap();
            let mut table = root_table(&t.children[0], false, false, false).unwrap();
            for d in 1..=depth as usize {
                let (pc, mut c) = (&t.children[d - 1], t.children[d].clone());
                let mut parent = table.clone();
                match corrupt {
                    1 => { let i = at % parent.len(); parent[i] = value; }
                    2 => { let i = at % c.len(); c[i] = value; }
                    _ => {}
                }
                for all in [false, true] {
                    let portable = step_with(&parent, pc, &c, all, all, false, usize::MAX);
                    for stream_min in [usize::MAX, 0] {
                        let fast = step_with(&parent, pc, &c, all, all, true, stream_min);
                        proptest::prop_assert_eq!(&fast, &portable, "depth {} all {} stream_min {}", d, all, stream_min);
                    }
                }
                table = step_with(&table, pc, &t.children[d], false, false, true, usize::MAX).unwrap();
            }
        }
    }

    /// The streaming all-node rows equal the cached ones, on a table with absent neighbours
    /// written at a 32-byte aligned `out` and at one 32 bytes further on.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn streamed_all_rows_equal_cached_rows() {
        if !simd::available() {
            return; // nothing to run on this CPU
        }
        let mut next = crate::testing::xorshift(7);
        let parents = 50usize;
        let prows: Vec<i32> = (0..parents * 27)
            .map(|_| (next() % (parents as u64 + 1)) as i32 - 1)
            .collect();
        let rows = 8 * parents * 27;
        let mut want = vec![0i32; rows];
        // SAFETY: AVX-512F checked above; want holds the rows of all parents
        let bad = unsafe { simd::all_rows(&prows, parents as u32, 0, want.as_mut_ptr(), false) };
        assert!(!bad);
        assert!(want.iter().any(|&v| v < 0) && want.iter().any(|&v| v >= 0));
        // room for rows plus 8 leading values, in 32-byte aligned storage (the large
        // tables of a build come 64-byte aligned from mimalloc; the proptest above covers
        // streaming into whatever alignment the test allocator gives)
        #[derive(Clone, Copy)]
        #[repr(align(32))]
        #[allow(dead_code)] // written through raw pointers only; its alignment is the point
        struct Line([i32; 8]);
        let mut buf = vec![Line([0; 8]); rows / 8 + 2];
        for skip in [0usize, 8] {
            let base = buf.as_mut_ptr() as *mut i32;
            // SAFETY: skip + rows <= 8 (rows / 8 + 2) values
            let out = unsafe { base.add(skip) };
            assert_eq!(out as usize % 32, skip * 4 % 32);
            // SAFETY: as above; out is 32-byte aligned
            let bad = unsafe { simd::all_rows(&prows, parents as u32, 0, out, true) };
            assert!(!bad);
            // SAFETY: rows values written from out
            let got = unsafe { std::slice::from_raw_parts(out, rows) };
            assert_eq!(got, &want[..], "skip {skip}");
        }
    }

    #[test]
    fn step_rejects_bad_entries_and_ranks_in_any_task() {
        // 3000 non-empty parents (3 tasks), each with children 0 and 5 non-empty
        let parents = 3000usize;
        let pc: Vec<i32> = (0..parents as i32).collect();
        let mut children = vec![-1i32; 8 * parents];
        for p in 0..parents {
            children[8 * p] = 2 * p as i32;
            children[8 * p + 5] = 2 * p as i32 + 1;
        }
        let mut table = vec![-1i32; 27 * parents];
        for p in 0..parents {
            table[27 * p + slot(0, 0, 0)] = p as i32;
            if p + 1 < parents {
                table[27 * p + slot(0, 0, 1)] = p as i32 + 1;
            }
        }
        for threads in [1, 2] {
            crate::testing::with_threads(threads, || {
                let ok = step(&table, &pc, &children, false, false).unwrap();
                assert_eq!(ok.len(), 2 * parents * 27);
                // child 0 of parent p (row 2p): its +z neighbour is child 1 of parent p, empty,
                // its centre is itself
                assert_eq!(ok[2 * 27 * 7 + slot(0, 0, 0)], 14);
                for rows_all in [false, true] {
                    for entries_all in [false, true] {
                        for bad in [-2, parents as i32, i32::MAX, i32::MIN] {
                            let mut t = table.clone();
                            t[27 * 2500 + 4] = bad;
                            let e = step(&t, &pc, &children, rows_all, entries_all).unwrap_err();
                            assert!(e.to_string().contains("parent_table"), "{e}");
                        }
                        if !rows_all {
                            for (at, v) in
                                [(8 * 2100, 7), (8 * 10 + 5, 22), (8 * 2999 + 5, 2 * 3000)]
                            {
                                let mut c = children.clone();
                                c[at] = v;
                                let e = step(&table, &pc, &c, rows_all, entries_all).unwrap_err();
                                assert!(e.to_string().contains("children"), "{e}");
                            }
                            // a rank moved to an empty slot: the count is unchanged, the order is not
                            let mut c = children.clone();
                            c.swap(8 * 1500, 8 * 1500 + 6);
                            assert!(step(&table, &pc, &c, rows_all, entries_all).is_err());
                        }
                    }
                }
            });
        }
    }
}
