"""HOTFormerLoc (Griffiths et al., CVPR 2025): hierarchical octree transformer for lidar place recognition.

octree (Cartesian or cylindrical) → stem (two conv + stride-2 rounds) → OctFormer stage
(window attention, dilation alternating 1 / D, CPE, RPE) → stride-2 → HOTFormer stage over
a 3-level pyramid: one relay token (RT) per local window (window mean + ADaPE of the
window's position mean/covariance); every block runs RTSA (global attention over all RTs
of a sample, all levels together) then H-OSA (per level, window attention with the
window's RT prepended) → pyramid attentional pooling + token mixer → L2-normalised
256-d descriptor. Windows are padded per sample, so none spans two samples.

Deviation from the reference code: the RT takes part in the relative position bias at
its window's (rounded) mean cell instead of a zero-padded RPE row.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from octformer.errors import OctformerError
from octformer.models._base import OctreeModel, as_point_list
from octformer.models._registry import register_model
from octformer.nn import (
    CPE,
    OctreeContext,
    OctreeConv,
    OctreeDownsample,
    TokenPlan,
    TransformerBlock,
    global_plan,
    rpe_bound_for,
)
from octformer.octree import Octree, build_octree

__all__ = ["HOTFormerLoc", "hotformerloc", "hotformerloc_cswp", "hotformerloc_tiny", "truncated_smooth_ap"]


class _ConvBnReLU(nn.Module):
    def __init__(self, cin: int, cout: int, act: bool = True) -> None:
        super().__init__()
        self.conv = OctreeConv(cin, cout, bias=False)
        self.norm = nn.BatchNorm1d(cout)
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x, neighbors):
        return self.act(self.norm(self.conv(x, neighbors)))


class PatchEmbed(nn.Module):
    """OctFormer stem: [3×3×3 conv-BN-ReLU, stride-2 conv-BN-ReLU] × 2 (C/4 → C/2 → C), then a 3×3×3 projection."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        widths = [dim // 4, dim // 2, dim]
        self.convs = nn.ModuleList([_ConvBnReLU(in_channels, widths[0]), _ConvBnReLU(widths[1], widths[1])])
        self.downs = nn.ModuleList([OctreeDownsample(widths[0], widths[1]), OctreeDownsample(widths[1], widths[2])])
        self.proj = _ConvBnReLU(widths[2], dim, act=False)

    def forward(self, x, ctx: OctreeContext, depth: int):
        for conv, down in zip(self.convs, self.downs):
            x = conv(x, ctx.neighbors(depth))
            x = F.relu(down(x, ctx.children(depth)))
            depth -= 1
        return self.proj(x, ctx.neighbors(depth))


class ADaPE(nn.Module):
    """Absolute distribution-aware position encoding: MLP of a window's position mean (3) and covariance (6)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(9, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        return self.mlp(stats)


def window_statistics(x, pos, plan: TokenPlan):
    """Per window: mean feature (W, C), [mean position, upper-triangular covariance] (W, 9), mean cell (W, 3)."""
    k = plan.group_size
    valid = torch.isfinite(plan.key_mask).view(-1, k, 1).to(x.dtype)
    n = valid.sum(1)  # (W, 1)
    feat = (x[plan.gather].view(-1, k, x.shape[1]) * valid).sum(1) / n
    p = pos[plan.gather].view(-1, k, 3)
    mean = (p * valid).sum(1) / n
    d = (p - mean[:, None]) * valid
    cov = torch.einsum("wki,wkj->wij", d, d) / (n - 1).clamp(min=1)[:, :, None]
    iu = torch.triu_indices(3, 3)
    return feat, torch.cat([mean, cov[:, iu[0], iu[1]]], 1), mean


def relay_plan(plan: TokenPlan, num_tokens: int) -> TokenPlan:
    """Windows of K+1 slots, [relay token, K window tokens], over the tokens followed by the W relay tokens."""
    k = plan.group_size
    w = plan.num_slots // k
    dev = plan.gather.device
    rt = num_tokens + torch.arange(w, device=dev)
    gather = torch.cat([rt[:, None], plan.gather.view(w, k)], 1).reshape(-1)
    mask = torch.cat([plan.key_mask.new_zeros(w, 1), plan.key_mask.view(w, k)], 1).reshape(-1)
    s = plan.scatter
    scatter = torch.cat([(s // k) * (k + 1) + 1 + s % k, torch.arange(w, device=dev) * (k + 1)])
    sample = plan.slot_sample.view(w, k)
    slot_sample = torch.cat([sample[:, :1], sample], 1).reshape(-1)
    return TokenPlan(gather=gather, scatter=scatter, group_size=k + 1, key_mask=mask, max_seqlen=k + 1,
                     slot_sample=slot_sample)


class HOSABlock(nn.Module):
    """H-OSA: CPE on the local tokens, then a pre-norm block over windows with their relay token prepended."""

    def __init__(self, dim: int, heads: int, patch_size: int, drop_path: float, backend: str) -> None:
        super().__init__()
        self.cpe = CPE(dim)
        self.block = TransformerBlock(
            dim, heads, drop_path=drop_path, rpe_bound=rpe_bound_for(patch_size), backend=backend
        )

    def forward(self, x, rt, plan: TokenPlan, batch, coords, neighbors):
        n = x.shape[0]
        x = x + self.cpe(x, neighbors)
        y = self.block(torch.cat([x, rt]), plan, batch, coords=coords)
        return y[:n], y[n:]


class AttentionalPool(nn.Module):
    """k learned queries attend over one sample's tokens (softmax over that sample only): (N, C) → (B, k, C)."""

    def __init__(self, dim: int, k: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(k, dim) * 0.02)
        self.scale = dim**-0.5

    def forward(self, x, counts: list[int]):
        out = []
        for xb in torch.split(x, counts):
            w = torch.softmax(self.query @ xb.t() * self.scale, dim=1)  # (k, n_b)
            out.append(w @ xb)
        return torch.stack(out)


