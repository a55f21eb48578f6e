//! Bindings for octree build, leaf averaging and neighbour tables.

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use octformer_core::neighbors::neighbors_from_levels;
use octformer_core::octree::{
    Bounds, auto_cube, average_per_leaf, build_octree_with as core_build, sample_bounds,
};
use octformer_core::{BuildOptions, Octree, SampleBox};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::convert::{as_u64, c_slice2, keys_to_numpy, slice1};
use crate::errors::{OctformerError, guarded};
use crate::threads;

/// Points as either float precision, borrowed without copying.
#[derive(FromPyObject)]
pub enum Points<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F64(PyReadonlyArray2<'py, f64>),
}

/// Run `$body` (native work over `$s`, the points as a flat `&[T]` of either precision)
/// without the GIL, in the pool for `$threads`, with core errors and panics mapped.
macro_rules! on_points {
    ($py:expr, $points:expr, $threads:expr, |$s:ident| $body:expr) => {
        match &$points {
            Points::F32(p) => {
                let $s = points_slice(p)?;
                $py.detach(|| {
                    threads::install_for($threads, $s.len() / 3, threads::SMALL_BUILD, || {
                        guarded(|| $body)
                    })
                })??
            }
            Points::F64(p) => {
                let $s = points_slice(p)?;
                $py.detach(|| {
                    threads::install_for($threads, $s.len() / 3, threads::SMALL_BUILD, || {
                        guarded(|| $body)
                    })
                })??
            }
        }
    };
}

#[pyfunction]
#[pyo3(signature = (points, offsets, origins, cells, depth, full_depth, clip=false, num_threads=None, fill_batch=true))]
/// Build a batch of octrees; returns a dict of numpy arrays (see octformer.octree).
/// With `fill_batch=False` a single-sample build returns `batch` as None (all zeros:
/// the caller makes those arrays).
#[allow(clippy::too_many_arguments)]
pub fn build_octree<'py>(
    py: Python<'py>,
    points: Points<'py>,
    offsets: PyReadonlyArray1<'py, i64>,
    origins: PyReadonlyArray2<'py, f64>,
    cells: PyReadonlyArray2<'py, f64>,
    depth: u8,
    full_depth: u8,
    clip: bool,
    num_threads: Option<usize>,
    fill_batch: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let offs = offsets_usize(&offsets)?;
    let b = offs.len().saturating_sub(1);
    for (name, a) in [("origins", &origins), ("cells", &cells)] {
        if a.shape() != [b, 3] {
            return Err(OctformerError::new_err(format!(
                "{name}: expected shape ({b}, 3), got {:?}",
                a.shape()
            )));
        }
    }
    let origins = origins.as_array();
    let cells = cells.as_array();
    let boxes: Vec<SampleBox> = (0..b)
        .map(|i| SampleBox {
            origin: [origins[[i, 0]], origins[[i, 1]], origins[[i, 2]]],
            cell: [cells[[i, 0]], cells[[i, 1]], cells[[i, 2]]],
        })
        .collect();
    let opts = BuildOptions {
        depth,
        full_depth,
        clip,
    };
    let tree = on_points!(py, points, num_threads, |s| core_build(
        s,
        &offs,
        &boxes,
        opts,
        fill_batch || b != 1
    ));
    let arrays = tree_arrays(py, tree, fill_batch || b != 1)?;
    let out = PyDict::new(py);
    out.set_item("batch_nnum", arrays.batch_nnum)?;
    out.set_item("batch_nnum_nempty", arrays.batch_nnum_nempty)?;
    out.set_item("keys", arrays.keys)?;
    out.set_item("children", arrays.children)?;
    out.set_item("batch", arrays.batch)?;
    out.set_item("point_leaf", arrays.point_leaf)?;
    Ok(out)
}

