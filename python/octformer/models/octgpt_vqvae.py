"""OctGPT's published VQVAE (Wei et al., SIGGRAPH 2025) on our octree primitives, and the BSQ quantiser.

The network, as released ("vqvae" / "vqvae_big" / "vqvae_large" in OctGPT's ``utils/builder.py``; the
ShapeNet configuration uses "vqvae_large", code depth 6 of 8, 32-bit BSQ codes):

* **Encoder** (O-CNN): a 3×3×3 octree conv (in_channels → C₀) + GroupNorm + ReLU at the full depth, then per
  stage ``enc_blocks[i]`` residual blocks (two 3×3×3 convs, GroupNorm, ReLU; middle width C/bottleneck) and,
  between stages, a stride-2 kernel-2 octree conv + GroupNorm + ReLU; ``len(enc_channels) - 1`` halvings go from
  ``depth`` to the code depth. A linear layer maps the last width to the code bits, which BSQ quantises.
* **Decoder** (graph U-Net of dual octree graph networks): a linear layer maps the codes back to features at the
  code depth; a small encoder (``dec_enc_channels``/``dec_enc_blocks``) of graph residual blocks goes down to
  code depth - (stages - 1) with graph downsampling (a learned 8-children → parent map, then a 1×1 conv +
  GroupNorm + ReLU where the width changes); the decoder (``dec_dec_channels``/``dec_dec_blocks``) comes back up
  to ``depth`` with graph upsampling (a learned parent → 8-children map, 1×1 conv where the width changes) and
  skip additions from the small encoder. Its last ``pred_stages`` stages predict per node whether it is
  non-empty (2 logits, a 1×1 conv 64 + GroupNorm + ReLU + linear head) and its last ``sdf_stages`` stages
  regress 4 MPU SDF coefficients with a head of the same shape.
* A graph convolution has 7 edge types (6 face directions + self); every node's input is its features with a
  one-hot node type appended, and the weight is (7·(C_in + node types), C_out).

Parameter counts (tests/test_models.py): "vqvae_large" 33,802,418 (OctGPT: 33.9M), "vqvae_big" 7,963,666
(8.0M), "vqvae" 4,211,922 (4.2M); every weight shape follows the published layers.

Where this implementation differs from the published network (the layer shapes do not):

* **Graphs.** OctGPT's decoder convolves over the *dual octree* graph of a depth (that depth's nodes plus the
  leaves of all coarser depths, with several neighbours per direction averaged). Ours is the single-depth graph
  of the depth's nodes (the 8 children of every non-empty node one depth up, empty ones included) with at most
  one face neighbour per direction, found by hashing cell coordinates. All nodes of such a graph share one type,
  so the node-type one-hot is a constant column (it acts as a per-edge-type bias; the rows of the other types get
  zero gradients). Downsampling gives the empty nodes of the coarser depth zero features (in the dual graph they
  keep their own leaf features), and upsampling creates children only for non-empty nodes (coarser leaves are
  not carried along).
* **Encoder support.** The O-CNN encoder runs on the non-empty nodes only (OctGPT: ``nempty=False``, the empty
  siblings too), and its input is (1, position inside the code-depth cell) rather than normals + displacement.
* **SDF.** The SDF heads exist (their parameters count) but are trained only when SDF targets are given to
  :meth:`OctGPTVQVAE.reconstruction_loss`; the signal at a query point is the linear function (value + gradient
  · local offset) of the one cell containing it at each SDF depth, not OctGPT's B-spline partition-of-unity
  blend of neighbouring cells, and no mesh is extracted.
* **Losses.** Split labels: cross-entropy per predicted depth (teacher-forced on the input octree's structure);
  BSQ: our bit-entropy penalty (:func:`bsq_entropy_loss`) in place of OctGPT's grouped soft entropy and commit
  loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from octformer.errors import OctformerError
from octformer.nn import OctreeContext, OctreeConv

__all__ = [
    "OctGPTVQVAE",
    "VQVAE_CONFIGS",
    "bsq_quantize",
    "bsq_entropy_loss",
    "face_neighbors",
]

#: OctGPT's released VQVAE sizes (utils/builder.py); "vqvae" is the default class's own configuration.
VQVAE_CONFIGS: dict[str, dict] = {
    "vqvae": dict(bottleneck=2, enc_channels=(32, 32, 64), enc_blocks=(1, 1, 1),
                  dec_enc_channels=(32, 64, 128, 256), dec_enc_blocks=(1, 2, 4, 2),
                  dec_dec_channels=(256, 128, 64, 32, 32, 32), dec_dec_blocks=(2, 4, 2, 2, 1, 1)),
    "vqvae_big": dict(bottleneck=1, enc_channels=(32, 32, 64), enc_blocks=(2, 2, 2),
                      dec_enc_channels=(32, 64, 128, 256), dec_enc_blocks=(2, 4, 4, 2),
                      dec_dec_channels=(256, 128, 64, 32, 32, 32), dec_dec_blocks=(2, 4, 4, 2, 2, 2)),
    "vqvae_large": dict(bottleneck=1, enc_channels=(32, 32, 64), enc_blocks=(2, 2, 2),
                        dec_enc_channels=(64, 128, 256, 512), dec_enc_blocks=(2, 4, 8, 2),
                        dec_dec_channels=(512, 256, 128, 64, 32, 32), dec_dec_blocks=(2, 4, 8, 2, 2, 2)),
}

# child slot k of a node sits at 2·xyz + (k>>2 & 1, k>>1 & 1, k & 1) (Morton order, x most significant)
_CHILD_OFFSETS = torch.tensor([[(k >> 2) & 1, (k >> 1) & 1, k & 1] for k in range(8)], dtype=torch.int64)
_HEAD_CHANNELS = 64


def bsq_quantize(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary spherical quantisation: (M, L) → (codes ±1/√L with a straight-through gradient, bits {0, 1})."""
    u = F.normalize(z, dim=-1)
    scale = 1.0 / math.sqrt(z.shape[-1])
    q = torch.where(u >= 0, scale, -scale)
    return u + (q - u).detach(), (u >= 0).long()


