//! OCTF v1: a versioned, checksummed, streaming binary format for octrees and omnitrees.
//!
//! The byte layout is specified in `docs/octf-format.md`; this module is its reference
//! implementation. In short: magic, a header chunk (version, flags, dims, kind, child
//! order, traversal, depths, per-sample origin/scale, per-level node counts as varints),
//! one chunk per level holding one occupancy byte per non-empty node (breadth-first,
//! key order), optional per-leaf float32 payload chunks, and a footer with the file
//! length and a CRC32C of everything before it. Every chunk carries its own CRC32C so a
//! streaming reader can trust a level before the rest of the file has arrived.
//!
//! Decoding checks every declared size against the bytes that must back it *before*
//! allocating, so no input can make the decoder allocate more than the exact sizes
//! its (already verified) chunks imply; every malformed input is a
//! [`CoreError::Corrupt`], never a panic.

use crate::MAX_DEPTH;
use crate::error::{CoreError, Result};
use crate::mem::{SendPtr, vec_for_overwrite_huge as vec_for_overwrite};
use crate::octree::Octree;
use rayon::prelude::*;

/// PNG-style magic: a non-ASCII byte, the name, CR LF and ^Z catch text-mode mangling.
pub const MAGIC: [u8; 8] = *b"\x89OCTF\r\n\x1a";
pub const VERSION_MAJOR: u16 = 1;
pub const VERSION_MINOR: u16 = 0;
/// Flag bit: a per-leaf float32 feature chunk follows the levels.
pub const FLAG_FEATURES: u32 = 1;
/// Flag bit: a per-leaf float32 (M, 3) normal chunk follows the features.
pub const FLAG_NORMALS: u32 = 2;
const KNOWN_FLAGS: u32 = FLAG_FEATURES | FLAG_NORMALS;

pub const TAG_HEADER: u8 = b'H';
pub const TAG_LEVEL: u8 = b'L';
pub const TAG_FEATURES: u8 = b'F';
pub const TAG_NORMALS: u8 = b'N';
pub const TAG_MASKS: u8 = b'M';
pub const TAG_OCCUPANCY: u8 = b'O';
/// Footer: u64 file length + u32 CRC32C of all bytes before the footer.
pub const FOOTER_LEN: usize = 12;

/// What the nodes of the file are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// One occupancy byte per non-empty node, breadth-first.
    Octree = 0,
    /// One d-bit refinement mask per node, depth-first pre-order.
    Omnitree = 1,
}

/// Bit order of the child index inside a parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildOrder {
    /// child = 4x + 2y + z (ocnn, PCL, G-PCC; octformer's in-memory order).
    XyzMsb = 0,
    /// child = x + 2y + 4z (Open3D, Uni-3DAR).
    XyzLsb = 1,
}

/// Node visiting order of the structure chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traversal {
    BreadthFirst = 0,
    DepthFirst = 1,
}

/// Coordinate system the quantisation origin/scale refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coords {
    Cartesian = 0,
    Cylindrical = 1,
}

/// Everything the header chunk declares.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub major: u16,
    pub minor: u16,
    pub flags: u32,
    pub dims: u8,
    pub node_kind: NodeKind,
    pub child_order: ChildOrder,
    pub traversal: Traversal,
    pub max_depth: u8,
    pub full_depth: u8,
    pub coords: Coords,
    pub batch_size: usize,
    /// Feature channels (0 without [`FLAG_FEATURES`]).
    pub channels: usize,
    /// (B, dims) quantisation origin per sample.
    pub origin: Vec<f64>,
    /// (B, dims) leaf cell size per sample.
    pub scale: Vec<f64>,
    /// Octree: non-empty node totals for depths full_depth..=max_depth.
    /// Omnitree: [node count, leaf count].
    pub counts: Vec<u64>,
}

fn corrupt(detail: impl Into<String>) -> CoreError {
    CoreError::Corrupt {
        what: "data",
        detail: detail.into(),
    }
}

// ------------------------------------------------------------------------ reading

