// Shared CPU helpers: a row-major GEMM (BLAS from libtorch when exported, portable loops otherwise)
// and a branch-free exp that the compiler can vectorise.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__INTEL_COMPILER)
// One binary, three code paths picked at load time (portable: no -march flag needed).
#define OCTF_MULTIVERSION __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define OCTF_MULTIVERSION
#endif

extern "C" {
// Fortran BLAS exported by libtorch_cpu on builds that link MKL/OpenBLAS; weak so that the
// extension still loads (and uses the portable loops) where torch does not export them.
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
// MKL's per-thread thread count. torch disables MKL's dynamic threading, so an sgemm_ issued from inside our
// at::parallel_for would otherwise open a nested team per call (measured: 10-60x slower at 2 threads).
int MKL_Set_Num_Threads_Local(int nthreads) __attribute__((weak));
}

namespace octformer {

// Whether the block GEMMs call the BLAS exported by libtorch (toggled by tests to cover both paths).
// Only MKL is used: it is the one whose threads can be pinned to 1 per calling thread (see BlasSingleThread).
bool& blas_enabled();
bool blas_available();

// RAII: BLAS calls made by this thread run single-threaded (we parallelise outside, over windows and heads).
struct BlasSingleThread {
  int previous = 0;
  BlasSingleThread() {
    if (MKL_Set_Num_Threads_Local != nullptr) previous = MKL_Set_Num_Threads_Local(1);
  }
  ~BlasSingleThread() {
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous);
  }
  BlasSingleThread(const BlasSingleThread&) = delete;
  BlasSingleThread& operator=(const BlasSingleThread&) = delete;
};

// Shared counter that threads pull task ranges from (dynamic scheduling).
class TaskQueue {
 public:
  TaskQueue(int64_t n, int64_t grain) : n_(n), grain_(std::max<int64_t>(1, grain)) {}
  // Next range [begin, end) of at most `grain` tasks; false when all are taken.
  bool next(int64_t& begin, int64_t& end) {
    begin = next_.fetch_add(grain_, std::memory_order_relaxed);
    if (begin >= n_) return false;
    end = std::min(n_, begin + grain_);
    return true;
  }

 private:
  const int64_t n_, grain_;
  std::atomic<int64_t> next_{0};
};

// Runs worker(queue) once on each of up to at::get_num_threads() threads; workers pull tasks from the queue until
// it is empty. Unlike at::parallel_for's equal static split, a thread the OS deschedules (shared machines) does not
// hold up the call: the others take its tasks. Results must depend on the task only (never on the thread).
// `grain` tasks are taken per pull; pass 0 for about 64 pulls per thread.
template <typename Worker>
void parallel_tasks(int64_t n, int64_t grain, const Worker& worker) {
  if (n <= 0) return;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  if (grain <= 0) grain = std::max<int64_t>(1, n / (threads * 64));
  TaskQueue queue(n, grain);
  const int64_t teams = std::min(threads, (n + grain - 1) / grain);
  at::parallel_for(0, teams, 1, [&](int64_t, int64_t) { worker(queue); });
}

void gemm_loops(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                                  int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm_loops(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                                  int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

// Row-major C[M,N] = alpha * op(A) op(B) + beta * C; op(A) is (M,K), op(B) is (K,N). beta == 0 ignores C.
inline void gemm_rm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                    const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (blas_enabled() && sgemm_ != nullptr && K > 0) {
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
    const char tra = ta ? 'T' : 'N', trb = tb ? 'T' : 'N';
    const int m = (int)N, n = (int)M, k = (int)K, la = (int)lda, lb = (int)ldb, lc = (int)ldc;
    sgemm_(&trb, &tra, &m, &n, &k, &alpha, B, &lb, A, &la, &beta, C, &lc);
    return;
  }
  gemm_loops(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

inline void gemm_rm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
                    const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (blas_enabled() && dgemm_ != nullptr && K > 0) {
    const char tra = ta ? 'T' : 'N', trb = tb ? 'T' : 'N';
    const int m = (int)N, n = (int)M, k = (int)K, la = (int)lda, lb = (int)ldb, lc = (int)ldc;
    dgemm_(&trb, &tra, &m, &n, &k, &alpha, B, &lb, A, &la, &beta, C, &lc);
    return;
  }
  gemm_loops(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// exp(x) for a float array in place, ~2 ulp, exactly 0 below -87.3 (so -inf gives 0), no branches.
void exp_inplace(float* x, int64_t n);  // multiversioned in cpu_common.cpp
// double: plain std::exp (used by gradcheck-sized inputs, accuracy over speed).
void exp_inplace(double* x, int64_t n);

// max over x[0, n) (-inf for n == 0), with 16 independent lanes so it vectorises without -ffast-math.
float row_max(const float* x, int64_t n);
double row_max(const double* x, int64_t n);
// x[i] = exp(x[i] - shift) in place; returns the sum of the new values (shift == -inf is the caller's job).
float exp_shift_sum(float* x, int64_t n, float shift);
double exp_shift_sum(double* x, int64_t n, double shift);

// OctFormer RPE (+ key mask) on an S block: S[i, j] += tab[cx] + tab[span + cy] + tab[2 span + cz] (+ mask[j]) with
// c_a = clamp(q_a[i] - k_a[j] + b, 0, 2b), span = 2b + 1. qc: the queries' int16 (x, y, z) triples; kx/ky/kz: the
// keys' coordinates; mask may be null. Multiversioned (the table lookups become AVX2/AVX-512 gathers).
void rpe_bias_block(float* S, int64_t lds, int64_t nq, int64_t nk, const int16_t* qc, const int32_t* kx,
                    const int32_t* ky, const int32_t* kz, const float* tab, int32_t b, const float* mask);
void rpe_bias_block(double* S, int64_t lds, int64_t nq, int64_t nk, const int16_t* qc, const int32_t* kx,
                    const int32_t* ky, const int32_t* kz, const double* tab, int32_t b, const double* mask);

}  // namespace octformer
