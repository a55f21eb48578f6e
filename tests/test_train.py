"""The trainer: torchrun/gloo equals one process, SIGKILL + --resume equals an uninterrupted run, atomic checkpoints, the no-argument run."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from octformer.train import atomic_save, latest_checkpoint, load_config
from octformer.train.trainer import CHECKPOINT_PATTERN

# A short run of the tiny config: 24 scenes of 1024 points, global batch 4 -> 6 steps per epoch.
SMALL = ("data.size=24", "data.val_size=4", "data.num_points=1024", "train.log_every=1000", "train.threads=1")


def _env() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["OCTFORMER_NUM_THREADS"] = "1"
    return env


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "octformer.train", *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "loss.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}  # a resumed run rewrites re-done steps; the last write wins


def _final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "final.pt", map_location="cpu", weights_only=True)["model"]


def test_shipped_configs_load():
    names = set(__import__("octformer.train", fromlist=["shipped_configs"]).shipped_configs())
    assert {"tiny", "volt_scannet", "volt_waymo", "hotformerloc_oxford", "hotformerloc_cs_wild_places", "octgpt_shapenet"} <= names
    for n in names:
        cfg = load_config(n)
        assert cfg["name"] and "train" in cfg and "data" in cfg and "model" in cfg


def test_overrides_parse_yaml_values():
    cfg = load_config("tiny", ["train.lr=0.5", "data.transforms=[]", "new.key=[1, 2]"])
    assert cfg["train"]["lr"] == 0.5 and cfg["data"]["transforms"] == [] and cfg["new"]["key"] == [1, 2]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    # drop path off: its per-sample random masks come from each process's own generator,
    # which is legitimate noise but would hide any real difference between the two runs
    common = ["tiny", *SMALL, "train.max_steps=8", "train.checkpoint_every=0", "model.params.drop_path=0.0"]
    one = _run([*common, "--out", str(tmp_path / "one")], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = shutil.which("torchrun")
    assert torchrun, "torchrun not on PATH"
    two = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "octformer.train", *common, "--out", str(tmp_path / "two")],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stdout
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-4, abs=1e-5), (s, a[s], b[s])
    assert a[8] < a[1]  # it did train
    # weights: Adam turns float-rounding noise in near-zero gradients (e.g. a bias feeding a
    # BatchNorm) into steps of size ~lr, so allow the sum of the 8 learning rates
    wa, wb = _final_weights(tmp_path / "one"), _final_weights(tmp_path / "two")
    for k in wa:
        torch.testing.assert_close(wa[k].float(), wb[k].float(), rtol=1e-3, atol=1e-2)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    # checkpoints every 5 steps, 6 steps per epoch: every checkpoint but the last is mid-epoch
    common = ["tiny", *SMALL, "train.max_steps=30", "train.checkpoint_every=5", "train.keep_checkpoints=10"]
    full = _run([*common, "--out", str(tmp_path / "full")], tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "octformer.train", *common, "--out", str(run_dir)], cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    ckpt_dir = run_dir / "checkpoints"
    try:
        while time.monotonic() < deadline:
            latest = latest_checkpoint(ckpt_dir)
            if latest is not None and int(CHECKPOINT_PATTERN.match(latest.name).group(1)) >= 10:
                break
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.01)
        else:
            pytest.fail("no checkpoint at step 10 within the deadline")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "final.pt").exists()
    steps = []
    for p in ckpt_dir.iterdir():
        m = CHECKPOINT_PATTERN.match(p.name)
        if m:  # every visible checkpoint is complete and loadable
            state = torch.load(p, map_location="cpu", weights_only=True)
            assert state["step"] == int(m.group(1))
            steps.append(state["step"])
    resume_step = max(steps)
    assert resume_step % 6 != 0 and resume_step < 30  # mid-epoch

    resumed = _run([*common, "--out", str(run_dir), "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from" in resumed.stdout and f"at step {resume_step}" in resumed.stdout
    wa, wb = _final_weights(tmp_path / "full"), _final_weights(run_dir)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    la, lb = _losses(tmp_path / "full"), _losses(run_dir)
    assert all(la[s] == lb[s] for s in range(resume_step + 1, 31))


_WRITER = """
import sys, torch
from octformer.train import atomic_save
big = torch.arange(6_000_000, dtype=torch.float32)
i = 0
while True:
    i += 1
    atomic_save({"i": i, "payload": big + i}, sys.argv[1])
