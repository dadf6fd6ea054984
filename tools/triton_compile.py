"""Compile the Triton kernels for a GPU that is not here, and report what ptxas made of them.

Triton's interpreter (TRITON_INTERPRET=1), which the tests use on CPU tensors, never lowers
a kernel to a GPU, so it cannot catch what only the GPU compiler rejects (a dot shape or
precision an architecture lacks, a shared-memory budget) or show register spills. This
script records the kernel launches that the op's host code (pan_ops.triton_kernels.forward
and backward, through its _launcher seam) makes for a shape, without running them, and
compiles each launch, with every autotuning config, for a chosen CUDA architecture with
Triton's own argument specialization (alignment and divisibility of the pointers and
integers), as a launch on that GPU would. No GPU or driver is needed: ptxas ships with Triton.

    python -m tools.triton_compile                      # sm_90, main shape, every dtype and layout
    python -m tools.triton_compile --arch 80 --arch 90 --dtype float32 --shape 64,2048,24,8,6

Prints one row per (kernel, config): registers per thread, spill bytes (stores/loads),
shared memory; exits with status 1 if any compile fails. Needs TRITON_INTERPRET unset, and
relies on Triton's launch-binding internals (checked with triton 3.6 and 3.8).
"""

import argparse
import contextlib
import dataclasses
import io
import itertools
import os
import re
import sys

import torch

MAIN_SHAPE = (64, 2048, 16, 8, 14)  # B, C, H, W, P
DTYPES = ("float16", "bfloat16", "float32", "float64")
LAYOUTS = ("contiguous", "channels_last", "strided")
# Shared memory one CTA may use (the opt-in maximum per block), by compute capability x10;
# a config above it fails to launch with OutOfResources, which autotuning skips.
SHARED_LIMIT_KIB = {61: 48, 70: 96, 75: 64, 80: 163, 86: 99, 87: 163, 89: 99, 90: 227}


@dataclasses.dataclass
class Launch:
    kernel: object  # a triton Autotuner or JITFunction
    args: tuple
    kwargs: dict


@dataclasses.dataclass
class Compiled:
    kernel: str
    config: str
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int


def launch_inputs(shape, dtype: torch.dtype, layout: str):
    """Host tensors with the layout's strides, never read: specialization sees only dtypes,
    sizes, strides and pointer alignment (the op's test inputs, tools/op_check.py, offset
    their strided view by one element, which would compile a different, unaligned kernel)."""
    B, C, H, W, P = shape
    if layout == "strided":  # H and W do not merge into one axis
        features = torch.empty(B, C, W, H, dtype=dtype).transpose(2, 3)
    else:
        memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        features = torch.empty(B, C, H, W, dtype=dtype, memory_format=memory_format)
    masks = torch.empty(B, P, H, W, dtype=dtype)
    grad = torch.empty(B, P, C, dtype=dtype)
    return features, masks, grad


def record_launches(shape, dtype: torch.dtype, layout: str) -> list[Launch]:
    """The launches that the Triton forward and backward make for these inputs, not run."""
    from pan_ops import triton_kernels

    if triton_kernels.INTERPRET or not triton_kernels.AVAILABLE:
        raise RuntimeError("needs triton >= 3.2 with TRITON_INTERPRET unset (GPU compilation, not the interpreter)")
    launches = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(Launch(self.kernel, args, kwargs))

    features, masks, grad = launch_inputs(shape, dtype, layout)
    saved = triton_kernels._launcher
    triton_kernels._launcher = Recorder
    try:
        triton_kernels.forward(features, masks, 1e-6)
        triton_kernels.backward(grad, features, masks, 1e-6)
    finally:
        triton_kernels._launcher = saved
    return launches


