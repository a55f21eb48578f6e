//! Concatenating separately built trees into one flat batch (`Octree.merge`).
//!
//! Tree t's nodes follow trees 0..t at every depth: its keys are copied as they are, its
//! children ranks are shifted by the earlier trees' non-empty counts at that depth, its
//! batch ids by their batch sizes, and its point→leaf index by their leaf counts.

use crate::error::{CoreError, Result};
use rayon::prelude::*;

/// One tree's arrays, borrowed.
pub struct TreeView<'a> {
    /// Per depth 0..=D: keys of all nodes.
    pub keys: Vec<&'a [u64]>,
    /// Per depth: -1 for an empty node, else its rank among the non-empty ones.
    pub children: Vec<&'a [i32]>,
    /// Per depth: each node's sample in this tree; None for a one-sample tree (all 0).
    pub batch: Option<Vec<&'a [i32]>>,
    /// Per depth: the tree's non-empty node count (its children ranks lie below it).
    pub nonempty: Vec<usize>,
    /// Each point's leaf, a non-empty rank at depth D.
    pub point_leaf: &'a [i64],
    /// Samples in this tree.
    pub batch_size: usize,
}

/// The merged arrays: per depth keys, children and batch ids, and the point→leaf index.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub keys: Vec<Vec<u64>>,
    pub children: Vec<Vec<i32>>,
    pub batch: Vec<Vec<i32>>,
    pub point_leaf: Vec<i64>,
}

/// One tree's share of one output array.
enum Job<'a> {
    Keys(&'a [u64], &'a mut [u64]),
    /// children, their non-empty count, the rank shift
    Children(&'a [i32], usize, i32, &'a mut [i32]),
    /// batch ids (None: all 0), the tree's batch size, the id shift
    Batch(Option<&'a [i32]>, usize, i32, &'a mut [i32]),
    /// point→leaf, the tree's leaf count, the leaf shift
    Leaves(&'a [i64], usize, i64, &'a mut [i64]),
}