/// Bounds-checked little-endian reader; running out of bytes is a `Corrupt` error.
pub(crate) struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }
    pub(crate) fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(corrupt(format!(
                "truncated: {what} needs {n} bytes at offset {}, only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    pub(crate) fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn f64(&mut self, what: &str) -> Result<f64> {
        Ok(f64::from_le_bytes(self.array(what)?))
    }
    /// Unsigned LEB128; overlong encodings and values past u64 are rejected (canonical).
    pub(crate) fn varint(&mut self, what: &str) -> Result<u64> {
        let start = self.pos;
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8(what)?;
            let bits = (b & 0x7f) as u64;
            if i == 9 && b > 1 {
                return Err(corrupt(format!(
                    "{what}: varint at offset {start} overflows 64 bits"
                )));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(corrupt(format!(
                        "{what}: overlong varint at offset {start} (not canonical)"
                    )));
                }
                return Ok(v);
            }
        }
        Err(corrupt(format!(
            "{what}: varint at offset {start} is longer than 10 bytes"
        )))
    }
    /// A varint that must fit a usize and not exceed `limit`.
    pub(crate) fn varint_at_most(&mut self, what: &str, limit: u64) -> Result<usize> {
        let at = self.pos;
        let v = self.varint(what)?;
        if v > limit {
            return Err(corrupt(format!(
                "{what}: declared {v} at offset {at}, but at most {limit} is possible here"
            )));
        }
        usize::try_from(v).map_err(|_| {
            corrupt(format!(
                "{what}: {v} does not fit this machine's address space"
            ))
        })
    }

    /// One chunk `tag | varint len | body | crc32c(tag..body)`; returns the body.
    pub(crate) fn chunk(&mut self, tag: u8, name: &str, verify: bool) -> Result<&'a [u8]> {
        let start = self.pos;
        let t = self.u8(name)?;
        if t != tag {
            return Err(corrupt(format!(
                "expected the {name} chunk (tag {:?}) at offset {start}, found tag byte {t:#04x}",
                tag as char
            )));
        }
        let len = self.varint_at_most(name, self.remaining() as u64)?;
        let body = self.take(len, name)?;
        let end = self.pos;
        let stored = self.u32(name)?;
        if verify {
            let computed = crc32c::crc32c(&self.data[start..end]);
            if stored != computed {
                return Err(corrupt(format!(
                    "{name} chunk at offset {start}: CRC32C mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )));
            }
        }
        Ok(body)
    }

    /// The footer must be exactly the last 12 bytes: file length and whole-file CRC32C.
    pub(crate) fn footer(&mut self, verify: bool) -> Result<()> {
        let at = self.pos;
        if self.remaining() != FOOTER_LEN {
            return Err(corrupt(format!(
                "expected the {FOOTER_LEN}-byte footer at offset {at}, found {} bytes (truncated or trailing garbage)",
                self.remaining()
            )));
        }
        let len = self.u64("footer")?;
        let stored = self.u32("footer")?;
        if len != self.data.len() as u64 {
            return Err(corrupt(format!(
                "footer: declares a file of {len} bytes, got {}",
                self.data.len()
            )));
        }
        if verify {
            let computed = crc32c::crc32c(&self.data[..at]);
            if stored != computed {
                return Err(corrupt(format!(
                    "footer: whole-file CRC32C mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )));
            }
        }
        Ok(())
    }
}

/// Parse magic and header chunk; validates every enum and size that is knowable here.
pub(crate) fn read_header<'a>(cur: &mut Cursor<'a>, verify: bool) -> Result<Header> {
    let magic = cur.take(8, "magic")?;
    if magic != MAGIC {
        return Err(corrupt(format!(
            "expected the OCTF magic {MAGIC:02x?}, got {magic:02x?}"
        )));
    }
    let body = cur.chunk(TAG_HEADER, "header", verify)?;
    let mut h = Cursor::new(body);
    let major = h.u16("header.major")?;
    let minor = h.u16("header.minor")?;
    if major != VERSION_MAJOR || minor > VERSION_MINOR {
        return Err(corrupt(format!(
            "unsupported OCTF version {major}.{minor}; this reader supports {VERSION_MAJOR}.0..={VERSION_MAJOR}.{VERSION_MINOR}"
        )));
    }
    let flags = h.u32("header.flags")?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(corrupt(format!(
            "header.flags: unknown bits {:#x} set",
            flags & !KNOWN_FLAGS
        )));
    }
    let dims = h.u8("header.dims")?;
    let node_kind = match h.u8("header.node_kind")? {
        0 => NodeKind::Octree,
        1 => NodeKind::Omnitree,
        v => {
            return Err(corrupt(format!(
                "header.node_kind: expected 0 (octree) or 1 (omnitree), got {v}"
            )));
        }
    };
    let child_order = match h.u8("header.child_order")? {
        0 => ChildOrder::XyzMsb,
        1 => ChildOrder::XyzLsb,
        v => {
            return Err(corrupt(format!(
                "header.child_order: expected 0 (xyz_msb) or 1 (xyz_lsb), got {v}"
            )));
        }
    };
    let traversal = match h.u8("header.traversal")? {
        0 => Traversal::BreadthFirst,
        1 => Traversal::DepthFirst,
        v => {
            return Err(corrupt(format!(
                "header.traversal: expected 0 (bfs) or 1 (dfs), got {v}"
            )));
        }
    };
    let max_depth = h.u8("header.max_depth")?;
    let full_depth = h.u8("header.full_depth")?;
    let coords = match h.u8("header.coords")? {
        0 => Coords::Cartesian,
        1 => Coords::Cylindrical,
        v => {
            return Err(corrupt(format!(
                "header.coords: expected 0 (cartesian) or 1 (cylindrical), got {v}"
            )));
        }
    };
    let reserved = h.u8("header.reserved")?;
    if reserved != 0 {
        return Err(corrupt(format!(
            "header.reserved: expected 0, got {reserved}"
        )));
    }
    match node_kind {
        NodeKind::Octree => {
            if dims != 3 {
                return Err(corrupt(format!(
                    "header.dims: octree files have dims 3, got {dims}"
                )));
            }
            if traversal != Traversal::BreadthFirst {
                return Err(corrupt(
                    "header.traversal: octree files are breadth-first (0), got 1",
                ));
            }
            if max_depth == 0 || max_depth > MAX_DEPTH {
                return Err(corrupt(format!(
                    "header.max_depth: expected 1..={MAX_DEPTH}, got {max_depth}"
                )));
            }
            if full_depth > max_depth {
                return Err(corrupt(format!(
                    "header.full_depth: expected at most max_depth {max_depth}, got {full_depth}"
                )));
            }
        }
        NodeKind::Omnitree => {
            if !(2..=4).contains(&dims) {
                return Err(corrupt(format!(
                    "header.dims: omnitree files have dims 2..=4, got {dims}"
                )));
            }
            if traversal != Traversal::DepthFirst || child_order != ChildOrder::XyzMsb {
                return Err(corrupt(
                    "header: omnitree files are depth-first (1) with child_order xyz_msb (0)",
                ));
            }
            if max_depth > crate::omnitree::MAX_LEVEL
                || full_depth != 0
                || flags != 0
                || coords != Coords::Cartesian
            {
                return Err(corrupt(format!(
                    "header: omnitree files need max_depth <= {}, full_depth 0, no flags, cartesian coords",
                    crate::omnitree::MAX_LEVEL
                )));
            }
        }
    }
    // every sample carries 2 * dims f64s, so the body bounds the batch size
    let per_sample = 16 * dims as u64;
    let batch_size = h.varint_at_most("header.batch_size", h.remaining() as u64 / per_sample)?;
    if batch_size == 0 {
        return Err(corrupt("header.batch_size: expected at least 1, got 0"));
    }
    if node_kind == NodeKind::Omnitree && batch_size != 1 {
        return Err(corrupt(format!(
            "header.batch_size: omnitree files hold one tree, got {batch_size}"
        )));
    }
    let channels = h.varint_at_most("header.channels", u32::MAX as u64)?;
    if (channels > 0) != (flags & FLAG_FEATURES != 0) {
        return Err(corrupt(format!(
            "header.channels: {channels} disagrees with the features flag"
        )));
    }
    let n = batch_size * dims as usize;
    if h.remaining() < 16 * n {
        return Err(corrupt(format!(
            "truncated: header needs {} bytes of origin/scale, {} remain",
            16 * n,
            h.remaining()
        )));
    }
    let mut origin = Vec::with_capacity(n);
    let mut scale = Vec::with_capacity(n);
    for _ in 0..batch_size {
        for _ in 0..dims {
            origin.push(h.f64("header.origin")?);
        }
        for _ in 0..dims {
            scale.push(h.f64("header.scale")?);
        }
    }
    if let Some(i) = origin.iter().position(|v| !v.is_finite()) {
        return Err(corrupt(format!(
            "header.origin[{i}]: expected a finite value, got {}",
            origin[i]
        )));
    }
    if let Some(i) = scale.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
        return Err(corrupt(format!(
            "header.scale[{i}]: expected a positive finite value, got {}",
            scale[i]
        )));
    }
    let num_counts = match node_kind {
        NodeKind::Octree => (max_depth - full_depth) as usize + 1,
        NodeKind::Omnitree => 2,
    };
    let mut counts = Vec::with_capacity(num_counts);
    for _ in 0..num_counts {
        counts.push(h.varint("header.counts")?);
    }
    if h.remaining() != 0 {
        return Err(corrupt(format!(
            "header: {} unexpected trailing bytes",
            h.remaining()
        )));
    }
    Ok(Header {
        major,
        minor,
        flags,
        dims,
        node_kind,
        child_order,
        traversal,
        max_depth,
        full_depth,
        coords,
        batch_size,
        channels,
        origin,
        scale,
        counts,
    })
}

/// Parse only the magic and header (cheap inspection; nothing after it is read).
pub fn read_header_only(data: &[u8]) -> Result<Header> {
    read_header(&mut Cursor::new(data), true)
}

// ------------------------------------------------------------------------ writing

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Write one chunk whose body `fill` appends (exactly `len` bytes).
pub(crate) fn put_chunk(out: &mut Vec<u8>, tag: u8, len: usize, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.push(tag);
    put_varint(out, len as u64);
    let body_start = out.len();
    fill(out);
    debug_assert_eq!(out.len() - body_start, len);
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Write the magic and a header chunk exactly as given, without validation (low-level;
/// the encoders and the tests that build hostile files use it).
pub fn put_header(out: &mut Vec<u8>, h: &Header) {
    out.extend_from_slice(&MAGIC);
    let mut b = Vec::with_capacity(32 + 16 * h.origin.len() + 10 * h.counts.len());
    b.extend_from_slice(&h.major.to_le_bytes());
    b.extend_from_slice(&h.minor.to_le_bytes());
    b.extend_from_slice(&h.flags.to_le_bytes());
    b.extend_from_slice(&[
        h.dims,
        h.node_kind as u8,
        h.child_order as u8,
        h.traversal as u8,
        h.max_depth,
        h.full_depth,
        h.coords as u8,
        0,
    ]);
    put_varint(&mut b, h.batch_size as u64);
    put_varint(&mut b, h.channels as u64);
    // written as given (no validation): the readers check consistency
    let d = (h.dims as usize).max(1);
    for s in 0..h.origin.len().min(h.scale.len()) / d {
        for v in &h.origin[s * d..(s + 1) * d] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in &h.scale[s * d..(s + 1) * d] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    for &c in &h.counts {
        put_varint(&mut b, c);
    }
    put_chunk(out, TAG_HEADER, b.len(), |o| o.extend_from_slice(&b));
}

/// Append the footer (file length and whole-file CRC32C) to a complete body.
pub fn put_footer(out: &mut Vec<u8>) {
    let crc = crc32c::crc32c(out);
    let len = (out.len() + FOOTER_LEN) as u64;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
}

// ------------------------------------------------------------------- octree data

/// A decoded octree file (or the input of the encoder in owned form).
#[derive(Debug, Clone, PartialEq)]
pub struct OctfOctree {
    /// Keys, children, batch and counts; `point_leaf` is empty (OCTF does not store points).
    pub tree: Octree,
    /// (B, 3) quantisation origin per sample.
    pub origin: Vec<f64>,
    /// (B, 3) leaf cell size per sample at `tree.depth`.
    pub scale: Vec<f64>,
    pub coords: Coords,
    /// (M, C) float32 per non-empty leaf, with C.
    pub features: Option<(Vec<f32>, usize)>,
    /// (M, 3) float32 per non-empty leaf.
    pub normals: Option<Vec<f32>>,
}

/// Borrowed arrays of an octree to encode (what the Python bindings hand over).
#[derive(Debug, Clone)]
pub struct TreeView<'a> {
    pub depth: u8,
    pub full_depth: u8,
    pub batch_size: usize,
    pub keys: Vec<&'a [u64]>,
    pub children: Vec<&'a [i32]>,
    pub batch: Vec<&'a [i32]>,
    /// (D+1, B) row-major.
    pub batch_nnum: Vec<i64>,
    /// (D+1, B) row-major.
    pub batch_nnum_nempty: Vec<i64>,
    pub origin: &'a [f64],
    pub scale: &'a [f64],
    pub coords: Coords,
    pub features: Option<(&'a [f32], usize)>,
    pub normals: Option<&'a [f32]>,
}

impl OctfOctree {
    /// Borrow as a [`TreeView`] (for encoding an owned tree).
    pub fn view(&self) -> TreeView<'_> {
        let t = &self.tree;
        let flat =
            |v: &Vec<Vec<usize>>| v.iter().flatten().map(|&x| x as i64).collect::<Vec<i64>>();
        TreeView {
            depth: t.depth,
            full_depth: t.full_depth,
            batch_size: t.batch_size,
            keys: t.keys.iter().map(|v| v.as_slice()).collect(),
            children: t.children.iter().map(|v| v.as_slice()).collect(),
            batch: t.batch.iter().map(|v| v.as_slice()).collect(),
            batch_nnum: flat(&t.batch_nnum),
            batch_nnum_nempty: flat(&t.batch_nnum_nempty),
            origin: &self.origin,
            scale: &self.scale,
            coords: self.coords,
            features: self.features.as_ref().map(|(f, c)| (f.as_slice(), *c)),
            normals: self.normals.as_deref(),
        }
    }
}

/// The first error in level order (deterministic whatever the thread count), else all values.
fn first_error<T>(results: Vec<Result<T>>) -> Result<Vec<T>> {
    results.into_iter().collect()
}

fn bad_tree(name: &'static str, expected: impl Into<String>, actual: impl ToString) -> CoreError {
    CoreError::arg(name, expected, actual)
}

/// Nodes per sample at a dense depth, or None when it cannot exist in memory.
fn dense_nodes(d: u8) -> Option<usize> {
    if d > 20 {
        None
    } else {
        1usize.checked_shl(3 * d as u32)
    }
}

/// Check that a view is a well-formed octree in octformer's layout; returns the
/// per-sample non-empty counts (D+1, B).
pub fn validate_view(v: &TreeView<'_>) -> Result<Vec<Vec<usize>>> {
    let (depth, fd, b) = (v.depth, v.full_depth, v.batch_size);
    crate::octree::validate_depths(depth, fd)?;
    if b == 0 {
        return Err(bad_tree("tree.batch_size", "at least 1", 0));
    }
    let levels = depth as usize + 1;
    for (name, n) in [
        ("tree.keys", v.keys.len()),
        ("tree.children", v.children.len()),
        ("tree.batch", v.batch.len()),
    ] {
        if n != levels {
            return Err(bad_tree(
                name,
                format!("{levels} arrays (depths 0..={depth})"),
                n,
            ));
        }
    }
    for (name, a) in [
        ("tree.batch_nnum", &v.batch_nnum),
        ("tree.batch_nnum_nempty", &v.batch_nnum_nempty),
    ] {
        if a.len() != levels * b {
            return Err(bad_tree(
                name,
                format!("shape ({levels}, {b})"),
                format!("{} values", a.len()),
            ));
        }
    }
    for (name, a) in [("tree.origin", v.origin), ("tree.voxel_size", v.scale)] {
        if a.len() != 3 * b {
            return Err(bad_tree(
                name,
                format!("shape ({b}, 3)"),
                format!("{} values", a.len()),
            ));
        }
    }
    if let Some(x) = v.origin.iter().find(|x| !x.is_finite()) {
        return Err(bad_tree("tree.origin", "finite values", x));
    }
    if let Some(x) = v.scale.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
        return Err(bad_tree("tree.voxel_size", "positive finite values", x));
    }
    dense_nodes(fd).ok_or_else(|| bad_tree("tree.full_depth", "at most 20", fd))?;
    // phase 1, per level: lengths, counts, ranks and batch ids → non-empty count per sample
    let ranks = |d: usize| -> Result<Vec<usize>> {
        let n = v.keys[d].len();
        if v.children[d].len() != n || v.batch[d].len() != n {
            return Err(bad_tree(
                "tree.children",
                format!("keys, children and batch of equal length at depth {d}"),
                format!("{n}, {}, {}", v.children[d].len(), v.batch[d].len()),
            ));
        }
        let row = &v.batch_nnum[d * b..(d + 1) * b];
        if row.iter().any(|&x| x < 0) || row.iter().map(|&x| x as u128).sum::<u128>() != n as u128 {
            return Err(bad_tree(
                "tree.batch_nnum",
                format!("per-sample counts summing to {n} at depth {d}"),
                format!("{row:?}"),
            ));
        }
        // ranks of non-empty nodes run 0, 1, 2, ... in order
        let mut nonempty = vec![0usize; b];
        let mut next = 0i64;
        let mut start = 0usize;
        for s in 0..b {
            let cnt = row[s] as usize;
            let mut ne = 0usize;
            if let Some(i) = v.batch[d][start..start + cnt]
                .iter()
                .position(|&x| x as i64 != s as i64)
            {
                return Err(bad_tree(
                    "tree.batch",
                    format!("sample {s} at depth {d}, node {}", start + i),
                    v.batch[d][start + i],
                ));
            }
            // branch-free scan; on failure, rescan to name the first bad node
            let seg = &v.children[d][start..start + cnt];
            let mut ok = true;
            let mut r = next;
            for &c in seg {
                let c = c as i64;
                ok &= (c == -1) | (c == r);
                r += (c >= 0) as i64;
            }
            if !ok {
                let mut r = next;
                for (i, &c) in seg.iter().enumerate() {
                    if c != -1 && c as i64 != r {
                        return Err(bad_tree(
                            "tree.children",
                            format!("-1 or rank {r} at depth {d}, node {}", start + i),
                            c,
                        ));
                    }
                    r += (c >= 0) as i64;
                }
            }
            ne += (r - next) as usize;
            next = r;
            nonempty[s] = ne;
            if v.batch_nnum_nempty[d * b + s] != ne as i64 {
                return Err(bad_tree(
                    "tree.batch_nnum_nempty",
                    format!("{ne} at depth {d}, sample {s}"),
                    v.batch_nnum_nempty[d * b + s],
                ));
            }
            start += cnt;
        }
        Ok(nonempty)
    };
    let nonempty = first_error((0..levels).into_par_iter().map(ranks).collect())?;
    // phase 2, per level: dense levels hold 0..8^d; deeper ones 8 children per non-empty parent
    let structure = |d: usize| -> Result<()> {
        let row = &v.batch_nnum[d * b..(d + 1) * b];
        if d <= fd as usize {
            let size = dense_nodes(d as u8).unwrap();
            let mut start = 0;
            for s in 0..b {
                if row[s] as usize != size {
                    return Err(bad_tree(
                        "tree.batch_nnum",
                        format!("{size} nodes (dense) at depth {d}, sample {s}"),
                        row[s],
                    ));
                }
                if d < fd as usize && nonempty[d][s] != size {
                    return Err(bad_tree(
                        "tree.children",
                        format!("every node non-empty at dense depth {d}"),
                        format!("{} of {size}", nonempty[d][s]),
                    ));
                }
                if let Some((i, k)) = v.keys[d][start..start + size]
                    .iter()
                    .enumerate()
                    .find(|(i, k)| **k != *i as u64)
                {
                    return Err(bad_tree(
                        "tree.keys",
                        format!("key {i} at dense depth {d}, sample {s}"),
                        k,
                    ));
                }
                start += size;
            }
            return Ok(());
        }
        for s in 0..b {
            if row[s] as u128 != 8 * nonempty[d - 1][s] as u128 {
                return Err(bad_tree(
                    "tree.batch_nnum",
                    format!(
                        "{} (8 per non-empty parent) at depth {d}, sample {s}",
                        8 * nonempty[d - 1][s]
                    ),
                    row[s],
                ));
            }
        }
        let (pk, pc) = (v.keys[d - 1], v.children[d - 1]);
        let (keys, kids_c) = (v.keys[d], v.children[d]);
        for (i, (&k, &c)) in pk.iter().zip(pc).enumerate() {
            if c < 0 {
                continue;
            }
            let r = c as usize;
            let kids = &keys[8 * r..8 * r + 8];
            let base = k << 3;
            let mut bad_key = false;
            for (j, &ck) in kids.iter().enumerate() {
                bad_key |= ck != base | j as u64;
            }
            if bad_key {
                let j = kids
                    .iter()
                    .enumerate()
                    .position(|(j, &ck)| ck != base | j as u64)
                    .unwrap();
                return Err(bad_tree(
                    "tree.keys",
                    format!(
                        "{} (child {j} of node {i} at depth {})",
                        base | j as u64,
                        d - 1
                    ),
                    kids[j],
                ));
            }
            if kids_c[8 * r..8 * r + 8].iter().all(|&x| x < 0) {
                return Err(bad_tree(
                    "tree.children",
                    format!(
                        "at least one non-empty child of non-empty node {i} at depth {}",
                        d - 1
                    ),
                    "8 empty children",
                ));
            }
        }
        Ok(())
    };
    first_error((0..levels).into_par_iter().map(structure).collect())?;
    let m: usize = nonempty[depth as usize].iter().sum();
    if let Some((f, c)) = v.features {
        if c == 0 || f.len() != m * c {
            return Err(bad_tree(
                "tree.features",
                format!("shape ({m}, C) float32 with C >= 1"),
                format!("{} values, C = {c}", f.len()),
            ));
        }
    }
    if let Some(nr) = v.normals {
        if nr.len() != m * 3 {
            return Err(bad_tree(
                "tree.normals",
                format!("shape ({m}, 3) float32"),
                format!("{} values", nr.len()),
            ));
        }
    }
    Ok(nonempty)
}

/// Options of [`encode_octree`].
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    pub child_order: ChildOrder,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            child_order: ChildOrder::XyzMsb,
        }
    }
}

