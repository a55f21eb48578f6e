"""Multi-head attention over token plans (windows, dilated/shifted windows, global per sample).

Positional options: OctFormer's relative position bias (``rpe_bound``), axial 3D RoPE
(Volt) or learnable mixed-frequency RoPE (OctGPT), and QK-norm. The softmax runs in
``octformer.ops.window_attention`` (compiled kernels or the torch reference).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from octformer import ops
from octformer.errors import OctformerError
from octformer.nn.plans import TokenPlan

__all__ = ["PlanAttention", "rpe_bound_for", "level_causal_window_attention"]


def rpe_bound_for(group_size: int, dilation: int = 1) -> int:
    """OctFormer's RPE clamp: int(0.8 · K · sqrt(D))."""
    return int(0.8 * group_size * math.sqrt(dilation))


class PlanAttention(nn.Module):
    """Attention of (N, C) tokens inside the sequences of a :class:`TokenPlan`.

    Args:
        dim: C. heads: H (C must divide by H).
        rpe_bound: b of a learned (3(2b+1), H) relative-position bias table, or None.
        rope: None, "axial" (fixed frequencies, split pairs over x/y/z) or "mixed"
            (learnable per-head frequency vectors).
        rope_split / rope_theta: axial pair split and base (Volt: (12, 12, 8), 100).
        qk_norm: LayerNorm of q and k per head before RoPE (Volt).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        qkv_bias: bool = True,
        rpe_bound: int | None = None,
        rope: str | None = None,
        rope_split: tuple[int, int, int] | None = None,
        rope_theta: float = 100.0,
        qk_norm: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim % heads:
            raise OctformerError(f"dim: expected a multiple of heads={heads}, got {dim}")
        if rope not in (None, "axial", "mixed"):
            raise OctformerError(f"rope: expected None, 'axial' or 'mixed', got {rope!r}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else None
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else None
        self.rpe_table = None
        if rpe_bound is not None:
            self.rpe_table = nn.Parameter(torch.zeros(3 * (2 * rpe_bound + 1), heads))
            nn.init.trunc_normal_(self.rpe_table, std=0.02)
        self.rope = rope
        if rope == "axial":
            self.register_buffer(
                "rope_freqs", ops.rope_axial_freqs(self.head_dim, rope_split, rope_theta), persistent=False
            )
        elif rope == "mixed":
            g = torch.Generator().manual_seed(0)
            self.rope_freqs = nn.Parameter(ops.rope_mixed_freqs(heads, self.head_dim, rope_theta, generator=g))

    def forward(
        self,
        x: torch.Tensor,
        plan: TokenPlan,
        *,
        coords: torch.Tensor | None = None,
        pos: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        levels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (N, C) → (N, C). coords (N, 3) int for RPE; pos (N, 3) for RoPE; key_mask (N,) extra 0/-inf.

        ``levels`` (N,) int makes attention causal across levels and bidirectional within one
        (a query sees keys of its own or coarser levels; OctGPT). It needs an equal-group plan;
        see :func:`level_causal_window_attention`.
        """
        n, c = x.shape
        if c != self.dim:
            raise OctformerError(f"x: expected (N, {self.dim}) tokens, got {tuple(x.shape)}")
        if self.rpe_table is not None and coords is None:
            raise OctformerError("coords: this attention has a relative position bias, so (N, 3) coords are required")
        if self.rope is not None and pos is None:
            raise OctformerError("pos: this attention uses RoPE, so (N, 3) positions are required")
        h, dh = self.heads, self.head_dim
        xs = x[plan.gather]
        m = xs.shape[0]
        qkv = self.qkv(xs)
        q, k, v = qkv.view(m, 3, h, dh).unbind(1)  # (M, H, dh) each
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            p = pos[plan.gather].to(x.dtype)
            freqs = self.rope_freqs.to(x.dtype)
            q = ops.rope3d(q.contiguous(), p, freqs, backend=self.backend)
            k = ops.rope3d(k.contiguous(), p, freqs, backend=self.backend)
        mask = plan.key_mask
        if key_mask is not None:
            extra = key_mask[plan.gather]
            mask = extra if mask is None else mask + extra
        if mask is not None:
            mask = mask.to(x.dtype)
        c_g = coords[plan.gather] if self.rpe_table is not None else None
        table = self.rpe_table.to(x.dtype) if self.rpe_table is not None else None
        if levels is not None and plan.cu_seqlens is not None:
            raise OctformerError("levels: level-causal attention needs an equal-window plan, got a varlen plan")
        if plan.cu_seqlens is not None:
            out = ops.window_attention(
                q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens=plan.cu_seqlens, coords=c_g,
                rpe_table=table, key_mask=mask, backend=self.backend,
            )
        elif levels is not None:
            if self.rpe_table is not None:
                raise OctformerError("levels: the level-causal path does not support a relative position bias")
            out = level_causal_window_attention(q, k, v, levels[plan.gather], plan.group_size, mask, self.backend)
        else:
            kk = plan.group_size
            g = m // kk
            if self.q_norm is None and self.rope is None:  # q, k, v are still views of one qkv: one copy for all
                qg, kg, vg = qkv.view(g, kk, 3, h, dh).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
            else:
                qg, kg, vg = (t.view(g, kk, h, dh).transpose(1, 2).contiguous() for t in (q, k, v))
            out = ops.window_attention(qg, kg, vg, coords=c_g, rpe_table=table, key_mask=mask, backend=self.backend)
            out = out.transpose(1, 2)
        out = self.proj(out.reshape(m, c))
        return out[plan.scatter]


