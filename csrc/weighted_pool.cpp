// Schema of the pan_ops library, the input checks of the compiled kernels, and the
// autocast rule (docs/DESIGN.md §3). Device kernels register themselves in csrc/cpu and
// csrc/cuda; the Triton kernels in pan_ops/_library.py.
#include "weighted_pool.h"

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <sstream>

namespace pan_ops {
namespace {

std::string shape_str(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

void check_float_dtype(const at::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
                   "weighted_pool: ", name, " must be float16, bfloat16, float32 or float64, got ",
                   dt, " (", name, " shape ", shape_str(t), ")");
}

}  // namespace

void check_forward_inputs(const at::Tensor& features, const at::Tensor& masks, double eps) {
  TORCH_CHECK_VALUE(features.dim() == 4, "weighted_pool: features must be 4-D [B,C,H,W], got shape ",
                    shape_str(features));
  TORCH_CHECK_VALUE(masks.dim() == 4, "weighted_pool: masks must be 4-D [B,P,H,W], got shape ",
                    shape_str(masks));
  TORCH_CHECK_VALUE(features.size(0) == masks.size(0),
                    "weighted_pool: features and masks must have the same batch size, got features ",
                    shape_str(features), " and masks ", shape_str(masks));
  TORCH_CHECK_VALUE(features.size(2) == masks.size(2) && features.size(3) == masks.size(3),
                    "weighted_pool: features and masks must have the same spatial size (H, W), got features ",
                    shape_str(features), " and masks ", shape_str(masks));
  check_float_dtype(features, "features");
  check_float_dtype(masks, "masks");
  TORCH_CHECK_TYPE(features.scalar_type() == masks.scalar_type(),
                   "weighted_pool: features and masks must have the same dtype, got features ",
                   features.scalar_type(), " and masks ", masks.scalar_type());
  TORCH_CHECK(features.device() == masks.device(),
              "weighted_pool: features and masks must be on the same device, got features on ",
              features.device(), " and masks on ", masks.device());
  TORCH_CHECK_VALUE(eps > 0, "weighted_pool: eps must be > 0, got ", eps);
}

void check_backend(c10::string_view backend, c10::DeviceType device, const at::Tensor& features) {
  const std::string own = c10::DeviceTypeName(device, /*lower_case=*/true);
  if (backend == "auto" || backend == own) return;
  TORCH_CHECK_VALUE(backend == "cpu" || backend == "cuda" || backend == "triton",
                    "weighted_pool: backend must be one of ('auto', 'cpu', 'cuda', 'triton') for the op "
                    "(the pure-PyTorch 'reference' is pan_ops.weighted_pool's), got '", backend, "'");
  TORCH_CHECK(backend != "triton",
              "weighted_pool: backend='triton' cannot run on ", features.device(),
              " tensors here: it needs the triton package (pip install triton), and for CPU tensors "
              "Triton's interpreter (TRITON_INTERPRET=1 set before triton is imported)");
  TORCH_CHECK(false, "weighted_pool: backend='", backend, "' needs ", backend, " tensors, got features on ",
              features.device(), " (shape ", shape_str(features), ")");
}

void check_backward_inputs(const at::Tensor& grad, const at::Tensor& features,
                           const at::Tensor& masks, double eps) {
  check_forward_inputs(features, masks, eps);
  const std::vector<int64_t> expected = output_shape(features, masks);
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef(expected),
                    "weighted_pool backward: grad must have shape [B,P,C] = ", at::IntArrayRef(expected),
                    ", got ", shape_str(grad), " (features ", shape_str(features), ", masks ",
                    shape_str(masks), ")");
  TORCH_CHECK_TYPE(grad.scalar_type() == features.scalar_type(),
                   "weighted_pool backward: grad must have the dtype of features (", features.scalar_type(),
                   "), got ", grad.scalar_type());
  TORCH_CHECK(grad.device() == features.device(),
              "weighted_pool backward: grad must be on the device of features (", features.device(),
              "), got ", grad.device());
}

namespace {

// Under torch.autocast both inputs go to the autocast dtype, as for a matmul.
template <c10::DeviceType device_type>
at::Tensor weighted_pool_autocast(const at::Tensor& features, const at::Tensor& masks, double eps,
                                  c10::string_view backend) {
  constexpr auto key = device_type == c10::DeviceType::CUDA ? c10::DispatchKey::AutocastCUDA
                                                            : c10::DispatchKey::AutocastCPU;
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  const auto dtype = at::autocast::get_autocast_dtype(device_type);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pan_ops::weighted_pool", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, c10::string_view)>();
  return op.call(at::autocast::cached_cast(dtype, features, device_type),
                 at::autocast::cached_cast(dtype, masks, device_type), eps, backend);
}

}  // namespace

TORCH_LIBRARY(pan_ops, m) {
  m.def("weighted_pool(Tensor features, Tensor masks, float eps=1e-06, str backend=\"auto\") -> Tensor");
  // Private: the gradient kernels, called by the op's autograd formula (pan_ops/_library.py).
  m.def(
      "_weighted_pool_backward(Tensor grad, Tensor features, Tensor masks, float eps, str backend=\"auto\") "
      "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pan_ops, AutocastCPU, m) {
  m.impl("weighted_pool", &weighted_pool_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(pan_ops, AutocastCUDA, m) {
  m.impl("weighted_pool", &weighted_pool_autocast<c10::DeviceType::CUDA>);
}

}  // namespace pan_ops
