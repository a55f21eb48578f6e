//! Typed errors of the core crate; the bindings map each variant to one Python exception.

use thiserror::Error;

/// Everything that can go wrong in octformer-core, with the values a user needs to fix it.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum CoreError {
    /// A caller-supplied argument has the wrong value (name, expected, actual).
    #[error("{name}: expected {expected}, got {actual}")]
    InvalidArgument {
        name: &'static str,
        expected: String,
        actual: String,
    },

    /// A point coordinate is NaN or infinite.
    #[error("points: expected finite coordinates, got {value} at point {index}, axis {axis}")]
    NonFinite {
        index: usize,
        axis: usize,
        value: f64,
    },

    /// Points fall outside the explicit bounding box (and clipping was not requested).
    #[error(
        "points: {count} point(s) lie outside the bounding box [{bbox_min:?}, {bbox_max:?}]; \
         their extent is [{min:?}, {max:?}] (pass clip=True to clamp them into the box)"
    )]
    OutOfBounds {
        count: usize,
        bbox_min: [f64; 3],
        bbox_max: [f64; 3],
        min: [f64; 3],
        max: [f64; 3],
    },

    /// A byte stream could not be decoded (format modules).
    #[error("{what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, CoreError>;

impl CoreError {
    /// Shorthand for an [`CoreError::InvalidArgument`].
    pub fn arg(name: &'static str, expected: impl Into<String>, actual: impl ToString) -> Self {
        CoreError::InvalidArgument {
            name,
            expected: expected.into(),
            actual: actual.to_string(),
        }
    }
}