/// A built tree's arrays as numpy (moved, not copied); `batch` is None unless `with_batch`.
struct TreeArrays<'py> {
    keys: Bound<'py, PyList>,
    children: Bound<'py, PyList>,
    batch: Bound<'py, PyAny>,
    batch_nnum: Bound<'py, PyArray2<i64>>,
    batch_nnum_nempty: Bound<'py, PyArray2<i64>>,
    point_leaf: Bound<'py, numpy::PyArray1<i64>>,
}

fn tree_arrays(py: Python<'_>, tree: Octree, with_batch: bool) -> PyResult<TreeArrays<'_>> {
    let d = tree.depth as usize;
    let nnum = Array2::from_shape_fn((d + 1, tree.batch_size), |(i, j)| {
        tree.batch_nnum[i][j] as i64
    });
    let nnum_ne = Array2::from_shape_fn((d + 1, tree.batch_size), |(i, j)| {
        tree.batch_nnum_nempty[i][j] as i64
    });
    let batch = if with_batch {
        PyList::new(py, tree.batch.into_iter().map(|c| c.into_pyarray(py)))?.into_any()
    } else {
        py.None().into_bound(py)
    };
    Ok(TreeArrays {
        keys: PyList::new(py, tree.keys.into_iter().map(|k| keys_to_numpy(py, k)))?,
        children: PyList::new(py, tree.children.into_iter().map(|c| c.into_pyarray(py)))?,
        batch,
        batch_nnum: nnum.into_pyarray(py),
        batch_nnum_nempty: nnum_ne.into_pyarray(py),
        point_leaf: tree.point_leaf.into_pyarray(py),
    })
}

/// `octformer.octree.LAZY_ZEROS_MIN_BYTES`: zero buffers this large are fresh mappings.
const LAZY_ZEROS_MIN_BYTES: usize = 1 << 20;

/// Fast path of `octformer.build_octree` for its common call: one float32/float64 C-contiguous
/// (N, 3) numpy cloud, a box that is None/"auto" or two 3-value sequences of finite floats
/// with min < max, no features/normals/offsets. One native call: box, checks, build.
///
/// Returns None when the call is not of that form (or a box would be rejected): the Python
/// wrapper then takes its general path, which has the same results and raises the errors.
/// Else `(keys, children, batch_nnum, batch_nnum_nempty, point_leaf, origin (1, 3),
/// voxel_size (1, 3), zeros)`: `zeros` is an int32 zero array of the total node count for
/// the caller to hand out as per-depth batch-id views, or None when that is at least
/// `LAZY_ZEROS_MIN_BYTES` (the caller maps lazily zeroed pages instead).
#[pyfunction]
#[pyo3(signature = (points, depth, full_depth, bbox, clip=false, num_threads=None))]
pub fn build_single<'py>(
    py: Python<'py>,
    points: &Bound<'py, PyAny>,
    depth: u8,
    full_depth: u8,
    bbox: &Bound<'py, PyAny>,
    clip: bool,
    num_threads: Option<usize>,
) -> PyResult<Option<Bound<'py, PyTuple>>> {
    let Ok(points) = points.extract::<Points>() else {
        return Ok(None);
    };
    let explicit = if bbox.is_none() {
        None
    } else if let Ok(s) = bbox.cast::<PyString>() {
        if s.to_cow()? != "auto" {
            return Ok(None);
        }
        None
    } else {
        // (min_xyz, max_xyz) as any 2-sequence of 3-sequences (tuples, lists, arrays)
        match bbox.extract::<Vec<[f64; 3]>>().as_deref() {
            Ok(&[lo, hi])
                if (0..3).all(|a| lo[a].is_finite() && hi[a].is_finite() && lo[a] < hi[a]) =>
            {
                Some((lo, hi))
            }
            _ => return Ok(None),
        }
    };
    let side = (1u64 << depth.min(63)) as f64;
    let opts = BuildOptions {
        depth,
        full_depth,
        // an auto box holds every point by construction; clipping only absorbs rounding
        clip: clip || explicit.is_none(),
    };
    let built = match &points {
        Points::F32(p) => single_native(py, p, explicit, side, opts, num_threads)?,
        Points::F64(p) => single_native(py, p, explicit, side, opts, num_threads)?,
    };
    // None: not C-contiguous (N, 3) points
    let Some((tree, bx)) = built else {
        return Ok(None);
    };
    let total: usize = tree.keys.iter().map(Vec::len).sum();
    // below LAZY_ZEROS_MIN_BYTES the batch ids come from here, zeroed in memory this
    // allocator keeps mapped (numpy's calloc of a few 100 KiB faulted fresh pages in every
    // call); larger ones from the caller's lazily zeroed mapping
    let zeros = if total * 4 < LAZY_ZEROS_MIN_BYTES {
        vec![0i32; total].into_pyarray(py).into_any()
    } else {
        py.None().into_bound(py)
    };
    let a = tree_arrays(py, tree, false)?;
    let origin = Array2::from_shape_vec((1, 3), bx.origin.to_vec()).expect("shape");
    let cells = Array2::from_shape_vec((1, 3), bx.cell.to_vec()).expect("shape");
    Ok(Some(PyTuple::new(
        py,
        [
            a.keys.into_any(),
            a.children.into_any(),
            a.batch_nnum.into_any(),
            a.batch_nnum_nempty.into_any(),
            a.point_leaf.into_any(),
            origin.into_pyarray(py).into_any(),
            cells.into_pyarray(py).into_any(),
            zeros,
        ],
    )?))
}

