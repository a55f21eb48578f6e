// CPU window attention: flash-style online softmax over key blocks, RPE bias and key mask added per block,
// so no (groups, K, K) tensor exists. Forward tasks are (segment, head, query block), backward tasks (segment chunk,
// head); threads pull them from a shared queue (parallel_tasks).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "attention.h"
#include "cpu_common.h"

namespace octformer {
namespace {

constexpr int64_t kBlockK = 512;  // keys per block (S block is at most 256 x kBlockK)

// Larger query blocks for longer segments: fewer, larger GEMMs; small segments keep scratch in L1.
inline int64_t query_block(int64_t len) { return len >= 768 ? 256 : (len >= 192 ? 64 : 32); }
// Backward tasks cover chunks of segments; the chunk size depends only on the segment count (never on the thread
// count), so RPE-gradient sums are bitwise reproducible. At most kMaxBwdChunks partial tables (H x rows each) are
// kept: a fixed few KiB, while chunks x heads tasks still keep 16 threads busy.
constexpr int64_t kMinBwdChunk = 8, kMaxBwdChunks = 16;

template <typename T>
struct AttnArgs {
  AttnProblem p;
  const T *q = nullptr, *k = nullptr, *v = nullptr;
  const int16_t* coords = nullptr;
  const T* table = nullptr;
  const T* mask = nullptr;
  const int32_t* cu = nullptr;
  T scale = T(1);

