// CUDA window attention and 3D RoPE. One thread per query row, key/value tiles staged in shared memory,
// online softmax in registers; RPE bias from int16 coords and the (3(2b+1), H) table inside the loop.
// Forward and backward share the key-tile staging and the online-softmax loop (the backward reruns it, without V,
// when the forward saved no logsumexp). The backward recomputes P from the logsumexp; dK, dV and the RPE table
// gradient use atomics (so CUDA gradients are not bitwise deterministic, unlike the CPU kernels).
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "attention.h"

namespace octformer {
namespace {

constexpr int kThreads = 64;   // query rows per block
// keys per shared-memory tile: K and V tiles stay within 32 KiB of static shared memory
template <typename T>
constexpr int kTileK = sizeof(T) == 8 ? 16 : 32;
constexpr int kMaxDim = 128;   // head dim held in registers per thread

template <typename T>
struct DeviceArgs {
  const T *q, *k, *v;
  const int16_t* coords;
  const T* table;
  const T* mask;
  const int32_t* cu;
  int64_t heads, dim, group;
  int64_t seg_stride, head_stride, tok_stride;
  int64_t lse_seg, lse_head, lse_tok;
  int32_t bound, rows;
  bool varlen, has_rpe, has_mask;
  T scale;
};

template <typename T>
__device__ inline void segment_of(const DeviceArgs<T>& a, int64_t s, int64_t& start, int64_t& len) {
  if (a.varlen) {
    start = a.cu[s];
    len = a.cu[s + 1] - a.cu[s];
  } else {
    start = 0;
    len = a.group;
  }
}

template <typename T>
__device__ inline T bias_of(const DeviceArgs<T>& a, int64_t h, const int16_t* cq, const int16_t* ck, T m) {
  T b = m;
  if (a.has_rpe) {
    const int span = 2 * a.bound + 1;
    for (int ax = 0; ax < 3; ++ax) {
      int d = int(cq[ax]) - int(ck[ax]);
      d = d < -a.bound ? -a.bound : (d > a.bound ? a.bound : d);
      b += a.table[(int64_t)(ax * span + d + a.bound) * a.heads + h];
    }
  }
  return b;
}

// Keys [kb, kb + nk) of one segment and head, staged in shared memory by all threads of a block.
template <typename T>
struct KeyTile {
  T k[kTileK<T>][kMaxDim];
  T v[kTileK<T>][kMaxDim];
  T mask[kTileK<T>];
  int16_t coords[kTileK<T>][3];
};

template <typename T>
__device__ inline void load_tile(const DeviceArgs<T>& a, int64_t base, int64_t tok0, int64_t kb, int nk, bool with_v,
                                 KeyTile<T>& t) {
  __syncthreads();  // the previous tile is no longer read
  for (int idx = threadIdx.x; idx < nk * a.dim; idx += kThreads) {
    const int j = idx / a.dim, c = idx % a.dim;
    t.k[j][c] = a.k[base + (kb + j) * a.tok_stride + c];
    if (with_v) t.v[j][c] = a.v[base + (kb + j) * a.tok_stride + c];
  }
  for (int j = threadIdx.x; j < nk; j += kThreads) {
    t.mask[j] = a.has_mask ? a.mask[tok0 + kb + j] : T(0);
    if (a.has_rpe)
      for (int ax = 0; ax < 3; ++ax) t.coords[j][ax] = a.coords[(tok0 + kb + j) * 3 + ax];
  }
  __syncthreads();
}

// Where one thread's query row lives: block (segment, head, tile of kThreads queries), thread = query.
template <typename T>
struct QueryRow {
  int64_t s, h, start, len, i, base, tok0;
  bool active;
  int16_t cq[3] = {0, 0, 0};

