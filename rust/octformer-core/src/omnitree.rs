//! Omnitrees: anisotropic 2^k-trees whose nodes split in any non-empty subset of the
//! d dimensions (d = 2..=4), implemented clean-room from the omnitree paper's
//! description (Pollinger et al., 2025).
//!
//! A node carries a d-bit refinement mask (bit i set = split dimension i in half; 0 =
//! leaf) and has 2^popcount(mask) children. The canonical storage is the masks in
//! depth-first pre-order plus one occupancy bit per leaf (leaves in pre-order).
//! Child order: among the refined dimensions, the lowest dimension index is the most
//! significant bit of the child index; for a full 3-d split that is `4x + 2y + z`, the
//! same order as octformer's octrees (and ocnn's).
//!
//! Point location runs in O(depth): a breadth-first copy of the masks plus a prefix
//! count of children (`first_child[v] = 1 + Σ_{w<v} 2^popcount(mask[w])`, the rank
//! array) jumps straight to the child containing the point.

use crate::error::{CoreError, Result};
use crate::format::{self, ChildOrder, Coords, Cursor, DecodeOptions, Header, NodeKind, Traversal};

/// Deepest refinement level per dimension (grid coordinates fit in u32).
pub const MAX_LEVEL: u8 = 30;

/// An omnitree over the grid [0, 2^max_level)^dims, with its quantisation.
#[derive(Debug, Clone, PartialEq)]
pub struct Omnitree {
    pub dims: u8,
    pub max_level: u8,
    /// Refinement masks in depth-first pre-order.
    pub masks: Vec<u8>,
    /// 0/1 per leaf in pre-order: does the leaf hold data (points)?
    pub occupied: Vec<u8>,
    /// (dims,) world position of grid cell 0.
    pub origin: Vec<f64>,
    /// (dims,) world size of one finest-grid cell.
    pub cell: Vec<f64>,
    index: Index,
}

/// Breadth-first arrays for O(depth) location.
#[derive(Debug, Clone, PartialEq, Default)]
struct Index {
    bfs_mask: Vec<u8>,
    first_child: Vec<u32>,
    /// Pre-order leaf rank of a BFS node (u32::MAX for internal nodes).
    leaf_rank: Vec<u32>,
}

fn bad(name: &'static str, expected: impl Into<String>, actual: impl ToString) -> CoreError {
    CoreError::arg(name, expected, actual)
}

/// Child index bits of a point/cell inside a node: refined dims, lowest dim first (MSB).
#[inline]
fn refined_dims(mask: u8, dims: u8) -> impl Iterator<Item = usize> {
    (0..dims as usize).filter(move |&i| mask & (1 << i) != 0)
}

/// Walk the pre-order descriptor; call `visit(node, mask, levels, coords)` for every
/// node. Errors if the masks are not exactly one complete tree within the level limit.
fn walk(
    masks: &[u8],
    dims: u8,
    max_level: u8,
    mut visit: impl FnMut(usize, u8, [u8; 4], [u32; 4]),
) -> Result<usize> {
    struct Frame {
        mask: u8,
        next: u32,
        total: u32,
        levels: [u8; 4],
        coords: [u32; 4],
    }
    if masks.is_empty() {
        return Err(bad("masks", "at least the root node", "0 nodes"));
    }
    let full = 1u16 << dims;
    let mut stack: Vec<Frame> = Vec::new();
    let mut leaves = 0usize;
    for (i, &m) in masks.iter().enumerate() {
        let (levels, coords) = if i == 0 {
            ([0u8; 4], [0u32; 4])
        } else {
            let Some(top) = stack.last_mut() else {
                return Err(bad(
                    "masks",
                    format!("one complete tree of {i} nodes"),
                    format!("{} trailing nodes", masks.len() - i),
                ));
            };
            let j = top.next;
            top.next += 1;
            let k = top.mask.count_ones();
            let (mut levels, mut coords) = (top.levels, top.coords);
            for (t, dim) in refined_dims(top.mask, dims).enumerate() {
                let bit = (j >> (k - 1 - t as u32)) & 1;
                levels[dim] += 1;
                coords[dim] = (coords[dim] << 1) | bit;
            }
            (levels, coords)
        };
        if (m as u16) >= full {
            return Err(bad(
                "masks",
                format!("{dims}-bit masks"),
                format!("{m:#x} at node {i}"),
            ));
        }
        visit(i, m, levels, coords);
        if m != 0 {
            if let Some(dim) = refined_dims(m, dims).find(|&d| levels[d] >= max_level) {
                return Err(bad(
                    "masks",
                    format!("at most {max_level} splits of dimension {dim}"),
                    format!("a split at node {i} beyond it"),
                ));
            }
            stack.push(Frame {
                mask: m,
                next: 0,
                total: 1 << m.count_ones(),
                levels,
                coords,
            });
        } else {
            leaves += 1;
            while stack.last().is_some_and(|f| f.next == f.total) {
                stack.pop();
            }
        }
    }
    if !stack.is_empty() {
        return Err(bad(
            "masks",
            "one complete tree",
            format!("{} nodes ending inside an unfinished node", masks.len()),
        ));
    }
    Ok(leaves)
}

