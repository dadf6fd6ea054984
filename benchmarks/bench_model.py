"""Model benchmark: PAN vs PCB vs the global model at 256 x 128.

Per architecture: inference parameters and MACs, then for each precision (fp32, bf16
autocast) and memory layout (contiguous, channels_last): training-step throughput
(forward, the paper's loss, backward, Adam step) with its peak memory at batch 64
(16 identities x 4 images), and eval-mode inference throughput. Random images on the
device, so only the model is measured; steps timed with benchmarks/cuda_timer.py (CUDA
events around eager steps). Prints a markdown table; --json also writes the results.

    python -m benchmarks.bench_model              # GPU: full run
    python -m benchmarks.bench_model --quick      # GPU: fewer steps, < 90 s on an H100
    python -m benchmarks.bench_model --device cpu # CPU: batch 8, fp32, a couple of steps
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import time

import torch

import pan_model
import pan_ops
from benchmarks.cuda_timer import median_ms
from pan_model.engine.losses import ReIDLoss
from pan_model.models import ARCHITECTURES
from pan_model.reporting.profiling import profile_model

NUM_CLASSES = 751  # Market-1501 training identities
IMAGES_PER_ID = 4


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seconds_per_step(step, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of step(), one timing of `steps` calls after `warmup` calls."""
    return median_ms(lambda i: step(), rounds=steps, warmup=warmup, repeats=1, device=device) / 1e3


def measure(model, arch: str, precision: str, layout: str, args, device: torch.device) -> dict:
    """Training-step and inference throughput of `model` in one precision and layout."""
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4)
    criterion = ReIDLoss()
    images = torch.randn(args.batch_size, 3, *args.input_size, device=device).contiguous(memory_format=memory_format)
    labels = torch.arange(args.batch_size, device=device) // IMAGES_PER_ID

    def train_step():
        with autocast(device, precision):
            loss, _ = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    for _ in range(args.warmup):  # also cuDNN's algorithm search, whose workspaces must not count as peak
        train_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    train_seconds = seconds_per_step(train_step, args.steps, 0, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    optimizer.zero_grad(set_to_none=True)
    del optimizer
    model.eval()
    eval_images = torch.randn(args.eval_batch_size, 3, *args.input_size, device=device)
    eval_images = eval_images.contiguous(memory_format=memory_format)

    def infer_step():
        with torch.inference_mode(), autocast(device, precision):
            model(eval_images)

    infer_seconds = seconds_per_step(infer_step, args.steps, args.warmup, device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "arch": arch,
        "precision": precision,
        "layout": layout,
        "train_images_per_s": args.batch_size / train_seconds,
        "train_peak_gib": peak,
        "infer_images_per_s": args.eval_batch_size / infer_seconds,
    }


def benchmark_arch(arch: str, args, device: torch.device) -> tuple[dict, list[dict]]:
    """Inference cost, then one row per (precision, layout), on one model built once."""
    options = {"pool_backend": args.pool_backend} if arch == "pan" else {}
    model = pan_model.build_model(arch, NUM_CLASSES, **options).to(device)
    cost = profile_model(model, tuple(args.input_size))
    rows = [
        measure(model, arch, precision, layout, args, device)
        for layout in args.layouts
        for precision in args.precisions
    ]
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return cost, rows


def markdown(rows: list[dict], cost: dict) -> str:
    lines = [
        "| arch | params (M) | GMACs | precision | layout | train img/s | train peak (GiB) | infer img/s |",
        "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        c = cost[r["arch"]]
        peak = "n/a" if r["train_peak_gib"] is None else f"{r['train_peak_gib']:.2f}"
        lines.append(
            f"| {r['arch']} | {c['params'] / 1e6:.2f} | {c['macs'] / 1e9:.2f} | {r['precision']} | {r['layout']} "
            f"| {r['train_images_per_s']:.0f} | {peak} | {r['infer_images_per_s']:.0f} |"
        )
    by_key = {(r["arch"], r["precision"], r["layout"]): r for r in rows}
    lines.append("")
    for (arch, precision, layout), r in by_key.items():
        pcb = by_key.get(("pcb", precision, layout))
        fp32 = by_key.get((arch, "fp32", layout))
        notes = []
        if arch == "pan" and pcb:
            notes.append(f"PAN/PCB train speed {r['train_images_per_s'] / pcb['train_images_per_s']:.3f}x")
            if r["train_peak_gib"] is not None:
                notes.append(f"peak memory {r['train_peak_gib'] / pcb['train_peak_gib']:.3f}x")
        if precision == "bf16" and fp32:
            notes.append(f"bf16/fp32 train speed {r['train_images_per_s'] / fp32['train_images_per_s']:.2f}x")
        if notes:
            lines.append(f"- {arch} {precision} {layout}: " + ", ".join(notes))
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer steps (GPU run in < 90 s)")
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--pool-backend", default="auto", choices=pan_ops.BACKENDS, help="PAN's weighted_pool backend")
    parser.add_argument("--input-size", type=int, nargs=2, default=(256, 128), metavar=("H", "W"))
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda":
        args.batch_size, args.eval_batch_size = 64, 256
        args.warmup, args.steps = (3, 8) if args.quick else (10, 40)
        args.precisions, args.layouts = ("fp32", "bf16"), ("contiguous", "channels_last")
    else:  # a reduced run: CPU timings are for smoke-testing, not for the results table
        args.batch_size = args.eval_batch_size = 8
        args.warmup, args.steps = 1, 2
        args.precisions, args.layouts = ("fp32",), ("contiguous",)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # fixed input size, as in training
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# Model benchmark, {datetime.date.today()}: {name}, torch {torch.__version__}, "
          f"input {args.input_size[0]}x{args.input_size[1]}, train batch {args.batch_size} "
          f"({args.batch_size // IMAGES_PER_ID} ids x {IMAGES_PER_ID}), infer batch {args.eval_batch_size}, "
          f"PAN pool_backend={args.pool_backend!r} (available: {', '.join(pan_ops.available_backends(device))}), "
          f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}\n")
    cost, rows = {}, []
    for arch in args.archs:
        cost[arch], arch_rows = benchmark_arch(arch, args, device)
        rows += arch_rows
    print(markdown(rows, cost))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "costs": cost, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