  __device__ explicit QueryRow(const DeviceArgs<T>& a) : s(blockIdx.x), h(blockIdx.y) {
    segment_of(a, s, start, len);
    i = (int64_t)blockIdx.z * kThreads + threadIdx.x;
    active = i < len;
    base = s * a.seg_stride + h * a.head_stride + start * a.tok_stride;
    tok0 = s * a.group + start;
    if (active && a.has_rpe)
      for (int ax = 0; ax < 3; ++ax) cq[ax] = a.coords[(tok0 + i) * 3 + ax];
  }
  __device__ bool block_past_segment() const { return (int64_t)blockIdx.z * kThreads >= len; }
  __device__ int64_t lse_index(const DeviceArgs<T>& a) const {
    return s * a.lse_seg + h * a.lse_head + (start + i) * a.lse_tok;
  }
};

// Online softmax of one query row over all keys of its segment: running max m and sum l of exp(score - m), and
// (kWithV) acc = sum of exp(score - m) v. Scores are (qr . k) * qscale + bias. Every thread of the block must call it.
template <typename T, bool kWithV>
__device__ void online_softmax(const DeviceArgs<T>& a, const QueryRow<T>& r, const T* qr, T qscale, T* acc, T& m,
                               T& l, KeyTile<T>& t) {
  const T ninf = -std::numeric_limits<T>::infinity();
  m = ninf;
  l = T(0);
  for (int64_t kb = 0; kb < r.len; kb += kTileK<T>) {
    const int nk = (int)min((int64_t)kTileK<T>, r.len - kb);
    load_tile(a, r.base, r.tok0, kb, nk, kWithV, t);
    if (!r.active) continue;
    for (int j = 0; j < nk; ++j) {
      T sc = T(0);
      for (int c = 0; c < a.dim; ++c) sc += qr[c] * t.k[j][c];
      sc = sc * qscale + bias_of(a, r.h, r.cq, t.coords[j], t.mask[j]);
      if (sc == ninf) continue;  // masked key: weight 0
      if (sc > m) {
        const T corr = m == ninf ? T(0) : exp(m - sc);
        if (kWithV)
          for (int c = 0; c < a.dim; ++c) acc[c] *= corr;
        l *= corr;
        m = sc;
      }
      const T p = exp(sc - m);
      l += p;
      if (kWithV)
        for (int c = 0; c < a.dim; ++c) acc[c] += p * t.v[j][c];
    }
  }
}

template <typename T>
__global__ void attn_fwd_kernel(DeviceArgs<T> a, T* out, T* lse) {
  const QueryRow<T> r(a);
  if (r.block_past_segment()) return;  // uniform per block
  __shared__ KeyTile<T> tile;
  T qr[kMaxDim], acc[kMaxDim];
  if (r.active)
    for (int c = 0; c < a.dim; ++c) {
      qr[c] = a.q[r.base + r.i * a.tok_stride + c] * a.scale;
      acc[c] = T(0);
    }
  T m, l;
  online_softmax<T, true>(a, r, qr, T(1), acc, m, l, tile);
  if (!r.active) return;
  T* o = out + r.base + r.i * a.tok_stride;
  if (l == T(0)) {  // fully masked query: output 0, lse -inf
    for (int c = 0; c < a.dim; ++c) o[c] = T(0);
    lse[r.lse_index(a)] = -std::numeric_limits<T>::infinity();
    return;
  }
  for (int c = 0; c < a.dim; ++c) o[c] = acc[c] / l;
  lse[r.lse_index(a)] = m + log(l);
}

// lse == nullptr: the forward saved no logsumexp; one extra pass over the keys recomputes it per row.
template <typename T>
__global__ void attn_bwd_kernel(DeviceArgs<T> a, const T* gout, const T* out, const T* lse, T* dq, T* dk, T* dv,
                                T* dtable) {
  const QueryRow<T> r(a);
  if (r.block_past_segment()) return;
  __shared__ KeyTile<T> tile;
  T qr[kMaxDim], gr[kMaxDim], dqr[kMaxDim];
  const T ninf = -std::numeric_limits<T>::infinity();
  T li = ninf, di = T(0);
  if (r.active) {
    for (int c = 0; c < a.dim; ++c) {
      qr[c] = a.q[r.base + r.i * a.tok_stride + c];
      gr[c] = gout[r.base + r.i * a.tok_stride + c];
      di += gr[c] * out[r.base + r.i * a.tok_stride + c];
      dqr[c] = T(0);
    }
    if (lse != nullptr) li = lse[r.lse_index(a)];
  }
  if (lse == nullptr) {  // uniform per launch
    T m, l;
    online_softmax<T, false>(a, r, qr, a.scale, nullptr, m, l, tile);
    li = l == T(0) ? ninf : m + log(l);
  }
  const int span = 2 * a.bound + 1;
  for (int64_t kb = 0; kb < r.len; kb += kTileK<T>) {
    const int nk = (int)min((int64_t)kTileK<T>, r.len - kb);
    load_tile(a, r.base, r.tok0, kb, nk, true, tile);
    if (!r.active || li == ninf) continue;
    for (int j = 0; j < nk; ++j) {
      T sc = T(0), dp = T(0);
      for (int c = 0; c < a.dim; ++c) {
        sc += qr[c] * tile.k[j][c];
        dp += gr[c] * tile.v[j][c];
      }
      sc = sc * a.scale + bias_of(a, r.h, r.cq, tile.coords[j], tile.mask[j]);
      const T p = sc == ninf ? T(0) : exp(sc - li);
      if (p == T(0)) continue;
      const T ds = p * (dp - di);
      T* dkj = dk + r.base + (kb + j) * a.tok_stride;
      T* dvj = dv + r.base + (kb + j) * a.tok_stride;
      for (int c = 0; c < a.dim; ++c) {
        dqr[c] += ds * tile.k[j][c];
        atomicAdd(dkj + c, ds * a.scale * qr[c]);
        atomicAdd(dvj + c, p * gr[c]);
      }
      if (a.has_rpe) {
        for (int ax = 0; ax < 3; ++ax) {
          int d = int(r.cq[ax]) - int(tile.coords[j][ax]);
          d = d < -a.bound ? -a.bound : (d > a.bound ? a.bound : d);
          atomicAdd(dtable + (int64_t)(ax * span + d + a.bound) * a.heads + r.h, ds);
        }
      }
    }
  }
  if (!r.active) return;
  T* dqi = dq + r.base + r.i * a.tok_stride;
  for (int c = 0; c < a.dim; ++c) dqi[c] = dqr[c] * a.scale;
}

struct CudaPrepared {
  AttnProblem p;
  at::Tensor q, k, v, coords, table, mask, cu;
  int64_t max_len = 0;
};

CudaPrepared prepare_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& coords,
                          const std::optional<at::Tensor>& rpe_table, const std::optional<at::Tensor>& key_mask) {
  CudaPrepared r;
  r.p = check_attention_inputs(q, k, v, cu_seqlens, coords, rpe_table, key_mask);
  TORCH_CHECK_VALUE(q.is_cuda(), "window_attention (CUDA): q must be a CUDA tensor");
  TORCH_CHECK_VALUE(r.p.dim <= kMaxDim, "window_attention (CUDA): head dim must be <= ", kMaxDim, ", got ", r.p.dim);
  TORCH_CHECK_VALUE(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
                    "window_attention (CUDA): dtype must be float32 or float64, got ", q.scalar_type());
  r.q = q.contiguous();
  r.k = k.contiguous();
  r.v = v.contiguous();
  if (r.p.varlen) {
    r.cu = cu_seqlens->contiguous();
    const at::Tensor host = r.cu.cpu();  // one small sync: segment bounds for validation and the grid size
    const int32_t* c = host.data_ptr<int32_t>();
    TORCH_CHECK_VALUE(c[0] == 0 && c[host.numel() - 1] == r.p.total_tokens,
                      "window_attention: cu_seqlens must start at 0 and end at T = ", r.p.total_tokens);
    for (int64_t s = 0; s + 1 < host.numel(); ++s) {
      TORCH_CHECK_VALUE(c[s + 1] >= c[s], "window_attention: cu_seqlens must be non-decreasing");
      r.max_len = std::max<int64_t>(r.max_len, c[s + 1] - c[s]);
    }
  } else {
    r.max_len = r.p.group;
  }
  if (r.p.has_rpe) {
    r.coords = coords->contiguous();
    r.table = rpe_table->contiguous();
  }
  if (r.p.has_mask) r.mask = key_mask->contiguous();
  return r;
}

template <typename T>
DeviceArgs<T> device_args(const CudaPrepared& r, double scale) {
  const AttnProblem& p = r.p;
  DeviceArgs<T> a;
  a.q = r.q.data_ptr<T>();
  a.k = r.k.data_ptr<T>();
  a.v = r.v.data_ptr<T>();
  a.coords = p.has_rpe ? r.coords.data_ptr<int16_t>() : nullptr;
  a.table = p.has_rpe ? r.table.data_ptr<T>() : nullptr;
  a.mask = p.has_mask ? r.mask.data_ptr<T>() : nullptr;
  a.cu = p.varlen ? r.cu.data_ptr<int32_t>() : nullptr;
  a.heads = p.heads;
  a.dim = p.dim;
  a.group = p.group;
  a.seg_stride = p.seg_stride;
  a.head_stride = p.head_stride;
  a.tok_stride = p.tok_stride;
  a.lse_seg = p.lse_seg;
  a.lse_head = p.lse_head;
  a.lse_tok = p.lse_tok;
  a.bound = (int32_t)p.rpe_bound;
  a.rows = (int32_t)p.rpe_rows;
  a.varlen = p.varlen;
  a.has_rpe = p.has_rpe;
  a.has_mask = p.has_mask;
  a.scale = (T)scale;
  return a;
}

std::tuple<at::Tensor, at::Tensor> window_attention_fwd_cuda(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& v,
                                                             const std::optional<at::Tensor>& cu_seqlens,
                                                             const std::optional<at::Tensor>& coords,
                                                             const std::optional<at::Tensor>& rpe_table,
                                                             const std::optional<at::Tensor>& key_mask, double scale,
                                                             bool return_lse) {
  const c10::cuda::CUDAGuard guard(q.device());
  CudaPrepared r = prepare_cuda(q, k, v, cu_seqlens, coords, rpe_table, key_mask);
  const AttnProblem& p = r.p;
  at::Tensor out = at::zeros_like(r.q, at::MemoryFormat::Contiguous);
  // the kernel always writes lse (the forward needs it in registers anyway); dropped when not requested
  at::Tensor lse = p.varlen ? at::empty({p.total_tokens, p.heads}, r.q.options())
                            : at::empty({p.num_segments, p.heads, p.group}, r.q.options());
  const int64_t tiles = (r.max_len + kThreads - 1) / kThreads;
  if (p.num_segments == 0 || tiles == 0) return {out, return_lse ? lse : at::empty({0}, r.q.options())};
  const dim3 grid((unsigned)p.num_segments, (unsigned)p.heads, (unsigned)tiles);
  AT_DISPATCH_FLOATING_TYPES(r.q.scalar_type(), "window_attention_fwd_cuda", [&] {
    attn_fwd_kernel<scalar_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        device_args<scalar_t>(r, scale), out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!return_lse) lse = at::empty({0}, r.q.options());
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& coords,
    const std::optional<at::Tensor>& rpe_table, const std::optional<at::Tensor>& key_mask, double scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  CudaPrepared r = prepare_cuda(q, k, v, cu_seqlens, coords, rpe_table, key_mask);
  const AttnProblem& p = r.p;
  TORCH_CHECK_VALUE(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(),
                    "window_attention_bwd: grad_out and out must have q's shape ", q.sizes());
  TORCH_CHECK_VALUE(lse.numel() == p.total_tokens * p.heads || lse.numel() == 0, "window_attention_bwd: lse has ",
                    lse.numel(), " values, expected ", p.total_tokens * p.heads, " or 0 (recompute)");
  const at::Tensor g = grad_out.contiguous().to(q.scalar_type()), o = out.contiguous(), l = lse.contiguous();
  at::Tensor dq = at::zeros_like(r.q, at::MemoryFormat::Contiguous);
  at::Tensor dk = at::zeros_like(r.k, at::MemoryFormat::Contiguous);
  at::Tensor dv = at::zeros_like(r.v, at::MemoryFormat::Contiguous);
  at::Tensor dtable = at::zeros({p.has_rpe ? p.rpe_rows : 0, p.heads}, r.q.options());
  const int64_t tiles = (r.max_len + kThreads - 1) / kThreads;
  if (p.num_segments == 0 || tiles == 0) return {dq, dk, dv, dtable};
  const dim3 grid((unsigned)p.num_segments, (unsigned)p.heads, (unsigned)tiles);
  AT_DISPATCH_FLOATING_TYPES(r.q.scalar_type(), "window_attention_bwd_cuda", [&] {
    attn_bwd_kernel<scalar_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        device_args<scalar_t>(r, scale), g.data_ptr<scalar_t>(), o.data_ptr<scalar_t>(),
        l.numel() ? l.data_ptr<scalar_t>() : nullptr,
        dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(),
        p.has_rpe ? dtable.data_ptr<scalar_t>() : nullptr);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dq, dk, dv, dtable};
}

// ---- 3D RoPE: one thread per (b, h, l, pair) ----

template <typename T>
__global__ void rope_fwd_kernel(const T* x, const T* pos, const T* freqs, T* y, int64_t B, int64_t H, int64_t L,
                                int64_t C, int64_t P) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t halfc = (C + 1) / 2;
  if (idx >= B * H * L * halfc) return;
  const int64_t k = idx % halfc, row = idx / halfc;  // row = (b*H + h)*L + l
  const int64_t l = row % L, h = (row / L) % H, b = row / (L * H);
  const T* xr = x + row * C;
  T* yr = y + row * C;
  if (k >= P) {  // pass-through channels
    yr[2 * k] = xr[2 * k];
    if (2 * k + 1 < C) yr[2 * k + 1] = xr[2 * k + 1];
    return;
  }
  const T* pv = pos + (b * L + l) * 3;
  const T* f = freqs + (h * P + k) * 3;
  const T ang = pv[0] * f[0] + pv[1] * f[1] + pv[2] * f[2];
  const T c = cos(ang), s = sin(ang);
  const T x0 = xr[2 * k], x1 = xr[2 * k + 1];
  yr[2 * k] = x0 * c - x1 * s;
  yr[2 * k + 1] = x0 * s + x1 * c;
}

template <typename T>
__global__ void rope_bwd_kernel(const T* g, const T* x, const T* pos, const T* freqs, T* dx, T* dfreqs, int64_t B,
                                int64_t H, int64_t L, int64_t C, int64_t P) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t halfc = (C + 1) / 2;
  if (idx >= B * H * L * halfc) return;
  const int64_t k = idx % halfc, row = idx / halfc;
  const int64_t l = row % L, h = (row / L) % H, b = row / (L * H);
  const T *xr = x + row * C, *gr = g + row * C;
  T* dr = dx + row * C;
  if (k >= P) {
    dr[2 * k] = gr[2 * k];
    if (2 * k + 1 < C) dr[2 * k + 1] = gr[2 * k + 1];
    return;
  }
  const T* pv = pos + (b * L + l) * 3;
  const T* f = freqs + (h * P + k) * 3;
  const T ang = pv[0] * f[0] + pv[1] * f[1] + pv[2] * f[2];
  const T c = cos(ang), s = sin(ang);
  const T x0 = xr[2 * k], x1 = xr[2 * k + 1], g0 = gr[2 * k], g1 = gr[2 * k + 1];
  dr[2 * k] = g0 * c + g1 * s;
  dr[2 * k + 1] = -g0 * s + g1 * c;
  const T da = g0 * (-x0 * s - x1 * c) + g1 * (x0 * c - x1 * s);
  T* df = dfreqs + (h * P + k) * 3;
  atomicAdd(df, da * pv[0]);
  atomicAdd(df + 1, da * pv[1]);
  atomicAdd(df + 2, da * pv[2]);
}

