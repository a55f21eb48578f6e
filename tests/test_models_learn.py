"""Models learn on real data: Volt segments a held-out azimuth sector of the SemanticKITTI scan.

Short versions run in CI; ``slow``-marked versions train longer. The numbers they print
(run with ``-s``) are the ones quoted in docs/models.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from octformer.io import read_points
from octformer.models import create_model
from octformer.models.volt import Volt

NUM_SECTORS = 8
TEST_SECTOR = 3


def miou(pred: np.ndarray, label: np.ndarray) -> float:
    """Mean IoU over the classes present in ``label`` (a plain NumPy reference)."""
    ious = []
    for c in np.unique(label):
        inter = np.sum((pred == c) & (label == c))
        union = np.sum((pred == c) | (label == c))
        ious.append(inter / union)
    return float(np.mean(ious))


def _kitti_sectors(shared_data, radius: float):
    cloud = read_points(shared_data / "semantickitti" / "velodyne" / "000000.bin")
    pts = cloud.points.astype(np.float64)
    label = cloud.attributes["label_learning"].astype(np.int64) - 1  # 19 classes 0..18, -1 ignored
    feats = np.stack([cloud.attributes["intensity"], pts[:, 2] / 2.0], axis=1).astype(np.float32)
    r = np.linalg.norm(pts[:, :2], axis=1)
    sector = np.floor((np.arctan2(pts[:, 1], pts[:, 0]) + np.pi) / (2 * np.pi) * NUM_SECTORS).astype(int) % NUM_SECTORS
    crops = []
    for s in range(NUM_SECTORS):
        sel = (r < radius) & (sector == s)
        crops.append((pts[sel], feats[sel], label[sel]))
    return crops


def train_volt_on_sectors(shared_data, *, steps: int, radius: float, voxel: float, seed: int = 0):
    """Train a tiny Volt on 7 sectors, return (model mIoU, accuracy, majority mIoU, accuracy, first/last loss)."""
    crops = _kitti_sectors(shared_data, radius)
    train = [c for s, c in enumerate(crops) if s != TEST_SECTOR]
    test_pts, test_feats, test_label = crops[TEST_SECTOR]
    counts = np.bincount(np.concatenate([c[2][c[2] >= 0] for c in train]), minlength=19)
    weight = torch.tensor(1.0 / np.sqrt(np.maximum(counts, 1) / counts.sum()), dtype=torch.float32)
    weight = weight / weight.mean()
    torch.manual_seed(seed)
    model = create_model("volt_tiny", in_channels=2, voxel_size=voxel, drop_path=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    losses = []
    model.train()
    for _ in range(steps):
        pts, feats, labels = [], [], []
        for i in rng.choice(len(train), 2, replace=False):
            p, f, y = train[i]
            th = rng.uniform(0, 2 * np.pi)
            rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
            pts.append(p @ rot.T)
            feats.append(f)
            labels.append(y)
        tree = model.build_input(pts, feats)
        logits = Volt.point_logits(model(tree), tree)
        loss = F.cross_entropy(logits, torch.from_numpy(np.concatenate(labels)), ignore_index=-1, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        tree = model.build_input([test_pts], [test_feats])
        pred = Volt.point_logits(model(tree), tree).argmax(1).numpy()
    valid = test_label >= 0
    majority = int(counts.argmax())
    y = test_label[valid]
    return {
        "miou": miou(pred[valid], y),
        "acc": float(np.mean(pred[valid] == y)),
        "majority_miou": miou(np.full(y.shape, majority), y),
        "majority_acc": float(np.mean(y == majority)),
        "loss_first": float(np.mean(losses[:3])),
        "loss_last": float(np.mean(losses[-3:])),
        "test_points": int(valid.sum()),
    }


def _check_volt(res, margin: float):
    print(f"\nVolt held-out sector: {res}")
    assert res["loss_last"] < res["loss_first"]
    assert res["miou"] > res["majority_miou"] + margin
    assert res["acc"] > res["majority_acc"] + margin


def test_volt_learns_semantickitti_sectors_short(shared_data):
    _check_volt(train_volt_on_sectors(shared_data, steps=24, radius=20.0, voxel=0.3), margin=0.04)


@pytest.mark.slow
def test_volt_learns_semantickitti_sectors_long(shared_data):
    _check_volt(train_volt_on_sectors(shared_data, steps=150, radius=30.0, voxel=0.2), margin=0.10)
