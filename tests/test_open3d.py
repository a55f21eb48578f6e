"""Open3D interop: point clouds in, VoxelGrid out (skipped when Open3D is not installed)."""

from __future__ import annotations

import numpy as np
import pytest

import octformer

o3d = pytest.importorskip("open3d")


def _cloud(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-3.0, 5.0, (2000, 3))


def _inside(tree: octformer.Octree, pts: np.ndarray, sample: int = 0) -> np.ndarray:
    """Points strictly below the box's max face (where half-open voxels hold them)."""
    t = (pts - tree.origin[sample]) / tree.voxel_size[sample]
    return pts[np.all(t < 2**tree.depth, axis=1)]


def test_open3d_point_cloud_input_equals_numpy_input():
    pts = _cloud()
    normals = np.random.default_rng(1).normal(size=pts.shape)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    pcd.normals = o3d.utility.Vector3dVector(normals)
    ours = octformer.build_octree(pcd, depth=6)
    ref = octformer.build_octree(pts, depth=6, normals=normals)
    assert ours == ref  # normals come along from the Open3D cloud


@pytest.mark.parametrize("depth", [3, 6])
def test_voxel_grid_holds_the_occupied_cells(depth):
    pts = _cloud(2)
    tree = octformer.build_octree(pts, depth=6)
    grid = tree.to_open3d(depth)
    ours = {tuple(v.grid_index) for v in grid.get_voxels()}
    assert ours == {tuple(c) for c in tree.xyz(depth)}
    # Open3D's own point→voxel query lands every input point in an occupied voxel (our box is
    # closed at its max face, Open3D's voxels are half-open: points on that face are left out)
    assert np.all(grid.check_if_included(o3d.utility.Vector3dVector(_inside(tree, pts))))
    cell = tree.voxel_size[0, 0] * 2 ** (6 - depth)
    np.testing.assert_allclose(grid.voxel_size, cell)
    # and Open3D puts each voxel centre where our cell centre is
    centers = np.array([grid.get_voxel_center_coordinate(v.grid_index) for v in grid.get_voxels()])
    ref = {tuple(np.round(c, 9)) for c in tree.cell_centers(depth)}
    assert {tuple(np.round(c, 9)) for c in centers} == ref


def test_voxel_grid_of_one_sample_in_a_batch():
    a, b = _cloud(3), _cloud(4) + 100.0
    tree = octformer.build_octree(np.concatenate([a, b]), depth=5, offsets=[0, len(a), len(a) + len(b)])
    grid = tree.to_open3d(sample=1)
    assert np.all(grid.check_if_included(o3d.utility.Vector3dVector(_inside(tree, b, 1))))
    assert not np.any(grid.check_if_included(o3d.utility.Vector3dVector(a)))
    with pytest.raises(octformer.OctformerError, match="^sample"):
        tree.to_open3d(sample=2)
