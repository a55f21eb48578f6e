"""OctGPT (Wei et al., SIGGRAPH 2025): multiscale autoregressive octree generation with binary tokens.

An octree becomes, per sample, a token sequence level by level (z-order inside a level):
split flags (1 = node non-empty) for depths full_depth..depth_stop, then one binary
(BSQ) code per non-empty node at depth_stop, produced by an octree VQVAE that also
decodes the finer levels back. A windowed transformer (plain / dilated / shifted /
shifted + dilated windows) that is causal across levels and bidirectional within one,
with learnable mixed-frequency 3D RoPE and level embeddings, predicts masked tokens;
``generate()`` samples level by level (random reveal order, cosine schedule, late re-sampling
of doubtful tokens, as OctGPT) and returns an Octree. Train the VQVAE first
(:meth:`OctGPT.vqvae_loss`), then the transformer with ``loss(..., vqvae=False)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import nn

from octformer import format as octf
from octformer.errors import OctformerError
from octformer.models._base import OctreeModel, as_point_list
from octformer.models._registry import register_model
from octformer.models.octgpt_vqvae import VQVAE_CONFIGS, OctGPTVQVAE, bsq_entropy_loss, bsq_quantize
from octformer.nn import OctreeContext, OctreeConv, OctreeDownsample, TransformerBlock, window_plan
from octformer.nn.plans import TokenPlan
from octformer.octree import Octree, build_octree, key_to_xyz

__all__ = ["OctGPT", "OctreeVQVAE", "OctGPTVQVAE", "octgpt_small", "octgpt_shapenet", "octgpt_tiny", "bsq_quantize"]


class OctreeVQVAE(nn.Module):
    """Encodes the geometry below ``depth_stop`` into one BSQ code per non-empty node there, and decodes
    the split flags of depths depth_stop+1..depth from the codes (teacher-forced during training)."""

    def __init__(self, depth: int, depth_stop: int, code_bits: int = 32, channels: int = 32) -> None:
        super().__init__()
        self.depth, self.depth_stop, self.code_bits = depth, depth_stop, code_bits
        steps = depth - depth_stop
        self.stem = OctreeConv(4, channels)
        self.enc_convs = nn.ModuleList(OctreeConv(channels, channels) for _ in range(steps))
        self.enc_downs = nn.ModuleList(OctreeDownsample(channels, channels, norm=False) for _ in range(steps))
        self.to_code = nn.Linear(channels, code_bits)
        self.from_code = nn.Linear(code_bits, channels)
        self.split_heads = nn.ModuleList(nn.Linear(channels, 8) for _ in range(steps))
        # features of the children of level i, for the split head of level i + 1 (none after the last level)
        self.child_mlps = nn.ModuleList(nn.Linear(channels, channels) for _ in range(steps - 1))
        self.child_embed = nn.ModuleList(nn.Embedding(8, channels) for _ in range(steps - 1))

    def encode(self, ctx: OctreeContext):
        """Pre-quantisation latents (M_stop, L) of the non-empty nodes at depth_stop."""
        d = self.depth
        xyz = ctx.xyz(d).to(self.stem.linear.weight.dtype)
        frac = (xyz + 0.5) / float(1 << (d - self.depth_stop)) % 1.0  # position inside the depth_stop cell
        x = F.relu(self.stem(torch.cat([torch.ones_like(xyz[:, :1]), frac], 1), ctx.neighbors(d)))
        for conv, down in zip(self.enc_convs, self.enc_downs):
            x = F.relu(conv(x, ctx.neighbors(d)))
            x = F.relu(down(x, ctx.children(d)))
            d -= 1
        return self.to_code(x)

    def _children_step(self, i: int, h: torch.Tensor, child_rows: torch.Tensor, child_slots: torch.Tensor):
        return F.relu(self.child_mlps[i](h)[child_rows] + self.child_embed[i](child_slots))

    def reconstruction_loss(self, ctx: OctreeContext) -> torch.Tensor:
        """BCE of the decoded child split flags (teacher forcing) + BSQ entropy penalty."""
        z = self.encode(ctx)
        codes, _ = bsq_quantize(z)
        h = self.from_code(codes)
        loss = 0.1 * bsq_entropy_loss(z)
        for i, d in enumerate(range(self.depth_stop, self.depth)):
            ch = ctx.children(d + 1)  # (M_d, 8) child ranks, -1 empty
            loss = loss + F.binary_cross_entropy_with_logits(self.split_heads[i](h), (ch >= 0).to(h.dtype))
            if i + 1 < len(self.split_heads):
                rows, slots = torch.nonzero(ch >= 0, as_tuple=True)  # children in rank order (row-major)
                h = self._children_step(i, h, rows, slots)
        return loss

    @torch.no_grad()
    def decode_flags(self, codes: torch.Tensor, ctx: OctreeContext | None = None) -> list[torch.Tensor]:
        """Split flags (8·M_d,) of depths depth_stop+1..depth for one sample's codes (M_stop, L) ±1/√L
        (``ctx``, the octree down to depth_stop, is not needed here)."""
        h = self.from_code(codes)
        out = []
        for i in range(self.depth - self.depth_stop):
            prob = torch.sigmoid(self.split_heads[i](h))
            flags = prob > 0.5
            empty = ~flags.any(1)
            flags[empty, prob[empty].argmax(1)] = True  # a non-empty node keeps at least one child
            out.append(flags.reshape(-1).long())
            if i + 1 < len(self.split_heads):
                rows, slots = torch.nonzero(flags, as_tuple=True)
                h = self._children_step(i, h, rows, slots)
        return out


class OctGPT(OctreeModel):
    """OctGPT: ``forward(octree, mask=None)`` → (T, 2 + code_bits) head outputs per token
    (split logits, code-bit logits), tokens grouped by sample; ``loss`` trains; ``generate`` samples.

    Args:
        depth / full_depth / depth_stop: octree depth, dense top level, last split-token level.
        dim / layers / heads: transformer width, blocks, heads (head dim a multiple of 6 for RoPE-Mixed).
        window / dilation: K and D of the window cycle plain → dilated → shifted → shifted + dilated.
        code_bits: BSQ code length (32 in OctGPT). vq_channels: width of the small VQVAE.
        vq_arch: "simple" (:class:`OctreeVQVAE`, a small conv encoder + per-level split MLPs, width
            ``vq_channels``), a released OctGPT VQVAE size ("vqvae", "vqvae_big", "vqvae_large": 4.2M / 8.0M /
            33.9M parameters, :class:`~octformer.models.octgpt_vqvae.OctGPTVQVAE`), or a dict of
            :class:`OctGPTVQVAE` options.
        checkpoint: recompute each block in the backward instead of keeping its activations (OctGPT trains
            this way); training memory then holds one block's activations plus the block inputs. Also sets
            the checkpointing of an :class:`OctGPTVQVAE`'s residual blocks (when built).
        mask_groups: how :meth:`loss` draws masks: "global" (OctGPT: one ratio per sample over all its tokens)
            or "level" (one ratio per sample and level, from the cosine schedule). With "global" at most half
            of the coarser levels is ever visible in training, while sampling sees them whole and the current
            level up to almost fully revealed; "level" trains on those states (bunny: 0.77 → 0.93 IoU at
            depth_stop after the same 300 steps, see docs/models.md).
    """

    def __init__(
        self,
        *,
        depth: int = 8,
        full_depth: int = 3,
        depth_stop: int = 6,
        dim: int = 768,
        layers: int = 24,
        heads: int = 8,
        window: int = 2048,
        dilation: int = 2,
        code_bits: int = 32,
        vq_channels: int = 64,
        vq_arch: str | dict = "simple",
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        rope_theta: float = 100.0,
        checkpoint: bool = False,
        mask_groups: str = "level",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if not 0 <= full_depth <= depth_stop <= depth:
            raise OctformerError(f"depths: expected full_depth <= depth_stop <= depth, got {full_depth}, {depth_stop}, {depth}")
        if (dim // heads) % 6:
            raise OctformerError(f"dim/heads: RoPE-Mixed needs a head dim that is a multiple of 6, got {dim // heads}")
        self.config = dict(depth=depth, full_depth=full_depth, depth_stop=depth_stop, dim=dim, layers=layers,
                           heads=heads, window=window, dilation=dilation, code_bits=code_bits, vq_arch=vq_arch)
        self.depth, self.full_depth, self.depth_stop = depth, full_depth, depth_stop
        self.window, self.dilation, self.code_bits = window, dilation, code_bits
        self.checkpoint = checkpoint
        if mask_groups not in ("global", "level"):
            raise OctformerError(f"mask_groups: expected 'global' or 'level', got {mask_groups!r}")
        self.mask_groups = mask_groups
        self.num_levels = depth_stop - full_depth + 2  # split levels + the code level
        self.split_embed = nn.Embedding(3, dim)  # 0, 1, [MASK]
        self.code_embed = nn.Linear(code_bits, dim)
        self.code_mask = nn.Parameter(torch.zeros(dim))
        self.level_embed = nn.Embedding(self.num_levels, dim)
        rates = [drop_path * i / max(layers - 1, 1) for i in range(layers)]
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, mlp_ratio=mlp_ratio, drop_path=rates[i], rope="mixed",
                             rope_theta=rope_theta, backend=backend)
            for i in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.split_head = nn.Linear(dim, 2)
        self.code_head = nn.Linear(dim, code_bits)
        self.vqvae = (_make_vqvae(vq_arch, depth, depth_stop, code_bits, vq_channels, checkpoint)
                      if depth_stop < depth else None)

    # ------------------------------------------------------------------ input
    def build_input(self, points, features=None) -> Octree:
        """Octree of each shape in its own tight cube at ``depth``."""
        pts, feats = as_point_list(points, features)
        if feats is not None:
            raise OctformerError("features: OctGPT models geometry only; pass none")
        return self.merge([build_octree(p, self.depth, full_depth=self.full_depth) for p in pts])

    def _check(self, octree: Octree) -> None:
        if octree.depth != self.depth or octree.full_depth != self.full_depth:
            raise OctformerError(
                f"octree: expected depth {self.depth} and full_depth {self.full_depth}, "
                f"got {octree.depth} and {octree.full_depth}"
            )

    # -------------------------------------------------------------- sequence
    def sequence(self, octree: Octree) -> dict:
        """Token layout (numpy): per token sample, level index, value (split flag, or -1 for a code
        token), cell xyz at its depth, depth; sample-major, level by level, key order inside a level."""
        t = octree.numpy()
        parts = []
        for li, d in enumerate(range(self.full_depth, self.depth_stop + 1)):
            parts.append((t.batch[d].astype(np.int64), li, (t.children[d] >= 0).astype(np.int64), t.keys[d], d))
        d = self.depth_stop
        nonempty = t.children[d] >= 0
        parts.append((t.batch[d][nonempty].astype(np.int64), self.num_levels - 1,
                      np.full(int(nonempty.sum()), -1, np.int64), t.keys[d][nonempty], d))
        batch = np.concatenate([p[0] for p in parts])
        level = np.concatenate([np.full(p[0].shape, p[1], np.int64) for p in parts])
        value = np.concatenate([p[2] for p in parts])
        xyz = np.concatenate([key_to_xyz(p[3]).astype(np.int64) for p in parts])
        depth = np.concatenate([np.full(p[0].shape, p[4], np.int64) for p in parts])
        order = np.argsort(batch, kind="stable")
        return {k: v[order] for k, v in dict(batch=batch, level=level, value=value, xyz=xyz, depth=depth).items()}

    def output_counts(self, octree: Octree) -> list[int]:
        seq = self.sequence(octree)
        return np.bincount(seq["batch"], minlength=octree.batch_size).tolist()

    def _codes(self, octree: Octree, ctx: OctreeContext):
        if self.vqvae is None:
            return None, None
        codes, bits = bsq_quantize(self.vqvae.encode(ctx))
        return codes, bits

    def _plans(self, batch: torch.Tensor) -> list[TokenPlan]:
        k, dil = self.window, self.dilation
        cycle = [(1, 0), (dil, 0), (1, k // 2), (dil, (k * dil) // 2)]
        return [window_plan(batch, k, *cycle[i % 4]) for i in range(len(self.blocks))]

    def _run(self, seq: dict, codes: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        device = self.norm.weight.device
        dtype = self.norm.weight.dtype
        value = torch.as_tensor(seq["value"], device=device)
        level = torch.as_tensor(seq["level"], device=device)
        batch = torch.as_tensor(seq["batch"], device=device)
        is_code = value < 0
        split_in = value.clamp(min=0)
        if mask is not None:
            split_in = torch.where(mask, 2, split_in)
        x = self.split_embed(split_in)
        if codes is not None and bool(is_code.any()):
            c = self.code_embed(codes.to(dtype))
            if mask is not None:
                c = torch.where(mask[is_code][:, None], self.code_mask.expand_as(c), c)
            x = _put_rows(x, is_code, c)
        xyz = torch.as_tensor(seq["xyz"], device=device).to(torch.float64)
        dep = torch.as_tensor(seq["depth"], device=device)
        pos = ((xyz + 0.5) * torch.pow(2.0, (self.depth_stop - dep).to(torch.float64))[:, None]).to(dtype)
        x = x + self.level_embed(level) + sinusoid_3d(pos, x.shape[1])
        for blk, plan in zip(self.blocks, self._plans(batch)):
            if self.checkpoint and torch.is_grad_enabled() and x.requires_grad:
                x = torch.utils.checkpoint.checkpoint(blk, x, plan, batch, pos=pos, levels=level, use_reentrant=False)
            else:
                x = blk(x, plan, batch, pos=pos, levels=level)
        x = self.norm(x)
        return torch.cat([self.split_head(x), self.code_head(x)], 1)

    def forward(self, octree: Octree, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Head outputs (T, 2 + code_bits) for every token; ``mask`` (T,) bool hides tokens from the input."""
        self._check(octree)
        ctx = OctreeContext(octree, self.norm.weight.device)
        seq = self.sequence(octree)
        codes, _ = self._codes(octree, ctx)
        return self._run(seq, codes, mask)

    def auxiliary_loss(self, octree: Octree, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training loss of :meth:`loss`: it also reaches what ``forward`` without a mask does not
        (mask embeddings, the VQVAE decoder)."""
        return self.loss(octree, generator)["loss"]

    def vqvae_loss(self, octree: Octree, sdf: tuple | None = None) -> torch.Tensor:
        """The VQVAE's reconstruction + BSQ entropy loss (0 without a VQVAE); ``sdf`` (query points, sample,
        target values) adds the SDF loss of :class:`OctGPTVQVAE` (see its ``reconstruction_loss``)."""
        if self.vqvae is None:
            return self.norm.weight.sum() * 0.0
        ctx = OctreeContext(octree, self.norm.weight.device)
        if sdf is None:
            return self.vqvae.reconstruction_loss(ctx)
        if not isinstance(self.vqvae, OctGPTVQVAE):
            raise OctformerError("sdf: only the OctGPT VQVAE (vq_arch other than 'simple') has SDF heads")
        return self.vqvae.reconstruction_loss(ctx, sdf)

    def loss(self, octree: Octree, generator: torch.Generator | None = None, *, vqvae: bool = True) -> dict:
        """Masked-token training loss (masks from ``mask_groups``): CE on masked split tokens + BCE on masked
        code bits, plus the VQVAE's own loss when ``vqvae`` (False once the VQVAE is trained and frozen,
        OctGPT's two-stage training)."""
        self._check(octree)
        ctx = OctreeContext(octree, self.norm.weight.device)
        seq = self.sequence(octree)
        device = self.norm.weight.device
        mask = self._training_mask(seq, generator).to(device)
        if vqvae:
            codes, bits = self._codes(octree, ctx)
        else:
            with torch.no_grad():
                codes, bits = self._codes(octree, ctx)
        out = self._run(seq, codes.detach() if codes is not None else None, mask)
        value = torch.as_tensor(seq["value"], device=device)
        is_code = value < 0
        sm = mask & ~is_code
        split_loss = F.cross_entropy(out[sm, :2], value[sm]) if bool(sm.any()) else out.sum() * 0
        cm = mask[is_code]
        code_loss = (
            F.binary_cross_entropy_with_logits(out[is_code][cm, 2:], bits[cm].to(out.dtype))
            if bits is not None and bool(cm.any()) else out.sum() * 0
        )
        vq = self.vqvae_loss(octree) if vqvae else out.new_zeros(())
        return {"loss": split_loss + code_loss + vq, "split": split_loss.detach(), "code": code_loss.detach(),
                "vqvae": vq.detach()}

    def _training_mask(self, seq: dict, generator: torch.Generator | None) -> torch.Tensor:
        """(T,) bool tokens to hide: ⌈r·n⌉ random tokens of each group, per sample ("global", OctGPT: r from
        N(1, 0.25) truncated to [0.5, 1]) or per sample and level ("level": r = cos(π/2·u), u ~ U[0, 1], the
        states the cosine reveal schedule passes through)."""
        batch = torch.as_tensor(seq["batch"])
        level = torch.as_tensor(seq["level"])
        group = batch * self.num_levels + level if self.mask_groups == "level" else batch
        mask = torch.zeros(batch.numel(), dtype=torch.bool)
        for g in torch.unique(group).tolist():  # sorted, so the draws are deterministic given the generator
            idx = torch.nonzero(group == g).squeeze(1)
            if self.mask_groups == "level":
                r = math.cos(math.pi / 2 * float(torch.rand(1, generator=generator)))
            else:
                r = 0.0
                while r < 0.5:  # rejection sampling of the truncated normal
                    r = 1.0 - abs(float(torch.randn(1, generator=generator))) * 0.25
            pick = torch.randperm(idx.numel(), generator=generator)[: max(1, math.ceil(r * idx.numel()))]
            mask[idx[pick]] = True
        return mask

    # ------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(
        self,
        num_samples: int = 1,
        *,
        iterations: tuple[int, ...] | None = None,
        temperature: tuple[float, ...] | float = 1.0,
        remask_after: float = 0.7,
        remask_fraction: tuple[float, float] = (0.2, 0.1),
        generator: torch.Generator | None = None,
    ) -> Octree:
        """Sample ``num_samples`` octrees level by level (OctGPT's token-parallel decoding).

        Each level starts fully masked; over ``iterations[level]`` steps its tokens are revealed in a random
        order, floor(n·cos(π/2·(i+1)/N)) staying masked after step i (cosine schedule), sampled at temperature
        T₀·(N−i)/N (``temperature`` T₀ per level or one value). From step ``remask_after``·N on, a fraction
        (``remask_fraction``: split tokens, code tokens) of the revealed tokens the model now disagrees with are
        re-sampled, least likely first. Codes come last at depth_stop; the VQVAE decodes the finer levels.
        Returns an Octree in grid units (origin 0, voxel 1).
        """
        levels = self.depth_stop - self.full_depth + 1 + (1 if self.vqvae is not None else 0)
        iters = tuple(iterations) if iterations is not None else (8,) * levels
        temps = (temperature,) * levels if isinstance(temperature, (int, float)) else tuple(temperature)
        if len(iters) != levels or len(temps) != levels:
            raise OctformerError(
                f"iterations/temperature: expected {levels} values (one per level), got {len(iters)} and {len(temps)}"
            )
        if any(int(i) < 1 for i in iters) or any(float(t) < 0 for t in temps):
            raise OctformerError(f"iterations/temperature: expected >= 1 and >= 0, got {iters} and {temps}")
        if not 0.0 <= remask_after <= 1.0 or len(remask_fraction) != 2 or not all(0 <= f <= 1 for f in remask_fraction):
            raise OctformerError(
                f"remask_after/remask_fraction: expected values in [0, 1], got {remask_after} and {remask_fraction}"
            )
        trees = [self._generate_one(iters, temps, remask_after, remask_fraction, generator) for _ in range(num_samples)]
        return Octree.merge(trees) if len(trees) > 1 else trees[0]

    def _generate_one(self, iters, temps, remask_after, remask_fraction, generator) -> Octree:
        device = self.norm.weight.device
        fd = self.full_depth
        flags: list[np.ndarray] = []  # per level
        keys = [np.arange(8**fd, dtype=np.int64)]  # keys of the current level's nodes
        seq = {"batch": [], "level": [], "value": [], "xyz": [], "depth": []}
        for li, d in enumerate(range(fd, self.depth_stop + 1)):
            n = keys[-1].shape[0]
            base = len(seq["value"])
            seq["batch"] += [0] * n
            seq["level"] += [li] * n
            seq["value"] += [0] * n
            seq["xyz"] += key_to_xyz(keys[-1]).astype(np.int64).tolist()
            seq["depth"] += [d] * n
            vals = self._reveal(seq, base, n, iters[li], temps[li], remask_after, remask_fraction[0], generator,
                                code=False)
            f = vals.numpy().astype(np.int64)
            if d > fd:  # every non-empty parent keeps at least one child
                f = f.reshape(-1, 8)
                empty = f.sum(1) == 0
                f[empty, 0] = 1
                f = f.reshape(-1)
            elif f.sum() == 0:
                f[0] = 1
            seq["value"][base : base + n] = f.tolist()
            flags.append(f)
            parents = keys[-1][f == 1]
            if d < self.depth_stop:
                keys.append((parents[:, None] * 8 + np.arange(8)[None, :]).reshape(-1))
        if self.vqvae is not None:
            parents = keys[-1][flags[-1] == 1]
            n = parents.shape[0]
            base = len(seq["value"])
            seq["batch"] += [0] * n
            seq["level"] += [self.num_levels - 1] * n
            seq["value"] += [-1] * n
            seq["xyz"] += key_to_xyz(parents).astype(np.int64).tolist()
            seq["depth"] += [self.depth_stop] * n
            bits = self._reveal(seq, base, n, iters[-1], temps[-1], remask_after, remask_fraction[1], generator,
                                code=True)
            codes = (bits.to(self.norm.weight.dtype) * 2 - 1) / math.sqrt(self.code_bits)
            coarse = octf.from_split_flags([np.concatenate(flags).astype(np.uint8)], self.depth_stop, fd)
            for fl in self.vqvae.decode_flags(codes.to(device), OctreeContext(coarse, device)):
                flags.append(fl.cpu().numpy())
        all_flags = np.concatenate(flags).astype(np.uint8)
        return octf.from_split_flags([all_flags], self.depth, fd)

    def _reveal(self, seq, base, n, steps, temp, remask_after, remask_fraction, generator, code: bool) -> torch.Tensor:
        """Decode tokens base..base+n (the last level of ``seq``): random reveal order, cosine schedule,
        linearly decaying temperature, late re-sampling of doubtful revealed tokens. Returns their values."""
        device = self.norm.weight.device
        dtype = self.norm.weight.dtype
        s = {k: np.asarray(v) for k, v in seq.items() if k != "value"}
        value = torch.as_tensor(np.asarray(seq["value"]), dtype=torch.long)
        total = value.shape[0]
        masked = torch.ones(n, dtype=torch.bool)
        result = torch.zeros(n, self.code_bits, dtype=torch.long) if code else torch.zeros(n, dtype=torch.long)
        order = torch.randperm(n, generator=generator)  # reveal order: order[:k] are the last k to be revealed
        for i in range(steps):
            s["value"] = value.numpy()
            mask = torch.zeros(total, dtype=torch.bool)
            mask[base : base + n] = masked
            codes = None
            if code:
                codes = ((result.to(dtype) * 2 - 1) / math.sqrt(self.code_bits)).to(device)
            out = self._run(s, codes, mask.to(device)).cpu()[base : base + n]
            still = torch.zeros(n, dtype=torch.bool)
            keep = math.floor(n * math.cos(math.pi / 2 * (i + 1) / steps)) if i + 1 < steps else 0
            keep = max(0, min(keep, int(masked.sum()) - 1))
            still[order[:keep]] = True
            predict = masked & ~still
            logits = out[:, 2:] if code else out[:, :2]
            if i >= remask_after * steps and remask_fraction > 0:
                predict |= _doubtful(logits, result, ~masked, remask_fraction, code)
            t = max(temp * (steps - i) / steps, 1e-4)
            if code:
                sample = (torch.rand(logits.shape, generator=generator) < torch.sigmoid(logits / t)).long()
            else:
                sample = torch.multinomial(torch.softmax(logits / t, dim=1), 1, generator=generator).squeeze(1)
            result[predict] = sample[predict]
            masked = still
            if not code:
                value[base : base + n] = result
        return result


