"""Map-style datasets over files written by ``datasets/<name>/prepare.py`` (nothing is downloaded).

Prepared segmentation layout (ScanNet, Waymo, SemanticKITTI)::

    OUT/meta.json            {"dataset", "version", "classes", "ignore_index", "splits": {split: [names]}, ...}
    OUT/samples/<name>.npz   points (N, 3) float32, labels (N,) int16/int32 (-1 = ignored),
                             optional colors (N, 3) uint8, intensity (N,) float32, labels200 (N,) ...

Place recognition (Oxford/PointNetVLAD, CS-Wild-Places) keeps PointNetVLAD's pickles
(``training_queries.pickle``, ``evaluation_database.pickle``, ``evaluation_query.pickle``)
whose ``query`` paths are relative to OUT. Shapes (OctGPT) are ``samples/<name>.npz``
with points and normals.

Indices may be plain ints or ``(epoch, index)`` keys (from :class:`GlobalBatchSampler`):
the augmentation generator is seeded from (seed, epoch, index) so data is identical
for any worker count and after ``--resume``.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from octformer.errors import OctformerError

__all__ = [
    "SampleDataset",
    "PreparedSegmentationDataset",
    "PlaceRecognitionDataset",
    "ShapeDataset",
    "SyntheticStreetDataset",
    "STREET_CLASSES",
    "street_scene",
    "read_meta",
    "GlobalBatchSampler",
]

PREPARED_VERSION = 1


def read_meta(root: str | Path) -> dict:
    """``OUT/meta.json`` of a prepared dataset, with a clear error when it is not one."""
    path = Path(root) / "meta.json"
    if not path.is_file():
        raise OctformerError(f"root: expected a prepared dataset folder containing meta.json (run datasets/<name>/prepare.py), got {str(root)!r}")
    meta = json.loads(path.read_text())
    if meta.get("version") != PREPARED_VERSION:
        raise OctformerError(f"{path}: expected prepared-data version {PREPARED_VERSION}, got {meta.get('version')!r}")
    return meta


class SampleDataset(torch.utils.data.Dataset):
    """Base: ``__getitem__((epoch, index))`` loads sample ``index`` and augments it with rng(seed, epoch, index)."""

    def __init__(self, transforms: Callable | None = None, seed: int = 0):
        self.transforms = transforms
        self.seed = int(seed)

    def load(self, index: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index: expected 0..{n - 1}, got {index}")
        index %= n
        sample = self.load(index)
        sample["index"] = index
        if self.transforms is not None:
            rng = np.random.default_rng([self.seed, int(epoch), index])
            sample = self.transforms(sample, rng)
        return sample


class PreparedSegmentationDataset(SampleDataset):
    """Per-point semantic segmentation samples from a prepared folder.

    ``features`` names the per-point arrays concatenated into ``features`` (N, C) float32:
    ``colors`` (scaled to [0, 1]), ``intensity``, ``height`` (z minus the sample's minimum z).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        label_key: str = "labels",
        features: Sequence[str] = (),
        transforms: Callable | None = None,
        seed: int = 0,
    ):
        super().__init__(transforms, seed)
        self.root = Path(root)
        self.meta = read_meta(self.root)
        splits = self.meta.get("splits", {})
        if split not in splits:
            raise OctformerError(f"split: expected one of {sorted(splits)} in {self.root / 'meta.json'}, got {split!r}")
        self.names = list(splits[split])
        self.split = split
        self.label_key = label_key
        self.features = tuple(features)
        classes = self.meta.get("classes_200" if label_key == "labels200" else "classes")
        self.class_names = tuple(classes or ())
        self.ignore_index = int(self.meta.get("ignore_index", -1))

    @property
    def num_classes(self) -> int:
        """Number of classes in the label map used (labels are 0..C-1, ignore_index otherwise)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> dict:
        path = self.root / "samples" / f"{self.names[index]}.npz"
        with np.load(path) as z:
            if self.label_key not in z:
                raise OctformerError(f"{path}: expected an array {self.label_key!r}, got {sorted(z.files)}")
            pts = z["points"].astype(np.float32)
            feats = []
            for f in self.features:
                if f == "height":
                    feats.append((pts[:, 2] - (pts[:, 2].min() if len(pts) else 0))[:, None])
                elif f == "colors" and "colors" in z:
                    feats.append(z["colors"].astype(np.float32) / 255.0)
                elif f in z:
                    v = z[f].astype(np.float32)
                    feats.append(v[:, None] if v.ndim == 1 else v)
                else:
                    raise OctformerError(f"features: {f!r} is not in {path} (has {sorted(z.files)})")
            sample = {"points": pts, "labels": z[self.label_key].astype(np.int64), "name": self.names[index]}
        sample["features"] = np.concatenate(feats, axis=1) if feats else np.zeros((len(pts), 0), np.float32)
        return sample


class PlaceRecognitionDataset(SampleDataset):
    """Submaps listed in PointNetVLAD-style pickles; ``split`` is ``train``, ``database`` or ``query``.

    For ``database``/``query`` the pickles hold one dict per run; ``run`` picks it. Training
    items carry ``positives`` and ``negatives`` (indices into the training list).
    """

    PICKLES = {"train": "training_queries.pickle", "database": "evaluation_database.pickle", "query": "evaluation_query.pickle"}

    def __init__(self, root: str | Path, split: str = "train", *, run: int = 0, transforms: Callable | None = None, seed: int = 0):
        super().__init__(transforms, seed)
        if split not in self.PICKLES:
            raise OctformerError(f"split: expected one of {sorted(self.PICKLES)}, got {split!r}")
        self.root = Path(root)
        path = self.root / self.PICKLES[split]
        if not path.is_file():
            raise OctformerError(f"root: expected {path.name} in {str(self.root)!r} (run datasets/oxford/prepare.py or datasets/cs_wild_places/prepare.py)")
        with open(path, "rb") as fh:
            data = pickle.load(fh)
        if split == "train":
            self.entries = data
        else:
            if not 0 <= run < len(data):
                raise OctformerError(f"run: expected 0..{len(data) - 1}, got {run}")
            self.entries = data[run]
        self.split = split
        self.keys = sorted(self.entries)

    def __len__(self) -> int:
        return len(self.keys)

    def entry(self, index: int) -> dict:
        """The pickle's dict for item ``index`` (query path, northing/easting, positives...)."""
        return self.entries[self.keys[index]]

    def load(self, index: int) -> dict:
        e = self.entry(index)
        rel = e["query"]
        path = self.root / rel
        if path.suffix == ".bin":
            pts = np.fromfile(path, dtype="<f8").reshape(-1, 3).astype(np.float32)
        else:
            pts = np.load(path).astype(np.float32)
        out = {"points": pts, "features": np.ones((len(pts), 1), np.float32), "name": rel}
        if "positives" in e:
            out["positives"] = np.asarray(e["positives"], dtype=np.int64)
        return out


