// Argument checks shared by the CPU and CUDA kernels (shapes, dtypes, layouts; no device sync).
#include <c10/util/Exception.h>

#include "attention.h"

namespace octformer {

AttnProblem check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& coords,
                                   const std::optional<at::Tensor>& rpe_table,
                                   const std::optional<at::Tensor>& key_mask) {
  AttnProblem p;
  TORCH_CHECK_VALUE(q.sizes() == k.sizes() && q.sizes() == v.sizes(), "window_attention: q, k, v must have the same ",
                    "shape, got q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes());
  TORCH_CHECK_VALUE(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
                    "window_attention: q, k, v must share a dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
                    v.scalar_type());
  TORCH_CHECK_VALUE(q.device() == k.device() && q.device() == v.device(),
                    "window_attention: q, k, v must be on one device");
  p.varlen = cu_seqlens.has_value();
  if (p.varlen) {
    const auto& cu = *cu_seqlens;
    TORCH_CHECK_VALUE(q.dim() == 3, "window_attention: varlen q must be (T, H, C), got shape ", q.sizes());
    TORCH_CHECK_VALUE(cu.dim() == 1 && cu.size(0) >= 1 && cu.scalar_type() == at::kInt,
                      "window_attention: cu_seqlens must be a 1-D int32 tensor of length segments+1, got ",
                      cu.scalar_type(), " of shape ", cu.sizes());
    TORCH_CHECK_VALUE(cu.device() == q.device(), "window_attention: cu_seqlens must be on q's device");
    p.total_tokens = q.size(0);
    p.heads = q.size(1);
    p.dim = q.size(2);
    p.num_segments = cu.size(0) - 1;
    p.seg_stride = 0;
    p.head_stride = p.dim;
    p.tok_stride = p.heads * p.dim;
    // lse is (T, H)
    p.lse_seg = 0;
    p.lse_head = 1;
    p.lse_tok = p.heads;
  } else {
    TORCH_CHECK_VALUE(q.dim() == 4, "window_attention: q must be (B_g, H, K, C) without cu_seqlens, got shape ",
                      q.sizes());
    p.num_segments = q.size(0);
    p.heads = q.size(1);
    p.group = q.size(2);
    p.dim = q.size(3);
    p.total_tokens = p.num_segments * p.group;
    p.seg_stride = p.heads * p.group * p.dim;
    p.head_stride = p.group * p.dim;
    p.tok_stride = p.dim;
    // lse is (B_g, H, K)
    p.lse_seg = p.heads * p.group;
    p.lse_head = p.group;
    p.lse_tok = 1;
  }
  TORCH_CHECK_VALUE(p.dim > 0 && p.heads > 0, "window_attention: heads and head dim must be positive, got shape ",
                    q.sizes());
  TORCH_CHECK_VALUE(coords.has_value() == rpe_table.has_value(),
                    "window_attention: coords and rpe_table must be given together (got coords ",
                    coords.has_value() ? "set" : "None", ", rpe_table ", rpe_table.has_value() ? "set" : "None", ")");
  if (rpe_table.has_value()) {
    const auto& c = *coords;
    const auto& t = *rpe_table;
    TORCH_CHECK_VALUE(c.scalar_type() == at::kShort, "window_attention: coords must be int16, got ", c.scalar_type());
    TORCH_CHECK_VALUE(c.device() == q.device() && t.device() == q.device(),
                      "window_attention: coords and rpe_table must be on q's device");
    TORCH_CHECK_VALUE(c.numel() == p.total_tokens * 3 && c.size(-1) == 3,
                      "window_attention: coords must hold (tokens, 3) = (", p.total_tokens, ", 3) values, got shape ",
                      c.sizes());
    TORCH_CHECK_VALUE(t.dim() == 2 && t.size(1) == p.heads && t.size(0) % 3 == 0 && (t.size(0) / 3) % 2 == 1,
                      "window_attention: rpe_table must be (3*(2b+1), H) with H = ", p.heads, ", got shape ", t.sizes());
    TORCH_CHECK_VALUE(t.scalar_type() == q.scalar_type(), "window_attention: rpe_table dtype ", t.scalar_type(),
                      " differs from q dtype ", q.scalar_type());
    p.has_rpe = true;
    p.rpe_rows = t.size(0);
    p.rpe_bound = (t.size(0) / 3 - 1) / 2;
  }
  if (key_mask.has_value()) {
    const auto& m = *key_mask;
    TORCH_CHECK_VALUE(m.numel() == p.total_tokens && m.scalar_type() == q.scalar_type() && m.device() == q.device(),
                      "window_attention: key_mask must hold one ", q.scalar_type(), " value per token (",
                      p.total_tokens, ") on q's device, got ", m.scalar_type(), " of shape ", m.sizes());
    p.has_mask = true;
  }
  return p;
}

void check_rope_inputs(const at::Tensor& x, const at::Tensor& pos, const at::Tensor& freqs) {
  TORCH_CHECK_VALUE(x.dim() == 4, "rope3d: x must be (B, H, L, C), got shape ", x.sizes());
  TORCH_CHECK_VALUE(pos.dim() == 3 && pos.size(0) == x.size(0) && pos.size(1) == x.size(2) && pos.size(2) == 3,
                    "rope3d: pos must be (B, L, 3) = (", x.size(0), ", ", x.size(2), ", 3), got shape ", pos.sizes());
  TORCH_CHECK_VALUE(freqs.dim() == 3 && freqs.size(0) == x.size(1) && freqs.size(2) == 3 &&
                        2 * freqs.size(1) <= x.size(3),
                    "rope3d: freqs must be (H, P, 3) with H = ", x.size(1), " and 2P <= C = ", x.size(3),
                    ", got shape ", freqs.sizes());
  TORCH_CHECK_VALUE(pos.scalar_type() == x.scalar_type() && freqs.scalar_type() == x.scalar_type(),
                    "rope3d: pos and freqs must have x's dtype ", x.scalar_type(), ", got ", pos.scalar_type(), " and ",
                    freqs.scalar_type());
  TORCH_CHECK_VALUE(pos.device() == x.device() && freqs.device() == x.device(),
                    "rope3d: x, pos and freqs must be on one device");
}

void check_dwconv_inputs(const at::Tensor& x, const at::Tensor& neighbors, const at::Tensor& weight) {
  TORCH_CHECK_VALUE(x.dim() == 2, "octree_dwconv: x must be (M, C), got shape ", x.sizes());
  TORCH_CHECK_VALUE(neighbors.dim() == 2 && neighbors.size(0) == x.size(0) && neighbors.size(1) == kNeighbors,
                    "octree_dwconv: neighbors must be (M, 27) = (", x.size(0), ", 27), got shape ", neighbors.sizes());
  TORCH_CHECK_VALUE(neighbors.scalar_type() == at::kInt, "octree_dwconv: neighbors must be int32, got ",
                    neighbors.scalar_type());
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(0) == kNeighbors && weight.size(1) == x.size(1),
                    "octree_dwconv: weight must be (27, C) = (27, ", x.size(1), "), got shape ", weight.sizes());
  TORCH_CHECK_VALUE(weight.scalar_type() == x.scalar_type(), "octree_dwconv: weight dtype ", weight.scalar_type(),
                    " differs from x dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(neighbors.device() == x.device() && weight.device() == x.device(),
                    "octree_dwconv: x, neighbors and weight must be on one device");
}

}  // namespace octformer