/// Encode a checked octree as OCTF bytes (canonical: one byte string per tree).
pub fn encode_octree(v: &TreeView<'_>, opts: EncodeOptions) -> Result<Vec<u8>> {
    let nonempty = validate_view(v)?;
    if opts.child_order == ChildOrder::XyzLsb {
        let owned = owned_from_view(v);
        let swapped = swap_xz(&owned);
        return Ok(write_octree(&swapped.view(), &nonempty, ChildOrder::XyzLsb));
    }
    Ok(write_octree(v, &nonempty, ChildOrder::XyzMsb))
}

fn owned_from_view(v: &TreeView<'_>) -> OctfOctree {
    let b = v.batch_size;
    let levels = v.depth as usize + 1;
    let unflat = |a: &[i64]| {
        (0..levels)
            .map(|d| a[d * b..(d + 1) * b].iter().map(|&x| x as usize).collect())
            .collect()
    };
    OctfOctree {
        tree: Octree {
            depth: v.depth,
            full_depth: v.full_depth,
            batch_size: b,
            keys: v.keys.iter().map(|s| s.to_vec()).collect(),
            children: v.children.iter().map(|s| s.to_vec()).collect(),
            batch: v.batch.iter().map(|s| s.to_vec()).collect(),
            batch_nnum: unflat(&v.batch_nnum),
            batch_nnum_nempty: unflat(&v.batch_nnum_nempty),
            point_leaf: Vec::new(),
        },
        origin: v.origin.to_vec(),
        scale: v.scale.to_vec(),
        coords: v.coords,
        features: v.features.map(|(f, c)| (f.to_vec(), c)),
        normals: v.normals.map(|n| n.to_vec()),
    }
}