#[pyfunction]
#[pyo3(signature = (points, offsets, cube=true, num_threads=None))]
/// Per-sample (B, 3) float64 box corners of an automatic bbox: with `cube`, the tight cube
/// (`octformer_core::octree::auto_cube`); without, the tight axis-aligned bounds (zeros for
/// an empty sample) and a (B,) non-empty mask. Raises on NaN/Inf or |coordinates| too large.
pub fn auto_boxes<'py>(
    py: Python<'py>,
    points: Points<'py>,
    offsets: PyReadonlyArray1<'py, i64>,
    cube: bool,
    num_threads: Option<usize>,
) -> PyResult<(
    Bound<'py, PyArray2<f64>>,
    Bound<'py, PyArray2<f64>>,
    Bound<'py, numpy::PyArray1<bool>>,
)> {
    let offs = offsets_usize(&offsets)?;
    let bounds = on_points!(py, points, num_threads, |s| sample_bounds(s, &offs));
    let nonempty: Vec<bool> = bounds.iter().map(Option::is_some).collect();
    let boxes: Vec<Bounds> = if cube {
        bounds.into_iter().map(auto_cube).collect()
    } else {
        bounds
            .into_iter()
            .map(|b| b.unwrap_or(([0.0; 3], [0.0; 3])))
            .collect()
    };
    let b = boxes.len();
    let lo = Array2::from_shape_fn((b, 3), |(i, a)| boxes[i].0[a]);
    let hi = Array2::from_shape_fn((b, 3), |(i, a)| boxes[i].1[a]);
    Ok((
        lo.into_pyarray(py),
        hi.into_pyarray(py),
        nonempty.into_pyarray(py),
    ))
}

/// build_single's native work for one precision, without the GIL; None when the points are
/// not a C-contiguous (N, 3) array (the general path copies or rejects them).
fn single_native<T: octformer_core::octree::Coord + numpy::Element>(
    py: Python<'_>,
    p: &PyReadonlyArray2<'_, T>,
    explicit: Option<Bounds>,
    side: f64,
    opts: BuildOptions,
    num_threads: Option<usize>,
) -> PyResult<Option<(Octree, SampleBox)>> {
    let owned: Vec<T>;
    let s: &[T] = match points_slice(p) {
        Ok(s) => s,
        Err(_) => match strided_points(p) {
            Some(v) => {
                owned = v;
                &owned
            }
            None => return Ok(None),
        },
    };
    py.detach(|| {
        threads::install_for(num_threads, s.len() / 3, threads::SMALL_BUILD, || {
            guarded(|| single_tree(s, explicit, side, opts))
        })
    })?
    .map(Some)
}

