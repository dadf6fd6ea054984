// Shared declarations of the pan_ops weighted-pool op.
//
//   S[b,p]   = max(sum_hw |M[b,p,h,w]|, eps)
//   f[b,p,c] = sum_hw F[b,c,h,w] * M[b,p,h,w] / S[b,p]
//
// Every device kernel validates its inputs with the checks below, so a direct
// torch.ops.pan_ops.* call gets the same clear errors as the Python wrapper.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace pan_ops {

// features [B,C,H,W], masks [B,P,H,W], same floating dtype and device, eps > 0.
void check_forward_inputs(const at::Tensor& features, const at::Tensor& masks, double eps);

// grad [B,P,C] plus the forward inputs.
void check_backward_inputs(const at::Tensor& grad, const at::Tensor& features,
                           const at::Tensor& masks, double eps);

// Shape of the forward output: [B, P, C].
inline std::vector<int64_t> output_shape(const at::Tensor& features, const at::Tensor& masks) {
  return {features.size(0), masks.size(1), features.size(1)};
}

}  // namespace pan_ops