def bsq_entropy_loss(z: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Per-code bit entropy (pushed down) minus codebook bit entropy (pushed up), from soft bit probabilities."""
    u = F.normalize(z, dim=-1)
    p = torch.sigmoid(4.0 * u * math.sqrt(z.shape[-1]) / tau)

    def h(t):
        t = t.clamp(1e-6, 1 - 1e-6)
        return -(t * t.log() + (1 - t) * (1 - t).log())

    return h(p).sum(-1).mean() - h(p.mean(0)).sum()


# ----------------------------------------------------------------------------- graphs over one depth
def _cell_keys(xyz: torch.Tensor, batch: torch.Tensor, depth: int) -> torch.Tensor:
    r = 1 << depth
    return ((batch * r + xyz[:, 0]) * r + xyz[:, 1]) * r + xyz[:, 2]


def _lookup(xyz: torch.Tensor, batch: torch.Tensor, depth: int, qxyz: torch.Tensor, qbatch: torch.Tensor):
    """Row of each query cell (qxyz, qbatch) among the cells (xyz, batch) of ``depth``, -1 where absent."""
    if xyz.shape[0] == 0:
        return torch.full(qbatch.shape, -1, dtype=torch.int64, device=qbatch.device)
    keys = _cell_keys(xyz, batch, depth)
    sorted_keys, order = torch.sort(keys)
    inside = ((qxyz >= 0) & (qxyz < (1 << depth))).all(1)
    q = _cell_keys(qxyz.clamp(0, (1 << depth) - 1), qbatch, depth)
    pos = torch.searchsorted(sorted_keys, q).clamp(max=keys.shape[0] - 1)
    hit = inside & (sorted_keys[pos] == q)
    return torch.where(hit, order[pos], torch.full_like(pos, -1))


def face_neighbors(xyz: torch.Tensor, batch: torch.Tensor, depth: int) -> torch.Tensor:
    """(N, 6) row of the -x, +x, -y, +y, -z, +z face neighbour of each cell (same sample and depth), -1 if none."""
    cols = []
    for axis in range(3):
        for step in (-1, 1):
            q = xyz.clone()
            q[:, axis] += step
            cols.append(_lookup(xyz, batch, depth, q, batch))
    return torch.stack(cols, 1)


@dataclass
class _Level:
    """The nodes of one depth that a stage works on, with what its layers need."""

    depth: int
    batch: torch.Tensor  # (N,) sample of each node
    num_samples: int
    neighbors: torch.Tensor  # (N, 27) octree conv table or (N, 6) face neighbours
    xyz: torch.Tensor | None = None  # (N, 3) cell coordinates (graph levels)
    nonempty: torch.Tensor | None = None  # (N,) bool, graph levels whose structure is known
    extra: dict = field(default_factory=dict)


def _graph_level(depth: int, parent_xyz: torch.Tensor, parent_batch: torch.Tensor, num_samples: int,
                 nonempty: torch.Tensor | None) -> _Level:
    """The 8 children of every given (non-empty) parent, in parent order × child slot = key order."""
    off = _CHILD_OFFSETS.to(parent_xyz.device)
    xyz = (2 * parent_xyz[:, None, :] + off[None]).reshape(-1, 3)
    batch = parent_batch.repeat_interleave(8)
    return _Level(depth, batch, num_samples, face_neighbors(xyz, batch, depth), xyz, nonempty)


def _ctx_graph_level(ctx: OctreeContext, depth: int) -> _Level:
    """Graph level of ``depth`` with the structure of the octree in ``ctx``."""
    nonempty = ctx.children(depth).reshape(-1) >= 0
    return _graph_level(depth, ctx.xyz(depth - 1), ctx.batch(depth - 1), ctx.batch_size, nonempty)


# ----------------------------------------------------------------------------- layers
def _groups(channels: int, graph: bool) -> int:
    """GroupNorm groups as published: 32 in the O-CNN encoder; 32, or C/4 below 128 channels, in the graph net."""
    g = max(1, min(32, channels // 4)) if graph else 32
    return math.gcd(g, channels)


class GroupNorm(nn.Module):
    """Group normalisation per sample over the nodes of one depth (statistics per sample and channel group)."""

    def __init__(self, channels: int, groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, lv: _Level) -> torch.Tensor:
        n, c = x.shape
        g = self.groups
        xg = x.reshape(n, g, c // g)
        count = torch.bincount(lv.batch, minlength=lv.num_samples).clamp(min=1).to(x.dtype)[:, None] * (c // g)
        mean = x.new_zeros(lv.num_samples, g).index_add_(0, lv.batch, xg.sum(-1)) / count
        xc = xg - mean[lv.batch][:, :, None]
        var = x.new_zeros(lv.num_samples, g).index_add_(0, lv.batch, (xc * xc).sum(-1)) / count
        y = xc * torch.rsqrt(var[lv.batch] + self.eps)[:, :, None]
        return y.reshape(n, c) * self.weight + self.bias


class _ConvNorm(nn.Module):
    """3×3×3 octree conv (no bias) + GroupNorm (+ ReLU)."""

    def __init__(self, cin: int, cout: int, relu: bool = True) -> None:
        super().__init__()
        self.conv = OctreeConv(cin, cout, bias=False)
        self.norm = GroupNorm(cout, _groups(cout, graph=False))
        self.relu = relu

    def forward(self, x: torch.Tensor, lv: _Level) -> torch.Tensor:
        y = self.norm(self.conv(x, lv.neighbors), lv)
        return F.relu(y) if self.relu else y


class OctreeResBlock(nn.Module):
    """O-CNN basic residual block: conv3 + GN + ReLU, conv3 + GN, identity skip, ReLU."""

    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        mid = channels // bottleneck
        self.a = _ConvNorm(channels, mid)
        self.b = _ConvNorm(mid, channels, relu=False)

    def forward(self, x: torch.Tensor, lv: _Level) -> torch.Tensor:
        return F.relu(x + self.b(self.a(x, lv), lv))


class OctreeStrideDown(nn.Module):
    """Stride-2, kernel-2 octree conv (no bias) + GN + ReLU from the non-empty nodes of d to those of d-1."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.linear = nn.Linear(8 * cin, cout, bias=False)
        self.norm = GroupNorm(cout, _groups(cout, graph=False))

    def forward(self, x: torch.Tensor, children: torch.Tensor, lv_parent: _Level) -> torch.Tensor:
        pad = torch.cat([x, x.new_zeros(1, x.shape[1])])
        idx = torch.where(children < 0, x.shape[0], children)
        return F.relu(self.norm(self.linear(pad[idx].reshape(children.shape[0], -1)), lv_parent))


class GraphConv(nn.Module):
    """Graph convolution with 7 edge types (-x, +x, -y, +y, -z, +z face neighbours, self) and a one-hot node
    type appended to the input: weight (7·(C_in + T), C_out), no bias; absent neighbours contribute zeros."""

    edge_types = 7

    def __init__(self, cin: int, cout: int, node_types: int) -> None:
        super().__init__()
        self.node_types = node_types if node_types > 1 else 0
        self.weight = nn.Parameter(torch.empty(self.edge_types * (cin + self.node_types), cout))
        bound = math.sqrt(3.0) * math.sqrt(2.0 / (self.edge_types * (cin + cout)))
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, lv: _Level) -> torch.Tensor:
        if self.node_types:
            # one depth per graph: every node has the finest type
            onehot = x.new_zeros(x.shape[0], self.node_types)
            onehot[:, -1] = 1
            x = torch.cat([x, onehot], 1)
        pad = torch.cat([x, x.new_zeros(1, x.shape[1])])
        idx = torch.where(lv.neighbors < 0, x.shape[0], lv.neighbors)
        cols = torch.cat([pad[idx], x[:, None]], 1)  # (N, 7, C)
        return cols.reshape(x.shape[0], -1) @ self.weight


