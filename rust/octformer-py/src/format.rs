//! Bindings for the OCTF format and the occupancy-token views (octformer.format).

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use octformer_core::Octree;
use octformer_core::format::{
    self as octf, ChildOrder, Coords, DecodeOptions, EncodeOptions, Header, NodeKind, OctfOctree,
    TreeView,
};
use octformer_core::omnitree::{Omnitree, Rule};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::convert::{as_u64, c_slice2 as contiguous, keys_to_numpy, slice1};
use crate::errors::{OctformerError, guarded};
use crate::threads;

/// The arrays of an `octformer.Octree` as the encoder and token views borrow them.
#[derive(FromPyObject)]
pub struct TreeArrays<'py> {
    depth: u8,
    full_depth: u8,
    batch_size: usize,
    keys: Vec<PyReadonlyArray1<'py, i64>>,
    children: Vec<PyReadonlyArray1<'py, i32>>,
    batch: Vec<PyReadonlyArray1<'py, i32>>,
    batch_nnum: PyReadonlyArray2<'py, i64>,
    batch_nnum_nempty: PyReadonlyArray2<'py, i64>,
    origin: PyReadonlyArray2<'py, f64>,
    voxel_size: PyReadonlyArray2<'py, f64>,
    coords: String,
    features: Option<PyReadonlyArray2<'py, f32>>,
    normals: Option<PyReadonlyArray2<'py, f32>>,
}

impl<'py> TreeArrays<'py> {
    fn view(&self) -> PyResult<TreeView<'_>> {
        let coords = match self.coords.as_str() {
            "cartesian" => Coords::Cartesian,
            "cylindrical" => Coords::Cylindrical,
            other => {
                return Err(OctformerError::new_err(format!(
                    "tree.coords: expected 'cartesian' or 'cylindrical', got {other:?}"
                )));
            }
        };
        let features = match &self.features {
            Some(f) => Some((contiguous(f, "tree.features")?, f.shape()[1])),
            None => None,
        };
        let normals = match &self.normals {
            Some(n) => {
                if n.shape()[1] != 3 {
                    return Err(OctformerError::new_err(format!(
                        "tree.normals: expected shape (M, 3), got {:?}",
                        n.shape()
                    )));
                }
                Some(contiguous(n, "tree.normals")?)
            }
            None => None,
        };
        Ok(TreeView {
            depth: self.depth,
            full_depth: self.full_depth,
            batch_size: self.batch_size,
            keys: self
                .keys
                .iter()
                .map(|a| slice1(a, "tree.keys").map(as_u64))
                .collect::<PyResult<_>>()?,
            children: self
                .children
                .iter()
                .map(|a| slice1(a, "tree.children"))
                .collect::<PyResult<_>>()?,
            batch: self
                .batch
                .iter()
                .map(|a| slice1(a, "tree.batch"))
                .collect::<PyResult<_>>()?,
            batch_nnum: contiguous(&self.batch_nnum, "tree.batch_nnum")?.to_vec(),
            batch_nnum_nempty: contiguous(&self.batch_nnum_nempty, "tree.batch_nnum_nempty")?
                .to_vec(),
            origin: contiguous(&self.origin, "tree.origin")?,
            scale: contiguous(&self.voxel_size, "tree.voxel_size")?,
            coords,
            features,
            normals,
        })
    }
}

fn child_order(name: &str) -> PyResult<ChildOrder> {
    match name {
        "xyz_msb" => Ok(ChildOrder::XyzMsb),
        "xyz_lsb" => Ok(ChildOrder::XyzLsb),
        other => Err(OctformerError::new_err(format!(
            "child_order: expected 'xyz_msb' or 'xyz_lsb', got {other:?}"
        ))),
    }
}

#[pyfunction]
#[pyo3(signature = (tree, child_order="xyz_msb", num_threads=None))]
/// Encode an octree (its arrays, see octformer.format.encode) as OCTF bytes.
pub fn octf_encode<'py>(
    py: Python<'py>,
    tree: TreeArrays<'py>,
    child_order: &str,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyBytes>> {
    let order = self::child_order(child_order)?;
    let view = tree.view()?;
    let bytes = py.detach(|| {
        threads::install(num_threads, || {
            guarded(|| octf::encode_octree(&view, EncodeOptions { child_order: order }))
        })
    })??;
    Ok(PyBytes::new(py, &bytes))
}

