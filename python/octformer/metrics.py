"""Evaluation metrics of the fields octformer trains for.

* Semantic segmentation: a confusion matrix, per-class IoU and mIoU.
* Place recognition (PointNetVLAD protocol, as used by MinkLoc3D and HOTFormerLoc):
  average recall AR@N for N = 1..25, AR@1% and MRR.

Everything is plain NumPy so that evaluation code can run in DataLoader workers, in
preparation scripts, or after ``all_reduce`` of a confusion matrix in distributed training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from octformer.errors import OctformerError

__all__ = [
    "confusion_matrix",
    "iou_from_confusion",
    "SegmentationScores",
    "segmentation_scores",
    "format_iou_table",
    "PlaceRecognitionScores",
    "place_recognition_scores",
    "mean_place_recognition_scores",
    "one_percent_cutoff",
]


def _int_labels(values: object, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise OctformerError(f"{name}: expected a 1-D array of class ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise OctformerError(f"{name}: expected integer class ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def confusion_matrix(pred: object, target: object, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """(C, C) int64 counts, rows = target class, columns = predicted class; ``ignore_index`` targets are skipped.

    Targets outside 0..C-1 (other than ``ignore_index``) and predictions outside 0..C-1
    raise, because they are almost always a wrong label map rather than data to drop.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise OctformerError(f"num_classes: expected a positive integer, got {num_classes!r}")
    p = _int_labels(pred, "pred")
    t = _int_labels(target, "target")
    if p.shape != t.shape:
        raise OctformerError(f"pred and target: expected the same shape, got {p.shape} and {t.shape}")
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    for name, arr in (("target", t), ("pred", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            bad = arr[(arr < 0) | (arr >= num_classes)][0]
            raise OctformerError(f"{name}: expected class ids in 0..{num_classes - 1}" + ("" if ignore_index is None or name == "pred" else f" or {ignore_index}") + f", got {int(bad)}")
    flat = t * num_classes + p
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes).astype(np.int64)


def iou_from_confusion(conf: object) -> np.ndarray:
    """(C,) float64 IoU = TP / (TP + FP + FN) per class; NaN for a class absent from both target and prediction."""
    m = np.asarray(conf, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise OctformerError(f"conf: expected a square (C, C) matrix, got shape {m.shape}")
    tp = np.diag(m)
    union = m.sum(axis=0) + m.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


@dataclass
class SegmentationScores:
    """Per-class IoU, mIoU over classes that occur, overall accuracy and the confusion matrix they came from."""

    iou: np.ndarray
    miou: float
    accuracy: float
    confusion: np.ndarray
    class_names: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, float]:
        """Flat ``{"mIoU": .., "acc": .., "IoU/<class>": ..}`` for logging."""
        out = {"mIoU": self.miou, "acc": self.accuracy}
        names = self.class_names or tuple(str(i) for i in range(len(self.iou)))
        out.update({f"IoU/{n}": float(v) for n, v in zip(names, self.iou)})
        return out


def segmentation_scores(conf: object, class_names: Sequence[str] = ()) -> SegmentationScores:
    """Scores from a confusion matrix; mIoU averages only classes present in target or prediction (NaN-IoU classes are skipped)."""
    m = np.asarray(conf, dtype=np.int64)
    iou = iou_from_confusion(m)
    valid = ~np.isnan(iou)
    miou = float(iou[valid].mean()) if valid.any() else float("nan")
    total = m.sum()
    acc = float(np.trace(m) / total) if total else float("nan")
    if class_names and len(class_names) != m.shape[0]:
        raise OctformerError(f"class_names: expected {m.shape[0]} names, got {len(class_names)}")
    return SegmentationScores(iou=iou, miou=miou, accuracy=acc, confusion=m, class_names=tuple(class_names))


def format_iou_table(scores: SegmentationScores, baseline: SegmentationScores | None = None) -> str:
    """A fixed-width text table of per-class IoU (and point share), ending with mIoU and accuracy."""
    names = scores.class_names or tuple(str(i) for i in range(len(scores.iou)))
    width = max(8, max(len(n) for n in names))
    support = scores.confusion.sum(axis=1)
    share = support / max(int(support.sum()), 1)
    head = f"{'class':<{width}}  {'points':>7}  {'IoU':>6}" + ("  baseline" if baseline is not None else "")
    lines = [head, "-" * len(head)]
    for i, n in enumerate(names):
        v = scores.iou[i]
        row = f"{n:<{width}}  {share[i] * 100:6.1f}%  " + ("   n/a" if np.isnan(v) else f"{v * 100:6.1f}")
        if baseline is not None:
            b = baseline.iou[i]
            row += "  " + ("     n/a" if np.isnan(b) else f"{b * 100:8.1f}")
        lines.append(row)
    lines.append("-" * len(head))
    tail = f"{'mIoU':<{width}}  {'':>7}  {scores.miou * 100:6.1f}"
    if baseline is not None:
        tail += f"  {baseline.miou * 100:8.1f}"
    lines.append(tail)
    acc = f"{'accuracy':<{width}}  {'':>7}  {scores.accuracy * 100:6.1f}"
    if baseline is not None:
        acc += f"  {baseline.accuracy * 100:8.1f}"
    lines.append(acc)
    return "\n".join(lines)


# ------------------------------------------------------------------ place recognition


def one_percent_cutoff(database_size: int) -> int:
    """How many top results AR@1% looks at: max(round(|db| / 100), 1), as in PointNetVLAD."""
    if database_size < 1:
        raise OctformerError(f"database_size: expected at least 1, got {database_size}")
    return max(int(round(database_size / 100.0)), 1)


@dataclass
class PlaceRecognitionScores:
    """AR@1..N (fractions in [0, 1]), AR@1%, MRR and how many queries had a true match in the database."""

    recall_at: np.ndarray
    recall_one_percent: float
    mrr: float
    num_evaluated: int
    extra: dict = field(default_factory=dict)

    @property
    def recall_at_1(self) -> float:
        """AR@1: share of evaluated queries whose nearest database descriptor is a true match."""
        return float(self.recall_at[0])

    def as_dict(self) -> dict[str, float]:
        """``{"AR@1": .., "AR@5": .., "AR@1%": .., "MRR": ..}`` in percent, as papers report them."""
        out = {f"AR@{n}": float(self.recall_at[n - 1]) * 100 for n in (1, 5, 10) if n <= len(self.recall_at)}
        out["AR@1%"] = self.recall_one_percent * 100
        out["MRR"] = self.mrr * 100
        return out


def _ranking(query: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) database indices by increasing Euclidean distance (ties by index)."""
    d2 = (query**2).sum(1)[:, None] - 2.0 * query @ database.T + (database**2).sum(1)[None, :]
    order = np.argsort(d2, axis=1, kind="stable")
    return order[:, :k]


def place_recognition_scores(
    query: object,
    database: object,
    true_neighbors: Sequence[Sequence[int]],
    num_neighbors: int = 25,
) -> PlaceRecognitionScores:
    """PointNetVLAD-protocol recall of ``query`` (Q, D) descriptors against ``database`` (M, D).

    ``true_neighbors[q]`` lists the database indices within the distance threshold of
    query q (25 m Oxford, 30 m CS-Wild-Places). Queries without any are not evaluated.
    AR@N counts a query when a true neighbour is among its N nearest descriptors;
    AR@1% uses the top ``one_percent_cutoff(M)``; MRR averages 1/rank of the first true
    neighbour within the top ``num_neighbors`` (0 when none is there).
    """
    q = np.asarray(query, dtype=np.float64)
    db = np.asarray(database, dtype=np.float64)
    if q.ndim != 2 or db.ndim != 2 or q.shape[1] != db.shape[1]:
        raise OctformerError(f"query and database: expected (Q, D) and (M, D) descriptors, got {q.shape} and {db.shape}")
    if len(true_neighbors) != q.shape[0]:
        raise OctformerError(f"true_neighbors: expected one list per query ({q.shape[0]}), got {len(true_neighbors)}")
    if num_neighbors < 1:
        raise OctformerError(f"num_neighbors: expected at least 1, got {num_neighbors}")
    m = db.shape[0]
    cutoff = one_percent_cutoff(m)
    k = min(max(num_neighbors, cutoff), m)
    ranked = _ranking(q, db, k) if q.shape[0] else np.zeros((0, k), dtype=np.int64)
    hits_at = np.zeros(num_neighbors, dtype=np.float64)
    one_pct = 0
    rr = 0.0
    evaluated = 0
    for i, truth in enumerate(true_neighbors):
        truth_set = {int(t) for t in truth}
        if not truth_set:
            continue
        if min(truth_set) < 0 or max(truth_set) >= m:
            raise OctformerError(f"true_neighbors[{i}]: expected database indices in 0..{m - 1}, got {sorted(truth_set)[:5]}")
        evaluated += 1
        is_true = np.fromiter((int(j) in truth_set for j in ranked[i]), dtype=bool, count=k)
        first = int(np.argmax(is_true)) if is_true.any() else -1
        if 0 <= first < num_neighbors:
            hits_at[first:] += 1
            rr += 1.0 / (first + 1)
        if is_true[:cutoff].any():
            one_pct += 1
    denom = max(evaluated, 1)
    return PlaceRecognitionScores(
        recall_at=hits_at / denom if evaluated else np.full(num_neighbors, np.nan),
        recall_one_percent=one_pct / denom if evaluated else float("nan"),
        mrr=rr / denom if evaluated else float("nan"),
        num_evaluated=evaluated,
    )


def mean_place_recognition_scores(
    queries: Sequence[object],
    databases: Sequence[object],
    true_neighbors: Mapping[tuple[int, int], Sequence[Sequence[int]]],
    num_neighbors: int = 25,
) -> PlaceRecognitionScores:
    """The PointNetVLAD benchmark average: every run's queries against every *other* run's database.

    ``true_neighbors[(i, j)][q]`` lists database-j indices matching query q of run i.
    Recalls are averaged over (i, j) pairs that evaluated at least one query, as in PointNetVLAD.
    """
    pairs = []
    for i in range(len(queries)):
        for j in range(len(databases)):
            if i == j:
                continue
            s = place_recognition_scores(queries[i], databases[j], true_neighbors[(i, j)], num_neighbors)
            if s.num_evaluated:
                pairs.append(s)
    if not pairs:
        raise OctformerError("true_neighbors: no query in any run pair has a true neighbour")
    return PlaceRecognitionScores(
        recall_at=np.mean([p.recall_at for p in pairs], axis=0),
        recall_one_percent=float(np.mean([p.recall_one_percent for p in pairs])),
        mrr=float(np.mean([p.mrr for p in pairs])),
        num_evaluated=int(sum(p.num_evaluated for p in pairs)),
        extra={"pairs": len(pairs)},
    )
