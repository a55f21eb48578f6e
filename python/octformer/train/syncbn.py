"""Batch norm with statistics over the global batch on any device (torch's SyncBatchNorm is GPU-only).

Under DDP on CPU (gloo), each process would otherwise normalise with its own share of
the batch, and N processes would not train like one. Sums, squared sums and counts are
all-reduced with the autograd-aware ``torch.distributed.nn.functional.all_reduce``, so
gradients also flow through the other processes' statistics.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["GlobalBatchNorm1d", "convert_global_batchnorm"]


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` on (N, C) input whose training statistics span every process of the default group."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        if x.dim() != 2:
            raise ValueError(f"x: expected (N, C) input, got shape {tuple(x.shape)}")
        from torch.distributed.nn.functional import all_reduce

        xf = x.float()
        stats = torch.cat([xf.sum(0), (xf * xf).sum(0), xf.new_tensor([x.shape[0]])])
        stats = all_reduce(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


def convert_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm1d`` in ``module`` by a :class:`GlobalBatchNorm1d` with the same parameters and buffers."""
    if type(module) is nn.BatchNorm1d:
        new = GlobalBatchNorm1d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_global_batchnorm(child))
    return module
