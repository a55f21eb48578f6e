"""A small stand-in segmentation network used by the tiny default run until ``octformer.models`` ships Volt.

It is *not* a product model: a per-point MLP over normalised xyz + input features,
with leaf-voxel context (mean of hidden features over each point's octree leaf, via
``octree.point_leaf``, plus coarser cells of the same cube) so the collated octree is used.
"""

from __future__ import annotations

import torch
from torch import nn

STANDIN_NAME = "standin_point_mlp"


class PointVoxelMLPStandIn(nn.Module):
    """Per-point MLP with octree-leaf average pooling; maps a collated batch to (N, num_classes) logits."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 64, coarse_levels: tuple[int, ...] = (2, 4)):
        super().__init__()
        self.coarse_levels = tuple(coarse_levels)
        self.encode = nn.Sequential(nn.Linear(3 + in_channels, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.decode = nn.Sequential(nn.Linear((2 + len(self.coarse_levels)) * hidden, hidden), nn.GELU(), nn.Linear(hidden, num_classes))

    @staticmethod
    def _mean_by(index: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Average of ``h`` rows sharing an ``index`` value, gathered back to every row."""
        n = int(index.max()) + 1 if index.numel() else 0
        pooled = torch.zeros(n, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, index, h)
        count = torch.zeros(n, dtype=h.dtype, device=h.device).index_add_(0, index, torch.ones_like(index, dtype=h.dtype))
        return (pooled / count.clamp_min(1)[:, None])[index]

    def forward(self, batch: dict) -> torch.Tensor:
        octree = batch["octree"]
        points, offsets = batch["points"], batch["offsets"]
        counts = offsets[1:] - offsets[:-1]
        sample = torch.repeat_interleave(torch.arange(len(counts), device=points.device), counts)
        origin = torch.as_tensor(octree.origin, dtype=torch.float32, device=points.device)[sample]
        extent = torch.as_tensor(octree.voxel_size, dtype=torch.float32, device=points.device)[sample] * float(2**octree.depth)
        local = (points - origin) / extent * 2.0 - 1.0  # each sample's cube -> [-1, 1]
        h = self.encode(torch.cat([local, batch["features"]], dim=1))
        leaf = torch.as_tensor(octree.point_leaf, dtype=torch.int64, device=points.device)
        parts = [h, self._mean_by(leaf, h)]
        for level in self.coarse_levels:  # coarser cells of the same cube: 2^level per axis
            cells = 1 << level
            ijk = ((local + 1) * 0.5 * cells).long().clamp_(0, cells - 1)
            cell = ((sample * cells + ijk[:, 0]) * cells + ijk[:, 1]) * cells + ijk[:, 2]
            parts.append(self._mean_by(torch.unique(cell, return_inverse=True)[1], h))
        return self.decode(torch.cat(parts, dim=1))