impl Omnitree {
    /// Check and index a pre-order descriptor with its per-leaf occupancy.
    pub fn from_preorder(
        dims: u8,
        max_level: u8,
        masks: Vec<u8>,
        occupied: Vec<u8>,
        origin: Vec<f64>,
        cell: Vec<f64>,
    ) -> Result<Self> {
        if !(2..=4).contains(&dims) {
            return Err(bad("dims", "2, 3 or 4", dims));
        }
        if max_level > MAX_LEVEL {
            return Err(bad("max_level", format!("at most {MAX_LEVEL}"), max_level));
        }
        if origin.len() != dims as usize || cell.len() != dims as usize {
            return Err(bad(
                "origin/cell",
                format!("{dims} values each"),
                format!("{} and {}", origin.len(), cell.len()),
            ));
        }
        if origin.iter().any(|v| !v.is_finite())
            || cell.iter().any(|v| !(v.is_finite() && *v > 0.0))
        {
            return Err(bad(
                "origin/cell",
                "finite origin and positive finite cell sizes",
                format!("{origin:?}, {cell:?}"),
            ));
        }
        if masks.len() > u32::MAX as usize / 2 {
            return Err(bad("masks", "fewer than 2^31 nodes", masks.len()));
        }
        let leaves = walk(&masks, dims, max_level, |_, _, _, _| {})?;
        if occupied.len() != leaves || occupied.iter().any(|&o| o > 1) {
            return Err(bad(
                "occupied",
                format!("{leaves} values of 0/1 (one per leaf)"),
                format!("{} values", occupied.len()),
            ));
        }
        let index = build_index(&masks);
        Ok(Omnitree {
            dims,
            max_level,
            masks,
            occupied,
            origin,
            cell,
            index,
        })
    }

    pub fn num_nodes(&self) -> usize {
        self.masks.len()
    }
    pub fn num_leaves(&self) -> usize {
        self.occupied.len()
    }

    /// Leaf boxes in pre-order as finest-grid cells: (lo, level) per dimension, (L, dims) each.
    pub fn leaf_cells(&self) -> (Vec<u32>, Vec<u8>) {
        let d = self.dims as usize;
        let mut lo = Vec::with_capacity(self.num_leaves() * d);
        let mut lv = Vec::with_capacity(self.num_leaves() * d);
        let top = self.max_level;
        walk(&self.masks, self.dims, top, |_, m, levels, coords| {
            if m == 0 {
                for i in 0..d {
                    lo.push(coords[i] << (top - levels[i]));
                    lv.push(levels[i]);
                }
            }
        })
        .expect("validated at construction");
        (lo, lv)
    }

