"""Space-filling-curve serialization (PTv3-identical z / hilbert orders) and flattening plans.

Codes are bit-identical to Point Transformer V3's ``encode`` for depth ≤ 16 and extend
to depth 21. Sorting is by (batch, code) with no shared bit budget. A ``FlattenPlan``
turns a curve order (``patches``) or FlatFormer's window sort (``flatten``) into one
gather index and one scatter index: a layer does ``x[plan.gather]`` → attention per
sequence (``plan.cu_seqlens``) → ``out[plan.scatter]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from octformer import _core
from octformer.errors import OctformerError

ORDERS: tuple[str, ...] = ("z", "z-trans", "hilbert", "hilbert-trans")
"""PTv3's four orders, in its default sequence."""

MAX_DEPTH = 21
"""Deepest curve level: 3 × 21 = 63 code bits."""

__all__ = [
    "ORDERS",
    "MAX_DEPTH",
    "Serialization",
    "FlattenPlan",
    "serialize",
    "encode",
    "decode",
    "order_for_block",
    "flatten",
    "patches",
]


def _int_array(value: Any, name: str, ndim: int, shape_text: str) -> np.ndarray:
    """Integer numpy array (int64, C-contiguous) or a named error; floats are never truncated."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch tensor
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.ndim != ndim or (ndim == 2 and arr.shape[1] != 3):
        raise OctformerError(f"{name}: expected shape {shape_text}, got {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise OctformerError(f"{name}: expected an integer array, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise OctformerError(f"{name}: expected values < 2^63, got {int(arr.max())}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _int_arg(value: Any, name: str) -> int:
    """A Python int from an integer-like argument, or a named error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise OctformerError(f"{name}: expected an integer, got {value!r}")
    return int(value)


def _check_orders(orders: str | Sequence[str], name: str = "orders") -> tuple[str, ...]:
    """Normalise and validate order names."""
    if isinstance(orders, str):
        orders = (orders,)
    orders = tuple(orders)
    if not orders:
        raise OctformerError(f"{name}: expected at least one of {ORDERS}, got ()")
    for o in orders:
        if o not in ORDERS:
            raise OctformerError(f"{name}: expected names from {ORDERS}, got {o!r}")
    if len(set(orders)) != len(orders):
        raise OctformerError(f"{name}: expected distinct names, got {orders}")
    return orders


@dataclass(frozen=True, eq=False)
class FlattenPlan:
    """One gather in, one scatter out: how a layer turns tokens into varlen sequences."""

    gather: np.ndarray
    """(M,) int64: token read into each padded slot (sort, then duplicate-pad); M ≥ N."""
    scatter: np.ndarray
    """(N,) int64: padded slot of each original token's own copy (un-pad, then inverse)."""
    cu_seqlens: np.ndarray
    """(S + 1,) int32: sequence boundaries in the padded order (flash-attn varlen layout)."""
    seq_sample: np.ndarray
    """(S,) int32: the sample each sequence belongs to."""
    max_seqlen: int
    """Length of the longest sequence."""
    group_size: int
    """Requested group (patch) size; only a sample shorter than it gives a shorter sequence."""

    @property
    def num_tokens(self) -> int:
        """N, the number of real tokens."""
        return int(self.scatter.shape[0])

    @property
    def num_padded(self) -> int:
        """M, tokens after padding (what attention runs over)."""
        return int(self.gather.shape[0])

    @property
    def num_groups(self) -> int:
        """S, the number of sequences."""
        return int(self.seq_sample.shape[0])

    def to_torch(self, device: Any = None) -> dict[str, Any]:
        """Index tensors on `device` (gather/scatter int64, cu_seqlens int32) for a layer."""
        import torch

        return {
            "gather": torch.from_numpy(self.gather).to(device),
            "scatter": torch.from_numpy(self.scatter).to(device),
            "cu_seqlens": torch.from_numpy(self.cu_seqlens).to(device),
            "max_seqlen": self.max_seqlen,
        }

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> FlattenPlan:
        return cls(
            gather=d["gather"],
            scatter=d["scatter"],
            cu_seqlens=d["cu_seqlens"],
            seq_sample=d["seq_sample"],
            max_seqlen=int(d["max_seqlen"]),
            group_size=int(d["group_size"]),
        )


@dataclass(frozen=True, eq=False)
class Serialization:
    """Codes, sort permutation and inverse of each curve order (rows follow `orders`)."""

    orders: tuple[str, ...]
    codes: np.ndarray
    """(O, N) int64 codes without the batch (PTv3's ``encode(..., batch=None)``)."""
    perm: np.ndarray
    """(O, N) int64: sorted position → point, sorted by (batch, code), ties by point index."""
    inverse: np.ndarray
    """(O, N) int64: point → sorted position."""
    depth: int
    """Curve depth: codes use 3·depth bits."""
    batch: np.ndarray | None = None
    """(N,) int64 sample of each point, or None for a single sample."""

    @property
    def num_points(self) -> int:
        """N."""
        return int(self.codes.shape[1])

    def row(self, order: str | int) -> int:
        """Row index of an order given by name or position."""
        if isinstance(order, str):
            if order not in self.orders:
                raise OctformerError(f"order: expected one of {self.orders}, got {order!r}")
            return self.orders.index(order)
        i = _int_arg(order, "order")
        if not 0 <= i < len(self.orders):
            raise OctformerError(f"order: expected a row in 0..{len(self.orders) - 1}, got {i}")
        return i

    def shuffled(self, seed: int) -> Serialization:
        """Same orders in a seeded random row order (PTv3's training-time order shuffle)."""
        rows = np.random.default_rng(_int_arg(seed, "seed")).permutation(len(self.orders))
        return Serialization(
            orders=tuple(self.orders[i] for i in rows),
            codes=self.codes[rows],
            perm=self.perm[rows],
            inverse=self.inverse[rows],
            depth=self.depth,
            batch=self.batch,
        )

    def patches(self, order: str | int, patch_size: int, *, num_threads: int | None = None) -> FlattenPlan:
        """Curve-order patch plan for one order (see :func:`patches`)."""
        return patches(self, order, patch_size, num_threads=num_threads)


