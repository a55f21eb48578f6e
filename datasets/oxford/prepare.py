"""Oxford RobotCar (PointNetVLAD benchmark) → float32 submaps + PointNetVLAD-style training/evaluation pickles.

Raw layout (PointNetVLAD's ``benchmark_datasets``)::

    SRC/oxford/<run>/pointcloud_20m_10overlap/<timestamp>.bin    float64 4096×3, training submaps
    SRC/oxford/<run>/pointcloud_locations_20m_10overlap.csv      timestamp,northing,easting
    SRC/oxford/<run>/pointcloud_20m/<timestamp>.bin              evaluation submaps
    SRC/oxford/<run>/pointcloud_locations_20m.csv

Training tuples use the 10-overlap submaps outside the four test regions (squares of
half-width 150 m around PointNetVLAD's P1..P4): positives within 10 m, negatives beyond
50 m. Evaluation uses the 20 m submaps inside the test regions, one database and one
query set per run, true matches within 25 m. Every submap is checked (exactly 4096×3
finite float64) and stored as ``DST/submaps/<run>/<folder>/<timestamp>.npy`` (float32);
the pickles' ``query`` paths are relative to DST.

    python datasets/oxford/prepare.py --src benchmark_datasets --dst data/oxford
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from octformer.data.placerec import (
    in_regions,
    read_locations,
    write_place_recognition_pickles,
)
from octformer.data.prepare import base_parser, run_jobs

TEST_REGION_CENTRES = [(5735712.768124, 620084.402381), (5735611.299219, 620540.270327), (5735237.358209, 620543.094379), (5734749.303802, 619932.693364)]
TEST_REGION_HALF_WIDTH = 150.0
POSITIVE_RADIUS, NEGATIVE_RADIUS, EVAL_RADIUS = 10.0, 50.0, 25.0
NUM_POINTS = 4096


def convert(src: str, out: str) -> None:
    """Check one PointNetVLAD .bin and store it as float32 .npy."""
    raw = np.fromfile(src, dtype="<f8")
    if raw.size != NUM_POINTS * 3:
        raise ValueError(f"{src}: expected {NUM_POINTS * 3 * 8} bytes (4096×3 float64), got {raw.size * 8}")
    pts = raw.reshape(NUM_POINTS, 3)
    if not np.isfinite(pts).all():
        raise ValueError(f"{src}: non-finite coordinates")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(f".{Path(out).name}.tmp.npy")
    np.save(tmp, pts.astype(np.float32))
    tmp.replace(out)


def main(argv=None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--subdir", default="oxford", help="dataset folder under --src (default: oxford)")
    args = parser.parse_args(argv)
    root = args.src / args.subdir
    runs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not runs:
        print(f"--src: expected {args.subdir}/<run>/pointcloud_20m*/ folders under {args.src}", file=sys.stderr)
        return 2
    jobs, train_paths, train_xy, eval_runs = [], [], [], []
    for run in runs:
        for folder, csv_name, is_train in (("pointcloud_20m_10overlap", "pointcloud_locations_20m_10overlap.csv", True), ("pointcloud_20m", "pointcloud_locations_20m.csv", False)):
            if not (run / csv_name).exists():
                continue
            stamps, xy = read_locations(run / csv_name)
            rel = [f"submaps/{run.name}/{folder}/{t}.npy" for t in stamps]
            jobs += [(r, (str(run / folder / f"{t}.bin"), str(args.dst / r))) for r, t in zip(rel, stamps)]
            test = in_regions(xy, TEST_REGION_CENTRES, TEST_REGION_HALF_WIDTH)
            if is_train:
                train_paths += [r for r, t in zip(rel, test) if not t]
                train_xy.append(xy[~test])
            else:
                eval_runs.append(([r for r, t in zip(rel, test) if t], xy[test]))
    done = lambda rel: (args.dst / rel).exists()
    run_jobs(jobs, convert, dst=args.dst, workers=args.workers, force=args.force, desc="Oxford submaps", done=done)
    train = write_place_recognition_pickles(
        args.dst, train_paths, train_xy, eval_runs, positive_radius=POSITIVE_RADIUS, negative_radius=NEGATIVE_RADIUS, eval_radius=EVAL_RADIUS
    )
    print(f"{len(jobs)} submaps; {len(train)} training queries; {len(eval_runs)} evaluation runs ({sum(len(p) for p, _ in eval_runs)} submaps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
