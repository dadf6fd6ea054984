"""The C++ CPU kernel at each instruction-set level of one dispatching build, against a native
build and einsum, side by side (benchmarks/RESULTS.md, "CPU: one build, every level").

Variants, each timed in a process of its own, in interleaved rounds (the order rotates):

- default, avx2, avx512: the dispatching build (PAN_OPS_MARCH unset, as pip builds it), the level
  forced with ATEN_CPU_CAPABILITY; only the levels this CPU runs. Marked "*": the level it picks
  by itself here.
- native: a PAN_OPS_MARCH=native build.
- einsum: pan_ops.reference.weighted_pool, torch choosing its own CPU capability.

At bench_op_cpu.py's shape (B=16, C=2048, 16x8, P=14, float32, NCHW), forward and
forward+backward, on one thread (CPU time, time.process_time) and two (wall clock,
time.perf_counter). Each process times --calls calls of each case after warm-up and reports
their median; the table gives the median over the rounds of those medians, in ms, with their
range, and then the picked level's speed against einsum and native. Timings for
benchmarks/RESULTS.md need a machine that runs nothing else.

    python -m benchmarks.cpu_levels                        # 5 rounds of 50 calls
    python -m benchmarks.cpu_levels --rounds 1 --calls 3   # does it run?

--dispatch DIR and --native DIR name a folder that holds the pan_ops package of that build. By
default the dispatching build is this repository's in-place one (`python setup.py build_ext
--inplace`), and the native one is built (PAN_OPS_NO_CUDA=1, MAX_JOBS from the environment,
else 1) into build/cpu-levels-native/<digest of the sources> when it is not there yet.
"""

import argparse
import datetime
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from tools import cpu_isa

REPO = Path(__file__).resolve().parents[1]
CASES = [(threads, mode) for threads in (1, 2) for mode in ("forward", "forward+backward")]
WARMUP_CALLS = 5
NATIVE_SOURCES = ("setup.py", "pyproject.toml", "README.md", "csrc", "pan_ops")

# Runs in each variant's process, with that build's folder first on sys.path.
_CHILD = """
import json, sys
from benchmarks.cpu_levels import measure
print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
"""


def measure(impl: str, calls: int) -> dict:
    """Median ms of `calls` calls of each case of `impl` (a name of bench_op_cpu.IMPLEMENTATIONS),
    with the pan_ops build and the CPU levels in use. One thread first: once two OpenMP
    threads have run, the idle one spins for a while and would count as CPU time."""
    import pan_ops
    from benchmarks.bench_op_cpu import SHAPE, make_call, make_inputs

    result = {
        "pan_ops": pan_ops.__file__,
        "level": pan_ops.cpu_capability(),
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
    }
    for threads, mode in CASES:
        torch.set_num_threads(threads)
        timer = time.process_time if threads == 1 else time.perf_counter
        call = make_call(impl, mode, *make_inputs(**SHAPE))
        for _ in range(WARMUP_CALLS):
            call()
        times = []
        for _ in range(calls):
            start = timer()
            call()
            times.append(timer() - start)
        result[f"{threads} {mode}"] = statistics.median(times) * 1e3
    return result


def source_digest() -> str:
    """Of everything native_build copies (what the copy leaves out left out here too), so that a
    change to any of it, pan_ops' Python included, builds a fresh variant."""
    files = []
    for name in NATIVE_SOURCES:
        path = REPO / name
        files += sorted(p for p in path.rglob("*") if "__pycache__" not in p.parts and p.suffix != ".so") if path.is_dir() else [path]
    return hashlib.sha256(b"".join(path.read_bytes() for path in files if path.is_file())).hexdigest()[:12]


