"""How much of an octree build's time is the state of the caches, not the build: same call, three states.

Run from the repository root:

    python benchmarks/bench_cache_state.py            # lidar1M and indoor200k, 1 and 2 threads
    python benchmarks/bench_cache_state.py --write    # also append the table to RESULTS.md

States, each timed on its own `--runs` calls of `octformer.build_octree` (depth 10, ocnn's cube):

- back to back: one build right after another (outputs and inputs of the last call still cached);
- after 128 MiB copied: NumPy copies two 64 MiB arrays before every call (another library's
  work, as between the rounds of bench_octree.py), evicting our data from the caches;
- after 0.2 s idle: the process sleeps before every call (other tenants of the VM use the
  shared cache meanwhile; an idle vCPU may also be descheduled).

The build is the same in all three; the spread is what bench_octree.py's medians sit in,
since there every sample follows another library's calls.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import common

BOX = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))


def time_states(name: str, threads: int, runs: int) -> dict[str, float]:
    """Median ms of the build in each cache state."""
    import octformer

    pts = common.load(name)

    def build() -> object:
        return octformer.build_octree(pts, 10, full_depth=2, bbox=BOX, num_threads=threads)

    evict_a = np.ones(8 << 20)
    evict_b = np.empty_like(evict_a)

    def evict() -> None:
        np.copyto(evict_b, evict_a)
        np.copyto(evict_a, evict_b)

    states = {
        "back to back": lambda: None,
        "after 128 MiB copied": evict,
        "after 0.2 s idle": lambda: time.sleep(0.2),
    }
    build()
    out = {}
    for label, before in states.items():
        times = []
        for _ in range(runs):
            before()
            t0 = time.perf_counter()
            build()
            times.append((time.perf_counter() - t0) * 1e3)
        out[label] = float(np.median(times))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--cases", nargs="+", default=["lidar1M", "indoor200k"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()
    rows = [
        "| input | T | back to back ms | after 128 MiB copied ms | after 0.2 s idle ms | worst ÷ back to back | other load (cores) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in args.cases:
        for t in args.threads:
            quiet = common.wait_for_quiet(timeout_s=20.0)
            res = time_states(name, t, args.runs)
            vals = list(res.values())
            row = (
                f"| {name} | {t} | " + " | ".join(f"{v:.2f}" for v in vals)
                + f" | {max(vals) / vals[0]:.2f}× | {quiet['busy_before']:.2f} |"
            )
            print(row, flush=True)
            rows.append(row)
    table = "\n".join(rows)
    if args.write:
        note = (
            f"Median of {args.runs} calls of `octformer.build_octree` (depth 10, full_depth 2) per state, "
            "in one process per (input, T) run in turn; see the script's docstring for the states."
        )
        common.append_results(
            "Octree build time by cache state (bench_cache_state.py)",
            table + "\n\n" + note,
            "python benchmarks/bench_cache_state.py --write",
        )


if __name__ == "__main__":
    main()
