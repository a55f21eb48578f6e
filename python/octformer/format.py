"""OCTF v1 files for octrees (spec: docs/octf-format.md) and token views for generative models.

``encode``/``decode`` are canonical and checked: ``encode(decode(b)) == b`` for every
valid file, and any corruption or truncation raises :class:`octformer.CorruptDataError`.
OCTF stores structure, geometry and per-leaf payloads, not input points: a decoded
tree's ``point_leaf`` is an empty (0,) int64 array.

Token views (documented bijections, see the spec):

* ``occupancy_tokens``: one 256-way token per non-empty node (Uni-3DAR style), per
  sample, level by level in key order: exactly the file's occupancy bytes.
* ``split_flags``: one 0/1 flag per node at depths full_depth..depth (OctGPT's
  ``children >= 0`` stream); it is the little-endian bit unpacking of the tokens.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

from octformer import _core
from octformer.errors import OctformerError
from octformer.octree import MAX_DEPTH, Octree, _to_numpy, _zero_batch_views, default_num_threads

__all__ = [
    "encode",
    "decode",
    "save",
    "load",
    "header",
    "decode_levels",
    "occupancy_tokens",
    "from_occupancy_tokens",
    "split_flags",
    "from_split_flags",
    "CHILD_ORDERS",
]

CHILD_ORDERS = ("xyz_msb", "xyz_lsb")


def _tree_arrays(tree: Any) -> SimpleNamespace:
    """The arrays the native encoder borrows, with exact dtypes (no lossy casts)."""
    if not isinstance(tree, Octree):
        raise TypeError(f"tree: expected an octformer.Octree, got {type(tree).__name__}")
    t = tree.numpy()

    def ints(a: Any, dtype: Any, name: str) -> np.ndarray:
        a = np.asarray(a)
        if a.dtype.kind not in "iu":
            raise OctformerError(f"{name}: expected an integer array, got dtype {a.dtype}")
        out = np.ascontiguousarray(a, dtype=dtype)
        if a.dtype != out.dtype and not np.array_equal(out, a):
            raise OctformerError(f"{name}: values do not fit {np.dtype(dtype).name}")
        return out

    def payload(a: Any, name: str) -> np.ndarray | None:
        if a is None:
            return None
        a = np.asarray(a)
        if a.dtype != np.float32 or a.ndim != 2:
            raise OctformerError(f"{name}: expected a (M, C) float32 array, got shape {a.shape} dtype {a.dtype}")
        return np.ascontiguousarray(a)

    def f64(a: Any, name: str, b: int) -> np.ndarray:
        a = np.asarray(a)
        if a.shape != (b, 3) or a.dtype.kind != "f":
            raise OctformerError(f"{name}: expected a ({b}, 3) float array, got shape {a.shape} dtype {a.dtype}")
        return np.ascontiguousarray(a, dtype=np.float64)

    depth = int(t.depth)
    if len(t.keys) != depth + 1 or len(t.children) != depth + 1 or len(t.batch) != depth + 1:
        raise OctformerError(f"tree.keys/children/batch: expected {depth + 1} arrays each (depths 0..{depth})")
    return SimpleNamespace(
        depth=depth,
        full_depth=int(t.full_depth),
        batch_size=int(t.batch_size),
        keys=[ints(k, np.int64, f"tree.keys[{d}]") for d, k in enumerate(t.keys)],
        children=[ints(c, np.int32, f"tree.children[{d}]") for d, c in enumerate(t.children)],
        batch=[ints(b, np.int32, f"tree.batch[{d}]") for d, b in enumerate(t.batch)],
        batch_nnum=ints(t.batch_nnum, np.int64, "tree.batch_nnum"),
        batch_nnum_nempty=ints(t.batch_nnum_nempty, np.int64, "tree.batch_nnum_nempty"),
        origin=f64(t.origin, "tree.origin", int(t.batch_size)),
        voxel_size=f64(t.voxel_size, "tree.voxel_size", int(t.batch_size)),
        coords=str(t.coords),
        features=payload(t.features, "tree.features"),
        normals=payload(t.normals, "tree.normals"),
    )


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"data: expected bytes, bytearray or memoryview, got {type(data).__name__}")


def _check_max_depth(max_depth: Any) -> int | None:
    if max_depth is None:
        return None
    if isinstance(max_depth, bool) or not isinstance(max_depth, (int, np.integer)) or not 0 <= max_depth <= MAX_DEPTH:
        raise OctformerError(f"max_depth: expected None or an integer in 0..{MAX_DEPTH}, got {max_depth!r}")
    return int(max_depth)


def encode(tree: Octree, *, child_order: str = "xyz_msb", num_threads: int | None = None) -> bytes:
    """OCTF bytes of ``tree`` (structure, origin/voxel_size, features, normals; not points).

    ``child_order="xyz_lsb"`` writes Open3D/Uni-3DAR bit order (x least significant);
    decoding restores octformer's order either way.
    """
    if child_order not in CHILD_ORDERS:
        raise OctformerError(f"child_order: expected one of {CHILD_ORDERS}, got {child_order!r}")
    arrays = _tree_arrays(tree)
    return _core.octf_encode(arrays, child_order=child_order, num_threads=default_num_threads(num_threads))


def _octree_from_dict(raw: dict, origin: Any, voxel_size: Any, coords: str, features: Any = None, normals: Any = None) -> Octree:
    return Octree(
        depth=int(raw["depth"]),
        full_depth=int(raw["full_depth"]),
        batch_size=int(raw["batch_size"]),
        keys=raw["keys"],
        children=raw["children"],
        batch=raw["batch"],
        batch_nnum=raw["batch_nnum"],
        batch_nnum_nempty=raw["batch_nnum_nempty"],
        point_leaf=np.zeros(0, dtype=np.int64),
        origin=origin,
        voxel_size=voxel_size,
        coords=coords,
        features=features,
        normals=normals,
    )


def decode(data: Any, *, max_depth: int | None = None, num_threads: int | None = None) -> Octree:
    """The :class:`Octree` in OCTF ``data``; raises ``CorruptDataError`` on any damage.

    ``max_depth=k`` stops streaming after depth k: the result holds levels 0..k exactly
    as the full tree (voxel_size scaled to depth-k cells), no leaf payloads, and bytes
    after level k are neither read nor checked.
    """
    raw = _core.octf_decode(
        _as_bytes(data), max_depth=_check_max_depth(max_depth), num_threads=default_num_threads(num_threads), fill_batch=False
    )
    if raw["batch"] is None:  # one sample: the decoder left the all-zero batch ids to us
        raw["batch"] = _zero_batch_views(raw["keys"])
    return _octree_from_dict(raw, raw["origin"], raw["voxel_size"], raw["coords"], raw["features"], raw["normals"])


def save(tree: Octree, path: str | os.PathLike, **kwargs: Any) -> None:
    """Write ``tree`` to ``path`` as an OCTF file (keyword arguments as :func:`encode`)."""
    data = encode(tree, **kwargs)
    with open(path, "wb") as f:
        f.write(data)


def load(path: str | os.PathLike, **kwargs: Any) -> Octree:
    """Read an OCTF file written by :func:`save` (keyword arguments as :func:`decode`)."""
    with open(path, "rb") as f:
        data = f.read()
    return decode(data, **kwargs)


def header(data: Any) -> dict:
    """The header fields of OCTF ``data`` (version, kind, depths, counts, ...) as a dict."""
    return _core.octf_header(_as_bytes(data))


def decode_levels(data: Any, *, max_depth: int | None = None) -> list[np.ndarray]:
    """Structure-only streaming decode: per depth full_depth..k, the (n,) int64 sample-local
    keys of the non-empty nodes, without building the full (8 children per node) arrays."""
    return _core.octf_decode_levels(_as_bytes(data), max_depth=_check_max_depth(max_depth))


# ------------------------------------------------------------------------ token views


def occupancy_tokens(tree: Octree) -> list[np.ndarray]:
    """Per sample, (T_b,) uint8 256-way occupancy tokens: one per node at depth full_depth-1
    (dense; one 0/1 root token when full_depth is 0), then one per non-empty node at
    depths full_depth..depth-1, level by level in key order; bit c of a token = child c."""
    tokens, offsets = _core.occupancy_tokens(_tree_arrays(tree))
    return [tokens[offsets[b] : offsets[b + 1]] for b in range(len(offsets) - 1)]


def _geometry(b: int, origin: Any, voxel_size: Any) -> tuple[np.ndarray, np.ndarray]:
    o = np.zeros((b, 3)) if origin is None else np.broadcast_to(np.asarray(origin, dtype=np.float64), (b, 3)).copy()
    v = np.ones((b, 3)) if voxel_size is None else np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (b, 3)).copy()
    if not (np.isfinite(o).all() and np.isfinite(v).all() and (v > 0).all()):
        raise OctformerError("origin/voxel_size: expected finite values and positive voxel sizes")
    return o, v


def _sample_arrays(seq: Any, name: str, valid: Any, expected: str) -> list[np.ndarray]:
    """Per-sample 1-D uint8 arrays from one array or a sequence of them, each checked by ``valid``."""
    if isinstance(seq, np.ndarray) and seq.ndim == 1:
        seq = [seq]
    out = []
    for i, t in enumerate(seq):
        a = np.asarray(t)
        if a.ndim != 1 or not valid(a):
            raise OctformerError(f"{name}[{i}]: expected {expected}")
        out.append(a.astype(np.uint8))
    return out


def from_occupancy_tokens(
    tokens: Sequence[Any],
    depth: int,
    full_depth: int,
    *,
    origin: Any = None,
    voxel_size: Any = None,
    coords: str = "cartesian",
) -> Octree:
    """Inverse of :func:`occupancy_tokens`: the octree of per-sample token arrays.

    ``origin``/``voxel_size`` ((3,) or (B, 3)) default to 0 and 1 (grid units).
    Malformed streams (wrong length, a 0 token below the top level) raise OctformerError.
    """
    parts = _sample_arrays(
        tokens,
        "tokens",
        lambda a: a.dtype.kind in "iu" and not (a.size and (a.min() < 0 or a.max() > 255)),
        "a 1-D integer array with values in 0..255",
    )
    if not parts:
        raise OctformerError("tokens: expected at least one sample, got none")
    for name, v in (("depth", depth), ("full_depth", full_depth)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= MAX_DEPTH:
            raise OctformerError(f"{name}: expected an integer in 0..{MAX_DEPTH}, got {v!r}")
    offsets = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
    raw = _core.octree_from_occupancy_tokens(np.concatenate(parts), offsets, int(depth), int(full_depth))
    o, v = _geometry(len(parts), origin, voxel_size)
    return _octree_from_dict(raw, o, v, coords)


def split_flags(tree: Octree) -> list[np.ndarray]:
    """Per sample, (F_b,) uint8 0/1 OctGPT split flags: for depths full_depth..depth, one
    per node in key order, 1 where the node is non-empty (split, or an occupied leaf)."""
    out = []
    for tok in occupancy_tokens(tree):
        if tree.full_depth == 0:
            out.append(np.concatenate([tok[:1], np.unpackbits(tok[1:], bitorder="little")]))
        else:
            out.append(np.unpackbits(tok, bitorder="little"))
    return out


def from_split_flags(
    flags: Sequence[Any],
    depth: int,
    full_depth: int,
    *,
    origin: Any = None,
    voxel_size: Any = None,
    coords: str = "cartesian",
) -> Octree:
    """Inverse of :func:`split_flags` (packs each 8 sibling flags into a token)."""
    tokens = []
    arrays = _sample_arrays(flags, "flags", lambda a: bool(np.isin(a, (0, 1)).all()), "a 1-D array of 0/1 values")
    for i, a in enumerate(arrays):
        head, rest = (a[:1], a[1:]) if full_depth == 0 else (a[:0], a)
        if rest.size % 8:
            raise OctformerError(f"flags[{i}]: expected whole groups of 8 sibling flags, got {rest.size} flags after the root")
        tokens.append(np.concatenate([head, np.packbits(rest, bitorder="little")]))
    return from_occupancy_tokens(tokens, depth, full_depth, origin=origin, voxel_size=voxel_size, coords=coords)
