// CPU octree depthwise 3x3x3 convolution (OctFormer's CPE) over an (M, 27) int32 neighbour table (-1 = absent):
// y[i] = sum_k w[k] * x[n(i, k)], channel-wise. The forward gathers 27 rows per output row (no (M, 27, C) buffer);
// the backward gathers too: grad_x through the table's inverse (built once per call, no scatter, so it is
// deterministic for any thread count) and grad_w from fixed row chunks summed in a fixed order.
#include <ATen/Dispatch.h>

#include <atomic>
#include <limits>
#include <vector>

#include "attention.h"
#include "cpu_common.h"

namespace octformer {
namespace {

constexpr int64_t kRowsPerTask = 64;
// grad_w: rows per chunk depend on M only (never on the thread count); at most kMaxWeightChunks partial tables.
constexpr int64_t kMinWeightChunkRows = 1024, kMaxWeightChunks = 64;

// y[i0, i1) = sum_k w[k] * x[n(i, k)] (skipping absent neighbours), k in increasing order.
template <typename T>
inline void dwconv_rows_impl(const T* x, const int32_t* nb, const T* w, T* y, int64_t C, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    T* yr = y + i * C;
    for (int64_t c = 0; c < C; ++c) yr[c] = T(0);
    const int32_t* ni = nb + i * kNeighbors;
    for (int64_t k = 0; k < kNeighbors; ++k) {
      if (ni[k] < 0) continue;
      const T *xr = x + (int64_t)ni[k] * C, *wk = w + k * C;
      for (int64_t c = 0; c < C; ++c) yr[c] += wk[c] * xr[c];
    }
  }
}
OCTF_MULTIVERSION void dwconv_rows(const float* x, const int32_t* nb, const float* w, float* y, int64_t C, int64_t i0,
                                   int64_t i1) {
  dwconv_rows_impl(x, nb, w, y, C, i0, i1);
}
OCTF_MULTIVERSION void dwconv_rows(const double* x, const int32_t* nb, const double* w, double* y, int64_t C,
                                   int64_t i0, int64_t i1) {
  dwconv_rows_impl(x, nb, w, y, C, i0, i1);
}

// gx[j] = sum over the entries (i, k) with n(i, k) = j, in (i, k) order, of w[k] * gy[i].
template <typename T>
inline void dwconv_input_grad_rows_impl(const T* gy, const int64_t* first, const int32_t* entries, const T* w, T* gx,
                                        int64_t C, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    T* gr = gx + j * C;
    for (int64_t c = 0; c < C; ++c) gr[c] = T(0);
    for (int64_t e = first[j]; e < first[j + 1]; ++e) {
      const int64_t i = entries[e] / kNeighbors, k = entries[e] % kNeighbors;
      const T *g = gy + i * C, *wk = w + k * C;
      for (int64_t c = 0; c < C; ++c) gr[c] += wk[c] * g[c];
    }
  }
}
OCTF_MULTIVERSION void dwconv_input_grad_rows(const float* gy, const int64_t* first, const int32_t* entries,
                                              const float* w, float* gx, int64_t C, int64_t j0, int64_t j1) {
  dwconv_input_grad_rows_impl(gy, first, entries, w, gx, C, j0, j1);
}
OCTF_MULTIVERSION void dwconv_input_grad_rows(const double* gy, const int64_t* first, const int32_t* entries,
                                              const double* w, double* gx, int64_t C, int64_t j0, int64_t j1) {
  dwconv_input_grad_rows_impl(gy, first, entries, w, gx, C, j0, j1);
}

// gw[k] += sum_{i in [i0, i1)} gy[i] * x[n(i, k)]
template <typename T>
inline void dwconv_weight_grad_rows_impl(const T* gy, const T* x, const int32_t* nb, T* gw, int64_t C, int64_t i0,
                                         int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    const T* g = gy + i * C;
    const int32_t* ni = nb + i * kNeighbors;
    for (int64_t k = 0; k < kNeighbors; ++k) {
      if (ni[k] < 0) continue;
      const T* xr = x + (int64_t)ni[k] * C;
      T* gk = gw + k * C;
      for (int64_t c = 0; c < C; ++c) gk[c] += g[c] * xr[c];
    }
  }
}
OCTF_MULTIVERSION void dwconv_weight_grad_rows(const float* gy, const float* x, const int32_t* nb, float* gw, int64_t C,
                                               int64_t i0, int64_t i1) {
  dwconv_weight_grad_rows_impl(gy, x, nb, gw, C, i0, i1);
}
OCTF_MULTIVERSION void dwconv_weight_grad_rows(const double* gy, const double* x, const int32_t* nb, double* gw,
                                               int64_t C, int64_t i0, int64_t i1) {
  dwconv_weight_grad_rows_impl(gy, x, nb, gw, C, i0, i1);
}

// Every entry of the table is -1 or a row index in [0, M) (checked in parallel; the first bad one is reported).
void check_neighbor_values(const int32_t* nb, int64_t M) {
  std::atomic<int64_t> bad{-1};
  parallel_tasks((M + kRowsPerTask - 1) / kRowsPerTask, 0, [&](TaskQueue& queue) {
    int64_t b, e;
    while (queue.next(b, e)) {
      const int64_t lo = b * kRowsPerTask * kNeighbors, hi = std::min(M, e * kRowsPerTask) * kNeighbors;
      for (int64_t t = lo; t < hi; ++t) {
        if (nb[t] < -1 || nb[t] >= M) {
          int64_t expected = -1;
          bad.compare_exchange_strong(expected, t);
          break;
        }
      }
    }
  });
  const int64_t t = bad.load();
  TORCH_CHECK_VALUE(t < 0, "octree_dwconv: neighbors must hold -1 (absent) or a row index in [0, ", M,
                    "), got neighbors[", t < 0 ? 0 : t / kNeighbors, ", ", t < 0 ? 0 : t % kNeighbors,
                    "] = ", t < 0 ? 0 : nb[t]);
}

}  // namespace

