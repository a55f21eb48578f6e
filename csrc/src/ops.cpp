// Op schemas in the `octformer` namespace and their CPU kernels; CUDA kernels register in *_cuda.cu.
#include <Python.h>
#include <torch/library.h>

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
  // Test hooks: switch the CPU block GEMMs between libtorch's BLAS and the portable loops.
  m.def("_set_blas(bool enabled) -> bool", &set_blas);
  m.def("_has_blas() -> bool", &has_blas);
}

TORCH_LIBRARY_IMPL(octformer, CPU, m) {
  m.impl("window_attention_fwd", &window_attention_fwd_cpu);
  m.impl("window_attention_bwd", &window_attention_bwd_cpu);
  m.impl("rope3d_fwd", &rope3d_fwd_cpu);
  m.impl("rope3d_bwd", &rope3d_bwd_cpu);
}

}  // namespace octformer
