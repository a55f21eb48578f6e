"""Compiled octformer torch ops: window attention (equal groups / varlen, in-kernel RPE, key mask), 3D RoPE and the
octree depthwise 3x3x3 convolution (CPE).

Importing this package loads ``_C`` (which registers ``torch.ops.octformer.*`` for CPU, and CUDA when built with
it) and adds the fake (meta) kernels and autograd formulas, so the ops work under autograd and ``torch.compile``.
"""

import torch

from octformer_kernels import _C  # noqa: F401  (registers the ops)

__all__ = ["has_cuda", "__version__"]
__version__ = "0.1.0"

_lib = torch.ops.octformer


def has_cuda() -> bool:
    """True when this build registered CUDA kernels (compiled with nvcc)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("octformer::window_attention_fwd", "CUDA")


@torch.library.register_fake("octformer::window_attention_fwd")
def _window_attention_fwd_fake(q, k, v, cu_seqlens, coords, rpe_table, key_mask, scale, return_lse=True):
    if not return_lse:
        lse = q.new_empty((0,))
    elif cu_seqlens is not None:
        lse = q.new_empty((q.shape[0], q.shape[1]))
    else:
        lse = q.new_empty((q.shape[0], q.shape[1], q.shape[2]))
    return torch.empty_like(q, memory_format=torch.contiguous_format), lse


@torch.library.register_fake("octformer::window_attention_bwd")
def _window_attention_bwd_fake(grad_out, q, k, v, out, lse, cu_seqlens, coords, rpe_table, key_mask, scale):
    heads = q.shape[1]
    dtable = q.new_empty((rpe_table.shape[0], heads)) if rpe_table is not None else q.new_empty((0, heads))
    like = dict(memory_format=torch.contiguous_format)
    return torch.empty_like(q, **like), torch.empty_like(k, **like), torch.empty_like(v, **like), dtable


@torch.library.register_fake("octformer::rope3d_fwd")
def _rope3d_fwd_fake(x, pos, freqs):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("octformer::rope3d_bwd")
def _rope3d_bwd_fake(grad, x, pos, freqs):
    return torch.empty_like(x, memory_format=torch.contiguous_format), freqs.new_empty(freqs.shape)


@torch.library.register_fake("octformer::octree_dwconv_fwd")
def _octree_dwconv_fwd_fake(x, neighbors, weight):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("octformer::octree_dwconv_bwd")
def _octree_dwconv_bwd_fake(grad, x, neighbors, weight):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight, memory_format=torch.contiguous_format)


def _attn_setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, coords, rpe_table, key_mask, scale = inputs[:8]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, coords, rpe_table, key_mask)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)  # no zero-filled (tokens, H) gradient for the non-differentiable lse


def _attn_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_seqlens, coords, rpe_table, key_mask = ctx.saved_tensors
    if grad_out is None:  # only lse was used downstream: nothing flows back
        return None, None, None, None, None, None, None, None, None
    # an empty lse (forward run with return_lse=False) makes the backward recompute the softmax normalisers
    dq, dk, dv, dtable = _lib.window_attention_bwd(
        grad_out, q, k, v, out, lse, cu_seqlens, coords, rpe_table, key_mask, ctx.scale
    )
    return dq, dk, dv, None, None, (dtable if rpe_table is not None else None), None, None, None


torch.library.register_autograd(
    "octformer::window_attention_fwd", _attn_backward, setup_context=_attn_setup_context
)


def _rope_setup_context(ctx, inputs, output):
    x, pos, freqs = inputs
    ctx.save_for_backward(x, pos, freqs)


def _rope_backward(ctx, grad):
    x, pos, freqs = ctx.saved_tensors
    dx, dfreqs = _lib.rope3d_bwd(grad, x, pos, freqs)
    return dx, None, dfreqs


torch.library.register_autograd("octformer::rope3d_fwd", _rope_backward, setup_context=_rope_setup_context)


def _dwconv_setup_context(ctx, inputs, output):
    x, neighbors, weight = inputs
    ctx.save_for_backward(x, neighbors, weight)


def _dwconv_backward(ctx, grad):
    x, neighbors, weight = ctx.saved_tensors
    dx, dweight = _lib.octree_dwconv_bwd(grad, x, neighbors, weight)
    return dx, None, dweight


torch.library.register_autograd(
    "octformer::octree_dwconv_fwd", _dwconv_backward, setup_context=_dwconv_setup_context
)