fn tree_dict<'py>(py: Python<'py>, t: Octree, out: &Bound<'py, PyDict>) -> PyResult<()> {
    let (d, b) = (t.depth as usize, t.batch_size);
    let nnum = Array2::from_shape_fn((d + 1, b), |(i, j)| t.batch_nnum[i][j] as i64);
    let nnum_ne = Array2::from_shape_fn((d + 1, b), |(i, j)| t.batch_nnum_nempty[i][j] as i64);
    out.set_item("depth", t.depth)?;
    out.set_item("full_depth", t.full_depth)?;
    out.set_item("batch_size", b)?;
    out.set_item("batch_nnum", nnum.into_pyarray(py))?;
    out.set_item("batch_nnum_nempty", nnum_ne.into_pyarray(py))?;
    out.set_item(
        "keys",
        PyList::new(py, t.keys.into_iter().map(|k| keys_to_numpy(py, k)))?,
    )?;
    out.set_item(
        "children",
        PyList::new(py, t.children.into_iter().map(|c| c.into_pyarray(py)))?,
    )?;
    out.set_item(
        "batch",
        PyList::new(py, t.batch.into_iter().map(|c| c.into_pyarray(py)))?,
    )?;
    Ok(())
}

fn rows(v: Vec<f64>, b: usize, w: usize) -> Array2<f64> {
    Array2::from_shape_vec((b, w), v).expect("shape checked by the decoder")
}

#[pyfunction]
#[pyo3(signature = (data, max_depth=None, num_threads=None, fill_batch=true))]
/// Decode OCTF bytes into a dict of numpy arrays (see octformer.format.decode).
/// With `fill_batch=False` a tree whose batch the decoder left unwritten (one sample)
/// comes back with `batch` None: every index is 0 and the caller makes the zeros.
pub fn octf_decode<'py>(
    py: Python<'py>,
    data: &[u8],
    max_depth: Option<u8>,
    num_threads: Option<usize>,
    fill_batch: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = DecodeOptions {
        max_depth,
        verify_checksums: true,
    };
    let dec: OctfOctree = py.detach(|| {
        threads::install(num_threads, || {
            guarded(|| octf::decode_octree_with(data, &opts, fill_batch))
        })
    })??;
    let out = PyDict::new(py);
    let b = dec.tree.batch_size;
    let m = dec.tree.nnum_nempty(dec.tree.depth as usize);
    // the decoder fills batch unless it may skip it; an empty level then means skipped
    let skipped = dec
        .tree
        .batch
        .iter()
        .zip(&dec.tree.keys)
        .any(|(b, k)| b.len() != k.len());
    tree_dict(py, dec.tree, &out)?;
    if skipped {
        out.set_item("batch", py.None())?;
    }
    out.set_item("origin", rows(dec.origin, b, 3).into_pyarray(py))?;
    out.set_item("voxel_size", rows(dec.scale, b, 3).into_pyarray(py))?;
    out.set_item(
        "coords",
        match dec.coords {
            Coords::Cartesian => "cartesian",
            Coords::Cylindrical => "cylindrical",
        },
    )?;
    match dec.features {
        Some((f, c)) => out.set_item(
            "features",
            Array2::from_shape_vec((m, c), f)
                .expect("shape")
                .into_pyarray(py),
        )?,
        None => out.set_item("features", py.None())?,
    }
    match dec.normals {
        Some(n) => out.set_item(
            "normals",
            Array2::from_shape_vec((m, 3), n)
                .expect("shape")
                .into_pyarray(py),
        )?,
        None => out.set_item("normals", py.None())?,
    }
    Ok(out)
}

#[pyfunction]
#[pyo3(signature = (data, max_depth=None))]
/// Streaming structure decode only: sample-local keys of the non-empty nodes per depth
/// full_depth..=max_depth (the raw decode the throughput benchmark measures).
pub fn octf_decode_levels<'py>(
    py: Python<'py>,
    data: &[u8],
    max_depth: Option<u8>,
) -> PyResult<Bound<'py, PyList>> {
    let opts = DecodeOptions {
        max_depth,
        verify_checksums: true,
    };
    let keys =
        py.detach(|| guarded(|| octf::decode_levels(data, &opts).map(|lv| lv.nonempty_keys)))?;
    PyList::new(py, keys.into_iter().map(|k| keys_to_numpy(py, k)))
}