"""


@pytest.mark.parametrize("delay", [0.15, 0.4, 0.9])
def test_atomic_save_is_never_half_written_under_sigkill(tmp_path, delay):
    target = tmp_path / "ckpt.pt"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], env=_env())
    try:
        t0 = time.monotonic()
        while not target.exists() and time.monotonic() - t0 < 60:
            time.sleep(0.01)
        time.sleep(delay)  # somewhere inside a later write
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    state = torch.load(target, map_location="cpu", weights_only=True)
    assert torch.equal(state["payload"], torch.arange(6_000_000, dtype=torch.float32) + state["i"])


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "c.pt"
    atomic_save({"v": torch.ones(3)}, target)

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"v": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["v"], torch.ones(3))
    assert latest_checkpoint(tmp_path) is None  # temp files never match the checkpoint pattern


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "octformer.cli", "train", "tiny", "--out", str(tmp_path / "r"), "--resume", *SMALL], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "--resume: expected a checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_bad_config_values_are_named(tmp_path):
    r = subprocess.run([sys.executable, "-m", "octformer.cli", "train", "tiny", "train.schedule=linear", *SMALL, "--out", str(tmp_path / "x")], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "train.schedule: expected" in r.stderr


@pytest.mark.slow
def test_no_argument_run_beats_majority_baseline(tmp_path):
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "octformer.cli", "train"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - start
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "runs" / "tiny" / "result.json").read_text())
    assert result["mIoU"] > result["baseline_mIoU"] + 0.2
    lines = r.stdout.splitlines()
    for name in ("ground", "building", "car", "pole", "trunk", "canopy", "mIoU"):
        assert any(line.startswith(name) for line in lines), name
    print(f"no-argument run: {elapsed:.1f} s wall, mIoU {result['mIoU']:.3f} vs baseline {result['baseline_mIoU']:.3f}")


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    # the stand-in has no BatchNorm or dropout, so 2 x 2 accumulated samples are the same objective as 4 at once
    common = ["tiny", *SMALL, "model.name=standin_point_mlp", "model.params={hidden: 32}", "train.max_steps=5", "train.checkpoint_every=0"]
    full = _run([*common, "train.batch_size=4", "--out", str(tmp_path / "full")], tmp_path)
    acc = _run([*common, "train.batch_size=2", "train.accumulate=2", "--out", str(tmp_path / "acc")], tmp_path)
    assert full.returncode == 0 and acc.returncode == 0, (full.stderr[-2000:], acc.stderr[-2000:])
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "acc")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-5)
    wa, wb = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "acc")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_ema_follows_its_recursion():
    from octformer.train.trainer import EMA

    model = torch.nn.Linear(3, 2)
    ema = EMA(model, 0.9)
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(4):
        with torch.no_grad():
            model.weight.add_(float(i + 1))
            model.bias.mul_(-2.0)
        ema.update(model)
        ref = {k: 0.9 * ref[k] + 0.1 * v for k, v in model.state_dict().items()}
    for k in ref:
        torch.testing.assert_close(ema.shadow[k], ref[k])
    again = EMA(torch.nn.Linear(3, 2), 0.5)
    again.load_state_dict(ema.state_dict())
    assert again.decay == 0.9 and all(torch.equal(again.shadow[k], ema.shadow[k]) for k in ref)


def test_schedules_shape(tmp_path):
    from octformer.train.trainer import _scheduler

    def lrs(cfg, total=20):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = _scheduler(opt, cfg, total)
        out = []
        for _ in range(total):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    cos = lrs({"schedule": "cosine", "warmup_steps": 4})
    assert cos[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert cos[4:] == pytest.approx([0.5 * (1 + math.cos(math.pi * (s - 4) / 16)) for s in range(4, 20)])
    one = lrs({"schedule": "onecycle", "pct_start": 0.25})
    peak = int(np.argmax(one))
    assert 3 <= peak <= 6 and one[peak] == pytest.approx(1.0, rel=1e-3) and one[-1] < 1e-3


# ------------------------------------------------------------------ place recognition and generation tasks
# (the attention backend is pinned to the PyTorch reference: the trainer is under test here, not the kernels)


def _place_recognition_data(root: Path, shared_data: Path) -> None:
    """PointNetVLAD-style pickles + submaps cut from the real SemanticKITTI scan along a line, two runs."""
    import pickle

    from octformer.data.placerec import evaluation_sets, training_queries

    scan = np.fromfile(shared_data / "semantickitti" / "velodyne" / "000000.bin", dtype="<f4").reshape(-1, 4)[:, :3]
    rng = np.random.default_rng(0)
    runs = []
    for r, shift in enumerate((0.0, 1.5)):
        paths, xy = [], []
        for k, y in enumerate(np.arange(-30.0, 31.0, 6.0)):
            near = scan[np.linalg.norm(scan[:, :2] - [shift, y], axis=1) < 10.0]
            sub = near[rng.choice(len(near), 1024)].astype(np.float64)
            sub = (sub - sub.mean(0)) / np.abs(sub - sub.mean(0)).max()
            rel = f"submaps/run{r}/{k:03d}.npy"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(root / rel, sub.astype(np.float32))
            paths.append(rel)
            xy.append([shift, y])
        runs.append((paths, np.array(xy)))
    train = training_queries(runs[0][0] + runs[1][0], np.concatenate([runs[0][1], runs[1][1]]), 7.0, 20.0)
    database, query = evaluation_sets(runs, 4.0)
    for name, obj in (("training_queries.pickle", train), ("evaluation_database.pickle", database), ("evaluation_query.pickle", query)):
        (root / name).write_bytes(pickle.dumps(obj))


@pytest.mark.slow
def test_place_recognition_task_reports_the_pointnetvlad_metrics_of_its_weights(tmp_path, shared_data):
    from octformer.data import PlaceRecognitionDataset
    from octformer.data.placerec import true_neighbors_by_pair
    from octformer.metrics import mean_place_recognition_scores
    from octformer.models import create_model

    data = tmp_path / "pr"
    _place_recognition_data(data, shared_data)
    args = ["hotformerloc_oxford", "model.name=hotformerloc_tiny", "model.params={backend: torch}", "data.transforms=[]", "train.batch_size=4",
            "train.max_steps=4", "train.lr=0.001", "train.threads=1", "train.checkpoint_every=0", "--data", str(data), "--out", str(tmp_path / "run")]
    r = _run(args, tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert all(np.isfinite(v) for v in _losses(tmp_path / "run").values())
    # recompute AR@1 / AR@1% / MRR from the saved weights with the metric module directly
    model = create_model("hotformerloc_tiny", backend="torch")
    model.load_state_dict({k.removeprefix("model."): v for k, v in _final_weights(tmp_path / "run").items()})
    model.eval()
    import pickle

    queries = pickle.loads((data / "evaluation_query.pickle").read_bytes())

    def descriptors(split, run):
        ds = PlaceRecognitionDataset(data, split, run=run)
        with torch.no_grad():
            return torch.cat([model(model.build_input([ds[j]["points"] for j in range(i, min(i + 4, len(ds)))])) for i in range(0, len(ds), 4)]).numpy()

    ref = mean_place_recognition_scores([descriptors("query", r) for r in range(2)], [descriptors("database", r) for r in range(2)], true_neighbors_by_pair(queries)).as_dict()
    for k in ("AR@1", "AR@1%", "MRR"):
        assert result[k] == pytest.approx(ref[k], abs=1e-6), k
    assert "AR@1%" in r.stdout


@pytest.mark.slow
def test_generation_task_reports_the_validation_loss_of_its_weights(tmp_path, shared_data):
    from octformer.data import ShapeDataset
    from octformer.data.prepare import save_sample, write_meta
    from octformer.io import read_points
    from octformer.models import create_model

    data = tmp_path / "shapes"
    names = []
    for k, mesh in enumerate(["spot/spot_triangulated.obj", "stanford_bunny/reconstruction/bun_zipper_res4.ply"] * 3):
        pts = read_points(shared_data / mesh).points.astype(np.float64)
        pts = np.roll(pts, k % 3, axis=1)  # different orientations of the real shapes
        pts = (pts - (pts.min(0) + pts.max(0)) / 2) / np.abs(pts).max() * 0.9
        save_sample(data, f"s{k}", points=pts.astype(np.float32), normals=np.zeros_like(pts, dtype=np.float32))
        names.append(f"s{k}")
    write_meta(data, "shapes", classes=(), splits={"train": names[:4], "val": names[4:]})
    args = ["octgpt_shapenet", "model.name=octgpt_tiny", "model.params={backend: torch}", "train.batch_size=2", "train.max_steps=3",
            "train.threads=1", "train.checkpoint_every=0", "train.ema=null", "train.amp=false", "--data", str(data), "--out", str(tmp_path / "run")]
    r = _run(args, tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    model = create_model("octgpt_tiny", backend="torch")
    model.load_state_dict({k.removeprefix("model."): v for k, v in _final_weights(tmp_path / "run").items()})
    model.eval()
    val = ShapeDataset(data, "val")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        loss = float(model.loss(model.build_input([val[0]["points"], val[1]["points"]]), gen)["loss"])
    assert result["val_loss"] == pytest.approx(loss, rel=1e-5)
    assert np.isfinite(result["val_loss"]) and "masked-token loss" in r.stdout