def level_causal_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_levels: torch.Tensor,
    group_size: int,
    key_mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Window attention where a query sees only keys of its own or a coarser level, without a pairwise mask.

    q, k, v (M, H, C) slots of equal windows of ``group_size``; ``slot_levels`` (M,) int; ``key_mask`` (M,)
    0/-inf. One attention call per level ℓ over the windows holding level-ℓ slots, with keys of finer levels
    masked per key; each slot keeps the output of its own level's call. A window of one level (the common
    case) is computed once and no (windows, K, K) tensor is built. The call is torch's fused SDPA with a
    (windows, 1, 1, K) mask, or ``ops.window_attention`` when ``backend="kernels"`` (1.5x slower than SDPA
    at K = 1024 on CPU). Slots whose keys are all masked (padding) return 0. Returns (M, H, C).
    """
    m, h, c = q.shape
    kk = group_size
    g = m // kk

    def grp(t: torch.Tensor) -> torch.Tensor:
        return t.view(g, kk, h, c).transpose(1, 2).contiguous()

    qg, kg, vg = grp(q), grp(k), grp(v)
    lv = slot_levels.view(g, kk)
    base = key_mask.view(g, kk) if key_mask is not None else torch.zeros(g, kk, dtype=q.dtype, device=q.device)
    slot_ids = torch.arange(m, device=q.device).view(g, kk)
    picked_slots, picked_out = [], []
    use_kernels = backend == "kernels"
    for level in torch.unique(lv).tolist():
        is_query = lv == level
        windows = torch.nonzero(is_query.any(1)).squeeze(1)
        whole = windows.numel() == g
        finer = torch.where(lv > level, float("-inf"), 0.0).to(q.dtype)
        km = base + finer if whole else (base + finer)[windows]

        def sub(t: torch.Tensor, windows=windows, whole=whole) -> torch.Tensor:
            return t if whole else t[windows]

        if use_kernels:
            o = ops.window_attention(sub(qg), sub(kg), sub(vg), key_mask=km.contiguous(), backend=backend)
        else:  # torch's fused SDPA with the per-key mask broadcast over queries (never a (K, K) mask)
            dead = torch.isinf(km).all(1)  # windows where this level sees no key: padding queries only
            o = F.scaled_dot_product_attention(
                sub(qg), sub(kg), sub(vg), attn_mask=km.masked_fill(dead[:, None], 0.0)[:, None, None, :]
            )
            o = o.masked_fill(dead[:, None, None, None], 0.0)
        sel = sub(is_query)
        picked_slots.append(sub(slot_ids)[sel])
        picked_out.append(o.transpose(1, 2)[sel])  # (n_level, H, C)
    slots = torch.cat(picked_slots)
    vals = torch.cat(picked_out)
    return vals.new_zeros(m, h, c).index_copy(0, slots, vals)