at::Tensor octree_dwconv_fwd_cpu(const at::Tensor& x_in, const at::Tensor& neighbors_in, const at::Tensor& weight_in) {
  check_dwconv_inputs(x_in, neighbors_in, weight_in);
  TORCH_CHECK_VALUE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
                    "octree_dwconv (CPU): dtype must be float32 or float64, got ", x_in.scalar_type());
  const at::Tensor x = x_in.contiguous(), nb = neighbors_in.contiguous(), w = weight_in.contiguous();
  const int64_t M = x.size(0), C = x.size(1);
  check_neighbor_values(nb.data_ptr<int32_t>(), M);
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "octree_dwconv_fwd_cpu", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *wp = w.data_ptr<scalar_t>();
    const int32_t* np = nb.data_ptr<int32_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    parallel_tasks((M + kRowsPerTask - 1) / kRowsPerTask, 0, [&](TaskQueue& queue) {
      int64_t b, e;
      while (queue.next(b, e)) dwconv_rows(xp, np, wp, yp, C, b * kRowsPerTask, std::min(M, e * kRowsPerTask));
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> octree_dwconv_bwd_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                         const at::Tensor& neighbors_in,
                                                         const at::Tensor& weight_in) {
  check_dwconv_inputs(x_in, neighbors_in, weight_in);
  TORCH_CHECK_VALUE(grad_in.sizes() == x_in.sizes(), "octree_dwconv_bwd: grad must have x's shape ", x_in.sizes(),
                    ", got ", grad_in.sizes());
  const at::Tensor x = x_in.contiguous(), nb = neighbors_in.contiguous(), w = weight_in.contiguous();
  const at::Tensor gy = grad_in.contiguous().to(x.scalar_type());
  const int64_t M = x.size(0), C = x.size(1);
  const int32_t* np = nb.data_ptr<int32_t>();
  check_neighbor_values(np, M);
  TORCH_CHECK_VALUE(M * kNeighbors < std::numeric_limits<int32_t>::max(), "octree_dwconv_bwd: at most ",
                    std::numeric_limits<int32_t>::max() / kNeighbors, " rows, got ", M);
  // inverse table (CSR): for each row j, the entries i * 27 + k with n(i, k) = j, in increasing order
  std::vector<int64_t> first(M + 1, 0);
  for (int64_t t = 0; t < M * kNeighbors; ++t)
    if (np[t] >= 0) ++first[np[t] + 1];
  for (int64_t j = 0; j < M; ++j) first[j + 1] += first[j];
  std::vector<int32_t> entries(first[M]);
  {
    std::vector<int64_t> fill(first.begin(), first.end() - 1);
    for (int64_t t = 0; t < M * kNeighbors; ++t)
      if (np[t] >= 0) entries[fill[np[t]]++] = (int32_t)t;
  }
  at::Tensor gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t chunk_rows = std::max(kMinWeightChunkRows, (M + kMaxWeightChunks - 1) / kMaxWeightChunks);
  const int64_t chunks = (M + chunk_rows - 1) / chunk_rows;
  at::Tensor partial = at::zeros({chunks, kNeighbors, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "octree_dwconv_bwd_cpu", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *wp = w.data_ptr<scalar_t>(), *gp = gy.data_ptr<scalar_t>();
    scalar_t *gxp = gx.data_ptr<scalar_t>(), *pp = partial.data_ptr<scalar_t>();
    const int64_t row_tasks = (M + kRowsPerTask - 1) / kRowsPerTask;
    // tasks [0, row_tasks): grad_x row blocks; [row_tasks, row_tasks + chunks): grad_w chunks
    parallel_tasks(row_tasks + chunks, 1, [&](TaskQueue& queue) {
      // (grain 1: the few grad_w chunks are long tasks)
      int64_t b, e;
      while (queue.next(b, e)) {
        for (int64_t t = b; t < e; ++t) {
          if (t < row_tasks) {
            dwconv_input_grad_rows(gp, first.data(), entries.data(), wp, gxp, C, t * kRowsPerTask,
                                   std::min(M, (t + 1) * kRowsPerTask));
          } else {
            const int64_t c = t - row_tasks;
            dwconv_weight_grad_rows(gp, xp, np, pp + c * kNeighbors * C, C, c * chunk_rows,
                                    std::min(M, (c + 1) * chunk_rows));
          }
        }
      }
    });
    // fixed-order sum of the chunk partials (deterministic for any thread count)
    for (int64_t c = 1; c < chunks; ++c) {
      const scalar_t* src = pp + c * kNeighbors * C;
      for (int64_t t = 0; t < kNeighbors * C; ++t) pp[t] += src[t];
    }
  });
  at::Tensor gw = chunks > 0 ? partial[0].clone() : at::zeros_like(w, at::MemoryFormat::Contiguous);
  return {gx, gw};
}

}  // namespace octformer
