"""Shared benchmark helpers: seeded synthetic clouds (cached), timing, memory probes, load checks, RESULTS.md.

Inputs (all deterministic, seeded; generated once and cached under ``benchmarks/.cache/``):

- ``lidar100k``: one sweep of a simulated 64-beam spinning lidar over a street, scanner order.
- ``lidar1M``: 10 accumulated sweeps, sensor moving 1 m along the street per sweep.
- ``indoor200k``: a furnished 10 × 10 × 3 m room, area-uniform surface samples, 3 mm noise.
- ``oxford4096`` / ``oxford_batch``: PointNetVLAD-style submaps cut from ``lidar1M``
  (ground removed, voxel-downsampled to exactly 4,096 points, zero mean, scaled into [-1, 1]).

Every cloud also has a fixed normalisation cube (``CUBES``) so that octformer, ocnn and
Open3D all see the same points in ocnn's [-1, 1] cube.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
SHARED_DATA = Path(os.environ.get("OCTFORMER_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# bump when a generator changes, so stale caches are never reused
GEN_VERSION = "v1"

# (centre xyz, half side) of the fixed cube each cloud is normalised into [-1, 1] with
CUBES: dict[str, tuple[tuple[float, float, float], float]] = {
    "lidar100k": ((0.0, 0.0, 3.0), 75.0),  # 150 m cube; points span 150 × 150 × 10 m
    "lidar1M": ((0.0, 0.0, 3.0), 75.0),
    "indoor200k": ((5.0, 5.0, 1.5), 5.0),  # 10 m cube around the 10 × 10 × 3 m room
    "kitti000000": ((0.0, 0.0, 0.0), 80.0),  # real scan: |x|, |y| < 80 m
}

# ----------------------------------------------------------------------------- lidar scene

SENSOR_HEIGHT = 1.73  # m above the ground plane z = 0 (KITTI's HDL-64 mount)
MAX_RANGE = 75.0
RANGE_NOISE = 0.02
DROPOUT = 0.03
NUM_BEAMS = 64
BEAM_TOP_DEG, BEAM_BOTTOM_DEG = 2.0, -24.8


def _street_scene(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Axis-aligned boxes (lo, hi), vertical cylinders (x, y, r, z0, z1) and spheres (x, y, z, r) of a street."""
    boxes: list[tuple[float, ...]] = []
    cylinders: list[tuple[float, ...]] = []
    spheres: list[tuple[float, ...]] = []
    # street along x: road |y| < 6, sidewalks to |y| = 9, facades from |y| = 9, a back row further out
    for side in (-1.0, 1.0):
        for y_front, depth_range in ((9.0, (8.0, 20.0)), (38.0, (10.0, 25.0))):
            x = -90.0
            while x < 90.0:
                length = rng.uniform(10.0, 30.0)
                depth = rng.uniform(*depth_range)
                height = rng.uniform(4.0, 9.5)
                y0 = y_front + rng.uniform(0.0, 1.0)
                y_lo, y_hi = (y0, y0 + depth) if side > 0 else (-y0 - depth, -y0)
                boxes.append((x, y_lo, 0.0, x + length, y_hi, height))
                x += length + rng.uniform(2.0, 8.0)
        # parked cars, hedges, poles, trees, pedestrians
        x = -80.0
        while x < 80.0:
            if rng.random() < 0.7:
                yc = side * rng.uniform(4.8, 5.4)
                boxes.append((x, yc - 0.9, 0.25, x + 4.3, yc + 0.9, 1.5))
            x += 4.3 + rng.uniform(1.0, 6.0)
        x = -75.0
        while x < 75.0:
            length = rng.uniform(3.0, 12.0)
            y0 = side * 8.2
            boxes.append((x, min(y0, y0 + side * 0.7), 0.0, x + length, max(y0, y0 + side * 0.7), rng.uniform(0.8, 1.3)))
            x += length + rng.uniform(5.0, 20.0)
        for x in np.arange(-75.0, 75.0, 15.0) + rng.uniform(-2, 2):
            cylinders.append((x, side * 7.0, 0.1, 0.0, 6.0))  # poles
        for x in np.arange(-70.0, 70.0, 12.0) + rng.uniform(-3, 3):
            r_crown = rng.uniform(1.8, 3.0)
            cylinders.append((x, side * 7.6, 0.2, 0.0, 3.5))  # trunk
            spheres.append((x, side * 7.6, 3.5 + r_crown * 0.8, r_crown))
        for _ in range(12):
            cylinders.append((rng.uniform(-60, 60), side * rng.uniform(6.3, 8.0), 0.25, 0.0, 1.75))  # pedestrians
    # a few moving cars in the lanes
    for _ in range(6):
        x, yc = rng.uniform(-50, 50), rng.choice([-2.0, 2.0])
        boxes.append((x, yc - 0.9, 0.25, x + 4.5, yc + 0.9, 1.6))
    return {
        "boxes": np.asarray(boxes, dtype=np.float64),
        "cylinders": np.asarray(cylinders, dtype=np.float64),
        "spheres": np.asarray(spheres, dtype=np.float64),
    }


