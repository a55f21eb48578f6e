"""The benchmark harness times only the calls: inputs are made and freed outside the timing."""

from __future__ import annotations

import importlib.util
import sys
import time
import types
from pathlib import Path

import pytest

COMMON = Path(__file__).resolve().parents[1] / "benchmarks" / "common.py"


def load_common():
    spec = importlib.util.spec_from_file_location("bench_common_under_test", COMMON)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_time_interleaved_frees_inputs_outside_the_timed_calls():
    common = load_common()
    events: list[str] = []

    class Input:
        def __del__(self) -> None:
            events.append("free")

    def clock() -> float:
        events.append("clock")
        return time.perf_counter()

    # the harness reads the clock exactly twice per sample: before and after its calls
    common.time = types.SimpleNamespace(perf_counter=clock, sleep=time.sleep)
    calls = {"a": (Input, lambda arg: events.append("call")), "b": (Input, lambda arg: events.append("call"))}
    times = common.time_interleaved(calls, min_runs=3, max_runs=3, budget_s=0.0, numbers={"a": 1, "b": 2})
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    timed, inside = False, []
    for e in events:
        if e == "clock":
            timed = not timed
        elif timed:
            inside.append(e)
    # 3 samples of 1 call and 3 of 2, and no input freed while a sample is timed
    assert inside == ["call"] * 9
    assert events.count("free") == 9


def load_bench_octree():
    sys.path.insert(0, str(COMMON.parent))  # bench_octree imports its sibling `common`
    spec = importlib.util.spec_from_file_location("bench_octree_under_test", COMMON.parent / "bench_octree.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_build_worker_times_the_output_fill_floor_and_reports_it_on_a_miss():
    pytest.importorskip("torch")  # the timing worker sets torch's thread count
    bench = load_bench_octree()
    libs = ["octformer", "octformer auto box", "np.sort", "output fill"]
    spec = {
        "kind": "build", "data": "lidar100k", "depth": 8, "threads": 1, "mode": "time", "libs": libs,
        "min_runs": 1, "max_runs": 1, "budget_s": 0.0,
    }
    res = bench.worker(spec)
    assert sorted(res["times"]) == sorted(libs) and not res["skipped"]
    res.update(busy_before=0.0, mem={}, other_load=0.0)
    # a target no build meets, so the verdict line must carry the floor
    bench.TARGET_SORT = 0.0
    table, verdicts = bench.render_build([res])
    fill, srt = res["times"]["output fill"]["median_ms"], res["times"]["np.sort"]["median_ms"]
    assert f"| {bench.common.fmt_ms(res['times']['output fill'])} |" in table
    (line,) = [v for v in verdicts if "np.sort" in v]
    assert line.endswith(f"filling arrays the size of the output alone takes {fill / srt:.2f}× `np.sort`")
