"""Point-cloud readers/writers against ../shared/data's README, independent readers, and round trips."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from octformer.errors import CorruptDataError, OctformerError
from octformer.io import (
    POINTNETVLAD_NUM_POINTS,
    SEMANTICKITTI_CLASSES,
    SEMANTICKITTI_LEARNING_MAP,
    SEMANTICKITTI_RAW_NAMES,
    PointCloud,
    TruncatedFileError,
    UnsupportedFormatError,
    lzf_compress_literal,
    lzf_decompress,
    map_semantickitti_labels,
    read_points,
    read_semantickitti_labels,
    write_kitti_bin,
    write_pcd,
    write_ply,
    write_points,
)

KITTI = "semantickitti/velodyne/000000.bin"
LABELS = "semantickitti/labels/000000.label"
MUG = "pcl_indoor/table_scene_mug_stereo_textured.pcd"

# (count, per-axis [min, max], decimals) exactly as ../shared/data/README.md states them
README = {
    KITTI: (123_389, [(-79.602, 79.005), (-79.917, 78.367), (-27.639, 2.956)], 3),
    "las/simple.las": (1_065, [(635619.85, 638982.55), (848899.70, 853535.43), (406.59, 586.38)], 2),
    "pcl_indoor/room_scan1.pcd": (112_586, [(-13.800, 15.447), (-6.493, 7.980), (-1.352, 1.709)], 3),
    MUG: (209_280, [(-0.456, 0.715), (-0.511, 0.179), (0.690, 2.593)], 3),
    "cs_wild_places/karawatha_submap_gnd_2.pcd": (293_430, [(-29.880, 29.996), (-28.796, 29.976), (-1.963, 20.415)], 3),
    "stanford_bunny/reconstruction/bun_zipper.ply": (35_947, [(-0.095, 0.061), (0.033, 0.187), (-0.062, 0.059)], 3),
    "stanford_bunny/reconstruction/bun_zipper_res4.ply": (453, None, 3),
    "spot/spot_triangulated.obj": (2_930, [(-0.472, 0.472), (-0.737, 0.954), (-0.669, 1.049)], 3),
}
README_LABEL_HISTOGRAM = {
    0: 4458, 1: 5, 10: 544, 11: 20, 30: 23, 40: 20975, 44: 84, 48: 30092, 50: 2126, 51: 531, 52: 809,
    70: 24514, 71: 3978, 72: 30925, 80: 413, 81: 1112, 99: 1652, 252: 990, 254: 138,
}


# ------------------------------------------------------------------ every shared file


@pytest.mark.parametrize("rel", sorted(README))
def test_shared_file_count_and_ranges(shared_data: Path, rel: str) -> None:
    count, ranges, decimals = README[rel]
    cloud = read_points(shared_data / rel)
    assert len(cloud) == count
    assert cloud.points.shape == (count, 3) and cloud.points.dtype in (np.float32, np.float64)
    for k, v in cloud.attributes.items():
        assert v.shape[0] == count, k
    if ranges is not None:
        lo, hi = cloud.bbox
        tol = 0.5 * 10.0**-decimals + 1e-9
        np.testing.assert_allclose(lo, [r[0] for r in ranges], rtol=0, atol=tol)
        np.testing.assert_allclose(hi, [r[1] for r in ranges], rtol=0, atol=tol)


def test_semantickitti_labels_histogram(shared_data: Path) -> None:
    cloud = read_points(shared_data / KITTI)
    assert cloud.meta["label_path"] == shared_data / LABELS
    ids, counts = np.unique(cloud.attributes["label"], return_counts=True)
    assert dict(zip(ids.tolist(), counts.tolist())) == README_LABEL_HISTOGRAM
    assert len(np.unique(cloud.attributes["instance"])) == 12
    raw = np.fromfile(shared_data / LABELS, dtype="<u4")  # independent decode of the bit layout
    np.testing.assert_array_equal(cloud.attributes["label"], raw % 65536)
    np.testing.assert_array_equal(cloud.attributes["instance"], raw // 65536)
    expected = np.array([SEMANTICKITTI_LEARNING_MAP[int(r)] for r in cloud.attributes["label"]])
    np.testing.assert_array_equal(cloud.attributes["label_learning"], expected)
    scan = np.fromfile(shared_data / KITTI, dtype="<f4").reshape(-1, 4)
    np.testing.assert_array_equal(cloud.points, scan[:, :3])
    np.testing.assert_array_equal(cloud.attributes["intensity"], scan[:, 3])
    assert float(scan[:, 3].min()) >= 0 and float(scan[:, 3].max()) <= 0.99 + 5e-3


def test_semantickitti_learning_map_matches_class_names() -> None:
    """Every raw id folds into the training class of the same name (moving-X → X), or a documented merge."""
    merged = {"bus": "other-vehicle", "on-rails": "other-vehicle", "lane-marking": "road",
              "outlier": "unlabeled", "other-structure": "unlabeled", "other-object": "unlabeled"}
    assert set(SEMANTICKITTI_LEARNING_MAP) == set(SEMANTICKITTI_RAW_NAMES)
    assert len(SEMANTICKITTI_CLASSES) == 20 and set(SEMANTICKITTI_LEARNING_MAP.values()) == set(range(20))
    for raw, name in SEMANTICKITTI_RAW_NAMES.items():
        base = name.removeprefix("moving-")
        assert SEMANTICKITTI_CLASSES[SEMANTICKITTI_LEARNING_MAP[raw]] == merged.get(base, base), name
    with pytest.raises(CorruptDataError, match="not SemanticKITTI classes"):
        map_semantickitti_labels(np.array([10, 12, 40], dtype=np.uint16))


def test_kitti_labels_options(shared_data: Path, tmp_path: Path) -> None:
    plain = read_points(shared_data / KITTI, labels=False)
    assert set(plain.attributes) == {"intensity"}
    explicit = read_points(shared_data / KITTI, labels=shared_data / LABELS)
    np.testing.assert_array_equal(explicit.attributes["label"], read_semantickitti_labels(shared_data / LABELS)[0])
    short = tmp_path / "short.label"
    short.write_bytes((shared_data / LABELS).read_bytes()[:-4])
    with pytest.raises(CorruptDataError, match="labels"):
        read_points(shared_data / KITTI, labels=short)
    with pytest.raises(FileNotFoundError, match="labels"):
        read_points(shared_data / KITTI, labels=tmp_path / "missing.label")
    with pytest.raises(UnsupportedFormatError, match="label file"):
        read_points(shared_data / LABELS)


def test_pcd_against_pypcd4(shared_data: Path) -> None:
    pypcd4 = pytest.importorskip("pypcd4")
    for rel in ("pcl_indoor/room_scan1.pcd", MUG, "cs_wild_places/karawatha_submap_gnd_2.pcd"):
        ref = pypcd4.PointCloud.from_path(shared_data / rel)
        ours = read_points(shared_data / rel, keep_invalid=True)
        np.testing.assert_array_equal(ours.points, ref.numpy(("x", "y", "z")), err_msg=rel)
        if "rgb" in ref.fields:
            np.testing.assert_array_equal(ours.attributes["rgb"], ref.decode_rgb(ref.numpy(("rgb",)).ravel()), err_msg=rel)


def test_organized_pcd_invalid_points(shared_data: Path) -> None:
    full = read_points(shared_data / MUG, keep_invalid=True)
    assert len(full) == 307_200 and full.meta["width"] == 640 and full.meta["height"] == 480 and full.meta["organized"]
    invalid = ~np.isfinite(full.points).all(axis=1)
    assert int(invalid.sum()) == 97_920 == full.meta["num_invalid"]
    dropped = read_points(shared_data / MUG)
    assert len(dropped) == 209_280
    np.testing.assert_array_equal(dropped.points, full.points[~invalid])
    np.testing.assert_array_equal(dropped.attributes["rgb"], full.attributes["rgb"][~invalid])
    wild = read_points(shared_data / "cs_wild_places/karawatha_submap_gnd_2.pcd")
    np.testing.assert_allclose(wild.meta["viewpoint"][:3], [507726, 6.94245e06, 68.4967])
    assert 100 <= len(np.unique(wild.attributes["rgb"], axis=0)) <= 245  # README: a 245-value colour map


def test_ply_against_plyfile(shared_data: Path) -> None:
    plyfile = pytest.importorskip("plyfile")
    for rel, faces in (("stanford_bunny/reconstruction/bun_zipper.ply", 69_451), ("stanford_bunny/reconstruction/bun_zipper_res4.ply", 948)):
        ref = plyfile.PlyData.read(str(shared_data / rel))
        ours = read_points(shared_data / rel)
        v = ref["vertex"].data
        np.testing.assert_array_equal(ours.points, np.stack([v["x"], v["y"], v["z"]], axis=1))
        for name in ("confidence", "intensity"):
            np.testing.assert_array_equal(ours.attributes[name], v[name])
        assert ours.meta["elements"] == {"vertex": len(v), "face": faces} and len(ref["face"].data) == faces


def test_las_against_raw_records(shared_data: Path) -> None:
    path = shared_data / "las/simple.las"
    blob = path.read_bytes()
    (offset,) = struct.unpack_from("<I", blob, 96)
    (rec_len,) = struct.unpack_from("<H", blob, 105)
    (count,) = struct.unpack_from("<I", blob, 107)
    scale = np.array(struct.unpack_from("<3d", blob, 131))
    off = np.array(struct.unpack_from("<3d", blob, 155))
    rec = np.frombuffer(blob, dtype=np.uint8, offset=offset, count=count * rec_len).reshape(count, rec_len)
    xyz = rec[:, :12].copy().view("<i4").astype(np.float64) * scale + off
    ours = read_points(path)
    np.testing.assert_allclose(ours.points, xyz, rtol=0, atol=1e-9)
    # point format 3: intensity at byte 12, classification at byte 15, RGB at bytes 28..33
    np.testing.assert_array_equal(ours.attributes["intensity"], rec[:, 12:14].copy().view("<u2").ravel())
    np.testing.assert_array_equal(ours.attributes["classification"], rec[:, 15] & 0x1F)
    np.testing.assert_array_equal(ours.attributes["rgb"], rec[:, 28:34].copy().view("<u2"))
    assert set(np.unique(ours.attributes["classification"]).tolist()) == {1, 2}
    assert ours.meta["point_format"] == 3 and not ours.meta["compressed"]


def test_laz_round_trip_through_laspy(shared_data: Path, tmp_path: Path) -> None:
    laspy = pytest.importorskip("laspy")
    pytest.importorskip("lazrs")
    las = laspy.read(str(shared_data / "las/simple.las"))
    las.write(str(tmp_path / "simple.laz"))
    a, b = read_points(shared_data / "las/simple.las"), read_points(tmp_path / "simple.laz")
    assert b.meta["compressed"]
    np.testing.assert_array_equal(a.points, b.points)
    for k in a.attributes:
        np.testing.assert_array_equal(a.attributes[k], b.attributes[k])
    blob = (tmp_path / "simple.laz").read_bytes()
    for frac in (0.05, 0.3, 0.6, 0.9, 0.999):
        with pytest.raises(TruncatedFileError):
            read_points(_write(tmp_path, "cut.laz", blob[: int(len(blob) * frac)]))


def test_obj_against_line_parser(shared_data: Path) -> None:
    path = shared_data / "spot/spot_triangulated.obj"
    verts, faces = [], 0
    for line in path.read_text().splitlines():
        if line.startswith("v "):
            verts.append([float(t) for t in line.split()[1:4]])
        faces += line.startswith("f ")
    ours = read_points(path)
    np.testing.assert_array_equal(ours.points, np.array(verts))
    assert ours.meta["num_faces"] == faces == 5_856


# ------------------------------------------------------------------ malformed inputs


def _cut(src: Path, dst_dir: Path, at: int) -> Path:
    dst = dst_dir / src.name
    dst.write_bytes(src.read_bytes()[:at])
    return dst


@pytest.mark.parametrize(
    "rel",
    [
        "pcl_indoor/room_scan1.pcd",
        MUG,
        "cs_wild_places/karawatha_submap_gnd_2.pcd",
        "stanford_bunny/reconstruction/bun_zipper.ply",
        "stanford_bunny/reconstruction/bun_zipper_res4.ply",
        "las/simple.las",
    ],
)
def test_truncated_files_raise(shared_data: Path, tmp_path: Path, rel: str) -> None:
    src = shared_data / rel
    size = src.stat().st_size
    for frac in (0.0005, 0.01, 0.25, 0.5, 0.75, 0.97):
        with pytest.raises(TruncatedFileError):
            read_points(_cut(src, tmp_path, int(size * frac)))
    if src.suffix == ".ply":
        return  # a text PLY cut inside its last number is still well-formed text
    end = size
    if src.suffix == ".pcd":  # PCL pads binary_compressed files: the payload ends before the file does
        blob = src.read_bytes()
        body = blob.index(b"DATA binary_compressed\n") + len(b"DATA binary_compressed\n")
        end = body + 8 + struct.unpack_from("<I", blob, body)[0]
        assert len(read_points(_cut(src, tmp_path, end))) == README[rel][0]
    with pytest.raises(TruncatedFileError):
        read_points(_cut(src, tmp_path, end - 1))


def test_truncated_raw_bin_and_obj(shared_data: Path, tmp_path: Path) -> None:
    src = (shared_data / KITTI).read_bytes()
    for at in (7, 16 * 1000 + 5, len(src) - 1):
        (tmp_path / "scan.bin").write_bytes(src[:at])
        with pytest.raises(CorruptDataError, match="multiple of the 16-byte record"):
            read_points(tmp_path / "scan.bin")
    # a cut at a record boundary shows up against the matching labels (SemanticKITTI layout)
    seq = tmp_path / "sequences" / "00"
    (seq / "velodyne").mkdir(parents=True)
    (seq / "labels").mkdir()
    (seq / "velodyne" / "000000.bin").write_bytes(src[: 16 * 5000])
    (seq / "labels" / "000000.label").write_bytes((shared_data / LABELS).read_bytes())
    with pytest.raises(CorruptDataError, match="123389 labels"):
        read_points(seq / "velodyne" / "000000.bin")
    text = (shared_data / "spot/spot_triangulated.obj").read_bytes()
    line = text.index(b"\nv ", len(text) // 8) + 1
    cut = text.index(b" ", line + 2) + 1  # after "v <x> " : y and z missing
    (tmp_path / "spot.obj").write_bytes(text[:cut])
    with pytest.raises(CorruptDataError, match="vertex"):
        read_points(tmp_path / "spot.obj")


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.fixture()
def small_ply(tmp_path: Path) -> bytes:
    pts = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_ply(tmp_path / "ok.ply", pts, binary=False)
    return (tmp_path / "ok.ply").read_bytes()


def test_bad_ply_headers(tmp_path: Path, small_ply: bytes) -> None:
    assert len(read_points(_write(tmp_path, "ok.ply", small_ply))) == 4
    cases = {
        "magic": small_ply.replace(b"ply\n", b"plx\n", 1),
        "format": small_ply.replace(b"format ascii 1.0", b"format binary_middle_endian 1.0"),
        "count": small_ply.replace(b"element vertex 4", b"element vertex four"),
        "type": small_ply.replace(b"property float x", b"property float128 x"),
        "keyword": small_ply.replace(b"end_header", b"bogus line\nend_header"),
        "no x": small_ply.replace(b"property float x", b"property float w"),
        "no vertex": small_ply.replace(b"element vertex 4", b"element point 4"),
        "row": small_ply.replace(b"\n0 1 2\n", b"\n0 1\n"),
        "number": small_ply.replace(b"\n0 1 2\n", b"\n0 1 zz\n"),
    }
    for what, data in cases.items():
        with pytest.raises(CorruptDataError):
            read_points(_write(tmp_path, f"{what.replace(' ', '_')}.ply", data))
    with pytest.raises(TruncatedFileError):
        read_points(_write(tmp_path, "more.ply", small_ply.replace(b"element vertex 4", b"element vertex 5")))
    with pytest.raises(TruncatedFileError, match="header never ends"):
        read_points(_write(tmp_path, "noend.ply", small_ply.replace(b"end_header", b"end_headr")))


def test_bad_pcd_headers(tmp_path: Path) -> None:
    pts = np.arange(30, dtype=np.float32).reshape(10, 3)
    write_pcd(tmp_path / "ok.pcd", pts, data="binary_compressed")
    good = (tmp_path / "ok.pcd").read_bytes()
    np.testing.assert_array_equal(read_points(tmp_path / "ok.pcd").points, pts)
    body = good.index(b"DATA binary_compressed\n") + len(b"DATA binary_compressed\n")
    cases = {
        "magic": b"\x00\x01garbage" + good,
        "size": good.replace(b"SIZE 4 4 4", b"SIZE 4 4"),
        "type": good.replace(b"TYPE F F F", b"TYPE F X F"),
        "type size": good.replace(b"SIZE 4 4 4", b"SIZE 4 3 4"),
        "points": good.replace(b"POINTS 10", b"POINTS 11"),
        "width": good.replace(b"WIDTH 10", b"WIDTH ten"),
        "keyword": good.replace(b"VERSION 0.7", b"VERSION 0.7\nCOLOUR red"),
        "no fields": good.replace(b"FIELDS x y z\n", b""),
        "raw size": good[:body + 4] + struct.pack("<I", 999) + good[body + 8:],
        "lzf ref": good[:body + 8] + bytes([0x20, 0x05]) + good[body + 10:],  # back-reference before the start
        "lzf tail": good[:body] + struct.pack("<II", 3, 120) + bytes([5, 1, 2]),  # literal run passes the end
    }
    for what, data in cases.items():
        with pytest.raises(CorruptDataError):
            read_points(_write(tmp_path, f"{what.replace(' ', '_')}.pcd", data))
    with pytest.raises(UnsupportedFormatError, match="DATA"):
        read_points(_write(tmp_path, "mode.pcd", good.replace(b"DATA binary_compressed", b"DATA zstd")))
    with pytest.raises(TruncatedFileError):
        read_points(_write(tmp_path, "short.pcd", good[:body + 8 + 20]))


def test_bad_magic_and_unknown_formats(shared_data: Path, tmp_path: Path, small_ply: bytes) -> None:
    las = (shared_data / "las/simple.las").read_bytes()
    with pytest.raises(CorruptDataError, match="LASF"):
        read_points(_write(tmp_path, "bad.las", b"LASX" + las[4:]))
    with pytest.raises(CorruptDataError, match="PCD"):
        read_points(_write(tmp_path, "ply_in_disguise.pcd", small_ply))
    with pytest.raises(CorruptDataError, match="PLY"):
        read_points(_write(tmp_path, "pcd_in_disguise.ply", (shared_data / "pcl_indoor/room_scan1.pcd").read_bytes()))
    with pytest.raises(CorruptDataError, match="NPY"):
        read_points(_write(tmp_path, "x.npy", b"not numpy at all"))
    with pytest.raises(CorruptDataError, match="NPZ"):
        read_points(_write(tmp_path, "x.npz", b"not a zip"))
    with pytest.raises(UnsupportedFormatError, match="extension"):
        read_points(_write(tmp_path, "cloud.xyz", b"1 2 3\n"))
    with pytest.raises(UnsupportedFormatError, match="format"):
        read_points(_write(tmp_path, "cloud.ply", small_ply), format="e57")
    with pytest.raises(FileNotFoundError):
        read_points(tmp_path / "missing.ply")
    assert issubclass(UnsupportedFormatError, OctformerError) and issubclass(TruncatedFileError, CorruptDataError)


# ------------------------------------------------------------------ raw .bin flavours


def test_nuscenes_and_pointnetvlad_bins(shared_data: Path, tmp_path: Path) -> None:
    scan = np.fromfile(shared_data / KITTI, dtype="<f4").reshape(-1, 4)
    # nuScenes-style sweep from real geometry: intensity 0..255, ring 0..31
    nus = np.concatenate([scan[:3000, :3], scan[:3000, 3:] * 255, (np.arange(3000) % 32)[:, None]], axis=1).astype("<f4")
    nus.tofile(tmp_path / "sweep.pcd.bin")
    cloud = read_points(tmp_path / "sweep.pcd.bin")
    assert cloud.format == "nuscenes"
    np.testing.assert_array_equal(cloud.points, nus[:, :3])
    np.testing.assert_array_equal(cloud.attributes["ring"], np.arange(3000) % 32)
    nus[5, 4] = 0.5
    nus.tofile(tmp_path / "bad.pcd.bin")
    with pytest.raises(CorruptDataError, match="ring"):
        read_points(tmp_path / "bad.pcd.bin")
    # PointNetVLAD-style submap derived as PointNetVLAD did: drop ground, 4096 points, centre, scale to [-1, 1]
    above = scan[scan[:, 2] > -1.5, :3].astype(np.float64)
    sub = above[np.random.default_rng(0).choice(len(above), POINTNETVLAD_NUM_POINTS, replace=False)]
    sub -= sub.mean(axis=0)
    sub /= np.abs(sub).max()
    sub.astype("<f8").tofile(tmp_path / "1400000000.bin")
    cloud = read_points(tmp_path / "1400000000.bin")
    assert cloud.format == "pointnetvlad"
    np.testing.assert_array_equal(cloud.points, sub)
    # a real KITTI scan cut to the same byte size (6144 points) stays KITTI under the size rule
    scan[:6144].tofile(tmp_path / "000001.bin")
    assert read_points(tmp_path / "000001.bin").format == "kitti"
    assert read_points(tmp_path / "1400000000.bin", format="kitti").format == "kitti"


# ------------------------------------------------------------------ LZF


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=12), st.integers(1, 40)), max_size=30), st.binary(max_size=64))
def test_lzf_matches_reference_compressor(chunks: list, tail: bytes) -> None:
    lzf = pytest.importorskip("lzf")
    raw = b"".join(c * k for c, k in chunks) + tail  # repeats make (overlapping) back-references
    stream = lzf.compress(raw) if raw else None
    if stream:  # python-lzf returns None when the data does not shrink
        assert lzf_decompress(stream, len(raw)) == raw
    assert lzf_decompress(lzf_compress_literal(raw), len(raw)) == raw


def test_lzf_wrong_size_raises() -> None:
    with pytest.raises(CorruptDataError, match="expands to"):
        lzf_decompress(lzf_compress_literal(b"abcdef"), 7)
    with pytest.raises(CorruptDataError, match="exceeds"):
        lzf_decompress(lzf_compress_literal(b"abcdef"), 5)
    with pytest.raises(CorruptDataError, match="cannot expand"):  # refuses before allocating 40 GB
        lzf_decompress(b"\x00a", 40 * 2**30)
    zeros = bytes(264 * 100)
    lzf = pytest.importorskip("lzf")
    assert lzf_decompress(lzf.compress(zeros), len(zeros)) == zeros  # near the maximum expansion ratio


# ------------------------------------------------------------------ round trips


@st.composite
def clouds(draw: st.DrawFn) -> PointCloud:
    n = draw(st.integers(0, 60))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    pts = (rng.normal(size=(n, 3)) * 10 ** rng.uniform(-3, 5)).astype(dtype)
    attrs = {
        "intensity": rng.random(n).astype(np.float32),
        "rgb": rng.integers(0, 256, (n, 3)).astype(np.uint8),
        "normals": rng.normal(size=(n, 3)).astype(np.float32),
        "label": rng.integers(0, 60000, n).astype(np.uint16),
    }
    return PointCloud(pts, attrs)


def _assert_same(a: PointCloud, b: PointCloud, keys: tuple[str, ...]) -> None:
    assert a.points.dtype == b.points.dtype
    np.testing.assert_array_equal(a.points, b.points)
    for k in keys:
        assert a.attributes[k].dtype == b.attributes[k].dtype, k
        np.testing.assert_array_equal(a.attributes[k], b.attributes[k], err_msg=k)


_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(clouds(), st.sampled_from([(True, "<"), (True, ">"), (False, "<")]))
def test_ply_round_trip(tmp_path: Path, cloud: PointCloud, mode: tuple) -> None:
    binary, order = mode
    path = tmp_path / "rt.ply"
    write_ply(path, cloud, binary=binary, byte_order=order)
    back = read_points(path)
    _assert_same(cloud, back, ("intensity", "rgb", "normals", "label"))
    plyfile = pytest.importorskip("plyfile")
    v = plyfile.PlyData.read(str(path))["vertex"].data  # the independent reader agrees
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], axis=1), cloud.points)


@_SETTINGS
@given(clouds(), st.sampled_from(["ascii", "binary", "binary_compressed"]))
def test_pcd_round_trip(tmp_path: Path, cloud: PointCloud, data: str) -> None:
    path = tmp_path / "rt.pcd"
    write_pcd(path, cloud, data=data)
    back = read_points(path)
    _assert_same(cloud, back, ("intensity", "rgb", "normals", "label"))
    pypcd4 = pytest.importorskip("pypcd4")
    if len(cloud):  # pypcd4 reads our file the same way
        ref = pypcd4.PointCloud.from_path(path)
        np.testing.assert_array_equal(ref.numpy(("x", "y", "z")).astype(cloud.points.dtype), cloud.points)
        np.testing.assert_array_equal(ref.decode_rgb(ref.numpy(("rgb",)).ravel()), cloud.attributes["rgb"])


@_SETTINGS
@given(clouds())
def test_numpy_and_kitti_round_trips(tmp_path: Path, cloud: PointCloud) -> None:
    write_points(tmp_path / "rt.npy", cloud.points)
    np.testing.assert_array_equal(read_points(tmp_path / "rt.npy").points, cloud.points)
    write_points(tmp_path / "rt.npz", cloud)
    _assert_same(cloud, read_points(tmp_path / "rt.npz"), ("intensity", "rgb", "normals", "label"))
    write_kitti_bin(tmp_path / "rt.bin", cloud)
    back = read_points(tmp_path / "rt.bin", format="kitti")
    np.testing.assert_array_equal(back.points, cloud.points.astype(np.float32))
    np.testing.assert_array_equal(back.attributes["intensity"], cloud.attributes["intensity"])


def test_organized_pcd_round_trip_with_nan(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pts = rng.random((4 * 5, 3)).astype(np.float32)
    pts[[1, 7, 8]] = np.nan
    write_pcd(tmp_path / "org.pcd", pts, data="binary", width=5, height=4)
    kept = read_points(tmp_path / "org.pcd", keep_invalid=True)
    np.testing.assert_array_equal(kept.points, pts)
    assert kept.meta["organized"] and kept.meta["num_invalid"] == 3
    np.testing.assert_array_equal(read_points(tmp_path / "org.pcd").points, np.delete(pts, [1, 7, 8], axis=0))


def test_ply_written_by_plyfile_with_extra_elements(tmp_path: Path) -> None:
    """Stanford range scans: vertex + variable-length range_grid lists + faces, in every PLY encoding."""
    plyfile = pytest.importorskip("plyfile")
    rng = np.random.default_rng(7)
    n = 50
    vert = np.empty(n, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("confidence", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for name in ("x", "y", "z", "confidence"):
        vert[name] = rng.random(n)
    for name in ("red", "green", "blue"):
        vert[name] = rng.integers(0, 256, n)
    grid = np.empty(40, dtype=[("vertex_indices", "O")])
    grid["vertex_indices"] = [np.array([i], dtype=np.int32) if i % 3 else np.array([], dtype=np.int32) for i in range(40)]
    faces = np.empty(7, dtype=[("vertex_indices", "O")])
    faces["vertex_indices"] = [rng.integers(0, n, 3).astype(np.int32) for _ in range(7)]
    elements = [
        plyfile.PlyElement.describe(vert, "vertex"),
        plyfile.PlyElement.describe(grid, "range_grid", val_types={"vertex_indices": "i4"}),
        plyfile.PlyElement.describe(faces, "face", val_types={"vertex_indices": "i4"}),
    ]
    for text, order in ((True, "="), (False, "<"), (False, ">")):
        path = tmp_path / f"scan_{text}_{order == '>'}.ply"
        plyfile.PlyData(elements, text=text, byte_order=order, obj_info=["num_cols 8", "num_rows 5"]).write(str(path))
        cloud = read_points(path)
        np.testing.assert_array_equal(cloud.points, np.stack([vert["x"], vert["y"], vert["z"]], axis=1))
        np.testing.assert_array_equal(cloud.attributes["confidence"], vert["confidence"])
        np.testing.assert_array_equal(cloud.attributes["rgb"], np.stack([vert["red"], vert["green"], vert["blue"]], axis=1))
        assert cloud.meta["elements"] == {"vertex": n, "range_grid": 40, "face": 7}
        data = path.read_bytes()
        with pytest.raises(CorruptDataError):  # cut inside the trailing face element
            read_points(_write(tmp_path, "cut.ply", data[: len(data) - 9]))


def test_pcd_written_by_pypcd4(tmp_path: Path) -> None:
    """pypcd4's own writer (real LZF compression for binary_compressed) read back by ours."""
    pypcd4 = pytest.importorskip("pypcd4")
    rng = np.random.default_rng(11)
    xyz = rng.normal(size=(500, 3)).astype(np.float32)
    xyz[::7] = xyz[0]  # repeated rows compress into back-references
    inten = rng.random(500).astype(np.float32)
    lab = rng.integers(0, 9, 500).astype(np.uint32)
    pc = pypcd4.PointCloud.from_points([xyz[:, 0], xyz[:, 1], xyz[:, 2], inten, lab], ("x", "y", "z", "intensity", "label"),
                                       (np.float32, np.float32, np.float32, np.float32, np.uint32))
    for enc in (pypcd4.Encoding.ASCII, pypcd4.Encoding.BINARY, pypcd4.Encoding.BINARY_COMPRESSED):
        path = tmp_path / f"{enc.value}.pcd"
        pc.save(path, encoding=enc)
        cloud = read_points(path)
        assert cloud.meta["data"] == enc.value
        np.testing.assert_allclose(cloud.points, xyz, rtol=1e-6 if enc.value == "ascii" else 0)
        np.testing.assert_array_equal(cloud.attributes["label"], lab)