/// A C-contiguous copy of (N, 3) points given as any other view (e.g. `scan[:, :3]` of an
/// (N, 4) scan), or None for another shape. Copied here, where the allocator keeps its
/// pages mapped: numpy's copy faulted in fresh pages on every call (kitti000000 through
/// the general path: +0.9 ms over the contiguous array).
fn strided_points<T: numpy::Element + Copy>(p: &PyReadonlyArray2<'_, T>) -> Option<Vec<T>> {
    if p.shape()[1] != 3 {
        return None;
    }
    let view = p.as_array();
    let (n, base) = (view.nrows(), view.as_ptr());
    let (rs, cs) = (view.strides()[0], view.strides()[1]);
    let mut out = Vec::with_capacity(3 * n);
    for i in 0..n as isize {
        // SAFETY: (i, a) with i < n, a < 3 is an element of the view, which lies at
        // i * rs + a * cs elements from its first one (numpy strides, possibly negative)
        let row = [0, 1, 2].map(|a| unsafe { *base.offset(i * rs + a * cs) });
        out.extend_from_slice(&row);
    }
    Some(out)
}

/// One cloud's box (explicit, or the automatic cube by the same rule as the batch path) and tree.
fn single_tree<T: octformer_core::octree::Coord>(
    s: &[T],
    explicit: Option<Bounds>,
    side: f64,
    opts: BuildOptions,
) -> Result<(Octree, SampleBox), octformer_core::CoreError> {
    let n = s.len() / 3;
    let (lo, hi) = match explicit {
        Some(b) => b,
        // the general path's rule (auto_boxes with cube=True)
        None => auto_cube(sample_bounds(s, &[0, n])?[0]),
    };
    let bx = SampleBox {
        origin: lo,
        cell: [0, 1, 2].map(|a| (hi[a] - lo[a]) / side),
    };
    Ok((core_build(s, &[0, n], &[bx], opts, false)?, bx))
}

/// (B+1,) sample offsets as indices, refusing negative ones (the core checks the rest).
fn offsets_usize(offsets: &PyReadonlyArray1<'_, i64>) -> PyResult<Vec<usize>> {
    let offs = slice1(offsets, "offsets")?;
    if offs.iter().any(|&o| o < 0) {
        return Err(OctformerError::new_err(format!(
            "offsets: expected non-negative values, got {offs:?}"
        )));
    }
    Ok(offs.iter().map(|&o| o as usize).collect())
}

fn points_slice<'a, T: numpy::Element>(p: &'a PyReadonlyArray2<'_, T>) -> PyResult<&'a [T]> {
    if p.shape()[1] != 3 {
        return Err(OctformerError::new_err(format!(
            "points: expected shape (N, 3), got {:?}",
            p.shape()
        )));
    }
    c_slice2(p, "points")
}

#[pyfunction]
#[pyo3(signature = (values, point_leaf, num_leaves, normalize=false, num_threads=None))]
/// Average (N, C) float32 values per leaf; `normalize` re-normalises rows (normals).
pub fn average_leaf_values<'py>(
    py: Python<'py>,
    values: PyReadonlyArray2<'py, f32>,
    point_leaf: PyReadonlyArray1<'py, i64>,
    num_leaves: usize,
    normalize: bool,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let c = values.shape()[1];
    let leaf = slice1(&point_leaf, "point_leaf")?;
    if values.shape()[0] != leaf.len() {
        return Err(OctformerError::new_err(format!(
            "values: expected {} rows (one per point), got {}",
            leaf.len(),
            values.shape()[0]
        )));
    }
    if num_leaves > leaf.len() {
        return Err(OctformerError::new_err(format!(
            "num_leaves: expected at most {} (one leaf per point at most), got {num_leaves}",
            leaf.len()
        )));
    }
    let v = c_slice2(&values, "values")?;
    let out = py.detach(|| {
        threads::install_for(num_threads, leaf.len(), threads::SMALL_BUILD, || {
            guarded(|| average_per_leaf(v, c, leaf, num_leaves, normalize))
        })
    })??;
    Ok(Array2::from_shape_vec((num_leaves, c), out)
        .expect("shape")
        .into_pyarray(py))
}