/// Pack 8 child flags (children >= 0) into one occupancy byte, bit c = child c.
#[inline(always)]
fn pack8(c: &[i32]) -> u8 {
    let mut byte = 0u8;
    for (j, &x) in c.iter().enumerate() {
        byte |= ((x >= 0) as u8) << j;
    }
    byte
}

fn write_octree(v: &TreeView<'_>, nonempty: &[Vec<usize>], order: ChildOrder) -> Vec<u8> {
    let (depth, fd, b) = (v.depth as usize, v.full_depth as usize, v.batch_size);
    let total = |d: usize| nonempty[d].iter().sum::<usize>();
    let mut flags = 0;
    let mut channels = 0;
    if let Some((_, c)) = v.features {
        flags |= FLAG_FEATURES;
        channels = c;
    }
    if v.normals.is_some() {
        flags |= FLAG_NORMALS;
    }
    let header = Header {
        major: VERSION_MAJOR,
        minor: VERSION_MINOR,
        flags,
        dims: 3,
        node_kind: NodeKind::Octree,
        child_order: order,
        traversal: Traversal::BreadthFirst,
        max_depth: v.depth,
        full_depth: v.full_depth,
        coords: v.coords,
        batch_size: b,
        channels,
        origin: v.origin.to_vec(),
        scale: v.scale.to_vec(),
        counts: (fd..=depth).map(|d| total(d) as u64).collect(),
    };
    let level_bytes: usize = (fd..depth).map(total).sum::<usize>() + v.children[fd].len() / 8;
    let payload = v.features.map_or(0, |(f, _)| f.len() * 4) + v.normals.map_or(0, |n| n.len() * 4);
    let mut out = Vec::with_capacity(64 + 48 * b + level_bytes + payload + 16 * (depth + 3));
    put_header(&mut out, &header);
    // top chunk: occupancy of the dense level fd, one byte per node at fd-1
    // (fd = 0: one byte per sample, 1 if the root is non-empty)
    let top = v.children[fd];
    if fd == 0 {
        put_chunk(&mut out, TAG_LEVEL, top.len(), |o| {
            o.extend(top.iter().map(|&c| (c >= 0) as u8))
        });
    } else {
        put_chunk(&mut out, TAG_LEVEL, top.len() / 8, |o| {
            o.extend(top.chunks_exact(8).map(pack8))
        });
    }
    for d in fd..depth {
        let kids = v.children[d + 1];
        put_chunk(&mut out, TAG_LEVEL, kids.len() / 8, |o| {
            o.extend(kids.chunks_exact(8).map(pack8))
        });
    }
    if let Some((f, _)) = v.features {
        put_chunk(&mut out, TAG_FEATURES, f.len() * 4, |o| {
            f.iter().for_each(|x| o.extend_from_slice(&x.to_le_bytes()))
        });
    }
    if let Some(nr) = v.normals {
        put_chunk(&mut out, TAG_NORMALS, nr.len() * 4, |o| {
            nr.iter()
                .for_each(|x| o.extend_from_slice(&x.to_le_bytes()))
        });
    }
    put_footer(&mut out);
    out
}

// ------------------------------------------------------------------------ decoding

/// Options of [`decode_octree`].
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    /// Stop after this depth (clamped to the file's depth); later bytes are not read.
    pub max_depth: Option<u8>,
    /// Check chunk and file CRC32Cs (turned off only by the fuzzer to reach deeper code).
    pub verify_checksums: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_depth: None,
            verify_checksums: true,
        }
    }
}

/// `CHILDREN[byte]` lists the set bits of `byte` in increasing order (8 slots).
static CHILD_LISTS: [[u8; 8]; 256] = {
    let mut t = [[0u8; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut n = 0;
        let mut c = 0;
        while c < 8 {
            if b & (1 << c) != 0 {
                t[b][n] = c as u8;
                n += 1;
            }
            c += 1;
        }
        b += 1;
    }
    t
};

fn popcount_bytes(bytes: &[u8]) -> (usize, bool) {
    let mut total = 0usize;
    let mut any_zero = false;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap());
        total += w.count_ones() as usize;
        // a zero byte anywhere in w (classic has-zero-byte trick)
        any_zero |= (w.wrapping_sub(0x0101_0101_0101_0101) & !w & 0x8080_8080_8080_8080) != 0;
    }
    for &x in chunks.remainder() {
        total += x.count_ones() as usize;
        any_zero |= x == 0;
    }
    (total, any_zero)
}

/// Non-empty keys of the next level from occupancy bytes of the current one.
/// `out` must have room for `count + 8` keys; returns the number written.
fn expand_keys(parents: &[u64], occ: &[u8], out: &mut [u64]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked just above)
        return unsafe { expand_keys_avx2(parents, occ, out) };
    }
    expand_keys_plain(parents, occ, out)
}

/// A 256 × 8 lookup table with every entry cast to `$t` (vector lanes of that width).
macro_rules! widened_table {
    ($src:expr, $t:ty) => {{
        let mut t = [[0 as $t; 8]; 256];
        let mut b = 0;
        while b < 256 {
            let mut c = 0;
            while c < 8 {
                t[b][c] = $src[b][c] as $t;
                c += 1;
            }
            b += 1;
        }
        t
    }};
}

/// [`CHILD_LISTS`] widened to u64 lanes.
static CHILD_LISTS64: [[u64; 8]; 256] = widened_table!(CHILD_LISTS, u64);

/// [`expand_keys_plain`] with two 4-lane stores per parent (the compiler's version
/// stored the 8 slots one by one).
///
/// # Safety
/// AVX2 must be present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn expand_keys_avx2(parents: &[u64], occ: &[u8], out: &mut [u64]) -> usize {
    use std::arch::x86_64::*;
    let mut pos = 0usize;
    let len = out.len();
    let dst = out.as_mut_ptr();
    for (&k, &byte) in parents.iter().zip(occ) {
        assert!(pos + 8 <= len, "expand_keys: out too short");
        let base = _mm256_set1_epi64x((k << 3) as i64);
        let list = CHILD_LISTS64[byte as usize].as_ptr() as *const __m256i;
        // SAFETY: out[pos..pos + 8] is in bounds (asserted); the table row is 8 u64
        unsafe {
            _mm256_storeu_si256(
                dst.add(pos) as *mut __m256i,
                _mm256_or_si256(base, _mm256_loadu_si256(list)),
            );
            _mm256_storeu_si256(
                dst.add(pos + 4) as *mut __m256i,
                _mm256_or_si256(base, _mm256_loadu_si256(list.add(1))),
            );
        }
        pos += byte.count_ones() as usize;
    }
    pos
}

