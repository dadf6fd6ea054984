"""Builds pan_ops._C: the C++ CPU kernels always, the CUDA kernels when a CUDA
toolkit is found (or FORCE_CUDA=1; PAN_OPS_NO_CUDA=1 never). Build with
`pip install --no-build-isolation -e .` so the extension is compiled against the torch
already installed. The CPU kernel is compiled once per instruction-set level and the level
runs that suits the CPU, unless PAN_OPS_MARCH asks for one CPU (see cpu_levels)."""

import glob
import os
import platform

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


# Compiled once per level, apart from the library's other sources (csrc/cpu/weighted_pool_cpu.h).
CPU_KERNEL = os.path.join("csrc", "cpu", "weighted_pool_cpu.cpp")


def cpu_levels() -> dict:
    """The levels of the CPU kernel to compile, {name: compiler flags}, as ATen compiles its own
    CPU kernels; csrc/cpu/cpu_dispatch.cpp runs the best one that torch's CPU capability allows.
    PAN_OPS_MARCH=native (or e.g. x86-64-v3) compiles one level for a given CPU instead: it stops
    with an illegal instruction on CPUs that lack its extensions (docs/DESIGN.md §7)."""
    march = os.environ.get("PAN_OPS_MARCH", "")
    if march:
        return {"march": [f"-march={march}"]}
    if platform.machine().lower() in ("x86_64", "amd64"):
        return {
            "default": [],
            "avx2": ["-mavx2", "-mfma"],
            "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
        }
    return {"default": []}


CPU_LEVELS = cpu_levels()


class BuildExtensionWithCpuLevels(BuildExtension):
    """torch's BuildExtension, which first compiles the CPU kernel once per level, with the
    extension's flags plus the level's, into objects of their own (setuptools gives every
    source of an extension the same flags). They are linked after all other objects: where
    a header's inline function (std::vector, c10) is compiled both for the baseline and for a
    level, the linker keeps the first copy, so baseline code never calls AVX code
    (tests/test_wheel.py checks the library's instructions)."""

    def build_extension(self, ext):
        ext.extra_objects = [
            obj
            for level, flags in CPU_LEVELS.items()
            for obj in self.compiler.compile(
                [CPU_KERNEL],
                output_dir=os.path.join(self.build_temp, f"cpu_{level}"),
                macros=[*ext.define_macros, ("PAN_OPS_CPU_LEVEL", f"cpu_{level}")],
                include_dirs=ext.include_dirs,
                extra_postargs={"cxx": ext.extra_compile_args["cxx"] + flags},
                depends=ext.depends,
            )
        ]
        super().build_extension(ext)


def extensions():
    sources = [os.path.join("csrc", name) for name in ("weighted_pool.cpp", "python_module.cpp")]
    sources.append(os.path.join("csrc", "cpu", "cpu_dispatch.cpp"))
    # Which levels cpu_dispatch.cpp finds.
    define_macros = [(f"PAN_OPS_CPU_{level.upper()}", None) for level in CPU_LEVELS if level in ("avx2", "avx512")]
    if "march" in CPU_LEVELS:
        define_macros.append(("PAN_OPS_MARCH", f'"{os.environ["PAN_OPS_MARCH"]}"'))
    extra = {"cxx": ["-O3", "-fopenmp"]}
    ext_cls = CppExtension
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
            # The CPU kernel is not among the sources: a change to it, or to a header, must still relink.
            depends=[CPU_KERNEL, *sorted(glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True))]
            + sorted(glob.glob(os.path.join("csrc", "**", "*.cuh"), recursive=True)),
        )
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtensionWithCpuLevels.with_options(use_ninja=True)})
