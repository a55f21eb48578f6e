"""octformer.ops: the PyTorch reference path (always tested, kernels or not) and backend selection."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import octformer.ops as ops  # noqa: E402
from octformer.errors import OctformerError  # noqa: E402
from octformer.ops import reference as ref  # noqa: E402


def naive_attention(q, k, v, coords=None, table=None, key_mask=None, scale=None):
    """Loop-per-query oracle in float64 (independent of reference.py's vectorised code)."""
    bg, heads, kk, dim = q.shape
    scale = dim**-0.5 if scale is None else scale
    out = torch.zeros(q.shape, dtype=torch.float64)
    bound = (table.shape[0] // 3 - 1) // 2 if table is not None else 0
    for g in range(bg):
        for h in range(heads):
            for i in range(kk):
                logits = []
                for j in range(kk):
                    s = float((q[g, h, i].double() * k[g, h, j].double()).sum()) * scale
                    if table is not None:
                        for a in range(3):
                            d = int(coords[g * kk + i, a]) - int(coords[g * kk + j, a])
                            d = max(-bound, min(bound, d))
                            s += float(table[a * (2 * bound + 1) + d + bound, h])
                    if key_mask is not None:
                        s += float(key_mask.reshape(-1)[g * kk + j])
                    logits.append(s)
                m = max(logits)
                if m == -math.inf:
                    continue
                w = [math.exp(s - m) for s in logits]
                tot = sum(w)
                for j in range(kk):
                    out[g, h, i] += w[j] / tot * v[g, h, j].double()
    return out


def test_reference_matches_naive_loop_with_rpe_and_mask():
    g = torch.Generator().manual_seed(0)
    bg, heads, kk, dim, bound = 2, 3, 5, 4, 2
    q, k, v = (torch.randn(bg, heads, kk, dim, generator=g, dtype=torch.float64) for _ in range(3))
    coords = torch.randint(0, 8, (bg * kk, 3), generator=g, dtype=torch.int16)
    table = torch.randn(3 * (2 * bound + 1), heads, generator=g, dtype=torch.float64)
    mask = torch.zeros(bg, kk, dtype=torch.float64)
    mask[0, 1] = -math.inf
    mask[1, :] = -math.inf  # window 1 fully masked: output 0
    got = ref.window_attention_reference(q, k, v, coords=coords, rpe_table=table, key_mask=mask)
    want = naive_attention(q, k, v, coords, table, mask)
    torch.testing.assert_close(got, want)
    assert torch.equal(got[1], torch.zeros_like(got[1]))


def test_rpe_bias_dense_matches_octformer_indexing():
    g = torch.Generator().manual_seed(1)
    bound, heads = 3, 2
    coords = torch.randint(-10, 10, (2, 4, 3), generator=g)
    table = torch.randn(3 * (2 * bound + 1), heads, generator=g)
    bias = ref.rpe_bias_dense(coords, table)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                d = (coords[b, i] - coords[b, j]).clamp(-bound, bound) + bound
                want = table[d[0]] + table[(2 * bound + 1) + d[1]] + table[2 * (2 * bound + 1) + d[2]]
                torch.testing.assert_close(bias[b, :, i, j], want)


def test_sdpa_fast_path_equals_reference():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(3, 2, 9, 8, generator=g) for _ in range(3))
    got = ops.window_attention(q, k, v, backend="torch")
    torch.testing.assert_close(got, ref.window_attention_reference(q, k, v))


def test_varlen_reference_matches_per_segment_equal_groups():
    g = torch.Generator().manual_seed(3)
    lengths = [3, 0, 1, 7, 0, 2]
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    total, heads, dim, bound = int(cu[-1]), 2, 4, 1
    q, k, v = (torch.randn(total, heads, dim, generator=g, dtype=torch.float64) for _ in range(3))
    coords = torch.randint(0, 5, (total, 3), generator=g, dtype=torch.int16)
    table = torch.randn(3 * (2 * bound + 1), heads, generator=g, dtype=torch.float64)
    mask = torch.where(torch.rand(total, generator=g) < 0.3, -math.inf, 0.0).double()
    got, lse = ref.varlen_attention_reference(
        q, k, v, cu, coords=coords, rpe_table=table, key_mask=mask, return_lse=True
    )
    for s, n in enumerate(lengths):
        a, b = int(cu[s]), int(cu[s + 1])
        if n == 0:
            continue
        seg = [x[a:b].permute(1, 0, 2)[None] for x in (q, k, v)]
        want = naive_attention(*seg, coords[a:b], table, mask[a:b])
        torch.testing.assert_close(got[a:b], want[0].permute(1, 0, 2))
    assert not torch.isnan(got).any()
    assert got.shape == q.shape and lse.shape == (total, heads)


def test_varlen_dispatch_torch_backend():
    q = torch.randn(5, 1, 2)
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    got = ops.window_attention(q, q, q, cu_seqlens=cu, backend="torch")
    want = torch.cat([ref.window_attention_reference(x.permute(1, 0, 2)[None], x.permute(1, 0, 2)[None],
                                                     x.permute(1, 0, 2)[None])[0].permute(1, 0, 2)
                      for x in (q[:2], q[2:])])
    torch.testing.assert_close(got, want)


def test_fully_masked_reference_has_zero_output_and_finite_grads():
    q = torch.randn(1, 1, 4, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.full((1, 4), -math.inf, dtype=torch.float64)
    out = ops.window_attention(q, q, q, key_mask=mask, backend="torch")
    assert torch.equal(out.detach(), torch.zeros_like(out))
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_rope_reference_matches_complex_rotation():
    """Volt-style oracle: complex pairs times cis(angle) computed with torch.polar."""
    g = torch.Generator().manual_seed(4)
    heads, dim, tokens = 2, 10, 6
    x = torch.randn(1, heads, tokens, dim, generator=g, dtype=torch.float64)
    pos = torch.randint(0, 50, (1, tokens, 3), generator=g).double()
    freqs = torch.randn(heads, 4, 3, generator=g, dtype=torch.float64)  # 4 pairs rotated, 2 channels pass
    got = ref.rope3d_reference(x, pos, freqs)
    xc = torch.view_as_complex(x[..., :8].reshape(1, heads, tokens, 4, 2).contiguous())
    angle = (pos[0][None, :, None, :] * freqs[:, None, :, :]).sum(-1)  # (H, L, P)
    rot = torch.view_as_real(xc * torch.polar(torch.ones_like(angle), angle)[None]).reshape(1, heads, tokens, 8)
    torch.testing.assert_close(got[..., :8], rot)
    torch.testing.assert_close(got[..., 8:], x[..., 8:])


def test_rope_axial_freqs_volt_layout():
    f = ops.rope_axial_freqs(64, theta=100.0)
    assert f.shape == (32, 3)
    counts = tuple(int((f[:, a] != 0).sum()) for a in range(3))
    assert counts == (12, 12, 8)
    # inclusive log spacing from 1 to 1/theta on every axis
    for a, n in enumerate(counts):
        col = f[f[:, a] != 0, a].double()
        want = 100.0 ** (-torch.arange(n, dtype=torch.float64) / (n - 1))
        torch.testing.assert_close(col, want, rtol=1e-6, atol=0)
    assert ((f != 0).sum(1) == 1).all()  # axial: one axis per pair


def test_rope_mixed_freqs_magnitudes_and_octgpt_directions():
    f = ops.rope_mixed_freqs(4, 96, theta=100.0, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert f.shape == (4, 48, 3)
    mag = 100.0 ** (-6.0 * torch.arange(16, dtype=torch.float64) / 96)
    for grp in range(3):
        torch.testing.assert_close(f[:, grp * 16 : (grp + 1) * 16].norm(dim=-1), mag.expand(4, 16))
    d1, d2, d3 = (f[:, grp * 16] / mag[0] for grp in range(3))  # (H, 3) unit directions
    # OctGPT: d2 turns d1 by 90 degrees in azimuth (same polar angle), d3 turns d1 by 90 degrees in polar angle
    torch.testing.assert_close(d1[:, 2], d2[:, 2])
    torch.testing.assert_close((d1[:, :2] * d2[:, :2]).sum(-1), torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close((d1 * d3).sum(-1), torch.zeros(4, dtype=torch.float64))
    # all three groups rotate every pair: no frequency vector is axis-aligned in general
    assert (f[:, :, :2].abs().sum(-1) > 0).all()


def test_rope_positions_cell_centres():
    xyz = torch.tensor([[0, 1, 3]])
    torch.testing.assert_close(ops.rope_positions(xyz, depth=2, grid_depth=7), torch.tensor([[16.0, 48.0, 112.0]],
                                                                                            dtype=torch.float64))


def test_rope3d_layouts_agree():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 2, 4, 8, generator=g)
    pos = torch.randint(0, 9, (3 * 4, 3), generator=g)
    freqs = ops.rope_axial_freqs(8)
    a = ops.rope3d(x, pos, freqs, backend="torch")
    packed = x.permute(0, 2, 1, 3).reshape(12, 2, 8)
    b = ops.rope3d(packed, pos, freqs, backend="torch")
    torch.testing.assert_close(a.permute(0, 2, 1, 3).reshape(12, 2, 8), b)


def test_unknown_backend_raises():
    q = torch.randn(1, 1, 2, 2)
    with pytest.raises(OctformerError, match="backend must be one of"):
        ops.window_attention(q, q, q, backend="cuda")


def test_explicit_kernels_backend_raises_when_unavailable(monkeypatch):
    monkeypatch.setattr(ops, "_kernels", None)
    monkeypatch.setattr(ops, "_kernels_error", "ImportError: pretend not installed")
    q = torch.randn(1, 1, 2, 2)
    with pytest.raises(OctformerError, match="backend='kernels'.*pretend not installed"):
        ops.window_attention(q, q, q, backend="kernels")
    # auto falls back to the reference and says so in show_config
    torch.testing.assert_close(ops.window_attention(q, q, q), ref.window_attention_reference(q, q, q))
    assert any("torch reference" in line for line in ops.backend_report())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(coords=torch.zeros(4, 3, dtype=torch.int16)), "coords and rpe_table must be given together"),
        (dict(key_mask=torch.zeros(3)), "key_mask must hold one"),
        (dict(coords=torch.zeros(4, 3, dtype=torch.int16), rpe_table=torch.zeros(4, 1)), "rpe_table must be"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    q = torch.randn(2, 1, 2, 4)
    with pytest.raises(OctformerError, match=match):
        ops.window_attention(q, q, q, backend="torch", **kwargs)


def test_bad_cu_seqlens_values_raise():
    q = torch.randn(5, 1, 2)
    with pytest.raises(OctformerError, match="cu_seqlens must be a 1-D int32"):
        ops.window_attention(q, q, q, cu_seqlens=torch.tensor([0, 5], dtype=torch.int64), backend="torch")
    with pytest.raises(OctformerError, match=r"q must be \(B_g, H, K, C\) without cu_seqlens"):
        ops.window_attention(q, q, q, backend="torch")
    with pytest.raises(OctformerError, match="end at T = 5"):
        ops.window_attention(q, q, q, cu_seqlens=torch.tensor([0, 2, 4], dtype=torch.int32), backend="torch")


def test_octree_dwconv_torch_backend_matches_reference_and_naive_loop():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    w = torch.randn(27, 5, generator=g, dtype=torch.float64)
    nb = torch.randint(-1, 30, (30, 27), generator=g)
    got = ops.octree_dwconv(x, nb, w, backend="torch")
    naive = torch.zeros_like(x)
    for i in range(30):
        for k in range(27):
            if nb[i, k] >= 0:
                naive[i] += w[k] * x[nb[i, k]]
    torch.testing.assert_close(got, naive)
    torch.testing.assert_close(ref.octree_dwconv_reference(x, nb, w), naive)


def test_octree_dwconv_backend_rules(monkeypatch):
    x, w = torch.randn(4, 3), torch.randn(27, 3)
    nb = torch.full((4, 27), -1)
    nb[:, 13] = torch.arange(4)  # centre only: y = w[13] * x
    with pytest.raises(OctformerError, match="backend must be one of"):
        ops.octree_dwconv(x, nb, w, backend="cuda")
    monkeypatch.setattr(ops, "_kernels", None)
    monkeypatch.setattr(ops, "_kernels_error", "ImportError: pretend not installed")
    with pytest.raises(OctformerError, match="backend='kernels'.*pretend not installed"):
        ops.octree_dwconv(x, nb, w, backend="kernels")
    torch.testing.assert_close(ops.octree_dwconv(x, nb, w), x * w[13])  # auto falls back to the reference


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.randn(4), torch.full((4, 27), -1), torch.randn(27, 3)), r"x must be a floating \(M, C\)"),
        ((torch.randn(4, 3), torch.full((4, 26), -1), torch.randn(27, 3)), r"neighbors must be an integer \(4, 27\)"),
        ((torch.randn(4, 3), torch.full((4, 27), -1.0), torch.randn(27, 3)), "neighbors must be an integer"),
        ((torch.randn(4, 3), torch.full((4, 27), -1), torch.randn(27, 2)), r"weight must be \(27, 3\)"),
        ((torch.randn(4, 3), torch.full((4, 27), 4), torch.randn(27, 3)), r"row index in \[0, 4\), got values in \[4, 4\]"),
    ],
)
def test_octree_dwconv_bad_arguments_name_the_argument(args, match):
    with pytest.raises(OctformerError, match=match):
        ops.octree_dwconv(*args, backend="torch")
