"""Datasets, augmentations, the resumable sampler and the octree-building collate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import octformer
from octformer.data import (
    STREET_CLASSES,
    Compose,
    ElasticDistortion,
    GlobalBatchSampler,
    PointCollate,
    PreparedSegmentationDataset,
    RandomCrop,
    RandomFlip,
    RandomJitter,
    RandomRotate,
    RandomScale,
    SyntheticStreetDataset,
    build_transforms,
)
from octformer.data.prepare import save_sample, write_meta
from octformer.errors import OctformerError


def _sample(n=500, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 3)).astype(np.float32)
    return {"points": pts, "labels": np.arange(n), "features": rng.random((n, 2)).astype(np.float32), "normals": pts / np.linalg.norm(pts, axis=1, keepdims=True)}


def test_rotation_preserves_pairwise_distances_and_z():
    s = _sample()
    before = s["points"].copy()
    out = RandomRotate(math.pi, "z")(dict(s), np.random.default_rng(3))
    d0 = np.linalg.norm(before[:50, None] - before[None, :50], axis=-1)
    d1 = np.linalg.norm(out["points"][:50, None] - out["points"][None, :50], axis=-1)
    np.testing.assert_allclose(d1, d0, atol=1e-5)
    np.testing.assert_allclose(out["points"][:, 2], before[:, 2], atol=1e-6)
    assert not np.allclose(out["points"], before)
    np.testing.assert_allclose((out["normals"] * out["points"]).sum(1), (s["normals"] * before).sum(1), atol=1e-4)


def test_flip_scale_jitter_do_what_they_say():
    s = _sample()
    p = s["points"].copy()
    out = RandomFlip(axes=(0,), p=1.0)(dict(s), np.random.default_rng(0))
    np.testing.assert_array_equal(out["points"][:, 0], -p[:, 0])
    np.testing.assert_array_equal(out["points"][:, 1:], p[:, 1:])
    out = RandomScale(2.0, 2.0)(dict(s), np.random.default_rng(0))
    np.testing.assert_allclose(out["points"], 2 * p)
    out = RandomJitter(sigma=0.1, clip=0.05)(dict(s), np.random.default_rng(0))
    assert np.abs(out["points"] - p).max() <= 0.05 + 1e-6


def test_elastic_is_smooth_and_bounded():
    rng = np.random.default_rng(0)
    pts = rng.random((2000, 3)).astype(np.float32) * 4
    out = ElasticDistortion(granularity=0.5, magnitude=0.2)({"points": pts.copy()}, np.random.default_rng(1))["points"]
    disp = out - pts
    assert np.abs(disp).max() < 0.2 * 4  # blurred unit normals stay well under 4 sigma
    # nearby points move alike: displacement difference grows with distance
    i, j = np.triu_indices(300, 1)
    dist = np.linalg.norm(pts[i] - pts[j], axis=1)
    ddisp = np.linalg.norm(disp[i] - disp[j], axis=1)
    assert ddisp[dist < 0.3].mean() < 0.5 * ddisp[dist > 2.0].mean()


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 400), st.integers(1, 450), st.integers(0, 1000))
def test_crop_keeps_the_nearest_points_and_all_arrays_together(n, max_points, seed):
    s = _sample(n, seed)
    out = RandomCrop(max_points)(dict(s), np.random.default_rng(seed))
    k = min(n, max_points)
    assert len(out["points"]) == len(out["labels"]) == len(out["features"]) == k
    np.testing.assert_array_equal(out["points"], s["points"][out["labels"]])  # labels are the original row ids
    np.testing.assert_array_equal(out["features"], s["features"][out["labels"]])
    if n > max_points:  # reference: the kept set is a ball around one of the points
        kept = np.zeros(n, bool)
        kept[out["labels"]] = True
        found = False
        for c in s["points"]:
            d = np.linalg.norm(s["points"] - c, axis=1)
            if d[kept].max() <= d[~kept].min() + 1e-6:
                found = True
                break
        assert found


def test_build_transforms_from_config_and_errors():
    t = build_transforms([{"name": "rotate", "max_angle": 0.1}, {"name": "crop", "max_points": 10}])
    assert isinstance(t, Compose) and len(t.transforms) == 2
    assert build_transforms(None) is None
    with pytest.raises(OctformerError, match=r"transforms\[0\].name"):
        build_transforms([{"name": "twist"}])
    with pytest.raises(OctformerError, match="max_points"):
        RandomCrop(0)


def test_augmentation_depends_only_on_seed_epoch_index():
    tf = Compose([RandomRotate(), RandomScale(), RandomJitter()])
    a = SyntheticStreetDataset("train", size=4, num_points=256, transforms=tf, seed=5)
    b = SyntheticStreetDataset("train", size=4, num_points=256, transforms=tf, seed=5)
    np.testing.assert_array_equal(a[(2, 1)]["points"], b[(2, 1)]["points"])
    assert not np.array_equal(a[(2, 1)]["points"], a[(3, 1)]["points"])  # a new epoch re-augments
    c = SyntheticStreetDataset("train", size=4, num_points=256, transforms=tf, seed=6)
    assert not np.array_equal(a[(2, 1)]["points"], c[(2, 1)]["points"])


def test_street_scenes_are_labelled_and_deterministic():
    ds = SyntheticStreetDataset("val", size=3, num_points=1024)
    s = ds[2]
    assert s["points"].shape[0] == s["labels"].shape[0] == s["features"].shape[0]
    assert set(np.unique(s["labels"]).tolist()) <= set(range(len(STREET_CLASSES)))
    np.testing.assert_array_equal(s["points"], ds[2]["points"])
    assert not np.array_equal(ds[0]["points"][:100], SyntheticStreetDataset("train", size=3, num_points=1024)[0]["points"][:100])
    ground = s["points"][s["labels"] == 0]
    assert np.abs(ground[:, 2]).max() < 0.3  # the ground class is the z ~ 0 plane


@settings(max_examples=30, deadline=None)
@given(st.integers(4, 40), st.sampled_from([1, 2, 4]), st.integers(1, 4), st.integers(0, 50), st.integers(0, 30))
def test_sampler_ranks_partition_global_batches_and_resume(n, world, per_rank, seed, start):
    batch = world * per_rank
    if batch > n:
        return
    ref = list(GlobalBatchSampler(n, batch, seed=seed, max_steps=start + 6))
    parts = [list(GlobalBatchSampler(n, batch, rank=r, world_size=world, seed=seed, max_steps=start + 6)) for r in range(world)]
    for step in range(start + 6):
        merged = [k for r in range(world) for k in parts[r][step]]
        assert merged == ref[step]
    resumed = list(GlobalBatchSampler(n, batch, seed=seed, start_step=start, max_steps=start + 6))
    assert resumed == ref[start:]
    spe = n // batch
    for e in range(2):  # each epoch is a permutation: no index twice within an epoch
        idx = [i for step in ref[e * spe : (e + 1) * spe] for (_, i) in step] if len(ref) >= (e + 1) * spe else []
        assert len(idx) == len(set(idx))


def test_sampler_rejects_bad_batch():
    with pytest.raises(OctformerError, match="multiple of the world size"):
        GlobalBatchSampler(10, 3, world_size=2)
    with pytest.raises(OctformerError, match="at most the dataset size"):
        GlobalBatchSampler(2, 4)


def test_collate_builds_the_same_octree_as_build_octree():
    ds = SyntheticStreetDataset("train", size=3, num_points=700)
    samples = [ds[i] for i in range(3)]
    batch = PointCollate(5)(samples)
    pts = np.concatenate([s["points"] for s in samples])
    offs = np.array([0, 700, 1400, 2100]) if all(len(s["points"]) == 700 for s in samples) else np.cumsum([0] + [len(s["points"]) for s in samples])
    ref = octformer.build_octree(pts, 5, offsets=offs, num_threads=1)
    assert batch["octree"] == ref
    torch.testing.assert_close(batch["points"], torch.from_numpy(pts))
    assert batch["offsets"].tolist() == offs.tolist()
    assert batch["labels"].dtype == torch.int64 and batch["features"].shape == (len(pts), 1)


def test_dataloader_workers_give_identical_batches():
    ds = SyntheticStreetDataset("train", size=8, num_points=300, transforms=Compose([RandomRotate(), RandomJitter()]))
    sampler = GlobalBatchSampler(len(ds), 2, seed=1, max_steps=6)
    out = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=PointCollate(4), num_workers=workers)
        out.append(list(loader))
    for a, b in zip(*out):
        torch.testing.assert_close(a["points"], b["points"], rtol=0, atol=0)
        assert a["octree"] == b["octree"]


def test_prepared_dataset_reads_and_validates(tmp_path):
    pts = np.random.default_rng(0).random((50, 3)).astype(np.float32)
    save_sample(tmp_path, "a", points=pts, labels=np.arange(50, dtype=np.int16) % 3 - 1, intensity=np.linspace(0, 1, 50, dtype=np.float32))
    write_meta(tmp_path, "toy", classes=("x", "y"), splits={"train": ["a"]})
    ds = PreparedSegmentationDataset(tmp_path, "train", features=("intensity", "height"))
    s = ds[0]
    np.testing.assert_array_equal(s["points"], pts)
    np.testing.assert_allclose(s["features"][:, 1], pts[:, 2] - pts[:, 2].min())
    assert s["labels"].dtype == np.int64 and ds.num_classes == 2
    with pytest.raises(OctformerError, match="split: expected one of \\['train'\\]"):
        PreparedSegmentationDataset(tmp_path, "val")
    with pytest.raises(OctformerError, match="features: 'colors' is not in"):
        PreparedSegmentationDataset(tmp_path, "train", features=("colors",))[0]
    with pytest.raises(OctformerError, match="meta.json"):
        PreparedSegmentationDataset(tmp_path / "nothing")
    with pytest.raises(IndexError):
        ds[5]