pub fn header_dict<'py>(py: Python<'py>, h: &Header) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("version", (h.major, h.minor))?;
    out.set_item("flags", h.flags)?;
    out.set_item("dims", h.dims)?;
    out.set_item(
        "node_kind",
        match h.node_kind {
            NodeKind::Octree => "octree",
            NodeKind::Omnitree => "omnitree",
        },
    )?;
    out.set_item(
        "child_order",
        match h.child_order {
            ChildOrder::XyzMsb => "xyz_msb",
            ChildOrder::XyzLsb => "xyz_lsb",
        },
    )?;
    out.set_item(
        "traversal",
        match h.traversal {
            octf::Traversal::BreadthFirst => "bfs",
            octf::Traversal::DepthFirst => "dfs",
        },
    )?;
    out.set_item("max_depth", h.max_depth)?;
    out.set_item("full_depth", h.full_depth)?;
    out.set_item(
        "coords",
        match h.coords {
            Coords::Cartesian => "cartesian",
            Coords::Cylindrical => "cylindrical",
        },
    )?;
    out.set_item("batch_size", h.batch_size)?;
    out.set_item("channels", h.channels)?;
    let w = h.dims as usize;
    out.set_item(
        "origin",
        rows(h.origin.clone(), h.batch_size, w).into_pyarray(py),
    )?;
    out.set_item(
        "scale",
        rows(h.scale.clone(), h.batch_size, w).into_pyarray(py),
    )?;
    out.set_item("counts", h.counts.clone())?;
    Ok(out)
}

#[pyfunction]
/// The header of OCTF bytes as a dict (nothing after the header is read).
pub fn octf_header<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    let h = guarded(|| octf::read_header_only(data))?;
    header_dict(py, &h)
}

#[pyfunction]
/// Per-sample occupancy tokens of a tree: ((T,) uint8 tokens, (B+1,) int64 offsets).
pub fn occupancy_tokens<'py>(
    py: Python<'py>,
    tree: TreeArrays<'py>,
) -> PyResult<(Bound<'py, PyArray1<u8>>, Bound<'py, PyArray1<i64>>)> {
    let view = tree.view()?;
    let (tokens, offsets) = py.detach(|| guarded(|| octf::occupancy_tokens(&view)))?;
    let offsets: Vec<i64> = offsets.into_iter().map(|o| o as i64).collect();
    Ok((tokens.into_pyarray(py), offsets.into_pyarray(py)))
}

#[pyfunction]
/// Rebuild tree arrays (dict) from per-sample occupancy tokens and (B+1,) offsets.
pub fn octree_from_occupancy_tokens<'py>(
    py: Python<'py>,
    tokens: PyReadonlyArray1<'py, u8>,
    offsets: PyReadonlyArray1<'py, i64>,
    depth: u8,
    full_depth: u8,
) -> PyResult<Bound<'py, PyDict>> {
    let tok = slice1(&tokens, "tokens")?;
    let offs = slice1(&offsets, "offsets")?;
    if offs.iter().any(|&o| o < 0) {
        return Err(OctformerError::new_err(format!(
            "offsets: expected non-negative values, got {offs:?}"
        )));
    }
    let offs: Vec<usize> = offs.iter().map(|&o| o as usize).collect();
    let t = py
        .detach(|| guarded(|| octf::octree_from_occupancy_tokens(tok, &offs, depth, full_depth)))?;
    let out = PyDict::new(py);
    tree_dict(py, t, &out)?;
    Ok(out)
}

// ------------------------------------------------------------------------ omnitrees

/// Native omnitree (octformer.omnitree.Omnitree wraps it): validated pre-order masks,
/// per-leaf occupancy and the breadth-first location index.
#[pyclass(frozen, module = "octformer._core")]
pub struct OmnitreeCore {
    inner: Omnitree,
}

fn small_vec(a: &PyReadonlyArray1<'_, f64>, name: &str) -> PyResult<Vec<f64>> {
    Ok(slice1(a, name)?.to_vec())
}

#[pymethods]
impl OmnitreeCore {
    #[staticmethod]
    /// Check and index pre-order masks (uint8) and per-leaf occupancy (uint8 0/1).
    fn from_preorder(
        py: Python<'_>,
        dims: u8,
        max_level: u8,
        masks: PyReadonlyArray1<'_, u8>,
        occupied: PyReadonlyArray1<'_, u8>,
        origin: PyReadonlyArray1<'_, f64>,
        cell: PyReadonlyArray1<'_, f64>,
    ) -> PyResult<Self> {
        let (m, o) = (
            slice1(&masks, "masks")?.to_vec(),
            slice1(&occupied, "occupied")?.to_vec(),
        );
        let (org, c) = (small_vec(&origin, "origin")?, small_vec(&cell, "cell")?);
        let inner =
            py.detach(|| guarded(|| Omnitree::from_preorder(dims, max_level, m, o, org, c)))?;
        Ok(OmnitreeCore { inner })
    }