# ------------------------------------------------------------------ fuzzing: only named errors escape


def _small_files(tmp: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(5)
    pts = rng.normal(size=(9, 3)).astype(np.float32)
    attrs = {"intensity": rng.random(9).astype(np.float32), "rgb": rng.integers(0, 256, (9, 3)).astype(np.uint8)}
    cloud = PointCloud(pts, attrs)
    out = {}
    for name, writer in (
        ("a.ply", lambda p: write_ply(p, cloud, binary=False)),
        ("b.ply", lambda p: write_ply(p, cloud, byte_order=">")),
        ("a.pcd", lambda p: write_pcd(p, cloud, data="ascii")),
        ("b.pcd", lambda p: write_pcd(p, cloud, data="binary")),
        ("c.pcd", lambda p: write_pcd(p, cloud, data="binary_compressed")),
        ("a.npy", lambda p: np.save(p, pts)),
        ("a.bin", lambda p: write_kitti_bin(p, cloud)),
    ):
        writer(tmp / name)
        out[name] = (tmp / name).read_bytes()
    out["a.obj"] = b"# cube corner\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 1 2 3\n"
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_files_raise_only_named_errors(tmp_path: Path, data: st.DataObject) -> None:
    files = _small_files(tmp_path)
    name = data.draw(st.sampled_from(sorted(files)))
    blob = bytearray(files[name])
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(blob) - 1)))
        if kind == "flip" and blob:
            blob[pos] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del blob[pos:]
        else:
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    path = tmp_path / f"fuzz_{name}"
    path.write_bytes(bytes(blob))
    try:
        cloud = read_points(path)
    except OctformerError:
        return
    assert cloud.points.ndim == 2 and cloud.points.shape[1] == 3
    assert all(v.shape[0] == len(cloud) for v in cloud.attributes.values())
