// CUDA registration of pan_ops::weighted_pool and its private backward: input
// checks, device guard and launches on the current stream. The kernels and their design are
// in weighted_pool_kernels.cuh, the planning of their launches in weighted_pool_launch.cuh.
#include "weighted_pool_launch.cuh"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <limits>

namespace pan_ops {
namespace {

// Launches on one device's current stream, so launches run in the order they are made.
struct StreamLauncher {
  int multiprocessors;
  cudaStream_t stream;

  template <typename... Params, typename... Args>
  void launch(void (*kernel)(Params...), dim3 grid, int threads, Args... args) const {
    kernel<<<grid, threads, 0, stream>>>(static_cast<Params>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

StreamLauncher current_launcher(const at::Tensor& t) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, t.get_device()));
  return {count, c10::cuda::getCurrentCUDAStream(t.get_device()).stream()};
}

at::Tensor weighted_pool_cuda(const at::Tensor& features, const at::Tensor& masks, double eps,
                              c10::string_view backend) {
  check_forward_inputs(features, masks, eps);
  check_backend(backend, c10::DeviceType::CUDA, features);
  TORCH_CHECK(masks.size(1) <= std::numeric_limits<int>::max(), "weighted_pool: too many parts (masks ",
              masks.sizes(), ")");
  const c10::cuda::CUDAGuard device_guard(features.device());
  return pool_forward(current_launcher(features), features, masks, eps);
}

std::tuple<at::Tensor, at::Tensor> weighted_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& features,
                                                               const at::Tensor& masks, double eps,
                                                               c10::string_view backend) {
  check_backward_inputs(grad, features, masks, eps);
  check_backend(backend, c10::DeviceType::CUDA, features);
  TORCH_CHECK(masks.size(1) <= std::numeric_limits<int>::max(), "weighted_pool backward: too many parts (masks ",
              masks.sizes(), ")");
  const c10::cuda::CUDAGuard device_guard(features.device());
  return pool_backward(current_launcher(features), grad, features, masks, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(pan_ops, CUDA, m) {
  m.impl("weighted_pool", &weighted_pool_cuda);
  m.impl("_weighted_pool_backward", &weighted_pool_backward_cuda);
}

}  // namespace pan_ops
