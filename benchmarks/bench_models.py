"""Backbone and OctFormer-block benchmarks on CPU (forward + backward), run side by side in fresh processes.

1. Models at their published sizes on real data from ../shared/data: tokens/s of one
   forward + backward and peak RSS (each case in a fresh worker process).
2. One OctFormer block (C = 96, H = 6, K = 32, CPE + window attention with RPE + MLP) at
   N ∈ {10k, 50k, 100k} tokens: octformer.nn (per-sample window plan, octformer.ops
   attention: compiled kernels when installed, and the torch reference) timed in one process,
   interleaved, against a faithful torch transcription of OctFormer's dense-mask formulation
   (batch padded at its tail to a multiple of K, (N/K, K, K) int64 batch-difference mask
   filled with −1000, (N/K, K, K, 3) int64 relative positions, gathered RPE). Both use the
   same CPE module, so the difference is the attention formulation. 1 and 2 threads.

Run: ``python benchmarks/bench_models.py`` (appends a section to benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

C, H, K = 96, 6, 32
BLOCK_SIZES = (10_000, 50_000, 100_000)


# ------------------------------------------------------------------ peer: OctFormer's dense-mask block
def dense_octformer_block_factory():
    import torch
    from torch import nn

    from octformer.nn import CPE, Mlp

    class DenseMaskAttention(nn.Module):
        """OctFormer's OctreeAttention as written there: pad, view (N/K, K, C), dense logits + RPE + mask."""

        def __init__(self, dim, heads, k, dilation=1):
            super().__init__()
            self.dim, self.heads, self.k, self.dilation = dim, heads, k, dilation
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
            self.bound = int(0.8 * k * math.sqrt(dilation))
            self.rpe = nn.Parameter(torch.zeros(3 * (2 * self.bound + 1), heads))
            nn.init.trunc_normal_(self.rpe, std=0.02)

        def forward(self, x, xyz, batch):
            n = x.shape[0]
            span = self.k * self.dilation
            padded = math.ceil(n / span) * span
            pad = padded - n
            # auxiliary tensors OctreeT builds per depth (fill: batch id B, key 0)
            b = torch.cat([batch, batch.new_full((pad,), int(batch.max()) + 1)])
            p = torch.cat([xyz, xyz.new_zeros(pad, 3)])
            if self.dilation > 1:
                b = b.view(-1, self.k, self.dilation).transpose(1, 2).reshape(-1)
                p = p.view(-1, self.k, self.dilation, 3).transpose(1, 2).reshape(-1, 3)
            bw = b.view(-1, self.k)
            mask = bw.unsqueeze(2) - bw.unsqueeze(1)  # int64 (G, K, K)
            mask = mask.masked_fill(mask != 0, -1000).float()
            pw = p.view(-1, self.k, 3)
            rel = pw.unsqueeze(2) - pw.unsqueeze(1)  # int64 (G, K, K, 3)
            xp = torch.cat([x, x.new_zeros(pad, x.shape[1])])
            if self.dilation > 1:
                xp = xp.view(-1, self.k, self.dilation, self.dim).transpose(1, 2).reshape(-1, self.dim)
            xw = xp.view(-1, self.k, self.dim)
            g = xw.shape[0]
            qkv = self.qkv(xw).reshape(g, self.k, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0] * (self.dim // self.heads) ** -0.5, qkv[1], qkv[2]
            attn = q @ k.transpose(-2, -1)  # (G, H, K, K)
            idx = rel.clamp(-self.bound, self.bound) + self.bound + torch.arange(3) * (2 * self.bound + 1)
            attn = attn + self.rpe[idx].sum(3).permute(0, 3, 1, 2)
            attn = attn + mask.unsqueeze(1)
            attn = torch.softmax(attn, dim=-1)
            out = (attn @ v).transpose(1, 2).reshape(g, self.k, self.dim)
            if self.dilation > 1:
                out = out.view(-1, self.dilation, self.k, self.dim).transpose(1, 2).reshape(-1, self.dim)
            return self.proj(out.reshape(-1, self.dim)[:n])

    class DenseBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.cpe = CPE(C)
            self.norm1 = nn.LayerNorm(C)
            self.attn = DenseMaskAttention(C, H, K)
            self.norm2 = nn.LayerNorm(C)
            self.mlp = Mlp(C)

        def forward(self, x, xyz, batch, neighbors):
            x = x + self.cpe(x, neighbors)
            x = x + self.attn(self.norm1(x), xyz, batch)
            return x + self.mlp(self.norm2(x))

    return DenseBlock()


def block_inputs(n: int):
    """N non-empty nodes (first N in z-order) of the simulated 100k-point lidar sweep's octree."""
    import torch

    from octformer import build_octree

    pts = common.load("lidar100k").astype(np.float64)
    for depth in range(8, 17):
        tree = build_octree(pts, depth)
        if tree.nnum_nempty[depth] >= n:
            break
    xyz = torch.from_numpy(tree.xyz(depth)[:n].astype(np.int64))
    neigh = torch.from_numpy(np.asarray(tree.neighbors(depth))[:n].astype(np.int64))
    neigh[neigh >= n] = -1
    return xyz, neigh, depth


RUNS = 3  # timed runs per worker, after the untimed memory-probe run (``--runs`` overrides)


def block_step(impl: str, n: int, backend: str = "auto"):
    """(one forward + backward of the block on n tokens, octree depth) for ``impl`` in
    {octformer (compiled attention when installed), octformer-torch (torch reference attention), dense}."""
    import torch

    from octformer.nn import CPE, TransformerBlock, window_plan

    torch.manual_seed(0)
    xyz, neigh, depth = block_inputs(n)
    batch = torch.zeros(n, dtype=torch.long)
    x0 = torch.randn(n, C)
    if impl in ("octformer", "octformer-torch"):
        block = TransformerBlock(C, H, cpe=CPE(C), rpe_bound=int(0.8 * K),
                                 backend="torch" if impl == "octformer-torch" else backend)

        def step():
            plan = window_plan(batch, K)  # built per call, as a forward pass would
            x = x0.clone().requires_grad_(True)
            block(x, plan, batch, neighbors=neigh, coords=xyz).sum().backward()
    else:
        block = dense_octformer_block_factory()

        def step():
            x = x0.clone().requires_grad_(True)
            block(x, xyz, batch, neigh).sum().backward()

    return step, depth


def worker_block(impl: str, n: int, backend: str = "auto") -> dict:
    """Peak RSS rise of one step, then RUNS timed steps (a fresh process per implementation)."""
    step, depth = block_step(impl, n, backend)
    mem = common.memory_probe(step)
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"times": times, "tokens": n, "depth": depth, "peak_mib": mem["dpeak_mib"], "cpu_s": common.process_cpu_s()}


