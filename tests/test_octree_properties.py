"""Hypothesis properties of build_octree: ordering, parent links, point-in-cell, threads, batching."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import octformer
from octformer import key_to_xyz

HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SMALL = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def cloud(draw, min_points: int = 1, max_points: int = 300, dtype=None) -> np.ndarray:
    """(N, 3) points anywhere in space: uniform, clustered, duplicated, flat, or a single point."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["uniform", "clusters", "duplicates", "plane", "single"]))
    n = 1 if kind == "single" else draw(st.integers(max(min_points, 1), max_points))
    if kind in ("uniform", "single"):
        pts = rng.uniform(-1, 1, (n, 3))
    elif kind == "clusters":
        centers = rng.uniform(-1, 1, (rng.integers(1, 4), 3))
        pts = centers[rng.integers(0, len(centers), n)] + rng.normal(0, 10.0 ** rng.uniform(-5, -1), (n, 3))
    elif kind == "duplicates":
        base = rng.uniform(-1, 1, (rng.integers(1, 6), 3))
        pts = base[rng.integers(0, len(base), n)]
    else:
        pts = rng.uniform(-1, 1, (n, 3))
        pts[:, rng.integers(0, 3)] = rng.uniform(-1, 1)
    pts = pts * 10.0 ** rng.uniform(-3, 3) + rng.uniform(-100, 100, 3)
    dt = dtype or draw(st.sampled_from([np.float32, np.float64]))
    pts = pts.astype(dt)
    if min_points == 0 and draw(st.booleans()):
        pts = pts[:0]
    return pts


def concat(clouds: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    pts = np.concatenate(clouds)
    return pts, np.cumsum([0] + [len(c) for c in clouds]).astype(np.int64)


depth_pairs = st.integers(1, 12).flatmap(lambda d: st.tuples(st.just(d), st.integers(0, min(3, d))))


# ------------------------------------------------------------------ structure


def check_structure(t: octformer.Octree) -> None:
    """Keys sorted per sample, parents = key >> 3, dense top levels, ranks, every leaf holds a point."""
    b = t.batch_size
    for d in range(t.depth + 1):
        keys, children, batch = t.keys[d], t.children[d], t.batch[d]
        assert keys.shape == children.shape == batch.shape == (int(t.nnum[d]),)
        assert np.all(np.diff(batch) >= 0), f"batch[{d}] not grouped by sample"
        for s in range(b):
            ks = keys[batch == s]
            assert np.all(np.diff(ks) > 0), f"keys[{d}] of sample {s} not strictly increasing"
            assert len(ks) == t.batch_nnum[d, s]
            assert np.sum(children[batch == s] >= 0) == t.batch_nnum_nempty[d, s]
            if d <= t.full_depth and t.batch_nnum[d, s]:
                np.testing.assert_array_equal(ks, np.arange(8**d))
        assert keys.min(initial=0) >= 0 and keys.max(initial=0) < 8**d
        nonempty = children >= 0
        np.testing.assert_array_equal(children[nonempty], np.arange(nonempty.sum()), err_msg=f"children[{d}] ranks")
        if d < t.full_depth:
            assert nonempty.all(), "levels above full_depth are all non-empty (ocnn convention)"
        if d >= 1:
            parents = np.flatnonzero(t.children[d - 1] >= 0)
            assert len(keys) == 8 * len(parents), f"depth {d}: 8 children per non-empty parent"
            parent_of = parents[np.arange(len(keys)) // 8]
            np.testing.assert_array_equal(keys >> 3, t.keys[d - 1][parent_of], err_msg=f"parent of keys[{d}]")
            np.testing.assert_array_equal(keys & 7, np.arange(len(keys)) % 8)
            np.testing.assert_array_equal(batch, t.batch[d - 1][parent_of])
            if d - 1 >= t.full_depth:
                # a node is non-empty exactly when one of its 8 children is
                has_child = (children.reshape(-1, 8) >= 0).any(axis=1)
                np.testing.assert_array_equal(has_child, np.ones(len(parents), bool))
    leaves = int(t.nnum_nempty[t.depth])
    if len(t.point_leaf):
        assert t.point_leaf.min() >= 0 and t.point_leaf.max() < leaves
    assert np.all(np.bincount(t.point_leaf, minlength=leaves) > 0), "a non-empty leaf without points"
    np.testing.assert_array_equal(t.nnum, t.batch_nnum.sum(axis=1))


def xyz_of_keys(keys: np.ndarray) -> np.ndarray:
    """The test's own Morton decoder, bit by bit (x bit at 3i+2, y at 3i+1, z at 3i)."""
    keys = np.asarray(keys, dtype=np.int64)
    out = np.zeros((keys.shape[0], 3), dtype=np.int64)
    for i in range(21):
        for axis, shift in ((0, 2), (1, 1), (2, 0)):
            out[:, axis] |= ((keys >> (3 * i + shift)) & 1) << i
    return out


def test_key_to_xyz_matches_a_bitwise_decode():
    rng = np.random.default_rng(11)
    keys = np.concatenate([rng.integers(0, 2**63 - 1, 20_000, dtype=np.int64), [0, 1, 7, 8, 2**63 - 1]])
    got = key_to_xyz(keys)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, xyz_of_keys(keys))
    with pytest.raises(octformer.OctformerError, match="keys: expected non-negative"):
        key_to_xyz(np.array([5, -1]))


@pytest.mark.parametrize("offsets", [None, [0, 300, 300, 1000]])
@pytest.mark.parametrize("nonempty", [True, False])
def test_cell_centers_are_origin_plus_half_cell_steps(offsets, nonempty):
    pts = np.random.default_rng(12).normal(size=(1000, 3)) * [3.0, 1.0, 0.2]
    t = octformer.build_octree(pts, 7, offsets=None if offsets is None else np.array(offsets))
    for d in (0, 2, 5, 7):
        keep = t.children[d] >= 0 if nonempty else np.ones(t.nnum[d], bool)
        sample = t.batch[d][keep]
        cell = t.voxel_size[sample] * 2.0 ** (t.depth - d)
        want = t.origin[sample] + (xyz_of_keys(t.keys[d][keep]) + 0.5) * cell
        got = t.cell_centers(d, nonempty=nonempty)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want)