def _angular_rays(angle_lo: float, angle_hi: float, num_az: int) -> np.ndarray:
    """Azimuth column indices whose angle lies in [angle_lo, angle_hi] (radians, may wrap)."""
    step = 2 * math.pi / num_az
    j0 = math.floor(angle_lo / step)
    j1 = math.ceil(angle_hi / step)
    return np.arange(j0, j1 + 1) % num_az


def _cast_sweep(scene: dict[str, np.ndarray], origin: np.ndarray, num_az: int) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast one sweep: (R,) hit distance (inf where nothing within range) and (R, 3) unit directions.

    Rays are in firing order: azimuth column by column, 64 beams top to bottom in each.
    """
    az = np.arange(num_az) * (2 * math.pi / num_az)
    el = np.deg2rad(np.linspace(BEAM_TOP_DEG, BEAM_BOTTOM_DEG, NUM_BEAMS))
    ce, se = np.cos(el), np.sin(el)
    dirs = np.empty((num_az, NUM_BEAMS, 3))
    dirs[:, :, 0] = np.cos(az)[:, None] * ce[None, :]
    dirs[:, :, 1] = np.sin(az)[:, None] * ce[None, :]
    dirs[:, :, 2] = se[None, :]
    dirs = dirs.reshape(-1, 3)
    t_best = np.full(dirs.shape[0], np.inf)
    ox, oy, oz = origin

    down = dirs[:, 2] < 0
    t_best[down] = -oz / dirs[down, 2]  # ground plane z = 0

    def rays_of(cols: np.ndarray) -> np.ndarray:
        return (cols[:, None] * NUM_BEAMS + np.arange(NUM_BEAMS)[None, :]).ravel()

    def centre_interval(cx: float, cy: float, half: float) -> np.ndarray:
        centre = math.atan2(cy - oy, cx - ox)
        return rays_of(_angular_rays(centre - half, centre + half, num_az))

    for x0, y0, z0, x1, y1, z1 in scene["boxes"]:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        centre = math.atan2(cy - oy, cx - ox)
        corners = np.array([[x0, y0], [x0, y1], [x1, y0], [x1, y1]])
        rel = np.angle(np.exp(1j * (np.arctan2(corners[:, 1] - oy, corners[:, 0] - ox) - centre)))
        idx = rays_of(_angular_rays(centre + rel.min(), centre + rel.max(), num_az))
        d = dirs[idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            ta = (np.array([x0, y0, z0]) - origin) / d
            tb = (np.array([x1, y1, z1]) - origin) / d
        t_near = np.nanmax(np.minimum(ta, tb), axis=1)
        t_far = np.nanmin(np.maximum(ta, tb), axis=1)
        hit = (t_far >= t_near) & (t_near > 0)
        cur = t_best[idx]
        t_best[idx] = np.where(hit & (t_near < cur), t_near, cur)

    for cx, cy, r, z0, z1 in scene["cylinders"]:
        dist = math.hypot(cx - ox, cy - oy)
        if dist <= r:
            continue
        idx = centre_interval(cx, cy, math.asin(r / dist))
        d = dirs[idx]
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = 2 * (d[:, 0] * (ox - cx) + d[:, 1] * (oy - cy))
        c = (ox - cx) ** 2 + (oy - cy) ** 2 - r * r
        disc = b * b - 4 * a * c
        ok = disc >= 0
        t = np.where(ok, (-b - np.sqrt(np.where(ok, disc, 0))) / (2 * a), np.inf)
        z = oz + t * d[:, 2]
        hit = ok & (t > 0) & (z >= z0) & (z <= z1)
        cur = t_best[idx]
        t_best[idx] = np.where(hit & (t < cur), t, cur)

    for cx, cy, cz, r in scene["spheres"]:
        dist = math.hypot(cx - ox, cy - oy)
        if dist <= r:
            continue
        idx = centre_interval(cx, cy, math.asin(r / dist))
        d = dirs[idx]
        oc = origin - np.array([cx, cy, cz])
        b = 2 * (d @ oc)
        c = oc @ oc - r * r
        disc = b * b - 4 * c
        ok = disc >= 0
        t = np.where(ok, (-b - np.sqrt(np.where(ok, disc, 0))) / 2, np.inf)
        hit = ok & (t > 0)
        cur = t_best[idx]
        t_best[idx] = np.where(hit & (t < cur), t, cur)

    t_best[t_best > MAX_RANGE] = np.inf
    return t_best, dirs


def _lidar_sweep(scene: dict[str, np.ndarray], origin: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``n`` points of one sweep in firing order (noise, dropout, inside the 150 m cube)."""
    centre, half = CUBES["lidar1M"]
    num_az = 2048
    for _ in range(6):
        t, dirs = _cast_sweep(scene, origin, num_az)
        t = t + rng.normal(0.0, RANGE_NOISE, t.shape)
        keep = np.isfinite(t) & (rng.random(t.shape) >= DROPOUT)
        pts = origin[None, :] + t[keep, None] * dirs[keep]
        inside = np.all(np.abs(pts - np.asarray(centre)) < half * 0.999, axis=1)
        pts = pts[inside]
        if pts.shape[0] >= n:
            # the tail of the last columns is cut: at most ~1 % of a turn
            return pts[:n].astype(np.float32)
        num_az = int(math.ceil(num_az * n / max(pts.shape[0], 1) * 1.01)) + 8
    raise RuntimeError(f"lidar sweep: could not reach {n} points")