def worker_block_pair(n: int) -> dict:
    """Both implementations timed in one process, alternating (order rotating), so load drift hits both alike."""
    from octformer.ops import resolve_backend

    steps = {impl: block_step(impl, n)[0] for impl in IMPLS}
    for step in steps.values():  # warm-up
        step()
    times = common.time_interleaved({k: (lambda: None, (lambda _, f=f: f())) for k, f in steps.items()},
                                    min_runs=RUNS, max_runs=RUNS, budget_s=0.0)
    ratios = {k: [d / o for o, d in zip(times[k], times["dense"])] for k in IMPLS[:2]}
    return {"times": times, "ratios": ratios, "backend": resolve_backend("auto", "cpu"),
            "cpu_s": common.process_cpu_s()}


IMPLS = ("octformer", "octformer-torch", "dense")


def worker_model(name: str) -> dict:
    import torch

    from octformer.io import read_points
    from octformer.models import create_model

    torch.manual_seed(0)
    data = common.SHARED_DATA
    if name == "volt_s":
        cloud = read_points(data / "semantickitti" / "velodyne" / "000000.bin")
        pts = cloud.points.astype(np.float64)
        sel = np.linalg.norm(pts[:, :2], axis=1) < 20.0
        model = create_model("volt_s", voxel_size=0.1)
        tree = model.build_input([pts[sel]], [cloud.attributes["intensity"][sel, None]])
        tokens = int(tree.nnum_nempty[-1])

        def step():
            model(tree).sum().backward()
    elif name == "hotformerloc_cswp":
        pts = read_points(data / "cs_wild_places" / "karawatha_submap_gnd_2.pcd").points.astype(np.float64)
        pts = pts[np.random.default_rng(0).permutation(len(pts))[:28_000]]  # CS-WP submaps average ~28k points
        model = create_model("hotformerloc_cswp")
        trees = [model.build_input([pts])]
        tree = model.merge(trees * 2)  # batch of 2 (BatchNorm needs > 1 sample per channel statistic)
        tokens = int(tree.nnum_nempty[-1])

        def step():
            model(tree).sum().backward()
    elif name == "octgpt_small":
        pts = read_points(data / "stanford_bunny" / "reconstruction" / "bun_zipper.ply").points.astype(np.float64)
        model = create_model("octgpt_small")
        tree = model.build_input([pts])
        tokens = int(len(model.sequence(tree)["value"]))
        g = torch.Generator().manual_seed(0)

        def step():
            model.loss(tree, g)["loss"].backward()
    else:
        raise SystemExit(f"unknown model case {name}")
    model.train()
    mem = common.memory_probe(step)
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"times": times, "tokens": tokens, "params": sum(p.numel() for p in model.parameters()),
            "peak_mib": mem["dpeak_mib"], "cpu_s": common.process_cpu_s()}


