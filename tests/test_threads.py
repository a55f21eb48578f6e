"""The GIL is released during native work, and the rayon pools survive fork (DataLoader workers)."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
import traceback

import numpy as np
import pytest

import octformer
from octformer import _core

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX-only")

TIMEOUT_S = 120  # a deadlock fails the test after this long instead of hanging the suite


def cloud(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 1, (n // 2, 3)), rng.uniform(-3, 3, (n - n // 2, 3))]).astype(np.float32)


# ------------------------------------------------------------------ GIL


def runs_python_during(native, action) -> bool:
    """True when the main thread ran Python bytecode while ``native`` was executing in a worker thread.

    The switch interval is raised so the interpreter never forces a GIL hand-over: the main
    thread (woken when the worker enters ``native``) can only run if ``native`` itself
    releases the GIL. If it held the GIL throughout, the main thread would first run after
    ``native`` returned and see ``returned`` already set.
    """
    entered, returned = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def profile(frame, event, arg):
        if arg is native:
            if event == "c_call":
                entered.set()
            elif event in ("c_return", "c_exception"):
                returned.set()

    def worker():
        sys.setprofile(profile)
        try:
            action()
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
        finally:
            sys.setprofile(None)
            entered.set()
            returned.set()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        assert entered.wait(TIMEOUT_S)
        overlapped = not returned.is_set()
        assert returned.wait(TIMEOUT_S), "native call did not finish"
        thread.join(TIMEOUT_S)
    finally:
        sys.setswitchinterval(old)
    if failure:
        raise failure[0]
    return overlapped


def _retry(native, make_action) -> None:
    # wake-up latency on a loaded machine can exceed a short build: grow the input and retry;
    # a call that holds the GIL can never pass, whatever the size
    for n in (300_000, 1_000_000, 3_000_000):
        if runs_python_during(native, make_action(n)):
            return
    pytest.fail(f"the main thread never ran while {native.__name__} executed: is the GIL released?")


def test_gil_probe_tells_holding_from_releasing():
    """The probe itself: a builtin that keeps the GIL reads False, one that drops it True."""
    assert not runs_python_during(sum, lambda: sum(range(3_000_000)))
    assert runs_python_during(time.sleep, lambda: time.sleep(0.05))


def test_build_releases_the_gil():
    # one numpy cloud takes the single-call fast path (box, checks and build in one native call)
    _retry(_core.build_single, lambda n: (lambda p=cloud(n): octformer.build_octree(p, 12, num_threads=2)))


def test_batch_build_releases_the_gil():
    def make(n):
        p = cloud(n)
        offsets = np.array([0, n // 3, n])
        return lambda: octformer.build_octree(p, 12, offsets=offsets, num_threads=2)

    _retry(_core.build_octree, make)


def test_neighbors_release_the_gil():
    def make(n):
        tree = octformer.build_octree(cloud(n), 11)
        tree.neighbors(10)  # cache the levels above: the probed call is the one depth-11 step
        return lambda: tree.neighbors(11, nonempty=False)

    _retry(_core.neighbors_step, make)


def test_leaf_averaging_releases_the_gil():
    def make(n):
        p = cloud(n)
        feats = np.repeat(p, 4, axis=1)
        return lambda: octformer.build_octree(p, 6, features=feats)

    _retry(_core.average_leaf_values, make)


def test_concurrent_builds_from_threads_are_correct():
    """Several Python threads building at once (GIL released) each get their own correct tree."""
    clouds = [cloud(60_000, seed=s) for s in range(4)]
    want = [octformer.build_octree(c, 10, num_threads=1) for c in clouds]
    got: list = [None] * 4

    def work(i):
        got[i] = octformer.build_octree(clouds[i], 10, num_threads=2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    assert all(g == w for g, w in zip(got, want))


# ------------------------------------------------------------------ fork


def _reference(points: np.ndarray):
    tree = octformer.build_octree(points, 9, features=points, num_threads=2)
    return tree, tree.neighbors(9)


def test_build_in_forked_child(tmp_path):
    points = cloud(80_000)
    want, want_neigh = _reference(points)  # starts the parent's 2-thread pool
    octformer.build_octree(points, 9)  # and the default-size one
    out = tmp_path / "child.pkl"
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            results = [_reference(points) for _ in range(2)]
            results.append((octformer.build_octree(points, 9, features=points, num_threads=1), None))
            results.append((octformer.build_octree(points, 9, features=points), None))
            out.write_bytes(pickle.dumps(results))
        except BaseException:
            out.write_text(traceback.format_exc())
            code = 1
        os._exit(code)
    deadline = time.monotonic() + TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail(f"forked child did not finish within {TIMEOUT_S} s (deadlock in the thread pool?)")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out.read_text() if out.exists() else status
    results = pickle.loads(out.read_bytes())
    for tree, neigh in results:
        assert tree == want
        if neigh is not None:
            np.testing.assert_array_equal(neigh, want_neigh)


class _Clouds:
    """A map-style dataset that builds one octree per item inside the DataLoader worker."""

    def __init__(self, clouds, num_threads=None):
        self.clouds = clouds
        self.num_threads = num_threads

    def __len__(self):
        return len(self.clouds)

    def __getitem__(self, i):
        from octformer.octree import default_num_threads

        tree = octformer.build_octree(self.clouds[i], 8, features=self.clouds[i], num_threads=self.num_threads)
        tree.neighbors(8)
        used = _core.resolved_num_threads(default_num_threads(self.num_threads))
        return tree, used, os.getpid()


def _merge_collate(items):
    trees, used, pids = zip(*items)
    return octformer.Octree.merge(trees), used, pids


@pytest.mark.parametrize("num_threads, expected_threads", [(None, 1), (2, 2)])
def test_dataloader_fork_workers(num_threads, expected_threads):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    clouds = [cloud(20_000 + 1_000 * i, seed=i) for i in range(6)]
    # the parent builds first, so its rayon pool exists before the workers fork
    parent = [octformer.build_octree(c, 8, features=c, num_threads=2) for c in clouds]
    for t in parent:
        t.neighbors(8)
    loader = DataLoader(
        _Clouds(clouds, num_threads),
        batch_size=2,
        num_workers=2,
        multiprocessing_context="fork",
        collate_fn=_merge_collate,
        timeout=TIMEOUT_S,
    )
    batches = list(loader)
    assert len(batches) == 3
    pids = set()
    for i, (merged, used, batch_pids) in enumerate(batches):
        assert merged == octformer.Octree.merge(parent[2 * i : 2 * i + 2])
        assert set(used) == {expected_threads}  # one native thread per worker unless asked
        pids.update(batch_pids)
    assert os.getpid() not in pids and len(pids) >= 1
    assert torch.utils.data.get_worker_info() is None


def test_thread_count_resolution(monkeypatch):
    from octformer.octree import default_num_threads

    monkeypatch.delenv("OCTFORMER_NUM_THREADS", raising=False)
    assert default_num_threads(None) is None and default_num_threads(3) == 3
    assert 1 <= _core.resolved_num_threads(None) <= os.cpu_count()
    monkeypatch.setenv("OCTFORMER_NUM_THREADS", "3")
    assert _core.resolved_num_threads(None) == 3
    assert _core.resolved_num_threads(1) == 1
