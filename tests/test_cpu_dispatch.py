"""The C++ CPU kernel's instruction-set levels (csrc/cpu/weighted_pool_cpu.h, docs/DESIGN.md §4):
the level in use is the one torch's CPU capability picks, and every level this CPU can run,
forced through ATEN_CPU_CAPABILITY in a pytest process of its own, passes the CPU kernel's
tests against the float64 ground truth: this module's grid of odd shapes in every dtype and
layout, and test_weighted_pool.py's CPU tests (shapes, layouts, eps clamp, zero masks,
gradcheck, bitwise determinism over thread counts, hypothesis shapes)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pan_ops
from op_utils import DTYPES, LAYOUTS, check_backend
from tools.cpu_isa import LEVELS, level_of_capability, runnable_levels

REPO = Path(__file__).resolve().parents[1]
BUILD_LEVEL = pan_ops.cpu_capability()

pytestmark = pytest.mark.skipif(BUILD_LEVEL is None, reason="the C++ CPU kernel is not built")


def test_level_in_use_is_torchs_choice():
    if BUILD_LEVEL not in LEVELS:
        pytest.skip(f"a PAN_OPS_MARCH build runs its one level, {BUILD_LEVEL}")
    assert BUILD_LEVEL == level_of_capability(torch.backends.cpu.get_cpu_capability())
    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    if forced in LEVELS:  # ATen ignores (and warns about) other values
        assert BUILD_LEVEL == forced


@pytest.mark.parametrize("shape", [(3, 37, 5, 3, 7), (2, 130, 4, 3, 17), (1, 19, 9, 7, 3)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_odd_shapes_in_every_dtype_and_layout(shape, dtype, layout):
    check_backend("cpu", "cpu", shape, dtype, layout)


@pytest.mark.parametrize("level", LEVELS)
def test_forced_level(level):
    if BUILD_LEVEL not in LEVELS:
        pytest.skip(f"a PAN_OPS_MARCH build runs its one level, {BUILD_LEVEL}")
    if level not in runnable_levels():
        pytest.skip(f"this CPU lacks the features of {level}")
    # The CPU tests of both modules, but not this test again.
    selection = "(cpu-cpu or hypothesis or cpu_dispatch) and not test_forced_level"
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", selection,
               "tests/test_weighted_pool.py", "tests/test_cpu_dispatch.py"]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO, env={**os.environ, "ATEN_CPU_CAPABILITY": level, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"ATEN_CPU_CAPABILITY={level}:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    assert " passed" in done.stdout and " skipped" not in done.stdout, done.stdout[-2000:]
