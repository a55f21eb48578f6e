"""``octformer inspect``: printed counts equal build_octree's, the PNG decodes, errors exit 2 cleanly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import octformer
from octformer.cli import DEMO_DEPTH, IMAGE_SIZE, LARGE_SCAN_DEPTH, MARGIN, PANEL, TITLE, _ramp, demo_scene, main, render_octree_png
from octformer.io import read_points

ROW = re.compile(r"^\s*(\d+)\s+([\d,]+)\s+([\d,]+)\s*$")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "octformer.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _table(stdout: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [ROW.match(line) for line in stdout.splitlines()]
    rows = [(int(m[1]), int(m[2].replace(",", "")), int(m[3].replace(",", ""))) for m in rows if m]
    assert [r[0] for r in rows] == list(range(len(rows))), stdout
    return np.array([r[1] for r in rows]), np.array([r[2] for r in rows])


def _field(stdout: str, name: str) -> str:
    line = next(line for line in stdout.splitlines() if line.startswith(name + ":"))
    return line.split(":", 1)[1].strip()


def _check_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == IMAGE_SIZE
        return np.asarray(img.convert("RGB"))


def test_inspect_demo_scene(tmp_path: Path) -> None:
    res = _run(["inspect"], tmp_path)
    assert res.returncode == 0, res.stderr
    ref = octformer.build_octree(demo_scene(), DEMO_DEPTH)
    nnum, nempty = _table(res.stdout)
    np.testing.assert_array_equal(nnum, ref.nnum)
    np.testing.assert_array_equal(nempty, ref.nnum_nempty)
    assert int(_field(res.stdout, "points").replace(",", "")) == demo_scene().shape[0]
    assert _field(res.stdout, "depth").startswith(f"{DEMO_DEPTH} ")
    img = _check_png(tmp_path / "octree.png")
    top = img[TITLE + MARGIN : TITLE + MARGIN + PANEL, MARGIN : MARGIN + PANEL]
    coloured = int((np.abs(top.astype(int) - 250).sum(axis=2) > 0).sum())
    xy = ref.xyz(DEMO_DEPTH)[:, :2]
    columns = len(np.unique(xy, axis=0))  # occupied (x, y) columns, each drawn as a square of scale² pixels
    scale = PANEL / (xy.max(axis=0) - xy.min(axis=0) + 1).max()
    assert abs(coloured / (columns * scale**2) - 1) < 0.05


def test_inspect_semantickitti_scan(shared_data: Path, tmp_path: Path) -> None:
    scan = shared_data / "semantickitti/velodyne/000000.bin"
    res = _run(["inspect", str(scan), "--out", "pics/kitti.png", "--threads", "2"], tmp_path)
    assert res.returncode == 0, res.stderr
    ref = octformer.build_octree(read_points(scan).points, LARGE_SCAN_DEPTH)  # >= 50k points: depth 10
    nnum, nempty = _table(res.stdout)
    np.testing.assert_array_equal(nnum, ref.nnum)
    np.testing.assert_array_equal(nempty, ref.nnum_nempty)
    assert _field(res.stdout, "points") == "123,389"
    assert _field(res.stdout, "format") == "kitti"
    np.testing.assert_allclose([float(v) for v in _field(res.stdout, "bbox min").split()], [-79.602, -79.917, -27.639], atol=5e-4)
    _check_png(tmp_path / "pics" / "kitti.png")


def test_inspect_voxel_size_and_threads(shared_data: Path, tmp_path: Path) -> None:
    bunny = shared_data / "stanford_bunny/reconstruction/bun_zipper_res4.ply"
    one = _run(["inspect", str(bunny), "--voxel-size", "0.01", "--threads", "1"], tmp_path)
    two = _run(["inspect", str(bunny), "--voxel-size", "0.01", "--threads", "2", "--out", "b.png"], tmp_path)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    ref = octformer.build_octree(read_points(bunny).points, voxel_size=0.01)
    for res in (one, two):
        nnum, nempty = _table(res.stdout)
        np.testing.assert_array_equal(nnum, ref.nnum)
        np.testing.assert_array_equal(nempty, ref.nnum_nempty)
        assert _field(res.stdout, "depth").startswith(f"{ref.depth} ")


def test_inspect_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "broken.pcd").write_bytes(b"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4\n")
    (tmp_path / "points.txt").write_text("1 2 3\n")
    cases = {
        "no such file": ["inspect", "missing.ply"],
        "PCD": ["inspect", "broken.pcd"],
        "extension": ["inspect", "points.txt"],
        "not both": ["inspect", "--depth", "5", "--voxel-size", "0.1"],
        "positive integer": ["inspect", "--depth", "0"],
        "depth": ["inspect", "--depth", "22"],
    }
    for needle, args in cases.items():
        res = _run(args, tmp_path)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr and needle in res.stderr, (args, res.stderr)
    assert not (tmp_path / "octree.png").exists()


def test_help_lists_options(tmp_path: Path) -> None:
    res = _run(["inspect", "--help"], tmp_path)
    assert res.returncode == 0
    for word in ("FILE", "--depth", "--voxel-size", "--out", "--threads", "--format", "demo", ".pcd", "exit status"):
        assert word in res.stdout, word
    top = _run(["--help"], tmp_path)
    assert top.returncode == 0 and "inspect" in top.stdout


def test_main_returns_status_in_process(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(tmp_path / "nope.las")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_demo_scene_is_deterministic() -> None:
    a, b = demo_scene(), demo_scene()
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and 80_000 <= a.shape[0] <= 120_000
    assert not np.array_equal(a, demo_scene(seed=1))


def test_picture_orientation_and_colours(tmp_path: Path) -> None:
    """Two points at opposite cube corners: low corner bottom-left in blue, high corner top-right in red."""
    tree = octformer.build_octree(np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), 3)
    size = render_octree_png(tree, tmp_path / "two.png", "two cells")
    img = _check_png(tmp_path / "two.png")
    assert size == IMAGE_SIZE
    y0, x0 = TITLE + MARGIN, MARGIN
    low, high = tuple(_ramp(np.array(0.0)).tolist()), tuple(_ramp(np.array(1.0)).tolist())
    assert tuple(img[y0 + PANEL - 3, x0 + 3]) == low  # top view: (x, y) = (0, 0) at the bottom left
    assert tuple(img[y0 + 3, x0 + PANEL - 3]) == high
    assert tuple(img[y0 + 3, x0 + 3]) == (250, 250, 250)  # empty cell (0, 7)
