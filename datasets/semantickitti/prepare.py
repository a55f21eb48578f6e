"""SemanticKITTI → prepared segmentation samples.

Raw layout (as downloaded): ``SRC/sequences/<NN>/velodyne/<frame>.bin`` (float32 N×4)
and ``SRC/sequences/<NN>/labels/<frame>.label`` (uint32: low 16 bits class, high 16 instance).
Output: ``DST/samples/<NN>_<frame>.npz`` with points, intensity, labels (19-class learning
map shifted to 0..18, -1 = unlabeled/outlier), instance; ``DST/meta.json`` with the
standard splits (train 00-07, 09-10; val 08; test 11-21, unlabelled).

    python datasets/semantickitti/prepare.py --src SemanticKITTI/dataset --dst data/semantickitti
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from octformer.data.prepare import base_parser, run_jobs, save_sample, write_meta
from octformer.io import SEMANTICKITTI_CLASSES, map_semantickitti_labels, read_semantickitti_labels

SPLITS = {"train": [0, 1, 2, 3, 4, 5, 6, 7, 9, 10], "val": [8], "test": list(range(11, 22))}


def convert(scan: str, label: str | None, dst: str, name: str) -> int:
    """One scan → one npz; returns its point count."""
    raw = np.fromfile(scan, dtype="<f4")
    if raw.size % 4:
        raise ValueError(f"{scan}: size {raw.size * 4} bytes is not a multiple of 16 (N×4 float32)")
    pts = raw.reshape(-1, 4)
    arrays = {"points": np.ascontiguousarray(pts[:, :3]), "intensity": np.ascontiguousarray(pts[:, 3])}
    if label is not None:
        sem, inst = read_semantickitti_labels(label)
        if len(sem) != len(pts):
            raise ValueError(f"{label}: {len(sem)} labels for {len(pts)} points")
        arrays["labels"] = map_semantickitti_labels(sem).astype(np.int16) - 1  # 0 (unlabeled) -> -1
        arrays["instance"] = inst.astype(np.int32)
    else:
        arrays["labels"] = np.full(len(pts), -1, np.int16)
    save_sample(Path(dst), name, **arrays)
    return len(pts)


def main(argv=None) -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    seq_root = args.src / "sequences"
    if not seq_root.is_dir():
        print(f"--src: expected a folder containing sequences/<NN>/velodyne, got {args.src}", file=sys.stderr)
        return 2
    jobs, splits = [], {k: [] for k in SPLITS}
    for seq_dir in sorted(p for p in seq_root.iterdir() if p.is_dir() and p.name.isdigit()):
        split = next((k for k, v in SPLITS.items() if int(seq_dir.name) in v), None)
        for scan in sorted((seq_dir / "velodyne").glob("*.bin")):
            label = seq_dir / "labels" / f"{scan.stem}.label"
            name = f"{seq_dir.name}_{scan.stem}"
            jobs.append((name, (str(scan), str(label) if label.exists() else None, str(args.dst), name)))
            if split:
                splits[split].append(name)
    if not jobs:
        print(f"--src: no scans found under {seq_root}/<NN>/velodyne/*.bin", file=sys.stderr)
        return 2
    run_jobs(jobs, convert, dst=args.dst, workers=args.workers, force=args.force, desc="SemanticKITTI")
    write_meta(args.dst, "semantickitti", classes=SEMANTICKITTI_CLASSES[1:], splits=splits)
    print(f"wrote {len(jobs)} scans to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