def _gen_lidar(num_sweeps: int, per_sweep: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scene = _street_scene(np.random.default_rng(1234))
    xs = [0.0] if num_sweeps == 1 else [-(num_sweeps - 1) / 2 + s for s in range(num_sweeps)]
    return np.concatenate([_lidar_sweep(scene, np.array([x, 0.0, SENSOR_HEIGHT]), per_sweep, rng) for x in xs])


# ----------------------------------------------------------------------------- indoor room


def _box_faces(lo: tuple[float, float, float], hi: tuple[float, float, float], bottom: bool = False) -> list[tuple]:
    """Faces (origin, u, v, holes) of an axis-aligned box; the bottom face only when asked."""
    lo_, hi_ = np.asarray(lo, float), np.asarray(hi, float)
    size = hi_ - lo_
    ex, ey, ez = np.diag(size)
    faces = [
        (lo_, ex, ey), (lo_ + ez, ex, ey),
        (lo_, ex, ez), (lo_ + ey, ex, ez),
        (lo_, ey, ez), (lo_ + ex, ey, ez),
    ]
    if not bottom:
        faces = faces[1:]
    return [(o, u, v, []) for o, u, v in faces]


def _gen_indoor(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lo, hi, height = 0.05, 9.95, 3.0
    side = hi - lo
    ex, ey, ez = np.eye(3)
    # rectangles: (origin, u, v, holes as (u0, u1, v0, v1) fractions)
    rects: list[tuple] = [
        (np.array([lo, lo, 0.0]), ex * side, ey * side, []),  # floor
        (np.array([lo, lo, 0.0]), ex * side, ez * height, [(0.1, 0.19, 0.0, 0.7)]),  # wall with a door
        (np.array([lo, hi, 0.0]), ex * side, ez * height, [(0.15, 0.35, 0.3, 0.75), (0.6, 0.8, 0.3, 0.75)]),
        (np.array([lo, lo, 0.0]), ey * side, ez * height, [(0.4, 0.6, 0.3, 0.75)]),
        (np.array([hi, lo, 0.0]), ey * side, ez * height, [(0.45, 0.54, 0.0, 0.7), (0.7, 0.9, 0.3, 0.75)]),
    ]
    # 4 tables (top + legs), 4 chairs around each, cabinets along a wall, a sofa
    for tx, ty in ((2.5, 3.0), (6.5, 3.0), (2.5, 6.8), (6.5, 6.8)):
        rects += _box_faces((tx, ty, 0.71), (tx + 1.6, ty + 0.9, 0.75), bottom=True)
        for lx, ly in ((tx + 0.05, ty + 0.05), (tx + 1.5, ty + 0.05), (tx + 0.05, ty + 0.8), (tx + 1.5, ty + 0.8)):
            rects += _box_faces((lx, ly, 0.0), (lx + 0.05, ly + 0.05, 0.71))
        for cx, cy, back in ((tx + 0.2, ty - 0.6, -1), (tx + 0.95, ty - 0.6, -1), (tx + 0.2, ty + 1.05, 1), (tx + 0.95, ty + 1.05, 1)):
            rects += _box_faces((cx, cy, 0.42), (cx + 0.45, cy + 0.45, 0.46), bottom=True)
            for lx, ly in ((cx, cy), (cx + 0.41, cy), (cx, cy + 0.41), (cx + 0.41, cy + 0.41)):
                rects += _box_faces((lx, ly, 0.0), (lx + 0.04, ly + 0.04, 0.42))
            by = cy if back < 0 else cy + 0.41
            rects += _box_faces((cx, by, 0.46), (cx + 0.45, by + 0.04, 0.9))
    for cx in (0.3, 1.35, 2.4):
        rects += _box_faces((cx, hi - 0.55, 0.0), (cx + 1.0, hi - 0.05, 2.0))
    rects += _box_faces((7.0, 9.0, 0.0), (9.2, 9.9, 0.45))  # sofa seat
    rects += _box_faces((7.0, 9.7, 0.45), (9.2, 9.9, 0.85))  # back
    rects += _box_faces((7.0, 9.0, 0.45), (7.2, 9.7, 0.65))  # arms
    rects += _box_faces((9.0, 9.0, 0.45), (9.2, 9.7, 0.65))

    def area(r: tuple) -> float:
        full = np.linalg.norm(r[1]) * np.linalg.norm(r[2])
        return full * (1.0 - sum((u1 - u0) * (v1 - v0) for u0, u1, v0, v1 in r[3]))

    areas = np.array([area(r) for r in rects])
    counts = rng.multinomial(n, areas / areas.sum())
    parts = []
    for (origin, u, v, holes), k in zip(rects, counts):
        got: list[np.ndarray] = []
        need = int(k)
        while need > 0:
            uv = rng.random((need + need // 2 + 16, 2))
            ok = np.ones(uv.shape[0], dtype=bool)
            for u0, u1, v0, v1 in holes:
                ok &= ~((uv[:, 0] >= u0) & (uv[:, 0] < u1) & (uv[:, 1] >= v0) & (uv[:, 1] < v1))
            uv = uv[ok][:need]
            got.append(origin + uv[:, :1] * u + uv[:, 1:] * v)
            need -= uv.shape[0]
        parts.extend(got)
    pts = np.concatenate(parts)
    pts += rng.normal(0.0, 0.003, pts.shape)
    pts = pts[rng.permutation(pts.shape[0])]
    return pts.astype(np.float32)


# ----------------------------------------------------------------------------- Oxford-like submaps


def _voxel_downsample_exact(pts: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Voxel-downsample to at least ``n`` occupied voxels (one random point each), then keep exactly ``n``."""
    shifted = pts - pts.min(axis=0)
    lo_v, hi_v = 0.05, 2.0
    best = None
    while hi_v / lo_v > 1.05:
        v = math.sqrt(lo_v * hi_v)
        cells = np.floor(shifted / v).astype(np.int64)
        packed = (cells[:, 0] << 42) | (cells[:, 1] << 21) | cells[:, 2]
        _, first = np.unique(packed, return_index=True)
        if first.shape[0] >= n:
            best, lo_v = first, v
        else:
            hi_v = v
    if best is None:
        raise RuntimeError(f"submap has fewer than {n} voxels at 5 cm")
    return pts[np.sort(rng.choice(best, size=n, replace=False))]


def _gen_oxford_batch(count: int, seed: int) -> np.ndarray:
    """(count, 4096, 3) float32 PointNetVLAD-style submaps: ground removed, 4,096 points, zero mean, in [-1, 1]."""
    lidar = load("lidar1M")
    centre, half = CUBES["lidar1M"]
    metric = lidar.astype(np.float64) * half + np.asarray(centre)
    non_ground = metric[metric[:, 2] > 0.3]
    rng = np.random.default_rng(seed)
    out = np.empty((count, 4096, 3), dtype=np.float32)
    for i in range(count):
        cx = rng.uniform(-12.0, 12.0)
        sub = non_ground[(np.abs(non_ground[:, 0] - cx) < 25.0) & (np.abs(non_ground[:, 1]) < 25.0)]
        sub = _voxel_downsample_exact(sub, 4096, rng)
        yaw = rng.uniform(0, 2 * math.pi)
        c, s = math.cos(yaw), math.sin(yaw)
        sub = sub @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]).T
        sub = sub - sub.mean(axis=0)
        sub = sub / np.abs(sub).max() * 0.999  # strictly inside ocnn's [-1, 1] cube
        out[i] = sub
    return out


# ----------------------------------------------------------------------------- loading


def _load_kitti() -> np.ndarray:
    path = SHARED_DATA / "semantickitti" / "velodyne" / "000000.bin"
    if not path.exists():
        raise FileNotFoundError(f"{path} (shared data not present)")
    return np.fromfile(path, dtype="<f4").reshape(-1, 4)[:, :3].copy()


_GENERATORS: dict[str, Callable[[], np.ndarray]] = {
    "lidar100k": lambda: _gen_lidar(1, 100_000, seed=0),
    "lidar1M": lambda: _gen_lidar(10, 100_000, seed=1),
    "indoor200k": lambda: _gen_indoor(200_000, seed=2),
    "oxford_batch": lambda: _gen_oxford_batch(128, seed=3),
}


def load_metric(name: str) -> np.ndarray:
    """(N, 3) float32 cloud in metres (generated once, then read from the cache)."""
    if name == "kitti000000":
        return _load_kitti()
    if name not in _GENERATORS:
        raise KeyError(f"unknown input {name!r}; known: {sorted(_GENERATORS) + ['kitti000000']}")
    CACHE_DIR.mkdir(exist_ok=True)
    path = CACHE_DIR / f"{name}-{GEN_VERSION}.npy"
    if path.exists():
        return np.load(path)
    pts = _GENERATORS[name]()
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, pts)
    os.replace(tmp, path)
    return pts


def load(name: str) -> np.ndarray:
    """The cloud normalised into ocnn's cube: (N, 3) float32 strictly inside [-1, 1].

    ``oxford4096`` is the first submap of ``oxford_batch``; ``oxford_batch`` is (128·4096, 3).
    """
    if name == "oxford4096":
        return np.ascontiguousarray(load_metric("oxford_batch")[0])
    if name == "oxford_batch":
        return np.ascontiguousarray(load_metric("oxford_batch").reshape(-1, 3))
    pts = load_metric(name)
    centre, half = CUBES[name]
    out = ((pts.astype(np.float64) - np.asarray(centre)) / half).astype(np.float32)
    if not np.all(np.abs(out) < 1.0):
        raise ValueError(f"{name}: points leave the normalisation cube (max |coord| {np.abs(out).max()})")
    return out


def batch_offsets(name: str) -> np.ndarray | None:
    """(B+1,) sample offsets for batched inputs, else None."""
    if name == "oxford_batch":
        return np.arange(129, dtype=np.int64) * 4096
    return None


def morton_keys(points: np.ndarray, depth: int) -> np.ndarray:
    """(N,) uint64 Morton keys (x bit most significant per triple) of points in [-1, 1] at ``depth``.

    Cells are computed in the points' own float type, (p + 1) * 2^(depth-1) as the builders do,
    so float32 clouds land in exactly the cells our build and ocnn's give them."""
    ftype = points.dtype.type if points.dtype in (np.float32, np.float64) else np.float64
    cells = np.floor((points.astype(ftype) + ftype(1.0)) * ftype(0.5 * (1 << depth))).astype(np.uint64)
    cells = np.clip(cells, 0, (1 << depth) - 1).astype(np.uint64)
    keys = np.zeros(points.shape[0], dtype=np.uint64)
    for i in range(depth):
        for axis, shift in ((0, 2), (1, 1), (2, 0)):
            bit = (cells[:, axis] >> np.uint64(i)) & np.uint64(1)
            keys |= bit << np.uint64(3 * i + shift)
    return keys


# ----------------------------------------------------------------------------- timing and memory


def time_interleaved(
    calls: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]],
    min_runs: int = 3,
    max_runs: int = 7,
    budget_s: float = 20.0,
    numbers: dict[str, int] | None = None,
    shuffle_seed: int | None = None,
    settle_s: float = 0.0,
) -> dict[str, list[float]]:
    """Time several (setup, fn) pairs in alternating rounds; returns seconds per call of fn(setup()).

    Setup is untimed and runs before every call (fresh inputs, no caching between repeats);
    its outputs are freed untimed after the sample (what fn returns is dropped as it returns,
    so each library pays for freeing its own results).
    With ``numbers[name] = k`` one sample is the mean of k back-to-back calls (k setups made
    first), so sub-millisecond calls are not lost in timer and scheduler noise. The order
    rotates each round so drift hits every side alike; with ``shuffle_seed`` it is a seeded
    random permutation instead, so no call always runs right after the same neighbour (a
    rotation keeps who follows whom, and a call after one that fills the caches pays for
    it). Stops after ``max_runs`` rounds, or after ``min_runs`` once the timed total passes
    ``budget_s``. With ``settle_s`` the machine idles that long (untimed) before each sample,
    so threads a library left spinning (an OpenMP pool spin-waits ~10 ms after torch ops on
    this VM) are asleep before the next library is timed instead of taking a core from it.
    """
    names = list(calls)
    numbers = numbers or {}
    times: dict[str, list[float]] = {k: [] for k in names}
    spent = 0.0
    for r in range(max_runs):
        if shuffle_seed is None:
            order = names[r % len(names):] + names[: r % len(names)]
        else:
            order = [names[i] for i in np.random.default_rng([shuffle_seed, r]).permutation(len(names))]
        for name in order:
            setup, fn = calls[name]
            k = max(1, int(numbers.get(name, 1)))
            args = [setup() for _ in range(k)]
            if settle_s > 0:
                time.sleep(settle_s)
            t0 = time.perf_counter()
            for arg in args:
                fn(arg)
            dt = time.perf_counter() - t0
            # free this sample's inputs (and what fn cached on them) now, untimed: the loop
            # variable would otherwise keep the last one alive until the next sample's loop
            # rebinds it, inside that sample's timing (ocnn's neighbour octree took ~50 ms
            # to unmap, charged to whichever library ran next)
            del args, arg
            times[name].append(dt / k)
            spent += dt
        if r + 1 >= min_runs and spent > budget_s:
            break
    return times


def calls_per_sample(first_call_s: float, min_sample_s: float = 0.05, cap: int = 200) -> int:
    """How many back-to-back calls make one timing sample last at least ``min_sample_s``."""
    return max(1, min(cap, math.ceil(min_sample_s / max(first_call_s, 1e-6))))


def summarize(times: list[float]) -> dict[str, float]:
    """Median and min in milliseconds."""
    arr = np.asarray(times) * 1e3
    return {"median_ms": float(np.median(arr)), "min_ms": float(arr.min()), "runs": int(arr.size)}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(fn: Callable[[], Any]) -> dict[str, float]:
    """Peak RSS during one call of ``fn`` and the rise over RSS just before it (MiB).

    VmHWM is reset to the current RSS through /proc/self/clear_refs, so the call should be
    the first of its kind in a fresh process (otherwise freed memory is reused and the
    rise reads low).
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    out = fn()
    peak = _status_kib("VmHWM")
    del out
    return {"rss_before_mib": before / 1024, "peak_mib": peak / 1024, "dpeak_mib": (peak - before) / 1024}


# ----------------------------------------------------------------------------- machine load

_HZ = os.sysconf("SC_CLK_TCK")


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return total - idle, total


def busy_cores(interval_s: float = 1.0) -> float:
    """Cores in use by everything on the machine over ``interval_s`` (this process sleeps meanwhile)."""
    b0, _ = _cpu_jiffies()
    t0 = time.monotonic()
    time.sleep(interval_s)
    b1, _ = _cpu_jiffies()
    return (b1 - b0) / _HZ / (time.monotonic() - t0)


def wait_for_quiet(max_busy: float = 0.25, timeout_s: float = 120.0, log: Callable[[str], None] = print) -> dict[str, float]:
    """Wait until other processes use < ``max_busy`` cores (1 s samples) or ``timeout_s`` passes."""
    t0 = time.monotonic()
    load = busy_cores()
    while load >= max_busy and time.monotonic() - t0 < timeout_s:
        load = busy_cores()
    waited = time.monotonic() - t0
    if load >= max_busy:
        log(f"  machine not quiet after {waited:.0f} s ({load:.2f} cores busy); running anyway")
    return {"busy_before": load, "waited_s": waited}


def run_worker(args: list[str], threads: int, timeout_s: float = 900.0) -> dict[str, Any]:
    """Run ``python <args>`` in a fresh process with T threads; parse its last stdout line as JSON.

    Adds ``other_load``: cores used by other processes while it ran (machine busy time
    minus the worker's own CPU time, over its wall time).
    """
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OCTFORMER_NUM_THREADS"):
        env[var] = str(threads)
    b0, _ = _cpu_jiffies()
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"worker {args} timed out after {timeout_s} s") from None
    wall = time.monotonic() - t0
    b1, _ = _cpu_jiffies()
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed (exit {proc.returncode}):\n{err[-3000:]}")
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    result = json.loads(lines[-1])
    # the worker's own CPU time (children's rusage is cumulative over all waited children)
    own = result.get("cpu_s", 0.0)
    result["other_load"] = max(0.0, ((b1 - b0) / _HZ - own) / wall)
    return result


def process_cpu_s() -> float:
    """CPU seconds used by this process so far (all threads)."""
    t = os.times()
    return t.user + t.system


# ----------------------------------------------------------------------------- results


def machine_info() -> dict[str, str]:
    """CPU model, core count, memory and package versions for the RESULTS.md header."""
    info: dict[str, str] = {}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
            elif line.startswith("Hypervisor vendor:"):
                info["hypervisor"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    info["cores"] = str(os.cpu_count())
    with open("/proc/meminfo") as f:
        info["ram_gib"] = f"{int(f.readline().split()[1]) / 2**20:.0f}"
    info["python"] = platform.python_version()
    for mod in ("numpy", "torch", "ocnn", "open3d", "octformer"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001 - recorded, not hidden
            info[mod] = f"unavailable ({type(exc).__name__})"
    try:
        from octformer import _core

        built = _dt.datetime.fromtimestamp(os.path.getmtime(_core.__file__), _dt.timezone.utc)
        info["core_built"] = built.strftime("%Y-%m-%d %H:%M UTC")
    except Exception as exc:  # noqa: BLE001 - recorded, not hidden
        info["core_built"] = f"unknown ({type(exc).__name__})"
    try:
        info["commit"] = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no", "rust", "python"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()
        if dirty:
            info["commit"] += " + uncommitted changes in rust/ or python/"
    except OSError:
        pass
    return info


def append_results(title: str, body: str, command: str) -> None:
    """Append a dated section (machine, versions, command, body) to benchmarks/RESULTS.md."""
    info = machine_info()
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = ", ".join(f"{k} {info[k]}" for k in ("python", "numpy", "torch", "ocnn", "open3d", "octformer") if k in info)
    head = [
        f"## {title} — {now}",
        "",
        f"- Machine: {info.get('cpu', '?')} ({info.get('hypervisor', 'bare metal')} VM), "
        f"{info['cores']} cores, {info['ram_gib']} GiB RAM",
        f"- Versions: {versions}; octformer commit {info.get('commit', '?')}, native module built {info.get('core_built', '?')}",
        f"- Command: `{command}`",
        "",
    ]
    new = not RESULTS_MD.exists()
    with open(RESULTS_MD, "a") as f:
        if new:
            f.write("# Benchmark results\n\nDated sections appended by the scripts in this folder (newest last).\n\n")
        f.write("\n".join(head) + body.rstrip() + "\n\n")


def fmt_ms(s: dict[str, float] | None) -> str:
    """'median (min)' in ms with sensible precision."""
    if s is None:
        return "–"

    def f(x: float) -> str:
        return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"

    return f"{f(s['median_ms'])} ({f(s['min_ms'])})"