    /// Pre-order leaf containing each finest-grid cell (N, dims); -1 outside the grid.
    pub fn locate_cells(&self, cells: &[i64]) -> Result<Vec<i64>> {
        let d = self.dims as usize;
        if cells.len() % d != 0 {
            return Err(bad(
                "cells",
                format!("a flat (N, {d}) buffer"),
                format!("{} values", cells.len()),
            ));
        }
        let side = 1i64 << self.max_level;
        Ok(cells
            .chunks_exact(d)
            .map(|c| {
                if c.iter().any(|&v| v < 0 || v >= side) {
                    return -1;
                }
                let mut q = [0u32; 4];
                for i in 0..d {
                    q[i] = c[i] as u32;
                }
                self.locate_one(&q) as i64
            })
            .collect())
    }

    #[inline]
    fn locate_one(&self, q: &[u32; 4]) -> u32 {
        let ix = &self.index;
        let mut v = 0usize;
        let mut levels = [0u8; 4];
        loop {
            let m = ix.bfs_mask[v];
            if m == 0 {
                return ix.leaf_rank[v];
            }
            let mut child = 0u32;
            for dim in refined_dims(m, self.dims) {
                let bit = (q[dim] >> (self.max_level - 1 - levels[dim])) & 1;
                child = (child << 1) | bit;
                levels[dim] += 1;
            }
            v = (ix.first_child[v] + child) as usize;
        }
    }

    /// Build from quantised cells (N, dims) in [0, 2^max_level) with a refinement
    /// [`Rule`]; empty nodes and finest-level cells are leaves, so every occupied leaf
    /// is one finest cell (equal leaf resolution with the octree of the same cells).
    pub fn from_cells(
        dims: u8,
        max_level: u8,
        cells: &[u32],
        rule: Rule,
        origin: Vec<f64>,
        cell: Vec<f64>,
    ) -> Result<Self> {
        if !(2..=4).contains(&dims) {
            return Err(bad("dims", "2, 3 or 4", dims));
        }
        if max_level > MAX_LEVEL {
            return Err(bad("max_level", format!("at most {MAX_LEVEL}"), max_level));
        }
        if let Rule::Extent(ratio) = rule {
            if !(ratio.is_finite() && (0.0..=1.0).contains(&ratio)) {
                return Err(bad("ratio", "a number in [0, 1]", ratio));
            }
        }
        let d = dims as usize;
        if cells.len() % d != 0 {
            return Err(bad(
                "cells",
                format!("a flat (N, {d}) buffer"),
                format!("{} values", cells.len()),
            ));
        }
        let side = 1u64 << max_level;
        if let Some(v) = cells.iter().find(|&&v| v as u64 >= side) {
            return Err(bad("cells", format!("values in [0, {side})"), v));
        }
        let mut idx: Vec<u32> = (0..(cells.len() / d) as u32).collect();
        let mut masks = Vec::new();
        let mut occupied = Vec::new();
        let mut scratch = Vec::new();
        split_node(
            cells,
            d,
            max_level,
            rule,
            &mut idx,
            [0; 4],
            &mut masks,
            &mut occupied,
            &mut scratch,
        );
        Omnitree::from_preorder(dims, max_level, masks, occupied, origin, cell)
    }

    /// The equivalent omnitree of one octree sample: every split node gets the full
    /// mask (x, y, z), empty nodes and depth-`depth` nodes are leaves; `children[d]`
    /// are that sample's per-depth children arrays with sample-local ranks.
    pub fn from_octree_levels(
        children: &[&[i32]],
        depth: u8,
        origin: Vec<f64>,
        cell: Vec<f64>,
    ) -> Result<Self> {
        if children.len() != depth as usize + 1 || children[0].len() != 1 {
            return Err(bad(
                "children",
                format!("{} levels with one root", depth as usize + 1),
                children.len(),
            ));
        }
        let mut masks = Vec::new();
        let mut occupied = Vec::new();
        let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
        while let Some((d, i)) = stack.pop() {
            let c = children[d][i];
            if d == depth as usize || c < 0 {
                masks.push(0);
                occupied.push((c >= 0) as u8);
                continue;
            }
            let r = c as usize;
            if children[d + 1].len() < 8 * r + 8 {
                return Err(bad(
                    "children",
                    format!("8 children of rank {r} at depth {}", d + 1),
                    children[d + 1].len(),
                ));
            }
            masks.push(0b111);
            for j in (0..8).rev() {
                stack.push((d + 1, 8 * r + j));
            }
        }
        Omnitree::from_preorder(3, depth, masks, occupied, origin, cell)
    }