/// What a job found wrong: (tree, depth or None for point→leaf, array name, bad value).
type Bad = (usize, Option<usize>, &'static str, i64);

/// Concatenate `trees` (same depth) into one batch, in their order; the copies run on the
/// current rayon pool. Every input value is range-checked while it is copied (children
/// ranks against the tree's non-empty count, batch ids against its batch size, leaves
/// against its leaf count), and the first bad one, in tree then depth order, is reported.
pub fn merge_trees(trees: &[TreeView<'_>]) -> Result<Merged> {
    let Some(first) = trees.first() else {
        return Err(CoreError::arg("trees", "at least one tree", "none"));
    };
    let levels = first.keys.len();
    for (t, tree) in trees.iter().enumerate() {
        let lens = [
            tree.keys.len(),
            tree.children.len(),
            tree.nonempty.len(),
            tree.batch.as_ref().map_or(levels, Vec::len),
        ];
        if lens.iter().any(|&l| l != levels) {
            return Err(CoreError::arg(
                "trees",
                format!("{levels} depths in every array of every tree (like trees[0])"),
                format!("trees[{t}] with keys/children/nonempty/batch depths {lens:?}"),
            ));
        }
        for d in 0..levels {
            let n = tree.keys[d].len();
            let other = [
                tree.children[d].len(),
                tree.batch.as_ref().map_or(n, |b| b[d].len()),
            ];
            if other.iter().any(|&l| l != n) {
                return Err(CoreError::arg(
                    "trees",
                    format!("children and batch ids of {n} entries at depth {d} (one per key)"),
                    format!("{other:?} in trees[{t}]"),
                ));
            }
        }
        if tree.batch.is_none() && tree.batch_size != 1 {
            return Err(CoreError::arg(
                "trees",
                "per-node sample ids (batch) for a tree of several samples",
                format!(
                    "none in trees[{t}], whose batch_size is {}",
                    tree.batch_size
                ),
            ));
        }
    }
    // the shifts: running sums over the trees, which must stay in int32 (ranks, ids)
    let mut node_total = vec![0usize; levels];
    let mut nonempty_base = vec![vec![0usize; levels]; trees.len()];
    let mut batch_base = vec![0usize; trees.len()];
    let mut batch_total = 0usize;
    let mut point_total = 0usize;
    for (t, tree) in trees.iter().enumerate() {
        for d in 0..levels {
            nonempty_base[t][d] = if t == 0 {
                0
            } else {
                nonempty_base[t - 1][d] + trees[t - 1].nonempty[d]
            };
            node_total[d] += tree.keys[d].len();
        }
        batch_base[t] = batch_total;
        batch_total += tree.batch_size;
        point_total += tree.point_leaf.len();
    }
    let last = trees.len() - 1;
    let most_nonempty = (0..levels)
        .map(|d| nonempty_base[last][d] + trees[last].nonempty[d])
        .max()
        .unwrap_or(0);
    if most_nonempty > i32::MAX as usize || batch_total > i32::MAX as usize {
        return Err(CoreError::arg(
            "trees",
            "fewer than 2^31 non-empty nodes per depth and samples in the merged batch",
            format!("{most_nonempty} non-empty nodes, {batch_total} samples"),
        ));
    }
    // SAFETY (all four): the jobs below write every entry of every output window, and the
    // windows of the trees tile each output
    let mut keys: Vec<Vec<u64>> = unsafe { crate::mem::vecs_for_overwrite(&node_total) };
    let mut children: Vec<Vec<i32>> = unsafe { crate::mem::vecs_for_overwrite(&node_total) };
    let mut batch: Vec<Vec<i32>> = unsafe { crate::mem::vecs_for_overwrite(&node_total) };
    let mut point_leaf: Vec<i64> = unsafe { crate::mem::vec_for_overwrite(point_total) };

    // (tree, depth or None) and its job, tree by tree so the first error is found in order
    let mut jobs: Vec<(usize, Option<usize>, Job<'_>)> =
        Vec::with_capacity(trees.len() * (3 * levels + 1));
    let mut k_rest: Vec<&mut [u64]> = keys.iter_mut().map(|v| &mut v[..]).collect();
    let mut c_rest: Vec<&mut [i32]> = children.iter_mut().map(|v| &mut v[..]).collect();
    let mut b_rest: Vec<&mut [i32]> = batch.iter_mut().map(|v| &mut v[..]).collect();
    let mut p_rest: &mut [i64] = &mut point_leaf[..];
    let mut leaf_base = 0usize;
    for (t, tree) in trees.iter().enumerate() {
        for d in 0..levels {
            let n = tree.keys[d].len();
            let (k, kr) = std::mem::take(&mut k_rest[d]).split_at_mut(n);
            let (c, cr) = std::mem::take(&mut c_rest[d]).split_at_mut(n);
            let (b, br) = std::mem::take(&mut b_rest[d]).split_at_mut(n);
            (k_rest[d], c_rest[d], b_rest[d]) = (kr, cr, br);
            jobs.push((t, Some(d), Job::Keys(tree.keys[d], k)));
            let shift = nonempty_base[t][d] as i32;
            jobs.push((
                t,
                Some(d),
                Job::Children(tree.children[d], tree.nonempty[d], shift, c),
            ));
            let ids = tree.batch.as_ref().map(|b| b[d]);
            jobs.push((
                t,
                Some(d),
                Job::Batch(ids, tree.batch_size, batch_base[t] as i32, b),
            ));
        }
        let (p, pr) = std::mem::take(&mut p_rest).split_at_mut(tree.point_leaf.len());
        p_rest = pr;
        let leaves = tree.nonempty[levels - 1];
        jobs.push((
            t,
            None,
            Job::Leaves(tree.point_leaf, leaves, leaf_base as i64, p),
        ));
        leaf_base += leaves;
    }
    let bad: Vec<Option<Bad>> = jobs
        .into_par_iter()
        .map(|(t, d, job)| run(job).map(|(name, v)| (t, d, name, v)))
        .collect();
    if let Some((t, d, name, v)) = bad.into_iter().flatten().next() {
        let at = d.map_or(String::new(), |d| format!(" at depth {d}"));
        let expected = match name {
            "children" => "children of -1 or a rank below the tree's non-empty count",
            "batch" => "batch ids below the tree's batch size",
            _ => "point_leaf ranks below the tree's leaf count",
        };
        return Err(CoreError::arg(
            "trees",
            expected,
            format!("{v} in trees[{t}].{name}{at}"),
        ));
    }
    Ok(Merged {
        keys,
        children,
        batch,
        point_leaf,
    })
}

/// Copy one job's values, shifted; returns the array's name and its first value out of
/// range, if any (checked branch-free alongside the copy, found again on failure).
fn run(job: Job<'_>) -> Option<(&'static str, i64)> {
    match job {
        Job::Keys(src, dst) => {
            dst.copy_from_slice(src);
            None
        }
        Job::Children(src, nonempty, shift, dst) => {
            let limit = nonempty as u32; // entries + 1 must lie in 0..=nonempty
            let mut bad = false;
            for (o, &c) in dst.iter_mut().zip(src) {
                bad |= (c as u32).wrapping_add(1) > limit;
                *o = if c >= 0 { c.wrapping_add(shift) } else { -1 };
            }
            bad.then(|| {
                let v = src.iter().find(|&&c| (c as u32).wrapping_add(1) > limit);
                ("children", *v.unwrap() as i64)
            })
        }
        Job::Batch(None, _, shift, dst) => {
            dst.fill(shift);
            None
        }
        Job::Batch(Some(src), size, shift, dst) => {
            let mut bad = false;
            for (o, &b) in dst.iter_mut().zip(src) {
                bad |= b as u32 >= size as u32;
                *o = b.wrapping_add(shift);
            }
            bad.then(|| {
                let v = src.iter().find(|&&b| b as u32 >= size as u32);
                ("batch", *v.unwrap() as i64)
            })
        }
        Job::Leaves(src, leaves, shift, dst) => {
            let mut bad = false;
            for (o, &l) in dst.iter_mut().zip(src) {
                bad |= l as u64 >= leaves as u64;
                *o = l.wrapping_add(shift);
            }
            bad.then(|| {
                let v = src.iter().find(|&&l| l as u64 >= leaves as u64);
                ("point_leaf", *v.unwrap())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::octree::{BuildOptions, Octree, SampleBox, build_octree};
    use proptest::prelude::*;

    fn view(t: &Octree, with_batch: bool) -> TreeView<'_> {
        TreeView {
            keys: t.keys.iter().map(|k| k.as_slice()).collect(),
            children: t.children.iter().map(|c| c.as_slice()).collect(),
            batch: with_batch.then(|| t.batch.iter().map(|b| b.as_slice()).collect()),
            nonempty: (0..t.keys.len()).map(|d| t.nnum_nempty(d)).collect(),
            point_leaf: &t.point_leaf,
            batch_size: t.batch_size,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Trees built separately and merged equal the same clouds built as one batch
        /// (the batch build is the oracle), on 1 and 3 threads, with one-sample trees'
        /// batch ids passed or left implicit.
        #[test]
        fn merged_trees_equal_one_batch_build(
            seed in any::<u64>(),
            sizes in proptest::collection::vec(0usize..400, 1..5),
            groups in proptest::collection::vec(1usize..3, 1..5),
            depth in 1u8..7,
            implicit in any::<bool>(),
        ) {
            let mut next = crate::testing::unit(seed | 1);
            let n: usize = sizes.iter().sum();
            let pts: Vec<f64> = (0..3 * n).map(|_| next() * 2.0 - 1.0).collect();
            let mut offsets = vec![0usize];
            for s in &sizes {
                offsets.push(offsets.last().unwrap() + s);
            }
            let opts = BuildOptions { depth, full_depth: 2.min(depth), clip: false };
            let cube = SampleBox { origin: [-1.0; 3], cell: [2.0 / (1u64 << depth) as f64; 3] };
            let whole = build_octree(&pts, &offsets, &vec![cube; sizes.len()], opts).unwrap();
            // the samples cut into consecutive groups, each group built as its own tree
            let mut trees = Vec::new();
            let mut s = 0;
            for &g in groups.iter().cycle() {
                if s == sizes.len() {
                    break;
                }
                let e = (s + g).min(sizes.len());
                let offs: Vec<usize> = offsets[s..=e].iter().map(|o| o - offsets[s]).collect();
                let part = &pts[offsets[s] * 3..offsets[e] * 3];
                trees.push(build_octree(part, &offs, &vec![cube; e - s], opts).unwrap());
                s = e;
            }
            let views: Vec<TreeView<'_>> = trees
                .iter()
                .map(|t| view(t, !(implicit && t.batch_size == 1)))
                .collect();
            for threads in [1, 3] {
                let m = crate::testing::with_threads(threads, || merge_trees(&views)).unwrap();
                prop_assert_eq!(&m.keys, &whole.keys);
                prop_assert_eq!(&m.children, &whole.children);
                prop_assert_eq!(&m.batch, &whole.batch);
                let pl: Vec<i64> = whole.point_leaf.iter().map(|&l| l as i64).collect();
                prop_assert_eq!(&m.point_leaf, &pl);
            }
        }
    }

    #[test]
    fn out_of_range_values_are_reported_with_tree_and_depth() {
        let pts = [0.1f64, 0.2, 0.3, -0.5, 0.5, 0.9];
        let opts = BuildOptions {
            depth: 3,
            full_depth: 1,
            clip: false,
        };
        let cube = SampleBox {
            origin: [-1.0; 3],
            cell: [0.25; 3],
        };
        let t = build_octree(&pts, &[0, 2], &[cube], opts).unwrap();
        let ok = view(&t, true);
        assert!(merge_trees(&[view(&t, true), ok]).is_ok());
        let mut bad_children = t.children[2].clone();
        let i = bad_children.iter().position(|&c| c >= 0).unwrap();
        bad_children[i] = t.nnum_nempty(2) as i32; // one past the last rank
        let mut v = view(&t, true);
        v.children[2] = &bad_children;
        let err = merge_trees(&[view(&t, true), v]).unwrap_err().to_string();
        assert!(
            err.contains("trees[1].children") && err.contains("at depth 2"),
            "{err}"
        );
        let bad_leaf: Vec<i64> = vec![0, -1];
        let mut v = view(&t, true);
        v.point_leaf = &bad_leaf;
        let err = merge_trees(&[v]).unwrap_err().to_string();
        assert!(
            err.contains("trees[0].point_leaf") && err.contains("-1"),
            "{err}"
        );
        let mut v = view(&t, false);
        v.batch_size = 2;
        assert!(
            merge_trees(&[v])
                .unwrap_err()
                .to_string()
                .contains("none in trees[0]")
        );
        assert!(merge_trees(&[]).is_err());
    }
}