class _GraphConvNorm(nn.Module):
    def __init__(self, cin: int, cout: int, node_types: int, relu: bool = True) -> None:
        super().__init__()
        self.conv = GraphConv(cin, cout, node_types)
        self.norm = GroupNorm(cout, _groups(cout, graph=True))
        self.relu = relu

    def forward(self, x: torch.Tensor, lv: _Level) -> torch.Tensor:
        y = self.norm(self.conv(x, lv), lv)
        return F.relu(y) if self.relu else y


class _Conv1x1Norm(nn.Module):
    """1×1 conv (no bias) + GroupNorm + ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cin, cout, bias=False)
        self.norm = GroupNorm(cout, _groups(cout, graph=True))

    def forward(self, x: torch.Tensor, lv: _Level) -> torch.Tensor:
        return F.relu(self.norm(self.linear(x), lv))


class GraphResBlock(nn.Module):
    """Basic graph residual block: graph conv + GN + ReLU, graph conv + GN, identity skip, ReLU."""

    def __init__(self, channels: int, node_types: int, bottleneck: int) -> None:
        super().__init__()
        mid = channels // bottleneck
        self.a = _GraphConvNorm(channels, mid, node_types)
        self.b = _GraphConvNorm(mid, channels, node_types, relu=False)

    def forward(self, x: torch.Tensor, lv: _Level) -> torch.Tensor:
        return F.relu(x + self.b(self.a(x, lv), lv))


class GraphDown(nn.Module):
    """8 children → parent (learned (8·C, C) map, no bias), zeros at empty parents, then a 1×1 conv if the
    width changes."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.linear = nn.Linear(8 * cin, cin, bias=False)
        self.proj = _Conv1x1Norm(cin, cout) if cin != cout else None

    def forward(self, x: torch.Tensor, lv_parent: _Level) -> torch.Tensor:
        y = self.linear(x.reshape(-1, 8 * x.shape[1]))  # one row per non-empty parent
        out = x.new_zeros(lv_parent.batch.shape[0], x.shape[1])
        out = out.index_put((torch.nonzero(lv_parent.nonempty).squeeze(1),), y)
        return self.proj(out, lv_parent) if self.proj is not None else out