    /// OCTF bytes (node_kind omnitree, depth-first; see docs/octf-format.md).
    pub fn encode(&self) -> Vec<u8> {
        let d = self.dims as usize;
        let header = Header {
            major: format::VERSION_MAJOR,
            minor: format::VERSION_MINOR,
            flags: 0,
            dims: self.dims,
            node_kind: NodeKind::Omnitree,
            child_order: ChildOrder::XyzMsb,
            traversal: Traversal::DepthFirst,
            max_depth: self.max_level,
            full_depth: 0,
            coords: Coords::Cartesian,
            batch_size: 1,
            channels: 0,
            origin: self.origin.clone(),
            scale: self.cell.clone(),
            counts: vec![self.masks.len() as u64, self.occupied.len() as u64],
        };
        let mut out = Vec::new();
        format::put_header(&mut out, &header);
        let mask_bytes = pack_bits(self.masks.iter().copied(), d);
        format::put_chunk(&mut out, format::TAG_MASKS, mask_bytes.len(), |o| {
            o.extend_from_slice(&mask_bytes)
        });
        let occ = pack_bits(self.occupied.iter().copied(), 1);
        format::put_chunk(&mut out, format::TAG_OCCUPANCY, occ.len(), |o| {
            o.extend_from_slice(&occ)
        });
        format::put_footer(&mut out);
        out
    }

    /// Decode OCTF omnitree bytes; any damage is a `Corrupt` error.
    pub fn decode(data: &[u8], opts: &DecodeOptions) -> Result<Self> {
        let corrupt = |detail: String| CoreError::Corrupt {
            what: "data",
            detail,
        };
        let verify = opts.verify_checksums;
        let mut cur = Cursor::new(data);
        let h = format::read_header(&mut cur, verify)?;
        if h.node_kind != NodeKind::Omnitree {
            return Err(CoreError::arg(
                "data",
                "an OCTF omnitree file",
                "an octree file (use octformer.format.decode)",
            ));
        }
        let d = h.dims as usize;
        let (nodes, leaves) = (h.counts[0], h.counts[1]);
        // both chunks must fit in what is left: check before allocating anything
        let need = nodes
            .checked_mul(d as u64)
            .map(|b| b.div_ceil(8))
            .unwrap_or(u64::MAX) as u128
            + leaves.div_ceil(8) as u128;
        if nodes == 0 || leaves > nodes || need > cur.remaining() as u128 {
            return Err(corrupt(format!(
                "header.counts: {nodes} nodes / {leaves} leaves need {need} bytes, {} remain",
                cur.remaining()
            )));
        }
        let (nodes, leaves) = (nodes as usize, leaves as usize);
        let mb = cur.chunk(format::TAG_MASKS, "masks", verify)?;
        if mb.len() != (nodes * d).div_ceil(8) {
            return Err(corrupt(format!(
                "masks: expected {} bytes, got {}",
                (nodes * d).div_ceil(8),
                mb.len()
            )));
        }
        let masks = unpack_bits(mb, d, nodes)
            .ok_or_else(|| corrupt("masks: non-zero padding bits".into()))?;
        let ob = cur.chunk(format::TAG_OCCUPANCY, "occupancy", verify)?;
        if ob.len() != leaves.div_ceil(8) {
            return Err(corrupt(format!(
                "occupancy: expected {} bytes, got {}",
                leaves.div_ceil(8),
                ob.len()
            )));
        }
        let occupied = unpack_bits(ob, 1, leaves)
            .ok_or_else(|| corrupt("occupancy: non-zero padding bits".into()))?;
        cur.footer(verify)?;
        Omnitree::from_preorder(h.dims, h.max_depth, masks, occupied, h.origin, h.scale)
            .map_err(|e| corrupt(format!("invalid omnitree: {e}")))
    }
}

