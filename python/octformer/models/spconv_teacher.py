"""Sparse-convolution UNet teacher on spconv, for Volt's optional distillation (an optional dependency).

The teacher reads the same octree as the student through :meth:`Octree.to_spconv`: a
SubMConv3d stem, ``len(channels) - 1`` rounds of [SparseConv3d k=2 s=2 down, SubMConv3d],
then the mirror path with SparseInverseConv3d up, concatenation of the skip and a
SubMConv3d fuse, and a linear head. Its rows are the non-empty nodes of the octree at the
chosen depth, in the octree's order, so its logits line up with Volt's voxel logits.
"""

from __future__ import annotations

import torch
from torch import nn

from octformer.errors import OctformerError
from octformer.octree import Octree

__all__ = ["SpconvUNet", "import_spconv"]


def import_spconv():
    """``spconv.pytorch``, or an ImportError naming the extra; makes spconv's CPU path usable (see below)."""
    try:
        import spconv.pytorch as spconv
        import spconv.pytorch.ops as spconv_ops
    except ImportError as exc:
        raise ImportError(
            "the spconv teacher needs spconv: pip install 'octformer[spconv]' (spconv on CPU, spconv-cu120 on GPU)"
        ) from exc
    _fix_cpu_path(spconv_ops)
    return spconv


class _TorchGatherScatter:
    """spconv's ``SpconvOps`` with its CPU row gather / scatter-add done by torch (everything else delegated).

    spconv 2.3.8's multi-threaded ``scatter_add_cpu`` loses updates now and then (measured: 3 of
    300 calls on 5 unique rows with 2 threads), so CPU sparse convolutions were not deterministic
    and sometimes wrong. spconv calls these once per kernel offset, where the input→output row map
    is one-to-one, so the rows of one call are unique and an indexed ``+=`` is exact (and ~5× faster
    than ``index_add_`` here).
    """

    def __init__(self, ops) -> None:
        self._ops = ops

    def __getattr__(self, name):
        return getattr(self._ops, name)

    @staticmethod
    def gather_cpu(out, inp, inds) -> None:
        idx = torch.from_numpy(inds.numpy_view()).long()
        torch.from_numpy(out.numpy_view())[: idx.numel()] = torch.from_numpy(inp.numpy_view())[idx]

    @staticmethod
    def scatter_add_cpu(out, inp, inds) -> None:
        idx = torch.from_numpy(inds.numpy_view()).long()
        torch.from_numpy(out.numpy_view())[idx] += torch.from_numpy(inp.numpy_view())[: idx.numel()]


def _fix_cpu_path(spconv_ops) -> None:
    """Work around two spconv 2.3.8 CPU bugs (once per process):

    * its backward asks torch.cuda for the current stream before taking the CPU branch, which
      raises without a CUDA driver; the CPU branch never uses the stream, so answer 0 there;
    * its CPU scatter-add races (see :class:`_TorchGatherScatter`); on machines without CUDA the
      CPU convolutions take spconv's Python gather-GEMM-scatter loop (``SPCONV_CPP_GEMM`` off,
      the C++ loop uses the same racy scatter) with torch doing the gather / scatter-add.
    """
    if getattr(spconv_ops, "_octformer_cpu_fixed", False):
        return
    current = spconv_ops.get_current_stream

    def get_current_stream():
        return current() if torch.cuda.is_available() else 0

    spconv_ops.get_current_stream = get_current_stream
    spconv_ops.SpconvOps = _TorchGatherScatter(spconv_ops.SpconvOps)
    if not torch.cuda.is_available():
        spconv_ops.SPCONV_CPP_GEMM = False
    spconv_ops._octformer_cpu_fixed = True


class SpconvUNet(nn.Module):
    """Small spconv UNet: ``forward(octree, depth=None, features=None)`` → (M, num_classes) logits per non-empty node.

    Args:
        in_channels: input feature channels (Volt's voxel channels: 3 + extra features).
        num_classes: output classes. channels: width per level (len(channels) - 1 down/up rounds).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: tuple[int, ...] = (32, 64, 96)) -> None:
        super().__init__()
        sp = import_spconv()
        if len(channels) < 1 or any(c < 1 for c in channels):
            raise OctformerError(f"channels: expected one or more positive widths, got {channels}")
        self.channels = tuple(channels)

        def bn_relu(c):
            return [nn.BatchNorm1d(c), nn.ReLU()]

        c = self.channels
        self.stem = sp.SparseSequential(sp.SubMConv3d(in_channels, c[0], 3, padding=1, bias=False, indice_key="subm0"),
                                        *bn_relu(c[0]))
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for i in range(1, len(c)):
            self.down.append(sp.SparseSequential(
                sp.SparseConv3d(c[i - 1], c[i], 2, stride=2, bias=False, indice_key=f"down{i}"), *bn_relu(c[i]),
                sp.SubMConv3d(c[i], c[i], 3, padding=1, bias=False, indice_key=f"subm{i}"), *bn_relu(c[i]),
            ))
            self.up.append(sp.SparseSequential(
                sp.SparseInverseConv3d(c[i], c[i - 1], 2, bias=False, indice_key=f"down{i}"), *bn_relu(c[i - 1])
            ))
            self.fuse.append(sp.SparseSequential(
                sp.SubMConv3d(2 * c[i - 1], c[i - 1], 3, padding=1, bias=False, indice_key=f"subm{i - 1}"),
                *bn_relu(c[i - 1]),
            ))
        self.head = nn.Linear(c[0], num_classes)

    def forward(self, octree: Octree, depth: int | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """(M, num_classes) logits, row i = non-empty node i of ``octree`` at ``depth`` (default: the leaves)."""
        d = octree.depth if depth is None else depth
        if d < len(self.channels) - 1:
            raise OctformerError(f"depth: {len(self.channels) - 1} stride-2 rounds need depth >= that, got {d}")
        w = self.head.weight
        if features is None:
            if octree.features is None:
                raise OctformerError("octree.features: the teacher reads the leaf features; the tree has none")
            features = torch.as_tensor(octree.features)
        x = octree.to_spconv(d, features.to(device=w.device, dtype=w.dtype))
        x = self.stem(x)
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(x)
        for i in reversed(range(len(self.up))):
            skip = skips[i]
            x = self.up[i](x)
            if not torch.equal(x.indices, skip.indices):  # the inverse conv must restore the skip's rows
                raise OctformerError("spconv: SparseInverseConv3d returned rows in a different order than its input")
            x = self.fuse[i](x.replace_feature(torch.cat([x.features, skip.features], dim=1)))
        return self.head(x.features)
