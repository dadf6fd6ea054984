"""The CMake build (CMakeLists.txt): configure and build the op library with cmake, then
call the op through torch.ops.load_library in a fresh interpreter (this process may
already hold the library built by setup.py, and an op namespace can be defined once)."""

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools import cpu_isa

ROOT = Path(__file__).resolve().parents[1]
# torch 2.14's CMake config uses the CUDA20 dialect, which cmake 3.25 rejects.
MIN_CMAKE = (3, 27)

pytestmark = pytest.mark.slow


def find_cmake():
    """A cmake >= MIN_CMAKE: the one installed next to this interpreter (pip), else PATH's."""
    for candidate in (Path(sys.executable).with_name("cmake"), shutil.which("cmake")):
        if candidate is None or not Path(candidate).exists():
            continue
        version = subprocess.run([str(candidate), "--version"], capture_output=True, text=True).stdout
        found = re.search(r"(\d+)\.(\d+)", version)
        if found and tuple(map(int, found.groups())) >= MIN_CMAKE:
            return str(candidate)
    return None


def run(cmd, **kwargs):
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    return done


@pytest.fixture(scope="module")
def cmake_library(tmp_path_factory):
    cmake = find_cmake()
    if cmake is None:
        pytest.skip("needs cmake >= 3.27 (pip install 'cmake>=3.27'); older ones cannot read torch's CMake config")
    build = tmp_path_factory.mktemp("cmake-build")
    run([cmake, "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release", f"-DPython3_EXECUTABLE={sys.executable}"])
    # MAX_JOBS as for setup.py's builds (tests/test_wheel.py), on a machine shared with other work.
    jobs = os.environ.get("MAX_JOBS", str(max(2, min(4, os.cpu_count() or 1))))
    run([cmake, "--build", build, "--parallel", jobs])
    libraries = sorted(build.glob("libpan_ops.*"))
    assert libraries, f"no libpan_ops in {build}: {sorted(p.name for p in build.iterdir())}"
    return libraries[0]


# Runs in a fresh interpreter: the op must come from the CMake library alone, and match
# the pure-PyTorch reference (forward and both gradients, float64, odd shapes, both
# memory formats); pan_ops is imported after the library, so it uses it.
CHECK_OP = """
import sys
import torch

assert not hasattr(torch.ops.pan_ops, "weighted_pool"), "op registered before loading the library"
torch.ops.load_library(sys.argv[1])
assert torch._C._dispatch_has_kernel_for_dispatch_key("pan_ops::weighted_pool", "CPU")
from pan_ops import reference

gen = torch.Generator().manual_seed(0)
for batch, channels, height, width, parts in [(2, 37, 5, 7, 3), (3, 130, 4, 3, 17)]:
    for memory_format in (torch.contiguous_format, torch.channels_last):
        features = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
        features = features.contiguous(memory_format=memory_format).requires_grad_()
        masks = torch.randn(batch, parts, height, width, generator=gen, dtype=torch.float64).requires_grad_()
        expected = reference.weighted_pool(features, masks, 1e-6)
        grad = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
        expected_grads = torch.autograd.grad(expected, (features, masks), grad)
        out = torch.ops.pan_ops.weighted_pool(features, masks, 1e-6)
        grads = torch.ops.pan_ops._weighted_pool_backward(grad, features, masks, 1e-6)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
        for got, want in zip(grads, expected_grads):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
print("cmake library ok", torch.ops.pan_ops._cpu_capability(), torch.backends.cpu.get_cpu_capability())
"""


@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("objdump") is None, reason="x86-64 and objdump")
def test_cmake_library_levels_hold_their_instructions(cmake_library):
    """As for the wheel (tests/test_wheel.py): only the avx2 and avx512 levels hold AVX code."""
    assert not cpu_isa.problems(cpu_isa.functions(cmake_library))[:5]


def test_cmake_library_runs_the_op(cmake_library):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = run([sys.executable, "-c", CHECK_OP, str(cmake_library)], env=env, cwd=cmake_library.parent, timeout=300)
    assert "cmake library ok" in done.stdout
    # The CPU kernel runs at the level torch's CPU capability picks (tests/test_cpu_dispatch.py).
    level, torch_capability = done.stdout.split()[-2:]
    assert level == cpu_isa.level_of_capability(torch_capability)
