"""CS-Wild-Places (HOTFormerLoc) → float32 submaps + PointNetVLAD-style pickles.

Expected layout (per forest, per sequence, as in the CS-Wild-Places release)::

    SRC/<forest>/<sequence>/clouds/<timestamp>.pcd     ground or aerial submap (PCD, any DATA kind)
    SRC/<forest>/<sequence>/poses.csv                  timestamp + x, y (or northing, easting), ...

Every submap is read with ``octformer.io.read_points``, optionally voxel-downsampled
(``--voxel``, one point per occupied cell: the cell's mean), centred on its mean and
stored as ``DST/submaps/<forest>/<sequence>/<timestamp>.npy`` (float32). Sequences listed
in ``--eval-sequences`` (default: the last sequence of each forest) form the evaluation
runs (database + query, true matches within 30 m); the others give the training tuples
(positives within ``--positive-radius``, negatives beyond ``--negative-radius``).

    python datasets/cs_wild_places/prepare.py --src CS-Wild-Places --dst data/cs_wild_places
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from octformer.data.placerec import read_locations, write_place_recognition_pickles
from octformer.data.prepare import base_parser, run_jobs
from octformer.io import read_points

EVAL_RADIUS = 30.0


def convert(src: str, out: str, voxel: float) -> int:
    """Read, optionally voxel-average, centre and save one submap; returns its point count."""
    cloud = read_points(src)
    pts = cloud.points[np.isfinite(cloud.points).all(axis=1)].astype(np.float64)
    if voxel > 0 and len(pts):
        cell = np.floor((pts - pts.min(0)) / voxel).astype(np.int64)
        _, inverse, counts = np.unique(cell, axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        sums = np.zeros((len(counts), 3))
        np.add.at(sums, inverse, pts)
        pts = sums / counts[:, None]
    pts = pts - pts.mean(0) if len(pts) else pts
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(f".{Path(out).name}.tmp.npy")
    np.save(tmp, pts.astype(np.float32))
    tmp.replace(out)
    return len(pts)


def main(argv=None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--voxel", type=float, default=0.0, help="voxel size in metres for downsampling (0: keep every point)")
    parser.add_argument("--eval-sequences", nargs="*", help="sequence names used for evaluation (default: the last one per forest)")
    parser.add_argument("--positive-radius", type=float, default=15.0)
    parser.add_argument("--negative-radius", type=float, default=60.0)
    args = parser.parse_args(argv)
    seqs = sorted(p for p in args.src.glob("*/*") if (p / "poses.csv").exists() and (p / "clouds").is_dir()) if args.src.is_dir() else []
    if not seqs:
        print(f"--src: expected <forest>/<sequence>/clouds/*.pcd and poses.csv under {args.src}", file=sys.stderr)
        return 2
    eval_names = set(args.eval_sequences) if args.eval_sequences is not None else {max(s for s in seqs if s.parent == f).name for f in {s.parent for s in seqs}}
    jobs, train_paths, train_xy, eval_runs = [], [], [], []
    for seq in seqs:
        stamps, xy = read_locations(seq / "poses.csv")
        rel = [f"submaps/{seq.parent.name}/{seq.name}/{t}.npy" for t in stamps]
        jobs += [(r, (str(seq / "clouds" / f"{t}.pcd"), str(args.dst / r), args.voxel)) for r, t in zip(rel, stamps)]
        if seq.name in eval_names:
            eval_runs.append((rel, xy))
        else:
            train_paths += rel
            train_xy.append(xy)
    done = lambda rel: (args.dst / rel).exists()
    run_jobs(jobs, convert, dst=args.dst, workers=args.workers, force=args.force, desc="CS-Wild-Places submaps", done=done)
    train = write_place_recognition_pickles(
        args.dst, train_paths, train_xy, eval_runs, positive_radius=args.positive_radius, negative_radius=args.negative_radius, eval_radius=EVAL_RADIUS
    )
    print(f"{len(jobs)} submaps; {len(train)} training queries; {len(eval_runs)} evaluation runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