class ShapeDataset(SampleDataset):
    """Surface samples of meshes (points + normals in [-1, 1]) for shape generation (OctGPT)."""

    def __init__(self, root: str | Path, split: str = "train", *, transforms: Callable | None = None, seed: int = 0):
        super().__init__(transforms, seed)
        self.root = Path(root)
        self.meta = read_meta(self.root)
        splits = self.meta.get("splits", {})
        if split not in splits:
            raise OctformerError(f"split: expected one of {sorted(splits)}, got {split!r}")
        self.names = list(splits[split])

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> dict:
        with np.load(self.root / "samples" / f"{self.names[index]}.npz") as z:
            pts = z["points"].astype(np.float32)
            return {"points": pts, "normals": z["normals"].astype(np.float32), "features": np.zeros((len(pts), 0), np.float32), "name": self.names[index]}


# ------------------------------------------------------------------ embedded synthetic data

STREET_CLASSES = ("ground", "building", "car", "pole", "trunk", "canopy")


def street_scene(rng: np.random.Generator, num_points: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """A random labelled street block: (N, 3) float32 metres and (N,) int64 class ids into STREET_CLASSES."""
    pts: list[np.ndarray] = []
    lab: list[np.ndarray] = []
    half = rng.uniform(7.0, 11.0)  # street half-width to the facades
    length = 40.0

    def add(p: np.ndarray, c: int) -> None:
        pts.append(p)
        lab.append(np.full(len(p), c, np.int64))

    budget = num_points
    n_ground = int(0.35 * budget)
    g = np.column_stack([rng.uniform(-length / 2, length / 2, n_ground), rng.uniform(-half, half, n_ground), rng.normal(0, 0.03, n_ground)])
    add(g, 0)
    n_wall = int(0.25 * budget)
    side = rng.choice([-1.0, 1.0], n_wall)
    wall_h = rng.uniform(6, 14, 2)
    w = np.column_stack([rng.uniform(-length / 2, length / 2, n_wall), side * half + rng.normal(0, 0.03, n_wall), rng.uniform(0, 1, n_wall) * np.where(side < 0, wall_h[0], wall_h[1])])
    add(w, 1)
    n_cars = rng.integers(2, 5)
    per_car = int(0.14 * budget / n_cars)
    for _ in range(n_cars):
        lo = np.array([rng.uniform(-length / 2 + 3, length / 2 - 7), rng.choice([-1, 1]) * (half - 2.6) - 0.9, 0.2])
        size = np.array([rng.uniform(3.8, 4.8), 1.8, rng.uniform(1.3, 1.7)])
        p = lo + rng.random((per_car, 3)) * size
        face = rng.integers(0, 5, per_car)
        ax = np.array([0, 0, 1, 1, 2])[face]
        hi_side = np.array([0, 1, 0, 1, 1])[face]
        p[np.arange(per_car), ax] = lo[ax] + hi_side * size[ax]
        add(p, 2)
    n_poles = rng.integers(2, 5)
    per_pole = int(0.06 * budget / n_poles)
    for _ in range(n_poles):
        x, y = rng.uniform(-length / 2, length / 2), rng.choice([-1, 1]) * (half - 1.0)
        t = rng.uniform(0, 2 * math.pi, per_pole)
        add(np.column_stack([x + 0.12 * np.cos(t), y + 0.12 * np.sin(t), rng.uniform(0, 7, per_pole)]), 3)
    n_trees = rng.integers(2, 5)
    per_tree = int(0.2 * budget / n_trees)
    for _ in range(n_trees):
        x, y = rng.uniform(-length / 2, length / 2), rng.choice([-1, 1]) * (half - 1.8)
        trunk_h = rng.uniform(2.0, 3.5)
        nt = per_tree // 4
        t = rng.uniform(0, 2 * math.pi, nt)
        add(np.column_stack([x + 0.25 * np.cos(t), y + 0.25 * np.sin(t), rng.uniform(0, trunk_h, nt)]), 4)
        nc = per_tree - nt
        d = rng.normal(size=(nc, 3))
        r = rng.uniform(1.4, 2.4)
        add(np.array([x, y, trunk_h + r * 0.9]) + r * d / np.linalg.norm(d, axis=1, keepdims=True) * rng.uniform(0.85, 1.0, (nc, 1)), 5)
    p = np.concatenate(pts)
    p += rng.normal(0, 0.02, p.shape)
    return p.astype(np.float32), np.concatenate(lab)


class SyntheticStreetDataset(SampleDataset):
    """Labelled street scenes generated on the fly from (split, index): the tiny default run's embedded data."""

    class_names = STREET_CLASSES
    ignore_index = -1

    def __init__(self, split: str = "train", *, size: int = 48, num_points: int = 4096, transforms: Callable | None = None, seed: int = 0):
        super().__init__(transforms, seed)
        if split not in ("train", "val"):
            raise OctformerError(f"split: expected 'train' or 'val', got {split!r}")
        self.split, self.size, self.num_points = split, int(size), int(num_points)

    @property
    def num_classes(self) -> int:
        """Six street classes."""
        return len(STREET_CLASSES)

    def __len__(self) -> int:
        return self.size

    def load(self, index: int) -> dict:
        rng = np.random.default_rng([12345, 0 if self.split == "train" else 1, index])
        pts, labels = street_scene(rng, self.num_points)
        feats = (pts[:, 2:3] / 10.0).astype(np.float32)  # height: what a lidar/indoor pipeline would give as a cue
        return {"points": pts, "labels": labels, "features": feats, "name": f"street_{self.split}_{index:04d}"}


# ------------------------------------------------------------------ deterministic sampling


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's share of each global batch as ``(epoch, index)`` keys, resumable at any step.

    The order of epoch e is a permutation seeded by (seed, e), identical on every rank;
    global batch s holds positions ``s*B .. s*B+B-1`` of it and rank r takes its
    contiguous slice of B / world_size items. The last incomplete global batch is dropped.
    """

    def __init__(self, dataset_len: int, global_batch: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True, start_step: int = 0, max_steps: int | None = None):
        if global_batch % world_size:
            raise OctformerError(f"batch_size: expected a multiple of the world size {world_size}, got {global_batch}")
        if dataset_len < global_batch:
            raise OctformerError(f"batch_size: expected at most the dataset size {dataset_len}, got {global_batch}")
        self.n, self.global_batch, self.rank, self.world = dataset_len, global_batch, rank, world_size
        self.seed, self.shuffle, self.start_step, self.max_steps = seed, shuffle, start_step, max_steps
        self.steps_per_epoch = dataset_len // global_batch

    def order(self, epoch: int) -> np.ndarray:
        """The dataset order of ``epoch``."""
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, 7919, epoch]).permutation(self.n)

    def __iter__(self):
        step = self.start_step
        local = self.global_batch // self.world
        while self.max_steps is None or step < self.max_steps:
            epoch, pos = divmod(step, self.steps_per_epoch)
            order = self.order(epoch)
            start = pos * self.global_batch + self.rank * local
            yield [(epoch, int(i)) for i in order[start : start + local]]
            step += 1

    def __len__(self) -> int:
        if self.max_steps is None:
            return self.steps_per_epoch
        return max(self.max_steps - self.start_step, 0)


def steps_for_epochs(dataset_len: int, global_batch: int, epochs: float) -> int:
    """Optimizer steps in ``epochs`` passes (incomplete global batches dropped)."""
    return int(math.floor(dataset_len // global_batch * epochs))