/// Which dimensions a non-empty node halves when an omnitree is built from points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// Halve the dims along which one half of the node holds no point (each such split
    /// cuts away empty space); when every dim has points on both sides, halve all.
    Carve,
    /// Halve the dims along which the points extend over more than this fraction of the
    /// node's size; when none does, halve the node's largest dims.
    Extent(f64),
}

#[allow(clippy::too_many_arguments)]
fn split_node(
    cells: &[u32],
    d: usize,
    top: u8,
    rule: Rule,
    idx: &mut [u32],
    levels: [u8; 4],
    masks: &mut Vec<u8>,
    occupied: &mut Vec<u8>,
    scratch: &mut Vec<u32>,
) {
    if idx.is_empty() || (0..d).all(|i| levels[i] == top) {
        masks.push(0);
        occupied.push(!idx.is_empty() as u8);
        return;
    }
    let mut lo = [u32::MAX; 4];
    let mut hi = [0u32; 4];
    let mut upper = [0u32; 4]; // points in the upper half along each dim
    for &p in idx.iter() {
        let c = &cells[p as usize * d..p as usize * d + d];
        for i in 0..d {
            lo[i] = lo[i].min(c[i]);
            hi[i] = hi[i].max(c[i]);
            if levels[i] < top {
                upper[i] += (c[i] >> (top - 1 - levels[i])) & 1;
            }
        }
    }
    let splittable: u8 = (0..d).filter(|&i| levels[i] < top).map(|i| 1u8 << i).sum();
    let mut mask = 0u8;
    match rule {
        Rule::Carve => {
            // halve the dims where one half is empty; if every dim is occupied on both sides, halve all
            for i in 0..d {
                if splittable & (1 << i) != 0 && (upper[i] == 0 || upper[i] as usize == idx.len()) {
                    mask |= 1 << i;
                }
            }
            if mask == 0 {
                mask = splittable;
            }
        }
        Rule::Extent(ratio) => {
            let mut largest = 0u8;
            for i in 0..d {
                if levels[i] < top {
                    let size = (1u64 << (top - levels[i])) as f64;
                    let extent = (hi[i] - lo[i]) as f64 + 1.0;
                    if extent > ratio * size {
                        mask |= 1 << i;
                    }
                    largest = largest.max(top - levels[i]);
                }
            }
            if mask == 0 {
                for i in 0..d {
                    if levels[i] < top && top - levels[i] == largest {
                        mask |= 1 << i;
                    }
                }
            }
        }
    }
    masks.push(mask);
    let k = mask.count_ones();
    let child_of = |p: u32| -> usize {
        let c = &cells[p as usize * d..p as usize * d + d];
        let mut child = 0usize;
        for dim in refined_dims(mask, d as u8) {
            child = (child << 1) | ((c[dim] >> (top - 1 - levels[dim])) & 1) as usize;
        }
        child
    };
    // stable counting sort of the points into the 2^k children
    let n_children = 1usize << k;
    let mut counts = vec![0usize; n_children + 1];
    for &p in idx.iter() {
        counts[child_of(p) + 1] += 1;
    }
    for j in 0..n_children {
        counts[j + 1] += counts[j];
    }
    scratch.clear();
    scratch.resize(idx.len(), 0);
    let mut pos = counts.clone();
    for &p in idx.iter() {
        let c = child_of(p);
        scratch[pos[c]] = p;
        pos[c] += 1;
    }
    idx.copy_from_slice(scratch);
    let mut child_levels = levels;
    for dim in refined_dims(mask, d as u8) {
        child_levels[dim] += 1;
    }
    for j in 0..n_children {
        split_node(
            cells,
            d,
            top,
            rule,
            &mut idx[counts[j]..counts[j + 1]],
            child_levels,
            masks,
            occupied,
            scratch,
        );
    }
}