#[pyfunction]
#[pyo3(signature = (keys, children, depth, nonempty=true, periodic_y=false, num_threads=None))]
/// (M, 27) int32 neighbour table at `depth` from per-depth keys/children lists.
pub fn neighbors<'py>(
    py: Python<'py>,
    keys: Vec<PyReadonlyArray1<'py, i64>>,
    children: Vec<PyReadonlyArray1<'py, i32>>,
    depth: usize,
    nonempty: bool,
    periodic_y: bool,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<i32>>> {
    let k: Vec<&[u64]> = keys
        .iter()
        .map(|a| slice1(a, "keys").map(as_u64))
        .collect::<PyResult<_>>()?;
    let c: Vec<&[i32]> = children
        .iter()
        .map(|a| slice1(a, "children"))
        .collect::<PyResult<_>>()?;
    let table = py.detach(|| {
        threads::install(num_threads, || {
            guarded(|| neighbors_from_levels(&k, &c, depth, nonempty, periodic_y))
        })
    })??;
    let rows = table.len() / 27;
    Ok(Array2::from_shape_vec((rows, 27), table)
        .expect("shape")
        .into_pyarray(py))
}

#[pyfunction]
#[pyo3(signature = (keys, children, batch, nonempty, point_leaf, batch_sizes, num_threads=None))]
/// Concatenate trees into one batch (`Octree.merge`): per tree its per-depth int64 keys,
/// int32 children and int32 batch ids (None for a one-sample tree), per-depth non-empty
/// counts, int64 point->leaf index and batch size. Returns `(keys, children, batch,
/// point_leaf)` of the merged batch (lists per depth, numpy).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn merge_trees<'py>(
    py: Python<'py>,
    keys: Vec<Vec<PyReadonlyArray1<'py, i64>>>,
    children: Vec<Vec<PyReadonlyArray1<'py, i32>>>,
    batch: Vec<Option<Vec<PyReadonlyArray1<'py, i32>>>>,
    nonempty: Vec<Vec<usize>>,
    point_leaf: Vec<PyReadonlyArray1<'py, i64>>,
    batch_sizes: Vec<usize>,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyTuple>> {
    let t = keys.len();
    let counts = [
        children.len(),
        batch.len(),
        nonempty.len(),
        point_leaf.len(),
        batch_sizes.len(),
    ];
    if counts.iter().any(|&c| c != t) {
        return Err(OctformerError::new_err(format!(
            "trees: expected {t} entries in every argument (one per tree), got {counts:?}"
        )));
    }
    let mut views = Vec::with_capacity(t);
    let mut nodes = 0usize;
    for i in 0..t {
        let k = keys[i]
            .iter()
            .map(|a| slice1(a, "keys").map(as_u64))
            .collect::<PyResult<Vec<_>>>()?;
        nodes += k.iter().map(|k| k.len()).sum::<usize>();
        let c = children[i]
            .iter()
            .map(|a| slice1(a, "children"))
            .collect::<PyResult<Vec<_>>>()?;
        let b = match &batch[i] {
            None => None,
            Some(b) => Some(
                b.iter()
                    .map(|a| slice1(a, "batch"))
                    .collect::<PyResult<Vec<_>>>()?,
            ),
        };
        views.push(octformer_core::merge::TreeView {
            keys: k,
            children: c,
            batch: b,
            nonempty: nonempty[i].clone(),
            point_leaf: slice1(&point_leaf[i], "point_leaf")?,
            batch_size: batch_sizes[i],
        });
    }
    let merged = py.detach(|| {
        threads::install_for(num_threads, nodes, threads::SMALL_BUILD, || {
            guarded(|| octformer_core::merge::merge_trees(&views))
        })
    })??;
    PyTuple::new(
        py,
        [
            PyList::new(py, merged.keys.into_iter().map(|k| keys_to_numpy(py, k)))?.into_any(),
            PyList::new(py, merged.children.into_iter().map(|c| c.into_pyarray(py)))?.into_any(),
            PyList::new(py, merged.batch.into_iter().map(|b| b.into_pyarray(py)))?.into_any(),
            merged.point_leaf.into_pyarray(py).into_any(),
        ],
    )
}