def compile_launch(launch: Launch, arch: int, configs: slice = slice(None)) -> list[Compiled]:
    """Compiles the launch for sm_<arch> with each of its autotuning configs (or a slice of them)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    if isinstance(launch.kernel, Autotuner):
        function, chosen = launch.kernel.fn, launch.kernel.configs[configs]
    else:
        function, chosen = launch.kernel, [None]
    # The binder a launch on that GPU would use: argument types and specialization.
    binder = create_function_from_signature(function.signature, function.params, backend)
    results = []
    for config in chosen:
        kwargs = dict(launch.kwargs, **(config.all_kwargs() if config else {}))
        bound, specialization, options = binder(*launch.args, **kwargs)
        options, signature, constexprs, attrs = function._pack_args(
            backend, kwargs, bound, specialization, options
        )
        log = io.StringIO()
        with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report, printed by Triton
            knobs.compilation.always_compile = True  # a cached kernel would skip ptxas and its report
            compiled = triton.compile(
                ASTSource(function, signature, constexprs, attrs), target=target, options=options.__dict__
            )
        text = log.getvalue()
        registers = re.search(r"Used (\d+) registers", text)
        spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
        if registers is None or spills is None:
            raise RuntimeError(f"no ptxas report for {function.__name__}:\n{text}")
        described = ", ".join(
            f"{key}={value}" for key, value in sorted(kwargs.items()) if key.isupper() and key.startswith("BLOCK")
        )
        described += f", warps={compiled.metadata.num_warps}, stages={compiled.metadata.num_stages}"
        results.append(
            Compiled(
                function.__name__, described, int(registers.group(1)), int(spills.group(1)),
                int(spills.group(2)), compiled.metadata.shared,
            )
        )  # fmt: skip
    return results


def parse_shape(text: str):
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 5:
        raise argparse.ArgumentTypeError(f"--shape wants B,C,H,W,P, got {text!r}")
    return values


def compile_all(archs, shapes, dtypes, layouts, configs: slice = slice(None)) -> list[dict]:
    """One row per compiled (launch, config), or per launch that failed to compile (with "error")."""
    rows = []
    for arch, shape, dtype, layout in itertools.product(archs, shapes, dtypes, layouts):
        for launch in record_launches(shape, getattr(torch, dtype), layout):
            where = {"arch": arch, "shape": list(shape), "dtype": dtype, "layout": layout}
            try:
                compiled = compile_launch(launch, arch, configs)
            except Exception as error:  # report every failure; the caller fails
                name = getattr(launch.kernel, "fn", launch.kernel).__name__
                lines = str(error).strip().splitlines() or [""]
                rows.append(dict(where, kernel=name, error=f"{type(error).__name__}: {lines[0]}"))
                continue
            rows += [
                dict(where, **dataclasses.asdict(c), fits=c.shared_bytes <= SHARED_LIMIT_KIB[arch] * 1024)
                for c in compiled
            ]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch", type=int, action="append", choices=sorted(SHARED_LIMIT_KIB),
        help="compute capability x10 (default 90); repeatable",
    )  # fmt: skip
    parser.add_argument("--dtype", choices=DTYPES, action="append", help="default: all; repeatable")
    parser.add_argument("--layout", choices=LAYOUTS, action="append", help="default: all; repeatable")
    parser.add_argument("--shape", type=parse_shape, action="append", help="B,C,H,W,P (default the PAN shape)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("unset TRITON_INTERPRET: this compiles for a GPU, not for the interpreter")

    import triton

    rows = compile_all(args.arch or [90], args.shape or [MAIN_SHAPE], args.dtype or DTYPES, args.layout or LAYOUTS)
    print(f"Triton {triton.__version__} ahead-of-time compile, torch {torch.__version__}")
    print("| arch | shape (B,C,H,W,P) | dtype | layout | kernel | config | registers | spills (st/ld B) | shared KiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        head = f"| sm_{row['arch']} | {','.join(map(str, row['shape']))} | {row['dtype']} | {row['layout']} | {row['kernel']}"
        if "error" in row:
            print(f"{head} | COMPILE FAILED: {row['error']} | | | |")
        else:
            over = "" if row["fits"] else f" (over sm_{row['arch']}'s {SHARED_LIMIT_KIB[row['arch']]})"
            print(
                f"{head} | {row['config']} | {row['registers']} | {row['spill_stores']}/{row['spill_loads']} | "
                f"{row['shared_bytes'] / 1024:.0f}{over} |"
            )
    failures = sum("error" in row for row in rows)
    print(f"\n{failures} launch(es) failed to compile" if failures else "\nall launches compiled")
    print("configs over the shared memory limit fail to launch there; autotuning skips them")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
