// The op's CPU kernels as the dispatcher sees them: the input checks, then the kernels of
// weighted_pool_cpu.cpp at the instruction-set level chosen for this process
// (docs/DESIGN.md §4). Compiled for the baseline, like everything outside the levels, so
// that loading the library runs no instruction the CPU may lack.
//
// The choice is torch's: at::get_cpu_capability() (which ATEN_CPU_CAPABILITY overrides)
// names the best level ATen's own kernels run here, and the op takes the best level it
// compiled that does not exceed it. A PAN_OPS_MARCH build compiles one level, for a given
// CPU, and always runs it.
#include "cpu/weighted_pool_cpu.h"

#include "weighted_pool.h"

#include <ATen/Version.h>
#include <torch/library.h>

#include <algorithm>
#include <iterator>
#include <string>

namespace pan_ops::cpu {
namespace {

// Capabilities as at::get_cpu_capability() names them on x86, in increasing order.
enum Capability { kAny = 0, kAvx2 = 1, kAvx512 = 2 };

struct Level {
  const char* name;       // as pan_ops.cpu_capability() reports it
  Capability needs;       // the least capability of a CPU that runs it
  const Kernels* kernels;
};

// The levels this build compiled, best first (setup.py and CMakeLists.txt define which).
constexpr Level kLevels[] = {
#if defined(PAN_OPS_MARCH)
    {"march=" PAN_OPS_MARCH, kAny, &cpu_march::kernels},
#else
#if defined(PAN_OPS_CPU_AVX512)
    {"avx512", kAvx512, &cpu_avx512::kernels},
#endif
#if defined(PAN_OPS_CPU_AVX2)
    {"avx2", kAvx2, &cpu_avx2::kernels},
#endif
    {"default", kAny, &cpu_default::kernels},
#endif
};

Capability torch_capability() {
  const std::string name = at::get_cpu_capability();
  return name == "AVX512" ? kAvx512 : name == "AVX2" ? kAvx2 : kAny;
}

// The last level needs nothing: some level always runs.
static_assert(kLevels[std::size(kLevels) - 1].needs == kAny);

// Chosen on first use and kept for the life of the process.
const Level& level() {
  static const Level& chosen =
      *std::find_if(std::begin(kLevels), std::end(kLevels),
                    [capability = torch_capability()](const Level& level) { return level.needs <= capability; });
  return chosen;
}

at::Tensor weighted_pool_cpu(const at::Tensor& features, const at::Tensor& masks, double eps,
                             c10::string_view backend) {
  check_forward_inputs(features, masks, eps);
  check_backend(backend, c10::DeviceType::CPU, features);
  return level().kernels->forward(features, masks, eps);
}

std::tuple<at::Tensor, at::Tensor> weighted_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& features,
                                                              const at::Tensor& masks, double eps,
                                                              c10::string_view backend) {
  check_backward_inputs(grad, features, masks, eps);
  check_backend(backend, c10::DeviceType::CPU, features);
  return level().kernels->backward(grad, features, masks, eps);
}

std::string cpu_capability() {
  return level().name;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pan_ops, m) {
  // Private: the level the CPU kernels run at, for pan_ops.cpu_capability().
  m.def("_cpu_capability() -> str", &cpu_capability);
}

TORCH_LIBRARY_IMPL(pan_ops, CPU, m) {
  m.impl("weighted_pool", &weighted_pool_cpu);
  m.impl("_weighted_pool_backward", &weighted_pool_backward_cpu);
}

}  // namespace pan_ops::cpu
