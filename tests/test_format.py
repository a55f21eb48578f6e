"""OCTF format: round trips, canonical bytes, corruption/truncation, streaming, token views."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import octformer
from octformer import CorruptDataError, OctformerError
from octformer import format as octf


def _without_points(t: octformer.Octree) -> octformer.Octree:
    """What OCTF stores: everything but the input-point → leaf map."""
    return dataclasses.replace(t, point_leaf=np.zeros(0, dtype=np.int64))


@st.composite
def trees(draw: st.DrawFn) -> octformer.Octree:
    n = draw(st.integers(0, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 3)) * rng.uniform(0.1, 5.0, size=3)
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=3)))
    offsets = np.array([0, *cuts, n])
    depth = draw(st.integers(1, 7))
    full_depth = draw(st.integers(0, 3))
    coords = draw(st.sampled_from(["cartesian", "cylindrical"]))
    feats = rng.normal(size=(n, draw(st.integers(1, 4)))).astype(np.float32) if draw(st.booleans()) else None
    normals = rng.normal(size=(n, 3)).astype(np.float32) if draw(st.booleans()) else None
    return octformer.build_octree(
        pts, depth, full_depth=full_depth, offsets=offsets, coords=coords, features=feats, normals=normals, num_threads=1
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(), st.sampled_from(octf.CHILD_ORDERS))
def test_round_trip_and_canonical(tree: octformer.Octree, order: str) -> None:
    data = tree.to_bytes(child_order=order)
    back = octformer.Octree.from_bytes(data)
    assert back == _without_points(tree)
    assert back.point_leaf.shape == (0,) and back.point_leaf.dtype == np.int64
    assert octf.encode(back, child_order=order) == data
    h = octf.header(data)
    assert h["child_order"] == order and h["max_depth"] == tree.depth and h["batch_size"] == tree.batch_size
    # per-level counts in the header are the non-empty totals from full_depth down
    assert h["counts"] == [int(x) for x in tree.nnum_nempty[tree.full_depth :]]


@settings(max_examples=30, deadline=None)
@given(trees(), st.integers(0, 7))
def test_streaming_decode_stops_at_depth(tree: octformer.Octree, k: int) -> None:
    data = octf.encode(tree)
    part = octf.decode(data, max_depth=k)
    k = min(k, tree.depth)
    assert part.depth == k and part.full_depth == min(tree.full_depth, k)
    for d in range(k + 1):
        np.testing.assert_array_equal(part.keys[d], tree.keys[d])
        np.testing.assert_array_equal(part.children[d], tree.children[d])
        np.testing.assert_array_equal(part.batch[d], tree.batch[d])
    np.testing.assert_array_equal(part.batch_nnum_nempty, tree.batch_nnum_nempty[: k + 1])
    # geometry of the coarser cells is unchanged
    np.testing.assert_allclose(part.cell_centers(k), tree.cell_centers(k), rtol=0, atol=1e-12)
    if k < tree.depth:
        assert part.features is None and part.normals is None
    # the prefix up to level k is all the streaming decoder needs
    levels = octf.decode_levels(data, max_depth=k)
    if k < tree.depth:
        # streaming: a prefix that ends right after level k's chunk is enough, one byte less is not
        lo, hi = 0, len(data)
        while lo < hi:
            mid = (lo + hi) // 2
            try:
                octf.decode(data[:mid], max_depth=k)
                hi = mid
            except CorruptDataError:
                lo = mid + 1
        assert lo < len(data) - 12
        assert octf.decode(data[:lo], max_depth=k) == part
    assert len(levels) == max(0, k - tree.full_depth + 1)
    for i, d in enumerate(range(tree.full_depth, k + 1)):
        # sample-local keys of the non-empty nodes, grouped by sample like tree.keys
        np.testing.assert_array_equal(levels[i], tree.leaf_keys(d))


def _small_tree() -> octformer.Octree:
    rng = np.random.default_rng(7)
    pts = rng.uniform(-1, 1, size=(40, 3))
    return octformer.build_octree(pts, 4, full_depth=1, offsets=[0, 25, 40], features=rng.normal(size=(40, 2)), num_threads=1)


def test_every_single_byte_corruption_raises() -> None:
    data = octf.encode(_small_tree())
    assert len(data) > 200
    for i in range(len(data)):
        for x in (0x01, 0x10, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= x
            with pytest.raises(CorruptDataError):
                octf.decode(bytes(bad))


def test_every_truncation_and_extension_raises() -> None:
    data = octf.encode(_small_tree(), child_order="xyz_lsb")
    for n in range(len(data)):
        with pytest.raises(CorruptDataError):
            octf.decode(data[:n])
    with pytest.raises(CorruptDataError):
        octf.decode(data + b"\0")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptDataError):
        octformer.Octree.from_bytes(data)
    with pytest.raises(CorruptDataError):
        octformer.Octree.from_bytes(octf.encode(_small_tree())[:30] + data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4))
def test_mutated_valid_files_raise_corrupt(edits: list[tuple[int, int]]) -> None:
    data = bytearray(octf.encode(_small_tree()))
    for pos, x in edits:
        data[pos % len(data)] ^= x
    if bytes(data) == octf.encode(_small_tree()):  # edits cancelled out
        return
    with pytest.raises(CorruptDataError):
        octformer.Octree.from_bytes(bytes(data))


# ---------------------------------------------------------------------- shared data


def _load_points(path: Path) -> np.ndarray | None:
    """(N, 3) float64 xyz of a shared sample file, or None for non-point files."""
    suffix = path.suffix.lower()
    if suffix == ".bin":
        return np.fromfile(path, dtype="<f4").reshape(-1, 4)[:, :3].astype(np.float64)
    if suffix == ".ply":
        from plyfile import PlyData

        v = PlyData.read(str(path))["vertex"]
        return np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    if suffix == ".pcd":
        from pypcd4 import PointCloud

        return PointCloud.from_path(path).numpy(("x", "y", "z")).astype(np.float64)
    if suffix in (".las", ".laz"):
        import laspy

        las = laspy.read(str(path))
        return np.stack([las.x, las.y, las.z], axis=1).astype(np.float64)
    if suffix == ".obj":
        rows = [line.split()[1:4] for line in path.read_text().splitlines() if line.startswith("v ")]
        return np.asarray(rows, dtype=np.float64)
    return None


def test_round_trip_on_every_shared_file(shared_data: Path) -> None:
    seen = 0
    for path in sorted(shared_data.rglob("*")):
        if not path.is_file():
            continue
        pts = _load_points(path)
        if pts is None:
            continue
        pts = pts[np.isfinite(pts).all(axis=1)]
        rng = np.random.default_rng(0)
        tree = octformer.build_octree(pts, 10, full_depth=2, features=rng.normal(size=(len(pts), 2)).astype(np.float32))
        for order in octf.CHILD_ORDERS:
            data = octf.encode(tree, child_order=order)
            back = octf.decode(data)
            assert back == _without_points(tree), path
            assert octf.encode(back, child_order=order) == data, path
        seen += 1
    assert seen == 8  # kitti, las, 3 pcd, 2 ply, obj


# ---------------------------------------------------------------------- token views


@settings(max_examples=40, deadline=None)
@given(trees())
def test_token_views_match_definitions_and_invert(tree: octformer.Octree) -> None:
    t = tree.numpy()
    fd, depth = t.full_depth, t.depth
    flags = octf.split_flags(tree)
    tokens = octf.occupancy_tokens(tree)
    for b in range(t.batch_size):
        # OctGPT: children >= 0 per node, depths full_depth..depth, key order
        ref = np.concatenate([(t.children[d][t.batch[d] == b] >= 0) for d in range(fd, depth + 1)]).astype(np.uint8)
        np.testing.assert_array_equal(flags[b], ref)
        # tokens: 8 sibling flags packed per byte, bit c = child c (top level per dense parent)
        ref_tok = [np.array([ref[0]], dtype=np.uint8)] if fd == 0 else []
        rest = ref[1:] if fd == 0 else ref
        if rest.size:
            ref_tok.append(np.packbits(rest.reshape(-1, 8)[:, ::-1], axis=1).ravel())
        np.testing.assert_array_equal(tokens[b], np.concatenate(ref_tok) if ref_tok else np.zeros(0, np.uint8))
    rebuilt = octf.from_occupancy_tokens(tokens, depth, fd, origin=t.origin, voxel_size=t.voxel_size, coords=t.coords)
    rebuilt2 = octf.from_split_flags(flags, depth, fd, origin=t.origin, voxel_size=t.voxel_size, coords=t.coords)
    plain = dataclasses.replace(_without_points(tree), features=None, normals=None)
    assert rebuilt == plain
    assert rebuilt2 == plain


def test_malformed_token_streams_raise() -> None:
    tree = _small_tree()
    tok = octf.occupancy_tokens(tree)
    with pytest.raises(OctformerError, match="tokens"):
        octf.from_occupancy_tokens([tok[0][:-1], tok[1]], tree.depth, tree.full_depth)
    with pytest.raises(OctformerError, match="tokens"):
        octf.from_occupancy_tokens([np.concatenate([tok[0], [1]]), tok[1]], tree.depth, tree.full_depth)
    zeroed = tok[0].copy()
    zeroed[-1] = 0
    with pytest.raises(OctformerError, match="tokens"):
        octf.from_occupancy_tokens([zeroed, tok[1]], tree.depth, tree.full_depth)
    flags = octf.split_flags(tree)
    with pytest.raises(OctformerError, match="flags"):
        octf.from_split_flags([flags[0][:-3], flags[1]], tree.depth, tree.full_depth)


# ---------------------------------------------------------------------- API surface


def test_save_load_and_header(tmp_path: Path) -> None:
    tree = _small_tree()
    path = tmp_path / "t.octf"
    octformer.save(tree, path)
    assert octformer.load(path) == _without_points(tree)
    assert path.read_bytes()[:8] == b"\x89OCTF\r\n\x1a"
    h = octf.header(path.read_bytes())
    assert h["version"] == (1, 0) and h["node_kind"] == "octree" and h["traversal"] == "bfs"
    assert h["channels"] == 2 and h["dims"] == 3
    np.testing.assert_array_equal(h["origin"], tree.origin)
    np.testing.assert_array_equal(h["scale"], tree.voxel_size)
    # torch trees encode to the same bytes; thread count changes nothing
    assert octf.encode(tree.to_torch()) == octf.encode(tree)
    assert octf.encode(tree, num_threads=1) == octf.encode(tree, num_threads=2)
    assert octf.decode(octf.encode(tree), num_threads=1) == octf.decode(octf.encode(tree), num_threads=2)


def test_bad_trees_and_arguments_raise_named_errors() -> None:
    tree = _small_tree()
    t = tree.numpy()
    bad = dataclasses.replace(t, children=[c.copy() for c in t.children])
    bad.children[3][0] = 1000
    with pytest.raises(OctformerError, match="tree.children"):
        octf.encode(bad)
    bad = dataclasses.replace(t, keys=[k.copy() for k in t.keys])
    bad.keys[4][5] += 1
    with pytest.raises(OctformerError, match="tree.keys"):
        octf.encode(bad)
    with pytest.raises(OctformerError, match="tree.features"):
        octf.encode(dataclasses.replace(t, features=t.features.astype(np.float64)))
    with pytest.raises(OctformerError, match="child_order"):
        octf.encode(t, child_order="zyx")
    with pytest.raises(OctformerError, match="max_depth"):
        octf.decode(octf.encode(t), max_depth=-1)
    with pytest.raises(TypeError, match="data"):
        octf.decode("not bytes")
    with pytest.raises(TypeError, match="tree"):
        octf.encode("not a tree")


def test_omnitree_file_is_not_an_octree() -> None:
    from octformer.omnitree import Omnitree

    data = Omnitree.from_octree(_small_tree()).to_bytes()
    with pytest.raises(OctformerError, match="omnitree"):
        octf.decode(data)
    assert octf.header(data)["node_kind"] == "omnitree"