    #[staticmethod]
    /// Build from (N, dims) uint32 finest-grid cells; rule "carve" or "extent" (with ratio).
    #[pyo3(signature = (cells, max_level, rule, ratio, origin, cell))]
    fn from_cells(
        py: Python<'_>,
        cells: PyReadonlyArray2<'_, u32>,
        max_level: u8,
        rule: &str,
        ratio: f64,
        origin: PyReadonlyArray1<'_, f64>,
        cell: PyReadonlyArray1<'_, f64>,
    ) -> PyResult<Self> {
        let dims = cells.shape()[1];
        if !(2..=4).contains(&dims) {
            return Err(OctformerError::new_err(format!(
                "cells: expected shape (N, 2..4), got {:?}",
                cells.shape()
            )));
        }
        let q = contiguous(&cells, "cells")?;
        let (org, c) = (small_vec(&origin, "origin")?, small_vec(&cell, "cell")?);
        let rule = match rule {
            "carve" => Rule::Carve,
            "extent" => Rule::Extent(ratio),
            other => {
                return Err(OctformerError::new_err(format!(
                    "rule: expected 'carve' or 'extent', got {other:?}"
                )));
            }
        };
        let inner =
            py.detach(|| guarded(|| Omnitree::from_cells(dims as u8, max_level, q, rule, org, c)))?;
        Ok(OmnitreeCore { inner })
    }

    #[staticmethod]
    /// The equivalent omnitree of one octree sample (per-depth children, sample-local ranks).
    fn from_octree(
        py: Python<'_>,
        children: Vec<PyReadonlyArray1<'_, i32>>,
        depth: u8,
        origin: PyReadonlyArray1<'_, f64>,
        cell: PyReadonlyArray1<'_, f64>,
    ) -> PyResult<Self> {
        let ch: Vec<&[i32]> = children
            .iter()
            .map(|a| slice1(a, "children"))
            .collect::<PyResult<_>>()?;
        let (org, c) = (small_vec(&origin, "origin")?, small_vec(&cell, "cell")?);
        let inner = py.detach(|| guarded(|| Omnitree::from_octree_levels(&ch, depth, org, c)))?;
        Ok(OmnitreeCore { inner })
    }

    #[staticmethod]
    /// Decode OCTF omnitree bytes.
    fn decode(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let inner = py.detach(|| guarded(|| Omnitree::decode(data, &DecodeOptions::default())))?;
        Ok(OmnitreeCore { inner })
    }

    /// OCTF bytes of this omnitree.
    fn encode<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let b = py.detach(|| self.inner.encode());
        PyBytes::new(py, &b)
    }

    #[getter]
    fn dims(&self) -> u8 {
        self.inner.dims
    }
    #[getter]
    fn max_level(&self) -> u8 {
        self.inner.max_level
    }
    #[getter]
    fn masks<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u8>> {
        self.inner.masks.clone().into_pyarray(py)
    }
    #[getter]
    fn occupied<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u8>> {
        self.inner.occupied.clone().into_pyarray(py)
    }
    #[getter]
    fn origin<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.inner.origin.clone().into_pyarray(py)
    }
    #[getter]
    fn cell<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.inner.cell.clone().into_pyarray(py)
    }

    /// Leaf boxes in pre-order: ((L, dims) int64 lowest finest-grid cell, (L, dims) int64 level).
    fn leaf_cells<'py>(
        &self,
        py: Python<'py>,
    ) -> (
        Bound<'py, numpy::PyArray2<i64>>,
        Bound<'py, numpy::PyArray2<i64>>,
    ) {
        let (lo, lv) = py.detach(|| self.inner.leaf_cells());
        let (n, d) = (self.inner.num_leaves(), self.inner.dims as usize);
        let lo =
            Array2::from_shape_vec((n, d), lo.into_iter().map(i64::from).collect()).expect("shape");
        let lv =
            Array2::from_shape_vec((n, d), lv.into_iter().map(i64::from).collect()).expect("shape");
        (lo.into_pyarray(py), lv.into_pyarray(py))
    }

    /// Pre-order leaf index of each (N, dims) int64 finest-grid cell, -1 outside the grid.
    fn locate_cells<'py>(
        &self,
        py: Python<'py>,
        cells: PyReadonlyArray2<'py, i64>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let d = self.inner.dims as usize;
        if cells.shape()[1] != d {
            return Err(OctformerError::new_err(format!(
                "cells: expected shape (N, {d}), got {:?}",
                cells.shape()
            )));
        }
        let q = contiguous(&cells, "cells")?;
        let out = py.detach(|| guarded(|| self.inner.locate_cells(q)))?;
        Ok(out.into_pyarray(py))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(octf_encode, m)?)?;
    m.add_function(wrap_pyfunction!(octf_decode, m)?)?;
    m.add_function(wrap_pyfunction!(octf_decode_levels, m)?)?;
    m.add_function(wrap_pyfunction!(octf_header, m)?)?;
    m.add_function(wrap_pyfunction!(occupancy_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(octree_from_occupancy_tokens, m)?)?;
    m.add_class::<OmnitreeCore>()?;
    Ok(())
}