def serialize(
    grid_coords: Any,
    *,
    orders: str | Sequence[str] = ORDERS,
    batch: Any = None,
    depth: int | None = None,
    num_threads: int | None = None,
) -> Serialization:
    """Serialize (N, 3) non-negative integer grid coordinates in each curve order.

    ``depth`` defaults to the bit length of the largest coordinate (at least 1), as PTv3
    does; coordinates must be < 2^depth and depth ≤ 21. ``batch`` (N,) gives each point's
    sample; points then sort by (batch, code).
    """
    orders = _check_orders(orders)
    coords = _int_array(grid_coords, "grid_coords", 2, "(N, 3)")
    b = None if batch is None else _int_array(batch, "batch", 1, "(N,)")
    if b is not None and b.shape[0] != coords.shape[0]:
        raise OctformerError(f"batch: expected length {coords.shape[0]} (one per point), got {b.shape[0]}")
    d = None if depth is None else _int_arg(depth, "depth")
    codes, perm, inverse, used = _core.serialize(coords, list(orders), d, b, num_threads)
    return Serialization(orders=orders, codes=codes, perm=perm, inverse=inverse, depth=int(used), batch=b)


def encode(grid_coords: Any, order: str = "z", *, depth: int = 16, num_threads: int | None = None) -> np.ndarray:
    """(N,) int64 codes of (N, 3) grid coordinates in one order (PTv3's ``encode`` without batch)."""
    (order,) = _check_orders(order, "order")
    coords = _int_array(grid_coords, "grid_coords", 2, "(N, 3)")
    return _core.curve_encode(coords, order, _int_arg(depth, "depth"), num_threads)


def decode(codes: Any, order: str, depth: int, *, num_threads: int | None = None) -> np.ndarray:
    """(N, 3) int64 grid coordinates of (N,) codes produced in `order` at `depth`."""
    (order,) = _check_orders(order, "order")
    c = _int_array(codes, "codes", 1, "(N,)")
    return _core.curve_decode(c, order, _int_arg(depth, "depth"), num_threads)


def order_for_block(block_index: int, num_orders: int, *, training: bool = False, seed: int | None = None) -> int:
    """Row of the order block `block_index` uses: i mod K; in training a seeded shuffle of the K rows.

    Evaluation is deterministic (no shuffle); training requires an explicit seed, so two
    runs with the same seed pick the same orders.
    """
    i = _int_arg(block_index, "block_index")
    k = _int_arg(num_orders, "num_orders")
    if k < 1:
        raise OctformerError(f"num_orders: expected a positive integer, got {k}")
    if i < 0:
        raise OctformerError(f"block_index: expected a non-negative integer, got {i}")
    if not training:
        return i % k
    if seed is None:
        raise OctformerError("seed: expected an integer when training=True (the order shuffle is seeded), got None")
    rows = np.random.default_rng(_int_arg(seed, "seed")).permutation(k)
    return int(rows[i % k])


def flatten(
    grid_coords: Any,
    *,
    batch: Any = None,
    window: Sequence[int],
    group_size: int,
    axis: str = "x",
    shift: bool = False,
    num_threads: int | None = None,
) -> FlattenPlan:
    """FlatFormer plan: sort by window then in-window offset along `axis`, cut into equal groups.

    ``window`` is (wx, wy, wz) in grid cells; ``shift`` moves the windows by half a window
    (FlatFormer alternates x, x-shift, y, y-shift per layer). Samples never share a group;
    a sample shorter than ``group_size`` is one short sequence, and padding repeats tokens
    of the same sample only.
    """
    coords = _int_array(grid_coords, "grid_coords", 2, "(N, 3)")
    b = None if batch is None else _int_array(batch, "batch", 1, "(N,)")
    w = tuple(window)
    if len(w) != 3:
        raise OctformerError(f"window: expected three integers (wx, wy, wz), got {window!r}")
    w = tuple(_int_arg(v, "window") for v in w)
    if axis not in ("x", "y"):
        raise OctformerError(f"axis: expected 'x' or 'y', got {axis!r}")
    if not isinstance(shift, (bool, np.bool_)):
        raise OctformerError(f"shift: expected a bool, got {shift!r}")
    g = _int_arg(group_size, "group_size")
    d = _core.flatten_windows(coords, w, g, axis, bool(shift), b, num_threads)
    return FlattenPlan._from_dict(d)


def patches(serialization: Serialization, order: str | int, patch_size: int, *, num_threads: int | None = None) -> FlattenPlan:
    """PTv3-style patch plan: one order's (batch, code) sort cut into `patch_size` groups per sample."""
    if not isinstance(serialization, Serialization):
        raise OctformerError(f"serialization: expected a Serialization, got {type(serialization).__name__}")
    row = serialization.row(order)
    p = np.ascontiguousarray(serialization.perm[row], dtype=np.int64)
    d = _core.plan_from_perm(p, _int_arg(patch_size, "patch_size"), serialization.batch, num_threads)
    return FlattenPlan._from_dict(d)
