"""PAN vs the PCB and global baselines on the synthetic occluded dataset (the shape of the
paper's Table 1 on data anyone can regenerate).

Every model trains with the same recipe, budget, dataset and seeds (the training seed sets
the initialisation, the PK batches and the augmentations); the table gives the mean and
the standard deviation over seeds of Rank-1 and mAP on the occluded queries.

    python benchmarks/accuracy_synthetic.py                       # demo budget, 3 seeds
    python benchmarks/accuracy_synthetic.py --reduced             # about a quarter of the compute
    python benchmarks/accuracy_synthetic.py train.epochs=40 --table notes/accuracy_synthetic.md
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from pan_model.config import load_config  # noqa: E402
from pan_model.engine import train  # noqa: E402
from pan_model.engine.loaders import prepare_dataset  # noqa: E402

# What turns the PAN recipe into each baseline; everything else is shared.
ARCH_OVERRIDES = {
    "pan": [],
    "pcb": [
        "model.arch=pcb",
        "model.num_parts=6",
        "model.shared_fc=false",
        "model.mask_softmax=null",
        "model.mask_source=null",
    ],
    "global": [
        "model.arch=global",
        "model.num_parts=null",
        "model.local_dim=null",
        "model.shared_fc=null",
        "model.mask_softmax=null",
        "model.mask_source=null",
        "model.local_source=null",
    ],
}
LABELS = {"pan": "PAN", "pcb": "PCB", "global": "global (BoT-style)"}
# --reduced: half the resolution and about half the epochs, about a quarter of the compute
REDUCED = ["data.height=64", "data.width=32", "train.epochs=12", "optim.milestones=[9,11]"]


def run(config_path: Path, arch: str, seed: int, output: Path, overrides: list, threads: int = 0) -> dict:
    if threads:
        torch.set_num_threads(threads)
    config = load_config(
        config_path,
        [
            *ARCH_OVERRIDES[arch],
            f"train.seed={seed}",
            f"output_dir={output / f'{arch}_seed{seed}'}",
            "train.progress=false",
            "train.eval_every=0",
            *overrides,
        ],
    )
    started = time.perf_counter()
    result = train(config)
    return {
        "arch": arch,
        "seed": seed,
        "rank1": result["rank1"],
        "mAP": result["mAP"],
        "mINP": result["mINP"],
        "seconds": time.perf_counter() - started,
    }


def summarise(runs: list, archs: list) -> str:
    def spread(values):
        mean = 100 * statistics.mean(values)
        deviation = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{mean:.1f} ± {deviation:.1f}"

    lines = [
        "| model | Rank-1 (%) | mAP (%) | mINP (%) | runs | minutes per run |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for arch in archs:
        mine = [r for r in runs if r["arch"] == arch]
        cells = [spread([r[key] for r in mine]) for key in ("rank1", "mAP", "mINP")]
        minutes = statistics.mean(r["seconds"] for r in mine) / 60
        lines.append(f"| {LABELS[arch]} | {' | '.join(cells)} | {len(mine)} | {minutes:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every run")
    parser.add_argument(
        "--config", type=Path, default=REPO / "configs" / "demo_cpu.yaml", help="the shared recipe and budget"
    )
    parser.add_argument("--archs", nargs="+", default=list(ARCH_OVERRIDES), choices=list(ARCH_OVERRIDES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time, one thread each")
    parser.add_argument("--reduced", action="store_true", help=f"a smaller budget: {' '.join(REDUCED)}")
    parser.add_argument("--output", type=Path, default=Path("runs/accuracy_synthetic"))
    parser.add_argument("--table", type=Path, help="also write the markdown table (and the settings) to this file")
    args = parser.parse_args(argv)

    overrides = [*(REDUCED if args.reduced else []), *args.overrides]
    prepare_dataset(load_config(args.config, overrides))  # once, before any run reads it
    jobs = [(args.config, arch, seed, args.output, overrides) for seed in args.seeds for arch in args.archs]
    runs = []
    if args.jobs == 1:
        for job in jobs:
            runs.append(run(*job))
            print(json.dumps(runs[-1]), flush=True)
    else:  # one thread per process: on few cores, parallel runs beat parallel kernels
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            for result in pool.map(run, *zip(*jobs), [1] * len(jobs)):
                runs.append(result)
                print(json.dumps(result), flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "runs.json").write_text(json.dumps(runs, indent=2) + "\n")
    table = summarise(runs, args.archs)
    print(table)
    if args.table:
        settings = " ".join(
            [
                f"--config {args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config}",
                *overrides,
            ]
        )
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(
            f"# Synthetic occluded re-id: PAN vs baselines\n\n`python benchmarks/accuracy_synthetic.py {settings}`, "
            f"seeds {args.seeds}; mean ± standard deviation over seeds, occluded queries.\n\n{table}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