def main(sizes, threads_list, models, runs) -> None:
    me = str(Path(__file__).resolve())
    extra = ["--runs", str(runs)]
    lines = ["### One OctFormer block, forward + backward (C = 96, H = 6, K = 32, CPE + RPE, dilation 1)", "",
             "| N | threads | octformer.nn, compiled attention: median (min) ms | octformer.nn, torch reference "
             "attention | dense-mask OctFormer | dense ÷ compiled, same round: median (range) | "
             "dense ÷ torch reference | peak RSS rise compiled / reference / dense (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        for threads in threads_list:
            # timing: both implementations in one process, interleaved; memory: one fresh process each
            pair = common.run_worker([me, "--block-pair", str(n), *extra], threads)
            mem = {impl: common.run_worker([me, "--block", impl, str(n), "--runs", "0"], threads) for impl in IMPLS}
            s = {k: common.summarize(v) for k, v in pair["times"].items()}
            r = {k: np.asarray(v) for k, v in pair["ratios"].items()}
            row = (f"| {n:,} | {threads} | {common.fmt_ms(s['octformer'])} | {common.fmt_ms(s['octformer-torch'])} | "
                   f"{common.fmt_ms(s['dense'])} | "
                   + " | ".join(f"{np.median(r[k]):.2f}× ({r[k].min():.2f}–{r[k].max():.2f})" for k in IMPLS[:2])
                   + " | " + " / ".join(f"{mem[k]['peak_mib']:.0f}" for k in IMPLS) + " |")
            print(row, f"(other load {pair['other_load']:.1f} cores)", flush=True)
            lines.append(row)
    if models:
        lines += ["", "### Backbones at published sizes, one training step (forward + backward), 2 threads", "",
                  "| model | params | input | tokens | median (min) s | tokens/s | peak RSS rise (MiB) |",
                  "|---|---|---|---|---|---|---|"]
    inputs = {
        "volt_s": "SemanticKITTI 000000, r < 20 m, 0.1 m voxels (tokens = voxels)",
        "hotformerloc_cswp": "2 × CS-WP submap subsampled to 28k points, depth 7 (tokens = leaves)",
        "octgpt_small": "Stanford bunny, depth 8, loss() with random masking (tokens = sequence)",
    }
    for name in models:
        r = common.run_worker([me, "--model", name, *extra], 2)
        s = common.summarize(r["times"])
        row = (f"| {name} | {r['params'] / 1e6:.1f}M | {inputs[name]} | {r['tokens']:,} | "
               f"{s['median_ms'] / 1e3:.2f} ({s['min_ms'] / 1e3:.2f}) | {r['tokens'] / (s['median_ms'] / 1e3):,.0f} | "
               f"{r['peak_mib']:.0f} |")
        print(row, f"(other load {r['other_load']:.1f} cores)", flush=True)
        lines.append(row)
    lines += ["", f"Block: both implementations timed in one process, alternating, {runs} rounds after a warm-up "
              "(ratio columns: median over rounds of dense ÷ octformer.nn from the same round); peak RSS rise "
              "from one step in a fresh process each. Backbones: medians of the timed runs after one untimed run "
              "that measures the peak RSS rise, each in a fresh process. The CPE is the same module in all three "
              "(octformer.nn's, compiled octree_dwconv when installed). The machine was shared with other engineers' jobs, so absolute times are "
              "inflated and noisy; the same-round ratios are the result."]
    common.append_results("bench_models: backbones and one OctFormer block (CPU)", "\n".join(lines),
                          "python benchmarks/bench_models.py")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--block", nargs=2, metavar=("IMPL", "N"))
    ap.add_argument("--block-pair", type=int, metavar="N")
    ap.add_argument("--model")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default=",".join(map(str, BLOCK_SIZES)))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--models", default="volt_s,hotformerloc_cswp,octgpt_small")
    a = ap.parse_args()
    RUNS = a.runs
    if a.block:
        print(json.dumps(worker_block(a.block[0], int(a.block[1]))))
    elif a.block_pair:
        print(json.dumps(worker_block_pair(a.block_pair)))
    elif a.model:
        print(json.dumps(worker_model(a.model)))
    else:
        main([int(v) for v in a.sizes.split(",") if v], [int(v) for v in a.threads.split(",") if v],
             [m for m in a.models.split(",") if m], a.runs)
