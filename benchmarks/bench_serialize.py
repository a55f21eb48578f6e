"""Curve serialization and FlatFormer flattening at 1M lidar points: octformer vs peers, side by side.

Peers (run in this process, same input, same thread count):

- PTv3 serialization: a faithful torch **transcription** written here from the description in
  ../shared/research/flatformer-ptv3-volt.md (§B.2, §B.3) — ocnn's 256-entry lookup-table
  z-order with the 24-bit shift for the high byte, and Skilling's Hilbert transform over an
  (N, 3, depth) bit tensor with a Python loop over depth × 3 steps, Gray→binary by
  shift-xor, packing back through uint8 views; four orders stacked, ``torch.argsort`` per
  row, inverse by ``scatter_``. It is *not* imported from Pointcept; its codes are checked
  equal to octformer's before timing.
- FlatFormer-style grouping, "the obvious NumPy version" of peer-baselines.md: window index =
  coord // window, local = coord − window·index, ``np.lexsort((z, y, x, window_id))``, pad the
  tail by repeating the last index, reshape to (groups, G), inverse permutation.
- ``np.sort`` of 1M random uint64 (the floor for any sort-based plan).

Input: ``lidar1M`` from benchmarks/common.py (10 sweeps of a simulated 64-beam lidar, 1M
points). Grid 0.05 m from the cloud's minimum (depth = bit length of the max, as PTv3) for
serialization; 0.1 m voxels and 16³ windows for flattening (not deduplicated), as in
peer-baselines.md.

Run: ``python benchmarks/bench_serialize.py`` (≈ 3–4 min on the 2-core VM; appends to RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import octformer  # noqa: E402
from octformer import serialize as S  # noqa: E402

# ------------------------------------------------------------------ PTv3 transcription (torch)


def _ptv3_tables(torch):
    """ocnn-style lookup tables: bit k of a byte → key bit 3k+2 (x), 3k+1 (y), 3k (z)."""
    idx = torch.arange(256, dtype=torch.int64)
    ex = torch.zeros(256, dtype=torch.int64)
    ey = torch.zeros(256, dtype=torch.int64)
    ez = torch.zeros(256, dtype=torch.int64)
    for k in range(8):
        bit = (idx >> k) & 1
        ex |= bit << (3 * k + 2)
        ey |= bit << (3 * k + 1)
        ez |= bit << (3 * k)
    return ex, ey, ez


def ptv3_z_encode(torch, tables, grid, depth):
    ex, ey, ez = tables
    x, y, z = grid[:, 0].long(), grid[:, 1].long(), grid[:, 2].long()
    mask = 255 if depth > 8 else (1 << depth) - 1
    key = ex[x & mask] | ey[y & mask] | ez[z & mask]
    if depth > 8:
        mask = (1 << (depth - 8)) - 1
        high = ex[(x >> 8) & mask] | ey[(y >> 8) & mask] | ez[(z >> 8) & mask]
        key = high << 24 | key
    return key


def _shift_right(torch, bits, k):
    """Shift a bit row toward its end by k places, filling with zeros."""
    if bits.shape[-1] <= k:
        return torch.zeros_like(bits)
    return torch.nn.functional.pad(bits[..., :-k], (k, 0), mode="constant", value=0)


def ptv3_hilbert_encode(torch, grid, depth):
    n = grid.shape[0]
    byte_mask = 1 << torch.arange(0, 8)
    byte_mask_msb_first = byte_mask.flip(-1)
    as_bytes = grid.long().view(torch.uint8).reshape((-1, 3, 8)).flip(-1)  # big-endian bytes
    bits = as_bytes.unsqueeze(-1).bitwise_and(byte_mask_msb_first).ne(0).byte().flatten(-2, -1)[..., -depth:]
    for level in range(depth):
        for axis in range(3):
            on = bits[:, axis, level]
            bits[:, 0, level + 1 :] = torch.logical_xor(bits[:, 0, level + 1 :], on[:, None])
            swap = torch.logical_and(
                torch.logical_not(on[:, None]).repeat(1, bits.shape[2] - level - 1),
                torch.logical_xor(bits[:, 0, level + 1 :], bits[:, axis, level + 1 :]),
            )
            bits[:, axis, level + 1 :] = torch.logical_xor(bits[:, axis, level + 1 :], swap)
            bits[:, 0, level + 1 :] = torch.logical_xor(bits[:, 0, level + 1 :], swap)
    flat = bits.swapaxes(1, 2).reshape((-1, depth * 3))
    step = 2 ** (torch.Tensor([flat.shape[-1]]).log2().ceil().int() - 1)
    while step > 0:  # Gray → binary
        flat = torch.logical_xor(flat, _shift_right(torch, flat, int(step)))
        step = torch.div(step, 2, rounding_mode="floor")
    padded = torch.nn.functional.pad(flat, (64 - depth * 3, 0), "constant", 0)
    as_u8 = (padded.flip(-1).reshape((-1, 8, 8)) * byte_mask).sum(2).squeeze().type(torch.uint8)
    return as_u8.view(torch.int64).reshape(n)


def ptv3_encode(torch, tables, grid, batch, depth, order):
    if order == "z":
        code = ptv3_z_encode(torch, tables, grid, depth)
    elif order == "z-trans":
        code = ptv3_z_encode(torch, tables, grid[:, [1, 0, 2]], depth)
    elif order == "hilbert":
        code = ptv3_hilbert_encode(torch, grid, depth)
    else:
        code = ptv3_hilbert_encode(torch, grid[:, [1, 0, 2]], depth)
    return batch.long() << depth * 3 | code


def ptv3_serialization(torch, tables, grid, batch, depth, orders):
    """Stacked codes, per-row argsort and the scattered inverse, as PTv3's Point.serialization."""
    with torch.inference_mode():
        code = torch.stack([ptv3_encode(torch, tables, grid, batch, depth, o) for o in orders])
        order = torch.argsort(code)
        inverse = torch.zeros_like(order).scatter_(
            dim=1, index=order, src=torch.arange(0, code.shape[1]).repeat(code.shape[0], 1)
        )
    return code, order, inverse


