"""HOTFormerLoc's cylindrical-octree option (coords="cylindrical") on a real lidar crop.

Oracles: the (rho, phi, z) cell of every point recomputed in NumPy, the exact phi shift a
z-rotation by whole phi cells must produce (periodic neighbours included), per-sample runs,
and the L2 norm.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from octformer.errors import OctformerError
from octformer.io import read_points
from octformer.models import create_model


@pytest.fixture(scope="module")
def crops(shared_data):
    """Two crops of the CS-Wild-Places submap, centred on their sensor-like origin (as place-recognition inputs)."""
    pts = read_points(shared_data / "cs_wild_places" / "karawatha_submap_gnd_2.pcd").points.astype(np.float64)
    rng = np.random.default_rng(0)
    out = []
    for centre in ((-10.0, 10.0), (12.0, 8.0)):
        sel = np.nonzero(np.sum((pts[:, :2] - centre) ** 2, 1) < 36.0)[0]
        out.append(pts[rng.choice(sel, 1500, replace=False)] - np.array([centre[0], centre[1], 0.0]))
    return out


def _model(**kw):
    torch.manual_seed(0)
    return create_model("hotformerloc_tiny", coords="cylindrical", depth=6, backend="torch", drop_path=0.0, **kw)


def _rotate_z(pts, angle):
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]).T


def test_cylindrical_input_cells_match_numpy(crops):
    model = _model()
    tree = model.build_input(crops[0])
    assert tree.coords == "cylindrical" and tree.periodic == (False, True, False)
    p = crops[0]
    rho, phi = np.hypot(p[:, 0], p[:, 1]), np.arctan2(p[:, 1], p[:, 0])
    n = 1 << tree.depth
    lo = np.array([0.0, -np.pi, p[:, 2].min()])
    hi = np.array([rho.max(), np.pi, p[:, 2].max()])
    cell = np.floor((np.column_stack([rho, phi, p[:, 2]]) - lo) / ((hi - lo) / n)).astype(np.int64)
    cell = np.clip(cell, 0, n - 1)
    np.testing.assert_allclose(np.asarray(tree.origin)[0], lo)
    np.testing.assert_allclose(np.asarray(tree.voxel_size)[0], (hi - lo) / n)
    got = tree.xyz()[np.asarray(tree.point_leaf)]
    frac = ((np.column_stack([rho, phi, p[:, 2]]) - lo) / ((hi - lo) / n)) % 1.0
    clear = np.all((frac > 1e-9) & (frac < 1 - 1e-9), axis=1)  # not on a cell face (rounding may go either way)
    assert clear.mean() > 0.99
    assert np.array_equal(got[clear], cell[clear])


def test_z_rotation_by_whole_phi_cells_shifts_the_cylindrical_octree(crops):
    """Rotating the cloud by k phi cells (2π·k / 2^depth) moves every node k cells along phi, wrapping at ±π;
    rho and z cells and the (periodic) neighbour pattern are unchanged."""
    model = _model()
    depth = model.depth
    n = 1 << depth
    p = crops[0]
    phi = np.arctan2(p[:, 1], p[:, 0])
    frac = ((phi + np.pi) / (2 * np.pi) * n) % 1.0
    p = p[(frac > 1e-6) & (frac < 1 - 1e-6)]  # keep points clear of phi cell faces
    base = model.build_input(p)
    for k in (1, 8, n // 2 + 3):
        rot = model.build_input(_rotate_z(p, 2 * np.pi * k / n))
        for d in range(base.full_depth + 1, depth + 1):
            k_d = k >> (depth - d) if k % (1 << (depth - d)) == 0 else None
            if k_d is None:  # not a whole number of cells at this depth
                continue
            a, b = base.xyz(d), rot.xyz(d)
            shifted = a.copy()
            shifted[:, 1] = (a[:, 1] + k_d) % (1 << d)
            key = lambda xyz: xyz[:, 0].astype(np.int64) << 42 | xyz[:, 1].astype(np.int64) << 21 | xyz[:, 2]
            order_a, order_b = np.argsort(key(shifted)), np.argsort(key(b))
            assert np.array_equal(shifted[order_a], b[order_b]), (k, d)
            # the neighbour pattern moves with the nodes only because phi wraps around
            na = np.asarray(base.neighbors(d))[order_a] >= 0
            nb = np.asarray(rot.neighbors(d))[order_b] >= 0
            assert np.array_equal(na, nb), (k, d)
        # leaf of every point: same rho and z cell, phi cell + k (mod 2^depth)
        pa = base.xyz()[np.asarray(base.point_leaf)]
        pb = rot.xyz()[np.asarray(rot.point_leaf)]
        assert np.array_equal(pb[:, [0, 2]], pa[:, [0, 2]])
        assert np.array_equal(pb[:, 1], (pa[:, 1] + k) % n)


def test_cylindrical_descriptor_is_unit_norm_batch_independent_and_trainable(crops):
    model = _model().eval()
    tree = model.build_input(crops)
    with torch.no_grad():
        both = model(tree)
        alone = torch.cat([model(model.build_input([c])) for c in crops])
    assert both.shape == (2, 64) and torch.isfinite(both).all()
    torch.testing.assert_close(both.norm(dim=1), torch.ones(2), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both, alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both[0], both[1], atol=1e-3)  # different places, different descriptors
    # a z-rotation changes the cylindrical input, hence the descriptor (the model is not rotation-invariant)
    with torch.no_grad():
        turned = model(model.build_input([_rotate_z(crops[0], 0.7)]))
    assert not torch.allclose(turned[0], both[0], atol=1e-4)
    # relay tokens, windows and pooling all train in cylindrical mode: every parameter gets a gradient
    model.train()
    out = model(tree)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero


def test_cylindrical_model_rejects_a_cartesian_tree(crops):
    model = _model()
    cart = create_model("hotformerloc_tiny", depth=6, backend="torch").build_input(crops[0])
    with pytest.raises(OctformerError, match="coords 'cylindrical'"):
        model(cart)
