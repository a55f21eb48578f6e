"""Our octree against ocnn 2.3.3 (the oracle): keys, children, counts, point→leaf and neighbours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import octformer

torch = pytest.importorskip("torch")
ocnn = pytest.importorskip("ocnn")
from ocnn.octree import Octree as OcnnOctree  # noqa: E402
from ocnn.octree import Points as OcnnPoints  # noqa: E402

CUBE = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))  # ocnn's default [bbmin, bbmax]
HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------ oracle side


def ocnn_build(clouds: list[np.ndarray], depth: int, full_depth: int, features=None, normals=None):
    """One ocnn build of all clouds (batch_id when several); returns (octree, point→leaf)."""
    pts = torch.from_numpy(np.concatenate(clouds))
    b = len(clouds)
    batch_id = None
    if b > 1:
        batch_id = torch.cat([torch.full((len(c), 1), i, dtype=torch.long) for i, c in enumerate(clouds)])
    feats = None if features is None else torch.from_numpy(features)
    norms = None if normals is None else torch.from_numpy(normals)
    points = OcnnPoints(pts, normals=norms, features=feats, batch_id=batch_id, batch_size=b)
    tree = OcnnOctree(depth, full_depth, batch_size=b)
    leaf = tree.build_octree(points)
    return tree, leaf.numpy()


def ocnn_merged(clouds: list[np.ndarray], depth: int, full_depth: int):
    """ocnn's DataLoader path: one octree per cloud, then merge_octrees (fills batch_nnum)."""
    trees = [ocnn_build([c], depth, full_depth)[0] for c in clouds]
    return ocnn.octree.merge_octrees(trees)


def ours_ocnn_keys(tree: octformer.Octree, d: int) -> np.ndarray:
    """Our keys with the batch index packed in bits 48+, as ocnn stores them."""
    keys = tree.keys[d]
    if tree.batch_size > 1:
        keys = keys | (tree.batch[d].astype(np.int64) << 48)
    return keys


def assert_same(got, want, err_msg: str = "") -> None:
    """Exact array equality; the fast check first, numpy's detailed report only on a mismatch."""
    got, want = np.asarray(got), np.asarray(want)
    if not (got.shape == want.shape and np.array_equal(got, want)):
        np.testing.assert_array_equal(got, want, err_msg=err_msg)


def assert_structure_equal(ours: octformer.Octree, oc, label: str = "") -> None:
    """keys, children and per-depth counts identical to an ocnn octree at every depth."""
    assert ours.depth == oc.depth and ours.full_depth == oc.full_depth, label
    for d in range(ours.depth + 1):
        assert_same(ours_ocnn_keys(ours, d), oc.keys[d].numpy(), err_msg=f"{label} keys[{d}]")
        assert_same(ours.children[d], oc.children[d].numpy(), err_msg=f"{label} children[{d}]")
        assert ours.keys[d].dtype == np.int64 and ours.children[d].dtype == np.int32
    assert_same(ours.nnum, oc.nnum.numpy(), err_msg=f"{label} nnum")
    assert_same(ours.nnum_nempty, oc.nnum_nempty.numpy(), err_msg=f"{label} nnum_nempty")


def assert_neighbors_equal(ours: octformer.Octree, oc, label: str = "") -> None:
    """Our 27-neighbour tables equal ocnn's construct_all_neigh, all nodes and non-empty only."""
    oc.construct_all_neigh()
    for d in range(1, ours.depth + 1):
        want = oc.neighs[d].numpy()
        got = ours.neighbors(d, nonempty=False)
        assert got.dtype == np.int32 and got.shape == (int(ours.nnum[d]), 27), f"{label} depth {d}"
        assert_same(got, want, err_msg=f"{label} neighbors({d}, nonempty=False)")
        want_ne = oc.nempty_neigh(d).numpy()
        got_ne = ours.neighbors(d, nonempty=True)
        assert got_ne.shape == (int(ours.nnum_nempty[d]), 27)
        assert_same(got_ne, want_ne, err_msg=f"{label} neighbors({d}, nonempty=True)")


# ------------------------------------------------------------------ inputs


def into_cube(points: np.ndarray) -> np.ndarray:
    """Scale any cloud into [-0.99, 0.99] (float64 maths, then float32), as both sides receive it."""
    pts = np.asarray(points, dtype=np.float64)
    pts = pts[np.isfinite(pts).all(axis=1)]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    half = max(float((hi - lo).max()) / 2, 1e-12)
    out = ((pts - (lo + hi) / 2) / half * 0.99).astype(np.float32)
    return np.clip(out, np.float32(-0.99), np.float32(0.99))