  void segment(int64_t s, int64_t& start, int64_t& len) const {
    if (p.varlen) {
      start = cu[s];
      len = cu[s + 1] - cu[s];
    } else {
      start = 0;
      len = p.group;
    }
  }
  int64_t base(int64_t s, int64_t h, int64_t start) const {
    return s * p.seg_stride + h * p.head_stride + start * p.tok_stride;
  }
  int64_t lse_base(int64_t s, int64_t h, int64_t start) const {
    return s * p.lse_seg + h * p.lse_head + start * p.lse_tok;
  }
  // index of the first token of segment s in the per-token arrays (coords, key mask)
  int64_t token0(int64_t s, int64_t start) const { return s * p.group + start; }
};

// Per-task scratch: one S block, one dP block, the head's RPE table column, key coordinates as SoA.
// Sized by the longest segment, so small windows keep a few KiB of scratch (auxiliary memory stays O(threads)).
template <typename T>
struct Scratch {
  int64_t rows, lds;  // S/dP blocks are rows x lds, row stride lds
  std::vector<T> S, dP, tab, m, l, d, lse;
  std::vector<int32_t> kx, ky, kz;
  Scratch(const AttnProblem& p, bool need_dp)
      : rows(query_block(std::max<int64_t>(p.max_len, 1))),
        lds(std::max<int64_t>(1, std::min(kBlockK, p.max_len))),
        S(rows * lds), dP(need_dp ? rows * lds : 0), tab(p.rpe_rows), m(rows), l(rows), d(rows), lse(rows),
        kx(lds), ky(lds), kz(lds) {}
};

template <typename T>
void load_head_table(const AttnArgs<T>& a, int64_t h, Scratch<T>& w) {
  for (int64_t r = 0; r < a.p.rpe_rows; ++r) w.tab[r] = a.table[r * a.p.heads + h];
}

// S[i, j] += rpe(i, j) + mask[j] for queries [gq, gq+nq) and keys [gk, gk+nk) (global token ids).
template <typename T>
void add_bias(const AttnArgs<T>& a, int64_t gq, int64_t nq, int64_t gk, int64_t nk, Scratch<T>& w) {
  T* S = w.S.data();
  if (a.p.has_rpe) {
    const int32_t b = (int32_t)a.p.rpe_bound;
    for (int64_t j = 0; j < nk; ++j) {
      const int16_t* c = a.coords + (gk + j) * 3;
      w.kx[j] = c[0];
      w.ky[j] = c[1];
      w.kz[j] = c[2];
    }
    // RPE and key mask in one pass over the block
    rpe_bias_block(S, w.lds, nq, nk, a.coords + gq * 3, w.kx.data(), w.ky.data(), w.kz.data(), w.tab.data(), b,
                   a.p.has_mask ? a.mask + gk : nullptr);
    return;
  }
  if (a.p.has_mask) {
    const T* mk = a.mask + gk;
    for (int64_t i = 0; i < nq; ++i) {
      T* srow = S + i * w.lds;
      for (int64_t j = 0; j < nk; ++j) srow[j] += mk[j];
    }
  }
}

// S = scale * Q[qb:qb+nq] K[kb:kb+nk]^T + bias, in the scratch S block; g0 is the segment's first global token.
template <typename T>
T* score_block(const AttnArgs<T>& a, const T* Q, const T* K, int64_t g0, int64_t qb, int64_t nq, int64_t kb,
               int64_t nk, Scratch<T>& w) {
  const int64_t ld = a.p.tok_stride;
  T* S = w.S.data();
  gemm_rm(false, true, nq, nk, a.p.dim, a.scale, Q + qb * ld, ld, K + kb * ld, ld, T(0), S, w.lds);
  add_bias(a, g0 + qb, nq, g0 + kb, nk, w);
  return S;
}

// One forward work item: queries [qb, qb + query_block(len)) of segment s, head h, against all keys of the segment.
template <typename T>
void fwd_block(const AttnArgs<T>& a, int64_t s, int64_t h, int64_t qb, T* out, T* lse, Scratch<T>& w) {
  int64_t start, len;
  a.segment(s, start, len);
  const int64_t C = a.p.dim, ld = a.p.tok_stride, off = a.base(s, h, start), g0 = a.token0(s, start);
  const T *Q = a.q + off, *K = a.k + off, *V = a.v + off;
  T* O = out + off;
  T* L = lse != nullptr ? lse + a.lse_base(s, h, start) : nullptr;  // null: caller needs no logsumexp
  const T ninf = -std::numeric_limits<T>::infinity();
  if (a.p.has_rpe) load_head_table(a, h, w);
  const int64_t nq = std::min(query_block(len), len - qb);
  T* Ob = O + qb * ld;
  for (int64_t i = 0; i < nq; ++i) {
    std::fill(Ob + i * ld, Ob + i * ld + C, T(0));
    w.m[i] = ninf;
    w.l[i] = T(0);
  }
  for (int64_t kb = 0; kb < len; kb += kBlockK) {
    const int64_t nk = std::min(kBlockK, len - kb);
    T* S = score_block(a, Q, K, g0, qb, nq, kb, nk, w);
    for (int64_t i = 0; i < nq; ++i) {
      T* srow = S + i * w.lds;
      const T mx = row_max(srow, nk);
      const T mnew = std::max(w.m[i], mx);
      if (mnew == ninf) {  // every key so far is masked: weights stay 0
        std::fill(srow, srow + nk, T(0));
        continue;
      }
      const T sum = exp_shift_sum(srow, nk, mnew);
      const T corr = w.m[i] == ninf ? T(0) : std::exp(w.m[i] - mnew);
      if (corr != T(1)) {
        T* orow = Ob + i * ld;
        for (int64_t c = 0; c < C; ++c) orow[c] *= corr;
      }
      w.l[i] = w.l[i] * corr + sum;
      w.m[i] = mnew;
    }
    gemm_rm(false, false, nq, C, nk, T(1), S, w.lds, V + kb * ld, ld, T(1), Ob, ld);
  }
  for (int64_t i = 0; i < nq; ++i) {
    T* orow = Ob + i * ld;
    if (w.l[i] == T(0)) {  // fully masked row: output 0, lse -inf
      std::fill(orow, orow + C, T(0));
      if (L) L[(qb + i) * a.p.lse_tok] = ninf;
      continue;
    }
    const T inv = T(1) / w.l[i];
    for (int64_t c = 0; c < C; ++c) orow[c] *= inv;
    if (L) L[(qb + i) * a.p.lse_tok] = w.m[i] + std::log(w.l[i]);
  }
}

// Forward work items (segment, head, query block), numbered segment-major then head-major, so that tasks taken one
// after another share a segment's K/V in cache. Splitting queries keeps both threads busy on few long segments.
struct FwdTasks {
  int64_t total = 0, per_segment = 0;  // per_segment: equal groups only
  std::vector<int64_t> first;          // varlen: first task of each segment (S + 1 entries)