def _doubtful(logits: torch.Tensor, result: torch.Tensor, revealed: torch.Tensor, fraction: float, code: bool):
    """Revealed tokens to re-sample: the given ``fraction`` of those whose value differs from the model's
    current most likely one, least likely (split) / most disagreeing bits (codes) first."""
    if code:
        wrong = ((logits > 0).long() != result).sum(1)
        score = wrong.to(logits.dtype)
    else:
        wrong = (logits.argmax(1) != result).long()
        score = -logits.gather(1, result[:, None]).squeeze(1) + logits.logsumexp(1)  # -log p(current value)
    wrong = torch.where(revealed, wrong, torch.zeros_like(wrong))
    count = int(int((wrong > 0).sum()) * fraction)
    picked = torch.zeros(revealed.shape, dtype=torch.bool)
    if count > 0:
        score = torch.where(wrong > 0, score, torch.full_like(score, float("-inf")))
        picked[torch.topk(score, count).indices] = True
    return picked


def sinusoid_3d(pos: torch.Tensor, dim: int, base: float = 100.0) -> torch.Tensor:
    """Absolute 3D sinusoidal embedding (N, dim) of (N, 3) positions: dim/6 frequencies base^(-k/(dim/6)) per axis."""
    n = dim // 6
    freqs = base ** (-torch.arange(n, dtype=pos.dtype, device=pos.device) / n)
    ang = pos[:, :, None] * freqs  # (N, 3, n)
    return torch.cat([torch.sin(ang), torch.cos(ang)], -1).reshape(pos.shape[0], -1)


