"""Pure-PyTorch references for the compiled ops: the oracle in tests and the fallback when kernels are absent.

Semantics shared with the kernels:

* logits = scale * q k^T + rpe(coords_q - coords_k) + key_mask[key]; softmax over the keys of one window.
* RPE (OctFormer): per-axis delta d = coord_query - coord_key clamped to [-b, b]; bias =
  table[d_x + b, h] + table[(2b+1) + d_y + b, h] + table[2(2b+1) + d_z + b, h], table (3*(2b+1), H).
* A query whose keys are all masked (-inf) gets output 0 and logsumexp -inf (never NaN).
* RoPE: channel pair (2k, 2k+1) of head h rotates by angle sum_a pos[a] * freqs[h, k, a]; channels past 2P pass.
* Octree depthwise conv (CPE): y[i, c] = sum_k weight[k, c] * x[neighbors[i, k], c], absent neighbours (-1) add 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "rpe_bias_dense",
    "window_attention_reference",
    "varlen_attention_reference",
    "rope3d_reference",
    "rope_axial_freqs",
    "rope_mixed_freqs",
    "rope_positions",
    "octree_dwconv_reference",
    "octree_dwconv_torch",
]


def rpe_bias_dense(coords: torch.Tensor, rpe_table: torch.Tensor) -> torch.Tensor:
    """OctFormer's dense RPE: (B_g, K, 3) int coords, (3(2b+1), H) table -> (B_g, H, K, K) bias."""
    span = rpe_table.shape[0] // 3
    bound = (span - 1) // 2
    rel = coords[:, :, None, :].long() - coords[:, None, :, :].long()  # (B_g, K, K, 3): query - key
    idx = rel.clamp(-bound, bound) + bound + torch.arange(3, device=coords.device) * span
    bias = rpe_table[idx].sum(dim=3)  # (B_g, K, K, H)
    return bias.permute(0, 3, 1, 2)


def _safe_softmax_attention(logits: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(logits) @ v with fully masked rows giving 0 output and -inf logsumexp."""
    m = logits.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    p = torch.exp(logits - m)
    s = p.sum(dim=-1, keepdim=True)
    out = (p @ v) / torch.where(s > 0, s, torch.ones_like(s))
    lse = (m + torch.log(s)).squeeze(-1)
    return out, lse


def window_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    coords: torch.Tensor | None = None,
    rpe_table: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
):
    """Equal-group attention on (B_g, H, K, C) by materialising the (B_g, H, K, K) logits."""
    bg, heads, kk, dim = q.shape
    scale = dim**-0.5 if scale is None else scale
    logits = (q @ k.transpose(-1, -2)) * scale
    if rpe_table is not None:
        logits = logits + rpe_bias_dense(coords.reshape(bg, kk, 3), rpe_table)
    if key_mask is not None:
        logits = logits + key_mask.detach().reshape(bg, 1, 1, kk)
    out, lse = _safe_softmax_attention(logits, v)
    return (out, lse) if return_lse else out


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Equal-group attention without bias or mask: PyTorch's fused SDPA."""
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def varlen_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    coords: torch.Tensor | None = None,
    rpe_table: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
):
    """Varlen attention on packed (T, H, C): pads segments to the longest one with -inf key masks."""
    total, heads, dim = q.shape
    scale = dim**-0.5 if scale is None else scale
    cu = cu_seqlens.to(device=q.device, dtype=torch.long)
    lengths = cu[1:] - cu[:-1]
    segments = lengths.numel()
    longest = int(lengths.max()) if segments > 0 else 0
    if total == 0 or longest == 0:
        out = q * 0.0 + (k.sum() + v.sum()) * 0.0  # empty: zeros that stay in the autograd graph
        lse = q.new_full((total, heads), -math.inf)
        return (out, lse) if return_lse else out
    pos = torch.arange(longest, device=q.device)
    valid = pos[None, :] < lengths[:, None]  # (S, Lmax)
    token = (cu[:-1, None] + pos[None, :]).clamp(max=total - 1)  # (S, Lmax), padded slots read token T-1

    def pad(x):  # (T, H, C) -> (S, H, Lmax, C)
        return x[token].permute(0, 2, 1, 3)

    mask = torch.where(valid, 0.0, -math.inf).to(q.dtype)
    if key_mask is not None:
        mask = mask + key_mask.detach().reshape(total)[token]
    padded_coords = coords.reshape(total, 3)[token] if coords is not None else None
    out_p, lse_p = window_attention_reference(
        pad(q), pad(k), pad(v), coords=padded_coords, rpe_table=rpe_table, key_mask=mask, scale=scale,
        return_lse=True,
    )
    out = out_p.permute(0, 2, 1, 3)[valid]  # (T, H, C) in packed order
    lse = lse_p.permute(0, 2, 1)[valid]  # (T, H)
    return (out, lse) if return_lse else out


