"""Place-recognition tuples the PointNetVLAD way: positives/negatives by distance, per-run evaluation sets.

Pickle layouts (as PointNetVLAD, MinkLoc3D and HOTFormerLoc read them):

* training: ``{i: {"query": path, "northing": n, "easting": e, "positives": [j...], "negatives": [k...]}}``
  (positives within ``positive_radius``, the query itself excluded; negatives beyond ``negative_radius``);
* evaluation database: a list with one ``{k: {"query": path, "northing": n, "easting": e}}`` per run;
* evaluation query: the same per run, plus ``{..., j: [true matches in run j's database]}`` for every other run j.
"""

from __future__ import annotations

import csv
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from octformer.errors import OctformerError

__all__ = ["evaluation_sets", "in_regions", "pairs_within", "read_locations", "training_queries", "true_neighbors_by_pair", "write_place_recognition_pickles"]


def read_locations(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(timestamps, (N, 2) [northing, easting]) from a locations CSV (``timestamp,northing,easting`` or ``timestamp,x,y``)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise OctformerError(f"{path}: expected a CSV header and rows, got none")
    cols = {c.strip().lower(): c for c in rows[0]}
    if "northing" in cols and "easting" in cols:
        n, e = cols["northing"], cols["easting"]
    elif "x" in cols and "y" in cols:
        n, e = cols["x"], cols["y"]
    else:
        raise OctformerError(f"{path}: expected columns timestamp + northing/easting (or x/y), got {list(rows[0])}")
    ts = cols.get("timestamp")
    if ts is None:
        raise OctformerError(f"{path}: expected a 'timestamp' column, got {list(rows[0])}")
    return [r[ts].strip() for r in rows], np.array([[float(r[n]), float(r[e])] for r in rows], dtype=np.float64)


def pairs_within(a: np.ndarray, b: np.ndarray, radius: float, chunk: int = 2048) -> list[np.ndarray]:
    """For every row of ``a``, the sorted indices of rows of ``b`` within ``radius`` (brute force, chunked)."""
    out: list[np.ndarray] = []
    r2 = radius * radius
    for s in range(0, len(a), chunk):
        d2 = ((a[s : s + chunk, None, :] - b[None, :, :]) ** 2).sum(-1)
        out.extend(np.nonzero(row <= r2)[0] for row in d2)
    return out


def in_regions(xy: np.ndarray, centres: Sequence[Sequence[float]], half_width: float) -> np.ndarray:
    """(N,) bool: inside any axis-aligned square of half-width ``half_width`` around a centre (PointNetVLAD test regions)."""
    inside = np.zeros(len(xy), dtype=bool)
    for c in centres:
        inside |= (np.abs(xy[:, 0] - c[0]) < half_width) & (np.abs(xy[:, 1] - c[1]) < half_width)
    return inside


def training_queries(paths: Sequence[str], xy: np.ndarray, positive_radius: float, negative_radius: float) -> dict:
    """The training pickle's dict for submaps ``paths`` at ``xy``."""
    pos = pairs_within(xy, xy, positive_radius)
    near = pairs_within(xy, xy, negative_radius)
    everything = np.arange(len(xy))
    out = {}
    for i, p in enumerate(paths):
        out[i] = {
            "query": p,
            "northing": float(xy[i, 0]),
            "easting": float(xy[i, 1]),
            "positives": [int(j) for j in pos[i] if j != i],
            "negatives": [int(j) for j in np.setdiff1d(everything, near[i])],
        }
    return out


def evaluation_sets(runs: Sequence[tuple[Sequence[str], np.ndarray]], radius: float) -> tuple[list[dict], list[dict]]:
    """(database, query) pickles' lists for runs of (paths, xy); true matches within ``radius`` in every other run."""
    database, query = [], []
    for paths, xy in runs:
        database.append({k: {"query": p, "northing": float(xy[k, 0]), "easting": float(xy[k, 1])} for k, p in enumerate(paths)})
    for i, (paths, xy) in enumerate(runs):
        entries = {k: {"query": p, "northing": float(xy[k, 0]), "easting": float(xy[k, 1])} for k, p in enumerate(paths)}
        for j, (_, xy_j) in enumerate(runs):
            if j == i:
                continue
            for k, matches in enumerate(pairs_within(xy, xy_j, radius)):
                entries[k][j] = [int(m) for m in matches]
        query.append(entries)
    return database, query


def true_neighbors_by_pair(query_sets: Sequence[dict]) -> dict[tuple[int, int], list[list[int]]]:
    """``{(i, j): [matches of each query of run i in database j]}`` for :func:`octformer.metrics.mean_place_recognition_scores`."""
    out: dict[tuple[int, int], list[list[int]]] = {}
    for i, entries in enumerate(query_sets):
        for j in range(len(query_sets)):
            if j != i:
                out[(i, j)] = [list(entries[k].get(j, [])) for k in sorted(entries)]
    return out


def write_place_recognition_pickles(
    dst: Path,
    train_paths: Sequence[str],
    train_xy: Sequence[np.ndarray],
    eval_runs: Sequence[tuple[Sequence[str], np.ndarray]],
    *,
    positive_radius: float,
    negative_radius: float,
    eval_radius: float,
) -> dict:
    """Write the three PointNetVLAD pickles (training queries, evaluation database and queries) into ``dst``."""
    from octformer.data.prepare import atomic_write_bytes

    xy = np.concatenate(list(train_xy)) if len(train_xy) else np.zeros((0, 2))
    train = training_queries(train_paths, xy, positive_radius, negative_radius)
    database, query = evaluation_sets(eval_runs, eval_radius)
    dst.mkdir(parents=True, exist_ok=True)
    for name, obj in (("training_queries.pickle", train), ("evaluation_database.pickle", database), ("evaluation_query.pickle", query)):
        atomic_write_bytes(dst / name, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    return train
