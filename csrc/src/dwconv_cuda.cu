// CUDA octree depthwise 3x3x3 convolution (CPE): one thread per (row, channel) in the forward; the backward
// scatters grad_x with atomics and reduces grad_w per (offset, channel) over row slices (atomics once per slice),
// so CUDA gradients are not bitwise deterministic, unlike the CPU kernel. Neighbour values are not range-checked
// here (that needs a device sync; octformer.ops.octree_dwconv checks them). Compiled in CI, not run (no GPU).
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "attention.h"

namespace octformer {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kWeightSlices = 64;  // row slices of the grad_w reduction

template <typename T>
__global__ void dwconv_fwd_kernel(const T* x, const int32_t* nb, const T* w, T* y, int64_t M, int64_t C) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= M * C) return;
  const int64_t i = idx / C, c = idx % C;
  T acc = T(0);
  for (int k = 0; k < kNeighbors; ++k) {
    const int32_t j = nb[i * kNeighbors + k];
    if (j >= 0) acc += w[k * C + c] * x[(int64_t)j * C + c];
  }
  y[idx] = acc;
}

template <typename T>
__global__ void dwconv_bwd_input_kernel(const T* gy, const int32_t* nb, const T* w, T* gx, int64_t M, int64_t C) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= M * C) return;
  const int64_t i = idx / C, c = idx % C;
  const T g = gy[idx];
  for (int k = 0; k < kNeighbors; ++k) {
    const int32_t j = nb[i * kNeighbors + k];
    if (j >= 0) atomicAdd(gx + (int64_t)j * C + c, w[k * C + c] * g);
  }
}

// grid (27, slices); each thread sums channels c = threadIdx.x + n * blockDim.x over its slice of rows
template <typename T>
__global__ void dwconv_bwd_weight_kernel(const T* gy, const T* x, const int32_t* nb, T* gw, int64_t M, int64_t C) {
  const int k = blockIdx.x;
  const int64_t rows = (M + gridDim.y - 1) / gridDim.y, i0 = blockIdx.y * rows, i1 = min(M, i0 + rows);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    T acc = T(0);
    for (int64_t i = i0; i < i1; ++i) {
      const int32_t j = nb[i * kNeighbors + k];
      if (j >= 0) acc += gy[i * C + c] * x[(int64_t)j * C + c];
    }
    if (i0 < i1) atomicAdd(gw + k * C + c, acc);
  }
}

at::Tensor octree_dwconv_fwd_cuda(const at::Tensor& x_in, const at::Tensor& neighbors_in, const at::Tensor& weight_in) {
  check_dwconv_inputs(x_in, neighbors_in, weight_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), nb = neighbors_in.contiguous(), w = weight_in.contiguous();
  const int64_t M = x.size(0), C = x.size(1);
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (M * C == 0) return y;
  const unsigned blocks = (unsigned)((M * C + kThreads - 1) / kThreads);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "octree_dwconv_fwd_cuda", [&] {
    dwconv_fwd_kernel<scalar_t><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), nb.data_ptr<int32_t>(), w.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), M, C);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

std::tuple<at::Tensor, at::Tensor> octree_dwconv_bwd_cuda(const at::Tensor& grad, const at::Tensor& x_in,
                                                          const at::Tensor& neighbors_in,
                                                          const at::Tensor& weight_in) {
  check_dwconv_inputs(x_in, neighbors_in, weight_in);
  TORCH_CHECK_VALUE(grad.sizes() == x_in.sizes(), "octree_dwconv_bwd: grad must have x's shape ", x_in.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), nb = neighbors_in.contiguous(), w = weight_in.contiguous();
  const at::Tensor gy = grad.contiguous().to(x.scalar_type());
  const int64_t M = x.size(0), C = x.size(1);
  at::Tensor gx = at::zeros_like(x, at::MemoryFormat::Contiguous);
  at::Tensor gw = at::zeros_like(w, at::MemoryFormat::Contiguous);
  if (M * C == 0) return {gx, gw};
  const unsigned blocks = (unsigned)((M * C + kThreads - 1) / kThreads);
  const dim3 wgrid((unsigned)kNeighbors, (unsigned)std::min<int64_t>(kWeightSlices, M));
  const int wthreads = (int)std::min<int64_t>(kThreads, ((C + 31) / 32) * 32);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "octree_dwconv_bwd_cuda", [&] {
    const auto stream = at::cuda::getCurrentCUDAStream();
    dwconv_bwd_input_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        gy.data_ptr<scalar_t>(), nb.data_ptr<int32_t>(), w.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), M, C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    dwconv_bwd_weight_kernel<scalar_t><<<wgrid, wthreads, 0, stream>>>(
        gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), nb.data_ptr<int32_t>(), gw.data_ptr<scalar_t>(), M, C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(octformer, CUDA, m) {
  m.impl("octree_dwconv_fwd", &octree_dwconv_fwd_cuda);
  m.impl("octree_dwconv_bwd", &octree_dwconv_bwd_cuda);
}

}  // namespace octformer
