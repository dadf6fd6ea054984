// Shared declarations of the pan_ops::weighted_pool op (contract: docs/DESIGN.md §2).
//
// Every compiled kernel validates its inputs with the checks below, once per call, so a
// direct torch.ops.pan_ops.* call gets the same clear errors as the Python wrapper.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace pan_ops {

// features [B,C,H,W], masks [B,P,H,W], same floating dtype and device, eps > 0.
void check_forward_inputs(const at::Tensor& features, const at::Tensor& masks, double eps);

// The kernel a `backend` argument asks for can run in the compiled kernel for `device`:
// "auto" or the device's own name. Anything else fails with an error that says what
// would run it ("triton" is served from Python, see pan_ops/_library.py).
void check_backend(c10::string_view backend, c10::DeviceType device, const at::Tensor& features);

// grad [B,P,C] plus the forward inputs.
void check_backward_inputs(const at::Tensor& grad, const at::Tensor& features,
                           const at::Tensor& masks, double eps);

// Shape of the forward output: [B, P, C].
inline std::vector<int64_t> output_shape(const at::Tensor& features, const at::Tensor& masks) {
  return {features.size(0), masks.size(1), features.size(1)};
}

// ceil(n / d) for n >= 0 and d > 0: tile and chunk counts of the CPU and CUDA kernels.
inline int64_t ceil_div(int64_t n, int64_t d) {
  return (n + d - 1) / d;
}

}  // namespace pan_ops
