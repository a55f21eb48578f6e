"""Volt (Volume Transformer, Yilmaz et al. 2026): a plain ViT over volumetric patch tokens.

voxelise (grid ``voxel_size``) → non-overlapping K³ voxel patches, occupied ones only →
linear patch embedding of the (K³·C_in) patch buffer → pre-norm blocks with global
attention per sample, axial 3D RoPE on integer patch indices (head pairs 12/12/8 over
x/y/z, θ = 100) and QK-norm → patch decoder ("transposed conv" Linear(128 → K³·128),
each voxel reads the row of its in-patch offset) → per-voxel segmentation head.

Optional distillation (Volt's recipe): with ``distill_classes`` a separate linear distill
head on the decoder features learns a frozen sparse-convolution teacher's argmax
pseudo-labels (:class:`octformer.models.spconv_teacher.SpconvUNet`, needs spconv) or its
softened logits; ``training_loss`` mixes it with the ground-truth loss (0.5 / 0.5).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from octformer.errors import OctformerError
from octformer.models._base import OctreeModel, as_point_list
from octformer.models._registry import register_model
from octformer.nn import OctreeContext, TransformerBlock, global_plan
from octformer.octree import Octree, build_octree

__all__ = ["Volt", "volt_s", "volt_b", "volt_tiny", "distillation_loss"]

_UNPATCH_CHUNK = 1 << 24  # elements of the (tokens, K³·c) unpatch output materialised at once


class Volt(OctreeModel):
    """Volt segmentation backbone; ``forward(octree)`` → (V, num_classes) logits per occupied voxel.

    Args:
        in_channels: extra per-point feature channels (e.g. 1 for lidar intensity); the
            voxel input is [mean xyz − cloud mean (in units of ``xyz_scale`` m), features].
        num_classes: segmentation classes. dim / layers / heads: D, blocks, H.
        patch_size: K (voxels per patch side). voxel_size: metres per voxel.
        rope_split / rope_theta: axial RoPE pairs per axis and base.
        decoder_dim: width of the patch decoder (128 in Volt).
        distill_classes: classes of a teacher to distil from (0: no distill head).
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 19,
        dim: int = 384,
        layers: int = 12,
        heads: int = 6,
        patch_size: int = 5,
        voxel_size: float = 0.05,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.3,
        rope_split: tuple[int, int, int] | None = (12, 12, 8),
        rope_theta: float = 100.0,
        decoder_dim: int = 128,
        xyz_scale: float = 10.0,
        distill_classes: int = 0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim % heads:
            raise OctformerError(f"dim: expected a multiple of heads={heads}, got {dim}")
        head_dim = dim // heads
        if rope_split is not None and 2 * sum(rope_split) > head_dim:
            raise OctformerError(f"rope_split: {rope_split} needs {2 * sum(rope_split)} channels, head_dim is {head_dim}")
        if voxel_size <= 0 or patch_size < 1:
            raise OctformerError(f"voxel_size/patch_size: expected positive values, got {voxel_size}, {patch_size}")
        self.config = dict(
            in_channels=in_channels, num_classes=num_classes, dim=dim, layers=layers, heads=heads,
            patch_size=patch_size, voxel_size=voxel_size, mlp_ratio=mlp_ratio, drop_path=drop_path,
            rope_split=rope_split, rope_theta=rope_theta, decoder_dim=decoder_dim, xyz_scale=xyz_scale,
            distill_classes=distill_classes,
        )
        if isinstance(distill_classes, bool) or not isinstance(distill_classes, int) or distill_classes < 0:
            raise OctformerError(f"distill_classes: expected a non-negative integer, got {distill_classes!r}")
        self.in_channels = in_channels
        self.voxel_channels = 3 + in_channels
        self.patch_size = patch_size
        self.voxel_size = float(voxel_size)
        self.xyz_scale = float(xyz_scale)
        k3 = patch_size**3
        self.patch_embed = nn.Linear(k3 * self.voxel_channels, dim)
        rates = [drop_path * i / max(layers - 1, 1) for i in range(layers)]
        self.blocks = nn.ModuleList(
            TransformerBlock(
                dim, heads, mlp_ratio=mlp_ratio, drop_path=rates[i], rope="axial", rope_split=rope_split,
                rope_theta=rope_theta, qk_norm=True, backend=backend,
            )
            for i in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.decoder_in = nn.Sequential(
            nn.BatchNorm1d(dim), nn.GELU(), nn.Linear(dim, decoder_dim), nn.BatchNorm1d(decoder_dim), nn.GELU()
        )
        self.unpatch = nn.Linear(decoder_dim, k3 * decoder_dim, bias=False)  # transposed conv, stride = kernel = K
        self.unpatch_bias = nn.Parameter(torch.zeros(decoder_dim))
        self.decoder_out = nn.Sequential(nn.BatchNorm1d(decoder_dim), nn.GELU())
        self.head = nn.Linear(decoder_dim, num_classes)
        self.distill_head = nn.Linear(decoder_dim, distill_classes) if distill_classes else None

    # ------------------------------------------------------------------ input
    def build_input(self, points, features=None) -> Octree:
        """Voxelise each cloud on an exact ``voxel_size`` grid anchored at its minimum corner (one batch)."""
        pts, feats = as_point_list(points, features)
        if self.in_channels and feats is None:
            raise OctformerError(f"features: this Volt takes {self.in_channels} feature channels per point, got none")
        if feats is not None and any(f.shape[1] != self.in_channels for f in feats):
            raise OctformerError(
                f"features: expected {self.in_channels} channels per point, got {[f.shape[1] for f in feats]}"
            )
        vs = self.voxel_size
        depth = 1
        for p in pts:
            cells = int(np.floor((p.max(0) - p.min(0)) / vs).max()) + 1
            depth = max(depth, int(cells - 1).bit_length(), 1)
        trees = []
        for i, p in enumerate(pts):
            lo = p.min(0)
            rel = ((p - p.mean(0)) / self.xyz_scale).astype(np.float32)
            f = rel if feats is None else np.concatenate([rel, feats[i]], axis=1)
            trees.append(
                build_octree(p, depth, bbox=(lo, lo + vs * (1 << depth)), features=f, full_depth=1)
            )
        return self.merge(trees)

    # ---------------------------------------------------------------- forward
    def patchify(self, ctx: OctreeContext):
        """Occupied patches: (T, 4) (sample, px, py, pz) rows, voxel→patch inverse (V,), in-patch offset (V,)."""
        d = ctx.depth
        xyz, batch = ctx.xyz(d), ctx.batch(d)
        k = self.patch_size
        patch = torch.div(xyz, k, rounding_mode="floor")
        r = xyz - patch * k
        offset = (r[:, 0] * k + r[:, 1]) * k + r[:, 2]
        rows = torch.cat([batch[:, None], patch], dim=1)
        uniq, inverse = torch.unique(rows, dim=0, return_inverse=True)  # sorted: sample-major
        return uniq, inverse, offset

    def forward(self, octree: Octree) -> torch.Tensor:
        """(V, num_classes) logits for the occupied voxels (leaf order of ``octree``)."""
        return self.head(self.voxel_features(octree))

    def forward_with_distill(self, octree: Octree) -> tuple[torch.Tensor, torch.Tensor]:
        """(V, num_classes) segmentation logits and (V, distill_classes) distill-head logits from one pass."""
        if self.distill_head is None:
            raise OctformerError("distill_classes: this Volt has no distill head (build it with distill_classes > 0)")
        h = self.voxel_features(octree)
        return self.head(h), self.distill_head(h)

    def training_loss(self, octree: Octree, point_labels: torch.Tensor, teacher: nn.Module | None = None, *,
                      distill_weight: float = 0.5, mode: str = "hard", temperature: float = 1.0,
                      ignore_index: int = -1, class_weight: torch.Tensor | None = None) -> dict:
        """Per-point cross entropy, plus (with a ``teacher``) the distillation loss on the voxels:
        total = (1 − w)·CE + w·KD with w = ``distill_weight`` (Volt: 0.5). The teacher runs frozen
        (no_grad, eval) on the same octree and must give one row per voxel."""
        point_leaf = torch.as_tensor(np.asarray(octree.point_leaf), device=self.head.weight.device)
        if teacher is None:
            logits = self.forward(octree)
            ce = F.cross_entropy(logits[point_leaf], point_labels, ignore_index=ignore_index, weight=class_weight)
            return {"loss": ce, "ce": ce}
        logits, student = self.forward_with_distill(octree)
        was_training = teacher.training
        teacher.eval()
        with torch.no_grad():
            teacher_logits = teacher(octree)
        teacher.train(was_training)
        ce = F.cross_entropy(logits[point_leaf], point_labels, ignore_index=ignore_index, weight=class_weight)
        kd = distillation_loss(student, teacher_logits, mode=mode, temperature=temperature)
        return {"loss": (1 - distill_weight) * ce + distill_weight * kd, "ce": ce, "kd": kd}

    def voxel_features(self, octree: Octree) -> torch.Tensor:
        """(V, decoder_dim) decoder features of the occupied voxels, before the heads."""
        feats = octree.features
        if feats is None or np.asarray(feats).shape[1] != self.voxel_channels:
            raise OctformerError(
                f"octree.features: expected ({self.voxel_channels}) channels per voxel (use Volt.build_input), "
                f"got {None if feats is None else np.asarray(feats).shape}"
            )
        device = self.patch_embed.weight.device
        ctx = OctreeContext(octree, device)
        x_vox = torch.as_tensor(np.asarray(feats), device=device, dtype=self.patch_embed.weight.dtype)
        uniq, inverse, offset = self.patchify(ctx)
        t, k3 = uniq.shape[0], self.patch_size**3
        buf = x_vox.new_zeros(t, k3, self.voxel_channels)
        buf[inverse, offset] = x_vox
        x = self.patch_embed(buf.reshape(t, -1))
        tok_batch = uniq[:, 0]
        pos = uniq[:, 1:].to(x.dtype)
        plan = global_plan(tok_batch)
        for blk in self.blocks:
            x = blk(x, plan, tok_batch, pos=pos)
        x = self.norm(x)
        return self.decode(x, inverse, offset)

    def decode(self, tokens: torch.Tensor, inverse: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """Patch tokens (T, D) → voxel features (V, c): each voxel reads its offset's row of the unpatch GEMM.

        The (T, K³·c) unpatch output is computed in token chunks of at most ``_UNPATCH_CHUNK``
        elements, so memory stays O(V·c) rather than O(T·K³·c).
        """
        h = self.decoder_in(tokens)
        t, c = h.shape
        k3 = self.patch_size**3
        order = torch.argsort(inverse, stable=True)  # voxels grouped by their patch token
        inv_sorted = inverse[order]
        step = max(1, _UNPATCH_CHUNK // (k3 * c))
        parts = []
        for t0 in range(0, t, step):
            t1 = min(t, t0 + step)
            lo, hi = torch.searchsorted(inv_sorted, torch.tensor([t0, t1], device=inverse.device)).tolist()
            dense = self.unpatch(h[t0:t1]).view(t1 - t0, k3, c)
            vox = order[lo:hi]
            parts.append(dense[inverse[vox] - t0, offset[vox]])
        y = torch.empty_like(order)
        y[order] = torch.arange(order.numel(), device=order.device)
        y = torch.cat(parts)[y]  # back to voxel order
        return self.decoder_out(y + self.unpatch_bias)

    @staticmethod
    def point_logits(voxel_logits: torch.Tensor, octree: Octree) -> torch.Tensor:
        """(N, classes) logits per input point (each point reads its voxel)."""
        return voxel_logits[torch.as_tensor(np.asarray(octree.point_leaf), device=voxel_logits.device)]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, mode: str = "hard",
                      temperature: float = 1.0) -> torch.Tensor:
    """Knowledge distillation per row: "hard" = cross entropy to the teacher's argmax (Volt's
    pseudo-labels), "soft" = T²·KL(softmax(teacher/T) ‖ softmax(student/T)) (Hinton et al.).
    The teacher is treated as a constant."""
    if student_logits.shape != teacher_logits.shape:
        raise OctformerError(
            f"teacher_logits: expected the student's shape {tuple(student_logits.shape)}, got {tuple(teacher_logits.shape)}"
        )
    teacher_logits = teacher_logits.detach()
    if mode == "hard":
        return F.cross_entropy(student_logits, teacher_logits.argmax(1))
    if mode == "soft":
        if not temperature > 0:
            raise OctformerError(f"temperature: expected a positive number, got {temperature!r}")
        t = float(temperature)
        log_p = F.log_softmax(student_logits / t, dim=1)
        log_q = F.log_softmax(teacher_logits / t, dim=1)
        return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * t * t
    raise OctformerError(f"mode: expected 'hard' or 'soft', got {mode!r}")


def _make(defaults: dict, overrides: dict) -> Volt:
    unknown = set(overrides) - set(Volt.__init__.__kwdefaults__)
    if unknown:
        raise OctformerError(f"overrides: unknown Volt options {sorted(unknown)}")
    return Volt(**{**defaults, **overrides})


@register_model
def volt_s(**overrides) -> Volt:
    """Volt-S: D = 384, 12 layers, 6 heads (head dim 64), K = 5, outdoor 5 cm voxels."""
    return _make(dict(dim=384, layers=12, heads=6), overrides)


@register_model
def volt_b(**overrides) -> Volt:
    """Volt-B: D = 768, 12 layers, 12 heads (head dim 64)."""
    return _make(dict(dim=768, layers=12, heads=12), overrides)


@register_model
def volt_tiny(**overrides) -> Volt:
    """Test-size Volt: D = 64, 2 layers, 2 heads (head dim 32, RoPE pairs 6/6/4), 25 cm voxels."""
    return _make(
        dict(dim=64, layers=2, heads=2, rope_split=(6, 6, 4), voxel_size=0.25, in_channels=0, decoder_dim=32,
             drop_path=0.1),
        overrides,
    )


def volt_param_formula(dim: int, layers: int, heads: int, in_channels: int, num_classes: int, patch_size: int = 5,
                       decoder_dim: int = 128, mlp_ratio: float = 4.0) -> int:
    """Closed-form parameter count of :class:`Volt` (an independent check of the module tree)."""
    k3 = patch_size**3
    hd = dim // heads
    hidden = int(dim * mlp_ratio)
    block = (
        2 * 2 * dim  # two LayerNorms
        + dim * 3 * dim + 3 * dim + dim * dim + dim  # qkv + proj
        + 2 * 2 * hd  # QK-norm
        + dim * hidden + hidden + hidden * dim + dim  # MLP
    )
    embed = k3 * (3 + in_channels) * dim + dim
    dec = 2 * dim + dim * decoder_dim + decoder_dim + 2 * decoder_dim + decoder_dim * k3 * decoder_dim
    dec += decoder_dim + 2 * decoder_dim + decoder_dim * num_classes + num_classes
    return embed + layers * block + 2 * dim + dec

