// Op schemas in the `octformer` namespace and their CPU kernels; CUDA kernels register in *_cuda.cu.
#include <Python.h>
#include <torch/library.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "attention.h"
#include "cpu_common.h"

extern "C" {
// `import octformer_kernels._C` runs the static registrations below; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace octformer {

static bool set_blas(bool enabled) {
  const bool previous = blas_enabled();
  blas_enabled() = enabled && blas_available();
  return previous;
}

static bool has_blas() { return blas_available(); }

// Test hook: how many tasks of parallel_tasks run at the same time. Each task enters, waits (at most 2 s) until all
// `tasks` are inside, records how many it saw and leaves; 1 means the loops ran serially.
static int64_t concurrency_probe(int64_t tasks) {
  std::atomic<int64_t> inside{0}, most{0};
  parallel_tasks(tasks, 1, [&](TaskQueue& queue) {
    int64_t begin, end;
    while (queue.next(begin, end)) {
      int64_t seen = inside.fetch_add(1) + 1;
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
      while (seen < tasks && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::yield();
        seen = std::max(seen, inside.load());
      }
      int64_t prev = most.load();
      while (seen > prev && !most.compare_exchange_weak(prev, seen)) {
      }
      inside.fetch_sub(1);
    }
  });
  return most.load();
}

TORCH_LIBRARY(octformer, m) {
  m.def(
      "window_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens, Tensor? coords, Tensor? rpe_table, "
      "Tensor? key_mask, float scale, bool return_lse=True) -> (Tensor, Tensor)");
  m.def(
      "window_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "Tensor? cu_seqlens, Tensor? coords, Tensor? rpe_table, Tensor? key_mask, float scale) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("rope3d_fwd(Tensor x, Tensor pos, Tensor freqs) -> Tensor");
  m.def("rope3d_bwd(Tensor grad, Tensor x, Tensor pos, Tensor freqs) -> (Tensor, Tensor)");
  m.def("octree_dwconv_fwd(Tensor x, Tensor neighbors, Tensor weight) -> Tensor");
  m.def("octree_dwconv_bwd(Tensor grad, Tensor x, Tensor neighbors, Tensor weight) -> (Tensor, Tensor)");
  // Test hooks: switch the CPU block GEMMs between libtorch's BLAS and the portable loops.
  m.def("_set_blas(bool enabled) -> bool", &set_blas);
  m.def("_has_blas() -> bool", &has_blas);
  m.def("_concurrency_probe(int tasks) -> int", &concurrency_probe);
}

TORCH_LIBRARY_IMPL(octformer, CPU, m) {
  m.impl("window_attention_fwd", &window_attention_fwd_cpu);
  m.impl("window_attention_bwd", &window_attention_bwd_cpu);
  m.impl("rope3d_fwd", &rope3d_fwd_cpu);
  m.impl("rope3d_bwd", &rope3d_bwd_cpu);
  m.impl("octree_dwconv_fwd", &octree_dwconv_fwd_cpu);
  m.impl("octree_dwconv_bwd", &octree_dwconv_bwd_cpu);
}

}  // namespace octformer
