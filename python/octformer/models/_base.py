"""The interface every registered model honours, so generic tests and benchmarks treat them alike."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from octformer.errors import OctformerError
from octformer.octree import Octree

__all__ = ["OctreeModel", "as_point_list"]


def as_point_list(points, features=None) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Normalise a cloud or a list of clouds ((N, 3) each) and optional per-point features."""
    if isinstance(points, (np.ndarray, torch.Tensor)):
        points = [points]
        if features is not None:
            features = [features]
    pts = []
    for i, p in enumerate(points):
        a = p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
        if a.ndim != 2 or a.shape[1] != 3 or a.shape[0] == 0:
            raise OctformerError(f"points[{i}]: expected a non-empty (N, 3) array, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise OctformerError(f"points[{i}]: expected finite coordinates")
        pts.append(a.astype(np.float64))
    if not pts:
        raise OctformerError("points: expected at least one cloud, got none")
    feats = None
    if features is not None:
        if len(features) != len(pts):
            raise OctformerError(f"features: expected one array per cloud ({len(pts)}), got {len(features)}")
        feats = []
        for i, (f, p) in enumerate(zip(features, pts)):
            a = f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f)
            a = a.reshape(a.shape[0], -1) if a.ndim == 1 else a
            if a.ndim != 2 or a.shape[0] != p.shape[0]:
                raise OctformerError(f"features[{i}]: expected ({p.shape[0]}, C), got shape {a.shape}")
            feats.append(a.astype(np.float32))
    return pts, feats


class OctreeModel(nn.Module):
    """Base of the registered backbones.

    ``build_input(points, features=None) -> Octree`` turns raw clouds into the model's
    input (a batch when given a list), ``forward(octree)`` returns the main output, and
    ``split_output(out, octree)`` cuts it into per-sample tensors.
    """

    output_kind: str = "tokens"  # "tokens": rows grouped by sample; "samples": one row per sample

    def build_input(self, points, features=None) -> Octree:  # pragma: no cover - abstract
        raise NotImplementedError

    def split_output(self, out: torch.Tensor, octree: Octree) -> list[torch.Tensor]:
        """Per-sample slices of ``out`` (rows of a flat token output, or rows of a (B, ...) output)."""
        if self.output_kind == "samples":
            return list(out.unbind(0))
        counts = self.output_counts(octree)
        return list(torch.split(out, counts))

    def output_counts(self, octree: Octree) -> list[int]:
        """Rows of the flat output that belong to each sample."""
        d = octree.depth
        return [int(c) for c in np.asarray(octree.batch_nnum_nempty)[d]]

    def num_params(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())

    @staticmethod
    def merge(trees: Sequence[Octree]) -> Octree:
        """One batch from per-sample trees."""
        return trees[0] if len(trees) == 1 else Octree.merge(trees)
