"""Waymo Open Dataset v2 (parquet) → prepared lidar segmentation samples; pyarrow only, no TensorFlow.

Raw layout (the v2 download)::

    SRC/<split>/lidar/<segment>.parquet               range images per frame and laser
    SRC/<split>/lidar_calibration/<segment>.parquet   extrinsic + beam inclinations per laser
    SRC/<split>/lidar_segmentation/<segment>.parquet  (instance, semantic) range images, labelled frames only

Keys are ``key.segment_context_name``, ``key.frame_timestamp_micros``, ``key.laser_name``.
For every labelled frame of the TOP lidar (laser 1) the first-return range image
[H, W, 4] (range, intensity, elongation, is_in_nlz) is turned into vehicle-frame points
as Waymo's range-image utilities do (column azimuth from +pi down to -pi corrected by
the extrinsic yaw, row inclination from the reversed beam inclinations or a uniform
min..max spread, then the extrinsic transform). Pixels with range <= 0 are dropped.

Output ``DST/samples/<segment>_<timestamp>.npz``: points (N, 3) float32, intensity,
elongation (N,) float32, labels (N,) int16 = semantic class - 1 (0..21; -1 = undefined),
instance (N,) int32, pixel (N, 2) int32 (row, column); ``DST/segments/<segment>.json``
lists a finished segment's frames (resume marker); ``DST/meta.json`` has splits = the
``<split>`` folder names.

    python datasets/waymo/prepare.py --src waymo_open_dataset_v_2_0_1 --dst data/waymo
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from octformer.data.prepare import atomic_write_bytes, base_parser, run_jobs, save_sample, write_meta

TOP_LASER = 1
CLASS_NAMES = (
    "car", "truck", "bus", "other_vehicle", "motorcyclist", "bicyclist", "pedestrian", "sign",
    "traffic_light", "pole", "construction_cone", "bicycle", "motorcycle", "building", "vegetation",
    "tree_trunk", "curb", "road", "lane_marker", "other_ground", "walkable", "sidewalk",
)
KEY_SEGMENT = "key.segment_context_name"
KEY_TIME = "key.frame_timestamp_micros"
KEY_LASER = "key.laser_name"
RI1 = "[LiDARComponent].range_image_return1"
SEG1 = "[LiDARSegmentationLabelComponent].range_image_return1"
CAL = "[LiDARCalibrationComponent]"


def range_image_to_points(range_image: np.ndarray, extrinsic: np.ndarray, inclinations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, C) range image → (H, W, 3) vehicle-frame points and the (H, W) valid mask (range > 0).

    ``inclinations`` are the H beam inclinations in ascending order (as stored); row 0 of
    the image is the highest beam.
    """
    h, w = range_image.shape[:2]
    rng = range_image[..., 0].astype(np.float64)
    az_correction = math.atan2(extrinsic[1, 0], extrinsic[0, 0])
    ratios = (np.arange(w, 0, -1, dtype=np.float64) - 0.5) / w
    azimuth = (ratios * 2.0 - 1.0) * math.pi - az_correction
    incl = np.asarray(inclinations, dtype=np.float64)[::-1]
    cos_i, sin_i = np.cos(incl)[:, None], np.sin(incl)[:, None]
    x = np.cos(azimuth)[None, :] * cos_i * rng
    y = np.sin(azimuth)[None, :] * cos_i * rng
    z = sin_i * rng
    pts = np.stack([x, y, z], axis=-1) @ extrinsic[:3, :3].T + extrinsic[:3, 3]
    return pts, rng > 0


def beam_inclinations(row: dict, height: int) -> np.ndarray:
    """Per-beam inclinations (ascending) from a calibration row: explicit values, else uniform in [min, max]."""
    values = row.get(f"{CAL}.beam_inclination.values")
    if values is not None and len(values):
        if len(values) != height:
            raise ValueError(f"beam_inclination.values has {len(values)} entries, the range image has {height} rows")
        return np.asarray(values, dtype=np.float64)
    lo, hi = row[f"{CAL}.beam_inclination.min"], row[f"{CAL}.beam_inclination.max"]
    return (np.arange(height) + 0.5) / height * (hi - lo) + lo


