"""ShapeNet-style meshes → surface samples and octrees for OctGPT.

Raw layout (ShapeNetCore v2)::

    SRC/<synset>/<model_id>/models/model_normalized.obj     (v / f lines; also .ply meshes)

Each mesh is normalised into [-1 + margin, 1 - margin]^3 (bounding-box centre to the
origin, largest side scaled), ``--points`` points are sampled uniformly on its surface
(area-weighted triangles, uniform barycentric coordinates, seeded from the model name)
with the triangle normals, and the octree of depth ``--depth`` is built over the
[-1, 1] cube. Output: ``DST/samples/<synset>_<model_id>.npz`` (points, normals float32),
``DST/octrees/<synset>_<model_id>.octf`` (octformer.save format), ``DST/meta.json``
(split: a deterministic 90/10 train/val by name hash unless ``--val-fraction`` says otherwise).

    python datasets/shapenet/prepare.py --src ShapeNetCore.v2 --dst data/shapenet --depth 8
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np

from octformer.data.prepare import atomic_write_bytes, base_parser, run_jobs, save_sample, write_meta


def read_mesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) float64 vertices and (F, 3) int64 triangles of an OBJ (polygons fan-triangulated) or PLY mesh."""
    if path.suffix.lower() == ".ply":
        from plyfile import PlyData

        ply = PlyData.read(str(path))
        v = np.stack([ply["vertex"][c] for c in ("x", "y", "z")], axis=1).astype(np.float64)
        faces = [np.asarray(f, dtype=np.int64) for f in ply["face"].data[ply["face"].data.dtype.names[0]]]
    else:
        verts, faces = [], []
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("v "):
                verts.append([float(t) for t in line.split()[1:4]])
            elif line.startswith("f "):
                idx = [int(t.split("/")[0]) for t in line.split()[1:]]
                faces.append(np.array([i - 1 if i > 0 else len(verts) + i for i in idx], dtype=np.int64))
        v = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
    tris = [np.stack([f[np.zeros(len(f) - 2, int)], f[1:-1], f[2:]], axis=1) for f in faces if len(f) >= 3]
    t = np.concatenate(tris) if tris else np.zeros((0, 3), np.int64)
    if len(t) == 0 or t.min() < 0 or t.max() >= len(v):
        raise ValueError(f"{path}: expected triangles indexing {len(v)} vertices")
    return v, t


def sample_surface(v: np.ndarray, t: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` area-weighted uniform surface samples and their (unit) triangle normals."""
    a, b, c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
    cross = np.cross(b - a, c - a)
    area = np.linalg.norm(cross, axis=1)
    if area.sum() <= 0:
        raise ValueError("mesh has zero surface area")
    tri = rng.choice(len(t), size=n, p=area / area.sum())
    u, w = rng.random(n), rng.random(n)
    flip = u + w > 1
    u[flip], w[flip] = 1 - u[flip], 1 - w[flip]
    pts = a[tri] + u[:, None] * (b[tri] - a[tri]) + w[:, None] * (c[tri] - a[tri])
    normals = cross[tri] / np.maximum(area[tri], 1e-30)[:, None]
    return pts, normals


def convert(mesh: str, dst: str, name: str, num_points: int, depth: int, margin: float) -> int:
    """One mesh → samples npz + OCTF octree; returns the number of non-empty leaves."""
    from octformer import build_octree
    from octformer.format import encode

    v, t = read_mesh(Path(mesh))
    centre = (v.min(0) + v.max(0)) / 2
    scale = (1.0 - margin) * 2.0 / max(float((v.max(0) - v.min(0)).max()), 1e-12)
    v = (v - centre) * scale
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    pts, normals = sample_surface(v, t, num_points, rng)
    pts = np.clip(pts, -1 + 1e-6, 1 - 1e-6).astype(np.float32)
    save_sample(Path(dst), name, points=pts, normals=normals.astype(np.float32))
    tree = build_octree(pts, depth, bbox=([-1, -1, -1], [1, 1, 1]), normals=normals.astype(np.float32), num_threads=1)
    folder = Path(dst) / "octrees"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / f"{name}.octf", encode(tree))
    return int(np.asarray(tree.nnum_nempty)[-1])


def main(argv=None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000, help="surface samples per mesh")
    parser.add_argument("--depth", type=int, default=8, help="octree depth over [-1, 1]^3")
    parser.add_argument("--margin", type=float, default=0.05, help="empty border inside the unit cube")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    args = parser.parse_args(argv)
    meshes = sorted(p for p in args.src.glob("*/*/models/*") if p.suffix.lower() in (".obj", ".ply")) if args.src.is_dir() else []
    if not meshes:
        print(f"--src: expected <synset>/<model_id>/models/*.obj (or .ply) under {args.src}", file=sys.stderr)
        return 2
    jobs = []
    for m in meshes:
        name = f"{m.parents[2].name}_{m.parents[1].name}"
        jobs.append((name, (str(m), str(args.dst), name, args.points, args.depth, args.margin)))
    run_jobs(jobs, convert, dst=args.dst, workers=args.workers, force=args.force, desc="ShapeNet meshes")
    names = [n for n, _ in jobs]
    val = [n for n in names if (zlib.crc32(n.encode()) % 1000) < args.val_fraction * 1000]
    write_meta(args.dst, "shapenet", classes=(), splits={"train": [n for n in names if n not in val], "val": val, "all": names}, depth=args.depth)
    print(f"wrote {len(names)} shapes to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