#[pyfunction]
/// (rows, cols) float64 zeros from the native allocator, which keeps freed pages mapped:
/// scratch for numpy work inside a build (numpy's own large arrays are mapped and faulted
/// in afresh on every call once malloc trims its heap).
pub fn zeros_f64<'py>(
    py: Python<'py>,
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let n = rows.checked_mul(cols).ok_or_else(|| {
        OctformerError::new_err(format!(
            "rows, cols: expected a product below 2^64, got {rows} x {cols}"
        ))
    })?;
    Ok(Array2::from_shape_vec((rows, cols), vec![0f64; n])
        .expect("shape")
        .into_pyarray(py))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(zeros_f64, m)?)?;
    m.add_function(wrap_pyfunction!(merge_trees, m)?)?;
    m.add_function(wrap_pyfunction!(build_octree, m)?)?;
    m.add_function(wrap_pyfunction!(build_single, m)?)?;
    m.add_function(wrap_pyfunction!(average_leaf_values, m)?)?;
    m.add_function(wrap_pyfunction!(auto_boxes, m)?)?;
    register_steps(m)?;
    m.add_function(wrap_pyfunction!(neighbors, m)?)?;
    Ok(())
}

#[pyfunction]
#[pyo3(signature = (root_children, rows_all=false, entries_all=false, periodic_y=false))]
/// Depth-0 neighbour table: each root (one per sample) is its own centre neighbour.
pub fn neighbors_root<'py>(
    py: Python<'py>,
    root_children: PyReadonlyArray1<'py, i32>,
    rows_all: bool,
    entries_all: bool,
    periodic_y: bool,
) -> PyResult<Bound<'py, PyArray2<i32>>> {
    let c = slice1(&root_children, "root_children")?;
    let table =
        guarded(|| octformer_core::neighbors::root_table(c, rows_all, entries_all, periodic_y))?;
    let rows = table.len() / 27;
    Ok(Array2::from_shape_vec((rows, 27), table)
        .expect("shape")
        .into_pyarray(py))
}

#[pyfunction]
#[pyo3(signature = (parent_table, parent_children, children, rows_all=false, entries_all=false, num_threads=None))]
/// Neighbour table one level down from the parent level's non-empty table.
pub fn neighbors_step<'py>(
    py: Python<'py>,
    parent_table: PyReadonlyArray2<'py, i32>,
    parent_children: PyReadonlyArray1<'py, i32>,
    children: PyReadonlyArray1<'py, i32>,
    rows_all: bool,
    entries_all: bool,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<i32>>> {
    let parent = c_slice2(&parent_table, "parent_table")?;
    let pc = slice1(&parent_children, "parent_children")?;
    let c = slice1(&children, "children")?;
    let table = py.detach(|| {
        threads::install_for(num_threads, c.len(), threads::SMALL_STEP, || {
            guarded(|| octformer_core::neighbors::step(parent, pc, c, rows_all, entries_all))
        })
    })??;
    let rows = table.len() / 27;
    Ok(Array2::from_shape_vec((rows, 27), table)
        .expect("shape")
        .into_pyarray(py))
}

#[pyfunction]
/// Decode an LZF stream (PCD binary_compressed) that must expand to exactly `size` bytes.
pub fn lzf_decompress<'py>(
    py: Python<'py>,
    data: &[u8],
    size: usize,
) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    let out = py.detach(|| guarded(|| octformer_core::lzf::decompress(data, size)))?;
    Ok(pyo3::types::PyBytes::new(py, &out))
}

pub fn register_steps(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(lzf_decompress, m)?)?;
    m.add_function(wrap_pyfunction!(neighbors_root, m)?)?;
    m.add_function(wrap_pyfunction!(neighbors_step, m)?)?;
    Ok(())
}
