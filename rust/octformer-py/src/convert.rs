//! numpy ↔ slice helpers: contiguity checks and zero-copy reinterpretation.

use numpy::{PyReadonlyArray1, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::errors::OctformerError;

/// Borrow a contiguous 1-D array as a slice or raise naming the argument.
pub fn slice1<'a, T: numpy::Element>(
    a: &'a PyReadonlyArray1<'_, T>,
    name: &str,
) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| {
        OctformerError::new_err(format!(
            "{name}: expected a C-contiguous array, got strides {:?}",
            a.strides()
        ))
    })
}

/// int64 keys as u64 (same size and alignment; keys never use bit 63).
pub fn as_u64(v: &[i64]) -> &[u64] {
    // SAFETY: i64 and u64 have identical size and alignment.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u64, v.len()) }
}

/// Move a Vec<u64> of keys into an int64 numpy array without copying.
pub fn keys_to_numpy<'py>(py: Python<'py>, v: Vec<u64>) -> Bound<'py, numpy::PyArray1<i64>> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: same layout; ownership moves to the new Vec.
    let v = unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut i64, v.len(), v.capacity()) };
    numpy::IntoPyArray::into_pyarray(v, py)
}

/// Borrow a C-contiguous (row-major) 2-D array as a flat slice or raise naming the argument.
/// (`as_slice` alone also accepts Fortran order, whose flat order is column-major.)
pub fn c_slice2<'a, T: numpy::Element>(
    a: &'a numpy::PyReadonlyArray2<'_, T>,
    name: &str,
) -> PyResult<&'a [T]> {
    if !a.is_c_contiguous() {
        return Err(OctformerError::new_err(format!(
            "{name}: expected a C-contiguous array, got strides {:?}",
            a.strides()
        )));
    }
    a.as_slice().map_err(|_| {
        OctformerError::new_err(format!("{name}: expected an aligned C-contiguous array"))
    })
}
