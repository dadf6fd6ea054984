// The CPU kernels, compiled once per instruction-set level (docs/DESIGN.md §4, §7).
//
// The build compiles weighted_pool_cpu.cpp once per level, with that level's compiler flags
// and -DPAN_OPS_CPU_LEVEL=<namespace>, so that each level's code has names of its own;
// cpu_dispatch.cpp, compiled for the baseline like the rest of the library, calls the level
// chosen for the process through its `kernels`.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace pan_ops::cpu {

// A level's entry points. The caller has checked the inputs (weighted_pool.h).
struct Kernels {
  at::Tensor (*forward)(const at::Tensor& features, const at::Tensor& masks, double eps);
  std::tuple<at::Tensor, at::Tensor> (*backward)(const at::Tensor& grad, const at::Tensor& features,
                                                 const at::Tensor& masks, double eps);
};

}  // namespace pan_ops::cpu

// The levels a build may compile: the x86-64 baseline (or any other architecture's), AVX2 + FMA,
// AVX-512 (F, BW, VL, DQ) + FMA, and the one level of a PAN_OPS_MARCH build.
namespace pan_ops::cpu_default {
extern const cpu::Kernels kernels;
}
namespace pan_ops::cpu_avx2 {
extern const cpu::Kernels kernels;
}
namespace pan_ops::cpu_avx512 {
extern const cpu::Kernels kernels;
}
namespace pan_ops::cpu_march {
extern const cpu::Kernels kernels;
}