@st.composite
def cloud(draw, min_points: int = 1, max_points: int = 300) -> np.ndarray:
    """(N, 3) float32 points in [-0.99, 0.99]: uniform, clustered, duplicated, on cell borders or explicit."""
    kind = draw(st.sampled_from(["explicit", "uniform", "clusters", "duplicates", "borders", "single"]))
    if kind == "explicit":
        n = draw(st.integers(min_points, min(max_points, 40)))
        return draw(arrays(np.float32, (n, 3), elements=st.floats(-0.875, 0.875, width=32)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = 1 if kind == "single" else draw(st.integers(max(min_points, 1), max_points))
    if kind in ("uniform", "single"):
        pts = rng.uniform(-0.99, 0.99, (n, 3))
    elif kind == "clusters":
        centers = rng.uniform(-0.9, 0.9, (rng.integers(1, 4), 3))
        sigma = 10.0 ** rng.uniform(-4, -1)
        pts = centers[rng.integers(0, len(centers), n)] + rng.normal(0, sigma, (n, 3))
    elif kind == "duplicates":
        base = rng.uniform(-0.99, 0.99, (rng.integers(1, 6), 3))
        pts = base[rng.integers(0, len(base), n)]
    else:  # exactly on cell borders of some depth: floor() ties decide the cell
        k = int(rng.integers(1, 11))
        pts = rng.integers(1, 2**k, (n, 3)) / 2.0 ** (k - 1) - 1.0
        pts += rng.choice([0.0, 1e-7, -1e-7], (n, 3))
    pts = np.clip(pts, -0.99, 0.99).astype(np.float32)
    if min_points == 0 and n and draw(st.booleans()):
        pts = pts[:0]
    return pts


def offsets_of(clouds: list[np.ndarray]) -> np.ndarray:
    return np.cumsum([0] + [len(c) for c in clouds]).astype(np.int64)


def build_ours(clouds: list[np.ndarray], depth: int, full_depth: int, **kw) -> octformer.Octree:
    pts = np.concatenate(clouds) if clouds else np.zeros((0, 3), np.float32)
    offsets = offsets_of(clouds) if len(clouds) > 1 else None
    return octformer.build_octree(pts, depth, full_depth=full_depth, bbox=CUBE, offsets=offsets, **kw)


depths = st.integers(1, 10).flatmap(lambda d: st.tuples(st.just(d), st.integers(0, min(3, d))))


# ------------------------------------------------------------------ hypothesis vs ocnn


@HYP
@given(clouds=st.lists(cloud(), min_size=1, max_size=3), dfd=depths)
def test_build_matches_ocnn(clouds, dfd):
    depth, full_depth = dfd
    ours = build_ours(clouds, depth, full_depth)
    oc, leaf = ocnn_build(clouds, depth, full_depth)
    assert_structure_equal(ours, oc, "one-call batch")
    np.testing.assert_array_equal(ours.point_leaf, leaf, err_msg="point_leaf")
    assert ours.point_leaf.dtype == np.int64 and ours.batch_size == len(clouds)

    # batch_nnum only exists after ocnn's merge_octrees: compare with that path
    merged = ocnn_merged(clouds, depth, full_depth)
    assert_structure_equal(ours, merged, "merged")
    np.testing.assert_array_equal(ours.batch_nnum, merged.batch_nnum.numpy())
    np.testing.assert_array_equal(ours.batch_nnum_nempty, merged.batch_nnum_nempty.numpy())
    for d in range(depth + 1):
        np.testing.assert_array_equal(ours.batch[d], (merged.keys[d] >> 48).numpy())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(clouds=st.lists(cloud(max_points=200), min_size=1, max_size=3), dfd=depths)
def test_neighbors_match_ocnn(clouds, dfd):
    depth, full_depth = dfd
    ours = build_ours(clouds, depth, full_depth)
    oc, _ = ocnn_build(clouds, depth, full_depth)
    assert_neighbors_equal(ours, oc)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(clouds=st.lists(cloud(min_points=0, max_points=200), min_size=1, max_size=3), dfd=depths)
def test_merge_matches_ocnn_merge_octrees(clouds, dfd):
    depth, full_depth = dfd
    parts = [octformer.build_octree(c, depth, full_depth=full_depth, bbox=CUBE) for c in clouds]
    ours = octformer.Octree.merge(parts)
    merged = ocnn_merged(clouds, depth, full_depth)
    assert_structure_equal(ours, merged, "Octree.merge")
    np.testing.assert_array_equal(ours.batch_nnum, merged.batch_nnum.numpy())
    np.testing.assert_array_equal(ours.batch_nnum_nempty, merged.batch_nnum_nempty.numpy())
    assert_neighbors_equal(ours, merged, "Octree.merge")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(clouds=st.lists(cloud(max_points=200), min_size=1, max_size=3), dfd=depths, seed=st.integers(0, 2**16))
def test_leaf_features_and_normals_match_ocnn(clouds, dfd, seed):
    depth, full_depth = dfd
    rng = np.random.default_rng(seed)
    n = sum(len(c) for c in clouds)
    feats = rng.normal(size=(n, 4)).astype(np.float32)
    norms = rng.normal(size=(n, 3)).astype(np.float32)
    norms /= np.linalg.norm(norms, axis=1, keepdims=True)
    ours = build_ours(clouds, depth, full_depth, features=feats, normals=norms)
    oc, _ = ocnn_build(clouds, depth, full_depth, features=feats, normals=norms)
    np.testing.assert_allclose(ours.features, oc.features[depth].numpy(), rtol=1e-5, atol=1e-5)
    # ocnn sums then L2-normalises; a leaf whose normals cancel is ill-conditioned on both sides
    want = oc.normals[depth].numpy()
    sums = np.zeros((int(ours.nnum_nempty[depth]), 3))
    np.add.at(sums, ours.point_leaf, norms.astype(np.float64))
    well = np.linalg.norm(sums, axis=1) > 1e-3
    np.testing.assert_allclose(ours.normals[well], want[well], rtol=1e-4, atol=1e-4)


def test_empty_cloud_matches_ocnn():
    ours = octformer.build_octree(np.zeros((0, 3), np.float32), 5, full_depth=2, bbox=CUBE)
    oc, leaf = ocnn_build([np.zeros((0, 3), np.float32)], 5, 2)
    assert_structure_equal(ours, oc, "empty")
    assert ours.point_leaf.shape == leaf.shape == (0,)


def test_empty_sample_inside_batch_matches_ocnn():
    rng = np.random.default_rng(7)
    clouds = [rng.uniform(-0.99, 0.99, (50, 3)).astype(np.float32), np.zeros((0, 3), np.float32),
              rng.uniform(-0.5, 0.5, (30, 3)).astype(np.float32)]
    ours = build_ours(clouds, 6, 2)
    oc, leaf = ocnn_build(clouds, 6, 2)  # ocnn accepts a middle sample with no points
    assert_structure_equal(ours, oc, "empty middle sample")
    np.testing.assert_array_equal(ours.point_leaf, leaf)
    merged = ocnn_merged(clouds, 6, 2)
    np.testing.assert_array_equal(ours.batch_nnum, merged.batch_nnum.numpy())
    np.testing.assert_array_equal(ours.batch_nnum_nempty, merged.batch_nnum_nempty.numpy())
    assert ours.batch_nnum[3:, 1].sum() == 0 and ours.batch_nnum_nempty[2:, 1].sum() == 0
    assert_neighbors_equal(ours, merged, "empty middle sample")


@pytest.mark.parametrize("offsets", [[0, 0, 1], [0, 1, 1], [0, 0, 0, 1, 3]])
@pytest.mark.parametrize("full_depth", [0, 1])
def test_empty_samples_with_sparse_roots_neighbors_match_ocnn(offsets, full_depth):
    """Found by hypothesis: with full_depth 0 an empty sample's root is empty, so root rows != root ranks."""
    pts = np.array([[0.0, 0.0, 0.0], [0.5, -0.5, 0.25], [-0.9, 0.9, 0.0]], np.float32)[: offsets[-1]]
    clouds = [pts[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    ours = build_ours(clouds, 3, full_depth)
    merged = ocnn_merged(clouds, 3, full_depth)
    assert_structure_equal(ours, merged, "sparse roots")
    assert_neighbors_equal(ours, merged, "sparse roots")
    assert ours.neighbors(0, nonempty=True).shape == (int(ours.nnum_nempty[0]), 27)


# ------------------------------------------------------------------ to_ocnn


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(clouds=st.lists(cloud(max_points=200), min_size=1, max_size=3), dfd=depths)
def test_to_ocnn_matches_ocnn_build(clouds, dfd):
    depth, full_depth = dfd
    converted = build_ours(clouds, depth, full_depth).to_ocnn()
    assert isinstance(converted, OcnnOctree)
    merged = ocnn_merged(clouds, depth, full_depth)
    for d in range(depth + 1):
        np.testing.assert_array_equal(converted.keys[d].numpy(), merged.keys[d].numpy())
        np.testing.assert_array_equal(converted.children[d].numpy(), merged.children[d].numpy())
    for attr in ("nnum", "nnum_nempty", "batch_nnum", "batch_nnum_nempty"):
        np.testing.assert_array_equal(getattr(converted, attr).numpy(), getattr(merged, attr).numpy(), err_msg=attr)
    converted.construct_all_neigh()
    merged.construct_all_neigh()
    for d in range(1, depth + 1):
        np.testing.assert_array_equal(converted.neighs[d].numpy(), merged.neighs[d].numpy(), err_msg=f"neighs[{d}]")


def test_to_ocnn_runs_ocnn_convolution_identically():
    """An ocnn OctreeConv gives the same output on to_ocnn() as on ocnn's own (merged) tree."""
    rng = np.random.default_rng(3)
    clouds = [rng.normal(0, 0.3, (400, 3)).clip(-0.99, 0.99).astype(np.float32) for _ in range(2)]
    depth = 6
    converted = build_ours(clouds, depth, 2).to_ocnn()
    merged = ocnn_merged(clouds, depth, 2)
    converted.construct_all_neigh()
    merged.construct_all_neigh()
    torch.manual_seed(0)
    conv = ocnn.nn.OctreeConv(4, 5, kernel_size=[3], nempty=True)
    x = torch.randn(int(merged.nnum_nempty[depth]), 4)
    with torch.no_grad():
        torch.testing.assert_close(conv(x, converted, depth), conv(x, merged, depth), rtol=0, atol=0)


# ------------------------------------------------------------------ real data


def _read_points(path: Path) -> np.ndarray:
    """(N, 3) float64 coordinates of one shared-data file (small local readers)."""
    suffix = path.suffix.lower()
    if suffix == ".bin":
        return np.fromfile(path, dtype="<f4").reshape(-1, 4)[:, :3].astype(np.float64)
    if suffix == ".ply":
        plyfile = pytest.importorskip("plyfile")
        v = plyfile.PlyData.read(str(path))["vertex"]
        return np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    if suffix == ".pcd":
        pypcd4 = pytest.importorskip("pypcd4")
        return pypcd4.PointCloud.from_path(path).numpy(("x", "y", "z")).astype(np.float64)
    if suffix in (".las", ".laz"):
        laspy = pytest.importorskip("laspy")
        las = laspy.read(str(path))
        return np.stack([np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)], axis=1)
    if suffix == ".obj":
        rows = [line.split()[1:4] for line in path.read_text().splitlines() if line.startswith("v ")]
        return np.asarray(rows, dtype=np.float64)
    raise AssertionError(f"no reader for {path}")


POINT_SUFFIXES = {".bin", ".ply", ".pcd", ".las", ".laz", ".obj"}
# point counts documented in shared/data/README.md (finite points), to prove the readers read it all
DOCUMENTED_POINTS = {
    "000000.bin": 123_389,
    "simple.las": 1_065,
    "room_scan1.pcd": 112_586,
    "table_scene_mug_stereo_textured.pcd": 209_280,
    "karawatha_submap_gnd_2.pcd": 293_430,
    "bun_zipper.ply": 35_947,
    "bun_zipper_res4.ply": 453,
    "spot_triangulated.obj": 2_930,
}


def point_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in POINT_SUFFIXES)


@pytest.fixture(scope="module")
def shared_clouds(shared_data) -> dict[str, np.ndarray]:
    files = point_files(shared_data)
    if not files:
        pytest.skip("no point files in the shared data folder")
    out = {}
    for f in files:
        raw = _read_points(f)
        finite = int(np.isfinite(raw).all(axis=1).sum())
        if f.name in DOCUMENTED_POINTS:
            assert finite == DOCUMENTED_POINTS[f.name], f"{f}: read {finite} finite points"
        out[str(f.relative_to(shared_data))] = into_cube(raw)
    return out


def test_every_shared_file_is_read(shared_data, shared_clouds):
    names = {Path(k).name for k in shared_clouds}
    assert set(DOCUMENTED_POINTS) <= names, sorted(set(DOCUMENTED_POINTS) - names)


@pytest.mark.parametrize("depth, full_depth", [(10, 2), (5, 3)])
def test_shared_files_match_ocnn(shared_clouds, depth, full_depth):
    for name, pts in shared_clouds.items():
        ours = octformer.build_octree(pts, depth, full_depth=full_depth, bbox=CUBE)
        oc, leaf = ocnn_build([pts], depth, full_depth)
        assert_structure_equal(ours, oc, name)
        np.testing.assert_array_equal(ours.point_leaf, leaf, err_msg=f"{name} point_leaf")
        assert_neighbors_equal(ours, oc, name)


def test_shared_files_as_one_batch_match_ocnn(shared_clouds):
    clouds = list(shared_clouds.values())
    ours = build_ours(clouds, 8, 2)
    oc, leaf = ocnn_build(clouds, 8, 2)
    assert_structure_equal(ours, oc, "all files, one call")
    np.testing.assert_array_equal(ours.point_leaf, leaf)
    merged = ocnn_merged(clouds, 8, 2)
    np.testing.assert_array_equal(ours.batch_nnum, merged.batch_nnum.numpy())
    np.testing.assert_array_equal(ours.batch_nnum_nempty, merged.batch_nnum_nempty.numpy())
    assert_neighbors_equal(ours, merged, "all files, merged")