def leaf_of_points(t: octformer.Octree) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) leaf cell coords and (N,) sample index of every point."""
    leaf = t.point_leaf
    xyz = xyz_of_keys(t.leaf_keys())[leaf]
    sample = t.batch[t.depth][t.children[t.depth] >= 0][leaf]
    return xyz, sample


def assert_points_in_leaves(t: octformer.Octree, pts: np.ndarray, coords: np.ndarray | None = None) -> None:
    """Every point lies in its leaf cell [origin + x*cell, origin + (x+1)*cell], to a few ulps of the build precision."""
    xyz, sample = leaf_of_points(t)
    p = np.asarray(pts if coords is None else coords, np.float64)
    origin, cell = t.origin[sample], t.voxel_size[sample]
    lo = origin + xyz * cell
    hi = lo + cell
    eps = np.finfo(pts.dtype).eps
    tol = 4 * eps * (np.abs(p) + np.abs(origin) + cell * 2**t.depth)
    assert np.all(p >= lo - tol), np.max(lo - tol - p)
    assert np.all(p <= hi + tol), np.max(p - hi - tol)
    # the metric box recorded on the tree covers every point too
    assert np.all(p >= origin - tol) and np.all(p <= origin + cell * 2**t.depth + tol)


@HYP
@given(clouds=st.lists(cloud(min_points=0), min_size=1, max_size=3), dfd=depth_pairs)
def test_structure_and_points_in_cells(clouds, dfd):
    depth, full_depth = dfd
    pts, offsets = concat(clouds)
    t = octformer.build_octree(pts, depth, full_depth=full_depth, offsets=offsets)
    assert t.depth == depth and t.full_depth == full_depth and t.batch_size == len(clouds)
    check_structure(t)
    assert_points_in_leaves(t, pts)


@SMALL
@given(pts=cloud(dtype=np.float64), depth=st.integers(13, 21))
def test_deep_trees_float64(pts, depth):
    """Depths past ocnn's 16-level limit keep the same invariants (keys use up to 63 bits)."""
    t = octformer.build_octree(pts, depth)
    check_structure(t)
    assert_points_in_leaves(t, pts)


