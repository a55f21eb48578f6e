"""Collate: concatenate samples and build the batch octree inside the DataLoader worker."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from octformer.errors import OctformerError
from octformer.octree import build_octree

__all__ = ["PointCollate"]


class PointCollate:
    """Batch samples into flat tensors plus one batched :class:`octformer.Octree`.

    Output keys: ``points`` (N, 3) float32, ``features`` (N, C) float32, ``offsets``
    (B+1,) int64, ``labels`` (N,) int64 if present, ``octree`` (built with one native
    thread: parallelism comes from the workers) or ``model_input`` (a model's own input
    octree, when ``input_builder`` is given), ``names``, ``index`` (B,) int64.
    Every sample gets its own tight bounding cube (ocnn normalises each sample the same way).
    """

    def __init__(self, depth: int | None = 6, *, full_depth: int = 2, build: bool = True, num_threads: int = 1, input_builder=None):
        self.depth, self.full_depth, self.build, self.num_threads = depth, full_depth, build, num_threads
        self.input_builder = input_builder  # a model's build_input(points_list, features_list): its own octree, made here in the worker

    def __call__(self, samples: Sequence[dict]) -> dict:
        if not samples:
            raise OctformerError("samples: expected at least one sample in a batch, got none")
        counts = np.array([len(s["points"]) for s in samples], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        points = np.concatenate([s["points"] for s in samples]).astype(np.float32, copy=False)
        widths = {s["features"].shape[1] for s in samples}
        if len(widths) != 1:
            raise OctformerError(f"features: expected the same channel count in every sample, got {sorted(widths)}")
        features = np.concatenate([s["features"] for s in samples]).astype(np.float32, copy=False)
        batch = {
            "points": torch.from_numpy(points),
            "features": torch.from_numpy(features),
            "offsets": torch.from_numpy(offsets),
            "names": [s.get("name", "") for s in samples],
            "index": torch.tensor([int(s.get("index", -1)) for s in samples], dtype=torch.int64),
        }
        if "labels" in samples[0]:
            batch["labels"] = torch.from_numpy(np.concatenate([s["labels"] for s in samples]).astype(np.int64))
        if "normals" in samples[0]:
            batch["normals"] = torch.from_numpy(np.concatenate([s["normals"] for s in samples]).astype(np.float32))
        if self.input_builder is not None:
            batch["model_input"] = self.input_builder([s["points"] for s in samples], [s["features"] for s in samples])
        elif self.build:
            batch["octree"] = build_octree(points, self.depth, full_depth=self.full_depth, offsets=offsets, num_threads=self.num_threads)
        return batch
