"""Omnitrees: anisotropic trees whose nodes split any non-empty subset of 2..4 dimensions.

Clean-room implementation from the omnitree paper's description (Pollinger, Ishii,
Domke, 2025); see docs/octf-format.md for the byte layout. A node's refinement mask
has bit i set when it halves dimension i (0 = leaf); it has 2^popcount(mask) children,
ordered with the lowest refined dimension as the most significant bit of the child
index (a full 3-d split is ``4x + 2y + z``, octformer's octree order). Leaves are
numbered in depth-first pre-order; cells are half-open, so every grid point lies in
exactly one leaf.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from octformer import _core
from octformer.errors import OctformerError
from octformer.octree import Octree

__all__ = ["Omnitree", "MAX_LEVEL"]

MAX_LEVEL = 30


def _vec(v: Any, d: int, name: str) -> np.ndarray:
    a = np.broadcast_to(np.asarray(v, dtype=np.float64), (d,)).copy()
    if not np.isfinite(a).all():
        raise OctformerError(f"{name}: expected {d} finite values, got {a.tolist()}")
    return a


def _check_level(max_level: Any) -> int:
    if isinstance(max_level, bool) or not isinstance(max_level, (int, np.integer)) or not 0 <= max_level <= MAX_LEVEL:
        raise OctformerError(f"max_level: expected an integer in 0..{MAX_LEVEL}, got {max_level!r}")
    return int(max_level)


class Omnitree:
    """An omnitree over ``origin + [0, 2^max_level) * cell`` per dimension.

    Attributes: ``dims``, ``max_level``, ``masks`` (nodes,) uint8 pre-order refinement
    masks, ``occupied`` (leaves,) bool, ``origin`` and ``cell`` (dims,) float64.
    """

    def __init__(self, core: Any) -> None:
        self._core = core

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_preorder(cls, masks: Any, occupied: Any, *, dims: int, max_level: int, origin: Any = 0.0, cell: Any = 1.0) -> Omnitree:
        """Check and wrap a pre-order descriptor (one mask per node) and per-leaf occupancy."""
        m = np.asarray(masks)
        o = np.asarray(occupied)
        if m.ndim != 1 or m.dtype.kind not in "iu" or (m.size and (m.min() < 0 or m.max() > 15)):
            raise OctformerError("masks: expected a 1-D integer array of values in 0..15")
        if o.ndim != 1 or o.dtype.kind not in "iub" or (o.size and not np.isin(o, (0, 1)).all()):
            raise OctformerError("occupied: expected a 1-D bool/0-1 array (one per leaf)")
        if isinstance(dims, bool) or dims not in (2, 3, 4):
            raise OctformerError(f"dims: expected 2, 3 or 4, got {dims!r}")
        core = _core.OmnitreeCore.from_preorder(
            int(dims),
            _check_level(max_level),
            np.ascontiguousarray(m, dtype=np.uint8),
            np.ascontiguousarray(o, dtype=np.uint8),
            _vec(origin, dims, "origin"),
            _vec(cell, dims, "cell"),
        )
        return cls(core)

    @classmethod
    def from_cells(
        cls, cells: Any, max_level: int, *, rule: str = "carve", ratio: float = 0.5, origin: Any = 0.0, cell: Any = 1.0
    ) -> Omnitree:
        """Build from (N, d) integer finest-grid cells in [0, 2^max_level), d in 2..4.

        Refinement rules for a node holding points (empty nodes are leaves, and
        refinement always reaches single finest cells):

        * ``"carve"`` (default): halve the dimensions along which one half of the node
          is empty (each such split cuts away empty space); if every dimension has
          points on both sides, halve all of them (an octree split).
        * ``"extent"``: halve the dimensions along which the points extend over more
          than ``ratio`` of the node's size; if none does, halve the largest ones.
        """
        c = np.asarray(cells)
        if c.ndim != 2 or c.shape[1] not in (2, 3, 4) or c.dtype.kind not in "iu":
            raise OctformerError(f"cells: expected an (N, 2..4) integer array, got shape {c.shape} dtype {c.dtype}")
        level = _check_level(max_level)
        if c.size and (c.min() < 0 or c.max() >= 1 << level):
            raise OctformerError(f"cells: expected values in [0, {1 << level}), got [{c.min()}, {c.max()}]")
        if rule not in ("carve", "extent"):
            raise OctformerError(f"rule: expected 'carve' or 'extent', got {rule!r}")
        if not isinstance(ratio, (int, float, np.floating)) or not 0.0 <= float(ratio) <= 1.0:
            raise OctformerError(f"ratio: expected a number in [0, 1], got {ratio!r}")
        d = c.shape[1]
        core = _core.OmnitreeCore.from_cells(
            np.ascontiguousarray(c, dtype=np.uint32), level, rule, float(ratio), _vec(origin, d, "origin"), _vec(cell, d, "cell")
        )
        return cls(core)

    @classmethod
    def from_points(cls, points: Any, max_level: int, *, rule: str = "carve", ratio: float = 0.5, bbox: Any = None) -> Omnitree:
        """Quantise (N, d) points into 2^max_level cells per dimension and build (see :meth:`from_cells`).

        ``bbox`` = (min, max) per dimension; default: the points' tight box (per dimension).
        Points outside an explicit box raise OctformerError.
        """
        p = np.asarray(points, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] not in (2, 3, 4):
            raise OctformerError(f"points: expected an (N, 2..4) array, got shape {p.shape}")
        if not np.isfinite(p).all():
            raise OctformerError("points: expected finite coordinates")
        level = _check_level(max_level)
        d = p.shape[1]
        if bbox is None:
            lo = p.min(axis=0) if len(p) else np.zeros(d)
            hi = p.max(axis=0) if len(p) else np.ones(d)
            hi = np.where(hi > lo, hi, lo + 1.0)
        else:
            lo, hi = (np.broadcast_to(np.asarray(v, dtype=np.float64), (d,)) for v in bbox)
            if not (hi > lo).all():
                raise OctformerError(f"bbox: expected min < max in every dimension, got {lo.tolist()} .. {hi.tolist()}")
            if len(p) and ((p < lo).any() or (p > hi).any()):
                raise OctformerError(f"points: expected all points inside bbox {lo.tolist()} .. {hi.tolist()}")
        cell = (hi - lo) / float(1 << level)
        q = np.floor((p - lo) / cell).astype(np.int64).clip(0, (1 << level) - 1)
        return cls.from_cells(q, level, rule=rule, ratio=ratio, origin=lo, cell=cell)

    @classmethod
    def from_octree(cls, tree: Octree, sample: int = 0) -> Omnitree:
        """The equivalent omnitree of one octree sample: split nodes get the full mask
        (x, y, z), empty nodes and depth-``depth`` nodes are leaves; same cells."""
        t = tree.numpy()
        if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or not 0 <= sample < t.batch_size:
            raise OctformerError(f"sample: expected an integer in 0..{t.batch_size - 1}, got {sample!r}")
        children = []
        for d in range(t.depth + 1):
            start = int(t.batch_nnum[d, :sample].sum())
            n = int(t.batch_nnum[d, sample])
            base = int(t.batch_nnum_nempty[d, :sample].sum())
            c = np.asarray(t.children[d][start : start + n], dtype=np.int32)
            children.append(np.ascontiguousarray(np.where(c >= 0, c - base, -1).astype(np.int32)))
        core = _core.OmnitreeCore.from_octree(
            children, int(t.depth), np.asarray(t.origin[sample], dtype=np.float64), np.asarray(t.voxel_size[sample], dtype=np.float64)
        )
        return cls(core)

    # --------------------------------------------------------------- properties
    @property
    def dims(self) -> int:
        return int(self._core.dims)

    @property
    def max_level(self) -> int:
        return int(self._core.max_level)

    @property
    def masks(self) -> np.ndarray:
        """(nodes,) uint8 refinement masks in pre-order (bit i = dimension i halved)."""
        return self._core.masks

    @property
    def occupied(self) -> np.ndarray:
        """(leaves,) bool: does the leaf hold points."""
        return self._core.occupied.astype(bool)

    @property
    def origin(self) -> np.ndarray:
        return self._core.origin

    @property
    def cell(self) -> np.ndarray:
        """(dims,) size of one finest-grid cell."""
        return self._core.cell

    @property
    def num_nodes(self) -> int:
        return int(self._core.masks.shape[0])

    @property
    def num_leaves(self) -> int:
        return int(self._core.occupied.shape[0])

    @property
    def descriptor_bits(self) -> int:
        """Structure size in bits: dims bits per node plus one occupancy bit per leaf."""
        return self.num_nodes * self.dims + self.num_leaves

    # ------------------------------------------------------------------ queries
    def leaf_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Per leaf (pre-order): (L, dims) int64 lowest finest-grid cell and (L, dims) int64 cell counts."""
        lo, level = self._core.leaf_cells()
        return lo, np.left_shift(1, self.max_level - level)

    def leaf_boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """Per leaf: (L, dims) float64 lower and upper corners in world coordinates."""
        lo, size = self.leaf_cells()
        return self.origin + lo * self.cell, self.origin + (lo + size) * self.cell

    def occupied_cells(self) -> np.ndarray:
        """(M, dims) int64 lowest finest-grid cell of every occupied leaf (pre-order)."""
        return self.leaf_cells()[0][self.occupied]

    def locate_cells(self, cells: Any) -> np.ndarray:
        """(N,) int64 pre-order leaf index of each (N, dims) integer cell; -1 outside the grid. O(depth) each."""
        c = np.asarray(cells)
        if c.ndim != 2 or c.shape[1] != self.dims or c.dtype.kind not in "iu":
            raise OctformerError(f"cells: expected an (N, {self.dims}) integer array, got shape {c.shape} dtype {c.dtype}")
        return self._core.locate_cells(np.ascontiguousarray(c, dtype=np.int64))

    def locate(self, points: Any) -> np.ndarray:
        """(N,) int64 pre-order leaf index containing each (N, dims) point (half-open cells); -1 outside."""
        p = np.asarray(points, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != self.dims:
            raise OctformerError(f"points: expected shape (N, {self.dims}), got {p.shape}")
        if not np.isfinite(p).all():
            raise OctformerError("points: expected finite coordinates")
        q = np.floor((p - self.origin) / self.cell)
        q = np.where((q >= 0) & (q < float(1 << self.max_level)), q, -1).astype(np.int64)
        out = self._core.locate_cells(np.ascontiguousarray(q))
        out[(q < 0).any(axis=1)] = -1
        return out

    # ---------------------------------------------------------------------- I/O
    def to_bytes(self) -> bytes:
        """OCTF bytes (node_kind omnitree, depth-first pre-order masks, per-leaf occupancy bits)."""
        return self._core.encode()

    @classmethod
    def from_bytes(cls, data: Any) -> Omnitree:
        """Decode :meth:`to_bytes` output; damage raises ``CorruptDataError``."""
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise TypeError(f"data: expected bytes, got {type(data).__name__}")
        return cls(_core.OmnitreeCore.decode(data))

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_bytes` to ``path``."""
        with open(path, "wb") as f:
            f.write(self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Omnitree:
        """Read a file written by :meth:`save`."""
        with open(path, "rb") as f:
            return cls.from_bytes(f.read())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Omnitree):
            return NotImplemented
        return (
            self.dims == other.dims
            and self.max_level == other.max_level
            and np.array_equal(self.masks, other.masks)
            and np.array_equal(self.occupied, other.occupied)
            and np.array_equal(self.origin, other.origin)
            and np.array_equal(self.cell, other.cell)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Omnitree(dims={self.dims}, max_level={self.max_level}, nodes={self.num_nodes}, leaves={self.num_leaves}, occupied={int(self.occupied.sum())})"