@SMALL
@given(pts=cloud(), depth=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_points_in_cells_explicit_bbox(pts, depth, seed):
    """A loose, non-cubic explicit box: cells differ per axis, points still land in their cell."""
    rng = np.random.default_rng(seed)
    p64 = pts.astype(np.float64)
    lo = p64.min(axis=0) - rng.uniform(0, 5, 3) * (np.ptp(p64, axis=0) + 1e-3)
    hi = p64.max(axis=0) + rng.uniform(0, 5, 3) * (np.ptp(p64, axis=0) + 1e-3)
    t = octformer.build_octree(pts, depth, bbox=(lo, hi))
    np.testing.assert_allclose(t.origin[0], lo)
    np.testing.assert_allclose(t.voxel_size[0], (hi - lo) / 2**depth)
    check_structure(t)
    assert_points_in_leaves(t, pts)


def test_points_on_cell_borders_go_to_the_upper_cell():
    """Exact borders belong to the cell above (floor), the box maximum to the last cell."""
    pts = np.array([[0.0, 0.0, 0.0], [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [0.5, -0.5, 0.25]], np.float32)
    t = octformer.build_octree(pts, 3, bbox=((-1,) * 3, (1,) * 3))
    xyz, _ = leaf_of_points(t)
    want = np.floor((pts.astype(np.float64) + 1) * 4).clip(0, 7)
    np.testing.assert_array_equal(xyz, want)


# ------------------------------------------------------------------ determinism / batching


@SMALL
@given(clouds=st.lists(cloud(min_points=0), min_size=1, max_size=3), dfd=depth_pairs)
def test_one_and_two_threads_identical(clouds, dfd):
    depth, full_depth = dfd
    pts, offsets = concat(clouds)
    feats = np.arange(len(pts) * 2, dtype=np.float32).reshape(-1, 2)
    kw = dict(full_depth=full_depth, offsets=offsets, features=feats)
    one = octformer.build_octree(pts, depth, num_threads=1, **kw)
    two = octformer.build_octree(pts, depth, num_threads=2, **kw)
    assert one == two
    for d in range(depth + 1):
        for nonempty in (True, False):
            np.testing.assert_array_equal(one.neighbors(d, nonempty, num_threads=1), two.neighbors(d, nonempty, num_threads=2))


def test_threads_identical_on_large_batch(monkeypatch):
    """Large enough for the parallel paths (several 16k chunks, a batch built in parallel)."""
    rng = np.random.default_rng(11)
    pts = np.concatenate([rng.normal(0, 1, (70_000, 3)), rng.uniform(-5, 5, (50_000, 3))]).astype(np.float32)
    offsets = np.array([0, 30_000, 30_000, 120_000])
    normals = rng.normal(size=pts.shape).astype(np.float32)
    trees = [octformer.build_octree(pts, 10, offsets=offsets, normals=normals, num_threads=n) for n in (1, 2, 3)]
    monkeypatch.setenv("OCTFORMER_NUM_THREADS", "2")
    trees.append(octformer.build_octree(pts, 10, offsets=offsets, normals=normals))
    assert all(t == trees[0] for t in trees[1:])
    for d in (3, 8, 10):
        for nonempty in (True, False):
            np.testing.assert_array_equal(trees[0].neighbors(d, nonempty, num_threads=1), trees[1].neighbors(d, nonempty, num_threads=2))


@SMALL
@given(clouds=st.lists(cloud(min_points=0), min_size=1, max_size=4), dfd=depth_pairs, explicit=st.booleans())
def test_batch_in_one_call_equals_merge_of_separate_builds(clouds, dfd, explicit):
    depth, full_depth = dfd
    pts, offsets = concat(clouds)
    dtype = pts.dtype
    clouds = [c.astype(dtype) for c in clouds]
    bbox = ((-200.0, -300.0, -250.0), (250.0, 300.0, 200.0)) if explicit else None
    rng = np.random.default_rng(len(pts))
    feats = rng.normal(size=(len(pts), 3)).astype(np.float32)
    normals = rng.normal(size=(len(pts), 3)).astype(np.float32)
    kw = dict(full_depth=full_depth, bbox=bbox, clip=explicit)
    batch = octformer.build_octree(pts, depth, offsets=offsets, features=feats, normals=normals, **kw)
    parts = [
        octformer.build_octree(c, depth, features=feats[offsets[i] : offsets[i + 1]], normals=normals[offsets[i] : offsets[i + 1]], **kw)
        for i, c in enumerate(clouds)
    ]
    merged = octformer.Octree.merge(parts)
    assert batch == merged
    for d in range(1, depth + 1):
        np.testing.assert_array_equal(batch.neighbors(d), merged.neighbors(d))


# ------------------------------------------------------------------ serialisation


@SMALL
@given(clouds=st.lists(cloud(min_points=0), min_size=1, max_size=3), dfd=depth_pairs, with_feats=st.booleans())
def test_pickle_and_torch_round_trips(clouds, dfd, with_feats):
    depth, full_depth = dfd
    pts, offsets = concat(clouds)
    feats = np.ones((len(pts), 2), np.float32) if with_feats else None
    t = octformer.build_octree(pts, depth, full_depth=full_depth, offsets=offsets, features=feats)
    t.neighbors(depth)  # the cache is dropped on pickling, equality ignores it
    back = pickle.loads(pickle.dumps(t))
    assert back == t and back._neighbor_cache == {}
    np.testing.assert_array_equal(back.neighbors(depth), t.neighbors(depth))
    pytest.importorskip("torch")
    tt = t.to_torch()
    assert tt.numpy() == t
    assert pickle.loads(pickle.dumps(tt)).numpy() == t
    # a different tree is not equal
    if len(pts):
        other = octformer.build_octree(pts, depth + 1 if depth < 21 else depth - 1, offsets=offsets)
        assert other != t


def test_numpy_trees_pickle_as_octf_and_others_as_arrays():
    """Numpy trees travel as OCTF bytes plus point->leaf; torch trees and trees OCTF refuses as arrays."""
    pts = np.random.default_rng(13).normal(size=(20_000, 3))
    t = octformer.build_octree(pts, 9, normals=pts)
    arrays = sum(a.nbytes for a in (*t.keys, *t.children, *t.batch, t.point_leaf, t.normals))
    data = pickle.dumps(t)
    assert len(data) < arrays / 3, (len(data), arrays)
    back = pickle.loads(data)
    assert back == t
    assert all(isinstance(k, np.ndarray) for k in back.keys)
    # an edited tree (a child rank out of order) is refused by OCTF, so its arrays travel as they are
    bad = dataclasses.replace(t, children=[c.copy() for c in t.children])
    ranks = np.flatnonzero(bad.children[5] >= 0)
    bad.children[5][ranks[[0, 1]]] = bad.children[5][ranks[[1, 0]]]
    back = pickle.loads(pickle.dumps(bad))
    assert len(pickle.dumps(bad)) > arrays / 2 and back == bad
    # geometry that is not float64 would come back as float64 from OCTF, so it travels as arrays
    for narrow in (
        dataclasses.replace(t, origin=t.origin.astype(np.float32)),
        dataclasses.replace(t, keys=[k.astype(np.int32) for k in t.keys]),
        dataclasses.replace(t, point_leaf=t.point_leaf.astype(np.int32)),
    ):
        back = pickle.loads(pickle.dumps(narrow))
        assert back == narrow
        dtypes = lambda tree: [a.dtype for a in (tree.origin, tree.point_leaf, *tree.keys)]  # noqa: E731
        assert dtypes(back) == dtypes(narrow)
    torch = pytest.importorskip("torch")
    tt = t.to_torch()
    back = pickle.loads(pickle.dumps(tt))
    assert isinstance(back.keys[3], torch.Tensor) and back.numpy() == t


# ------------------------------------------------------------------ leaf signals


@SMALL
@given(clouds=st.lists(cloud(min_points=0), min_size=1, max_size=3), depth=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_features_and_normals_average_like_numpy(clouds, depth, seed):
    pts, offsets = concat(clouds)
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(len(pts), 5)).astype(np.float32)
    normals = rng.normal(size=(len(pts), 3)).astype(np.float32)
    t = octformer.build_octree(pts, depth, offsets=offsets, features=feats, normals=normals)
    leaves = int(t.nnum_nempty[depth])
    sums = np.zeros((leaves, 5))
    np.add.at(sums, t.point_leaf, feats.astype(np.float64))
    counts = np.zeros(leaves)
    np.add.at(counts, t.point_leaf, 1)
    assert t.features.shape == (leaves, 5) and t.features.dtype == np.float32
    np.testing.assert_allclose(t.features, sums / counts[:, None], rtol=1e-6, atol=1e-6)
    nsum = np.zeros((leaves, 3))
    np.add.at(nsum, t.point_leaf, normals.astype(np.float64))
    norm = np.linalg.norm(nsum, axis=1, keepdims=True)
    assert t.normals.shape == (leaves, 3)
    ok = norm[:, 0] > 1e-6
    np.testing.assert_allclose(t.normals[ok], nsum[ok] / norm[ok], rtol=1e-5, atol=1e-6)


def test_cancelling_normals_give_zero_not_nan():
    pts = np.zeros((2, 3), np.float32)
    t = octformer.build_octree(pts, 4, bbox=((-1,) * 3, (1,) * 3), normals=np.array([[0, 0, 1], [0, 0, -1]], np.float32))
    np.testing.assert_array_equal(t.normals, np.zeros((1, 3), np.float32))


def test_integer_and_1d_features_are_averaged_as_float():
    pts = np.array([[0.1, 0.1, 0.1], [0.1, 0.1, 0.1], [0.9, 0.9, 0.9]], np.float32)
    t = octformer.build_octree(pts, 2, bbox=((0,) * 3, (1,) * 3), features=np.array([1, 2, 7]))
    np.testing.assert_array_equal(t.features, np.array([[1.5], [7.0]], np.float32))


# ------------------------------------------------------------------ voxel_size


@HYP
@given(
    extent=st.tuples(*[st.floats(1e-3, 1e3) for _ in range(3)]),
    k=st.integers(1, 20),
    nudge=st.sampled_from([1.0, 1 - 1e-9, 1 + 1e-9, 0.7, 1.3]),
)
def test_voxel_size_picks_smallest_depth_with_cell_at_most_voxel_size(extent, k, nudge):
    hi = np.array(extent)
    voxel = float(hi.max() / 2**k * nudge)
    # reference: walk down the levels until the largest cell fits
    want = 1
    while hi.max() / 2**want > voxel:
        want += 1
    assume(want <= 21)
    pts = np.array([[0.0, 0.0, 0.0], hi * 0.5])
    t = octformer.build_octree(pts, voxel_size=voxel, bbox=((0, 0, 0), hi))
    assert t.depth == want
    assert t.voxel_size.max() <= voxel
    if want > 1:
        assert t.voxel_size.max() * 2 > voxel


def test_voxel_size_with_auto_box():
    rng = np.random.default_rng(2)
    pts = rng.uniform(0, 10, (500, 3))
    side = float(np.ptp(pts, axis=0).max())
    t = octformer.build_octree(pts, voxel_size=0.05)
    assert t.depth == int(np.ceil(np.log2(side / 0.05)))
    assert t.voxel_size.max() <= 0.05 < 2 * t.voxel_size.max()
    assert_points_in_leaves(t, pts)


# ------------------------------------------------------------------ neighbours (brute force)


def brute_neighbors(t: octformer.Octree, d: int, nonempty: bool, periodic_y: bool) -> np.ndarray:
    """27-neighbour table by dictionary look-up of (sample, x, y, z), y wrapping when periodic."""
    keys, children, batch = t.keys[d], t.children[d], t.batch[d]
    if nonempty:
        keep = children >= 0
        keys, batch = keys[keep], batch[keep]
    xyz = key_to_xyz(keys).astype(np.int64)
    index = {(int(b), *map(int, c)): i for i, (b, c) in enumerate(zip(batch, xyz))}
    side = 1 << d
    out = np.full((len(keys), 27), -1, np.int32)
    for i, (b, (x, y, z)) in enumerate(zip(batch, xyz)):
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dz in (-1, 0, 1):
                    nx, ny, nz = x + dx, y + dy, z + dz
                    if periodic_y:
                        ny %= side
                    if not (0 <= nx < side and 0 <= ny < side and 0 <= nz < side):
                        continue
                    out[i, (dx + 1) * 9 + (dy + 1) * 3 + (dz + 1)] = index.get((int(b), nx, ny, nz), -1)
    return out


@SMALL
@given(clouds=st.lists(cloud(max_points=120), min_size=1, max_size=2), dfd=st.integers(1, 6).flatmap(lambda d: st.tuples(st.just(d), st.integers(0, min(2, d)))))
def test_neighbors_cartesian_brute_force(clouds, dfd):
    depth, full_depth = dfd
    pts, offsets = concat(clouds)
    t = octformer.build_octree(pts, depth, full_depth=full_depth, offsets=offsets)
    for d in range(depth + 1):
        for nonempty in (True, False):
            np.testing.assert_array_equal(t.neighbors(d, nonempty), brute_neighbors(t, d, nonempty, False), err_msg=f"d={d} nonempty={nonempty}")


@SMALL
@given(clouds=st.lists(cloud(max_points=120), min_size=1, max_size=2), dfd=st.integers(1, 6).flatmap(lambda d: st.tuples(st.just(d), st.integers(0, min(2, d)))))
def test_neighbors_cylindrical_wrap_in_phi(clouds, dfd):
    depth, full_depth = dfd
    pts, offsets = concat(clouds)
    t = octformer.build_octree(pts, depth, full_depth=full_depth, offsets=offsets, coords="cylindrical")
    assert t.coords == "cylindrical" and t.periodic == (False, True, False)
    for d in range(depth + 1):
        for nonempty in (True, False):
            np.testing.assert_array_equal(t.neighbors(d, nonempty), brute_neighbors(t, d, nonempty, True), err_msg=f"d={d} nonempty={nonempty}")


def test_cylindrical_neighbors_cross_the_phi_seam():
    """Two points just either side of phi = ±pi are phi-neighbours only in a cylindrical tree."""
    eps = 1e-3
    pts = np.array([[-1.0, eps, 0.0], [-1.0, -eps, 0.0], [1.0, 0.0, 0.5]])
    t = octformer.build_octree(pts, 5, coords="cylindrical", bbox=((0, -np.pi, -1), (2, np.pi, 1)))
    rho_phi_z = np.stack([np.hypot(pts[:, 0], pts[:, 1]), np.arctan2(pts[:, 1], pts[:, 0]), pts[:, 2]], axis=1)
    assert_points_in_leaves(t, pts, rho_phi_z)
    xyz, _ = leaf_of_points(t)
    assert xyz[0, 1] == 31 and xyz[1, 1] == 0  # phi ≈ +pi in the last column, ≈ -pi in the first
    table = t.neighbors(5)
    a, b = t.point_leaf[0], t.point_leaf[1]
    assert table[a, 1 * 9 + 2 * 3 + 1] == b  # +phi from the top column wraps to column 0
    assert table[b, 1 * 9 + 0 * 3 + 1] == a
    flat = octformer.build_octree(rho_phi_z, 5, bbox=((0, -np.pi, -1), (2, np.pi, 1)))
    assert flat.neighbors(5)[flat.point_leaf[0], 1 * 9 + 2 * 3 + 1] == -1


@SMALL
@given(pts=cloud(), depth=st.integers(1, 8))
def test_cylindrical_points_in_cells(pts, depth):
    t = octformer.build_octree(pts, depth, coords="cylindrical")
    p = pts.astype(np.float64)
    rho_phi_z = np.stack([np.hypot(p[:, 0], p[:, 1]), np.arctan2(p[:, 1], p[:, 0]), p[:, 2]], axis=1)
    np.testing.assert_allclose(t.origin[0, :2], [0.0, -np.pi])
    np.testing.assert_allclose(t.voxel_size[0, 1], 2 * np.pi / 2**depth)
    check_structure(t)
    assert_points_in_leaves(t, pts.astype(np.float64), rho_phi_z)


def test_threads_identical_on_real_lidar(shared_data):
    """A real 123k-point scan: 1, 2 and 4 threads give the same tree, leaf averages and neighbours."""
    path = shared_data / "semantickitti" / "velodyne" / "000000.bin"
    if not path.exists():
        pytest.skip(f"{path} missing")
    scan = np.fromfile(path, dtype="<f4").reshape(-1, 4)
    pts, remission = scan[:, :3], scan[:, 3:]
    trees = [octformer.build_octree(pts, 12, features=remission, num_threads=n) for n in (1, 2, 4)]
    assert trees[0] == trees[1] == trees[2]
    check_structure(trees[0])
    assert_points_in_leaves(trees[0], pts)
    for d in (6, 12):
        a, b = trees[0].neighbors(d, num_threads=1), trees[1].neighbors(d, num_threads=2)
        np.testing.assert_array_equal(a, b)


@SMALL
@given(clouds=st.lists(cloud(max_points=150), min_size=1, max_size=2), depth=st.integers(1, 8), order=st.randoms(use_true_random=False))
def test_neighbor_cache_order_does_not_matter(clouds, depth, order):
    """Tables asked for in any order (deep first, all-nodes first, torch-backed tree) equal a fresh ascending build."""
    pts, offsets = concat(clouds)
    ref = octformer.build_octree(pts, depth, offsets=offsets)
    want = {(d, ne): ref.neighbors(d, ne) for d in range(depth + 1) for ne in (True, False)}
    requests = list(want)
    order.shuffle(requests)
    t = octformer.build_octree(pts, depth, offsets=offsets)
    for d, ne in requests:
        np.testing.assert_array_equal(t.neighbors(d, ne), want[(d, ne)], err_msg=f"d={d} nonempty={ne}")
    pytest.importorskip("torch")
    tt = octformer.build_octree(pts, depth, offsets=offsets).to_torch()
    for d, ne in requests:
        got = tt.neighbors(d, ne)
        assert type(got).__module__.startswith("torch")
        np.testing.assert_array_equal(got.numpy(), want[(d, ne)])


# ------------------------------------------------------------------ single-cloud fast path


def _general_path(pts: np.ndarray, depth: int, full_depth: int, bbox, clip: bool) -> octformer.Octree:
    """The same build through the general path (offsets given, so the fast path is not taken)."""
    return octformer.build_octree(
        pts, depth, full_depth=full_depth, bbox=bbox, clip=clip, offsets=np.array([0, len(pts)])
    )


@HYP
@given(
    pts=cloud(min_points=0),
    dfd=depth_pairs,
    box=st.sampled_from(["none", "auto", "tuple", "arrays", "list-of-arrays"]),
    clip=st.booleans(),
)
def test_single_cloud_fast_path_equals_general_path(pts, dfd, box, clip):
    depth, full_depth = dfd
    calls = []
    real = octformer.octree._core.build_single

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is not None)
        return out

    if box in ("none", "auto"):
        bbox = None if box == "none" else "auto"
    else:
        lo = (pts.min(axis=0) if len(pts) else np.zeros(3)) - 1.0
        hi = (pts.max(axis=0) if len(pts) else np.zeros(3)) + 1.0
        bbox = {"tuple": (tuple(map(float, lo)), tuple(map(float, hi))), "arrays": (lo, hi), "list-of-arrays": [lo, hi]}[box]
    octformer.octree._core.build_single = spy
    try:
        fast = octformer.build_octree(pts, depth, full_depth=full_depth, bbox=bbox, clip=clip)
    finally:
        octformer.octree._core.build_single = real
    assert calls == [True]  # the fast path built it
    general = _general_path(pts, depth, full_depth, bbox, clip)
    assert fast == general
    for d in range(depth + 1):
        assert fast.keys[d].dtype == np.int64 and fast.children[d].dtype == np.int32 and fast.batch[d].dtype == np.int32
    assert fast.origin.dtype == np.float64 and fast.origin.shape == (1, 3) and fast.voxel_size.shape == (1, 3)
    assert pickle.loads(pickle.dumps(fast)) == fast


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["scan[:, :3]", "fortran", "reversed", "every-other", "reversed-columns"])
def test_single_cloud_fast_path_takes_strided_views(dtype, layout):
    """Views that are not C-contiguous are copied natively; the tree and errors are those of the contiguous copy."""
    rng = np.random.default_rng(6)
    scan = rng.uniform(-1, 1, (301, 4)).astype(dtype)
    view = {
        "scan[:, :3]": scan[:, :3],
        "fortran": np.asfortranarray(scan[:, :3]),
        "reversed": scan[::-1, :3],
        "every-other": scan[::2, 1:],
        "reversed-columns": scan[:, 2::-1],
    }[layout]
    assert not view.flags.c_contiguous
    raw = octformer.octree._core.build_single(view, 6, 2, None, False, None)
    assert raw is not None  # the fast path took it
    assert octformer.build_octree(view, 6) == octformer.build_octree(np.ascontiguousarray(view), 6)
    view[17, 1] = np.nan  # the error names the point in the view's own order
    with pytest.raises(octformer.OctformerError, match=r"point 17, axis 1"):
        octformer.build_octree(view, 6)


