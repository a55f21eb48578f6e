"""Metrics against direct per-element reference computations on random inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from octformer.errors import OctformerError
from octformer.metrics import (
    confusion_matrix,
    format_iou_table,
    mean_place_recognition_scores,
    one_percent_cutoff,
    place_recognition_scores,
    segmentation_scores,
)


def reference_iou(pred, target, num_classes, ignore):
    """IoU per class by counting sets of point indices, NaN when the class never occurs."""
    keep = [i for i in range(len(target)) if target[i] != ignore]
    out = []
    for c in range(num_classes):
        p = {i for i in keep if pred[i] == c}
        t = {i for i in keep if target[i] == c}
        union = p | t
        out.append(len(p & t) / len(union) if union else math.nan)
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 7), st.integers(0, 60), st.integers(0, 2**31 - 1))
def test_miou_equals_set_reference(num_classes, n, seed):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes + 1, n)  # value num_classes plays the ignore label
    pred = rng.integers(0, num_classes, n)
    conf = confusion_matrix(pred, target, num_classes, ignore_index=num_classes)
    scores = segmentation_scores(conf)
    ref = reference_iou(pred.tolist(), target.tolist(), num_classes, num_classes)
    np.testing.assert_allclose(scores.iou, ref, equal_nan=True)
    present = [v for v in ref if not math.isnan(v)]
    if present:
        assert scores.miou == pytest.approx(sum(present) / len(present))
        kept = target != num_classes
        assert scores.accuracy == pytest.approx(float((pred[kept] == target[kept]).mean()) if kept.any() else math.nan, nan_ok=True)
    else:
        assert math.isnan(scores.miou)
    assert conf.sum() == int((target != num_classes).sum())


def test_confusion_rejects_bad_labels():
    with pytest.raises(OctformerError, match="target: expected class ids in 0..2"):
        confusion_matrix([0, 1], [0, 5], 3)
    with pytest.raises(OctformerError, match="pred: expected class ids"):
        confusion_matrix([0, -1], [0, 1], 3)
    with pytest.raises(OctformerError, match="same shape"):
        confusion_matrix([0, 1, 2], [0, 1], 3)
    with pytest.raises(OctformerError, match="integer class ids"):
        confusion_matrix([0.5], [0], 3)


def test_iou_table_lists_every_class():
    conf = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    text = format_iou_table(segmentation_scores(conf, ("road", "car", "tree")))
    assert [line.split()[0] for line in text.splitlines()[2:5]] == ["road", "car", "tree"]
    assert "mIoU" in text and f"{(1 + 0.5 + 0.5) / 3 * 100:.1f}" in text


def reference_recall(query, db, truth, num_neighbors):
    """PointNetVLAD loop: rank the whole database per query by distance, then count hits."""
    cutoff = max(int(round(len(db) / 100.0)), 1)
    hits = [0] * num_neighbors
    one, rr, evaluated = 0, 0.0, 0
    for qi, q in enumerate(query):
        if not truth[qi]:
            continue
        evaluated += 1
        dist = [(float(np.sum((q - d) ** 2)), j) for j, d in enumerate(db)]
        ranked = [j for _, j in sorted(dist)]
        for r, j in enumerate(ranked[:num_neighbors]):
            if j in truth[qi]:
                for k in range(r, num_neighbors):
                    hits[k] += 1
                rr += 1 / (r + 1)
                break
        if set(ranked[:cutoff]) & set(truth[qi]):
            one += 1
    return [h / evaluated for h in hits], one / evaluated, rr / evaluated, evaluated


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 260), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_place_recognition_equals_loop_reference(nq, ndb, dim, seed):
    rng = np.random.default_rng(seed)
    db = rng.integers(-3, 4, (ndb, dim)).astype(np.float64) + rng.normal(scale=1e-3, size=(ndb, dim))
    query = rng.normal(size=(nq, dim))
    truth = [sorted(set(rng.integers(0, ndb, rng.integers(0, 4)).tolist())) for _ in range(nq)]
    if not any(truth):
        truth[0] = [0]
    s = place_recognition_scores(query, db, truth, num_neighbors=25)
    rec, one, mrr, ev = reference_recall(query, db, truth, 25)
    np.testing.assert_allclose(s.recall_at, rec)
    assert s.recall_one_percent == pytest.approx(one)
    assert s.mrr == pytest.approx(mrr)
    assert s.num_evaluated == ev


@pytest.mark.parametrize("size,expected", [(1, 1), (49, 1), (50, 1), (150, 2), (151, 2), (250, 2), (251, 3), (1000, 10)])
def test_one_percent_cutoff_rounds_like_python(size, expected):
    assert one_percent_cutoff(size) == expected == max(round(size / 100), 1)


def test_mean_over_run_pairs_skips_same_run():
    rng = np.random.default_rng(0)
    runs = [rng.normal(size=(5, 3)) for _ in range(3)]
    truth = {(i, j): [[k] for k in range(5)] for i in range(3) for j in range(3) if i != j}
    s = mean_place_recognition_scores(runs, runs, truth)
    per = [place_recognition_scores(runs[i], runs[j], truth[(i, j)]) for (i, j) in truth]
    assert s.extra["pairs"] == 6
    assert s.recall_at_1 == pytest.approx(np.mean([p.recall_at_1 for p in per]))
    same = place_recognition_scores(runs[0], runs[0], [[k] for k in range(5)])
    assert same.recall_at_1 == 1.0 and same.mrr == 1.0
