#include "cpu_common.h"

#include <algorithm>

namespace octformer {

bool blas_available() { return sgemm_ != nullptr && dgemm_ != nullptr && MKL_Set_Num_Threads_Local != nullptr; }

bool& blas_enabled() {
  static bool enabled = blas_available();
  return enabled;
}

template <typename T>
static inline void gemm_loops_impl(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                                   int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    T* c = C + i * ldc;
    if (beta == T(0)) {
      for (int64_t j = 0; j < N; ++j) c[j] = T(0);
    } else if (beta != T(1)) {
      for (int64_t j = 0; j < N; ++j) c[j] *= beta;
    }
    if (!tb) {
      // c[j] += sum_p opA[i,p] * B[p,j]: broadcast-FMA over contiguous j.
      for (int64_t p = 0; p < K; ++p) {
        const T a = alpha * (ta ? A[p * lda + i] : A[i * lda + p]);
        const T* b = B + p * ldb;
        for (int64_t j = 0; j < N; ++j) c[j] += a * b[j];
      }
    } else {
      // c[j] += sum_p opA[i,p] * B[j,p]: dot products over contiguous p.
      for (int64_t j = 0; j < N; ++j) {
        const T* b = B + j * ldb;
        T s = T(0);
        if (!ta) {
          const T* a = A + i * lda;
          for (int64_t p = 0; p < K; ++p) s += a[p] * b[p];
        } else {
          for (int64_t p = 0; p < K; ++p) s += A[p * lda + i] * b[p];
        }
        c[j] += alpha * s;
      }
    }
  }
}

OCTF_MULTIVERSION void gemm_loops(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                                  int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_loops_impl<float>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

OCTF_MULTIVERSION void gemm_loops(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                                  int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  gemm_loops_impl<double>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

static inline float exp_one(float v) {
  // exp(v) = 2^k * exp(r), r = v - k ln2 in [-ln2/2, ln2/2]; degree-6 polynomial; exactly 0 below -87.3.
  const float log2e = 1.44269504088896341f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  const bool underflow = v < -87.3f;
  v = v < -87.3f ? -87.3f : (v > 88.3f ? 88.3f : v);
  const float kf = std::nearbyint(v * log2e);
  float r = v - kf * ln2_hi;
  r = r - kf * ln2_lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t ki = (int32_t)kf;
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += ki << 23;
  float out;
  std::memcpy(&out, &bits, 4);
  return underflow ? 0.0f : out;
}

OCTF_MULTIVERSION void exp_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = exp_one(x[i]);
}

constexpr int kLanes = 16;

OCTF_MULTIVERSION float row_max(const float* x, int64_t n) {
  float lane[kLanes];
  for (int l = 0; l < kLanes; ++l) lane[l] = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] = lane[l] > x[i + l] ? lane[l] : x[i + l];
  float m = -std::numeric_limits<float>::infinity();
  for (int l = 0; l < kLanes; ++l) m = m > lane[l] ? m : lane[l];
  for (; i < n; ++i) m = m > x[i] ? m : x[i];
  return m;
}

OCTF_MULTIVERSION float exp_shift_sum(float* x, int64_t n, float shift) {
  float lane[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float e = exp_one(x[i + l] - shift);
      x[i + l] = e;
      lane[l] += e;
    }
  float sum = 0.0f;
  for (int l = 0; l < kLanes; ++l) sum += lane[l];
  for (; i < n; ++i) {
    const float e = exp_one(x[i] - shift);
    x[i] = e;
    sum += e;
  }
  return sum;
}

template <typename T>
static inline void rpe_bias_block_impl(T* S, int64_t lds, int64_t nq, int64_t nk, const int16_t* qc, const int32_t* kx,
                                       const int32_t* ky, const int32_t* kz, const T* tab, int32_t b, const T* mask) {
  const int32_t span = 2 * b + 1, hi = 2 * b;
  const T* __restrict__ tx = tab;
  const T* __restrict__ ty = tab + span;
  const T* __restrict__ tz = tab + 2 * span;
  const int32_t* __restrict__ kxr = kx;
  const int32_t* __restrict__ kyr = ky;
  const int32_t* __restrict__ kzr = kz;
  const int32_t n = (int32_t)nk;
  for (int64_t i = 0; i < nq; ++i) {
    const int32_t qx = qc[3 * i] + b, qy = qc[3 * i + 1] + b, qz = qc[3 * i + 2] + b;
    T* __restrict__ srow = S + i * lds;
    if (mask != nullptr) {
      const T* __restrict__ mk = mask;
      for (int32_t j = 0; j < n; ++j) {
        const int32_t ix = std::min(std::max(qx - kxr[j], 0), hi);
        const int32_t iy = std::min(std::max(qy - kyr[j], 0), hi);
        const int32_t iz = std::min(std::max(qz - kzr[j], 0), hi);
        srow[j] += (tx[ix] + ty[iy] + tz[iz]) + mk[j];
      }
    } else {
      for (int32_t j = 0; j < n; ++j) {
        const int32_t ix = std::min(std::max(qx - kxr[j], 0), hi);
        const int32_t iy = std::min(std::max(qy - kyr[j], 0), hi);
        const int32_t iz = std::min(std::max(qz - kzr[j], 0), hi);
        srow[j] += tx[ix] + ty[iy] + tz[iz];
      }
    }
  }
}

OCTF_MULTIVERSION void rpe_bias_block(float* S, int64_t lds, int64_t nq, int64_t nk, const int16_t* qc,
                                      const int32_t* kx, const int32_t* ky, const int32_t* kz, const float* tab,
                                      int32_t b, const float* mask) {
  rpe_bias_block_impl(S, lds, nq, nk, qc, kx, ky, kz, tab, b, mask);
}

OCTF_MULTIVERSION void rpe_bias_block(double* S, int64_t lds, int64_t nq, int64_t nk, const int16_t* qc,
                                      const int32_t* kx, const int32_t* ky, const int32_t* kz, const double* tab,
                                      int32_t b, const double* mask) {
  rpe_bias_block_impl(S, lds, nq, nk, qc, kx, ky, kz, tab, b, mask);
}

double row_max(const double* x, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) m = m > x[i] ? m : x[i];
  return m;
}

double exp_shift_sum(double* x, int64_t n, double shift) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

void exp_inplace(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

}  // namespace octformer
