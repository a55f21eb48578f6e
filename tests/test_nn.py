"""octformer.nn blocks against plain NumPy/PyTorch references written here (loops over windows,
coordinate dictionaries for neighbours and parents)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from octformer import build_octree, serialize
from octformer.nn import (
    DropPath,
    OctreeContext,
    OctreeDownsample,
    OctreeDWConv,
    OctreeUpsample,
    PlanAttention,
    global_plan,
    global_pool,
    plan_from_flatten,
    window_plan,
)


def _batch(counts):
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), min_size=1, max_size=4),
    k=st.integers(1, 6),
    d=st.integers(1, 3),
    shift_frac=st.floats(0, 0.999),
)
def test_window_plan_layout_matches_reference(counts, k, d, shift_frac):
    if sum(counts) == 0:
        return
    shift = int(shift_frac * k * d)
    batch = _batch(counts)
    plan = window_plan(batch, k, d, shift)
    valid = torch.isfinite(plan.key_mask)
    # every token has exactly one real slot, and that slot reads it back
    assert torch.equal(plan.gather[plan.scatter], torch.arange(batch.numel()))
    assert int(valid.sum()) == batch.numel()
    assert torch.equal(torch.sort(plan.gather[valid]).values, torch.arange(batch.numel()))
    # windows hold one sample only; padding reads its own sample
    g = plan.gather.view(-1, k)
    assert bool((batch[g] == batch[g[:, :1]]).all())
    # reference: per sample, positions [shift pads, tokens, tail pads], dilated windows j, j+D, ...
    start, slot = 0, 0
    span = k * d
    for c in counts:
        if c == 0:
            continue
        padded = math.ceil((c + shift) / span) * span
        for blk in range(padded // span):
            for j in range(d):
                for i in range(k):
                    pos = blk * span + i * d + j
                    tok = pos - shift
                    is_real = 0 <= tok < c
                    assert bool(valid[slot]) == is_real
                    if is_real:
                        assert int(plan.gather[slot]) == start + tok
                    slot += 1
        start += c
    assert slot == plan.num_slots


def _reference_attention(attn: PlanAttention, x, batch, windows, coords=None, pos=None):
    """Loop over windows (lists of token ids): dense softmax with explicit RPE / RoPE."""
    h, dh = attn.heads, attn.head_dim
    qkv = attn.qkv(x).view(-1, 3, h, dh)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.rope is not None:
        f = attn.rope_freqs if attn.rope_freqs.dim() == 3 else attn.rope_freqs.expand(h, -1, -1)
        ang = torch.einsum("na,hpa->nhp", pos.double(), f.double()).float()
        c, s = torch.cos(ang), torch.sin(ang)

        def rot(t):
            p = f.shape[1]
            a, b = t[..., 0 : 2 * p : 2], t[..., 1 : 2 * p : 2]
            out = t.clone()
            out[..., 0 : 2 * p : 2] = a * c - b * s
            out[..., 1 : 2 * p : 2] = a * s + b * c
            return out

        q, k = rot(q), rot(k)
    out = torch.zeros(x.shape[0], h, dh)
    for w in windows:
        w = torch.tensor(w)
        logits = torch.einsum("qhc,khc->hqk", q[w], k[w]) / math.sqrt(dh)
        if attn.rpe_table is not None:
            b = (attn.rpe_table.shape[0] // 3 - 1) // 2
            rel = (coords[w][:, None, :] - coords[w][None, :, :]).clamp(-b, b) + b
            bias = sum(attn.rpe_table[rel[..., a] + a * (2 * b + 1)] for a in range(3))  # (q, k, H)
            logits = logits + bias.permute(2, 0, 1)
        out[w] = torch.einsum("hqk,khc->qhc", torch.softmax(logits, -1), v[w])
    return attn.proj(out.reshape(x.shape[0], -1))


@pytest.mark.parametrize("k,d,shift", [(4, 1, 0), (4, 2, 0), (3, 1, 2), (4, 2, 3)])
def test_window_attention_with_rpe_matches_window_loop(k, d, shift):
    torch.manual_seed(0)
    counts = [13, 0, 7, 22]
    batch = _batch(counts)
    n = batch.numel()
    x = torch.randn(n, 16)
    coords = torch.randint(0, 9, (n, 3))
    attn = PlanAttention(16, 2, rpe_bound=3, backend="torch")
    plan = window_plan(batch, k, d, shift)
    got = attn(x, plan, coords=coords)
    valid = torch.isfinite(plan.key_mask).view(-1, k)
    windows = [g[m].tolist() for g, m in zip(plan.gather.view(-1, k), valid) if m.any()]
    want = _reference_attention(attn, x, batch, windows, coords=coords)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_global_attention_with_axial_rope_and_qk_norm_matches_per_sample_loop():
    torch.manual_seed(1)
    counts = [9, 17, 4]
    batch = _batch(counts)
    x = torch.randn(batch.numel(), 32)
    pos = torch.randint(0, 20, (batch.numel(), 3)).float()
    attn = PlanAttention(32, 2, rope="axial", rope_split=(3, 3, 2), qk_norm=True, backend="torch")
    got = attn(x, global_plan(batch), pos=pos)
    starts = np.cumsum([0] + counts)
    windows = [list(range(starts[i], starts[i + 1])) for i in range(len(counts))]
    torch.testing.assert_close(got, _reference_attention(attn, x, batch, windows, pos=pos), rtol=1e-4, atol=1e-5)


def test_mixed_rope_frequencies_are_learnable_and_used():
    torch.manual_seed(2)
    batch = _batch([10, 6])
    x = torch.randn(16, 24)
    pos = torch.rand(16, 3) * 8
    attn = PlanAttention(24, 2, rope="mixed", backend="torch")
    got = attn(x, global_plan(batch), pos=pos)
    want = _reference_attention(attn, x, batch, [list(range(10)), list(range(10, 16))], pos=pos)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    got.sum().backward()
    assert attn.rope_freqs.grad is not None and float(attn.rope_freqs.grad.abs().sum()) > 0


def test_attention_on_a_serialize_patch_plan_stays_inside_patches():
    rng = np.random.default_rng(3)
    coords = rng.integers(0, 16, (50, 3))
    batch = np.repeat([0, 1], [30, 20])
    plan = serialize.serialize(coords, orders="z", batch=batch).patches("z", 8)
    tp = plan_from_flatten(plan)
    torch.manual_seed(3)
    x = torch.randn(50, 8)
    attn = PlanAttention(8, 2, backend="torch")
    got = attn(x, tp)
    cu = plan.cu_seqlens
    windows = []
    for s in range(len(cu) - 1):
        members = list(dict.fromkeys(plan.gather[cu[s] : cu[s + 1]].tolist()))  # duplicates: padding
        windows.append((members, plan.gather[cu[s] : cu[s + 1]].tolist()))
    # reference: softmax over the sequence's slots (duplicates count, as in FlatFormer/PTv3)
    h, dh = 2, 4
    qkv = attn.qkv(x).view(-1, 3, h, dh)
    out = torch.zeros(50, h, dh)
    for s in range(len(cu) - 1):
        slots = torch.as_tensor(plan.gather[cu[s] : cu[s + 1]])
        logits = torch.einsum("qhc,khc->hqk", qkv[slots, 0], qkv[slots, 1]) / math.sqrt(dh)
        res = torch.einsum("hqk,khc->qhc", torch.softmax(logits, -1), qkv[slots, 2])
        own = torch.as_tensor(plan.scatter)
        for j, slot in enumerate(range(cu[s], cu[s + 1])):
            hits = (own == slot).nonzero()
            if hits.numel():
                out[int(hits[0, 0])] = res[j]
    torch.testing.assert_close(got, attn.proj(out.reshape(50, -1)), rtol=1e-4, atol=1e-5)
    assert all(len(set(batch[m])) == 1 for m, _ in windows)


@pytest.fixture(scope="module")
def tree():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(400, 3))
    b = rng.uniform(-1, 1, size=(300, 3)) * [1, 1, 0.1]
    return build_octree(np.concatenate([a, b]), 5, offsets=[0, 400, 700])


def test_depthwise_conv_matches_coordinate_lookup(tree):
    ctx = OctreeContext(tree)
    d = 5
    xyz, batch = ctx.xyz(d).numpy(), ctx.batch(d).numpy()
    index = {(int(b), *map(int, c)): i for i, (b, c) in enumerate(zip(batch, xyz))}
    torch.manual_seed(5)
    conv = OctreeDWConv(6)
    x = torch.randn(len(xyz), 6)
    got = conv(x, ctx.neighbors(d))
    want = torch.zeros_like(got)
    for i, (b, c) in enumerate(zip(batch, xyz)):
        acc = conv.bias.detach().clone()
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dz in (-1, 0, 1):
                    j = index.get((int(b), c[0] + dx, c[1] + dy, c[2] + dz))
                    if j is not None:
                        acc = acc + conv.weight[(dx + 1) * 9 + (dy + 1) * 3 + dz + 1] * x[j]
        want[i] = acc
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_down_and_upsampling_follow_parent_child_coordinates(tree):
    ctx = OctreeContext(tree)
    d = 5
    xyz, batch = ctx.xyz(d).numpy(), ctx.batch(d).numpy()
    pxyz, pbatch = ctx.xyz(d - 1).numpy(), ctx.batch(d - 1).numpy()
    parent_index = {(int(b), *map(int, c)): i for i, (b, c) in enumerate(zip(pbatch, pxyz))}
    torch.manual_seed(6)
    x = torch.randn(len(xyz), 3)
    down = OctreeDownsample(3, 5, norm=False)
    got = down(x, ctx.children(d))
    w = down.linear.weight.view(5, 8, 3)
    want = down.linear.bias.detach().expand(len(pxyz), 5).clone()
    parents = []
    for i, (b, c) in enumerate(zip(batch, xyz)):
        p = parent_index[(int(b), *(c // 2))]
        parents.append(p)
        slot = 4 * (c[0] % 2) + 2 * (c[1] % 2) + c[2] % 2
        want[p] = want[p] + w[:, slot] @ x[i]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    up = OctreeUpsample()
    y = torch.randn(len(pxyz), 4)
    assert torch.equal(up(y, ctx.parent(d)), y[torch.tensor(parents)])


def test_global_pool_and_drop_path_are_per_sample():
    torch.manual_seed(7)
    batch = _batch([5, 3, 8])
    x = torch.randn(16, 4)
    mean = global_pool(x, batch, 3, "mean")
    mx = global_pool(x, batch, 3, "max")
    for b in range(3):
        torch.testing.assert_close(mean[b], x[batch == b].mean(0))
        assert torch.equal(mx[b], x[batch == b].max(0).values)
    dp = DropPath(0.5).train()
    y = dp(torch.ones(16, 4), batch)
    for b in range(3):
        vals = torch.unique(y[batch == b])
        assert vals.numel() == 1 and float(vals) in (0.0, 2.0)  # a sample is kept (×1/keep) or dropped whole
    assert torch.equal(dp.eval()(x, batch), x)
