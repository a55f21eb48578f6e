"""Octree.to_spconv and Volt's spconv teacher / distillation path (skipped when spconv is not installed).

Oracles: cell indices recomputed from the input points in NumPy, a Morton order written
here bit by bit, torch's dense conv3d for the submanifold convolution, and per-sample runs
for the teacher's batch independence.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from octformer import build_octree
from octformer.errors import OctformerError
from octformer.io import read_points

spconv = pytest.importorskip("spconv.pytorch")

from octformer.models import create_model  # noqa: E402
from octformer.models.spconv_teacher import SpconvUNet, import_spconv  # noqa: E402
from octformer.models.volt import distillation_loss  # noqa: E402


@pytest.fixture(scope="module")
def kitti(shared_data):
    pts = read_points(shared_data / "semantickitti" / "velodyne" / "000000.bin")
    return pts.points.astype(np.float64), pts.attributes["intensity"].astype(np.float32), \
        pts.attributes["label_learning"].astype(np.int64) - 1


def _two_crops(kitti, n=4000):
    pts, inten, _ = kitti
    r = np.linalg.norm(pts[:, :2], axis=1)
    rng = np.random.default_rng(0)
    a = np.nonzero(r < 8)[0]
    b = np.nonzero((r > 10) & (r < 20) & (pts[:, 0] > 0))[0]
    a, b = rng.choice(a, n, replace=False), rng.choice(b, n, replace=False)
    return [pts[a], pts[b]], [inten[a, None], inten[b, None]]


def _morton(xyz: np.ndarray, depth: int) -> np.ndarray:
    """Morton code with x the most significant bit of each triple (written independently of octformer)."""
    code = np.zeros(len(xyz), dtype=np.int64)
    for bit in range(depth - 1, -1, -1):
        for axis in range(3):
            code = (code << 1) | ((xyz[:, axis].astype(np.int64) >> bit) & 1)
    return code


def _tree(kitti, depth=7, full_depth=2):
    clouds, feats = _two_crops(kitti)
    pts = np.concatenate(clouds)
    offsets = np.array([0, len(clouds[0]), len(pts)])
    tree = build_octree(pts, depth, features=np.concatenate(feats), offsets=offsets, full_depth=full_depth)
    return tree, pts, np.concatenate(feats), offsets


def test_to_spconv_indices_and_features_match_the_points(kitti):
    depth, full = 7, 2
    tree, pts, feats, offsets = _tree(kitti, depth, full)
    sample = np.repeat([0, 1], np.diff(offsets))
    origin, cell = np.asarray(tree.origin)[sample], np.asarray(tree.voxel_size)[sample]
    leaf_cells = np.clip(np.floor((pts - origin) / cell).astype(np.int64), 0, (1 << depth) - 1)
    for d in range(full + 1, depth + 1):
        cells = leaf_cells >> (depth - d)
        t = tree.to_spconv(d, features=torch.zeros(int(tree.nnum_nempty[d]), 2)) if d < depth else tree.to_spconv()
        idx = t.indices.numpy()
        assert t.indices.dtype == torch.int32 and t.spatial_shape == [1 << d] * 3 and t.batch_size == 2
        # the rows are exactly the occupied (batch, z, y, x) cells ...
        expect = np.unique(np.column_stack([sample, cells[:, 2], cells[:, 1], cells[:, 0]]), axis=0)
        assert np.array_equal(np.unique(idx, axis=0), expect) and len(idx) == len(expect)
        # ... in batch-major Morton order (x most significant)
        code = _morton(idx[:, [3, 2, 1]], d)
        order = np.lexsort((code, idx[:, 0]))
        assert np.array_equal(order, np.arange(len(idx)))
    # leaf features: row point_leaf[i] holds the mean feature of the points in point i's cell
    t = tree.to_spconv()
    idx = t.indices.numpy()
    row_of_point = np.asarray(tree.point_leaf)
    assert np.array_equal(idx[row_of_point], np.column_stack([sample, leaf_cells[:, ::-1]]))
    sums = np.zeros((len(idx), feats.shape[1]))
    np.add.at(sums, row_of_point, feats)
    mean = sums / np.bincount(row_of_point, minlength=len(idx))[:, None]
    np.testing.assert_allclose(t.features.numpy(), mean, rtol=1e-5, atol=1e-6)


def test_submconv_over_to_spconv_equals_dense_conv3d(kitti):
    import_spconv()  # enables spconv's CPU backward
    tree = build_octree(_two_crops(kitti, 600)[0][0], 5, full_depth=1)
    m = int(tree.nnum_nempty[5])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    conv = spconv.SubMConv3d(4, 3, 3, padding=1, bias=False, indice_key="t").double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, dtype=torch.float64))
    y = conv(tree.to_spconv(5, features=x))
    # reference: scatter into a dense (z, y, x) grid, torch conv3d, read the occupied sites
    idx = y.indices.long()
    assert torch.equal(idx, tree.to_spconv(5, features=x.detach()).indices.long())  # SubM keeps the rows
    xr = x.detach().clone().requires_grad_(True)
    dense = torch.zeros(32, 32, 32, 4, dtype=torch.float64).index_put((idx[:, 1], idx[:, 2], idx[:, 3]), xr)
    w = conv.weight.detach().clone().requires_grad_(True)  # spconv layout (out, kz, ky, kx, in)
    ref = F.conv3d(dense.permute(3, 0, 1, 2)[None], w.permute(0, 4, 1, 2, 3), padding=1)[0]
    ref = ref[:, idx[:, 1], idx[:, 2], idx[:, 3]].t()
    torch.testing.assert_close(y.features, ref, rtol=1e-10, atol=1e-10)
    for _ in range(20):  # deterministic: spconv 2.3.8's own threaded CPU scatter-add dropped updates now and then
        assert torch.equal(conv(tree.to_spconv(5, features=x.detach())).features, y.features.detach())
    # backward (spconv's CPU path) against autograd through the dense reference
    g = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    (y.features * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(conv.weight.grad, w.grad, rtol=1e-10, atol=1e-10)


def test_strided_sparse_conv_lands_on_the_parent_nodes(kitti):
    tree, *_ = _tree(kitti, 6, 1)
    down = spconv.SparseConv3d(1, 2, 2, stride=2)
    out = down(tree.to_spconv())
    parents = tree.to_spconv(5, features=torch.zeros(int(tree.nnum_nempty[5]), 1))
    assert out.spatial_shape == parents.spatial_shape
    assert np.array_equal(np.unique(out.indices.numpy(), axis=0), np.unique(parents.indices.numpy(), axis=0))


def test_to_spconv_rejects_bad_arguments(kitti, monkeypatch):
    tree, *_ = _tree(kitti, 5, 1)
    m = int(tree.nnum_nempty[4])
    with pytest.raises(OctformerError, match=r"features: expected \(\d+, C\) features for depth 4"):
        tree.to_spconv(4)
    with pytest.raises(OctformerError, match=rf"features: expected shape \({m}, C\)"):
        tree.to_spconv(4, features=torch.zeros(m + 1, 2))
    with pytest.raises(OctformerError, match="features: expected a float dtype"):
        tree.to_spconv(4, features=torch.zeros(m, 2, dtype=torch.int64))
    with pytest.raises(OctformerError, match="depth: expected an integer in 0..5"):
        tree.to_spconv(6)
    monkeypatch.setitem(sys.modules, "spconv", None)
    monkeypatch.setitem(sys.modules, "spconv.pytorch", None)
    with pytest.raises(ImportError, match=r"octformer\[spconv\]"):
        tree.to_spconv()
    with pytest.raises(ImportError, match=r"octformer\[spconv\]"):
        SpconvUNet(4, 3)


# ------------------------------------------------------------------ teacher and distillation


def _volt_input(kitti, n=3000):
    clouds, feats = _two_crops(kitti, n)
    torch.manual_seed(0)
    student = create_model("volt_tiny", in_channels=1, voxel_size=0.3, distill_classes=6, drop_path=0.0,
                           backend="torch")
    return student, clouds, feats


def test_teacher_forward_backward_and_batch_independence(kitti):
    student, clouds, feats = _volt_input(kitti)
    torch.manual_seed(1)
    teacher = SpconvUNet(student.voxel_channels, 6, channels=(16, 24, 32))
    tree = student.build_input(clouds, feats)
    out = teacher(tree)
    assert out.shape == (int(tree.nnum_nempty[-1]), 6) and torch.isfinite(out).all()
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    for name, p in teacher.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    teacher.eval()  # batch norm on running statistics: samples are then independent
    with torch.no_grad():
        both = teacher(tree)
        alone = [teacher(student.build_input([c], [f])) for c, f in zip(clouds, feats)]
    torch.testing.assert_close(both, torch.cat(alone), rtol=1e-5, atol=1e-5)


def test_distillation_loss_matches_numpy():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(50, 7, generator=gen, dtype=torch.float64), torch.randn(50, 7, generator=gen, dtype=torch.float64)
    sn, tn = s.numpy(), t.numpy()

    def log_softmax(a):
        a = a - a.max(1, keepdims=True)
        return a - np.log(np.exp(a).sum(1, keepdims=True))

    hard = -np.mean(log_softmax(sn)[np.arange(50), tn.argmax(1)])
    np.testing.assert_allclose(float(distillation_loss(s, t)), hard, rtol=1e-12)
    temp = 2.0
    lq, lp = log_softmax(tn / temp), log_softmax(sn / temp)
    soft = np.sum(np.exp(lq) * (lq - lp)) / 50 * temp**2
    np.testing.assert_allclose(float(distillation_loss(s, t, mode="soft", temperature=temp)), soft, rtol=1e-12)
    assert float(distillation_loss(t, t, mode="soft")) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(OctformerError, match="mode: expected 'hard' or 'soft'"):
        distillation_loss(s, t, mode="l2")
    with pytest.raises(OctformerError, match="teacher_logits: expected the student's shape"):
        distillation_loss(s, t[:, :3])


def test_distillation_gradients_reach_the_student_and_not_the_teacher(kitti):
    student, clouds, feats = _volt_input(kitti)
    teacher = SpconvUNet(student.voxel_channels, 6, channels=(16, 24, 32))
    tree = student.build_input(clouds, feats)
    labels = torch.from_numpy(np.zeros(sum(len(c) for c in clouds), dtype=np.int64))
    res = student.training_loss(tree, labels, teacher, distill_weight=1.0)  # KD only
    assert torch.isfinite(res["loss"]) and res["kd"] > 0
    res["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.head.weight.grad is None or student.head.weight.grad.abs().sum() == 0  # CE weight 0
    for name in ("distill_head.weight", "patch_embed.weight", "blocks.0.attn.qkv.weight", "unpatch.weight"):
        p = dict(student.named_parameters()).get(name)
        if p is None:
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(OctformerError, match="distill_classes"):
        create_model("volt_tiny", backend="torch").forward_with_distill(tree)


@pytest.mark.slow
def test_a_few_distillation_steps_fit_the_teacher_on_held_out_voxels(kitti):
    """Teacher trained briefly on labels; the student's distill head then agrees with it on a held-out
    crop better than before training and better than always predicting the teacher's commonest class."""
    pts, inten, label = kitti
    r = np.linalg.norm(pts[:, :2], axis=1)
    ang = np.arctan2(pts[:, 1], pts[:, 0])
    train_sel = np.nonzero((r < 15) & (ang > 0) & (label >= 0))[0]
    test_sel = np.nonzero((r < 15) & (ang < -0.5))[0]
    rng = np.random.default_rng(0)
    torch.manual_seed(3)
    student = create_model("volt_tiny", in_channels=1, voxel_size=0.3, distill_classes=19, drop_path=0.0,
                           backend="torch")
    teacher = SpconvUNet(student.voxel_channels, 19, channels=(16, 32, 48))

    def batch(sel, n):
        i = rng.choice(sel, n, replace=False)
        return student.build_input([pts[i]], [inten[i, None]]), torch.from_numpy(label[i])

    opt = torch.optim.AdamW(teacher.parameters(), lr=1e-2)
    for _ in range(20):  # teacher: supervised on the labels (spconv forward + backward on CPU)
        tree, y = batch(train_sel, 4000)
        loss = F.cross_entropy(teacher(tree)[torch.from_numpy(np.asarray(tree.point_leaf))], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher.eval()
    test_tree, _ = batch(test_sel, 6000)
    with torch.no_grad():
        t_test = teacher(test_tree)
    pseudo = t_test.argmax(1).numpy()
    majority = float(np.bincount(pseudo, minlength=19).max() / len(pseudo))

    def evaluate():
        student.eval()
        with torch.no_grad():
            _, s = student.forward_with_distill(test_tree)
        return float(distillation_loss(s, t_test)), float(np.mean(s.argmax(1).numpy() == pseudo))

    kd_before, agree_before = evaluate()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    for _ in range(12):
        student.train()
        tree, y = batch(train_sel, 4000)
        loss = student.training_loss(tree, y, teacher)["loss"]  # 0.5 CE + 0.5 KD, teacher frozen
        opt.zero_grad()
        loss.backward()
        opt.step()
    kd_after, agree_after = evaluate()
    print(f"\nKD held-out: loss {kd_before:.3f} -> {kd_after:.3f}, agreement {agree_before:.3f} -> {agree_after:.3f}, "
          f"teacher's commonest class {majority:.3f} ({len(np.unique(pseudo))} classes used)")
    assert kd_after < 0.9 * kd_before
    assert agree_after > max(agree_before, majority) + 0.05