/// [`expand_keys`] with plain stores.
#[inline]
fn expand_keys_plain(parents: &[u64], occ: &[u8], out: &mut [u64]) -> usize {
    let mut pos = 0usize;
    for (&k, &byte) in parents.iter().zip(occ) {
        let list = &CHILD_LISTS[byte as usize];
        let slot = &mut out[pos..pos + 8];
        let base = k << 3;
        for j in 0..8 {
            slot[j] = base | list[j] as u64;
        }
        pos += byte.count_ones() as usize;
    }
    pos
}

/// The streaming part: verified occupancy bytes and non-empty keys per level.
pub struct Levels<'a> {
    pub header: Header,
    /// Depth the decode stopped at.
    pub depth: u8,
    /// Occupancy chunk per depth fd-1..depth-1 (the first is the top chunk).
    pub occupancy: Vec<&'a [u8]>,
    /// Sample-local keys of the non-empty nodes per depth fd..=depth (empty below fd).
    pub nonempty_keys: Vec<Vec<u64>>,
    /// Non-empty count per depth fd..=depth and sample.
    pub nonempty_counts: Vec<Vec<usize>>,
    pub features: Option<&'a [u8]>,
    pub normals: Option<&'a [u8]>,
}

/// Decode the structure level by level; stops after `max_depth` without reading further.
pub fn decode_levels<'a>(data: &'a [u8], opts: &DecodeOptions) -> Result<Levels<'a>> {
    let verify = opts.verify_checksums;
    let mut cur = Cursor::new(data);
    let header = read_header(&mut cur, verify)?;
    if header.node_kind != NodeKind::Octree {
        return Err(CoreError::arg(
            "data",
            "an OCTF octree file",
            "an omnitree file (use octformer.omnitree.Omnitree.from_bytes)",
        ));
    }
    let (depth, fd, b) = (header.max_depth, header.full_depth, header.batch_size);
    let stop = opts.max_depth.map_or(depth, |k| k.min(depth));
    let counts = &header.counts;
    // the top chunk holds one byte per node at fd-1 (or per sample when fd = 0)
    let top_len = if fd == 0 {
        Some(b)
    } else {
        dense_nodes(fd - 1).and_then(|n| n.checked_mul(b))
    };
    let top_len = top_len.filter(|&n| n <= cur.remaining()).ok_or_else(|| {
        corrupt(format!("header: full_depth {fd} with {b} samples needs more dense-level bytes than the {} remaining", cur.remaining()))
    })?;
    // every declared level count is backed by that many occupancy bytes: check all up front
    let mut backed: u128 = top_len as u128;
    for (i, &c) in counts.iter().enumerate() {
        let d = fd as usize + i;
        if d < depth as usize {
            backed += c as u128;
        } else {
            // the leaf count is a popcount of the last chunk: at most 8 per parent byte
            let parents = if i == 0 {
                top_len as u64
            } else {
                counts[i - 1]
            };
            if c > parents.saturating_mul(8) {
                return Err(corrupt(format!(
                    "header.counts: {c} leaves cannot come from {parents} parents"
                )));
            }
        }
    }
    if backed > cur.remaining() as u128 {
        return Err(corrupt(format!(
            "truncated or corrupt: header declares {backed} occupancy bytes, only {} bytes remain",
            cur.remaining()
        )));
    }
    let mut lv = Levels {
        depth: stop,
        occupancy: Vec::new(),
        nonempty_keys: Vec::new(),
        nonempty_counts: Vec::new(),
        features: None,
        normals: None,
        header: header.clone(),
    };
    if stop < fd {
        return Ok(lv);
    }
    // top chunk → non-empty keys at fd
    let top = cur.chunk(
        TAG_LEVEL,
        &format!("level {} occupancy", fd as i32 - 1),
        verify,
    )?;
    if top.len() != top_len {
        return Err(corrupt(format!(
            "top occupancy chunk: expected {top_len} bytes, got {}",
            top.len()
        )));
    }
    let mut ne_counts = vec![0usize; b];
    let mut keys_fd: Vec<u64>;
    if fd == 0 {
        if let Some(i) = top.iter().position(|&x| x > 1) {
            return Err(corrupt(format!(
                "root occupancy of sample {i}: expected 0 or 1, got {}",
                top[i]
            )));
        }
        keys_fd = vec![0u64; top.iter().filter(|&&x| x == 1).count()];
        for (s, &x) in top.iter().enumerate() {
            ne_counts[s] = x as usize;
        }
    } else {
        let (n, _) = popcount_bytes(top);
        keys_fd = vec![0u64; n + 8];
        let per = top_len / b;
        let mut pos = 0;
        for s in 0..b {
            let start = pos;
            for (j, &byte) in top[s * per..(s + 1) * per].iter().enumerate() {
                let list = &CHILD_LISTS[byte as usize];
                for (t, slot) in keys_fd[pos..pos + 8].iter_mut().enumerate() {
                    *slot = ((j as u64) << 3) | list[t] as u64;
                }
                pos += byte.count_ones() as usize;
            }
            ne_counts[s] = pos - start;
        }
        keys_fd.truncate(n);
    }
    if keys_fd.len() as u64 != counts[0] {
        return Err(corrupt(format!(
            "header.counts[{fd}]: declares {} non-empty nodes, the occupancy holds {}",
            counts[0],
            keys_fd.len()
        )));
    }
    lv.occupancy.push(top);
    lv.nonempty_keys.push(keys_fd);
    lv.nonempty_counts.push(ne_counts);
    for d in fd..stop {
        let i = (d - fd) as usize;
        let parents = &lv.nonempty_keys[i];
        let occ = cur.chunk(TAG_LEVEL, "level occupancy", verify)?;
        if occ.len() != parents.len() {
            return Err(corrupt(format!(
                "level {d} occupancy: expected {} bytes (one per non-empty node), got {}",
                parents.len(),
                occ.len()
            )));
        }
        let (n, any_zero) = popcount_bytes(occ);
        if any_zero {
            let j = occ.iter().position(|&x| x == 0).unwrap_or(0);
            return Err(corrupt(format!(
                "level {d} occupancy: non-empty node {j} has no non-empty child (byte 0)"
            )));
        }
        if n as u64 != counts[i + 1] {
            return Err(corrupt(format!(
                "header.counts[{}]: declares {} non-empty nodes, level {d} occupancy holds {n}",
                d + 1,
                counts[i + 1]
            )));
        }
        // SAFETY: expand_keys writes 8 slots at every running position, so all of
        // 0..written are written; the slack beyond is truncated away unread
        let mut next: Vec<u64> = unsafe { vec_for_overwrite(n + 8) };
        let written = expand_keys(parents, occ, &mut next);
        next.truncate(written);
        // per-sample counts: popcount of each sample's slice
        let mut start = 0;
        let prev = &lv.nonempty_counts[i];
        let mut cnt = vec![0usize; b];
        for s in 0..b {
            cnt[s] = popcount_bytes(&occ[start..start + prev[s]]).0;
            start += prev[s];
        }
        lv.occupancy.push(occ);
        lv.nonempty_keys.push(next);
        lv.nonempty_counts.push(cnt);
    }
    if stop < depth {
        return Ok(lv);
    }
    let m = counts[counts.len() - 1] as usize;
    if header.flags & FLAG_FEATURES != 0 {
        let f = cur.chunk(TAG_FEATURES, "features", verify)?;
        if Some(f.len())
            != m.checked_mul(header.channels)
                .and_then(|x| x.checked_mul(4))
        {
            return Err(corrupt(format!(
                "features: expected {m} x {} float32, got {} bytes",
                header.channels,
                f.len()
            )));
        }
        lv.features = Some(f);
    }
    if header.flags & FLAG_NORMALS != 0 {
        let f = cur.chunk(TAG_NORMALS, "normals", verify)?;
        if f.len() != m * 12 {
            return Err(corrupt(format!(
                "normals: expected {m} x 3 float32, got {} bytes",
                f.len()
            )));
        }
        lv.normals = Some(f);
    }
    cur.footer(verify)?;
    Ok(lv)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Decode OCTF bytes into a full octree (all 8 children of every non-empty node).
