"""Window attention on CPU: octformer-kernels vs PyTorch peers, side by side in one process (fp32, 8 heads, dim 32).

Cases (each at 1 and 2 threads, fresh worker process per case and thread count):

- ``equal-K{64,256,1024}``: 65,536 tokens in equal groups, ``torch.ops.octformer.window_attention_fwd`` vs
  ``F.scaled_dot_product_attention`` on the same (B_g, 8, K, 32) tensors, inference mode.
- ``rpe-K32``: 131,072 tokens, K = 32, RPE bound b = int(0.8 K) = 25 and a padding key mask. Ours computes the bias
  inside the kernel from int16 coords; the peer is OctFormer's formulation transcribed from the research note
  (precomputed (N/K, K, K, 3) int64 ``rel_pos`` and (N/K, K, K) ``mask``; per call: clamp + offset, table lookup
  (N/K, K, K, 3, H), sum, permute, q k^T * scale + bias + mask, softmax, @ v). Forward (inference) and
  forward + backward (training; gradients for q, k, v and the table).
- ``dwconv-C96`` / ``dwconv-C96-train``: CPE's octree depthwise 3x3x3 conv, 50,000 non-empty nodes of the lidar100k
  octree, C = 96: ``torch.ops.octformer.octree_dwconv_fwd`` vs ocnn's gather formulation ((M, 27, C) gather, weight,
  sum; the peer column) and the per-offset gather + addcmul loop (``also_torch_loop_ms``); forward, and forward +
  backward (grads of x and weight).
- ``varlen-skewed``: 16,384 tokens in segments with log-normal lengths (1..1024, heavy tail); ours on the packed
  tokens with ``cu_seqlens`` vs SDPA on segments padded to the longest one with a -inf key mask. Reports FLOPs
  done vs useful (4 C per query-key pair per head).

Memory (``--mem``, 1 thread, fresh process per side): dpeak = VmHWM rise during one call, minus the bytes of
what the call must return (outputs, and gradients for fwd+bwd) = auxiliary memory, per token.

Run: ``python benchmarks/bench_attention.py`` (appends to RESULTS.md; ``--no-write`` to skip, ``--quick`` small).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

HEADS, DIM = 8, 32


def _mmap_large_allocs() -> None:
    """Serve allocations >= 64 KiB by mmap so freed memory leaves RSS and VmHWM deltas are honest."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    except OSError:
        pass


# ----------------------------------------------------------------------------- inputs


def _morton_coords(n: int, depth: int, gen) -> "torch.Tensor":
    """n distinct voxels of a 2^depth grid on a few surfaces, sorted in z-order: (n, 3) int64."""
    import torch

    side = 2**depth
    keys = set()
    while len(keys) < n:
        m = 2 * (n - len(keys))
        # points on three planes + a sphere: locally 2D like scanned surfaces
        u = torch.rand(m, 2, generator=gen) * (side - 1)
        which = torch.randint(0, 4, (m,), generator=gen)
        xyz = torch.empty(m, 3)
        xyz[:, 0], xyz[:, 1], xyz[:, 2] = u[:, 0], u[:, 1], side * 0.2
        sel = which == 1
        xyz[sel] = torch.stack((u[sel, 0], torch.full_like(u[sel, 0], side * 0.3), u[sel, 1]), 1)
        sel = which == 2
        xyz[sel] = torch.stack((torch.full_like(u[sel, 0], side * 0.7), u[sel, 0], u[sel, 1]), 1)
        sel = which == 3
        th, ph = u[sel, 0] / side * math.pi, u[sel, 1] / side * 2 * math.pi
        r = side * 0.25
        xyz[sel] = torch.stack((side / 2 + r * torch.sin(th) * torch.cos(ph), side / 2 + r * torch.sin(th) * torch.sin(ph),
                                side / 2 + r * torch.cos(th)), 1)
        xi = xyz.long().clamp(0, side - 1)
        for row in xi.tolist():
            keys.add(tuple(row))
            if len(keys) == n:
                break
    pts = torch.tensor(sorted(keys), dtype=torch.int64)
    code = torch.zeros(n, dtype=torch.int64)
    for bit in range(depth):
        for axis, shift in ((0, 2), (1, 1), (2, 0)):
            code |= ((pts[:, axis] >> bit) & 1) << (3 * bit + shift)
    return pts[torch.argsort(code)]