fn build_index(masks: &[u8]) -> Index {
    // subtree sizes from the pre-order (children follow their parent)
    let n = masks.len();
    let mut size = vec![1u32; n];
    let mut stack: Vec<(usize, u32)> = Vec::new(); // (node, children still to close)
    for (i, &m) in masks.iter().enumerate() {
        if m != 0 {
            stack.push((i, 1 << m.count_ones()));
            continue;
        }
        // a leaf closes one child slot of its parent; finished parents close theirs
        while let Some(top) = stack.last_mut() {
            top.1 -= 1;
            if top.1 > 0 {
                break;
            }
            let (p, _) = stack.pop().unwrap();
            size[p] = (i - p + 1) as u32;
        }
    }
    // breadth-first order with contiguous children
    let mut bfs = Vec::with_capacity(n);
    bfs.push(0usize);
    let mut head = 0;
    while head < bfs.len() {
        let u = bfs[head];
        head += 1;
        if masks[u] != 0 {
            let mut c = u + 1;
            for _ in 0..(1usize << masks[u].count_ones()) {
                bfs.push(c);
                c += size[c] as usize;
            }
        }
    }
    let mut leaf_rank_pre = vec![u32::MAX; n];
    let mut r = 0;
    for (i, &m) in masks.iter().enumerate() {
        if m == 0 {
            leaf_rank_pre[i] = r;
            r += 1;
        }
    }
    let mut ix = Index {
        bfs_mask: Vec::with_capacity(n),
        first_child: Vec::with_capacity(n),
        leaf_rank: Vec::with_capacity(n),
    };
    let mut next = 1u32;
    for &u in &bfs {
        ix.bfs_mask.push(masks[u]);
        ix.first_child.push(next);
        ix.leaf_rank.push(leaf_rank_pre[u]);
        if masks[u] != 0 {
            next += 1 << masks[u].count_ones();
        }
    }
    ix
}

/// Pack `bits`-wide values LSB-first into bytes (zero padding).
fn pack_bits(values: impl Iterator<Item = u8>, bits: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut n = 0;
    for v in values {
        acc |= (v as u32) << n;
        n += bits;
        while n >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            n -= 8;
        }
    }
    if n > 0 {
        out.push(acc as u8);
    }
    out
}