pub fn decode_octree(data: &[u8], opts: &DecodeOptions) -> Result<OctfOctree> {
    decode_octree_with(data, opts, true)
}

/// [`decode_octree`]; with `fill_batch = false` a single-sample file in x-MSB child order
/// leaves every `batch[d]` empty (all its entries would be 0: a caller that can make
/// zeros for free, e.g. from calloc'd memory, saves writing 4 bytes per node).
pub fn decode_octree_with(
    data: &[u8],
    opts: &DecodeOptions,
    fill_batch: bool,
) -> Result<OctfOctree> {
    let lv = decode_levels(data, opts)?;
    let h = &lv.header;
    let (stop, b) = (lv.depth, h.batch_size);
    // the x-LSB re-sort below reads batch; several samples need real indices
    let fill_batch = fill_batch || b != 1 || h.child_order != ChildOrder::XyzMsb;
    let fd = h.full_depth.min(stop);
    let levels = stop as usize + 1;
    let mut t = Octree {
        depth: stop,
        full_depth: fd,
        batch_size: b,
        keys: Vec::with_capacity(levels),
        children: Vec::with_capacity(levels),
        batch: Vec::with_capacity(levels),
        batch_nnum: Vec::with_capacity(levels),
        batch_nnum_nempty: Vec::with_capacity(levels),
        point_leaf: Vec::new(),
    };
    // dense levels 0..fd: every node non-empty below fd
    for d in 0..=fd {
        let size = dense_nodes(d).expect("bounded by the top chunk");
        let n = size * b;
        t.keys.push((0..b).flat_map(|_| 0..size as u64).collect());
        t.batch.push(if fill_batch {
            (0..b)
                .flat_map(|s| std::iter::repeat_n(s as i32, size))
                .collect()
        } else {
            Vec::new()
        });
        t.batch_nnum.push(vec![size; b]);
        if d < h.full_depth {
            t.children.push((0..n as i32).collect());
            t.batch_nnum_nempty.push(vec![size; b]);
        }
    }
    if stop >= h.full_depth {
        // real occupancy at fd from the top chunk
        let top = lv.occupancy[0];
        let n = dense_nodes(fd).unwrap() * b;
        let mut ch = vec![-1i32; n];
        if fd == 0 {
            let mut r = 0;
            for (s, &x) in top.iter().enumerate() {
                if x == 1 {
                    ch[s] = r;
                    r += 1;
                }
            }
        } else {
            fill_children(top, &mut ch);
        }
        t.children.push(ch);
        t.batch_nnum_nempty.push(lv.nonempty_counts[0].clone());
        // every deeper level depends only on the streamed data: materialise them in parallel
        let built = fill_levels(&lv, fd, stop, fill_batch);
        for (i, (keys, ch, batch)) in built.into_iter().enumerate() {
            t.keys.push(keys);
            t.children.push(ch);
            t.batch.push(batch);
            t.batch_nnum
                .push(lv.nonempty_counts[i].iter().map(|c| 8 * c).collect());
            t.batch_nnum_nempty.push(lv.nonempty_counts[i + 1].clone());
        }
    }
    // leaf cells are coarser when the decode stopped early: scale by 2^(depth - stop)
    let factor = (1u64 << (h.max_depth - stop)) as f64;
    let scale = h.scale.iter().map(|s| s * factor).collect();
    let features = lv.features.map(|f| (f32s(f), h.channels));
    let normals = lv.normals.map(f32s);
    let coords = h.coords;
    let mut out = OctfOctree {
        tree: t,
        origin: h.origin.clone(),
        scale,
        coords,
        features,
        normals,
    };
    if h.child_order == ChildOrder::XyzLsb {
        out = swap_xz(&out);
    }
    Ok(out)
}

/// Parents per task of the full decode (tasks span all levels, so two threads share
/// even the deepest level).
const FILL_PARENTS: usize = 1 << 15;

/// One task: parents `p0..p1` of level `i` (children land at depth fd + i + 1), the
/// number of non-empty children before `p0` in that level, and where to write.
struct FillTask {
    i: usize,
    p0: usize,
    p1: usize,
    rank0: i32,
    keys: SendPtr<u64>,
    children: SendPtr<i32>,
    batch: SendPtr<i32>,
}

/// Keys, children and batch (8 slots per non-empty parent) of depths fd+1..=stop.
///
/// Every slot of every output is written exactly once, in order, by one task (no
/// zero-fill first).
/// Without `fill_batch` (one sample only) the batch arrays stay empty.
fn fill_levels(
    lv: &Levels<'_>,
    fd: u8,
    stop: u8,
    fill_batch: bool,
) -> Vec<(Vec<u64>, Vec<i32>, Vec<i32>)> {
    let levels = (stop - fd) as usize;
    let mut out: Vec<(Vec<u64>, Vec<i32>, Vec<i32>)> = (0..levels)
        .map(|i| {
            let n = lv.nonempty_keys[i].len() * 8;
            // SAFETY: the tasks below write every slot (their parent ranges cover the
            // level); batch is written only when it is filled
            unsafe {
                (
                    vec_for_overwrite(n),
                    vec_for_overwrite(n),
                    if fill_batch {
                        vec_for_overwrite(n)
                    } else {
                        Vec::new()
                    },
                )
            }
        })
        .collect();
    let mut tasks = Vec::new();
    for (i, (keys, ch, batch)) in out.iter_mut().enumerate() {
        let occ = lv.occupancy[i + 1];
        let mut rank = 0usize;
        for p0 in (0..occ.len()).step_by(FILL_PARENTS) {
            let p1 = (p0 + FILL_PARENTS).min(occ.len());
            tasks.push(FillTask {
                i,
                p0,
                p1,
                rank0: rank as i32,
                keys: SendPtr(keys.as_mut_ptr()),
                children: SendPtr(ch.as_mut_ptr()),
                batch: SendPtr(batch.as_mut_ptr()),
            });
            rank += popcount_bytes(&occ[p0..p1]).0;
        }
    }
    tasks.par_iter().for_each(|t| {
        let (p0, p1) = (t.p0, t.p1);
        let m = 8 * (p1 - p0);
        // SAFETY: task ranges p0..p1 of one level are disjoint and within the level's
        // parents, and each level's arrays hold 8 slots per parent, so the slices are
        // in bounds and no two tasks alias.
        let (keys, ch) = unsafe {
            (
                std::slice::from_raw_parts_mut(t.keys.0.add(8 * p0), m),
                std::slice::from_raw_parts_mut(t.children.0.add(8 * p0), m),
            )
        };
        let parents = &lv.nonempty_keys[t.i][p0..p1];
        let occ = &lv.occupancy[t.i + 1][p0..p1];
        // the build's row writer: 12 bytes per node that nothing reads back soon, streamed
        // (plain stores first read every output line: for an 11.65M-node tree ~25 ms
        // against ~6 ms streamed on one core of the KVM Xeon we measure on)
        crate::octree::write_rows(parents, occ, t.rank0, keys, ch, true);
        if !fill_batch {
            return;
        }
        // each sample's parents are contiguous, in sample order, and cover the level
        let mut start = 0usize;
        for (s, &c) in lv.nonempty_counts[t.i].iter().enumerate() {
            let (lo, hi) = (start.max(p0), (start + c).min(p1));
            if lo < hi {
                // SAFETY: lo..hi lies inside this task's parents (see above)
                let b =
                    unsafe { std::slice::from_raw_parts_mut(t.batch.0.add(8 * lo), 8 * (hi - lo)) };
                fill_batch_slots(b, s as i32);
            }
            start += c;
        }
    });
    out
}

/// `b.fill(s)`, streamed (non-temporal 8-lane stores) when AVX2 is present and `b` is
/// 32-byte aligned.
fn fill_batch_slots(b: &mut [i32], s: i32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && (b.as_ptr() as usize) % 32 == 0 {
        // SAFETY: AVX2 present and `b` aligned (checked just above)
        unsafe { fill_i32_nt(b, s) };
        return;
    }
    b.fill(s);
}

/// # Safety
/// AVX2 must be present and `b` 32-byte aligned.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fill_i32_nt(b: &mut [i32], s: i32) {
    use std::arch::x86_64::*;
    let v = _mm256_set1_epi32(s);
    let mut chunks = b.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: c is 8 i32 (one vector), aligned because b is and chunks are 32 bytes
        unsafe { _mm256_stream_si256(c.as_mut_ptr() as *mut __m256i, v) };
    }
    chunks.into_remainder().fill(s);
    _mm_sfence();
}

