"""Octree-side layers: a per-batch context of index tensors, CPE (depthwise 3×3×3 over the
neighbour tables), stride-2 down/up-sampling between depths, and global pooling per sample."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from octformer.errors import OctformerError
from octformer.octree import Octree
from octformer.ops import octree_dwconv
from octformer.nn.plans import TokenPlan, global_plan, window_plan

__all__ = [
    "OctreeContext",
    "OctreeDWConv",
    "CPE",
    "OctreeConv",
    "OctreeDownsample",
    "OctreeUpsample",
    "global_pool",
]


class OctreeContext:
    """Torch index tensors of one (batched) :class:`Octree`, built once per forward, cached per depth.

    Everything indexes the **non-empty** nodes of a depth, in key order, grouped by sample.
    """

    def __init__(self, octree: Octree, device: torch.device | str = "cpu") -> None:
        if not isinstance(octree, Octree):
            raise OctformerError(f"octree: expected an octformer.Octree, got {type(octree).__name__}")
        self.octree = octree.numpy()
        self.device = torch.device(device)
        self.depth = self.octree.depth
        self.batch_size = self.octree.batch_size
        self._cache: dict = {}

    def _get(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def num_nodes(self, depth: int) -> int:
        """Non-empty nodes at ``depth``."""
        return int(self.octree.nnum_nempty[depth])

    def batch(self, depth: int) -> torch.Tensor:
        """(M,) int64 sample of each non-empty node."""

        def make():
            t = self.octree
            return self._t(t.batch[depth][t.children[depth] >= 0].astype(np.int64))

        return self._get(("batch", depth), make)

    def counts(self, depth: int) -> torch.Tensor:
        """(B,) int64 non-empty nodes per sample."""
        return self._get(("counts", depth), lambda: self._t(self.octree.batch_nnum_nempty[depth].astype(np.int64)))

    def xyz(self, depth: int) -> torch.Tensor:
        """(M, 3) int64 cell coordinates of the non-empty nodes."""
        return self._get(("xyz", depth), lambda: self._t(self.octree.xyz(depth).astype(np.int64)))

    def neighbors(self, depth: int) -> torch.Tensor:
        """(M, 27) int64 neighbour table over non-empty nodes, -1 where absent."""
        return self._get(("neigh", depth), lambda: self._t(np.asarray(self.octree.neighbors(depth)).astype(np.int64)))

    def children(self, depth: int) -> torch.Tensor:
        """(M_{d-1}, 8) int64: non-empty rank at ``depth`` of each child of each non-empty node at depth-1, -1 if empty."""
        if not 1 <= depth <= self.depth:
            raise OctformerError(f"depth: expected 1..{self.depth} for children, got {depth}")

        def make():
            ch = self.octree.children[depth].astype(np.int64)
            return self._t(ch.reshape(-1, 8))

        return self._get(("children", depth), make)

    def parent(self, depth: int) -> torch.Tensor:
        """(M_d,) int64 non-empty rank at depth-1 of each non-empty node's parent."""

        def make():
            ch = self.octree.children[depth]
            return self._t((np.nonzero(ch >= 0)[0] // 8).astype(np.int64))

        return self._get(("parent", depth), make)

    def window_plan(self, depth: int, group_size: int, dilation: int = 1, shift: int = 0) -> TokenPlan:
        """Cached :func:`window_plan` over the non-empty nodes of ``depth``."""
        return self._get(
            ("wplan", depth, group_size, dilation, shift),
            lambda: window_plan(self.batch(depth), group_size, dilation, shift),
        )

    def global_plan(self, depth: int) -> TokenPlan:
        """Cached :func:`global_plan` (one sequence per sample) at ``depth``."""
        return self._get(("gplan", depth), lambda: global_plan(self.batch(depth)))


class OctreeDWConv(nn.Module):
    """Depthwise 3×3×3 convolution over a (M, 27) neighbour table: y_i = Σ_k w_k ⊙ x_{n(i,k)} (+ b)."""

    def __init__(self, channels: int, bias: bool = True, backend: str = "auto") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(27, channels))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        self.backend = backend  # octformer.ops backend: "auto" uses the compiled op when octformer-kernels is installed

    def forward(self, x: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
        if neighbors is None or neighbors.shape != (x.shape[0], 27):
            raise OctformerError(
                f"neighbors: expected a ({x.shape[0]}, 27) table, got {None if neighbors is None else tuple(neighbors.shape)}"
            )
        y = octree_dwconv(x, neighbors, self.weight, backend=self.backend)
        return y + self.bias if self.bias is not None else y


class CPE(nn.Module):
    """Conditional positional encoding: depthwise 3×3×3 octree conv + BatchNorm (OctFormer)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = OctreeDWConv(channels, bias=False)
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x, neighbors))


class OctreeConv(nn.Module):
    """Dense 3×3×3 octree convolution (gather 27 neighbours, one GEMM)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(27 * in_channels, out_channels, bias=bias)

    def forward(self, x: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
        pad = torch.cat([x, x.new_zeros(1, x.shape[1])])
        idx = torch.where(neighbors < 0, x.shape[0], neighbors)
        return self.linear(pad[idx].reshape(x.shape[0], -1))


class OctreeDownsample(nn.Module):
    """Stride-2, kernel-2 octree conv from depth d to d-1: each parent mixes its 8 children (+ BN)."""

    def __init__(self, in_channels: int, out_channels: int, norm: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(8 * in_channels, out_channels, bias=not norm)
        self.norm = nn.BatchNorm1d(out_channels) if norm else None

    def forward(self, x: torch.Tensor, children: torch.Tensor) -> torch.Tensor:
        """x (M_d, C) at the child depth; ``children`` (M_{d-1}, 8) from :meth:`OctreeContext.children`."""
        pad = torch.cat([x, x.new_zeros(1, x.shape[1])])
        idx = torch.where(children < 0, x.shape[0], children)
        y = self.linear(pad[idx].reshape(children.shape[0], -1))
        return self.norm(y) if self.norm is not None else y


class OctreeUpsample(nn.Module):
    """Nearest upsampling from depth d-1 to d (each node takes its parent's features), optional Linear."""

    def __init__(self, in_channels: int | None = None, out_channels: int | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels) if in_channels and out_channels else None

    def forward(self, x: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
        y = x[parent]
        return self.linear(y) if self.linear is not None else y


def global_pool(x: torch.Tensor, batch: torch.Tensor, num_samples: int, mode: str = "mean") -> torch.Tensor:
    """(N, C) tokens → (B, C) per-sample mean or max."""
    c = x.shape[1]
    idx = batch.long().unsqueeze(1).expand(-1, c)
    if mode == "mean":
        total = x.new_zeros(num_samples, c).scatter_add(0, idx, x)
        count = torch.bincount(batch.long(), minlength=num_samples).clamp(min=1).to(x.dtype)
        return total / count.unsqueeze(1)
    if mode == "max":
        return x.new_full((num_samples, c), float("-inf")).scatter_reduce(0, idx, x, reduce="amax", include_self=True)
    raise OctformerError(f"mode: expected 'mean' or 'max', got {mode!r}")
