"""Why the OctFormer block's timings depend on the thread count here: three small probes.

* ``--op-overhead T``: wall and CPU ms of one elementwise op on a 10k × 96 tensor at T threads
  (on a loaded machine each torch kernel's parallel region waits for a descheduled thread).
* ``--aten-calls N``: aten calls per forward + backward of the attention alone (octformer.nn
  PlanAttention with the torch reference, per-call window plan) and of the dense-mask
  transcription in bench_models.py, from torch.profiler at 1 thread.
* ``--parts T N [backend]``: interleaved median (min) ms of the window plan, PlanAttention
  (with and without building the plan), the dense attention and the CPE, at T threads.
* ``--profile T N impl``: torch.profiler table (top self-CPU ops) of one block step
  (impl: octformer, octformer-torch, dense).

Run e.g. ``python benchmarks/profile_block.py --parts 2 10000 torch``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models as bm  # noqa: E402
import common  # noqa: E402


def op_overhead(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    x = torch.randn(10_000, 96)
    for _ in range(10):
        x.mul_(1.0)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(300):
        x.mul_(1.0)
    print(f"{threads} thread(s): one elementwise op on 10k x 96: {(time.perf_counter() - t0) / 0.3:.3f} ms wall, "
          f"{(time.process_time() - c0) / 0.3:.3f} ms CPU (other load {common.busy_cores(0.5):.1f} cores incl. this)")


def _attention_steps(n: int, backend: str = "torch"):
    import torch

    from octformer.nn import CPE, PlanAttention, window_plan

    torch.manual_seed(0)
    xyz, neigh, _ = bm.block_inputs(n)
    batch = torch.zeros(n, dtype=torch.long)
    x0 = torch.randn(n, bm.C)
    ours = PlanAttention(bm.C, bm.H, rpe_bound=int(0.8 * bm.K), backend=backend)
    dense = bm.dense_octformer_block_factory().attn
    cpe = CPE(bm.C)
    plan = window_plan(batch, bm.K)

    def grad(f):
        def run(_=None):
            x = x0.clone().requires_grad_(True)
            f(x).sum().backward()
        return run

    return {
        "plan": lambda _=None: window_plan(batch, bm.K),
        "ours": grad(lambda x: ours(x, window_plan(batch, bm.K), coords=xyz)),
        "ours_plan_cached": grad(lambda x: ours(x, plan, coords=xyz)),
        "dense": grad(lambda x: dense(x, xyz, batch)),
        "cpe": grad(lambda x: cpe(x, neigh)),
    }


def aten_calls(n: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    steps = _attention_steps(n)
    for name in ("ours", "dense"):
        steps[name]()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            steps[name]()
        calls = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
        print(f"{name}: {calls} aten calls per attention forward + backward at {n:,} tokens")


def parts(threads: int, n: int, backend: str) -> None:
    import torch

    torch.set_num_threads(threads)
    steps = _attention_steps(n, backend)
    for f in steps.values():
        f()
    times = common.time_interleaved({k: (lambda: None, f) for k, f in steps.items()}, min_runs=5, max_runs=5,
                                    budget_s=0.0)
    for k, v in times.items():
        print(f"{threads} thread(s), {n:,} tokens, {k}: {common.fmt_ms(common.summarize(v))} ms")


def profile_step(threads: int, n: int, impl: str) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    step, _ = bm.block_step(impl, n)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--op-overhead", type=int, metavar="T")
    ap.add_argument("--aten-calls", type=int, metavar="N")
    ap.add_argument("--parts", nargs="+", metavar="T N [backend]")
    ap.add_argument("--profile", nargs=3, metavar=("T", "N", "IMPL"))
    a = ap.parse_args()
    if a.op_overhead:
        op_overhead(a.op_overhead)
    if a.aten_calls:
        aten_calls(a.aten_calls)
    if a.parts:
        parts(int(a.parts[0]), int(a.parts[1]), a.parts[2] if len(a.parts) > 2 else "torch")
    if a.profile:
        profile_step(int(a.profile[0]), int(a.profile[1]), a.profile[2])
