// CPU 3D RoPE: pair k of head h at position p rotates by angle sum_a p[a] * freqs[h, k, a].
// Axial RoPE is the special case of one non-zero axis per pair; RoPE-Mixed learns all three.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "attention.h"

namespace octformer {
namespace {
constexpr int64_t kRopeChunkTokens = 4096;  // tokens per backward task: fixed, so freq-gradient sums are deterministic
}

at::Tensor rope3d_fwd_cpu(const at::Tensor& x_in, const at::Tensor& pos_in, const at::Tensor& freqs_in) {
  check_rope_inputs(x_in, pos_in, freqs_in);
  const at::Tensor x = x_in.contiguous(), pos = pos_in.contiguous(), freqs = freqs_in.contiguous();
  const int64_t B = x.size(0), H = x.size(1), L = x.size(2), C = x.size(3), P = freqs.size(1);
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rope3d_fwd_cpu", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *pp = pos.data_ptr<scalar_t>(), *fp = freqs.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t bi = t / H, h = t % H;
        const scalar_t* f = fp + h * P * 3;
        for (int64_t l = 0; l < L; ++l) {
          const scalar_t* pv = pp + (bi * L + l) * 3;
          const scalar_t* xr = xp + ((bi * H + h) * L + l) * C;
          scalar_t* yr = op + ((bi * H + h) * L + l) * C;
          for (int64_t k = 0; k < P; ++k) {
            const scalar_t ang = pv[0] * f[3 * k] + pv[1] * f[3 * k + 1] + pv[2] * f[3 * k + 2];
            const scalar_t c = std::cos(ang), s = std::sin(ang);
            const scalar_t x0 = xr[2 * k], x1 = xr[2 * k + 1];
            yr[2 * k] = x0 * c - x1 * s;
            yr[2 * k + 1] = x0 * s + x1 * c;
          }
          for (int64_t ch = 2 * P; ch < C; ++ch) yr[ch] = xr[ch];
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> rope3d_bwd_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                  const at::Tensor& pos_in, const at::Tensor& freqs_in) {
  check_rope_inputs(x_in, pos_in, freqs_in);
  TORCH_CHECK_VALUE(grad_in.sizes() == x_in.sizes(), "rope3d_bwd: grad must have x's shape ", x_in.sizes(), ", got ",
                    grad_in.sizes());
  const at::Tensor x = x_in.contiguous(), pos = pos_in.contiguous(), freqs = freqs_in.contiguous();
  const at::Tensor g = grad_in.contiguous().to(x.scalar_type());
  const int64_t B = x.size(0), H = x.size(1), L = x.size(2), C = x.size(3), P = freqs.size(1);
  const int64_t rows_per_chunk = std::max<int64_t>(1, kRopeChunkTokens / std::max<int64_t>(L, 1));
  const int64_t chunks = (B + rows_per_chunk - 1) / rows_per_chunk;
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor partial = at::zeros({chunks, H, P, 3}, x.options());
  at::Tensor dfreqs = at::zeros({H, P, 3}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rope3d_bwd_cpu", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *pp = pos.data_ptr<scalar_t>(), *fp = freqs.data_ptr<scalar_t>(),
                   *gp = g.data_ptr<scalar_t>();
    scalar_t *dxp = dx.data_ptr<scalar_t>(), *part = partial.data_ptr<scalar_t>();
    at::parallel_for(0, chunks * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t chunk = t / H, h = t % H;
        const scalar_t* f = fp + h * P * 3;
        scalar_t* df = part + (chunk * H + h) * P * 3;
        const int64_t b_end = std::min(B, (chunk + 1) * rows_per_chunk);
        for (int64_t bi = chunk * rows_per_chunk; bi < b_end; ++bi) {
          for (int64_t l = 0; l < L; ++l) {
            const scalar_t* pv = pp + (bi * L + l) * 3;
            const int64_t off = ((bi * H + h) * L + l) * C;
            const scalar_t *xr = xp + off, *gr = gp + off;
            scalar_t* dr = dxp + off;
            for (int64_t k = 0; k < P; ++k) {
              const scalar_t ang = pv[0] * f[3 * k] + pv[1] * f[3 * k + 1] + pv[2] * f[3 * k + 2];
              const scalar_t c = std::cos(ang), s = std::sin(ang);
              const scalar_t x0 = xr[2 * k], x1 = xr[2 * k + 1], g0 = gr[2 * k], g1 = gr[2 * k + 1];
              dr[2 * k] = g0 * c + g1 * s;
              dr[2 * k + 1] = -g0 * s + g1 * c;
              // d angle = g0 * dy0/da + g1 * dy1/da with y0 = x0 c - x1 s, y1 = x0 s + x1 c
              const scalar_t da = g0 * (-x0 * s - x1 * c) + g1 * (x0 * c - x1 * s);
              df[3 * k] += da * pv[0];
              df[3 * k + 1] += da * pv[1];
              df[3 * k + 2] += da * pv[2];
            }
            for (int64_t ch = 2 * P; ch < C; ++ch) dr[ch] = gr[ch];
          }
        }
      }
    });
    scalar_t* dfp = dfreqs.data_ptr<scalar_t>();
    const int64_t n = H * P * 3;
    for (int64_t c = 0; c < chunks; ++c)
      for (int64_t i = 0; i < n; ++i) dfp[i] += part[c * n + i];
  });
  return {dx, dfreqs};
}

}  // namespace octformer
