//! Bindings for curve serialization (z / hilbert orders) and flattening plans.

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use octformer_core::CoreError;
use octformer_core::curve::{self, Order};
use octformer_core::flatten::{self, Axis, FlattenPlan};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::convert::{as_u64, c_slice2, slice1};
use crate::errors::{OctformerError, guarded};
use crate::threads;

/// Borrow (N, 3) int64 coordinates as a flat row-major slice.
fn coords_slice<'a>(a: &'a PyReadonlyArray2<'_, i64>) -> PyResult<&'a [i64]> {
    if a.shape()[1] != 3 {
        return Err(OctformerError::new_err(format!(
            "grid_coords: expected shape (N, 3), got {:?}",
            a.shape()
        )));
    }
    c_slice2(a, "grid_coords")
}

fn depth_u8(depth: i64) -> Result<u8, CoreError> {
    if !(1..=curve::MAX_CURVE_DEPTH as i64).contains(&depth) {
        return Err(CoreError::arg(
            "depth",
            format!("an integer in 1..={}", curve::MAX_CURVE_DEPTH),
            depth,
        ));
    }
    Ok(depth as u8)
}

fn rows(py: Python<'_>, flat: Vec<i64>, o: usize, n: usize) -> Bound<'_, PyArray2<i64>> {
    Array2::from_shape_vec((o, n), flat)
        .expect("shape")
        .into_pyarray(py)
}

#[pyfunction]
#[pyo3(signature = (grid_coords, orders, depth=None, batch=None, num_threads=None))]
/// Codes, permutations and inverses (each (O, N) int64) of every order, and the depth used.
#[allow(clippy::type_complexity)]
pub fn serialize<'py>(
    py: Python<'py>,
    grid_coords: PyReadonlyArray2<'py, i64>,
    orders: Vec<String>,
    depth: Option<i64>,
    batch: Option<PyReadonlyArray1<'py, i64>>,
    num_threads: Option<usize>,
) -> PyResult<(
    Bound<'py, PyArray2<i64>>,
    Bound<'py, PyArray2<i64>>,
    Bound<'py, PyArray2<i64>>,
    u8,
)> {
    let c = coords_slice(&grid_coords)?;
    let b = match &batch {
        Some(a) => Some(slice1(a, "batch")?),
        None => None,
    };
    let n = c.len() / 3;
    let s = py.detach(|| {
        threads::install(num_threads, || {
            guarded(|| {
                let orders: Vec<Order> = orders
                    .iter()
                    .map(|o| Order::parse(o))
                    .collect::<Result<_, _>>()?;
                let depth = match depth {
                    Some(d) => depth_u8(d)?,
                    None => curve::depth_for(c).min(curve::MAX_CURVE_DEPTH),
                };
                curve::serialize(c, b, &orders, depth)
            })
        })
    })??;
    let o = s.orders.len();
    let codes = curve::codes_as_i64(s.codes);
    Ok((
        rows(py, codes, o, n),
        rows(py, s.perm, o, n),
        rows(py, s.inverse, o, n),
        s.depth,
    ))
}

#[pyfunction]
#[pyo3(signature = (grid_coords, order, depth, num_threads=None))]
/// (N,) int64 codes of (N, 3) grid coordinates in one order.
pub fn curve_encode<'py>(
    py: Python<'py>,
    grid_coords: PyReadonlyArray2<'py, i64>,
    order: &str,
    depth: i64,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, numpy::PyArray1<i64>>> {
    let c = coords_slice(&grid_coords)?;
    let codes = py.detach(|| {
        threads::install(num_threads, || {
            guarded(|| curve::encode(c, Order::parse(order)?, depth_u8(depth)?))
        })
    })??;
    Ok(crate::convert::keys_to_numpy(py, codes))
}

#[pyfunction]
#[pyo3(signature = (codes, order, depth, num_threads=None))]
/// (N, 3) int64 grid coordinates of (N,) codes in one order.
pub fn curve_decode<'py>(
    py: Python<'py>,
    codes: PyReadonlyArray1<'py, i64>,
    order: &str,
    depth: i64,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let c = as_u64(slice1(&codes, "codes")?);
    let n = c.len();
    let xyz = py.detach(|| {
        threads::install(num_threads, || {
            guarded(|| curve::decode(c, Order::parse(order)?, depth_u8(depth)?))
        })
    })??;
    Ok(Array2::from_shape_vec((n, 3), xyz)
        .expect("shape")
        .into_pyarray(py))
}

fn plan_dict<'py>(py: Python<'py>, p: FlattenPlan) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("gather", p.gather.into_pyarray(py))?;
    d.set_item("scatter", p.scatter.into_pyarray(py))?;
    d.set_item("cu_seqlens", p.cu_seqlens.into_pyarray(py))?;
    d.set_item("seq_sample", p.seq_sample.into_pyarray(py))?;
    d.set_item("max_seqlen", p.max_seqlen)?;
    d.set_item("group_size", p.group_size)?;
    Ok(d)
}

fn positive(name: &'static str, v: i64) -> Result<usize, CoreError> {
    if v < 1 {
        return Err(CoreError::arg(name, "a positive integer", v));
    }
    Ok(v as usize)
}

#[pyfunction]
#[pyo3(signature = (grid_coords, window, group_size, axis="x", shift=false, batch=None, num_threads=None))]
/// FlatFormer plan (window sort + equal groups) as a dict of numpy arrays.
#[allow(clippy::too_many_arguments)]
pub fn flatten_windows<'py>(
    py: Python<'py>,
    grid_coords: PyReadonlyArray2<'py, i64>,
    window: (i64, i64, i64),
    group_size: i64,
    axis: &str,
    shift: bool,
    batch: Option<PyReadonlyArray1<'py, i64>>,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let c = coords_slice(&grid_coords)?;
    let b = match &batch {
        Some(a) => Some(slice1(a, "batch")?),
        None => None,
    };
    let plan = py.detach(|| {
        threads::install(num_threads, || {
            guarded(|| {
                let w = [window.0, window.1, window.2];
                if w.iter().any(|&v| !(1..=1 << 21).contains(&v)) {
                    return Err(CoreError::arg(
                        "window",
                        "three integers in 1..=2^21",
                        format!("{w:?}"),
                    ));
                }
                let g = positive("group_size", group_size)?;
                flatten::flatten(c, b, w.map(|v| v as u32), g, Axis::parse(axis)?, shift)
            })
        })
    })??;
    plan_dict(py, plan)
}

#[pyfunction]
#[pyo3(signature = (perm, group_size, batch=None, num_threads=None))]
/// Patch plan from one serialization order's permutation, as a dict of numpy arrays.
pub fn plan_from_perm<'py>(
    py: Python<'py>,
    perm: PyReadonlyArray1<'py, i64>,
    group_size: i64,
    batch: Option<PyReadonlyArray1<'py, i64>>,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let p = slice1(&perm, "perm")?;
    let b = match &batch {
        Some(a) => Some(slice1(a, "batch")?),
        None => None,
    };
    let plan = py.detach(|| {
        threads::install(num_threads, || {
            guarded(|| flatten::plan_from_perm(p, b, positive("patch_size", group_size)?))
        })
    })??;
    plan_dict(py, plan)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(serialize, m)?)?;
    m.add_function(wrap_pyfunction!(curve_encode, m)?)?;
    m.add_function(wrap_pyfunction!(curve_decode, m)?)?;
    m.add_function(wrap_pyfunction!(flatten_windows, m)?)?;
    m.add_function(wrap_pyfunction!(plan_from_perm, m)?)?;
    Ok(())
}
