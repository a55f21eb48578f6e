"""octformer.build_octree, neighbour tables and merge vs ocnn 2.3.3 and Open3D, side by side, 1 and 2 threads.

Run from the repository root:

    python benchmarks/bench_octree.py            # full run, appends to benchmarks/RESULTS.md
    python benchmarks/bench_octree.py --quick    # small inputs, 1-2 repeats, nothing written

Each (case, thread count) runs in a fresh worker process that times every library in
rounds of seeded random order (median and min of up to 7 calls). Memory (peak RSS rise during the
first call, VmHWM reset via /proc/self/clear_refs) is probed in a separate fresh worker per
library, so one library's freed memory cannot hide another's. All libraries get the same
points, normalised into ocnn's [-1, 1] cube; only the build / neighbour / merge calls are timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

import numpy as np

import common

BOX = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
FULL_DEPTH = 2

# (input, depth); the KITTI scan is an extra row and needs ../shared/data
BUILD_CASES = [("lidar1M", 10), ("indoor200k", 10), ("oxford4096", 9), ("kitti000000", 10), ("oxford_batch", 9)]
NEIGH_CASES = [("indoor200k", 10), ("lidar1M", 10), ("oxford4096", 9), ("oxford_batch", 9)]
QUICK_BUILD = [("oxford4096", 9), ("lidar100k", 8)]
QUICK_NEIGH = [("oxford4096", 9), ("lidar100k", 8)]
# (input, depth); a single cloud is merged as MERGE_COPIES copies of its tree, a batch input
# as its per-sample trees (HOTFormerLoc's collate: 128 Oxford submaps)
MERGE_CASES = [("kitti000000", 10), ("oxford_batch", 9)]
QUICK_MERGE = [("lidar100k", 8)]
MERGE_COPIES = 8

BUILD_LIBS = ["octformer", "octformer auto box", "octformer._core", "ocnn", "open3d", "np.sort", "output fill"]
NEIGH_LIBS = ["octformer nonempty", "octformer all", "ocnn", "table fill"]
MERGE_LIBS = ["octformer", "ocnn"]

TARGET_BUILD = 10.0  # ocnn build time / ours
TARGET_SORT = 2.0  # ours / np.sort
TARGET_NEIGH = 30.0  # ocnn construct_all_neigh time / ours
TARGET_NEIGH_MEM = 8.0  # ocnn dpeak / ours
SETTLE_S = 0.05  # idle time before each timing sample (see common.time_interleaved)


# ----------------------------------------------------------------------------- worker side


def _ocnn_points(pts: np.ndarray, offsets: np.ndarray | None) -> Any:
    import torch
    from ocnn.octree import Points

    t = torch.from_numpy(pts)
    if offsets is None:
        return Points(t)
    sizes = np.diff(offsets)
    batch_id = torch.from_numpy(np.repeat(np.arange(sizes.size, dtype=np.float32), sizes)[:, None])
    return Points(t, batch_id=batch_id, batch_size=int(sizes.size))


def _ocnn_build(pts: np.ndarray, offsets: np.ndarray | None, depth: int) -> Any:
    from ocnn.octree import Octree

    b = 1 if offsets is None else offsets.size - 1
    oc = Octree(depth, FULL_DEPTH, batch_size=b)
    oc.build_octree(_ocnn_points(pts, offsets))
    return oc


def _ocnn_merged(pts: np.ndarray, offsets: np.ndarray | None, depth: int) -> Any:
    """ocnn octree the way OctFormer/HOTFormerLoc make one: per-sample builds, then merge_octrees."""
    from ocnn.octree import Octree, merge_octrees

    if offsets is None:
        return _ocnn_build(pts, None, depth)
    trees = [_ocnn_build(pts[offsets[i]:offsets[i + 1]], None, depth) for i in range(offsets.size - 1)]
    return merge_octrees(trees)


def _ours_build(pts: np.ndarray, offsets: np.ndarray | None, depth: int, threads: int) -> Any:
    import octformer

    return octformer.build_octree(pts, depth, full_depth=FULL_DEPTH, bbox=BOX, offsets=offsets, num_threads=threads)


def _build_calls(lib: str, pts: np.ndarray, offsets: np.ndarray | None, depth: int, threads: int):
    """(setup, fn) for one library's build call."""
    none: Callable[[], Any] = lambda: None  # noqa: E731
    if lib == "octformer":
        return none, lambda _: _ours_build(pts, offsets, depth, threads)
    if lib == "octformer auto box":
        import octformer

        # the default call: no bbox, so each sample's tight cube is found first (a different
        # tree from ocnn's fixed cube, so it is timed but not cross-checked)
        return none, lambda _: octformer.build_octree(pts, depth, full_depth=FULL_DEPTH, offsets=offsets, num_threads=threads)
    if lib == "octformer._core":
        from octformer import _core

        if offsets is None:
            # one cloud: the wrapper's single native call (box, checks, build)
            return none, lambda _: _core.build_single(pts, depth, FULL_DEPTH, BOX, False, threads)
        offs = offsets
        b = offs.size - 1
        lo = np.full((b, 3), -1.0)
        cells = np.full((b, 3), 2.0 / (1 << depth))
        # the same native call the wrapper makes (a single cloud's batch ids are made in Python)
        fill = b != 1
        return none, lambda _: _core.build_octree(
            pts, offs, lo, cells, depth, FULL_DEPTH, clip=False, num_threads=threads, fill_batch=fill
        )
    if lib == "ocnn":
        from ocnn.octree import Octree

        b = 1 if offsets is None else offsets.size - 1

        def ocnn_build(points: Any) -> Any:
            oc = Octree(depth, FULL_DEPTH, batch_size=b)
            oc.build_octree(points)
            return oc

        return (lambda: _ocnn_points(pts, offsets)), ocnn_build
    if lib == "open3d":
        import open3d as o3d

        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts.astype(np.float64)))

        def o3d_build(_: Any) -> Any:
            oc = o3d.geometry.Octree(max_depth=depth)
            oc.convert_from_point_cloud(pc, size_expand=0.01)
            return oc

        return none, o3d_build
    if lib == "np.sort":
        keys = common.morton_keys(pts, depth)
        if offsets is not None:
            sizes = np.diff(offsets)
            keys |= np.repeat(np.arange(sizes.size, dtype=np.uint64), sizes) << np.uint64(3 * depth)
        return none, lambda _: np.sort(keys)
    if lib == "output fill":
        # a floor, not a peer: one thread filling arrays the size of the tree's outputs
        # (ocnn's layout: int64 keys and int32 children of every node at every depth, the
        # point->leaf index, per-node batch ids for batches)
        tree = _ours_build(pts, offsets, depth, threads)
        written = [*tree.keys, *tree.children, tree.point_leaf] + (list(tree.batch) if tree.batch_size > 1 else [])
        return none, _fill_floor([np.asarray(a) for a in written])
    raise ValueError(f"unknown build library {lib!r}")


