"""What the GPU compilers make of the kernels, checked here without a GPU.

Triton: the other Triton tests run the kernels in Triton's interpreter, which never lowers
them to a GPU. These compile every launch the op's host code makes, as a launch on that GPU
would (tools/triton_compile.py, Triton's own specialization and ptxas), so that a
kernel the GPU compiler rejects, or a config whose shared memory no GPU of a class
offers, fails here instead of on someone's card. Each runs the compiler in a subprocess,
since this process imported Triton for its interpreter.

CUDA: the extension's sm_90 SASS (tools/cuda_spills.py) keeps register spills out of
the loops that do the arithmetic.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import cuda_spills

ROOT = Path(__file__).resolve().parents[1]

try:
    import triton

    TRITON_VERSION = tuple(int(v) for v in triton.__version__.split(".")[:2])
except ImportError:
    TRITON_VERSION = (0, 0)
needs_triton = pytest.mark.skipif(
    TRITON_VERSION < (3, 6), reason="tools/triton_compile.py binds launches with the internals of Triton 3.6 to 3.8"
)


def compile_rows(archs, shapes, dtypes, layouts, configs="slice(None)") -> list[dict]:
    code = (
        "import json; from tools import triton_compile as t; "
        f"print(json.dumps(t.compile_all({archs!r}, {shapes!r}, {dtypes!r}, {layouts!r}, {configs})))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert rows, "no launch was recorded"
    return rows


@needs_triton
def test_every_config_compiles_for_hopper_without_spills_in_the_default_one():
    """sm_90, the measured GPU: every autotuning config the autotuner would try there for the
    model's dtypes and every layout; the first config (what PAN_TRITON_AUTOTUNE=0 runs) of
    each kernel keeps its registers on the PAN shape's dense layouts."""
    shape = [64, 2048, 16, 8, 14]
    rows = compile_rows([90], [shape], ["float32", "bfloat16"], ["contiguous", "channels_last", "strided"])
    rows += compile_rows([90], [shape], ["float16", "float64"], ["contiguous", "channels_last"], "slice(0, 1)")
    failed = [row for row in rows if "error" in row]
    assert not failed, failed
    kernels = {row["kernel"] for row in rows}
    assert kernels == {"_forward_kernel", "_backward_features_kernel", "_backward_masks_kernel"}
    first = {}
    for row in rows:  # rows of a launch come in config order
        first.setdefault((row["dtype"], row["layout"], row["kernel"]), row)
    spilled = [row for key, row in first.items() if key[1] != "strided" and row["spill_stores"] > 0]
    assert not spilled, spilled
    assert all(row["fits"] for row in first.values())


@needs_triton
@pytest.mark.parametrize("arch", [75, 86])
def test_smallest_config_fits_the_shared_memory_of_small_gpus(arch):
    """The last autotuning config of each kernel fits a CTA's shared memory on sm_75 (64 KiB)
    and sm_86/89 (99 KiB) for part counts up to 256 (float64: 128), so autotuning always has a
    config that launches."""
    shapes = [[8, 2048, 24, 8, 6], [8, 2048, 16, 8, 40], [8, 512, 16, 8, 128]]
    rows = compile_rows([arch], shapes, ["float32", "bfloat16", "float64"], ["contiguous"], "slice(-1, None)")
    rows += compile_rows([arch], [[8, 512, 16, 8, 256]], ["float32", "bfloat16"], ["contiguous"], "slice(-1, None)")
    failed = [row for row in rows if "error" in row]
    assert not failed, failed
    too_big = [row for row in rows if not row["fits"]]
    assert not too_big, too_big
    assert len(rows) == (len(shapes) * 3 + 2) * 3


def test_cuda_spills_stay_out_of_the_arithmetic_loops():
    """Every spill store or load of the sm_90 kernels lies outside the loop holding their FMAs
    (ptxas reports 8-36 spilled bytes in ten backward kernels; where they sit decides their cost)."""
    import pan_ops

    libraries = sorted(Path(pan_ops.__file__).parent.glob("_C*.so"))
    if not libraries or cuda_spills.find_cuobjdump() is None:
        pytest.skip("needs the built extension and cuobjdump")
    kernels = cuda_spills.kernel_sass(libraries[0], 90)
    if not kernels:
        pytest.skip("the extension was built without sm_90 code")
    assert any("pool_forward_kernel" in name for name in kernels)
    in_loop = {}
    for name, instructions in kernels.items():
        spills, hot = cuda_spills.spill_report(instructions)
        inside = [(opcode, depth) for opcode, depth in spills if hot is not None and depth >= hot]
        if inside:
            in_loop[cuda_spills.readable(name)] = inside
    assert not in_loop, in_loop