# ------------------------------------------------------------------ NumPy FlatFormer-style grouping


def numpy_flat_groups(grid, window, group):
    """Window sort by lexsort, tail padded by repeating the last index, (groups, G) view, inverse."""
    w = np.asarray(window)
    win = grid // w
    local = grid - win * w
    dims = win.max(axis=0) + 1
    window_id = (win[:, 0] * dims[1] + win[:, 1]) * dims[2] + win[:, 2]
    order = np.lexsort((local[:, 2], local[:, 1], local[:, 0], window_id))
    n = order.shape[0]
    padded = -(-n // group) * group
    gather = np.concatenate([order, np.full(padded - n, order[-1])])
    groups = gather.reshape(-1, group)
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    return groups, inverse


# ------------------------------------------------------------------ timing


def timed(fn, runs):
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = fn()
        out.append(time.perf_counter() - t0)
        del r
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--ptv3-runs", type=int, default=3, help="timed runs of the slow PTv3 4-order case")
    ap.add_argument("--runs", type=int, default=7, help="timed runs of everything else")
    ap.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--flatten-only", action="store_true", help="skip the (slow) serialization comparison")
    args = ap.parse_args()

    import torch

    pts = common.load_metric("lidar1M").astype(np.float64)
    n = pts.shape[0]
    grid05 = np.floor((pts - pts.min(0)) / 0.05).astype(np.int64)
    grid10 = np.floor((pts - pts.min(0)) / 0.1).astype(np.int64)
    depth = int(grid05.max()).bit_length()
    batch0 = np.zeros(n, dtype=np.int64)
    orders = list(S.ORDERS)
    tables = _ptv3_tables(torch)
    grid_t, batch_t = torch.from_numpy(grid05), torch.from_numpy(batch0)
    log = print
    log(f"lidar1M: N={n}, serialization grid 0.05 m → depth {depth}; flatten grid 0.1 m, extent {grid10.max(0)}")

    if not args.flatten_only:
        # correctness gate: the transcription and octformer agree on every code, and both orders sort
        torch.set_num_threads(1)
        ref_code, ref_order, ref_inv = ptv3_serialization(torch, tables, grid_t, batch_t, depth, orders)
        ours = S.serialize(grid05, batch=batch0, depth=depth)
        assert np.array_equal(ref_code.numpy(), ours.codes), "PTv3 transcription and octformer codes differ"
        assert np.all(np.diff(np.take_along_axis(ours.codes, ours.perm, 1), axis=1) >= 0)
        del ref_code, ref_order, ref_inv
        log("codes identical to the PTv3 transcription for all 4 orders")

    rows: list[str] = []
    summary: dict[str, dict] = {}
    rng = np.random.default_rng(0)
    random_u64 = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)

    for t in args.threads:
        torch.set_num_threads(t)
        quiet = common.wait_for_quiet(max_busy=0.5, timeout_s=90.0, log=log)
        load = quiet["busy_before"]
        # PTv3 z only (cheap) and 4 orders (slow), interleaved with ours
        res: dict[str, list[float]] = {k: [] for k in ("ptv3_4", "ours_4", "ptv3_z", "ours_z")}
        for _ in range(0 if args.flatten_only else args.ptv3_runs):
            res["ptv3_4"] += timed(lambda: ptv3_serialization(torch, tables, grid_t, batch_t, depth, orders), 1)
            res["ours_4"] += timed(lambda: S.serialize(grid05, batch=batch0, depth=depth, num_threads=t), max(1, args.runs // args.ptv3_runs + 1))
        for _ in range(0 if args.flatten_only else args.runs):
            res["ptv3_z"] += timed(lambda: ptv3_serialization(torch, tables, grid_t, batch_t, depth, ["z"]), 1)
            res["ours_z"] += timed(lambda: S.serialize(grid05, batch=batch0, depth=depth, orders="z", num_threads=t), 1)
        # flattening: the four calls in rounds of seeded random order (common.time_interleaved),
        # so none always runs right after the same neighbour: a fixed order (and a rotation,
        # which keeps who follows whom) always put G=64 right after np.sort, whose 16 MB of
        # fresh cache lines cost the next call ~2.4 ms on this VM
        flat_calls = {
            "ours_flat64": lambda _: S.flatten(grid10, window=(16, 16, 16), group_size=64, num_threads=t),
            "ours_flat256": lambda _: S.flatten(grid10, window=(16, 16, 16), group_size=256, num_threads=t),
            "np_flat64": lambda _: numpy_flat_groups(grid10, (16, 16, 16), 64),
            "np_sort": lambda _: np.sort(random_u64),
        }
        if t != args.threads[0]:
            del flat_calls["np_flat64"]  # the NumPy version is single-threaded: timed once
        fl = common.time_interleaved(
            {k: (lambda: None, fn) for k, fn in flat_calls.items()},
            min_runs=args.runs, max_runs=args.runs, budget_s=0.0, shuffle_seed=t,
        )
        load = max(load, common.busy_cores(0.5))
        med = {k: float(np.median(v)) * 1e3 for k, v in {**res, **fl}.items() if v}
        mins = {k: float(np.min(v)) * 1e3 for k, v in {**res, **fl}.items() if v}
        summary[t] = {"med": med, "min": mins, "load": load}
        log(f"T={t}: " + ", ".join(f"{k} {med[k]:.2f} ms" for k in med) + f" (other load ≈ {load:.2f} cores)")

    np_flat = summary[args.threads[0]]["med"]["np_flat64"]
    np_sort = {t: summary[t]["med"]["np_sort"] for t in args.threads}
    lines = [
        "Input `lidar1M` (1,000,000 points, benchmarks/common.py). PTv3 side: torch transcription of "
        "PTv3's `encode` + `Point.serialization` written in this script from the research note (not "
        "Pointcept's code); codes checked identical to octformer's before timing. NumPy side: "
        "`np.lexsort` window sort + tail pad + inverse (peer-baselines.md). Median (min) ms; "
        f"PTv3 4-order runs: {args.ptv3_runs}, others: ≥ {args.runs}.",
        "",
        f"Serialization (grid 0.05 m, depth {depth}, batch = 0):",
        "",
        "| threads | case | octformer | PTv3 transcription (torch) | speed-up |",
        "|---|---|---|---|---|",
    ]
    if args.flatten_only:
        lines = lines[:1] + ["", "Serialization: not run this time (`--flatten-only`)."]
    for t in ([] if args.flatten_only else args.threads):
        m, mn = summary[t]["med"], summary[t]["min"]
        for case, ours_k, peer_k in (("4 orders + argsort + inverse", "ours_4", "ptv3_4"), ("z + argsort + inverse", "ours_z", "ptv3_z")):
            lines.append(
                f"| {t} | {case} | {m[ours_k]:.2f} ({mn[ours_k]:.2f}) | {m[peer_k]:.1f} ({mn[peer_k]:.1f}) | "
                f"**{m[peer_k] / m[ours_k]:.0f}×** |"
            )
    lines += [
        "",
        "FlatFormer window sort + equal groups (grid 0.1 m, window 16³, not deduplicated); octformer "
        "builds the full plan (snake window order, per-sample tails, gather + scatter + cu_seqlens):",
        "",
        f"| threads | case | octformer | NumPy lexsort version (1 thread) | speed-up | `np.sort` 1M uint64 | octformer / np.sort |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in args.threads:
        m, mn = summary[t]["med"], summary[t]["min"]
        for g in (64, 256):
            k = f"ours_flat{g}"
            lines.append(
                f"| {t} | G={g} | {m[k]:.2f} ({mn[k]:.2f}) | {np_flat:.1f} (G=64) | **{np_flat / m[k]:.1f}×** | "
                f"{np_sort[t]:.2f} | {m[k] / np_sort[t]:.2f}× |"
            )
    lines += ["", "Other load seen (cores busy outside this process, sampled before/after each thread count): "
              + ", ".join(f"T{t}: {summary[t]['load']:.2f}" for t in args.threads)]
    body = "\n".join(lines)
    print()
    print(body)
    if not args.no_record:
        common.append_results(
            "Serialization (4 curve orders) and FlatFormer flattening at 1M points", body,
            "python benchmarks/bench_serialize.py" + (" --flatten-only" if args.flatten_only else ""),
        )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