def _qkv(shape, gen, requires_grad=False):
    import torch

    return [torch.randn(shape, generator=gen).requires_grad_(requires_grad) for _ in range(3)]


# ----------------------------------------------------------------------------- peers


def octformer_dense_attention(q, k, v, rel_pos, mask, table, bound, scale):
    """OctFormer's attention with RPE (research note §2.2): dense (N/K, H, K, K) logits, bias and mask."""
    import torch

    span = 2 * bound + 1
    idx = rel_pos.clamp(-bound, bound) + bound + torch.arange(3, device=rel_pos.device) * span
    bias = table[idx.reshape(-1)].reshape(*idx.shape, -1).sum(3).permute(0, 3, 1, 2)  # (N/K, H, K, K)
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = attn + bias
    attn = attn + mask.unsqueeze(1)
    attn = torch.softmax(attn, dim=-1)
    return attn @ v


def octformer_aux_tensors(coords, batch, kk):
    """OctFormer's per-stage precomputation: rel_pos (N/K, K, K, 3) int64 and mask (N/K, K, K) with -1000."""
    xyz = coords.reshape(-1, kk, 3)
    rel_pos = xyz.unsqueeze(2) - xyz.unsqueeze(1)
    b = batch.reshape(-1, kk)
    mask = b.unsqueeze(2) - b.unsqueeze(1)
    mask = mask.masked_fill(mask != 0, -1000)
    return rel_pos, mask


# ----------------------------------------------------------------------------- cases


