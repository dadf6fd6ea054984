"""CPU benchmark of pan_ops.weighted_pool: the C++ kernel (backend="cpu") against the
pure-PyTorch einsum reference and the naive broadcast, at the PAN shape B=16, C=2048,
H x W = 16 x 8, P=14, float32, forward and forward+backward.

    python -m pytest benchmarks/bench_op_cpu.py --benchmark-only --benchmark-columns=min,median,iqr,rounds

On a machine shared with other work, wall-clock times of multi-threaded runs mostly
measure the scheduler; one thread timed by CPU time compares the kernels steadily:

    OMP_NUM_THREADS=1 python -m pytest benchmarks/bench_op_cpu.py --benchmark-only \
        --benchmark-timer=time.process_time --benchmark-columns=min,median,iqr,rounds

A second table, printed at the end of the run, gives each case's peak extra memory,
measured in a fresh interpreter: the process's peak resident set size over one call
(VmHWM, reset through /proc/self/clear_refs just before it) minus its resident size
before, with the inputs in memory, after a small warm-up call and glibc's malloc_trim.
torch keeps no CPU allocator statistics and tracemalloc does not see its allocations,
hence the operating system's count (Linux, glibc). --benchmark-json=PATH writes both, the
memory as each case's extra_info.
"""

import ctypes
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pan_ops
from pan_ops import _library, reference

SHAPE = {"batch": 16, "channels": 2048, "height": 16, "width": 8, "parts": 14}
WARMUP_SHAPE = {**SHAPE, "batch": 2, "channels": 64}
IMPLEMENTATIONS = {
    "cpu kernel": lambda features, masks: pan_ops.weighted_pool(features, masks, backend="cpu"),
    "einsum reference": reference.weighted_pool,
    "naive broadcast": reference.weighted_pool_naive,
}
MODES = ("forward", "forward+backward")
ROUNDS = {"cpu kernel": 50, "einsum reference": 50, "naive broadcast": 5}


def make_inputs(batch, channels, height, width, parts, seed=0):
    """features, masks and the output gradient, float32."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, channels, height, width, generator=gen)
    masks = torch.randn(batch, parts, height, width, generator=gen)
    grad = torch.randn(batch, parts, channels, generator=gen)
    return features, masks, grad


def make_call(impl, mode, features, masks, grad):
    """A call without arguments that runs `mode` of `impl` once."""
    pool = IMPLEMENTATIONS[impl]
    if mode == "forward":
        return lambda: pool(features, masks)
    leaves = (features.detach().requires_grad_(), masks.detach().requires_grad_())
    return lambda: torch.autograd.grad(pool(*leaves), leaves, grad)


def kernel_available(impl) -> bool:
    return impl != "cpu kernel" or _library.has_kernel("CPU")


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{key}:\s+(\d+) kB", status.read(), re.MULTILINE).group(1))


def peak_extra_memory_mib(impl, mode) -> float:
    """Peak resident memory added by one call, in this process (see the module doc)."""
    make_call(impl, mode, *make_inputs(**WARMUP_SHAPE))()
    call = make_call(impl, mode, *make_inputs(**SHAPE))
    # Hand freed heap pages back to the system, so that what the call allocates shows
    # up as new resident memory rather than reusing pages already counted.
    ctypes.CDLL(None).malloc_trim(0)
    resident = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident size
    call()
    return (_status_kib("VmHWM") - resident) / 1024


# Loads the op from the given libraries (a development or CMake build) before pan_ops
# is imported, as in the parent, then measures one case.
_MEMORY_CHILD = """
import importlib.util, sys, torch
impl, mode, path, *libraries = sys.argv[1:]
for library in libraries:
    torch.ops.load_library(library)
spec = importlib.util.spec_from_file_location("bench_op_cpu", path)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
print(bench.peak_extra_memory_mib(impl, mode))
"""


def measure_in_subprocess(impl, mode) -> float:
    libraries = sorted(torch.ops.loaded_libraries)
    cmd = [sys.executable, "-c", _MEMORY_CHILD, impl, mode, str(Path(__file__).resolve()), *libraries]
    package_root = str(Path(pan_ops.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"peak-memory child failed for {impl}, {mode}:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def memory_table(summary_lines):
    """Collects the peak extra memory of each case, printed at the end of the run."""
    table = {}
    yield table
    if table:
        summary_lines.append(f"peak extra memory, (B, C, H, W, P) = {tuple(SHAPE.values())}, float32:")
        summary_lines += [f"  {impl:<17} {mode:<17} {mib:9.1f} MiB" for (impl, mode), mib in table.items()]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_weighted_pool_cpu(benchmark, memory_table, impl, mode):
    if not kernel_available(impl):
        pytest.skip(f"the C++ CPU kernel is not built ({_library.EXTENSION_ERROR})")
    call = make_call(impl, mode, *make_inputs(**SHAPE))
    benchmark.group = mode
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.pedantic(call, rounds=ROUNDS[impl], warmup_rounds=2)
    memory_table[impl, mode] = benchmark.extra_info["peak_extra_MiB"] = measure_in_subprocess(impl, mode)