class MixerLayer(nn.Module):
    """MLP-Mixer layer over pooled tokens: token mixing (T → T) then channel mixing (C → C)."""

    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, tokens), nn.GELU(), nn.Linear(tokens, tokens))
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, x):  # (B, T, C)
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class PyramidAttnPoolMixer(nn.Module):
    """Per-level attentional pooling, concatenation, token mixer, then projections to an ``out_dim`` descriptor."""

    def __init__(self, dim: int, k_tokens: tuple[int, ...], out_dim: int, mixer_layers: int = 4) -> None:
        super().__init__()
        total = sum(k_tokens)
        if total % 4 or out_dim % (total // 4):
            raise OctformerError(f"k_tokens: their sum {total} must be a multiple of 4 dividing out_dim={out_dim}")
        self.pools = nn.ModuleList(AttentionalPool(dim, k) for k in k_tokens)
        self.mixer = nn.Sequential(*[MixerLayer(total, dim) for _ in range(mixer_layers)])
        self.channel_proj = nn.Linear(total, total // 4)
        self.row_proj = nn.Linear(dim, out_dim // (total // 4))

    def forward(self, feats: list[torch.Tensor], counts: list[list[int]]) -> torch.Tensor:
        x = torch.cat([pool(f, c) for pool, f, c in zip(self.pools, feats, counts)], dim=1)  # (B, T, C)
        x = self.mixer(x)
        x = self.channel_proj(x.transpose(1, 2)).transpose(1, 2)  # (B, T/4, C)
        x = self.row_proj(x)  # (B, T/4, out/(T/4))
        return F.normalize(x.flatten(1), dim=1)


class HOTFormerLoc(OctreeModel):
    """HOTFormerLoc place-recognition backbone: ``forward(octree)`` → (B, out_dim) L2-normalised descriptors.

    Args:
        depth: input octree depth (Oxford 9, CS-Wild-Places 7). channels/heads: OctFormer
            stage and HOTFormer stage widths and heads. blocks: (OctFormer blocks,
            HOTFormer blocks per level). patch_size: K. dilation: OctFormer stage dilation.
        levels: pyramid levels. k_tokens: pooled tokens per level. coords: "cartesian" or
            "cylindrical" (octree in (rho, phi, z), phi periodic).
    """

    output_kind = "samples"

    def __init__(
        self,
        *,
        depth: int = 9,
        in_channels: int = 3,
        channels: tuple[int, int] = (128, 256),
        heads: tuple[int, int] = (8, 16),
        blocks: tuple[int, int] = (4, 10),
        patch_size: int = 48,
        dilation: int = 4,
        levels: int = 3,
        k_tokens: tuple[int, ...] = (74, 36, 18),
        out_dim: int = 256,
        drop_path: float = 0.5,
        coords: str = "cartesian",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if len(k_tokens) != levels:
            raise OctformerError(f"k_tokens: expected {levels} values (one per level), got {k_tokens}")
        if depth - 3 - (levels - 1) < 1:
            raise OctformerError(f"depth: {depth} is too shallow for a stem, a stage and {levels} pyramid levels")
        self.config = dict(depth=depth, channels=channels, heads=heads, blocks=blocks, patch_size=patch_size,
                           dilation=dilation, levels=levels, k_tokens=k_tokens, out_dim=out_dim, coords=coords)
        self.depth, self.levels, self.patch_size, self.dilation = depth, levels, patch_size, dilation
        self.coords = coords
        c0, c1 = channels
        nb = blocks[0] + blocks[1]
        rates = [drop_path * i / max(nb - 1, 1) for i in range(nb)]
        self.patch_embed = PatchEmbed(in_channels, c0)
        self.octf_blocks = nn.ModuleList(
            TransformerBlock(
                c0, heads[0], drop_path=rates[i], cpe=CPE(c0),
                rpe_bound=rpe_bound_for(patch_size, 1 if i % 2 == 0 else dilation), backend=backend,
            )
            for i in range(blocks[0])
        )
        self.downsample = OctreeDownsample(c0, c1)
        self.pyramid_downsamples = nn.ModuleList(OctreeDownsample(c1, c1) for _ in range(levels - 1))
        self.adape = ADaPE(c1)
        self.rtsa_blocks = nn.ModuleList(
            TransformerBlock(c1, heads[1], drop_path=rates[blocks[0] + i], backend=backend) for i in range(blocks[1])
        )
        self.hosa_blocks = nn.ModuleList(
            nn.ModuleList(HOSABlock(c1, heads[1], patch_size, rates[blocks[0] + i], backend) for i in range(blocks[1]))
            for _ in range(levels)
        )
        self.pool = PyramidAttnPoolMixer(c1, tuple(k_tokens), out_dim)

    # ------------------------------------------------------------------ input
    def build_input(self, points, features=None) -> Octree:
        """Octree of each cloud in its own tight cube (positions are the input features)."""
        pts, feats = as_point_list(points, features)
        if feats is not None:
            raise OctformerError("features: HOTFormerLoc uses positions only (input features 'P'); pass none")
        return self.merge([build_octree(p, self.depth, full_depth=2, coords=self.coords) for p in pts])

    # ---------------------------------------------------------------- forward
    def forward(self, octree: Octree) -> torch.Tensor:
        if octree.depth != self.depth or octree.coords != self.coords:
            raise OctformerError(
                f"octree: expected depth {self.depth} and coords {self.coords!r}, got {octree.depth} and {octree.coords!r}"
            )
        device = self.downsample.linear.weight.device
        dtype = self.downsample.linear.weight.dtype
        ctx = OctreeContext(octree, device)
        d = self.depth
        scale = float(1 << d)
        x = ((ctx.xyz(d).to(dtype) + 0.5) / scale * 2 - 1)  # cell centres in [-1, 1]
        x = self.patch_embed(x, ctx, d)
        d -= 2
        k = self.patch_size
        for i, blk in enumerate(self.octf_blocks):
            dil = 1 if i % 2 == 0 else self.dilation
            x = blk(x, ctx.window_plan(d, k, dil), ctx.batch(d), neighbors=ctx.neighbors(d), coords=ctx.xyz(d))
        x = self.downsample(x, ctx.children(d))
        d -= 1
        depths = [d - j for j in range(self.levels)]
        feats = [x]
        for j in range(self.levels - 1):
            feats.append(self.pyramid_downsamples[j](feats[-1], ctx.children(depths[j])))
        # relay tokens: window means + ADaPE; their sample index and mean cell
        rts, rt_batch, rt_coords, plans, all_batch, all_coords = [], [], [], [], [], []
        for j, dj in enumerate(depths):
            plan = ctx.window_plan(dj, k)
            pos = (ctx.xyz(dj).to(dtype) + 0.5) / float(1 << dj) * 2 - 1
            mean_feat, stats, _ = window_statistics(feats[j], pos, plan)
            _, _, mean_cell = window_statistics(feats[j][:, :1], ctx.xyz(dj).to(dtype), plan)
            rts.append(mean_feat + self.adape(stats))
            wb = plan.slot_sample.view(-1, k)[:, 0]
            rt_batch.append(wb)
            rt_coords.append(torch.round(mean_cell).long())
            plans.append(relay_plan(plan, feats[j].shape[0]))
            all_batch.append(torch.cat([ctx.batch(dj), wb]))
            all_coords.append(torch.cat([ctx.xyz(dj), rt_coords[-1]]))
        sizes = [r.shape[0] for r in rts]
        cat_batch = torch.cat(rt_batch)
        order = torch.argsort(cat_batch, stable=True)  # RTs of all levels grouped by sample
        rt_plan = global_plan(cat_batch[order])
        for i, rtsa in enumerate(self.rtsa_blocks):
            rt = torch.cat(rts)[order]
            rt = rtsa(rt, rt_plan, cat_batch[order])
            unsorted = torch.empty_like(rt)
            unsorted[order] = rt
            rts = list(torch.split(unsorted, sizes))
            for j, dj in enumerate(depths):
                feats[j], rts[j] = self.hosa_blocks[j][i](
                    feats[j], rts[j], plans[j], all_batch[j], all_coords[j], ctx.neighbors(dj)
                )
        counts = [[int(c) for c in ctx.counts(dj).tolist()] for dj in depths]
        return self.pool(feats, counts)


def truncated_smooth_ap(
    embeddings: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, tau: float = 0.01, k_pos: int = 4
) -> torch.Tensor:
    """Truncated smooth-AP loss (MinkLoc3Dv2): 1 − mean over queries of the smoothed AP of their ``k_pos``
    most similar positives, ranks approximated by sigmoid((s_j − s_p)/tau) over positives ∪ negatives.

    embeddings (B, D); positives / negatives (B, B) bool (the diagonal is ignored).
    """
    b = embeddings.shape[0]
    if positives.shape != (b, b) or negatives.shape != (b, b):
        raise OctformerError(f"positives/negatives: expected ({b}, {b}) masks, got {tuple(positives.shape)}, {tuple(negatives.shape)}")
    eye = torch.eye(b, dtype=torch.bool, device=embeddings.device)
    pos, neg = positives & ~eye, negatives & ~eye
    sim = embeddings @ embeddings.t()
    aps = []
    for i in range(b):
        pidx = torch.nonzero(pos[i]).squeeze(1)
        if pidx.numel() == 0:
            continue
        top = pidx[torch.argsort(sim[i, pidx], descending=True)[:k_pos]]
        cand = pos[i] | neg[i]
        diff = (sim[i][None, :] - sim[i, top][:, None]) / tau  # (P, B): s_j − s_p
        soft = torch.sigmoid(diff)
        soft = soft * (torch.arange(b, device=sim.device)[None, :] != top[:, None])  # j ≠ p
        rank_pos = 1 + (soft * pos[i][None, :]).sum(1)
        rank_all = 1 + (soft * cand[None, :]).sum(1)
        aps.append((rank_pos / rank_all).mean())
    if not aps:
        return embeddings.sum() * 0.0
    return 1 - torch.stack(aps).mean()


def _make(defaults: dict, overrides: dict) -> HOTFormerLoc:
    unknown = set(overrides) - set(HOTFormerLoc.__init__.__kwdefaults__)
    if unknown:
        raise OctformerError(f"overrides: unknown HOTFormerLoc options {sorted(unknown)}")
    return HOTFormerLoc(**{**defaults, **overrides})


@register_model
def hotformerloc(**overrides) -> HOTFormerLoc:
    """Published Oxford config: depth 9, K = 48, channels 128/256, heads 8/16, blocks 4 + 10 × 3 levels."""
    return _make(dict(depth=9, patch_size=48), overrides)


@register_model
def hotformerloc_cswp(**overrides) -> HOTFormerLoc:
    """Published CS-Wild-Places config: depth 7, K = 64 (otherwise as Oxford)."""
    return _make(dict(depth=7, patch_size=64), overrides)


@register_model
def hotformerloc_tiny(**overrides) -> HOTFormerLoc:
    """Test-size HOTFormerLoc: depth 7, K = 16, channels 32/48, 2 + 2 blocks, pooled tokens 8/4/4 → 64-d."""
    return _make(
        dict(depth=7, channels=(32, 48), heads=(2, 4), blocks=(2, 2), patch_size=16, dilation=2,
             k_tokens=(8, 4, 4), out_dim=64, drop_path=0.1),
        overrides,
    )
