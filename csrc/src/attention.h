// Window attention over equal-size groups (B_g, H, K, C) or varlen packed tokens (T, H, C) + cu_seqlens.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace octformer {

// Checked description of one call: shapes, layout strides and the optional inputs.
struct AttnProblem {
  bool varlen = false;
  int64_t num_segments = 0, heads = 0, dim = 0;
  int64_t group = 0;  // K for equal groups
  int64_t total_tokens = 0;
  int64_t max_len = 0;  // longest segment (K for equal groups; from cu_seqlens on the host for varlen)
  // element offset of (segment s, head h, token i) = s*seg_stride + h*head_stride + (start(s)+i)*tok_stride
  int64_t seg_stride = 0, head_stride = 0, tok_stride = 0;
  // lse offset of (s, h, i) = s*lse_seg + h*lse_head + (start(s)+i)*lse_tok
  int64_t lse_seg = 0, lse_head = 0, lse_tok = 0;
  bool has_rpe = false, has_mask = false;
  int64_t rpe_bound = 0, rpe_rows = 0;
};

AttnProblem check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& coords,
                                   const std::optional<at::Tensor>& rpe_table, const std::optional<at::Tensor>& key_mask);

std::tuple<at::Tensor, at::Tensor> window_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                            const at::Tensor& v,
                                                            const std::optional<at::Tensor>& cu_seqlens,
                                                            const std::optional<at::Tensor>& coords,
                                                            const std::optional<at::Tensor>& rpe_table,
                                                            const std::optional<at::Tensor>& key_mask, double scale,
                                                            bool return_lse);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& coords,
    const std::optional<at::Tensor>& rpe_table, const std::optional<at::Tensor>& key_mask, double scale);

at::Tensor rope3d_fwd_cpu(const at::Tensor& x, const at::Tensor& pos, const at::Tensor& freqs);
std::tuple<at::Tensor, at::Tensor> rope3d_bwd_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& pos,
                                                  const at::Tensor& freqs);
void check_rope_inputs(const at::Tensor& x, const at::Tensor& pos, const at::Tensor& freqs);

// Octree depthwise 3x3x3 convolution: x (M, C), neighbors (M, 27) int32 (-1 = absent), weight (27, C).
constexpr int64_t kNeighbors = 27;
void check_dwconv_inputs(const at::Tensor& x, const at::Tensor& neighbors, const at::Tensor& weight);
at::Tensor octree_dwconv_fwd_cpu(const at::Tensor& x, const at::Tensor& neighbors, const at::Tensor& weight);
std::tuple<at::Tensor, at::Tensor> octree_dwconv_bwd_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                         const at::Tensor& neighbors, const at::Tensor& weight);

}  // namespace octformer