def build_case(case: str, quick: bool):
    """Return (calls {name: fn}, info dict, outputs bytes {name: int}) for a case."""
    import torch
    import torch.nn.functional as F

    import octformer.ops as octformer_ops

    ops = torch.ops.octformer
    gen = torch.Generator().manual_seed(0)
    scale = DIM**-0.5
    info: dict = {}
    if case.startswith("equal-K"):
        kk = int(case.split("K")[1])
        n = (8192 if quick else 65536)
        q, k, v = _qkv((n // kk, HEADS, kk, DIM), gen)

        def ours():
            with torch.inference_mode():
                return ops.window_attention_fwd(q, k, v, None, None, None, None, scale, False)[0]

        def sdpa():
            with torch.inference_mode():
                return F.scaled_dot_product_attention(q, k, v)

        info.update(tokens=n, max_abs_diff=float((ours() - sdpa()).abs().max()))
        flops = 4 * kk * DIM * HEADS * n
        info["gflop"] = flops / 1e9
        out_bytes = q.numel() * 4
        return {"ours": ours, "sdpa": sdpa}, info, {"ours": out_bytes, "sdpa": out_bytes}

    if case.startswith("rpe-"):
        mode = "fwdbwd" if case.endswith("-train") else "fwd"
        kk = 32
        n = 16384 if quick else 131072
        bound = int(0.8 * kk)
        coords = _morton_coords(n, 11, gen)
        batch = torch.zeros(n, dtype=torch.int64)
        pad = kk  # the last window is padding (OctFormer pads the batch tail to a multiple of K)
        batch[-pad:] = 1
        key_mask = torch.zeros(n)
        key_mask[-pad:] = -math.inf
        table = (torch.randn(3 * (2 * bound + 1), HEADS, generator=gen) * 0.1).requires_grad_(mode == "fwdbwd")
        q, k, v = _qkv((n // kk, HEADS, kk, DIM), gen, requires_grad=(mode == "fwdbwd"))
        coords16 = coords.to(torch.int16)
        rel_pos, mask = octformer_aux_tensors(coords, batch, kk)
        info.update(tokens=n, K=kk, bound=bound, mode=mode,
                    octformer_precomputed_bytes_per_token=(rel_pos.numel() * 8 + mask.numel() * 8) / n)
        gout = torch.randn(q.shape, generator=gen)

        def ours():
            if mode == "fwd":
                with torch.inference_mode():
                    return ops.window_attention_fwd(q, k, v, None, coords16, table, key_mask, scale, False)[0]
            # the public API: it keeps no logsumexp for K <= 512 (the backward recomputes the normalisers)
            out = octformer_ops.window_attention(q, k, v, coords=coords16, rpe_table=table, key_mask=key_mask,
                                                 scale=scale, backend="kernels")
            return torch.autograd.grad(out, (q, k, v, table), gout)

        def octformer():
            if mode == "fwd":
                with torch.inference_mode():
                    return octformer_dense_attention(q, k, v, rel_pos, mask, table, bound, scale)
            out = octformer_dense_attention(q, k, v, rel_pos, mask, table, bound, scale)
            return torch.autograd.grad(out, (q, k, v, table), gout)

        a, b = ours(), octformer()
        if mode == "fwd":
            # OctFormer masks the padding window's keys with -1000 between samples only; compare real windows
            info["max_abs_diff"] = float((a[:-1] - b[:-1]).abs().max())
        else:
            info["max_abs_diff_grads"] = max(float((x[:-1] - y[:-1]).abs().max()) for x, y in zip(a[:3], b[:3]))
        # what the call must hold at its end: the output, plus (training) the gradients of q, k, v and the table
        req = q.numel() * 4 * (1 if mode == "fwd" else 4) + (0 if mode == "fwd" else table.numel() * 4)
        return {"ours": ours, "octformer": octformer}, info, {"ours": req, "octformer": req}

    if case == "varlen-skewed":
        n_target = 4096 if quick else 16384  # the padded peer does ~30x the FLOPs: keep its calls to seconds
        lengths = []
        while sum(lengths) < n_target:
            lengths.append(int(min(1024, max(1, round(math.exp(torch.randn(1, generator=gen).item() * 1.3 + 3.5))))))
        lengths[-1] -= sum(lengths) - n_target
        lengths = [x for x in lengths if x > 0]
        n, lmax, segs = sum(lengths), max(lengths), len(lengths)
        cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
        q, k, v = _qkv((n, HEADS, DIM), gen)
        pos = torch.arange(lmax)
        lens = torch.tensor(lengths)
        valid = pos[None, :] < lens[:, None]
        token = (cu[:-1, None].long() + pos[None, :]).clamp(max=n - 1)
        pad_mask = torch.where(valid, 0.0, -math.inf)[:, None, None, :]  # (S, 1, 1, Lmax)

        def ours():
            with torch.inference_mode():
                return ops.window_attention_fwd(q, k, v, cu, None, None, None, scale, False)[0]

        def padded_sdpa():
            with torch.inference_mode():
                qp, kp, vp = (x[token].permute(0, 2, 1, 3) for x in (q, k, v))  # (S, H, Lmax, C)
                o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=pad_mask)
                return o.permute(0, 2, 1, 3)[valid]

        useful = sum(x * x for x in lengths) * 4 * DIM * HEADS
        padded = segs * lmax * lmax * 4 * DIM * HEADS
        info.update(tokens=n, segments=segs, max_len=lmax, median_len=sorted(lengths)[segs // 2],
                    gflop_useful=useful / 1e9, gflop_ours=useful / 1e9, gflop_padded=padded / 1e9,
                    max_abs_diff=float((ours() - padded_sdpa()).abs().max()))
        out_bytes = q.numel() * 4
        return {"ours": ours, "padded_sdpa": padded_sdpa}, info, {"ours": out_bytes, "padded_sdpa": out_bytes}
    if case.startswith("dwconv-"):
        # CPE's octree depthwise 3x3x3 conv on a real neighbour table (lidar100k octree, first N non-empty nodes)
        import bench_models

        mode = "fwdbwd" if case.endswith("-train") else "fwd"
        n, c = (5000 if quick else 50000), 96
        _, neigh, depth = bench_models.block_inputs(n)
        nb32 = neigh.to(torch.int32)
        x = torch.randn(n, c, generator=gen).requires_grad_(mode == "fwdbwd")
        w = (torch.randn(27, c, generator=gen) * 0.02).requires_grad_(mode == "fwdbwd")
        gy = torch.randn(n, c, generator=gen)

        def side(fn, table):
            def call():
                if mode == "fwd":
                    with torch.inference_mode():
                        return fn(x, table, w)
                return torch.autograd.grad(fn(x, table, w), (x, w), gy)
            return call

        calls = {"ours": side(ops.octree_dwconv_fwd, nb32),
                 "gather": side(octformer_ops.reference.octree_dwconv_reference, neigh),
                 "torch_loop": side(octformer_ops.reference.octree_dwconv_torch, neigh)}
        a, b = calls["ours"](), calls["gather"]()
        a, b = (a,) if mode == "fwd" else a, (b,) if mode == "fwd" else b
        info.update(tokens=n, depth=depth, mode=mode, absent_neighbours=float((neigh < 0).float().mean()),
                    max_abs_diff=max(float((p - q).abs().max()) for p, q in zip(a, b)))
        req = x.numel() * 4 * (1 if mode == "fwd" else 2) + (0 if mode == "fwd" else w.numel() * 4)  # y (+ grads)
        return calls, info, {name: req for name in calls}
    raise SystemExit(f"unknown case {case}")


def worker(case: str, threads: int, quick: bool, mem_side: str | None) -> None:
    import torch

    _mmap_large_allocs()
    torch.set_num_threads(threads)
    import octformer_kernels  # noqa: F401

    if mem_side is not None:
        calls, info, req = build_case(case, quick)
        import gc

        gc.collect()
        probe = common.memory_probe(calls[mem_side])
        probe["required_mib"] = req[mem_side] / 2**20
        probe["aux_bytes_per_token"] = (probe["dpeak_mib"] * 2**20 - req[mem_side]) / info["tokens"]
        print(json.dumps({"mem": probe, "info": info, "cpu_s": common.process_cpu_s()}))
        return
    calls, info, _ = build_case(case, quick)
    for fn in calls.values():  # warm-up
        fn()
    times = common.time_interleaved({k: ((lambda: None), (lambda _, f=f: f())) for k, f in calls.items()},
                                    min_runs=3, max_runs=3 if quick else 5, budget_s=4.0 if quick else 8.0)
    summary = {k: common.summarize(t) for k, t in times.items()}
    for name in list(summary)[2:]:  # sides beyond ours and the main peer: reported in the check column
        info[f"also_{name}_ms"] = summary[name]["median_ms"]
    print(json.dumps({"times": summary, "info": info,
                      "cpu_s": common.process_cpu_s()}))


def cpe_share(conv_backend: str, n: int = 50000, runs: int = 5) -> None:
    """Process CPU time of one OctFormer block (C 96, H 6, K 32) fwd + bwd vs its CPE and the CPE's depthwise conv."""
    import torch

    import bench_models
    from octformer.nn import CPE, TransformerBlock, window_plan

    torch.manual_seed(0)
    xyz, neigh, _ = bench_models.block_inputs(n)
    batch = torch.zeros(n, dtype=torch.long)
    x0 = torch.randn(n, 96)
    block = TransformerBlock(96, 6, cpe=CPE(96), rpe_bound=int(0.8 * 32), backend="auto")
    cpe = CPE(96)
    block.cpe.conv.backend = cpe.conv.backend = conv_backend  # "auto": the compiled octree_dwconv when installed

    def step(fn):
        x = x0.clone().requires_grad_(True)
        fn(x).sum().backward()

    fns = {"block": lambda: step(lambda x: block(x, window_plan(batch, 32), batch, neighbors=neigh, coords=xyz)),
           "cpe": lambda: step(lambda x: cpe(x, neigh)),
           "dwconv": lambda: step(lambda x: cpe.conv(x, neigh))}
    cpu = {k: [] for k in fns}
    for _ in range(runs + 1):  # the first round warms up
        for k, f in fns.items():
            c0 = time.process_time()
            f()
            cpu[k].append(time.process_time() - c0)
    med = {k: sorted(v[1:])[runs // 2] * 1e3 for k, v in cpu.items()}
    print(f"N={n}, {torch.get_num_threads()} thread(s), conv backend {conv_backend}, process CPU ms (median of {runs}): block {med['block']:.0f}, "
          f"CPE {med['cpe']:.0f} ({med['cpe'] / med['block']:.0%} of the block), depthwise conv {med['dwconv']:.0f}")


PEER = {"equal": "sdpa", "rpe": "octformer", "varlen": "padded_sdpa", "dwconv": "gather"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs=2, metavar=("CASE", "THREADS"))
    ap.add_argument("--mem-side")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cases", nargs="+",
                    default=["equal-K64", "equal-K256", "equal-K1024", "rpe-K32", "rpe-K32-train", "varlen-skewed",
                             "dwconv-C96", "dwconv-C96-train"])
    ap.add_argument("--no-mem", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--quiet-timeout", type=float, default=60.0)
    ap.add_argument("--cpe-share", choices=["auto", "torch", "kernels"],
                    help="print CPE's share of one OctFormer block (its conv on this backend) and exit")
    args = ap.parse_args()
    if args.cpe_share:
        import torch

        torch.set_num_threads(args.threads[0])
        cpe_share(args.cpe_share)
        return
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.quick, args.mem_side)
        return

    script = str(Path(__file__).resolve())
    extra = ["--quick"] if args.quick else []
    rows, mem_rows, notes = [], [], []
    for case in args.cases:
        peer = PEER[case.split("-")[0]]
        for t in args.threads:
            load = common.wait_for_quiet(timeout_s=args.quiet_timeout)
            res = common.run_worker([script, "--worker", case, str(t), *extra], t)
            ours, other = res["times"]["ours"], res["times"][peer]
            ratio = other["median_ms"] / ours["median_ms"]
            rows.append((case, t, peer, ours, other, ratio, res["other_load"], load["busy_before"], res["info"]))
            print(f"{case:14s} T{t}: ours {common.fmt_ms(ours)} ms, {peer} {common.fmt_ms(other)} ms -> "
                  f"{ratio:.2f}x (other load {res['other_load']:.2f}) {res['info']}", flush=True)
        if not args.no_mem and case.startswith(("rpe", "equal-K256", "varlen", "dwconv")):
            for side in ("ours", peer):
                res = common.run_worker([script, "--worker", case, "1", "--mem-side", side, *extra], 1)
                m = res["mem"]
                mem_rows.append((case, side, m, res["info"]))
                print(f"{case:14s} mem {side}: dpeak {m['dpeak_mib']:.1f} MiB, required {m['required_mib']:.1f} MiB, "
                      f"aux {m['aux_bytes_per_token']:.1f} B/token", flush=True)

    if args.no_write:
        return
    lines = ["| case | T | ours median (min) ms | peer | peer median (min) ms | speed-up (peer/ours) | other load | check |",
             "|---|---|---|---|---|---|---|---|"]
    for case, t, peer, ours, other, ratio, oload, _, info in rows:
        check = ", ".join(f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()
                          if k.startswith(("max_abs", "gflop", "segments", "max_len", "median_len", "also_")))
        lines.append(f"| {case} | {t} | {common.fmt_ms(ours)} | {peer} | {common.fmt_ms(other)} | **{ratio:.2f}×** | "
                     f"{oload:.2f} | {check} |")
    if mem_rows:
        lines += ["", "Memory (1 thread, fresh process per side; aux = dpeak − bytes the call must return):", "",
                  "| case | side | dpeak MiB | required MiB | aux bytes/token |", "|---|---|---|---|---|"]
        for case, side, m, info in mem_rows:
            lines.append(f"| {case} | {side} | {m['dpeak_mib']:.1f} | {m['required_mib']:.1f} | "
                         f"{m['aux_bytes_per_token']:.1f} |")
        pre = [info.get("octformer_precomputed_bytes_per_token") for c, s, m, info in mem_rows if c.startswith("rpe")]
        if pre and pre[0]:
            lines.append(f"\nOctFormer additionally keeps the per-stage rel_pos + mask tensors: {pre[0]:.0f} bytes/token "
                         "(not counted in its dpeak above; ours needs only the int16 coords, 6 bytes/token).")
    body = "\n".join(lines) + "\n"
    cmd = "python benchmarks/bench_attention.py " + " ".join(sys.argv[1:])
    common.append_results("Window attention (CPU, fp32, 8 heads, dim 32): octformer-kernels vs SDPA / OctFormer",
                          body, cmd.strip())


if __name__ == "__main__":
    main()
