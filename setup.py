"""Builds pan_ops._C: the C++ CPU kernels always, the CUDA kernels when a CUDA
toolkit is found (or FORCE_CUDA=1; PAN_OPS_NO_CUDA=1 never). Build with
`pip install --no-build-isolation -e .` so the extension is compiled against the torch
already installed. The build is portable unless PAN_OPS_MARCH asks for a CPU (see below)."""

import glob
import os

from setuptools import setup

# torch infers CUDA_HOME from nvcc's location and can land on /usr/local; prefer
# the canonical toolkit folder when it exists (docs/DESIGN.md §7).
if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
# An empty arch list crashes torch's flag helper when no GPU is visible.
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "7.5;8.0;8.6;8.9;9.0+PTX")

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    if os.environ.get("PAN_OPS_NO_CUDA", "0") == "1":
        return False
    return CUDA_HOME is not None and torch.version.cuda is not None


def extensions():
    sources = [os.path.join("csrc", "weighted_pool.cpp"), os.path.join("csrc", "python_module.cpp")]
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # The CPU kernel's vector width is the instruction set's it is compiled for. By default
    # that is the compiler's baseline, so a wheel runs on every CPU of its architecture;
    # PAN_OPS_MARCH=native (or e.g. x86-64-v3) compiles for a given CPU, about 2.5x faster
    # (benchmarks/RESULTS.md) but an illegal instruction on CPUs that lack its extensions.
    march = os.environ.get("PAN_OPS_MARCH", "")
    cxx = ["-O3", "-fopenmp"] + ([f"-march={march}"] if march else [])
    extra = {"cxx": cxx}
    ext_cls = CppExtension
    define_macros = []
    if want_cuda():
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        # --threads: nvcc compiles the architectures of the list in parallel.
        extra["nvcc"] = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", f"--threads={min(4, os.cpu_count() or 1)}"]
        ext_cls = CUDAExtension
        define_macros.append(("PAN_OPS_WITH_CUDA", None))
    return [
        ext_cls(
            name="pan_ops._C",
            sources=sources,
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
            define_macros=define_macros,
        )
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