@pytest.mark.parametrize(
    "case",
    ["float16", "big-endian", "broadcast-box", "scalar-box", "box-min-above-max", "nan-box", "bad-box-string"],
)
def test_single_cloud_fast_path_declines_and_the_general_path_decides(case):
    rng = np.random.default_rng(5)
    pts = rng.uniform(-1, 1, (200, 3))
    bbox = ((-2.0, -2.0, -2.0), (2.0, 2.0, 2.0))
    raises = False
    if case == "float16":
        pts = pts.astype(np.float16)
    elif case == "big-endian":
        pts = pts.astype(">f8")
    elif case == "broadcast-box":
        bbox = (np.full((1, 3), -2.0), np.full((1, 3), 2.0))
    elif case == "scalar-box":
        bbox = (-2.0, 2.0)
    elif case == "box-min-above-max":
        bbox, raises = ((2.0, -2.0, -2.0), (-2.0, 2.0, 2.0)), True
    elif case == "nan-box":
        bbox, raises = ((np.nan, -2.0, -2.0), (2.0, 2.0, 2.0)), True
    else:
        bbox, raises = "tight", True
    assert octformer.octree._core.build_single(pts, 6, 2, bbox, False, None) is None
    if raises:
        with pytest.raises(octformer.OctformerError, match="bbox"):
            octformer.build_octree(pts, 6, bbox=bbox)
        return
    t = octformer.build_octree(pts, 6, bbox=bbox)
    ref = octformer.build_octree(np.ascontiguousarray(pts, dtype=np.float64 if pts.dtype != np.float16 else np.float32), 6,
                                 bbox=((-2.0, -2.0, -2.0), (2.0, 2.0, 2.0)))
    assert t == ref