/// Inverse of [`pack_bits`]; None when padding bits are not zero (not canonical).
fn unpack_bits(bytes: &[u8], bits: usize, count: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(count);
    let mask = (1u32 << bits) - 1;
    let mut acc = 0u32;
    let mut n = 0;
    let mut it = bytes.iter();
    for _ in 0..count {
        while n < bits {
            acc |= (*it.next()? as u32) << n;
            n += 8;
        }
        out.push((acc & mask) as u8);
        acc >>= bits;
        n -= bits;
    }
    if acc != 0 || it.next().is_some() {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unit(d: usize) -> (Vec<f64>, Vec<f64>) {
        (vec![0.0; d], vec![1.0; d])
    }

    fn brute_locate(t: &Omnitree, q: &[u32]) -> i64 {
        let (lo, lv) = t.leaf_cells();
        let d = t.dims as usize;
        let mut found = -1;
        for l in 0..t.num_leaves() {
            let inside = (0..d).all(|i| {
                let s = 1u32 << (t.max_level - lv[l * d + i]);
                q[i] >= lo[l * d + i] && q[i] < lo[l * d + i] + s
            });
            if inside {
                assert_eq!(found, -1, "leaves overlap");
                found = l as i64;
            }
        }
        found
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn build_locate_and_round_trip(dims in 2u8..5, level in 1u8..6, ratio in 0.0f64..1.1,
                                       raw in proptest::collection::vec(any::<u32>(), 0..200)) {
            let d = dims as usize;
            let side = 1u32 << level;
            let cells: Vec<u32> = raw[..raw.len() / d * d].iter().map(|v| v % side).collect();
            let (o, c) = unit(d);
            let rule = if ratio > 1.0 { Rule::Carve } else { Rule::Extent(ratio) };
            let t = Omnitree::from_cells(dims, level, &cells, rule, o, c).unwrap();
            // every point's leaf is occupied and found by brute force
            let q: Vec<i64> = cells.iter().map(|&v| v as i64).collect();
            let located = t.locate_cells(&q).unwrap();
            for (p, &l) in located.iter().enumerate() {
                prop_assert_eq!(l, brute_locate(&t, &cells[p * d..p * d + d]));
                prop_assert_eq!(t.occupied[l as usize], 1);
            }
            // leaves tile the grid: volumes sum to side^d
            let (_, lv) = t.leaf_cells();
            let vol: u128 = lv.chunks_exact(d).map(|l| l.iter().map(|&x| 1u128 << (level - x)).product::<u128>()).sum();
            prop_assert_eq!(vol, (side as u128).pow(d as u32));
            // occupied leaves are finest cells holding a point
            let bytes = t.encode();
            let back = Omnitree::decode(&bytes, &DecodeOptions::default()).unwrap();
            prop_assert_eq!(&back, &t);
            prop_assert_eq!(back.encode(), bytes);
        }
    }

    #[test]
    fn corruption_and_truncation_are_errors() {
        let cells: Vec<u32> = (0..40).map(|i| (i * 7 % 16) as u32).collect();
        let (o, c) = unit(4);
        let t = Omnitree::from_cells(4, 4, &cells, Rule::Carve, o, c).unwrap();
        let bytes = t.encode();
        for i in 0..bytes.len() {
            for x in [1u8, 0x40, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= x;
                assert!(
                    matches!(
                        Omnitree::decode(&b, &DecodeOptions::default()),
                        Err(CoreError::Corrupt { .. })
                    ),
                    "flip {i}"
                );
            }
        }
        for n in 0..bytes.len() {
            assert!(Omnitree::decode(&bytes[..n], &DecodeOptions::default()).is_err());
        }
    }

    /// Omnitree seeds for the cargo-fuzz target (see format.rs `write_fuzz_seeds`).
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        let dir = std::env::var("OCTF_SEED_DIR").expect("set OCTF_SEED_DIR");
        std::fs::create_dir_all(&dir).unwrap();
        for dims in 2u8..=4 {
            let cells: Vec<u32> = (0..12 * dims as u32).map(|i| i * 5 % 8).collect();
            let (o, c) = unit(dims as usize);
            for (i, rule) in [Rule::Carve, Rule::Extent(0.5)].into_iter().enumerate() {
                let t = Omnitree::from_cells(dims, 3, &cells, rule, o.clone(), c.clone()).unwrap();
                std::fs::write(format!("{dir}/omni{dims}_{i}.octf"), t.encode()).unwrap();
            }
        }
    }

    #[test]
    fn descriptor_checks() {
        let (o, c) = unit(2);
        // root split in x, two leaves
        assert!(
            Omnitree::from_preorder(2, 1, vec![1, 0, 0], vec![0, 1], o.clone(), c.clone()).is_ok()
        );
        assert!(Omnitree::from_preorder(2, 1, vec![1, 0], vec![0], o.clone(), c.clone()).is_err());
        assert!(
            Omnitree::from_preorder(2, 1, vec![1, 0, 0, 0], vec![0, 1, 0], o.clone(), c.clone())
                .is_err()
        );
        assert!(
            Omnitree::from_preorder(
                2,
                1,
                vec![1, 1, 0, 0, 0],
                vec![0, 1, 0],
                o.clone(),
                c.clone()
            )
            .is_err()
        );
        assert!(Omnitree::from_preorder(2, 1, vec![4, 0, 0], vec![0, 1], o, c).is_err());
    }
}