def _put_rows(x: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """x with the rows selected by a bool mask replaced by ``values`` (differentiable)."""
    out = x.clone()
    out[rows] = values
    return out


def _make_vqvae(arch, depth: int, depth_stop: int, code_bits: int, channels: int, checkpoint: bool) -> nn.Module:
    if isinstance(arch, dict):
        return OctGPTVQVAE(depth, depth_stop, code_bits, **{"checkpoint": checkpoint, **arch})
    if arch == "simple":
        return OctreeVQVAE(depth, depth_stop, code_bits, channels)
    if arch in VQVAE_CONFIGS:
        return OctGPTVQVAE.from_config(arch, depth, depth_stop, code_bits, checkpoint=checkpoint)
    raise OctformerError(f"vq_arch: expected 'simple', one of {sorted(VQVAE_CONFIGS)} or a dict, got {arch!r}")


def _make(defaults: dict, overrides: dict) -> OctGPT:
    unknown = set(overrides) - set(OctGPT.__init__.__kwdefaults__)
    if unknown:
        raise OctformerError(f"overrides: unknown OctGPT options {sorted(unknown)}")
    return OctGPT(**{**defaults, **overrides})


@register_model
def octgpt_shapenet(**overrides) -> OctGPT:
    """Published ShapeNet size: depth 8, full depth 3, split flags for depths 3–6 + 32-bit codes for the
    non-empty depth-6 nodes (the VQVAE decodes depths 7–8), 24 blocks of width 768 with 8 heads, windows K = 2048,
    dilation 2; OctGPT's "vqvae_large" VQVAE (33.8M parameters, O-CNN encoder + graph U-Net decoder)."""
    return _make(dict(depth=8, full_depth=3, depth_stop=6, dim=768, layers=24, heads=8, window=2048, dilation=2,
                      vq_arch="vqvae_large", checkpoint=True), overrides)


@register_model
def octgpt_small(**overrides) -> OctGPT:
    """Small OctGPT: width 384, 12 blocks, 8 heads (head dim 48), otherwise the ShapeNet layout."""
    return _make(dict(depth=8, full_depth=3, depth_stop=6, dim=384, layers=12, heads=8, window=1024, dilation=2,
                      vq_channels=32, checkpoint=True), overrides)


@register_model
def octgpt_tiny(**overrides) -> OctGPT:
    """Test-size OctGPT: depth 5, full depth 2, split flags for depths 2–4 + 8-bit codes at depth 4, width 48."""
    return _make(dict(depth=5, full_depth=2, depth_stop=4, dim=48, layers=4, heads=2, window=64, dilation=2,
                      code_bits=8, vq_channels=16, drop_path=0.0), overrides)