def _as_array(values, shape, dtype) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype)
    shape = [int(s) for s in shape]
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"range image has {arr.size} values, its shape {shape} needs {int(np.prod(shape))}")
    return arr.reshape(shape)


def convert_segment(split_dir: str, segment: str, dst: str) -> list[str]:
    """All labelled TOP-lidar frames of one segment → npz files; returns the sample names."""
    import pyarrow.parquet as pq

    root = Path(split_dir)
    lidar = pq.read_table(root / "lidar" / f"{segment}.parquet").to_pylist()
    calib = {r[KEY_LASER]: r for r in pq.read_table(root / "lidar_calibration" / f"{segment}.parquet").to_pylist()}
    seg_path = root / "lidar_segmentation" / f"{segment}.parquet"
    labels = {}
    if seg_path.exists():
        for r in pq.read_table(seg_path).to_pylist():
            if r[KEY_LASER] == TOP_LASER:
                labels[r[KEY_TIME]] = r
    if TOP_LASER not in calib:
        raise ValueError(f"{segment}: no calibration row for the TOP lidar (laser_name {TOP_LASER})")
    cal = calib[TOP_LASER]
    extrinsic = np.asarray(cal[f"{CAL}.extrinsic.transform"], dtype=np.float64).reshape(4, 4)
    names = []
    for row in lidar:
        if row[KEY_LASER] != TOP_LASER or row[KEY_TIME] not in labels:
            continue
        ri = _as_array(row[f"{RI1}.values"], row[f"{RI1}.shape"], np.float32)
        lab = _as_array(labels[row[KEY_TIME]][f"{SEG1}.values"], labels[row[KEY_TIME]][f"{SEG1}.shape"], np.int32)
        if lab.shape[:2] != ri.shape[:2]:
            raise ValueError(f"{segment} @ {row[KEY_TIME]}: label image {lab.shape[:2]} vs range image {ri.shape[:2]}")
        pts, valid = range_image_to_points(ri, extrinsic, beam_inclinations(cal, ri.shape[0]))
        rows_, cols = np.nonzero(valid)
        name = f"{segment}_{row[KEY_TIME]}"
        save_sample(
            Path(dst), name,
            points=pts[valid].astype(np.float32),
            intensity=ri[..., 1][valid].astype(np.float32),
            elongation=ri[..., 2][valid].astype(np.float32),
            labels=(lab[..., 1][valid] - 1).astype(np.int16),
            instance=lab[..., 0][valid].astype(np.int32),
            pixel=np.stack([rows_, cols], axis=1).astype(np.int32),
        )
        names.append(name)
    folder = Path(dst) / "segments"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / f"{segment}.json", json.dumps({"split": root.name, "frames": names}).encode())
    return names


def main(argv=None) -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    jobs = []
    for split_dir in sorted(p for p in args.src.iterdir() if (p / "lidar").is_dir()) if args.src.is_dir() else []:
        for f in sorted((split_dir / "lidar").glob("*.parquet")):
            jobs.append((f.stem, (str(split_dir), f.stem, str(args.dst))))
    if not jobs:
        print(f"--src: expected <split>/lidar/<segment>.parquet files under {args.src}", file=sys.stderr)
        return 2
    marker = lambda seg: (args.dst / "segments" / f"{seg}.json").exists()  # noqa: E731
    run_jobs(jobs, convert_segment, dst=args.dst, workers=args.workers, force=args.force, desc="Waymo v2", done=marker)
    splits: dict[str, list[str]] = {}
    for seg, _ in jobs:
        info = json.loads((args.dst / "segments" / f"{seg}.json").read_text())
        splits.setdefault(info["split"], []).extend(info["frames"])
    write_meta(args.dst, "waymo", classes=CLASS_NAMES, splits=splits)
    print(f"wrote {sum(len(v) for v in splits.values())} labelled frames from {len(jobs)} segments to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
