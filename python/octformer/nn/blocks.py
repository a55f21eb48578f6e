"""MLP, per-sample drop path and the pre-norm transformer block used by every backbone."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from octformer.nn.attention import PlanAttention
from octformer.nn.plans import TokenPlan

__all__ = ["Mlp", "DropPath", "TransformerBlock"]


class Mlp(nn.Module):
    """Linear → GELU → Linear feed-forward (width ``ratio`` · C)."""

    def __init__(self, dim: int, ratio: float = 4.0, out_dim: int | None = None) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth that drops a whole sample's residual (flat tokens, sample index per token)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        num_samples = int(batch.max()) + 1 if batch.numel() else 0
        mask = torch.empty(num_samples, dtype=x.dtype, device=x.device).bernoulli_(keep) / keep
        return x * mask[batch].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class TransformerBlock(nn.Module):
    """Pre-norm block: [x += CPE(x)], x += DropPath(Attn(LN x)), x += DropPath(MLP(LN x)).

    ``cpe`` is an optional module called as ``cpe(x, ctx_depth_args)`` through ``cpe_fn``;
    attention keyword arguments (coords, pos, key_mask) pass straight through.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        cpe: nn.Module | None = None,
        **attn_kwargs,
    ) -> None:
        super().__init__()
        self.cpe = cpe
        self.norm1 = nn.LayerNorm(dim)
        self.attn = PlanAttention(dim, heads, **attn_kwargs)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        x: torch.Tensor,
        plan: TokenPlan,
        batch: torch.Tensor,
        *,
        neighbors: torch.Tensor | None = None,
        cpe_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **attn_args,
    ) -> torch.Tensor:
        """x (N, C), ``batch`` (N,) sample index; ``neighbors`` (N, 27) for the CPE."""
        if self.cpe is not None:
            x = x + self.cpe(x, neighbors)
        x = x + self.drop_path(self.attn(self.norm1(x), plan, **attn_args), batch)
        x = x + self.drop_path(self.mlp(self.norm2(x)), batch)
        return x
