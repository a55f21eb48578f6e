"""Token plans: how a layer gathers flat tokens into attention sequences and scatters them back.

Flat batching throughout: tokens are concatenated over samples, in (sample, curve) order,
with a per-token sample index. A plan never puts two samples in one sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from octformer.errors import OctformerError

__all__ = ["TokenPlan", "window_plan", "global_plan", "plan_from_flatten"]


@dataclass(frozen=True, eq=False)
class TokenPlan:
    """One gather in, one scatter out, plus the sequence layout attention runs on.

    Either equal groups (``group_size`` K, slots M = G·K, ``key_mask`` (M,) 0/-inf marks
    padding) or varlen sequences (``cu_seqlens`` (S+1,) int32, no padding).
    """

    gather: torch.Tensor
    """(M,) int64 token read into each slot."""
    scatter: torch.Tensor
    """(N,) int64 slot holding each token's own output."""
    group_size: int | None = None
    key_mask: torch.Tensor | None = None
    """(M,) float32, 0 for real tokens and -inf for padding slots (equal groups only)."""
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0
    slot_sample: torch.Tensor | None = None
    """(M,) int64 sample of each slot."""

    @property
    def num_slots(self) -> int:
        """M, slots attention runs over."""
        return int(self.gather.shape[0])


def _check_batch(batch: torch.Tensor) -> torch.Tensor:
    if batch.dim() != 1:
        raise OctformerError(f"batch: expected a (N,) tensor of sample indices, got shape {tuple(batch.shape)}")
    batch = batch.long()
    if batch.device.type == "cpu":  # NumPy: no torch parallel regions for a tiny check
        b = batch.numpy()
        unsorted = b.size > 1 and bool((b[1:] < b[:-1]).any())
    else:
        unsorted = batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any())
    if unsorted:
        raise OctformerError("batch: tokens must be grouped by sample (non-decreasing sample index)")
    return batch


def window_plan(batch: torch.Tensor, group_size: int, dilation: int = 1, shift: int = 0) -> TokenPlan:
    """Windows of K tokens over each sample's sequence (padded per sample, never across samples).

    Per sample of n tokens: ``shift`` masked slots in front, then the tokens, then masked
    slots up to a multiple of K·D. A dilated window j of a K·D block holds positions
    j, j+D, …, j+(K-1)D (OctFormer's dilation).
    """
    if group_size < 1 or dilation < 1 or not 0 <= shift < group_size * dilation:
        raise OctformerError(
            f"window_plan: expected group_size >= 1, dilation >= 1, 0 <= shift < group_size*dilation, "
            f"got {group_size}, {dilation}, {shift}"
        )
    batch = _check_batch(batch)
    # index bookkeeping in NumPy: single-threaded, no autograd, and none of the ~25 small torch
    # kernels (each an OpenMP parallel region, costly on a loaded machine) the torch version ran
    b = batch.cpu().numpy()
    n = b.size
    span = group_size * dilation
    num_samples = int(b[-1]) + 1 if n else 0
    counts = np.bincount(b, minlength=num_samples)
    padded = np.where(counts > 0, (counts + shift + span - 1) // span * span, 0)
    tok_start = np.cumsum(counts) - counts
    slot_start = np.cumsum(padded) - padded
    total = int(padded.sum())
    slot_sample = np.repeat(np.arange(num_samples), padded)
    p = np.arange(total) - slot_start[slot_sample]  # position in the sample's padded sequence
    # slot s of the dilated layout holds padded position: block*span + i*D + j, with s = block*span + j*K + i
    block, within = p // span, p % span
    j, i = within // group_size, within % group_size
    tok = block * span + i * dilation + j - shift
    n_of_slot = counts[slot_sample]
    valid = (tok >= 0) & (tok < n_of_slot)
    src = tok_start[slot_sample] + np.minimum(np.maximum(tok, 0), n_of_slot - 1)
    key_mask = np.where(valid, np.float32(0), np.float32(-np.inf)).astype(np.float32)
    scatter = np.empty(n, dtype=np.int64)
    scatter[src[valid]] = np.nonzero(valid)[0]
    device = batch.device

    def out(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return TokenPlan(
        gather=out(src.astype(np.int64)), scatter=out(scatter), group_size=group_size, key_mask=out(key_mask),
        max_seqlen=group_size, slot_sample=out(slot_sample.astype(np.int64)),
    )


def global_plan(batch: torch.Tensor) -> TokenPlan:
    """One varlen sequence per sample (global attention within a sample)."""
    batch = _check_batch(batch)
    n = batch.numel()
    num_samples = int(batch.max()) + 1 if n else 0
    counts = torch.bincount(batch, minlength=num_samples)
    counts = counts[counts > 0]
    cu = torch.zeros(counts.numel() + 1, dtype=torch.int32, device=batch.device)
    cu[1:] = torch.cumsum(counts, 0).to(torch.int32)
    ident = torch.arange(n, device=batch.device)
    return TokenPlan(
        gather=ident, scatter=ident, cu_seqlens=cu, max_seqlen=int(counts.max()) if counts.numel() else 0,
        slot_sample=batch,
    )


def plan_from_flatten(plan, device: torch.device | str = "cpu") -> TokenPlan:
    """A :class:`TokenPlan` of an ``octformer.serialize.FlattenPlan`` (varlen, duplicate padding)."""
    from octformer.serialize import FlattenPlan

    if not isinstance(plan, FlattenPlan):
        raise OctformerError(f"plan: expected an octformer.serialize.FlattenPlan, got {type(plan).__name__}")
    t = plan.to_torch(device)
    seq = torch.from_numpy(plan.seq_sample.astype("int64")).to(device)
    lengths = (t["cu_seqlens"][1:] - t["cu_seqlens"][:-1]).long()
    return TokenPlan(
        gather=t["gather"], scatter=t["scatter"], cu_seqlens=t["cu_seqlens"], max_seqlen=int(t["max_seqlen"]),
        slot_sample=torch.repeat_interleave(seq, lengths),
    )
