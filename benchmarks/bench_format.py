"""OCTF encode/decode throughput and omnitree vs octree sizes, side by side with the obvious alternatives.

What runs (one process, same inputs):

- **Big tree**: N jittered copies (σ = 5 cm) of the real SemanticKITTI scan
  (``../shared/data/semantickitti/velodyne/000000.bin``), octree depth 13, full_depth 2.
- **Decode, structure only** (``octformer.format.decode_levels``: streaming, every chunk
  CRC-checked, sample-local keys of the non-empty nodes per level) vs a vectorised
  NumPy decoder of the same level chunks (``np.unpackbits`` + boolean mask per level).
  Throughput in M occupancy bytes/s (the target in issue 3 is ≥ 100 M/s on one core).
- **Decode, full Octree** (``octformer.format.decode``: all 8 children per node, batch,
  counts) and **encode** (``octformer.format.encode``, with full validation of the tree),
  at 1 and 2 threads; ``pickle`` of the same Octree as the everyday alternative.
- **Omnitree vs octree** on the Stanford bunny at equal leaf resolution: nodes and bytes
  of the octree (OCTF occupancy bytes), the octree as an omnitree (full masks), and
  omnitrees built with the ``carve`` and ``extent`` rules; O(depth) point location.

Times are medians over ``--repeats`` runs after one untimed call, as wall time and as
process CPU time; on the shared 2-core VM the CPU time is the steadier figure (other
processes inflate wall time), and the ``load`` column says how busy the machine was.

Run: ``python benchmarks/bench_format.py`` (≈ 1–2 min; appends to RESULTS.md unless ``--no-write``).
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import octformer
from octformer import format as octf
from octformer.omnitree import Omnitree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, append_results, busy_cores  # noqa: E402


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Median and min wall / CPU seconds of ``fn`` after one untimed call."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall": float(np.median(wall)), "wall_min": float(np.min(wall)), "cpu": float(np.median(cpu))}


def read_level_chunks(data: bytes) -> tuple[dict, list[bytes]]:
    """Bodies of the 'L' chunks (a plain Python chunk walker for the NumPy peer)."""
    pos = 8
    bodies = []
    hdr = octf.header(data)
    while pos < len(data) - 12:
        tag = data[pos]
        pos += 1
        length, shift = 0, 0
        while True:
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if tag == ord("L"):
            bodies.append(data[pos : pos + length])
        pos += length + 4
    return hdr, bodies


def numpy_decode_levels(hdr: dict, bodies: list[bytes]) -> list[np.ndarray]:
    """The obvious vectorised NumPy decoder: non-empty keys per level (one sample, full_depth >= 1)."""
    top = np.frombuffer(bodies[0], dtype=np.uint8)
    bits = np.unpackbits(top, bitorder="little").astype(bool)
    keys = [np.flatnonzero(bits).astype(np.int64)]
    child = np.arange(8, dtype=np.int64)
    for body in bodies[1:]:
        occ = np.unpackbits(np.frombuffer(body, dtype=np.uint8), bitorder="little").reshape(-1, 8).astype(bool)
        keys.append(((keys[-1][:, None] << 3) | child)[occ])
    return keys


def big_tree(copies: int, depth: int) -> tuple[octformer.Octree, np.ndarray]:
    path = SHARED_DATA / "semantickitti" / "velodyne" / "000000.bin"
    if not path.exists():
        sys.exit(f"needs the SemanticKITTI scan at {path} (../shared/data)")
    pts = np.fromfile(path, dtype="<f4").reshape(-1, 4)[:, :3]
    rng = np.random.default_rng(0)
    big = np.concatenate([pts + rng.normal(scale=0.05, size=pts.shape).astype(np.float32) for _ in range(copies)])
    return octformer.build_octree(big, depth, full_depth=2), big


def mps(nbytes: int, s: float) -> str:
    return f"{nbytes / s / 1e6:.0f}"


def bench_codec(args: argparse.Namespace, lines: list[str]) -> None:
    tree, pts = big_tree(args.copies, args.depth)
    data = octf.encode(tree)
    occ = int(tree.nnum_nempty[tree.full_depth : tree.depth].sum()) + int(tree.nnum[tree.full_depth]) // 8
    nodes = int(tree.nnum.sum())
    hdr, bodies = read_level_chunks(data)
    assert sum(len(b) for b in bodies) == occ
    # the peer must decode the same thing we do
    ours = octf.decode_levels(data)
    theirs = numpy_decode_levels(hdr, bodies)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    plain = octformer.Octree(**{**tree.__dict__, "point_leaf": np.zeros(0, np.int64), "_neighbor_cache": {}})
    pickled = pickle.dumps(plain, protocol=5)
    assert octf.decode(data) == plain

    load = busy_cores(1.0)
    rows = []

    def row(name: str, threads: str, t: dict[str, float], ref: dict[str, float] | None) -> None:
        ratio = f"{ref['cpu'] / t['cpu']:.1f}×" if ref else "–"
        rows.append(
            f"| {name} | {threads} | {t['wall'] * 1e3:.1f} ({t['wall_min'] * 1e3:.1f}) | {t['cpu'] * 1e3:.1f} "
            f"| {mps(occ, t['wall'])} ({mps(occ, t['wall_min'])}) | {mps(occ, t['cpu'])} | {ratio} |"
        )
        print(rows[-1], flush=True)

    r = args.repeats
    t_np = timed(lambda: numpy_decode_levels(hdr, bodies), r)
    row("structure decode: NumPy unpackbits peer", "1", t_np, None)
    row("structure decode: octformer `decode_levels`", "1", timed(lambda: octf.decode_levels(data), r), t_np)
    t_pk = timed(lambda: pickle.loads(pickled), r)
    row("full decode: `pickle.loads` of the Octree", "1", t_pk, None)
    for th in (1, 2):
        row("full decode: octformer `decode` → Octree", str(th), timed(lambda: octf.decode(data, num_threads=th), r), t_pk)
    t_pd = timed(lambda: pickle.dumps(plain, protocol=5), r)
    row("encode: `pickle.dumps` of the Octree", "1", t_pd, None)
    for th in (1, 2):
        row("encode: octformer `encode` (validates the tree)", str(th), timed(lambda: octf.encode(tree, num_threads=th), r), t_pd)
    load_after = busy_cores(1.0)

    lines += [
        f"### OCTF codec: {args.copies} jittered copies of SemanticKITTI 000000 ({len(pts):,} points), depth {tree.depth}, full_depth {tree.full_depth}",
        "",
        f"Tree: {nodes:,} nodes, {int(tree.nnum_nempty[tree.depth]):,} leaves, {occ:,} occupancy bytes. "
        f"OCTF file {len(data):,} B (no payload); pickle of the same Octree {len(pickled):,} B "
        f"({len(pickled) / len(data):.0f}× larger). Machine load (all processes) before/after: {load:.1f} / {load_after:.1f} cores.",
        "",
        "| operation | threads | wall ms median (min) | CPU ms median | M occ B/s wall median (best) | M occ B/s CPU | CPU-time ratio vs peer above |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Structure decode = streaming, CRC-checked, non-empty keys per level (what the ≥ 100 M/s target is about). "
        "Full decode also writes all 8 children per node (keys, children, batch: 16 B per node) as the ocnn layout needs. "
        "The structure decode is single-threaded by design (level d+1 needs level d); the full decode fills levels in parallel. "
        "On a loaded machine wall time includes waiting for a core: compare CPU-time columns and ratios, not absolute wall times.",
        "",
    ]


def bench_omnitree(args: argparse.Namespace, lines: list[str]) -> None:
    from plyfile import PlyData

    path = SHARED_DATA / "stanford_bunny" / "reconstruction" / "bun_zipper.ply"
    v = PlyData.read(str(path))["vertex"]
    pts = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    rows = []
    for depth in args.omni_depths:
        tree = octformer.build_octree(pts, depth, full_depth=0)
        cells = tree.xyz(depth)
        origin, cell = tree.origin[0], tree.voxel_size[0]
        octo = Omnitree.from_octree(tree)
        carve = Omnitree.from_cells(cells, depth, origin=origin, cell=cell)
        extent = Omnitree.from_cells(cells, depth, rule="extent", ratio=0.5, origin=origin, cell=cell)
        voxels = {tuple(c) for c in cells}
        for o in (octo, carve, extent):
            assert {tuple(c) for c in o.occupied_cells()} == voxels
        nbytes_oct = len(octf.encode(tree))
        rows.append(
            f"| {depth} | {len(cells):,} | octree (OCTF occupancy bytes) | {int(tree.nnum.sum()):,} | "
            f"{int(tree.nnum[depth]) + int(tree.nnum[:depth].sum()) - int(tree.nnum_nempty[:depth].sum()):,} | "
            f"{8 * int(tree.nnum_nempty[:depth].sum()):,} | {nbytes_oct:,} |"
        )
        for name, o in (("octree as omnitree (full masks)", octo), ("omnitree, `carve` rule", carve), ("omnitree, `extent` 0.5", extent)):
            rows.append(
                f"| {depth} | {len(cells):,} | {name} | {o.num_nodes:,} | {o.num_leaves:,} | {o.descriptor_bits:,} | {len(o.to_bytes()):,} |"
            )
        # O(depth) location of random points in the carve tree
        rng = np.random.default_rng(1)
        lo, hi = carve.leaf_boxes()
        q = rng.uniform(lo.min(axis=0), hi.max(axis=0), size=(200_000, 3))
        t = timed(lambda: carve.locate(q), 3)
        rows.append(f"| {depth} | | `carve` locate: {t['cpu'] / len(q) * 1e9:.0f} ns/query CPU ({len(q):,} random points, {carve.num_nodes:,} nodes) | | | | |")
        print(*rows[-5:], sep="\n", flush=True)
    lines += [
        "### Omnitree vs octree at equal leaf resolution: Stanford bunny (bun_zipper.ply, 35,947 points)",
        "",
        "Every tree below has exactly the same occupied voxels (checked). Octree bytes are OCTF with "
        "one occupancy byte per non-empty internal node; omnitree bytes are OCTF with 3 bits per node "
        "(pre-order masks) + 1 occupancy bit per leaf. Structure bits: octree 8 per non-empty internal node; "
        "omnitree 3 per node + 1 per leaf. Leaves: octree counts empty children + occupied leaves.",
        "",
        "| depth | voxels | tree | nodes | leaves | structure bits | OCTF bytes |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--depth", type=int, default=13)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--omni-depths", type=int, nargs="+", default=[8, 10])
    ap.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    lines: list[str] = []
    bench_codec(args, lines)
    bench_omnitree(args, lines)
    if not args.no_write:
        cmd = "python benchmarks/bench_format.py " + " ".join(sys.argv[1:])
        append_results("OCTF format and omnitrees (bench_format.py)", "\n".join(lines), cmd.strip())
        print("appended to benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
