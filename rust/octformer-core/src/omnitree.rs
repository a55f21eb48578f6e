//! Omnitrees (anisotropic 2^k-trees); see docs/octf-format.md.

/// Deepest refinement level per dimension (grid coordinates fit in u32).
pub const MAX_LEVEL: u8 = 30;