def _fill_floor(like: list[np.ndarray]) -> Callable[[Any], None]:
    """A call that fills arrays shaped like ``like`` (one thread): the cost of the bytes alone.

    The arrays are allocated once (no allocation or page faults in the timing), in enough
    copies to cover 64 MiB that successive calls fill in turn, so each call writes memory
    that is not in the caches, as a call making fresh outputs does.
    """
    nbytes = max(1, sum(a.nbytes for a in like))
    copies = [[np.empty_like(a) for a in like] for _ in range(max(1, -(-(64 << 20) // nbytes)))]
    turn = [0]

    def fill(_: Any) -> None:
        arrays = copies[turn[0] % len(copies)]
        turn[0] += 1
        for a in arrays:
            a.fill(7)  # not 0: this VM's memory writes whole zero lines about twice as fast

    for arrays in copies:  # fault every page in now
        for a in arrays:
            a.fill(0)
    return fill


def _neigh_calls(lib: str, pts: np.ndarray, offsets: np.ndarray | None, depth: int, threads: int):
    """(setup, fn): setup builds a fresh tree (untimed), fn builds every depth's 3×3×3 table."""
    if lib in ("octformer nonempty", "octformer all"):
        nonempty = lib.endswith("nonempty")

        def ours_neigh(tree: Any) -> Any:
            return [tree.neighbors(d, nonempty=nonempty, num_threads=threads) for d in range(1, depth + 1)]

        return (lambda: _ours_build(pts, offsets, depth, threads)), ours_neigh
    if lib == "ocnn":

        def ocnn_neigh(oc: Any) -> Any:
            oc.construct_all_neigh()
            return oc

        return (lambda: _ocnn_merged(pts, offsets, depth)), ocnn_neigh
    if lib == "table fill":
        # a floor, not a peer: one thread filling arrays the size of every depth's all-node
        # table, (M, 27) int32 (see _fill_floor)
        tree = _ours_build(pts, offsets, depth, threads)
        tables = [np.empty((int(np.asarray(tree.keys[d]).size), 27), np.int32) for d in range(1, depth + 1)]
        return (lambda: None), _fill_floor(tables)
    raise ValueError(f"unknown neighbour library {lib!r}")


def _merge_calls(lib: str, pts: np.ndarray, offsets: np.ndarray | None, depth: int, threads: int):
    """(setup, fn): the trees are built once, untimed; fn merges them into one batch."""
    if offsets is None:
        parts = [(0, pts.shape[0])] * MERGE_COPIES
    else:
        parts = [(int(offsets[i]), int(offsets[i + 1])) for i in range(offsets.size - 1)]
    if lib == "octformer":
        import octformer

        built: dict[tuple[int, int], Any] = {}
        for a, b in parts:
            if (a, b) not in built:
                built[(a, b)] = _ours_build(pts[a:b], None, depth, threads)
        trees = [built[p] for p in parts]
        return (lambda: trees), lambda ts: octformer.Octree.merge(ts, num_threads=threads)
    if lib == "ocnn":
        from ocnn.octree import merge_octrees

        built = {}
        for a, b in parts:
            if (a, b) not in built:
                built[(a, b)] = _ocnn_build(pts[a:b], None, depth)
        octs = [built[p] for p in parts]
        return (lambda: octs), merge_octrees
    raise ValueError(f"unknown merge library {lib!r}")


def _available(lib: str) -> str | None:
    """None if the library imports, else the reason it is skipped."""
    mod = {"ocnn": "ocnn", "open3d": "open3d"}.get(lib)
    if mod is None:
        return None
    try:
        __import__(mod)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return f"{type(exc).__name__}: {exc}"
    return None


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one (kind, input, depth, threads) case: 'time' all libraries, or 'mem' for one library."""
    threads = int(spec["threads"])
    if spec["mode"] == "time" or spec.get("lib") in ("ocnn",):
        import torch

        torch.set_num_threads(threads)
    pts = common.load(spec["data"])
    offsets = common.batch_offsets(spec["data"])
    depth = int(spec["depth"])
    make = {"build": _build_calls, "neigh": _neigh_calls, "merge": _merge_calls}[spec["kind"]]
    out: dict[str, Any] = {"spec": spec, "n": int(pts.shape[0]), "skipped": {}}

    if spec["mode"] == "mem":
        lib = spec["lib"]
        setup, fn = make(lib, pts, offsets, depth, threads)
        arg = setup()
        out["mem"] = common.memory_probe(lambda: fn(arg))
        out["cpu_s"] = common.process_cpu_s()
        return out

    calls = {}
    for lib in spec["libs"]:
        why = _available(lib)
        if why is not None:
            out["skipped"][lib] = why
            continue
        calls[lib] = make(lib, pts, offsets, depth, threads)
    # one untimed call each (imports, page faults, lazy tables), then alternating timed rounds;
    # a library whose call fails is dropped and reported (e.g. a changed private _core signature)
    first, numbers = {}, {}
    for lib, (setup, fn) in list(calls.items()):
        try:
            arg = setup()
            t0 = time.perf_counter()
            first[lib] = fn(arg)
            dt = time.perf_counter() - t0
            if dt < 0.5:
                # first calls carry one-off costs (a 2.5 ms build's first call can take 50 ms),
                # and any single call can be slow on this VM; calibrated on one, a fast call
                # got k = 1, so its samples were single calls just after the idle pause:
                # calibrate on the fastest of 3 more (calls of 0.5 s and more get k = 1 anyway)
                dts = []
                for _ in range(3):
                    del arg
                    arg = setup()
                    t0 = time.perf_counter()
                    fn(arg)
                    dts.append(time.perf_counter() - t0)
                dt = min(dts)
            del arg
            numbers[lib] = common.calls_per_sample(dt)
        except Exception as exc:  # noqa: BLE001 - reported in the verdict lines
            out["skipped"][lib] = f"first call failed: {type(exc).__name__}: {exc}"
            del calls[lib]
    out["calls_per_sample"] = numbers
    out["check"] = _cross_check(spec["kind"], first, depth)
    del first
    # rounds in seeded random order: a rotation keeps who follows whom, and the call right
    # after np.sort / ocnn / Open3D (caches full of their data) pays for it on this VM; a
    # pause before each sample lets torch's OpenMP workers (they spin ~10 ms after an ocnn
    # call) go to sleep before the next library is timed
    times = common.time_interleaved(
        calls, min_runs=spec["min_runs"], max_runs=spec["max_runs"], budget_s=spec["budget_s"], numbers=numbers,
        shuffle_seed=0, settle_s=SETTLE_S,
    )
    out["times"] = {lib: common.summarize(t) for lib, t in times.items()}
    out["cpu_s"] = common.process_cpu_s()
    return out


def _cross_check(kind: str, first: dict[str, Any], depth: int) -> dict[str, Any]:
    """Node counts per library (a sanity check that every side built the same tree)."""
    info: dict[str, Any] = {}
    if kind == "merge":
        if "octformer" in first:
            info["trees"] = int(first["octformer"].batch_size)
            info["octformer_nnum"] = [int(x) for x in first["octformer"].nnum]
        if "ocnn" in first:
            info["ocnn_nnum"] = [int(x) for x in first["ocnn"].nnum]
        if "octformer_nnum" in info and "ocnn_nnum" in info:
            info["match_ocnn"] = info["octformer_nnum"] == info["ocnn_nnum"]
        return info
    if kind == "build":
        if "octformer" in first:
            info["octformer_nnum"] = [int(x) for x in first["octformer"].nnum]
            info["octformer_nnum_nempty"] = [int(x) for x in first["octformer"].nnum_nempty]
        if "ocnn" in first:
            info["ocnn_nnum"] = [int(x) for x in first["ocnn"].nnum]
            info["ocnn_nnum_nempty"] = [int(x) for x in first["ocnn"].nnum_nempty]
        if "octformer._core" in first:
            raw = first["octformer._core"]
            nnum_ne = raw[3] if isinstance(raw, tuple) else raw["batch_nnum_nempty"]  # build_single's tuple or build_octree's dict
            info["core_nnum_nempty"] = [int(x) for x in np.asarray(nnum_ne).sum(axis=1)]
        if "open3d" in first:
            counts: dict[str, int] = {}

            def visit(node: Any, node_info: Any) -> bool:
                counts[str(node_info.depth)] = counts.get(str(node_info.depth), 0) + 1
                return False

            first["open3d"].traverse(visit)
            info["open3d_nodes_at_depth"] = counts.get(str(depth), 0)
        if "np.sort" in first and "octformer" in first and first["octformer"].batch_size == 1:
            # the sorted keys np.sort is timed on are exactly our leaf keys (with repeats)
            ours_leaves = np.asarray(first["octformer"].leaf_keys(depth)).astype(np.uint64)
            sorted_unique = np.unique(first["np.sort"])
            # common.morton_keys rounds in the points' own float type, as the builders do: exact
            info["np.sort_keys_differing"] = int(np.setdiff1d(ours_leaves, sorted_unique).size)
            info["np.sort_keys_match"] = bool(sorted_unique.size == ours_leaves.size and info["np.sort_keys_differing"] == 0)
        if "octformer_nnum" in info and "ocnn_nnum" in info:
            info["match_ocnn"] = info["octformer_nnum"] == info["ocnn_nnum"] and info["octformer_nnum_nempty"] == info["ocnn_nnum_nempty"]
    else:
        for lib in ("octformer nonempty", "octformer all"):
            if lib in first:
                info[f"{lib} rows"] = int(sum(t.shape[0] for t in first[lib]))
        if "ocnn" in first:
            oc = first["ocnn"]
            info["ocnn rows"] = int(sum(oc.neighs[d].shape[0] for d in range(1, depth + 1)))
            info["ocnn_nnum_nempty_total"] = int(oc.nnum_nempty[1:].sum())
        if "octformer all rows" in info and "ocnn rows" in info:
            info["match_ocnn"] = info["octformer all rows"] == info["ocnn rows"]
    return info


# ----------------------------------------------------------------------------- driver side


def _run_case(kind: str, data: str, depth: int, threads: int, libs: list[str], args: argparse.Namespace, log) -> dict:
    spec = {
        "kind": kind, "data": data, "depth": depth, "threads": threads, "mode": "time", "libs": libs,
        "min_runs": args.min_runs, "max_runs": args.max_runs, "budget_s": args.budget,
    }
    quiet = common.wait_for_quiet(timeout_s=args.quiet_timeout, log=log)
    res = common.run_worker([__file__, "--worker", json.dumps(spec)], threads)
    res["busy_before"] = quiet["busy_before"]
    res["mem"] = {}
    if not args.no_mem and threads in args.mem_threads:
        for lib in libs:
            if lib in res["skipped"] or lib in ("np.sort", "octformer._core", "octformer auto box", "output fill", "table fill"):
                continue
            mspec = dict(spec, mode="mem", lib=lib)
            common.wait_for_quiet(timeout_s=min(args.quiet_timeout, 5.0), log=log)
            m = common.run_worker([__file__, "--worker", json.dumps(mspec)], threads)
            res["mem"][lib] = m["mem"]
    return res


def _ratio(num: dict | None, den: dict | None, key: str = "median_ms") -> float | None:
    if not num or not den or den[key] <= 0:
        return None
    return num[key] / den[key]


def _fr(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}×"


def _mem(res: dict, lib: str) -> str:
    m = res["mem"].get(lib)
    return "–" if m is None else f"{m['dpeak_mib']:.0f}"


def render_build(results: list[dict]) -> tuple[str, list[str]]:
    """Markdown table of build results and the target verdict lines."""
    rows = [
        "| input | N | depth | T | octformer ms | auto box ms | `_core` only ms | ocnn ms | Open3D ms | `np.sort` ms | output fill ms | ocnn ÷ ours | Open3D ÷ ours | ours ÷ `np.sort` | dpeak MiB ours / ocnn / Open3D | same tree as ocnn | other load (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for r in results:
        s, t = r["spec"], r.get("times", {})
        ours, auto, core, oc, o3, srt, fill = (
            t.get(k) for k in ("octformer", "octformer auto box", "octformer._core", "ocnn", "open3d", "np.sort", "output fill")
        )
        r_oc, r_o3, r_sort = _ratio(oc, ours), _ratio(o3, ours), _ratio(ours, srt)
        r_oc_min = _ratio(oc, ours, "min_ms")
        match = r.get("check", {}).get("match_ocnn")
        rows.append(
            f"| {s['data']} | {r['n']:,} | {s['depth']} | {s['threads']} | {common.fmt_ms(ours)} | {common.fmt_ms(auto)} | {common.fmt_ms(core)} | "
            f"{common.fmt_ms(oc)} | {common.fmt_ms(o3)} | {common.fmt_ms(srt)} | {common.fmt_ms(fill)} | {_fr(r_oc)} (min {_fr(r_oc_min)}) | {_fr(r_o3)} | "
            f"{_fr(r_sort, 2)} | {_mem(r, 'octformer')} / {_mem(r, 'ocnn')} / {_mem(r, 'open3d')} | "
            f"{'yes' if match else 'NO' if match is False else '–'} | {r['other_load']:.2f} |"
        )
        if r_oc is not None:
            ok = r_oc >= TARGET_BUILD
            line = f"build {s['data']} d{s['depth']} T{s['threads']}: {r_oc:.1f}× faster than ocnn (target ≥ {TARGET_BUILD:.0f}×) — {'met' if ok else 'MISSED'}"
            if not ok and core is not None:
                py = ours["median_ms"] - core["median_ms"]
                line += f"; of ours {ours['median_ms']:.2f} ms, Rust `_core` call {core['median_ms']:.2f} ms, difference (Python wrapper + noise) {py:.2f} ms"
            if not ok and fill is not None and srt is not None:
                line += (
                    f"; the target time ocnn ÷ {TARGET_BUILD:.0f} is {oc['median_ms'] / TARGET_BUILD:.2f} ms, against {fill['median_ms']:.2f} ms to fill "
                    f"arrays the size of the output plus {srt['median_ms']:.2f} ms for `np.sort` of the keys"
                )
            verdicts.append(line)
        if r_sort is not None:
            ok = r_sort <= TARGET_SORT
            line = f"build {s['data']} d{s['depth']} T{s['threads']}: {r_sort:.2f}× `np.sort` of N uint64 keys (target ≤ {TARGET_SORT:.0f}×) — {'met' if ok else 'MISSED'}"
            if not ok and fill is not None:
                line += f"; filling arrays the size of the output alone takes {_ratio(fill, srt):.2f}× `np.sort`"
            verdicts.append(line)
        if r.get("check", {}).get("np.sort_keys_match") is False:
            verdicts.append(f"build {s['data']}: the keys given to np.sort differ from our leaf keys (check common.morton_keys)")
        for lib, why in r.get("skipped", {}).items():
            verdicts.append(f"build {s['data']} T{s['threads']}: {lib} skipped ({why})")
    return "\n".join(rows), verdicts


def render_merge(results: list[dict]) -> tuple[str, list[str]]:
    """Markdown table of merge results (no target; a same-tree check per row)."""
    rows = [
        "| input | trees | depth | T | ours `Octree.merge` ms | ocnn `merge_octrees` ms | ocnn ÷ ours | dpeak MiB ours / ocnn | same node counts as ocnn | other load (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for r in results:
        s, t, c = r["spec"], r.get("times", {}), r.get("check", {})
        ours, oc = t.get("octformer"), t.get("ocnn")
        match = c.get("match_ocnn")
        rows.append(
            f"| {s['data']} | {c.get('trees', '–')} | {s['depth']} | {s['threads']} | {common.fmt_ms(ours)} | {common.fmt_ms(oc)} | "
            f"{_fr(_ratio(oc, ours))} | {_mem(r, 'octformer')} / {_mem(r, 'ocnn')} | {'yes' if match else 'NO' if match is False else '–'} | "
            f"{r['other_load']:.2f} |"
        )
        if match is False:
            verdicts.append(f"merge {s['data']}: node counts differ from ocnn ({c})")
        for lib, why in r.get("skipped", {}).items():
            verdicts.append(f"merge {s['data']} T{s['threads']}: {lib} skipped ({why})")
    return "\n".join(rows), verdicts


def render_neigh(results: list[dict]) -> tuple[str, list[str]]:
    """Markdown table of neighbour results and the target verdict lines."""
    rows = [
        "| input | depth | rows, all depths: non-empty / all nodes | T | ours nonempty=True ms | ours nonempty=False ms | ocnn `construct_all_neigh` ms | all-node table fill ms | ocnn ÷ ours (nonempty) | ocnn ÷ ours (all) | dpeak MiB ours-nonempty / ours-all / ocnn | ocnn mem ÷ ours (nonempty / all) | other load (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for r in results:
        s, t, c = r["spec"], r.get("times", {}), r.get("check", {})
        ne, al, oc, fill = (t.get(k) for k in NEIGH_LIBS)
        r_ne, r_al = _ratio(oc, ne), _ratio(oc, al)
        m = r["mem"]
        mem_ne = mem_al = None
        if "ocnn" in m:
            if "octformer nonempty" in m:
                mem_ne = m["ocnn"]["dpeak_mib"] / max(m["octformer nonempty"]["dpeak_mib"], 1e-9)
            if "octformer all" in m:
                mem_al = m["ocnn"]["dpeak_mib"] / max(m["octformer all"]["dpeak_mib"], 1e-9)
        rows.append(
            f"| {s['data']} | {s['depth']} | {c.get('octformer nonempty rows', 0):,} / {c.get('octformer all rows', 0):,} | {s['threads']} | "
            f"{common.fmt_ms(ne)} | {common.fmt_ms(al)} | {common.fmt_ms(oc)} | {common.fmt_ms(fill)} | {_fr(r_ne)} | {_fr(r_al)} | "
            f"{_mem(r, 'octformer nonempty')} / {_mem(r, 'octformer all')} / {_mem(r, 'ocnn')} | {_fr(mem_ne)} / {_fr(mem_al)} | {r['other_load']:.2f} |"
        )
        for label, ratio in (("nonempty=True", r_ne), ("nonempty=False", r_al)):
            if ratio is not None:
                ok = ratio >= TARGET_NEIGH
                line = f"neighbours {s['data']} d{s['depth']} T{s['threads']} {label}: {ratio:.1f}× faster than ocnn (target ≥ {TARGET_NEIGH:.0f}×) — {'met' if ok else 'MISSED'}"
                if not ok and label == "nonempty=False" and fill is not None:
                    line += (
                        f"; the target time ocnn ÷ {TARGET_NEIGH:.0f} is {oc['median_ms'] / TARGET_NEIGH:.3f} ms, against "
                        f"{fill['median_ms']:.3f} ms to fill arrays the size of the all-node tables"
                    )
                verdicts.append(line)
        for label, ratio in (("nonempty=True", mem_ne), ("nonempty=False", mem_al)):
            if ratio is not None:
                ok = ratio >= TARGET_NEIGH_MEM
                line = f"neighbours {s['data']} d{s['depth']} T{s['threads']} {label}: ocnn's dpeak is {ratio:.1f}× ours (target ≥ {TARGET_NEIGH_MEM:.0f}×) — {'met' if ok else 'MISSED'}"
                if not ok and label == "nonempty=False":
                    tables_mib = c.get("octformer all rows", 0) * 27 * 4 / 2**20
                    line += (
                        f"; the all-node tables alone are {tables_mib:.0f} MiB (int32), against ocnn's dpeak ÷ {TARGET_NEIGH_MEM:.0f} = "
                        f"{m['ocnn']['dpeak_mib'] / TARGET_NEIGH_MEM:.0f} MiB"
                    )
                verdicts.append(line)
        if c.get("match_ocnn") is False:
            verdicts.append(f"neighbours {s['data']}: row count differs from ocnn ({c})")
        for lib, why in r.get("skipped", {}).items():
            verdicts.append(f"neighbours {s['data']} T{s['threads']}: {lib} skipped ({why})")
    return "\n".join(rows), verdicts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="small inputs, 1-2 repeats, no RESULTS.md")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--only", choices=["build", "neigh", "merge"], help="run only one of the three benchmarks")
    p.add_argument("--cases", nargs="+", help="restrict to these inputs (e.g. lidar1M oxford_batch)")
    p.add_argument("--min-runs", type=int, default=3)
    p.add_argument("--max-runs", type=int, default=7)
    p.add_argument("--budget", type=float, default=20.0, help="stop timing after this many seconds (past min-runs)")
    p.add_argument("--no-mem", action="store_true", help="skip the memory-probe workers")
    p.add_argument("--mem-threads", type=int, nargs="+", default=[1], help="thread counts to probe memory at")
    p.add_argument("--quiet-timeout", type=float, default=20.0, help="max seconds to wait for a quiet machine per case")
    p.add_argument("--no-write", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    if args.quick:
        args.min_runs, args.max_runs, args.budget = 1, 2, 2.0
        args.no_write = True
        args.quiet_timeout = min(args.quiet_timeout, 2.0)
    build_cases = QUICK_BUILD if args.quick else BUILD_CASES
    neigh_cases = QUICK_NEIGH if args.quick else NEIGH_CASES
    merge_cases = QUICK_MERGE if args.quick else MERGE_CASES
    if args.cases:
        build_cases = [c for c in build_cases if c[0] in args.cases]
        neigh_cases = [c for c in neigh_cases if c[0] in args.cases]
        merge_cases = [c for c in merge_cases if c[0] in args.cases]
    if not (common.SHARED_DATA / "semantickitti" / "velodyne" / "000000.bin").exists():
        print(f"note: {common.SHARED_DATA} has no SemanticKITTI scan; skipping that row")
        build_cases = [c for c in build_cases if c[0] != "kitti000000"]
        merge_cases = [c for c in merge_cases if c[0] != "kitti000000"]

    def log(msg: str) -> None:
        print(msg, flush=True)

    t_start = time.monotonic()
    build_res, neigh_res, merge_res = [], [], []
    for data, _ in build_cases + neigh_cases + merge_cases:
        common.load(data)  # generate caches before any timing
    if args.only in (None, "build"):
        for data, depth in build_cases:
            for threads in args.threads:
                libs = [lib for lib in BUILD_LIBS if not (lib == "open3d" and data == "oxford_batch")]
                log(f"build {data} d{depth} T{threads} ...")
                build_res.append(_run_case("build", data, depth, threads, libs, args, log))
                log("  " + json.dumps({k: round(v["median_ms"], 3) for k, v in build_res[-1]["times"].items()}))
    if args.only in (None, "merge"):
        for data, depth in merge_cases:
            for threads in args.threads:
                log(f"merge {data} d{depth} T{threads} ...")
                merge_res.append(_run_case("merge", data, depth, threads, MERGE_LIBS, args, log))
                log("  " + json.dumps({k: round(v["median_ms"], 3) for k, v in merge_res[-1]["times"].items()}))
    if args.only in (None, "neigh"):
        for data, depth in neigh_cases:
            for threads in args.threads:
                log(f"neighbours {data} d{depth} T{threads} ...")
                neigh_res.append(_run_case("neigh", data, depth, threads, NEIGH_LIBS, args, log))
                log("  " + json.dumps({k: round(v["median_ms"], 3) for k, v in neigh_res[-1]["times"].items()}))

    common.CACHE_DIR.mkdir(exist_ok=True)
    (common.CACHE_DIR / "bench_octree_last.json").write_text(json.dumps({"build": build_res, "neigh": neigh_res, "merge": merge_res}, indent=1))
    parts, verdicts = [], []
    if build_res:
        table, v = render_build(build_res)
        parts += ["### `build_octree` vs ocnn `Octree.build_octree` and Open3D `Octree.convert_from_point_cloud`", "", table, ""]
        verdicts += v
    if neigh_res:
        table, v = render_neigh(neigh_res)
        parts += ["### 3×3×3 neighbour tables, every depth 1..D (fresh tree per call)", "", table, ""]
        verdicts += v
    if merge_res:
        table, v = render_merge(merge_res)
        parts += [
            f"### `Octree.merge` vs ocnn `merge_octrees` (trees built beforehand: {MERGE_COPIES} copies of a single cloud's tree, or a batch input's per-sample trees)",
            "",
            table,
            "",
        ]
        verdicts += v
    if verdicts:
        parts += ["Targets:", ""] + [f"- {v}" for v in verdicts] + [""]
    parts.append(
        f"Median (min) of {args.min_runs}–{args.max_runs} timing samples after one untimed call (a sample is the mean of "
        "enough back-to-back calls to last ≥ 50 ms, so sub-ms calls are averaged), libraries timed in "
        f"rounds of seeded random order in one fresh process per (case, T), {SETTLE_S * 1e3:.0f} ms idle before each sample; dpeak = rise of peak RSS during the first call in a "
        f"separate fresh process per library (probed at T = {', '.join(map(str, args.mem_threads))}; '–' elsewhere). 'other load' = cores used by other processes while the timing worker ran. "
        f"Total wall time {time.monotonic() - t_start:.0f} s."
    )
    body = "\n".join(parts)
    print()
    print(body)
    if not args.no_write:
        cmd = "python benchmarks/bench_octree.py " + " ".join(sys.argv[1:] if argv is None else argv)
        common.append_results("Octree build, neighbour tables and merge vs ocnn and Open3D", body, cmd.strip())
        print(f"\nappended to {common.RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