  template <typename T>
  explicit FwdTasks(const AttnArgs<T>& a) {
    auto count = [&](int64_t len) { return a.p.heads * ((len + query_block(len) - 1) / query_block(len)); };
    if (!a.p.varlen) {
      per_segment = count(a.p.group);
      total = per_segment * a.p.num_segments;
      return;
    }
    first.resize(a.p.num_segments + 1);
    for (int64_t s = 0; s < a.p.num_segments; ++s) first[s + 1] = first[s] + count(a.cu[s + 1] - a.cu[s]);
    total = first.back();
  }
  // task -> (segment, head, first query of the block)
  template <typename T>
  void locate(const AttnArgs<T>& a, int64_t t, int64_t& s, int64_t& h, int64_t& qb) const {
    int64_t r;
    if (!a.p.varlen) {
      s = t / per_segment;
      r = t % per_segment;
    } else {  // the last segment starting at or before t: skips empty segments (they own no tasks)
      s = std::upper_bound(first.begin(), first.end(), t) - first.begin() - 1;
      r = t - first[s];
    }
    int64_t start, len;
    a.segment(s, start, len);
    const int64_t bq = query_block(len), blocks = (len + bq - 1) / bq;
    h = r / blocks;
    qb = (r % blocks) * bq;
  }
};

template <typename T>
void bwd_segment(const AttnArgs<T>& a, int64_t s, int64_t h, const T* gout, const T* out, const T* lse, T* dq, T* dk,
                 T* dv, T* dtab, Scratch<T>& w) {
  int64_t start, len;
  a.segment(s, start, len);
  if (len == 0) return;
  const int64_t C = a.p.dim, ld = a.p.tok_stride, off = a.base(s, h, start), g0 = a.token0(s, start);
  const T *Q = a.q + off, *K = a.k + off, *V = a.v + off, *O = out + off, *dO = gout + off;
  T *dQ = dq + off, *dK = dk + off, *dV = dv + off;
  // lse == nullptr: the forward kept no logsumexp; each query's softmax normaliser is recomputed here instead
  const T* L = lse != nullptr ? lse + a.lse_base(s, h, start) : nullptr;
  const int64_t lse_tok = a.p.lse_tok;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int32_t b = (int32_t)a.p.rpe_bound, span = 2 * b + 1;
  const int64_t block_q = query_block(len);
  const bool one_key_block = len <= kBlockK;
  for (int64_t qb = 0; qb < len; qb += block_q) {
    const int64_t nq = std::min(block_q, len - qb);
    for (int64_t i = 0; i < nq; ++i) {
      const T *o = O + (qb + i) * ld, *g = dO + (qb + i) * ld;
      T acc = T(0);
      for (int64_t c = 0; c < C; ++c) acc += o[c] * g[c];
      w.d[i] = acc;
      if (L != nullptr) w.lse[i] = L[(qb + i) * lse_tok];
    }
    if (L == nullptr && !one_key_block) {  // keys span several blocks: one extra pass for the normalisers
      for (int64_t i = 0; i < nq; ++i) {
        w.m[i] = ninf;
        w.l[i] = T(0);
      }
      for (int64_t kb = 0; kb < len; kb += kBlockK) {
        const int64_t nk = std::min(kBlockK, len - kb);
        T* S = score_block(a, Q, K, g0, qb, nq, kb, nk, w);
        for (int64_t i = 0; i < nq; ++i) {
          T* srow = S + i * w.lds;
          const T mnew = std::max(w.m[i], row_max(srow, nk));
          if (mnew == ninf) continue;
          const T sum = exp_shift_sum(srow, nk, mnew);
          w.l[i] = w.l[i] * (w.m[i] == ninf ? T(0) : std::exp(w.m[i] - mnew)) + sum;
          w.m[i] = mnew;
        }
      }
      for (int64_t i = 0; i < nq; ++i) w.lse[i] = w.l[i] == T(0) ? ninf : w.m[i] + std::log(w.l[i]);
    }
    for (int64_t kb = 0; kb < len; kb += kBlockK) {
      const int64_t nk = std::min(kBlockK, len - kb);
      T* S = score_block(a, Q, K, g0, qb, nq, kb, nk, w);
      T* dP = w.dP.data();
      if (L == nullptr && one_key_block) {  // the whole row is in S: P = softmax(S) directly
        for (int64_t i = 0; i < nq; ++i) {
          T* srow = S + i * w.lds;
          const T mx = row_max(srow, nk);
          const T sum = mx == ninf ? T(0) : exp_shift_sum(srow, nk, mx);
          if (sum == T(0)) {  // fully masked query
            std::fill(srow, srow + nk, T(0));
            continue;
          }
          const T inv = T(1) / sum;
          for (int64_t j = 0; j < nk; ++j) srow[j] *= inv;
        }
      } else {
        for (int64_t i = 0; i < nq; ++i) {  // P = exp(S - lse)
          T* srow = S + i * w.lds;
          const T li = w.lse[i];
          if (li == ninf) {
            std::fill(srow, srow + nk, T(0));
            continue;
          }
          exp_shift_sum(srow, nk, li);
        }
      }
      gemm_rm(true, false, nk, C, nq, T(1), S, w.lds, dO + qb * ld, ld, T(1), dV + kb * ld, ld);  // dV += P^T dO
      gemm_rm(false, true, nq, nk, C, T(1), dO + qb * ld, ld, V + kb * ld, ld, T(0), dP, w.lds);  // dP = dO V^T
      for (int64_t i = 0; i < nq; ++i) {  // dS = P * (dP - D)
        const T* srow = S + i * w.lds;
        T* drow = dP + i * w.lds;
        const T di = w.d[i];
        for (int64_t j = 0; j < nk; ++j) drow[j] = srow[j] * (drow[j] - di);
      }
      if (a.p.has_rpe) {
        for (int64_t j = 0; j < nk; ++j) {
          const int16_t* c = a.coords + (g0 + kb + j) * 3;
          w.kx[j] = c[0];
          w.ky[j] = c[1];
          w.kz[j] = c[2];
        }
        for (int64_t i = 0; i < nq; ++i) {
          const int16_t* c = a.coords + (g0 + qb + i) * 3;
          const int32_t qx = c[0] + b, qy = c[1] + b, qz = c[2] + b;
          const T* drow = dP + i * w.lds;
          for (int64_t j = 0; j < nk; ++j) {
            const T g = drow[j];
            dtab[std::min(std::max(qx - w.kx[j], 0), 2 * b)] += g;
            dtab[span + std::min(std::max(qy - w.ky[j], 0), 2 * b)] += g;
            dtab[2 * span + std::min(std::max(qz - w.kz[j], 0), 2 * b)] += g;
          }
        }
      }
      gemm_rm(false, false, nq, C, nk, a.scale, dP, w.lds, K + kb * ld, ld, T(1), dQ + qb * ld, ld);  // dQ += dS K
      gemm_rm(true, false, nk, C, nq, a.scale, dP, w.lds, Q + qb * ld, ld, T(1), dK + kb * ld, ld);   // dK += dS^T Q
    }
  }
}

void check_cu_seqlens_cpu(const at::Tensor& cu, int64_t total) {
  const int32_t* c = cu.data_ptr<int32_t>();
  const int64_t n = cu.numel();
  TORCH_CHECK_VALUE(c[0] == 0, "window_attention: cu_seqlens[0] must be 0, got ", c[0]);
  for (int64_t i = 1; i < n; ++i) {
    TORCH_CHECK_VALUE(c[i] >= c[i - 1], "window_attention: cu_seqlens must be non-decreasing, got cu_seqlens[", i,
                      "] = ", c[i], " < ", c[i - 1]);
  }
  TORCH_CHECK_VALUE(c[n - 1] == total, "window_attention: cu_seqlens[-1] must equal the token count ", total, ", got ",
                    c[n - 1]);
}

template <typename T>
AttnArgs<T> make_args(const AttnProblem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const std::optional<at::Tensor>& cu, const at::Tensor& coords, const at::Tensor& table,
                      const at::Tensor& mask, double scale) {
  AttnArgs<T> a;
  a.p = p;
  a.q = q.data_ptr<T>();
  a.k = k.data_ptr<T>();
  a.v = v.data_ptr<T>();
  a.cu = cu.has_value() ? cu->data_ptr<int32_t>() : nullptr;
  a.coords = p.has_rpe ? coords.data_ptr<int16_t>() : nullptr;
  a.table = p.has_rpe ? table.data_ptr<T>() : nullptr;
  a.mask = p.has_mask ? mask.data_ptr<T>() : nullptr;
  a.scale = (T)scale;
  return a;
}

struct Prepared {
  AttnProblem p;
  at::Tensor q, k, v, coords, table, mask;
  std::optional<at::Tensor> cu;
};

Prepared prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& coords,
                 const std::optional<at::Tensor>& rpe_table, const std::optional<at::Tensor>& key_mask) {
  Prepared r;
  r.p = check_attention_inputs(q, k, v, cu_seqlens, coords, rpe_table, key_mask);
  TORCH_CHECK_VALUE(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
                    "window_attention (CPU): dtype must be float32 or float64, got ", q.scalar_type());
  r.q = q.contiguous();
  r.k = k.contiguous();
  r.v = v.contiguous();
  if (cu_seqlens.has_value()) {
    r.cu = cu_seqlens->contiguous();
    check_cu_seqlens_cpu(*r.cu, r.p.total_tokens);
    const int32_t* c = r.cu->data_ptr<int32_t>();
    for (int64_t i = 0; i < r.p.num_segments; ++i) r.p.max_len = std::max<int64_t>(r.p.max_len, c[i + 1] - c[i]);
  } else {
    r.p.max_len = r.p.group;
  }
  if (r.p.has_rpe) {
    r.coords = coords->contiguous();
    r.table = rpe_table->contiguous();
  }
  if (r.p.has_mask) r.mask = key_mask->contiguous();
  return r;
}

at::Tensor lse_empty(const AttnProblem& p, const at::Tensor& q) {
  if (p.varlen) return at::empty({p.total_tokens, p.heads}, q.options());
  return at::empty({p.num_segments, p.heads, p.group}, q.options());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> window_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                            const at::Tensor& v,
                                                            const std::optional<at::Tensor>& cu_seqlens,
                                                            const std::optional<at::Tensor>& coords,
                                                            const std::optional<at::Tensor>& rpe_table,
                                                            const std::optional<at::Tensor>& key_mask, double scale,
                                                            bool return_lse) {
  Prepared r = prepare(q, k, v, cu_seqlens, coords, rpe_table, key_mask);
  const AttnProblem& p = r.p;
  at::Tensor out = at::empty_like(r.q, at::MemoryFormat::Contiguous);
  at::Tensor lse = return_lse ? lse_empty(p, r.q) : at::empty({0}, r.q.options());
  AT_DISPATCH_FLOATING_TYPES(r.q.scalar_type(), "window_attention_fwd_cpu", [&] {
    const AttnArgs<scalar_t> a = make_args<scalar_t>(p, r.q, r.k, r.v, r.cu, r.coords, r.table, r.mask, scale);
    scalar_t* o = out.data_ptr<scalar_t>();
    scalar_t* l = return_lse ? lse.data_ptr<scalar_t>() : nullptr;
    const FwdTasks tasks(a);
    parallel_tasks(tasks.total, 0, [&](TaskQueue& queue) {
      const BlasSingleThread blas_guard;
      Scratch<scalar_t> w(p, false);
      int64_t begin, end, s, h, qb;
      while (queue.next(begin, end)) {
        for (int64_t t = begin; t < end; ++t) {
          tasks.locate(a, t, s, h, qb);
          fwd_block(a, s, h, qb, o, l, w);
        }
      }
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& coords,
    const std::optional<at::Tensor>& rpe_table, const std::optional<at::Tensor>& key_mask, double scale) {
  Prepared r = prepare(q, k, v, cu_seqlens, coords, rpe_table, key_mask);
  const AttnProblem& p = r.p;
  TORCH_CHECK_VALUE(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(),
                    "window_attention_bwd: grad_out and out must have q's shape ", q.sizes());
  // lse may be empty (forward run with return_lse=False): the backward then recomputes the softmax normalisers
  TORCH_CHECK_VALUE(lse.numel() == p.total_tokens * p.heads || lse.numel() == 0, "window_attention_bwd: lse has ",
                    lse.numel(), " values, expected ", p.total_tokens * p.heads, " or 0 (recompute)");
  const at::Tensor g = grad_out.contiguous().to(q.scalar_type());
  const at::Tensor o = out.contiguous();
  const at::Tensor l = lse.contiguous();
  at::Tensor dq = at::zeros_like(r.q, at::MemoryFormat::Contiguous);
  at::Tensor dk = at::zeros_like(r.k, at::MemoryFormat::Contiguous);
  at::Tensor dv = at::zeros_like(r.v, at::MemoryFormat::Contiguous);
  const int64_t chunk_size = std::max(kMinBwdChunk, (p.num_segments + kMaxBwdChunks - 1) / kMaxBwdChunks);
  const int64_t chunks = (p.num_segments + chunk_size - 1) / chunk_size;
  at::Tensor partial = at::zeros({p.has_rpe ? chunks : 0, p.heads, p.rpe_rows}, q.options());
  AT_DISPATCH_FLOATING_TYPES(r.q.scalar_type(), "window_attention_bwd_cpu", [&] {
    const AttnArgs<scalar_t> a = make_args<scalar_t>(p, r.q, r.k, r.v, r.cu, r.coords, r.table, r.mask, scale);
    const scalar_t *gp = g.data_ptr<scalar_t>(), *op = o.data_ptr<scalar_t>(), *lp = l.numel() ? l.data_ptr<scalar_t>() : nullptr;
    scalar_t *dqp = dq.data_ptr<scalar_t>(), *dkp = dk.data_ptr<scalar_t>(), *dvp = dv.data_ptr<scalar_t>();
    scalar_t* part = p.has_rpe ? partial.data_ptr<scalar_t>() : nullptr;
    parallel_tasks(chunks * p.heads, 1, [&](TaskQueue& queue) {
      const BlasSingleThread blas_guard;
      Scratch<scalar_t> w(p, true);
      std::vector<scalar_t> dummy(1);
      int64_t begin, end;
      while (queue.next(begin, end)) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t chunk = t / p.heads, h = t % p.heads;
          scalar_t* dtab = p.has_rpe ? part + (chunk * p.heads + h) * p.rpe_rows : dummy.data();
          if (p.has_rpe) load_head_table(a, h, w);
          const int64_t s_end = std::min(p.num_segments, (chunk + 1) * chunk_size);
          for (int64_t s = chunk * chunk_size; s < s_end; ++s) bwd_segment(a, s, h, gp, op, lp, dqp, dkp, dvp, dtab, w);
        }
      }
    });
  });
  at::Tensor dtable;
  if (p.has_rpe) {
    // fixed-order sum over chunks (deterministic for any thread count), written as (R, H)
    dtable = at::zeros({p.rpe_rows, p.heads}, q.options());
    AT_DISPATCH_FLOATING_TYPES(r.q.scalar_type(), "window_attention_bwd_rpe_sum", [&] {
      const scalar_t* part = partial.data_ptr<scalar_t>();
      scalar_t* dt = dtable.data_ptr<scalar_t>();
      for (int64_t c = 0; c < chunks; ++c)
        for (int64_t h = 0; h < p.heads; ++h)
          for (int64_t row = 0; row < p.rpe_rows; ++row) dt[row * p.heads + h] += part[(c * p.heads + h) * p.rpe_rows + row];
    });
  } else {
    dtable = at::zeros({0, p.heads}, q.options());
  }
  return {dq, dk, dv, dtable};
}

}  // namespace octformer
