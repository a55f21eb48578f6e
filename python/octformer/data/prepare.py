"""Shared machinery of the ``datasets/<name>/prepare.py`` scripts: arguments, resumable parallel jobs, atomic outputs.

A job writes one ``OUT/samples/<name>.npz``; a job whose output already exists is
skipped, so an interrupted preparation continues where it stopped. Outputs are written
to a temp file and renamed, so a killed run never leaves a truncated sample behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from octformer.data.datasets import PREPARED_VERSION
from octformer.errors import OctformerError

__all__ = ["base_parser", "run_jobs", "save_sample", "write_meta", "atomic_write_bytes", "Progress"]


def base_parser(description: str) -> argparse.ArgumentParser:
    """``--src RAW --dst OUT [--workers N] [--force]``, shared by every prepare script."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--src", required=True, type=Path, help="raw dataset folder, in the layout the dataset ships")
    p.add_argument("--dst", required=True, type=Path, help="output folder (created); re-running skips finished samples")
    p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)), help="parallel processes (default: cores, at most 8)")
    p.add_argument("--force", action="store_true", help="redo samples that already exist")
    return p


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_sample(dst: Path, name: str, **arrays: np.ndarray) -> Path:
    """Atomically write ``dst/samples/<name>.npz`` (uncompressed, fast to load)."""
    folder = Path(dst) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.npz"
    tmp = folder / f".{name}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def sample_path(dst: Path, name: str) -> Path:
    """Where ``save_sample`` puts sample ``name``."""
    return Path(dst) / "samples" / f"{name}.npz"


def write_meta(dst: Path, dataset: str, *, classes: Sequence[str], splits: dict[str, list[str]], ignore_index: int = -1, **extra: Any) -> None:
    """Atomically write ``dst/meta.json`` (what :class:`octformer.data.PreparedSegmentationDataset` reads)."""
    meta = {"dataset": dataset, "version": PREPARED_VERSION, "classes": list(classes), "ignore_index": ignore_index, "splits": {k: sorted(v) for k, v in splits.items()}}
    meta.update(extra)
    Path(dst).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(dst) / "meta.json", json.dumps(meta, indent=1).encode())


class Progress:
    """A one-line text progress bar on stderr (no dependency)."""

    def __init__(self, total: int, desc: str, stream=None):
        self.total, self.desc, self.done, self.skipped = total, desc, 0, 0
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()

    def update(self, n: int = 1, skipped: bool = False) -> None:
        self.done += n
        self.skipped += n if skipped else 0
        frac = self.done / max(self.total, 1)
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        eta = (self.total - self.done) / max(rate, 1e-9)
        bar = "#" * int(30 * frac)
        self.stream.write(f"\r{self.desc}: [{bar:<30}] {self.done}/{self.total} ({self.skipped} already done) eta {eta:.0f}s")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def run_jobs(jobs: Sequence[tuple[str, tuple]], fn: Callable[..., Any], *, dst: Path, workers: int = 1, force: bool = False, desc: str = "preparing", done: Callable[[str], bool] | None = None) -> list[Any]:
    """Run ``fn(*args)`` for every ``(name, args)`` not done yet (all of them with ``force``), in parallel.

    A job is done when ``done(name)`` says so (default: its ``samples/<name>.npz`` exists).
    ``fn`` must be a module-level function (it is sent to worker processes). Returns the
    results of the jobs that ran, in job order; a failing job raises after the others finish.
    """
    is_done = done or (lambda name: sample_path(dst, name).exists())
    todo = [(name, args) for name, args in jobs if force or not is_done(name)]
    bar = Progress(len(jobs), desc)
    if len(jobs) > len(todo):
        bar.update(len(jobs) - len(todo), skipped=True)
    results: dict[int, Any] = {}
    errors: list[str] = []
    if workers <= 1 or len(todo) <= 1:
        for i, (name, args) in enumerate(todo):
            results[i] = fn(*args)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(fn, *args): (i, name) for i, (name, args) in enumerate(todo)}
            for fut in as_completed(futures):
                i, name = futures[fut]
                try:
                    results[i] = fut.result()
                except Exception as exc:  # reported together below
                    errors.append(f"{name}: {type(exc).__name__}: {exc}")
                bar.update()
    if errors:
        raise OctformerError(f"{len(errors)} of {len(todo)} samples failed; first: {errors[0]}")
    return [results[i] for i in sorted(results)]


def listed(paths: Iterable[Path]) -> list[Path]:
    """Sorted list (deterministic job order on every filesystem)."""
    return sorted(paths)
