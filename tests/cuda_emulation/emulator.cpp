// The CUDA kernels of csrc/cuda/weighted_pool_kernels.cuh and the op's launch planning of
// csrc/cuda/weighted_pool_launch.cuh, compiled for the CPU and run under an emulation of the
// parts of CUDA's execution model they use, so that machines without a GPU (this project's CI)
// run the real kernel code against the float64 reference.
//
// Each CTA of a grid runs as one OS thread per CUDA thread; CTAs run one after another, so a
// kernel's __shared__ arrays can be function-local statics. __syncthreads is a barrier over
// the CTA, and __shfl_xor_sync exchanges through a buffer between two barriers of the warp,
// so every lane of a warp must reach each shuffle, as on a GPU. What this does not model:
// the GPU memory model beyond what barriers order, register limits, and timing.
#include <torch/extension.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

// What CUDA provides to device code, up to the #include of the kernels: dim3, threadIdx and
// blockIdx, the qualifiers, __syncthreads, __shfl_xor_sync, fabs and min.
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx(0, 0, 0);
inline thread_local dim3 blockIdx(0, 0, 0);

namespace emulation {

constexpr int kMaxThreads = 1024;
constexpr int kWarpSize = 32;

struct Block {
  std::unique_ptr<std::barrier<>> all;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  alignas(16) unsigned char lanes[kMaxThreads][16];  // one shuffle slot per thread
};
inline Block block;

// Runs body() as grid.x * grid.y CTAs of `threads` threads each, one CTA at a time.
template <typename Body>
void run_grid(dim3 grid, int threads, const Body& body) {
  TORCH_CHECK(threads % kWarpSize == 0 && threads <= kMaxThreads, "emulation: bad CTA size ", threads);
  for (unsigned y = 0; y < grid.y; ++y) {
    for (unsigned x = 0; x < grid.x; ++x) {
      block.all = std::make_unique<std::barrier<>>(threads);
      block.warps.clear();
      for (int w = 0; w < threads / kWarpSize; ++w) block.warps.push_back(std::make_unique<std::barrier<>>(kWarpSize));
      std::vector<std::thread> team;
      team.reserve(threads);
      for (int t = 0; t < threads; ++t) {
        team.emplace_back([&, t] {
          threadIdx = dim3(t, 0, 0);
          blockIdx = dim3(x, y, 0);
          body();
        });
      }
      for (auto& member : team) member.join();
    }
  }
}

}  // namespace emulation

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

inline void __syncthreads() { emulation::block.all->arrive_and_wait(); }

template <typename V>
V __shfl_xor_sync(unsigned /*mask: every kernel here shuffles with the whole warp*/, V value, int lane_mask) {
  static_assert(sizeof(V) <= 16, "emulation: shuffle slot too small");
  const int thread = threadIdx.x, warp = thread / emulation::kWarpSize, lane = thread % emulation::kWarpSize;
  std::memcpy(emulation::block.lanes[thread], &value, sizeof(V));
  emulation::block.warps[warp]->arrive_and_wait();
  V partner;
  std::memcpy(&partner, emulation::block.lanes[warp * emulation::kWarpSize + (lane ^ lane_mask)], sizeof(V));
  emulation::block.warps[warp]->arrive_and_wait();  // no lane overwrites its slot before all have read
  return partner;
}

using std::fabs;
using std::min;

#include "weighted_pool_launch.cuh"

// Runs each launch's grid to completion when it is made, so launches run in order.
struct GridLauncher {
  int multiprocessors;  // sets how the op splits channel tiles over CTAs, as a GPU's SM count does

  template <typename... Params, typename... Args>
  void launch(void (*kernel)(Params...), dim3 grid, int threads, Args... args) const {
    emulation::run_grid(grid, threads, [&] { kernel(static_cast<Params>(args)...); });
  }
};

at::Tensor forward(const at::Tensor& features, const at::Tensor& masks, double eps, int64_t multiprocessors) {
  return pan_ops::pool_forward(GridLauncher{static_cast<int>(multiprocessors)}, features, masks, eps);
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad, const at::Tensor& features,
                                            const at::Tensor& masks, double eps, int64_t multiprocessors) {
  return pan_ops::pool_backward(GridLauncher{static_cast<int>(multiprocessors)}, grad, features, masks, eps);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "weighted_pool forward through the emulated CUDA kernels");
  m.def("backward", &backward, "weighted_pool backward through the emulated CUDA kernels");
}