at::Tensor rope3d_fwd_cuda(const at::Tensor& x_in, const at::Tensor& pos_in, const at::Tensor& freqs_in) {
  check_rope_inputs(x_in, pos_in, freqs_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), pos = pos_in.contiguous(), freqs = freqs_in.contiguous();
  const int64_t B = x.size(0), H = x.size(1), L = x.size(2), C = x.size(3), P = freqs.size(1);
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t n = B * H * L * ((C + 1) / 2);
  if (n == 0) return y;
  const int threads = 256;
  const unsigned blocks = (unsigned)((n + threads - 1) / threads);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rope3d_fwd_cuda", [&] {
    rope_fwd_kernel<scalar_t><<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), pos.data_ptr<scalar_t>(), freqs.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), B, H,
        L, C, P);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

std::tuple<at::Tensor, at::Tensor> rope3d_bwd_cuda(const at::Tensor& grad, const at::Tensor& x_in,
                                                   const at::Tensor& pos_in, const at::Tensor& freqs_in) {
  check_rope_inputs(x_in, pos_in, freqs_in);
  TORCH_CHECK_VALUE(grad.sizes() == x_in.sizes(), "rope3d_bwd: grad must have x's shape ", x_in.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), pos = pos_in.contiguous(), freqs = freqs_in.contiguous();
  const at::Tensor g = grad.contiguous().to(x.scalar_type());
  const int64_t B = x.size(0), H = x.size(1), L = x.size(2), C = x.size(3), P = freqs.size(1);
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor dfreqs = at::zeros_like(freqs, at::MemoryFormat::Contiguous);
  const int64_t n = B * H * L * ((C + 1) / 2);
  if (n == 0) return {dx, dfreqs};
  const int threads = 256;
  const unsigned blocks = (unsigned)((n + threads - 1) / threads);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rope3d_bwd_cuda", [&] {
    rope_bwd_kernel<scalar_t><<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), pos.data_ptr<scalar_t>(), freqs.data_ptr<scalar_t>(),
        dx.data_ptr<scalar_t>(), dfreqs.data_ptr<scalar_t>(), B, H, L, C, P);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dx, dfreqs};
}

}  // namespace

TORCH_LIBRARY_IMPL(octformer, CUDA, m) {
  m.impl("window_attention_fwd", &window_attention_fwd_cuda);
  m.impl("window_attention_bwd", &window_attention_bwd_cuda);
  m.impl("rope3d_fwd", &rope3d_fwd_cuda);
  m.impl("rope3d_bwd", &rope3d_bwd_cuda);
}

}  // namespace octformer
