"""Each datasets/<name>/prepare.py on a fixture in the dataset's real on-disk layout, built here from real geometry.

The fixtures are derived from the SemanticKITTI scan in ../shared/data (CC BY-NC-SA:
kept in pytest's temp folder, never in the package). The Dataset classes read the output.
"""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from octformer.data import PlaceRecognitionDataset, PreparedSegmentationDataset, ShapeDataset

REPO = Path(__file__).resolve().parents[1]


def run_prepare(name: str, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(REPO / "datasets" / name / "prepare.py"), *args, "--workers", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def kitti(shared_data):
    """The real SemanticKITTI scan: (N, 4) float32 and raw uint32 labels."""
    scan = np.fromfile(shared_data / "semantickitti" / "velodyne" / "000000.bin", dtype="<f4").reshape(-1, 4)
    labels = np.fromfile(shared_data / "semantickitti" / "labels" / "000000.label", dtype="<u4")
    return scan, labels


# ------------------------------------------------------------------ SemanticKITTI


def test_semantickitti_prepare_and_dataset(tmp_path, kitti, shared_data):
    scan, raw = kitti
    src = tmp_path / "dataset" / "sequences"
    for seq, frames in (("08", ("000000",)), ("00", ("000000", "000001"))):
        for k, frame in enumerate(frames):
            (src / seq / "velodyne").mkdir(parents=True, exist_ok=True)
            (src / seq / "labels").mkdir(parents=True, exist_ok=True)
            part = scan[k::2] if seq == "00" else scan
            part_labels = raw[k::2] if seq == "00" else raw
            part.tofile(src / seq / "velodyne" / f"{frame}.bin")
            part_labels.tofile(src / seq / "labels" / f"{frame}.label")
    dst = tmp_path / "out"
    r = run_prepare("semantickitti", "--src", str(tmp_path / "dataset"), "--dst", str(dst))
    assert "SemanticKITTI" in r.stderr  # the progress bar
    val = PreparedSegmentationDataset(dst, "val", features=("intensity",))
    train = PreparedSegmentationDataset(dst, "train")
    assert len(val) == 1 and len(train) == 2 and val.num_classes == 19
    s = val[0]
    np.testing.assert_array_equal(s["points"], scan[:, :3])
    np.testing.assert_array_equal(s["features"][:, 0], scan[:, 3])
    # independent label check: the README's class counts (car 544 + moving-car 990 -> class "car")
    car = val.class_names.index("car")
    assert int((s["labels"] == car).sum()) == 544 + 990
    # ignored: unlabeled, outlier, other-structure, other-object (mapped to 0 by the learning map)
    assert int((s["labels"] == -1).sum()) == 4458 + 5 + 809 + 1652
    assert int((s["labels"] == val.class_names.index("road")).sum()) == 20975
    # resumable: a second run skips the finished scans
    r2 = run_prepare("semantickitti", "--src", str(tmp_path / "dataset"), "--dst", str(dst))
    assert "3/3 (3 already done)" in r2.stderr


# ------------------------------------------------------------------ ScanNet

# NYU40 ids given to the fixture's SemanticKITTI classes, and raw ScanNet categories for ScanNet200.
KITTI_TO_NYU40 = {40: 2, 48: 2, 72: 2, 50: 1, 10: 39, 252: 39, 70: 40, 71: 40, 80: 38, 81: 11}
KITTI_TO_RAW = {40: ("floor", 2), 48: ("floor", 2), 72: ("floor", 2), 50: ("wall", 1), 10: ("chair", 5), 252: ("chair", 5), 70: ("plant", 40), 81: ("picture", 11)}
TSV_ROWS = [(1, "wall", "wall", 1), (2, "floor", "floor", 2), (5, "chair", "chair", 5), (40, "plant", "plant", 40), (11, "picture", "picture", 11)]


def _write_scannet_scene(root: Path, name: str, pts: np.ndarray, rgb: np.ndarray, nyu: np.ndarray, segs: np.ndarray, groups: list) -> None:
    from plyfile import PlyData, PlyElement

    scene = root / "scans" / name
    scene.mkdir(parents=True)
    n = len(pts)
    faces = np.empty(n // 3, dtype=[("vertex_indices", "i4", (3,))])
    faces["vertex_indices"] = np.arange(n // 3 * 3).reshape(-1, 3)
    v = np.empty(n, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")])
    v["x"], v["y"], v["z"] = pts.T
    v["red"], v["green"], v["blue"] = rgb.T
    v["alpha"] = 255
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(faces, "face", len_types={"vertex_indices": "u1"})], byte_order="<").write(str(scene / f"{name}_vh_clean_2.ply"))
    lv = np.empty(n, dtype=v.dtype.descr + [("label", "u2")])
    for f in v.dtype.names:
        lv[f] = v[f]
    lv["label"] = nyu
    PlyData([PlyElement.describe(lv, "vertex"), PlyElement.describe(faces, "face", len_types={"vertex_indices": "u1"})], byte_order="<").write(str(scene / f"{name}_vh_clean_2.labels.ply"))
    (scene / f"{name}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"params": {"kThresh": "0.0001", "segMinVerts": "20"}, "sceneId": f"{name}_vh_clean_2", "segIndices": segs.tolist()}))
    (scene / f"{name}.aggregation.json").write_text(json.dumps({"sceneId": f"scannet.{name}", "appId": "fixture", "segGroups": groups, "segmentsFile": f"scannet.{name}_vh_clean_2.0.010000.segs.json"}))


def load_script(name: str):
    """Import datasets/<name>/prepare.py under a unique module name (for its constants)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"prepare_{name}", REPO / "datasets" / name / "prepare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scannet_prepare(tmp_path, kitti):
    ids = load_script("scannet")
    scan, raw = kitti
    sem = (raw & 0xFFFF).astype(np.int64)
    inst = (raw >> 16).astype(np.int64)
    keep = (np.abs(scan[:, 0]) < 30) & (np.abs(scan[:, 1]) < 30)  # a crop of the real scan
    idx = np.nonzero(keep)[0][::5]
    pts = scan[idx, :3]
    rgb = np.stack([(scan[idx, 3] * 255).astype(np.uint8)] * 3, axis=1)
    sem_k, inst_k = sem[idx], inst[idx]
    nyu = np.array([KITTI_TO_NYU40.get(int(c), 0) for c in sem_k], dtype=np.uint16)
    # segments: (class, instance, 2 m cell) over-segmentation; one aggregation group per (class, instance)
    cell = np.floor(pts[:, :2] / 2.0).astype(np.int64)
    seg_key = np.stack([sem_k, inst_k, cell[:, 0], cell[:, 1]], axis=1)
    _, segs = np.unique(seg_key, axis=0, return_inverse=True)
    segs = segs.reshape(-1) * 7 + 3  # segment ids are arbitrary integers in ScanNet
    groups = []
    for gi, (c, i) in enumerate(sorted({(int(a), int(b)) for a, b in zip(sem_k, inst_k)})):
        if c not in KITTI_TO_RAW:
            continue
        members = np.unique(segs[(sem_k == c) & (inst_k == i)]).tolist()
        groups.append({"id": gi, "objectId": gi, "segments": members, "label": KITTI_TO_RAW[c][0]})
    root = tmp_path / "ScanNet"
    _write_scannet_scene(root, "scene0000_00", pts, rgb, nyu, segs, groups)
    _write_scannet_scene(root, "scene0001_00", pts[::2], rgb[::2], nyu[::2], segs[::2], groups)
    header = "id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyuClass\tnyu40class\n"
    (root / "scannetv2-labels.combined.tsv").write_text(header + "".join(f"{i}\t{r}\t{c}\t1\t{n}\t1\tx\t{c}\n" for i, r, c, n in TSV_ROWS))
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "scannetv2_train.txt").write_text("scene0001_00\n")
    (splits / "scannetv2_val.txt").write_text("scene0000_00\n")
    dst = tmp_path / "out"
    run_prepare("scannet", "--src", str(root), "--dst", str(dst), "--splits", str(splits))

    val = PreparedSegmentationDataset(dst, "val", features=("colors",))
    assert len(val) == 1 and len(PreparedSegmentationDataset(dst, "train")) == 1
    s = val[0]
    np.testing.assert_array_equal(s["points"], pts)
    np.testing.assert_allclose(s["features"], rgb / 255.0, rtol=1e-6)
    expect20 = np.array([ids.CLASS_IDS_20.index(n) if n in ids.CLASS_IDS_20 else -1 for n in nyu])
    np.testing.assert_array_equal(s["labels"], expect20)
    assert val.class_names[int(expect20[sem_k == 40][0])] == "floor" and (expect20 >= 0).sum() > len(pts) // 2
    v200 = PreparedSegmentationDataset(dst, "val", label_key="labels200")
    raw_id = np.array([KITTI_TO_RAW[int(c)][1] if int(c) in KITTI_TO_RAW else -1 for c in sem_k])
    expect200 = np.array([ids.CLASS_IDS_200.index(r) if r in ids.CLASS_IDS_200 else -1 for r in raw_id])
    np.testing.assert_array_equal(v200[0]["labels"], expect200)
    assert v200.num_classes == 200 and v200.class_names[ids.CLASS_IDS_200.index(5)] == "chair"


# ------------------------------------------------------------------ Waymo v2 parquet

H, W = 64, 2650


def _kitti_as_waymo_range_image(scan: np.ndarray, raw: np.ndarray, extrinsic: np.ndarray):
    """Bin the scan into a TOP-lidar-shaped range image using Waymo's pixel convention; nearest return wins."""
    pts = scan[:, :3].astype(np.float64)
    local = (pts - extrinsic[:3, 3]) @ extrinsic[:3, :3]  # vehicle -> sensor frame
    rng = np.linalg.norm(local, axis=1)
    incl = np.arcsin(local[:, 2] / rng)
    beams = np.quantile(incl, (np.arange(H) + 0.5) / H)  # ascending, from the real elevation distribution
    row = H - 1 - np.abs(incl[:, None] - beams[None, :]).argmin(1)
    az_corr = math.atan2(extrinsic[1, 0], extrinsic[0, 0])
    az = np.arctan2(local[:, 1], local[:, 0])
    ratio = ((az + az_corr) / math.pi + 1.0) / 2.0  # inverse of azimuth = (2*ratio - 1)*pi - az_corr
    col = np.round(W - 0.5 - (ratio % 1.0) * W).astype(np.int64) % W
    order = np.argsort(-rng)  # write far first so the nearest point of a pixel is written last
    image = np.zeros((H, W, 4), np.float32)
    label = np.zeros((H, W, 2), np.int32)
    winner = np.full((H, W), -1, np.int64)
    image[..., 3] = -1.0  # not in a no-label zone
    image[row[order], col[order], 0] = rng[order]
    image[row[order], col[order], 1] = scan[order, 3]
    winner[row[order], col[order]] = order
    sem = (raw & 0xFFFF).astype(np.int64)
    waymo_class = np.array([{10: 1, 252: 1, 30: 7, 254: 7, 11: 12, 40: 18, 44: 18, 48: 22, 50: 14, 51: 14, 70: 15, 71: 16, 72: 21, 80: 10, 81: 8}.get(int(c), 0) for c in sem])
    label[row[order], col[order], 1] = waymo_class[order]
    label[row[order], col[order], 0] = (raw >> 16).astype(np.int32)[order]
    return image, label, beams, winner, waymo_class


def _write_waymo_v2(root: Path, segment: str, frames: list, extrinsic: np.ndarray, beams: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for comp in ("lidar", "lidar_calibration", "lidar_segmentation"):
        (root / "training" / comp).mkdir(parents=True, exist_ok=True)
    lidar_rows, seg_rows = [], []
    for ts, image, label in frames:
        for laser in (1, 2):  # laser 2 (FRONT) has a small image and must be ignored
            img = image if laser == 1 else np.zeros((200, 600, 4), np.float32)
            lidar_rows.append({
                "key.segment_context_name": segment, "key.frame_timestamp_micros": ts, "key.laser_name": laser,
                "[LiDARComponent].range_image_return1.values": img.reshape(-1).tolist(),
                "[LiDARComponent].range_image_return1.shape": list(img.shape),
                "[LiDARComponent].range_image_return2.values": np.zeros(img.size, np.float32).tolist(),
                "[LiDARComponent].range_image_return2.shape": list(img.shape),
            })
        seg_rows.append({
            "key.segment_context_name": segment, "key.frame_timestamp_micros": ts, "key.laser_name": 1,
            "[LiDARSegmentationLabelComponent].range_image_return1.values": label.reshape(-1).tolist(),
            "[LiDARSegmentationLabelComponent].range_image_return1.shape": list(label.shape),
        })
    lidar_schema = pa.schema([
        ("key.segment_context_name", pa.string()), ("key.frame_timestamp_micros", pa.int64()), ("key.laser_name", pa.int8()),
        ("[LiDARComponent].range_image_return1.values", pa.list_(pa.float32())), ("[LiDARComponent].range_image_return1.shape", pa.list_(pa.int32())),
        ("[LiDARComponent].range_image_return2.values", pa.list_(pa.float32())), ("[LiDARComponent].range_image_return2.shape", pa.list_(pa.int32())),
    ])
    pq.write_table(pa.Table.from_pylist(lidar_rows, schema=lidar_schema), root / "training" / "lidar" / f"{segment}.parquet")
    seg_schema = pa.schema([
        ("key.segment_context_name", pa.string()), ("key.frame_timestamp_micros", pa.int64()), ("key.laser_name", pa.int8()),
        ("[LiDARSegmentationLabelComponent].range_image_return1.values", pa.list_(pa.int32())), ("[LiDARSegmentationLabelComponent].range_image_return1.shape", pa.list_(pa.int32())),
    ])
    # only the first frame is labelled (Waymo labels a subset of frames)
    pq.write_table(pa.Table.from_pylist(seg_rows[:1], schema=seg_schema), root / "training" / "lidar_segmentation" / f"{segment}.parquet")
    cal_schema = pa.schema([
        ("key.segment_context_name", pa.string()), ("key.laser_name", pa.int8()),
        ("[LiDARCalibrationComponent].extrinsic.transform", pa.list_(pa.float64(), 16)),
        ("[LiDARCalibrationComponent].beam_inclination.min", pa.float64()), ("[LiDARCalibrationComponent].beam_inclination.max", pa.float64()),
        ("[LiDARCalibrationComponent].beam_inclination.values", pa.list_(pa.float64())),
    ])
    cal_rows = [
        {"key.segment_context_name": segment, "key.laser_name": 1, "[LiDARCalibrationComponent].extrinsic.transform": extrinsic.reshape(-1).tolist(),
         "[LiDARCalibrationComponent].beam_inclination.min": float(beams[0]), "[LiDARCalibrationComponent].beam_inclination.max": float(beams[-1]),
         "[LiDARCalibrationComponent].beam_inclination.values": beams.tolist()},
        {"key.segment_context_name": segment, "key.laser_name": 2, "[LiDARCalibrationComponent].extrinsic.transform": np.eye(4).reshape(-1).tolist(),
         "[LiDARCalibrationComponent].beam_inclination.min": -1.5, "[LiDARCalibrationComponent].beam_inclination.max": 0.5,
         "[LiDARCalibrationComponent].beam_inclination.values": None},
    ]
    pq.write_table(pa.Table.from_pylist(cal_rows, schema=cal_schema), root / "training" / "lidar_calibration" / f"{segment}.parquet")


def test_waymo_v2_parquet_prepare(tmp_path, kitti):
    pytest.importorskip("pyarrow")
    scan, raw = kitti
    yaw = 0.3
    extrinsic = np.array([[math.cos(yaw), -math.sin(yaw), 0, 1.43], [math.sin(yaw), math.cos(yaw), 0, 0.0], [0, 0, 1, 2.18], [0, 0, 0, 1]])
    image, label, beams, winner, waymo_class = _kitti_as_waymo_range_image(scan, raw, extrinsic)
    segment = "10017090168044687777_6380_000_6400_000"
    _write_waymo_v2(tmp_path / "waymo", segment, [(1550083467346370, image, label), (1550083467446370, image, label)], extrinsic, beams)
    dst = tmp_path / "out"
    run_prepare("waymo", "--src", str(tmp_path / "waymo"), "--dst", str(dst))
    ds = PreparedSegmentationDataset(dst, "training", features=("intensity",))
    assert len(ds) == 1 and ds.num_classes == 22  # the unlabelled frame is skipped
    s = ds[0]
    filled = winner >= 0
    assert len(s["points"]) == int(filled.sum())
    with np.load(dst / "samples" / f"{segment}_1550083467346370.npz") as z:
        pix = z["pixel"]
    src = winner[pix[:, 0], pix[:, 1]]
    orig = scan[src, :3].astype(np.float64)
    # geometry: each decoded point is its pixel's real point, off by at most half a column of
    # azimuth and by the angle between the point's elevation and its row's beam
    local = (orig - extrinsic[:3, 3]) @ extrinsic[:3, :3]
    rng = np.linalg.norm(local, axis=1)
    beam_err = np.abs(np.arcsin(local[:, 2] / rng) - beams[::-1][pix[:, 0]])
    err = np.linalg.norm(s["points"] - orig, axis=1)
    bound = rng * (math.pi / W + beam_err) + 1e-3
    assert np.all(err <= bound), float((err / bound).max())
    assert np.median(err) < 0.1
    np.testing.assert_allclose(np.linalg.norm(s["points"] - extrinsic[:3, 3], axis=1), rng, rtol=1e-5)  # range exact
    np.testing.assert_array_equal(s["features"][:, 0], scan[src, 3])
    np.testing.assert_array_equal(s["labels"], waymo_class[src] - 1)
    assert ds.class_names[int(s["labels"][waymo_class[src] == 1][0])] == "car"
