"""The benchmark harness times only the calls: inputs are made and freed outside the timing."""

from __future__ import annotations

import importlib.util
import sys
import time
import types
from pathlib import Path

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
