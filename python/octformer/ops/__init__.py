"""Attention, positional-encoding and CPE ops with a compiled backend (octformer-kernels) and a PyTorch reference.

``backend="auto"`` uses the compiled op when ``octformer_kernels`` is installed with kernels for the tensor's
device, else the reference; ``"kernels"`` raises if they are unavailable; ``"torch"`` always uses the reference.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
import torch.nn.functional as F

from octformer.errors import OctformerError
from octformer.ops.reference import (
    octree_dwconv_torch,
    rope3d_reference,
    rope_axial_freqs,
    rope_mixed_freqs,
    rope_positions,
    rpe_bias_dense,
    varlen_attention_reference,
    window_attention_reference,
)

__all__ = [
    "window_attention",
    "rope3d",
    "octree_dwconv",
    "rope_axial_freqs",
    "rope_mixed_freqs",
    "rope_positions",
    "rpe_bias_dense",
    "backend_report",
    "kernels_available",
    "resolve_backend",
]

_BACKENDS = ("auto", "torch", "kernels")
_kernels: ModuleType | None = None
_kernels_error: str | None = None


def _load_kernels() -> ModuleType | None:
    """Import octformer_kernels once; remember why it failed so errors and show_config can say."""
    global _kernels, _kernels_error
    if _kernels is None and _kernels_error is None:
        try:
            _kernels = importlib.import_module("octformer_kernels")
        except ImportError as exc:  # not installed, or built against another torch
            _kernels_error = f"{type(exc).__name__}: {exc}"
    return _kernels


def kernels_available(device: torch.device | str = "cpu") -> bool:
    """True when the compiled ops are loaded and have kernels for `device`'s type."""
    mod = _load_kernels()
    if mod is None:
        return False
    dev = torch.device(device)
    if dev.type == "cpu":
        return True
    if dev.type == "cuda":
        return bool(mod.has_cuda())
    return False


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Map "auto" | "torch" | "kernels" to the backend that will run ("torch" or "kernels") on `device`."""
    if backend not in _BACKENDS:
        raise OctformerError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    available = kernels_available(device)
    if backend == "kernels" and not available:
        why = _kernels_error or f"octformer_kernels was built without {torch.device(device).type} kernels"
        raise OctformerError(
            f"backend='kernels' requested for device {torch.device(device)} but the compiled ops are unavailable "
            f"({why}); install octformer[kernels] or use backend='torch'"
        )
    return "kernels" if available else "torch"


def backend_report() -> list[str]:
    """Lines for octformer.show_config(): which attention backend "auto" picks per device, and why."""
    lines = []
    mod = _load_kernels()
    if mod is None:
        lines.append(f"ops backend (cpu): torch reference (octformer_kernels unavailable: {_kernels_error})")
    else:
        blas = "libtorch BLAS" if torch.ops.octformer._has_blas() else "portable loops"
        lines.append(
            f"ops backend (cpu): octformer_kernels {mod.__version__} for window_attention, rope3d, octree_dwconv "
            f"(block GEMMs: {blas}; {torch.get_num_threads()} threads)"
        )
    if torch.cuda.is_available():
        picked = "octformer_kernels" if kernels_available("cuda") else "torch reference"
        lines.append(f"ops backend (cuda): {picked}")
    else:
        lines.append("ops backend (cuda): no CUDA device")
    return lines


def _fail(msg: str):
    raise OctformerError(msg)


def _check_attention(q, k, v, cu_seqlens, coords, rpe_table, key_mask):
    """Validate shapes/dtypes once for both backends; return the int16 coords (or None)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            _fail(f"window_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            _fail(f"window_attention: {name} must be floating point, got {t.dtype}")
    if k.shape != q.shape or v.shape != q.shape:
        _fail(f"window_attention: q, k, v must share a shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        _fail(f"window_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if cu_seqlens is None:
        if q.dim() != 4:
            _fail(f"window_attention: q must be (B_g, H, K, C) without cu_seqlens, got shape {tuple(q.shape)}")
        tokens = q.shape[0] * q.shape[2]
    else:
        if q.dim() != 3:
            _fail(f"window_attention: q must be (T, H, C) with cu_seqlens, got shape {tuple(q.shape)}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 or cu_seqlens.dtype != torch.int32:
            _fail(
                "window_attention: cu_seqlens must be a 1-D int32 tensor of length segments+1, "
                f"got {cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)}"
            )
        # value checks need a host sync: skipped while torch.compile traces (the kernel re-checks them)
        cu = None if torch.compiler.is_compiling() else cu_seqlens.detach().cpu().long()
        if cu is not None and (int(cu[0]) != 0 or int(cu[-1]) != q.shape[0] or bool((cu[1:] < cu[:-1]).any())):
            _fail(
                "window_attention: cu_seqlens must start at 0, be non-decreasing and end at T = "
                f"{q.shape[0]}, got {cu.tolist()[:8]}{'...' if cu.numel() > 8 else ''}"
            )
        tokens = q.shape[0]
    if (coords is None) != (rpe_table is None):
        _fail("window_attention: coords and rpe_table must be given together")
    if coords is not None:
        if coords.dtype.is_floating_point or coords.dtype == torch.bool or coords.shape[-1] != 3 or coords.numel() != 3 * tokens:
            _fail(f"window_attention: coords must be integer (tokens={tokens}, 3), got {coords.dtype} {tuple(coords.shape)}")
        if not torch.compiler.is_compiling() and coords.numel() and (
            int(coords.min()) < -32768 or int(coords.max()) > 32767
        ):
            _fail("window_attention: coords must fit in int16 (octree depth <= 15)")
        heads = q.shape[1]
        rows = rpe_table.shape[0] if rpe_table.dim() == 2 else -1
        if rpe_table.dim() != 2 or rpe_table.shape[1] != heads or rows % 3 or (rows // 3) % 2 == 0:
            _fail(f"window_attention: rpe_table must be (3*(2b+1), H={heads}), got shape {tuple(rpe_table.shape)}")
        if rpe_table.dtype != q.dtype:
            _fail(f"window_attention: rpe_table dtype {rpe_table.dtype} differs from q dtype {q.dtype}")
        coords = coords.to(torch.int16).reshape(tokens, 3)
    if key_mask is not None:
        if key_mask.numel() != tokens or key_mask.dtype != q.dtype:
            _fail(
                f"window_attention: key_mask must hold one {q.dtype} value per token ({tokens}), "
                f"got {key_mask.dtype} of shape {tuple(key_mask.shape)}"
            )
    return coords


# Keys per block of the CPU kernel: a query whose keys fit in one block gets its softmax recomputed in the backward
# at no extra GEMM, so no logsumexp (H floats per token) is saved for it.
_CPU_KEY_BLOCK = 512


def _keep_lse(q: torch.Tensor, cu_seqlens: torch.Tensor | None) -> bool:
    """Whether the kernels' forward should save the logsumexp for the backward (else the backward recomputes it)."""
    if q.device.type != "cpu":
        return True  # the CUDA backward would need a whole extra pass over the keys
    if cu_seqlens is None:
        return q.shape[2] > _CPU_KEY_BLOCK
    if torch.compiler.is_compiling() or cu_seqlens.numel() < 2:
        return torch.compiler.is_compiling()  # while tracing the lengths are unknown: keep it
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) > _CPU_KEY_BLOCK


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor | None = None,
    coords: torch.Tensor | None = None,
    rpe_table: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Softmax attention inside windows of already-gathered tokens.

    Equal groups: q, k, v (B_g, H, K, C). Varlen: packed (T, H, C) plus ``cu_seqlens`` (S+1,) int32.
    ``coords`` (tokens, 3) integer and ``rpe_table`` (3(2b+1), H) add OctFormer's relative position bias;
    ``key_mask`` (one value per token, -inf allowed, not differentiable) is added to the logits of that key.
    Fully masked queries return 0.
    """
    coords16 = _check_attention(q, k, v, cu_seqlens, coords, rpe_table, key_mask)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if resolve_backend(backend, q.device) == "kernels":
        mask = key_mask.reshape(-1) if key_mask is not None else None
        need_lse = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (q, k, v, rpe_table)
        ) and _keep_lse(q, cu_seqlens)
        out, _ = torch.ops.octformer.window_attention_fwd(
            q, k, v, cu_seqlens, coords16, rpe_table, mask, scale, need_lse
        )
        return out
    if cu_seqlens is not None:
        return varlen_attention_reference(
            q, k, v, cu_seqlens, coords=coords16, rpe_table=rpe_table, key_mask=key_mask, scale=scale
        )
    if rpe_table is None and key_mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return window_attention_reference(q, k, v, coords=coords16, rpe_table=rpe_table, key_mask=key_mask, scale=scale)


def rope3d(x: torch.Tensor, pos: torch.Tensor, freqs: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Rotate channel pairs of q or k by 3D positions: angle of pair k in head h = pos . freqs[h, k].

    x (B_g, H, K, C) with pos (B_g, K, 3) or (B_g*K, 3), or x (T, H, C) with pos (T, 3); integer or float
    positions (see ``rope_positions`` for cell centres). freqs (P, 3) shared by heads or (H, P, 3) per head
    (RoPE-Mixed, differentiable), 2P <= C; channels past 2P pass through.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() not in (3, 4):
        _fail(f"rope3d: x must be a floating (B_g, H, K, C) or (T, H, C) tensor, got {getattr(x, 'shape', x)}")
    heads, dim = x.shape[1], x.shape[-1]
    tokens = x.shape[0] * x.shape[2] if x.dim() == 4 else x.shape[0]
    if pos.shape[-1] != 3 or pos.numel() != 3 * tokens:
        _fail(f"rope3d: pos must hold (tokens={tokens}, 3) values, got shape {tuple(pos.shape)}")
    if freqs.dim() == 2:
        freqs = freqs.unsqueeze(0).expand(heads, -1, -1)
    if freqs.dim() != 3 or freqs.shape[0] != heads or freqs.shape[2] != 3 or 2 * freqs.shape[1] > dim:
        _fail(f"rope3d: freqs must be (P, 3) or (H={heads}, P, 3) with 2P <= C={dim}, got {tuple(freqs.shape)}")
    if freqs.dtype != x.dtype:
        _fail(f"rope3d: freqs dtype {freqs.dtype} differs from x dtype {x.dtype}")
    pos = pos.to(x.dtype)
    if x.dim() == 4:
        x4, pos3 = x, pos.reshape(x.shape[0], x.shape[2], 3)
    else:
        x4, pos3 = x.unsqueeze(2), pos.reshape(tokens, 1, 3)
    if resolve_backend(backend, x.device) == "kernels":
        y = torch.ops.octformer.rope3d_fwd(x4, pos3, freqs)
    else:
        y = rope3d_reference(x4, pos3, freqs)
    return y if x.dim() == 4 else y.squeeze(2)


def octree_dwconv(
    x: torch.Tensor, neighbors: torch.Tensor, weight: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """Octree depthwise 3x3x3 convolution (OctFormer's CPE): y[i] = sum_k weight[k] * x[neighbors[i, k]], channel-wise.

    x (M, C) floating; neighbors (M, 27) integer, -1 where a neighbour is absent; weight (27, C). Differentiable
    in x and weight. The compiled op never builds the (M, 27, C) gathered tensor.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 2:
        _fail(f"octree_dwconv: x must be a floating (M, C) tensor, got {getattr(x, 'dtype', type(x).__name__)} "
              f"of shape {tuple(getattr(x, 'shape', ()))}")
    m, c = x.shape
    if (not isinstance(neighbors, torch.Tensor) or neighbors.dtype.is_floating_point or neighbors.dtype == torch.bool
            or tuple(neighbors.shape) != (m, 27)):
        _fail(f"octree_dwconv: neighbors must be an integer ({m}, 27) table, got "
              f"{getattr(neighbors, 'dtype', type(neighbors).__name__)} of shape {tuple(getattr(neighbors, 'shape', ()))}")
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (27, c) or weight.dtype != x.dtype:
        _fail(f"octree_dwconv: weight must be ({27}, {c}) {x.dtype}, got "
              f"{getattr(weight, 'dtype', type(weight).__name__)} of shape {tuple(getattr(weight, 'shape', ()))}")
    if neighbors.device != x.device or weight.device != x.device:
        _fail(f"octree_dwconv: x, neighbors, weight must share a device, got {x.device}, {neighbors.device}, {weight.device}")
    # value check needs a host sync: skipped while torch.compile traces (the CPU kernel re-checks)
    if not torch.compiler.is_compiling() and neighbors.numel() and (
        int(neighbors.min()) < -1 or int(neighbors.max()) >= m
    ):
        _fail(f"octree_dwconv: neighbors must hold -1 or a row index in [0, {m}), got values in "
              f"[{int(neighbors.min())}, {int(neighbors.max())}]")
    if resolve_backend(backend, x.device) == "kernels":
        nb = neighbors if neighbors.dtype == torch.int32 else neighbors.to(torch.int32)
        return torch.ops.octformer.octree_dwconv_fwd(x, nb, weight)
    return octree_dwconv_torch(x, neighbors, weight)