def native_build(folder: Path) -> Path:
    """A PAN_OPS_MARCH=native build of this tree's sources in `folder`, built if not there yet."""
    if any((folder / "pan_ops").glob("_C*.so")):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in NATIVE_SOURCES:
        source = REPO / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("*.so", "__pycache__")
            shutil.copytree(source, folder / name, dirs_exist_ok=True, ignore=ignore)
        else:
            shutil.copy2(source, folder / name)
    env = {**os.environ, "PAN_OPS_MARCH": "native", "PAN_OPS_NO_CUDA": "1", "MAX_JOBS": os.environ.get("MAX_JOBS", "1")}
    print(f"building the native variant in {folder} (minutes)", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=folder, env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the native build in {folder} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return folder


def run_variant(build: Path, impl: str, calls: int, level: "str | None") -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(build), str(REPO)])}
    env.pop("ATEN_CPU_CAPABILITY", None)
    env.pop("OMP_NUM_THREADS", None)  # the child sets its thread counts itself
    if level is not None:
        env["ATEN_CPU_CAPABILITY"] = level
    done = subprocess.run([sys.executable, "-c", _CHILD, impl, str(calls)], cwd=build, env=env,
                          capture_output=True, text=True, timeout=3600)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{impl} in {build} (ATEN_CPU_CAPABILITY={level}) failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.splitlines()[-1])
    if not Path(result["pan_ops"]).resolve().is_relative_to(build.resolve()):
        raise RuntimeError(f"the variant imported {result['pan_ops']}, not the build in {build}")
    return result


def variants(dispatch: Path, native: Path) -> dict:
    """{name: (build folder, implementation, forced level, expected pan_ops.cpu_capability())}"""
    runs = {level: (dispatch, "cpu kernel", level, level) for level in cpu_isa.runnable_levels()}
    runs["native"] = (native, "cpu kernel", None, "march=native")
    runs["einsum"] = (dispatch, "einsum reference", None, None)
    return runs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=50, help="timed calls per case and process")
    parser.add_argument("--dispatch", type=Path, default=REPO, help="folder of the dispatching build")
    parser.add_argument("--native", type=Path, help="folder of a PAN_OPS_MARCH=native build")
    parser.add_argument("--json", type=Path, help="also write every process's result here")
    args = parser.parse_args(argv)
    native = native_build(args.native or REPO / "build" / "cpu-levels-native" / source_digest())
    runs = variants(args.dispatch, native)
    started, load_before = datetime.datetime.now(datetime.timezone.utc), os.getloadavg()
    results = {name: [] for name in runs}
    names = list(runs)
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            build, impl, level, expected = runs[name]
            result = run_variant(build, impl, args.calls, level)
            if expected is not None and result["level"] != expected:
                raise RuntimeError(
                    f"{name}: the CPU kernel ran at {result['level']}, not {expected}: is {build} the build it "
                    "should be (python setup.py build_ext --inplace, PAN_OPS_MARCH unset or native)?"
                )
            results[name].append(result)
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finished = datetime.datetime.now(datetime.timezone.utc)
    picked = results["einsum"][0]["level"]  # the einsum processes import the dispatching build unforced
    compiler = subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(
        f"CPU: {cpu_isa.cpuinfo('model name')}, {os.cpu_count()} logical CPUs; torch {torch.__version__}; {compiler}; "
        f"{started:%Y-%m-%d %H:%M}-{finished:%H:%M} UTC; load average {load_before[0]:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after\n"
        f"`python -m benchmarks.cpu_levels --rounds {args.rounds} --calls {args.calls}`: median over {args.rounds} "
        f"rounds of each process's median of {args.calls} calls, ms (range of the rounds' medians); * = the "
        f"level the dispatching build picks here\n"
    )
    print("| variant | 1 thread fwd | 1 thread fwd+bwd | 2 threads fwd | 2 threads fwd+bwd |")
    print("| --- | ---: | ---: | ---: | ---: |")
    median = {}
    for name, runs_of_variant in results.items():
        times = {case: [run[f"{case[0]} {case[1]}"] for run in runs_of_variant] for case in CASES}
        median[name] = {case: statistics.median(values) for case, values in times.items()}
        cells = [f"{median[name][case]:.2f} ({min(values):.2f}-{max(values):.2f})" for case, values in times.items()]
        print(f"| {f'{name} *' if name == picked else name} | " + " | ".join(cells) + " |")
    for threads in (1, 2):
        ratios = [
            f"{mode} {median['einsum'][threads, mode] / median[picked][threads, mode]:.2f}x einsum's speed, "
            f"{median[picked][threads, mode] / median['native'][threads, mode] - 1:+.0%} time against native"
            for mode in ("forward", "forward+backward")
        ]
        print(f"\n{picked} (the level picked), {threads} thread(s): " + "; ".join(ratios))
    if args.json:
        record = {"started": str(started), "finished": str(finished), "results": results}
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