def test_single_cloud_batch_ids_small_and_lazily_mapped_buffers():
    """Batch ids come from a native zero buffer (small trees) or a lazily zeroed mapping (large
    ones): zeros either way, writable, and never shared between two trees."""
    rng = np.random.default_rng(9)
    for n, depth in ((500, 6), (60_000, 10)):  # ~10^4 nodes (< 1 MiB of ids) and ~5·10^5 (more)
        pts = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
        a, b = octformer.build_octree(pts, depth), octformer.build_octree(pts, depth)
        total = int(a.nnum.sum())
        assert (total * 4 >= octformer.octree.LAZY_ZEROS_MIN_BYTES) == (n == 60_000)
        for d in range(depth + 1):
            assert a.batch[d].shape == a.keys[d].shape and not a.batch[d].any()
            assert a.batch[d].flags.writeable
        a.batch[depth][:] = 7
        assert not b.batch[depth].any() and not a.batch[depth - 1].any()
        assert b == _general_path(pts, depth, 2, None, False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cylindrical_coordinates_are_numpys_float64_formula_bit_for_bit(dtype):
    """(rho, phi, z) in float64 whatever the input precision; signed zeros keep atan2's branch."""
    rng = np.random.default_rng(7)
    pts = np.concatenate([rng.normal(size=(5000, 3)) * 50, [[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [-1.0, -0.0, 0.0]]]).astype(dtype)
    wide = pts.astype(np.float64)
    want = np.stack([np.hypot(wide[:, 0], wide[:, 1]), np.arctan2(wide[:, 1], wide[:, 0]), wide[:, 2]], axis=1)
    got = octformer.octree._cylindrical(pts)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
