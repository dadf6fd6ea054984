"""The one timer of the GPU timings in this folder (op_timing.py, bench_model.py).

CUDA events recorded on the current stream around `rounds` calls, repeated; the median of
the repeats, per call. CPU timings are pytest-benchmark suites (bench_*.py); the CPU path
here, the wall clock, only serves the GPU scripts' smoke runs on a CPU device.
"""

import statistics
import time

import torch


def median_ms(fn, rounds: int = 50, warmup: int = 5, repeats: int = 5, graph: bool = False, device="cuda") -> float:
    """Milliseconds per call of fn(i), i = 0 .. rounds - 1 (so fn can rotate over input sets):
    the median over `repeats` timings of `rounds` calls, after `warmup` calls.

    graph=True captures the rounds calls in one CUDA graph and times its replays: for
    kernels that run faster than the host launches them, which eager calls would time
    instead. Eager calls (graph=False) suit work a graph cannot hold, such as a training step.
    """
    cuda = torch.device(device).type == "cuda"
    if graph and not cuda:
        raise ValueError("graph=True needs a CUDA device")
    run = _captured(fn, rounds, warmup) if graph else _eager(fn, rounds, warmup)
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            started = time.perf_counter()
            run()
            times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times) / rounds


def _eager(fn, rounds: int, warmup: int):
    for i in range(warmup):
        fn(i)

    def run():
        for i in range(rounds):
            fn(i)

    return run


def _captured(fn, rounds: int, warmup: int):
    # Warm-up (lazy initialisation, Triton autotuning, torch.compile) on a side stream, as
    # capture requires; none of it may happen during capture.
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(warmup):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(rounds):
            fn(i)
    graph.replay()  # the first replay uploads the graph
    return graph.replay
