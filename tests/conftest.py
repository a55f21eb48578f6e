"""Shared fixtures: the real sample data in ../shared/data (or OCTFORMER_DATA), skipped when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path | None:
    """The shared sample-data folder, or None when this checkout has none beside it."""
    env = os.environ.get("OCTFORMER_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data", REPO / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = data_dir()
    if d is None:
        pytest.skip("shared sample data not found (set OCTFORMER_DATA or put shared/ beside the repo)")
    return d
