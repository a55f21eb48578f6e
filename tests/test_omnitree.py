"""Omnitrees: octree equivalence, point location vs brute force, build rule, OCTF bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import octformer
from octformer import CorruptDataError, OctformerError
from octformer.omnitree import Omnitree


def _brute_leaf(lo: np.ndarray, size: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Index of the (unique) leaf box containing each cell, by scanning every leaf."""
    inside = ((cells[:, None, :] >= lo[None]) & (cells[:, None, :] < (lo + size)[None])).all(axis=2)
    assert (inside.sum(axis=1) == 1).all(), "leaves must tile the grid without overlap"
    return inside.argmax(axis=1)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 200), st.integers(1, 6), st.integers(0, 3), st.integers(1, 3))
def test_octree_to_omnitree_keeps_leaf_cells(seed: int, n: int, depth: int, full_depth: int, batch: int) -> None:
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 3)) * rng.uniform(0.1, 3, size=3)
    offsets = np.linspace(0, n, batch + 1).astype(np.int64)
    tree = octformer.build_octree(pts, depth, full_depth=full_depth, offsets=offsets, num_threads=1)
    for b in range(batch):
        omni = Omnitree.from_octree(tree, sample=b)
        assert omni.dims == 3 and omni.max_level == depth
        # one omnitree node per octree node of the sample, full masks on split nodes
        assert omni.num_nodes == int(tree.batch_nnum[:, b].sum())
        assert set(np.unique(omni.masks)) <= {0, 7}
        # occupied leaves are exactly the sample's octree leaves, in the same (Morton) order
        sel = tree.batch[depth][tree.children[depth] >= 0] == b
        np.testing.assert_array_equal(omni.occupied_cells(), tree.xyz(depth)[sel])
        lo, hi = omni.leaf_boxes()
        centers = (lo + hi)[omni.occupied] / 2
        np.testing.assert_allclose(centers, tree.cell_centers(depth)[sel], rtol=0, atol=1e-9)
        # locating each point's octree leaf centre finds the same leaf (rank among occupied leaves)
        pl = tree.point_leaf[offsets[b] : offsets[b + 1]]
        if len(pl):
            leaf = omni.locate(tree.cell_centers(depth)[pl])
            assert omni.occupied[leaf].all()
            occupied_rank = np.cumsum(omni.occupied) - 1
            base = int(tree.batch_nnum_nempty[depth, :b].sum())
            np.testing.assert_array_equal(occupied_rank[leaf], pl - base)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 4),
    st.integers(0, 6),
    st.sampled_from(["carve", "extent"]),
    st.floats(0.0, 1.0),
    st.integers(0, 2**32 - 1),
    st.integers(0, 150),
)
def test_build_and_locate_agree_with_brute_force(dims: int, level: int, rule: str, ratio: float, seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    side = 1 << level
    # clustered cells exercise anisotropic splits
    center = rng.integers(0, side, size=dims)
    spread = rng.integers(0, side, size=dims) // 2 + 1
    cells = np.clip(center + rng.integers(-spread, spread + 1, size=(n, dims)), 0, side - 1)
    omni = Omnitree.from_cells(cells, level, rule=rule, ratio=ratio)
    lo, size = omni.leaf_cells()
    # leaves tile the grid
    assert int(np.prod(size, axis=1).sum()) == side**dims
    # occupied leaves are single finest cells, exactly the distinct input cells
    occ = omni.occupied_cells()
    assert (size[omni.occupied] == 1).all()
    assert {tuple(c) for c in occ} == {tuple(c) for c in cells}
    # O(depth) location == brute-force scan, on input cells and random queries
    queries = np.concatenate([cells, rng.integers(0, side, size=(100, dims))]).astype(np.int64)
    np.testing.assert_array_equal(omni.locate_cells(queries), _brute_leaf(lo, size, queries))
    outside = np.full((2, dims), side, dtype=np.int64)
    outside[1] = -1
    np.testing.assert_array_equal(omni.locate_cells(outside), [-1, -1])
    # round trip through OCTF bytes is exact and canonical
    data = omni.to_bytes()
    back = Omnitree.from_bytes(data)
    assert back == omni and back.to_bytes() == data


def test_locate_points_uses_half_open_cells() -> None:
    rng = np.random.default_rng(3)
    pts = rng.uniform(-2, 5, size=(500, 2))
    omni = Omnitree.from_points(pts, 5, bbox=((-2, -2), (5, 5)))
    leaf = omni.locate(pts)
    assert omni.occupied[leaf].all()
    lo, hi = omni.leaf_boxes()
    assert ((pts >= lo[leaf] - 1e-12) & (pts < hi[leaf] + 1e-12)).all()
    # half-open boxes: a leaf owns its lower corner cell, never the cell just past its upper corner
    clo, csize = omni.leaf_cells()
    np.testing.assert_array_equal(omni.locate_cells(clo), np.arange(omni.num_leaves))
    past = clo + csize
    inside = (past < (1 << 5)).all(axis=1)
    assert (omni.locate_cells(past[inside]) != np.arange(omni.num_leaves)[inside]).all()
    assert omni.locate(np.array([[-3.0, 0.0], [0.0, 6.0]])).tolist() == [-1, -1]


def test_refinement_rules_on_a_line() -> None:
    # points along a line in x at fixed (y, z) = (5, 9) in a 64^3 grid
    x = np.arange(64)
    cells = np.stack([x, np.full(64, 5), np.full(64, 9)], axis=1)
    carve = Omnitree.from_cells(cells, 6)
    extent = Omnitree.from_cells(cells, 6, rule="extent", ratio=0.5)
    assert carve.masks[0] == 0b110  # y and z each have an empty half: cut them away first
    assert extent.masks[0] == 0b001  # the points span x: split x
    tree = octformer.build_octree((cells + 0.5).astype(np.float64), 6, full_depth=0, bbox=((0, 0, 0), (64, 64, 64)))
    octo = Omnitree.from_octree(tree)
    for omni in (carve, extent, octo):
        np.testing.assert_array_equal(omni.occupied_cells(), cells)
    # carving: 6 levels of (y, z) splits, then a binary tree over x; the octree needs 8 * 63 + 1
    assert carve.num_nodes == 1 + 6 * 4 + 126 and octo.num_nodes == 8 * 63 + 1
    assert carve.num_nodes < octo.num_nodes < extent.num_nodes


def test_every_byte_corruption_and_truncation_raise() -> None:
    rng = np.random.default_rng(1)
    omni = Omnitree.from_cells(rng.integers(0, 16, size=(30, 4)), 4, rule="extent", ratio=0.4, origin=(1, 2, 3, 4), cell=0.5)
    data = omni.to_bytes()
    for i in range(len(data)):
        for x in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= x
            with pytest.raises(CorruptDataError):
                Omnitree.from_bytes(bytes(bad))
    for n in range(len(data)):
        with pytest.raises(CorruptDataError):
            Omnitree.from_bytes(data[:n])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise(data: bytes) -> None:
    with pytest.raises(CorruptDataError):
        Omnitree.from_bytes(data)


def test_descriptor_validation_and_arguments() -> None:
    ok = Omnitree.from_preorder([0b10, 0, 0], [0, 1], dims=2, max_level=1)
    assert ok.num_leaves == 2 and ok.leaf_cells()[0].tolist() == [[0, 0], [0, 1]]
    with pytest.raises(OctformerError, match="masks"):
        Omnitree.from_preorder([0b10, 0], [0], dims=2, max_level=1)  # unfinished node
    with pytest.raises(OctformerError, match="masks"):
        Omnitree.from_preorder([0b10, 0b10, 0, 0, 0], [0, 0, 0], dims=2, max_level=1)  # too deep
    with pytest.raises(OctformerError, match="masks"):
        Omnitree.from_preorder([0b100, 0, 0], [0, 0], dims=2, max_level=1)  # 3rd dim in a 2-d tree
    with pytest.raises(OctformerError, match="occupied"):
        Omnitree.from_preorder([0b10, 0, 0], [0, 2], dims=2, max_level=1)
    with pytest.raises(OctformerError, match="cells"):
        Omnitree.from_cells(np.array([[0, 4]]), 2)
    with pytest.raises(OctformerError, match="max_level"):
        Omnitree.from_cells(np.zeros((1, 2), dtype=np.int64), 31)
    with pytest.raises(OctformerError, match="points"):
        Omnitree.from_points(np.array([[0.0, 2.0]]), 3, bbox=((0, 0), (1, 1)))


def test_bunny_octree_vs_omnitree_equal_resolution(shared_data: Path, capsys: pytest.CaptureFixture) -> None:
    from plyfile import PlyData

    v = PlyData.read(str(shared_data / "stanford_bunny" / "reconstruction" / "bun_zipper.ply"))["vertex"]
    pts = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    depth = 8
    tree = octformer.build_octree(pts, depth, full_depth=0)
    leaf_cells = tree.xyz(depth)
    omni = Omnitree.from_cells(leaf_cells, depth, origin=tree.origin[0], cell=tree.voxel_size[0])
    octo = Omnitree.from_octree(tree)
    # same occupied voxels at the same resolution (anisotropic pre-order is not Morton order)
    np.testing.assert_array_equal(np.unique(omni.occupied_cells(), axis=0), np.unique(leaf_cells, axis=0))
    np.testing.assert_array_equal(octo.occupied_cells(), leaf_cells)
    assert octo.num_nodes == int(tree.nnum.sum())
    with capsys.disabled():
        print(
            f"\nbunny depth {depth}: octree nodes {int(tree.nnum.sum())} (octf {len(tree.to_bytes())} B), "
            f"omnitree nodes {omni.num_nodes} (octf {len(omni.to_bytes())} B, {omni.descriptor_bits} structure bits)"
        )