/// children[8j + c] = running rank where bit c of occ[j] is set (rest stays -1).
fn fill_children(occ: &[u8], ch: &mut [i32]) {
    let mut rank = 0i32;
    for (dst, &byte) in ch.chunks_exact_mut(8).zip(occ) {
        let list = &CHILD_LISTS[byte as usize];
        for &c in &list[..byte.count_ones() as usize] {
            dst[c as usize] = rank;
            rank += 1;
        }
    }
}

// ------------------------------------------------------------- child-order change

const Z_BITS: u64 = 0x1249_2492_4924_9249;

/// Swap the x and z bits of a Morton key (x-MSB ↔ x-LSB interleave); an involution.
#[inline]
pub fn swap_xz_key(k: u64) -> u64 {
    (k & (Z_BITS << 1)) | ((k >> 2) & Z_BITS) | ((k & Z_BITS) << 2)
}

/// The same octree with the x and z axes' bit roles exchanged in the keys, re-sorted
/// per sample; leaf payloads follow their leaves. Applying it twice is the identity.
pub fn swap_xz(src: &OctfOctree) -> OctfOctree {
    let t = &src.tree;
    let mut out = src.clone();
    let mut leaf_perm: Vec<usize> = Vec::new();
    for d in 0..=t.depth as usize {
        let keys = &t.keys[d];
        let mut idx: Vec<u32> = (0..keys.len() as u32).collect();
        idx.sort_unstable_by_key(|&i| (t.batch[d][i as usize], swap_xz_key(keys[i as usize])));
        let mut rank = 0i32;
        for (pos, &i) in idx.iter().enumerate() {
            let i = i as usize;
            out.tree.keys[d][pos] = swap_xz_key(keys[i]);
            out.tree.batch[d][pos] = t.batch[d][i];
            if t.children[d][i] >= 0 {
                out.tree.children[d][pos] = rank;
                rank += 1;
                if d == t.depth as usize {
                    leaf_perm.push(t.children[d][i] as usize);
                }
            } else {
                out.tree.children[d][pos] = -1;
            }
        }
    }
    if let Some((f, c)) = &src.features {
        let mut g = Vec::with_capacity(f.len());
        for &l in &leaf_perm {
            g.extend_from_slice(&f[l * c..(l + 1) * c]);
        }
        out.features = Some((g, *c));
    }
    if let Some(nr) = &src.normals {
        let mut g = Vec::with_capacity(nr.len());
        for &l in &leaf_perm {
            g.extend_from_slice(&nr[l * 3..(l + 1) * 3]);
        }
        out.normals = Some(g);
    }
    out
}

// ------------------------------------------------------------------- token views

/// Per-sample occupancy-token streams (Uni-3DAR-style 256-way tokens): the occupancy
/// bytes of sample b at depths fd-1..depth-1, level after level, exactly the bytes of
/// the file's level chunks restricted to that sample. Returns (tokens, (B+1,) offsets).
pub fn occupancy_tokens(v: &TreeView<'_>) -> Result<(Vec<u8>, Vec<usize>)> {
    let nonempty = validate_view(v)?;
    let (depth, fd, b) = (v.depth as usize, v.full_depth as usize, v.batch_size);
    let mut per_sample: Vec<Vec<u8>> = vec![Vec::new(); b];
    // top level
    let mut start = 0;
    for s in 0..b {
        let n = v.batch_nnum[fd * b + s] as usize;
        let top = &v.children[fd][start..start + n];
        if fd == 0 {
            per_sample[s].extend(top.iter().map(|&c| (c >= 0) as u8));
        } else {
            per_sample[s].extend(top.chunks_exact(8).map(pack8));
        }
        start += n;
    }
    for d in fd..depth {
        let mut start = 0;
        for s in 0..b {
            let n = 8 * nonempty[d][s];
            per_sample[s].extend(
                v.children[d + 1][start..start + n]
                    .chunks_exact(8)
                    .map(pack8),
            );
            start += n;
        }
    }
    let mut offsets = vec![0usize];
    let mut tokens = Vec::with_capacity(per_sample.iter().map(Vec::len).sum());
    for p in per_sample {
        tokens.extend_from_slice(&p);
        offsets.push(tokens.len());
    }
    Ok((tokens, offsets))
}

