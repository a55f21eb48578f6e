//! 3×3×3 neighbour tables, derived level by level from the parent's table (no search).
//!
//! A node's neighbour at offset o lies in the parent's neighbour at offset
//! floor((slot + o) / 2), in child slot (slot + o) mod 2. Rows are only ever needed
//! for non-empty parents, so the chain down to depth d touches non-empty nodes only.

use crate::error::{CoreError, Result};
use crate::octree::Octree;
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
        let nonempty_above = if d == 0 {
            keys[0].len()
        } else {
            children[d - 1].iter().filter(|&&c| c >= 0).count()
        };
        if keys[d].len() != 8 * nonempty_above && d > 0 {
            return Err(CoreError::arg(
                "keys",
                format!(
                    "8 nodes per non-empty parent at depth {d} ({})",
                    8 * nonempty_above
                ),
                keys[d].len(),
            ));
        }
        let mut next_rank = 0i32;
        for &c in children[d] {
            if c >= 0 {
                if c != next_rank {
                    return Err(CoreError::arg(
                        "children",
                        format!("non-empty ranks 0, 1, 2, ... in order at depth {d}"),
                        format!("rank {c} where {next_rank} was due"),
                    ));
                }
                next_rank += 1;
            }
        }
    }
    // table for non-empty rows at depth 0 (roots), entries index all nodes at that depth;
    // rows are by non-empty rank (an empty sample's root has none), all roots only when asked
    let roots: Vec<usize> = if depth == 0 && !nonempty {
        (0..keys[0].len()).collect()
    } else {
        nonempty_indices(children[0])
    };
    let mut table = vec![-1i32; roots.len() * 27];
    for (j, &r) in roots.iter().enumerate() {
        table[j * 27 + slot(0, 0, 0)] = r as i32;
        if periodic_y {
            table[j * 27 + slot(0, -1, 0)] = r as i32;
            table[j * 27 + slot(0, 1, 0)] = r as i32;
        }
    }
    if depth == 0 {
        return Ok(finish(children[0], table, nonempty));
    }
    for d in 1..=depth {
        let rows: Vec<usize> = if d == depth && !nonempty {
            (0..keys[d].len()).collect()
        } else {
            nonempty_indices(children[d])
        };
        let parent_children = children[d - 1];
        let keys = keys[d];
        let parent = &table;
        let mut next = vec![-1i32; rows.len() * 27];
        next.par_chunks_mut(27 * 1024)
            .enumerate()
            .for_each(|(c, out)| {
                for (j, row) in out.chunks_mut(27).enumerate() {
                    let i = rows[c * 1024 + j];
                    let p = i / 8; // rank of the parent among non-empty nodes at d-1
                    let k = keys[i];
                    let s = [((k >> 2) & 1) as i32, ((k >> 1) & 1) as i32, (k & 1) as i32];
                    let prow = &parent[p * 27..p * 27 + 27];
                    for dx in -1..=1 {
                        for dy in -1..=1 {
                            for dz in -1..=1 {
                                let t = [s[0] + dx, s[1] + dy, s[2] + dz];
                                let pn = prow[slot(t[0] >> 1, t[1] >> 1, t[2] >> 1)];
                                if pn < 0 {
                                    continue;
                                }
                                let r = parent_children[pn as usize];
                                if r < 0 {
                                    continue;
                                }
                                let cs = ((t[0] & 1) << 2) | ((t[1] & 1) << 1) | (t[2] & 1);
                                row[slot(dx, dy, dz)] = r * 8 + cs;
                            }
                        }
                    }
                }
            });
        if d == depth {
            return Ok(finish(children[d], next, nonempty));
        }
        table = next;
    }
    unreachable!()
}

fn nonempty_indices(children: &[i32]) -> Vec<usize> {
    children
        .iter()
        .enumerate()
        .filter(|(_, c)| **c >= 0)
        .map(|(i, _)| i)
        .collect()
}

fn finish(ch: &[i32], mut table: Vec<i32>, nonempty: bool) -> Vec<i32> {
    if nonempty {
        table.par_iter_mut().for_each(|v| {
            if *v >= 0 {
                *v = ch[*v as usize];
            }
        });
    }
    table
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
}
