"""NumPy augmentations for point-cloud samples.

A sample is a dict with ``points`` (N, 3) float32 and optional per-point arrays
(``features`` (N, C), ``labels`` (N,), ``normals`` (N, 3), ...). Every transform is
``t(sample, rng) -> sample`` with an explicit ``numpy.random.Generator``: datasets
derive ``rng`` from (seed, epoch, index), so augmentations do not depend on worker
count or process and a resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from octformer.errors import OctformerError

__all__ = [
    "Compose",
    "RandomRotate",
    "RandomFlip",
    "RandomScale",
    "RandomJitter",
    "ElasticDistortion",
    "RandomCrop",
    "CenterShift",
    "per_point_keys",
]

Transform = Callable[[dict, np.random.Generator], dict]


def per_point_keys(sample: dict) -> list[str]:
    """Keys whose arrays have one row per point (they are subset together by crops)."""
    n = len(sample["points"])
    return [k for k, v in sample.items() if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n]


def _rotation(axis: str, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


class Compose:
    """Apply transforms in order with the same generator."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        for t in self.transforms:
            sample = t(sample, rng)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomRotate:
    """Rotate points (and normals) about ``axis`` by a uniform angle in [-max_angle, max_angle] radians."""

    def __init__(self, max_angle: float = math.pi, axis: str = "z"):
        if axis not in ("x", "y", "z"):
            raise OctformerError(f"axis: expected 'x', 'y' or 'z', got {axis!r}")
        self.max_angle, self.axis = float(max_angle), axis

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        r = _rotation(self.axis, rng.uniform(-self.max_angle, self.max_angle)).astype(np.float32)
        sample["points"] = sample["points"] @ r.T
        if "normals" in sample:
            sample["normals"] = sample["normals"] @ r.T
        return sample


class RandomFlip:
    """Mirror each listed axis with probability ``p`` (x and y by default: gravity stays down)."""

    def __init__(self, axes: Sequence[int] = (0, 1), p: float = 0.5):
        self.axes, self.p = tuple(axes), float(p)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        for a in self.axes:
            if rng.random() < self.p:
                sample["points"] = sample["points"].copy()
                sample["points"][:, a] *= -1
                if "normals" in sample:
                    sample["normals"] = sample["normals"].copy()
                    sample["normals"][:, a] *= -1
        return sample


class RandomScale:
    """Scale points by a factor drawn uniformly from [low, high] (one factor, or one per axis when ``anisotropic``)."""

    def __init__(self, low: float = 0.9, high: float = 1.1, anisotropic: bool = False):
        if not 0 < low <= high:
            raise OctformerError(f"low, high: expected 0 < low <= high, got {low}, {high}")
        self.low, self.high, self.anisotropic = float(low), float(high), anisotropic

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        s = rng.uniform(self.low, self.high, 3 if self.anisotropic else 1).astype(np.float32)
        sample["points"] = sample["points"] * s
        return sample


class RandomJitter:
    """Add Gaussian noise of std ``sigma`` clipped to ±``clip`` to every coordinate."""

    def __init__(self, sigma: float = 0.01, clip: float = 0.05):
        self.sigma, self.clip = float(sigma), float(clip)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        noise = np.clip(rng.normal(scale=self.sigma, size=sample["points"].shape), -self.clip, self.clip)
        sample["points"] = (sample["points"] + noise).astype(np.float32)
        return sample


class ElasticDistortion:
    """Smooth random displacement field: noise on a grid of spacing ``granularity``, box-blurred, trilinearly sampled, times ``magnitude``."""

    def __init__(self, granularity: float = 0.2, magnitude: float = 0.4):
        if granularity <= 0:
            raise OctformerError(f"granularity: expected > 0, got {granularity}")
        self.granularity, self.magnitude = float(granularity), float(magnitude)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        pts = sample["points"].astype(np.float64)
        if len(pts) == 0:
            return sample
        lo = pts.min(0) - 2 * self.granularity
        dims = ((pts.max(0) - lo) // self.granularity).astype(int) + 4
        noise = rng.normal(size=(*dims, 3))
        for axis in range(3):  # separable 3-tap box blur, twice
            for _ in range(2):
                noise = (np.roll(noise, 1, axis) + noise + np.roll(noise, -1, axis)) / 3.0
        g = (pts - lo) / self.granularity
        i0 = np.floor(g).astype(int)
        f = g - i0
        disp = np.zeros_like(pts)
        for corner in range(8):
            o = np.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
            w = np.prod(np.where(o, f, 1 - f), axis=1)
            idx = np.minimum(i0 + o, dims - 1)
            disp += w[:, None] * noise[idx[:, 0], idx[:, 1], idx[:, 2]]
        sample["points"] = (pts + disp * self.magnitude).astype(np.float32)
        return sample


class RandomCrop:
    """Keep at most ``max_points`` points: the ones nearest to a random point of the cloud (all per-point arrays follow)."""

    def __init__(self, max_points: int):
        if max_points < 1:
            raise OctformerError(f"max_points: expected >= 1, got {max_points}")
        self.max_points = int(max_points)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        pts = sample["points"]
        if len(pts) <= self.max_points:
            return sample
        centre = pts[rng.integers(len(pts))]
        d2 = ((pts - centre) ** 2).sum(1)
        keep = np.sort(np.argpartition(d2, self.max_points - 1)[: self.max_points])
        for k in per_point_keys(sample):
            sample[k] = sample[k][keep]
        return sample


class CenterShift:
    """Translate so the bounding-box centre is at the origin (z: floor at 0 when ``keep_floor``)."""

    def __init__(self, keep_floor: bool = False):
        self.keep_floor = keep_floor

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        pts = sample["points"]
        if len(pts) == 0:
            return sample
        shift = (pts.min(0) + pts.max(0)) / 2
        if self.keep_floor:
            shift[2] = pts[:, 2].min()
        sample["points"] = (pts - shift).astype(np.float32)
        return sample


_REGISTRY = {
    "rotate": RandomRotate,
    "flip": RandomFlip,
    "scale": RandomScale,
    "jitter": RandomJitter,
    "elastic": ElasticDistortion,
    "crop": RandomCrop,
    "center": CenterShift,
}


def build_transforms(spec: Sequence[dict] | None) -> Compose | None:
    """Compose from a config list such as ``[{"name": "rotate", "max_angle": 3.14}, {"name": "crop", "max_points": 120000}]``."""
    if not spec:
        return None
    out = []
    for i, item in enumerate(spec):
        item = dict(item)
        name = item.pop("name", None)
        if name not in _REGISTRY:
            raise OctformerError(f"transforms[{i}].name: expected one of {sorted(_REGISTRY)}, got {name!r}")
        out.append(_REGISTRY[name](**item))
    return Compose(out)