class GraphUp(nn.Module):
    """Parent → its 8 children (learned (C, 8·C) map, no bias), 1×1 conv if the width changes."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cin, 8 * cin, bias=False)
        self.proj = _Conv1x1Norm(cin, cout) if cin != cout else None

    def forward(self, x_parents: torch.Tensor, lv_children: _Level) -> torch.Tensor:
        out = self.linear(x_parents).reshape(-1, x_parents.shape[1])
        return self.proj(out, lv_children) if self.proj is not None else out


class Head(nn.Module):
    """1×1 conv to 64 + GN + ReLU, then a linear layer (with bias) to ``out`` values per node."""

    def __init__(self, cin: int, out: int) -> None:
        super().__init__()
        self.mid = _Conv1x1Norm(cin, _HEAD_CHANNELS)
        self.out = nn.Linear(_HEAD_CHANNELS, out)

    def forward(self, x: torch.Tensor, lv: _Level) -> torch.Tensor:
        return self.out(self.mid(x, lv))


# ----------------------------------------------------------------------------- the VQVAE
class OctGPTVQVAE(nn.Module):
    """OctGPT's VQVAE: O-CNN encoder to one BSQ code per non-empty node at ``depth_stop``, graph U-Net decoder
    that predicts which nodes of depths ≥ depth_stop are non-empty (and regresses SDF coefficients there).

    Same interface as :class:`octformer.models.octgpt.OctreeVQVAE`: :meth:`encode`, :meth:`reconstruction_loss`,
    :meth:`decode_flags`. Build a published size with ``OctGPTVQVAE.from_config("vqvae_large", 8, 6)``.

    Args:
        depth / depth_stop: octree depth and code depth (``len(enc_channels) - 1`` below ``depth``).
        code_bits: BSQ code length. in_channels: encoder input width (4: 1 + position in the code cell).
        bottleneck: residual blocks' middle width = C / bottleneck.
        enc_channels / enc_blocks: O-CNN encoder stage widths and residual blocks, from ``depth`` down.
        dec_enc_channels / dec_enc_blocks: the decoder's small graph encoder, from ``depth_stop`` down.
        dec_dec_channels / dec_dec_blocks: the graph decoder, from the coarsest depth up to ``depth``
            (``len(dec_enc_channels) + depth - depth_stop`` stages).
        pred_stages / sdf_stages: how many last decoder stages have split / SDF heads (at least
            ``depth - depth_stop + 1`` split heads: the decoded depths need them).
        node_types: node types of the graph net's first stage (7 in OctGPT; stage types follow from it).
        checkpoint: recompute each residual block in the backward instead of keeping its activations (as
            OctGPT trains the VQVAE).
    """

    def __init__(
        self,
        depth: int,
        depth_stop: int,
        code_bits: int = 32,
        *,
        in_channels: int = 4,
        bottleneck: int = 1,
        enc_channels=(32, 32, 64),
        enc_blocks=(2, 2, 2),
        dec_enc_channels=(64, 128, 256, 512),
        dec_enc_blocks=(2, 4, 8, 2),
        dec_dec_channels=(512, 256, 128, 64, 32, 32),
        dec_dec_blocks=(2, 4, 8, 2, 2, 2),
        pred_stages: int = 3,
        sdf_stages: int = 3,
        node_types: int = 7,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        steps = depth - depth_stop
        if len(enc_channels) != steps + 1 or len(enc_blocks) != len(enc_channels):
            raise OctformerError(
                f"enc_channels/enc_blocks: expected {steps + 1} stages (depth {depth} → {depth_stop}), "
                f"got {len(enc_channels)} and {len(enc_blocks)}"
            )
        n_down = len(dec_enc_channels)
        if len(dec_enc_blocks) != n_down or not 1 <= n_down <= depth_stop:
            raise OctformerError(f"dec_enc_channels/dec_enc_blocks: expected 1..{depth_stop} stages of equal "
                                 f"length, got {len(dec_enc_channels)} and {len(dec_enc_blocks)}")
        n_up = n_down + steps
        if len(dec_dec_channels) != n_up or len(dec_dec_blocks) != n_up:
            raise OctformerError(f"dec_dec_channels/dec_dec_blocks: expected {n_up} stages, got "
                                 f"{len(dec_dec_channels)} and {len(dec_dec_blocks)}")
        if dec_dec_channels[0] != dec_enc_channels[-1]:
            raise OctformerError("dec_dec_channels[0]: expected the width of the last dec_enc stage")
        if not steps + 1 <= pred_stages <= n_up or not 0 <= sdf_stages <= n_up:
            raise OctformerError(f"pred_stages/sdf_stages: expected {steps + 1}..{n_up} and 0..{n_up}, "
                                 f"got {pred_stages} and {sdf_stages}")
        self.depth, self.depth_stop, self.code_bits = depth, depth_stop, code_bits
        self.checkpoint = checkpoint
        self.low = depth_stop - n_down + 1  # coarsest depth of the graph U-Net
        self.start_pred, self.start_sdf = n_up - pred_stages, n_up - sdf_stages

        # O-CNN encoder
        self.stem = _ConvNorm(in_channels, enc_channels[0])
        self.enc_stages = nn.ModuleList(
            nn.ModuleList(OctreeResBlock(c, bottleneck) for _ in range(n)) for c, n in zip(enc_channels, enc_blocks)
        )
        self.enc_downs = nn.ModuleList(OctreeStrideDown(a, b) for a, b in zip(enc_channels[:-1], enc_channels[1:]))
        self.pre_proj = nn.Linear(enc_channels[-1], code_bits)
        self.post_proj = nn.Linear(code_bits, dec_enc_channels[0])

        # graph U-Net decoder
        self.down_stages = nn.ModuleList(
            nn.ModuleList(GraphResBlock(c, node_types - i, bottleneck) for _ in range(n))
            for i, (c, n) in enumerate(zip(dec_enc_channels, dec_enc_blocks))
        )
        self.downs = nn.ModuleList(GraphDown(a, b) for a, b in zip(dec_enc_channels[:-1], dec_enc_channels[1:]))
        first = node_types - n_down + 1
        self.ups = nn.ModuleList(GraphUp(a, b) for a, b in zip(dec_dec_channels[:-1], dec_dec_channels[1:]))
        self.up_stages = nn.ModuleList(
            nn.ModuleList(GraphResBlock(c, first + i, bottleneck) for _ in range(n))
            for i, (c, n) in enumerate(zip(dec_dec_channels, dec_dec_blocks))
        )
        self.split_heads = nn.ModuleList(Head(c, 2) for c in dec_dec_channels[self.start_pred:])
        self.sdf_heads = nn.ModuleList(Head(c, 4) for c in dec_dec_channels[self.start_sdf:])

    @classmethod
    def from_config(cls, name: str, depth: int, depth_stop: int, code_bits: int = 32, **overrides) -> "OctGPTVQVAE":
        """A released size by name (:data:`VQVAE_CONFIGS`: "vqvae", "vqvae_big", "vqvae_large")."""
        if name not in VQVAE_CONFIGS:
            raise OctformerError(f"name: expected one of {sorted(VQVAE_CONFIGS)}, got {name!r}")
        return cls(depth, depth_stop, code_bits, **{**VQVAE_CONFIGS[name], **overrides})

    def _block(self, blk: nn.Module, x: torch.Tensor, lv: _Level) -> torch.Tensor:
        if self.checkpoint and torch.is_grad_enabled() and x.requires_grad:
            return torch.utils.checkpoint.checkpoint(blk, x, lv, use_reentrant=False)
        return blk(x, lv)

    # ------------------------------------------------------------------ encoder
    def encode(self, ctx: OctreeContext) -> torch.Tensor:
        """Pre-quantisation latents (M_stop, code_bits) of the non-empty nodes at depth_stop."""
        d = self.depth
        xyz = ctx.xyz(d).to(self.pre_proj.weight.dtype)
        frac = (xyz + 0.5) / float(1 << (d - self.depth_stop)) % 1.0  # position inside the depth_stop cell
        lv = _Level(d, ctx.batch(d), ctx.batch_size, ctx.neighbors(d))
        x = self.stem(torch.cat([torch.ones_like(xyz[:, :1]), frac], 1), lv)
        for i, blocks in enumerate(self.enc_stages):
            for blk in blocks:
                x = self._block(blk, x, lv)
            if i < len(self.enc_downs):
                parent = _Level(d - 1, ctx.batch(d - 1), ctx.batch_size, ctx.neighbors(d - 1))
                x = self.enc_downs[i](x, ctx.children(d), parent)
                d, lv = d - 1, parent
        return self.pre_proj(x)

    # ------------------------------------------------------------------ decoder
    def _decode(self, codes: torch.Tensor, ctx: OctreeContext, teacher: bool) -> dict:
        """Run the graph U-Net. Depths up to depth_stop take their structure from ``ctx``; finer depths from
        ``ctx`` too when ``teacher``, else from the split predictions. Returns levels, logits, signals per depth."""
        levels = {d: _ctx_graph_level(ctx, d) for d in range(self.low, self.depth_stop + 1)}
        lv = levels[self.depth_stop]
        x = codes.new_zeros(lv.batch.shape[0], self.post_proj.out_features)
        x = x.index_put((torch.nonzero(lv.nonempty).squeeze(1),), self.post_proj(codes.to(x.dtype)))
        skips = {}
        for i, blocks in enumerate(self.down_stages):
            d = self.depth_stop - i
            for blk in blocks:
                x = self._block(blk, x, levels[d])
            skips[d] = x
            if i < len(self.downs):
                x = self.downs[i](x, levels[d - 1])
        logits, signals = {}, {}
        for i, blocks in enumerate(self.up_stages):
            d = self.low + i
            if i > 0:
                parents = levels[d - 1]
                if d not in levels:
                    nonempty = ctx.children(d).reshape(-1) >= 0 if teacher else None
                    keep = parents.nonempty
                    levels[d] = _graph_level(d, parents.xyz[keep], parents.batch[keep], parents.num_samples,
                                             nonempty)
                x = self.ups[i - 1](x[parents.nonempty], levels[d])
                if d in skips:
                    x = x + skips[d]
            lv = levels[d]
            for blk in blocks:
                x = self._block(blk, x, lv)
            if i >= self.start_pred:
                logits[d] = self.split_heads[i - self.start_pred](x, lv)
                if lv.nonempty is None:  # decoding: the predicted structure of this depth
                    prob = torch.softmax(logits[d], 1)[:, 1].reshape(-1, 8)
                    flags = prob > 0.5
                    empty = ~flags.any(1)
                    flags[empty, prob[empty].argmax(1)] = True  # a non-empty parent keeps at least one child
                    lv.nonempty = flags.reshape(-1)
            if i >= self.start_sdf:
                signals[d] = self.sdf_heads[i - self.start_sdf](x, lv)
        return {"levels": levels, "logits": logits, "signals": signals}

    def reconstruction_loss(self, ctx: OctreeContext, sdf: tuple | None = None) -> torch.Tensor:
        """Cross-entropy of the predicted non-empty flags at the split-head depths (teacher forcing) + BSQ
        entropy penalty, + the SDF L1 loss when ``sdf`` = (points (P, 3) in depth-``depth`` grid units, sample
        (P,), target (P,)) is given."""
        z = self.encode(ctx)
        codes, _ = bsq_quantize(z)
        out = self._decode(codes, ctx, teacher=True)
        loss = 0.1 * bsq_entropy_loss(z)
        for d, logit in out["logits"].items():
            loss = loss + F.cross_entropy(logit, out["levels"][d].nonempty.long())
        if sdf is not None:
            loss = loss + self.sdf_loss(out, *sdf)
        return loss

    def sdf_loss(self, out: dict, points: torch.Tensor, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean L1 error, over the SDF depths, of the signal of the cell containing each query point (value +
        gradient · offset from the cell centre in half-cell units); points outside every cell are skipped."""
        total = out["logits"][self.depth].new_zeros(())
        for d, sig in out["signals"].items():
            lv = out["levels"][d]
            p = points.to(sig.dtype) / float(1 << (self.depth - d))  # depth-d grid units
            cell = torch.floor(p).long()
            row = _lookup(lv.xyz, lv.batch, d, cell, batch.long())
            hit = row >= 0
            if not bool(hit.any()):
                total = total + sig.sum() * 0
                continue
            s = sig[row[hit]]
            local = 2.0 * (p[hit] - cell[hit].to(p.dtype)) - 1.0
            pred = s[:, 0] + (s[:, 1:] * local).sum(1)
            total = total + (pred - target[hit].to(pred.dtype)).abs().mean()
        return total

    @torch.no_grad()
    def decode_flags(self, codes: torch.Tensor, ctx: OctreeContext | None = None) -> list[torch.Tensor]:
        """Split flags (8·M_d,) of depths depth_stop+1..depth for one sample's codes (M_stop, L) ±1/√L;
        ``ctx`` holds that sample's octree down to depth_stop (the graph net needs its structure)."""
        if ctx is None:
            raise OctformerError("ctx: OctGPTVQVAE.decode_flags needs the octree down to depth_stop")
        out = self._decode(codes, ctx, teacher=False)
        return [out["levels"][d].nonempty.long() for d in range(self.depth_stop + 1, self.depth + 1)]
