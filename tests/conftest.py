import os

import torch

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; the
# variable must be set before triton is first imported (by pan_ops).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# CI runs a fixed set of hypothesis examples (derandomize), so that a submission's result
# does not depend on the draw; local runs keep exploring new ones.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