/// Inverse of [`occupancy_tokens`]: rebuild the octree structure from per-sample token
/// streams (origin (0,0,0), unit cells; the caller sets the geometry).
pub fn octree_from_occupancy_tokens(
    tokens: &[u8],
    offsets: &[usize],
    depth: u8,
    full_depth: u8,
) -> Result<Octree> {
    crate::octree::validate_depths(depth, full_depth)?;
    if offsets.len() < 2
        || offsets[0] != 0
        || *offsets.last().unwrap() != tokens.len()
        || offsets.windows(2).any(|w| w[1] < w[0])
    {
        return Err(CoreError::arg(
            "offsets",
            format!("(B+1,) non-decreasing from 0 to {}", tokens.len()),
            format!("{offsets:?}"),
        ));
    }
    let b = offsets.len() - 1;
    let fd = full_depth;
    let top_per = if fd == 0 {
        1
    } else {
        dense_nodes(fd - 1)
            .filter(|&n| n <= tokens.len())
            .ok_or_else(|| CoreError::arg("full_depth", "a dense level the tokens can hold", fd))?
    };
    // split every sample's stream into its levels, then lay them out level-major
    let levels = (depth - fd) as usize + 1;
    let mut level_bytes: Vec<Vec<u8>> = vec![Vec::new(); levels];
    for s in 0..b {
        let stream = &tokens[offsets[s]..offsets[s + 1]];
        let mut pos = 0;
        let mut n = top_per;
        for (l, lb) in level_bytes.iter_mut().enumerate() {
            if stream.len() - pos < n {
                return Err(CoreError::arg(
                    "tokens",
                    format!(
                        "{n} more tokens for level {} of sample {s}",
                        fd as i32 - 1 + l as i32
                    ),
                    stream.len() - pos,
                ));
            }
            let part = &stream[pos..pos + n];
            if l == 0 && fd == 0 && part[0] > 1 {
                return Err(CoreError::arg(
                    "tokens",
                    format!("root token 0 or 1 in sample {s}"),
                    part[0],
                ));
            }
            if l > 0 && part.contains(&0) {
                return Err(CoreError::arg(
                    "tokens",
                    format!("non-zero tokens below the top level in sample {s}"),
                    "a 0 token",
                ));
            }
            lb.extend_from_slice(part);
            pos += n;
            n = popcount_bytes(part).0;
            if l + 1 == levels {
                break;
            }
        }
        if pos != stream.len() {
            return Err(CoreError::arg(
                "tokens",
                format!("exactly {pos} tokens in sample {s}"),
                stream.len(),
            ));
        }
    }
    // encode as a file in memory and decode it: one code path for both directions
    // non-empty count at depth fd + l = set bits of the occupancy of depth fd - 1 + l
    let counts: Vec<u64> = level_bytes
        .iter()
        .map(|lb| popcount_bytes(lb).0 as u64)
        .collect();
    let header = Header {
        major: VERSION_MAJOR,
        minor: VERSION_MINOR,
        flags: 0,
        dims: 3,
        node_kind: NodeKind::Octree,
        child_order: ChildOrder::XyzMsb,
        traversal: Traversal::BreadthFirst,
        max_depth: depth,
        full_depth: fd,
        coords: Coords::Cartesian,
        batch_size: b,
        channels: 0,
        origin: vec![0.0; 3 * b],
        scale: vec![1.0; 3 * b],
        counts,
    };
    let mut out = Vec::new();
    put_header(&mut out, &header);
    for lb in &level_bytes {
        put_chunk(&mut out, TAG_LEVEL, lb.len(), |o| o.extend_from_slice(lb));
    }
    put_footer(&mut out);
    decode_octree(&out, &DecodeOptions::default())
        .map(|d| d.tree)
        .map_err(|e| CoreError::arg("tokens", "a valid token stream", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::octree::{BuildOptions, SampleBox, build_octree};
    use proptest::prelude::*;

    fn build(pts: &[f32], splits: &[usize], depth: u8, fd: u8) -> OctfOctree {
        let n = pts.len() / 3;
        let mut offsets = vec![0];
        for &s in splits {
            offsets.push(s.min(n).max(*offsets.last().unwrap()));
        }
        offsets.push(n);
        let b = offsets.len() - 1;
        let c = 2.0 / (1u64 << depth) as f64;
        let boxes = vec![
            SampleBox {
                origin: [-1.0; 3],
                cell: [c; 3]
            };
            b
        ];
        let tree = build_octree(
            &pts[..n * 3],
            &offsets,
            &boxes,
            BuildOptions {
                depth,
                full_depth: fd,
                clip: true,
            },
        )
        .unwrap();
        let m = tree.nnum_nempty(depth as usize);
        OctfOctree {
            tree: Octree {
                point_leaf: Vec::new(),
                ..tree
            },
            origin: vec![-1.0; 3 * b],
            scale: vec![c; 3 * b],
            coords: Coords::Cartesian,
            features: Some(((0..m * 2).map(|i| i as f32 * 0.5).collect(), 2)),
            normals: None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn round_trip_and_canonical(pts in proptest::collection::vec(-1f32..1.0, 0..300), split in 0usize..100,
                                    depth in 1u8..7, fd in 0u8..4, lsb in any::<bool>()) {
            let fd = fd.min(depth);
            let t = build(&pts, &[split], depth, fd);
            let order = if lsb { ChildOrder::XyzLsb } else { ChildOrder::XyzMsb };
            let bytes = encode_octree(&t.view(), EncodeOptions { child_order: order }).unwrap();
            let back = decode_octree(&bytes, &DecodeOptions::default()).unwrap();
            prop_assert_eq!(&back, &t);
            prop_assert_eq!(encode_octree(&back.view(), EncodeOptions { child_order: order }).unwrap(), bytes.clone());
            // streaming: stopping at k gives the first k+1 levels
            for k in 0..=depth {
                let part = decode_octree(&bytes, &DecodeOptions { max_depth: Some(k), verify_checksums: true }).unwrap();
                for d in 0..=k as usize {
                    prop_assert_eq!(&part.tree.keys[d], &t.tree.keys[d]);
                    prop_assert_eq!(&part.tree.children[d], &t.tree.children[d]);
                    prop_assert_eq!(&part.tree.batch_nnum_nempty[d], &t.tree.batch_nnum_nempty[d]);
                }
            }
            // tokens round trip
            let (tok, off) = occupancy_tokens(&t.view()).unwrap();
            let tt = octree_from_occupancy_tokens(&tok, &off, depth, fd).unwrap();
            prop_assert_eq!(&tt, &t.tree);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_octree(&data, &DecodeOptions { max_depth: None, verify_checksums: false });
            let _ = decode_octree(&data, &DecodeOptions::default());
        }
    }

    #[test]
    fn every_byte_flip_and_truncation_is_an_error() {
        let pts: Vec<f32> = (0..90)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let t = build(&pts, &[10], 4, 1);
        let bytes = encode_octree(&t.view(), EncodeOptions::default()).unwrap();
        for i in 0..bytes.len() {
            for x in [1u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= x;
                assert!(
                    matches!(
                        decode_octree(&b, &DecodeOptions::default()),
                        Err(CoreError::Corrupt { .. })
                    ),
                    "flip {i} ^ {x}"
                );
            }
        }
        for n in 0..bytes.len() {
            assert!(
                matches!(
                    decode_octree(&bytes[..n], &DecodeOptions::default()),
                    Err(CoreError::Corrupt { .. })
                ),
                "truncate {n}"
            );
        }
    }

    /// Seed corpus for the cargo-fuzz target: `OCTF_SEED_DIR=fuzz/corpus/decode_octf
    /// cargo test -p octformer-core write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        let dir = std::env::var("OCTF_SEED_DIR").expect("set OCTF_SEED_DIR");
        std::fs::create_dir_all(&dir).unwrap();
        let pts: Vec<f32> = (0..60)
            .map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0)
            .collect();
        let mut n = 0;
        for (depth, fd) in [(1u8, 0u8), (2, 0), (3, 1), (4, 2), (5, 1), (3, 3)] {
            for order in [ChildOrder::XyzMsb, ChildOrder::XyzLsb] {
                let mut t = build(&pts, &[7], depth, fd);
                if depth % 2 == 1 {
                    t.features = None;
                    t.normals = Some(vec![0.5; 3 * t.tree.nnum_nempty(depth as usize)]);
                }
                let bytes = encode_octree(&t.view(), EncodeOptions { child_order: order }).unwrap();
                std::fs::write(format!("{dir}/seed{n}.octf"), bytes).unwrap();
                n += 1;
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_expand_equals_plain_expand() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        let occ: Vec<u8> = (1..=255u8).chain([1, 128, 255, 3]).collect();
        let parents: Vec<u64> = (0..occ.len() as u64).map(|j| j * 977 + (1 << 57)).collect();
        let n: usize = occ.iter().map(|b| b.count_ones() as usize).sum();
        let (mut a, mut b) = (vec![0u64; n + 8], vec![1u64; n + 8]);
        let wa = expand_keys_plain(&parents, &occ, &mut a);
        // SAFETY: AVX2 present (checked above)
        let wb = unsafe { expand_keys_avx2(&parents, &occ, &mut b) };
        assert_eq!((wa, &a[..wa]), (wb, &b[..wb]));
        assert_eq!(wa, n);
        // first parent, byte 1: only child 0
        assert_eq!(a[0], parents[0] << 3);
    }

    #[test]
    fn streamed_fill_equals_plain_fill() {
        // every occupancy byte, parents with high key bits, a non-zero starting rank
        let occ: Vec<u8> = (0..=255u8).chain([0, 1, 128, 255]).collect();
        let parents: Vec<u64> = (0..occ.len() as u64)
            .map(|j| j * 0x9E37_79B9 + (1 << 58))
            .collect();
        let n = 8 * occ.len();
        let (mut k1, mut c1) = (vec![0u64; n], vec![0i32; n]);
        crate::octree::write_rows(&parents, &occ, 1000, &mut k1, &mut c1, false);
        // 32-byte aligned windows of larger buffers: the decoder's streamed rows
        let mut kb = vec![7u64; n + 4];
        let mut cb = vec![7i32; n + 8];
        let ko = kb.as_ptr().align_offset(32);
        let co = cb.as_ptr().align_offset(32);
        let (k2, c2) = (&mut kb[ko..ko + n], &mut cb[co..co + n]);
        crate::octree::write_rows(&parents, &occ, 1000, k2, c2, true);
        assert_eq!(&k1[..], &k2[..]);
        assert_eq!(&c1[..], &c2[..]);
        // the plain fill itself: slot c of a parent is its key << 3 | c, and children
        // count the set bits in order
        assert_eq!(k1[8 * 3 + 5], parents[3] << 3 | 5);
        let ranks: Vec<i32> = c1[..8 * 4].iter().copied().filter(|&r| r >= 0).collect();
        assert_eq!(ranks, (1000..1000 + ranks.len() as i32).collect::<Vec<_>>());
        // streamed batch fill, with a tail shorter than a vector
        let mut bb = vec![0i32; 8 * 40 + 16];
        let bo = bb.as_ptr().align_offset(32);
        fill_batch_slots(&mut bb[bo..bo + 8 * 37 + 3], 9);
        assert!(bb[..bo].iter().all(|&x| x == 0));
        assert!(bb[bo..bo + 8 * 37 + 3].iter().all(|&x| x == 9));
        assert!(bb[bo + 8 * 37 + 3..].iter().all(|&x| x == 0));
    }

    #[test]
    fn unfilled_batch_only_for_one_msb_sample() {
        let pts: Vec<f32> = (0..3000)
            .map(|i| ((i * 7919 % 2003) as f32 / 1002.0) - 1.0)
            .collect();
        for (splits, order) in [
            (vec![], ChildOrder::XyzMsb),
            (vec![400], ChildOrder::XyzMsb),
            (vec![], ChildOrder::XyzLsb),
        ] {
            let t = build(&pts, &splits, 7, 2);
            let data = encode_octree(&t.view(), EncodeOptions { child_order: order }).unwrap();
            let full = decode_octree(&data, &DecodeOptions::default()).unwrap();
            let lean = decode_octree_with(&data, &DecodeOptions::default(), false).unwrap();
            let skipped = splits.is_empty() && order == ChildOrder::XyzMsb;
            assert_eq!(lean.tree.keys, full.tree.keys);
            assert_eq!(lean.tree.children, full.tree.children);
            for (l, f) in lean.tree.batch.iter().zip(&full.tree.batch) {
                if skipped {
                    assert!(l.is_empty() && f.iter().all(|&b| b == 0));
                } else {
                    assert_eq!(l, f);
                }
            }
        }
    }

    #[test]
    fn swap_is_an_involution_and_varints_are_canonical() {
        let t = build(&[0.1, 0.5, -0.7, 0.9, -0.2, 0.3], &[], 5, 2);
        assert_eq!(swap_xz(&swap_xz(&t)), t);
        for k in [0u64, 5, 0x1234_5678_9abc] {
            assert_eq!(swap_xz_key(swap_xz_key(k)), k);
        }
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(Cursor::new(&b).varint("v").unwrap(), v);
        }
        assert!(Cursor::new(&[0x80, 0x00]).varint("v").is_err());
    }
}
