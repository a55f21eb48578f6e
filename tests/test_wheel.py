"""The release wheel: abi3, no sample data inside, installs and builds octrees without a Rust toolchain."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

import octformer

REPO = Path(__file__).resolve().parents[1]
DATA_SUFFIXES = (".bin", ".pcd", ".las", ".laz", ".ply", ".npy", ".npz", ".obj", ".label")

pytestmark = pytest.mark.slow

# the check run inside the fresh venv: where octformer comes from, and a small build's counts
PROBE = """
import json
import numpy as np
import octformer
rng = np.random.default_rng(5)
pts = rng.normal(0, 1, (3000, 3)).astype(np.float32)
t = octformer.build_octree(pts, 7, offsets=[0, 1000, 3000], features=pts)
print(json.dumps({
    "file": octformer.__file__,
    "core": octformer._core.__file__,
    "version": octformer.__version__,
    "nnum": t.nnum.tolist(),
    "nnum_nempty": t.nnum_nempty.tolist(),
    "batch_nnum": t.batch_nnum.tolist(),
    "leaf_sum": int(t.point_leaf.sum()),
    "neighbors": int((t.neighbors(7) >= 0).sum()),
}))
"""


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{cmd} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``maturin build --release`` into a temporary folder (reuses the cargo target cache)."""
    pytest.importorskip("maturin", reason="maturin is a test dependency (pip install -e '.[test]')")
    if shutil.which("cargo") is None:
        pytest.skip("building the wheel needs cargo")
    out = tmp_path_factory.mktemp("wheelhouse")
    # `python -m maturin` needs the maturin binary beside the interpreter; inside a venv that
    # borrows site-packages it is elsewhere on PATH
    maturin = [shutil.which("maturin")] if shutil.which("maturin") else [sys.executable, "-m", "maturin"]
    _run([*maturin, "build", "--release", "--quiet", "-o", str(out)], cwd=REPO, timeout=900)
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_is_abi3_and_holds_no_sample_data(wheel):
    assert re.fullmatch(r"octformer-[0-9][^-]*-cp310-abi3-[a-z0-9_.]+\.whl", wheel.name), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("octformer/__init__.py", "octformer/octree.py", "octformer/_core.pyi", "octformer/py.typed"):
        assert needed in names, needed
    assert [n for n in names if re.fullmatch(r"octformer/_core\.abi3\.so", n)], names
    data = [n for n in names if n.lower().endswith(DATA_SUFFIXES) or "shared/" in n]
    assert not data, f"sample data or shared files inside the wheel: {data}"
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "rust/", "target/"))]


def test_wheel_installs_and_builds_without_rust(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    bin_dir = env_dir / "bin"
    py = bin_dir / "python"
    # no cargo/rustc reachable: PATH is the venv and the system folders, and both tools fail if called
    path = os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])
    assert shutil.which("cargo", path=path) is None and shutil.which("rustc", path=path) is None
    # keep the index/certificate settings, drop anything naming a Rust toolchain or this Python's paths
    env = {
        k: v
        for k, v in os.environ.items()
        if not re.search(r"CARGO|RUST|PYTHON|VIRTUAL_ENV|CONDA", k) and "cargo" not in v and "rustup" not in v
    }
    env.update(PATH=path, HOME=str(tmp_path), CARGO="/bin/false", RUSTC="/bin/false", PYTHONNOUSERSITE="1")
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ROOT_USER_ACTION="ignore")
    # the runtime dependencies from the package index, then the wheel alone: nothing to compile
    _run([str(py), "-m", "pip", "install", "-q", "--only-binary=:all:", "numpy", "pillow"], env=env, cwd=tmp_path, timeout=600)
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(wheel)], env=env, cwd=tmp_path, timeout=300)
    res = _run([str(py), "-c", PROBE], env=env, cwd=tmp_path, timeout=120)
    got = json.loads(res.stdout.strip().splitlines()[-1])

    site = str(env_dir.resolve())
    assert Path(got["file"]).resolve().as_posix().startswith(site), got["file"]
    assert Path(got["core"]).name == "_core.abi3.so" and Path(got["core"]).resolve().as_posix().startswith(site)
    assert got["version"] == octformer.__version__

    rng = np.random.default_rng(5)
    pts = rng.normal(0, 1, (3000, 3)).astype(np.float32)
    t = octformer.build_octree(pts, 7, offsets=[0, 1000, 3000], features=pts)
    assert got["nnum"] == t.nnum.tolist()
    assert got["nnum_nempty"] == t.nnum_nempty.tolist()
    assert got["batch_nnum"] == t.batch_nnum.tolist()
    assert got["leaf_sum"] == int(t.point_leaf.sum())
    assert got["neighbors"] == int((t.neighbors(7) >= 0).sum())