def rope3d_reference(x: torch.Tensor, pos: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of x (B, H, L, C) by angle pos (B, L, 3) . freqs (H, P, 3); channels past 2P unchanged."""
    pairs = freqs.shape[1]
    angle = torch.einsum("bla,hpa->bhlp", pos.to(x.dtype), freqs)  # (B, H, L, P)
    cos, sin = torch.cos(angle), torch.sin(angle)
    x0, x1 = x[..., 0 : 2 * pairs : 2], x[..., 1 : 2 * pairs : 2]
    y0 = x0 * cos - x1 * sin
    y1 = x0 * sin + x1 * cos
    rotated = torch.stack((y0, y1), dim=-1).flatten(-2)
    return torch.cat((rotated, x[..., 2 * pairs :]), dim=-1)


def _default_split(pairs: int) -> tuple[int, int, int]:
    z = pairs // 4
    x = (pairs - z + 1) // 2
    return x, pairs - z - x, z


def rope_axial_freqs(
    head_dim: int, split: tuple[int, int, int] | None = None, theta: float = 100.0, dtype=torch.float32
) -> torch.Tensor:
    """Axial 3D RoPE frequencies (P, 3): pairs split across x/y/z, per axis w_k = theta^(-k/(n-1)), k = 0..n-1.

    The default split gives z a quarter of the pairs and x, y the rest (Volt: head dim 64 -> 12/12/8).
    """
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"rope_axial_freqs: head_dim must be a positive even number, got {head_dim}")
    pairs = head_dim // 2
    split = _default_split(pairs) if split is None else tuple(int(s) for s in split)
    if len(split) != 3 or min(split) < 0 or sum(split) > pairs:
        raise ValueError(f"rope_axial_freqs: split must be 3 non-negative counts summing to <= {pairs}, got {split}")
    freqs = torch.zeros(sum(split), 3, dtype=torch.float64)
    row = 0
    for axis, n in enumerate(split):
        if n == 0:
            continue
        k = torch.arange(n, dtype=torch.float64)
        freqs[row : row + n, axis] = theta ** (-k / max(n - 1, 1)) if n > 1 else 1.0
        row += n
    return freqs.to(dtype)


def rope_mixed_freqs(
    heads: int, head_dim: int, theta: float = 100.0, generator: torch.Generator | None = None, dtype=torch.float32
) -> torch.Tensor:
    """RoPE-Mixed initial frequencies (H, P, 3) as in OctGPT: three groups of head_dim/6 pairs per head with
    magnitudes theta^(-6j/head_dim) along three orthogonal directions drawn per head (phi~U[0,2pi), vt~U[0,pi/2))."""
    if head_dim <= 0 or head_dim % 6:
        raise ValueError(f"rope_mixed_freqs: head_dim must be a positive multiple of 6, got {head_dim}")
    group = head_dim // 6
    mag = theta ** (-6.0 * torch.arange(group, dtype=torch.float64) / head_dim)  # (g,)
    phi = torch.rand(heads, generator=generator, dtype=torch.float64) * 2 * math.pi
    vt = torch.rand(heads, generator=generator, dtype=torch.float64) * math.pi / 2

    def direction(t, p):  # (H, 3)
        return torch.stack((torch.sin(t) * torch.cos(p), torch.sin(t) * torch.sin(p), torch.cos(t)), dim=-1)

    dirs = [direction(vt, phi), direction(vt, phi + math.pi / 2), direction(vt + math.pi / 2, phi)]
    freqs = torch.cat([mag[None, :, None] * d[:, None, :] for d in dirs], dim=1)  # (H, 3g, 3)
    return freqs.to(dtype)


def rope_positions(coords: torch.Tensor, depth: int, grid_depth: int) -> torch.Tensor:
    """Integer octree coords at `depth` -> cell centres on the 2^grid_depth grid: (x + 0.5) * 2^(grid_depth - depth)."""
    if depth > grid_depth:
        raise ValueError(f"rope_positions: depth ({depth}) must be <= grid_depth ({grid_depth})")
    cell = float(2 ** (grid_depth - depth))
    return (coords.to(torch.float64) + 0.5) * cell


def octree_dwconv_reference(x: torch.Tensor, neighbors: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Depthwise 3x3x3 octree conv as ocnn writes it: gather (M, 27, C) neighbour features, weight, sum (the oracle)."""
    pad = torch.cat([x, x.new_zeros(1, x.shape[1])])
    idx = torch.where(neighbors < 0, x.shape[0], neighbors).long()
    return (pad[idx] * weight).sum(1)


def octree_dwconv_torch(x: torch.Tensor, neighbors: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Same result without the (M, 27, C) buffer: one gather + multiply-add per offset (the torch backend)."""
    pad = torch.cat([x, x.new_zeros(1, x.shape[1])])
    idx = torch.where(neighbors < 0, x.shape[0], neighbors).long()
    y = pad[idx[:, 0]] * weight[0]
    for k in range(1, neighbors.shape[1]):
        y = torch.addcmul(y, pad[idx[:, k]], weight[k])
    return y
