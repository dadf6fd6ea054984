"""`pan-reid demo`: the whole story in minutes on a CPU. Generate the synthetic occluded
dataset, train PAN on it, evaluate, draw its masks and print the scores beside chance."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from .backbones import fetch_imagenet_weights
from .data import prepare_dataset
from .config import CONFIG_DIR, Config, apply_overrides, load_config
from .engine.checkpoint import load_model
from .engine.run_log import LOG_NAME
from .engine.trainer import CHECKPOINT_NAME, select_device, train
from .reporting import chance_rank1, scores_table, write_figures


def default_config_path() -> Path:
    """The packaged demo recipe for this machine: demo_gpu with a GPU, else demo_cpu."""
    return CONFIG_DIR / ("demo_gpu.yaml" if torch.cuda.is_available() else "demo_cpu.yaml")


def pretrained_or_random(config: Config) -> Config:
    """The demo's backbone weights: ImageNet's when they can be had (fetched into the cache
    if need be), else random initialisation, saying why."""
    if config.model.pretrained != "imagenet":
        return config
    backbone = config.model.resolved().backbone
    try:
        print(f"ImageNet weights for {backbone}: {fetch_imagenet_weights(backbone)}", flush=True)
        return config
    except (OSError, RuntimeError) as error:
        print(f"no ImageNet weights for {backbone} ({error}); training from random initialisation", flush=True)
        return apply_overrides(config, ["model.pretrained=null"])


def run_demo(config_path: "str | Path | None", output_dir: str, overrides: Sequence[str] = ()) -> Optional[dict]:
    """Run the demo and print its report; the training result, or None when training was
    interrupted."""
    started = time.perf_counter()
    gpu = torch.cuda.is_available()
    config_path = Path(config_path) if config_path else default_config_path()
    config = load_config(config_path, [f"output_dir={output_dir}", *overrides])
    if not gpu and config.train.cpu_threads:
        torch.set_num_threads(config.train.cpu_threads)  # for the evaluation and figures too
    print(
        f"PAN demo on {'a GPU' if gpu else 'the CPU'}: {config_path.name}, output in {config.output_dir}/", flush=True
    )
    config = pretrained_or_random(config)
    dataset = prepare_dataset(config.data)
    print(
        f"synthetic occluded dataset in {config.data.root}: {dataset.num_train_pids} training identities "
        f"({len(dataset.train)} images), {len(dataset.query)} queries, {len(dataset.gallery)} gallery images",
        flush=True,
    )
    print(f"# demo config\n{config.resolved().to_yaml()}", flush=True)
    result = train(config)
    if result["status"] != "finished":
        return None
    device = select_device(config.train.device)
    model, _ = load_model(Path(config.output_dir) / CHECKPOINT_NAME, map_location=device)
    figures = write_figures(model, config, config.output_dir, device, Path(config.output_dir) / LOG_NAME)
    chance = chance_rank1(dataset.query, dataset.gallery)
    start = "ImageNet" if config.model.pretrained else "random init"
    label = f"PAN-{config.model.resolved().backbone} ({start}) {config.data.height}x{config.data.width}, {config.train.epochs} epochs"
    print()
    print(scores_table({label: result, "random ranking (chance)": {"rank1": chance}}))
    print(
        f"\nwritten to {config.output_dir}/: {CHECKPOINT_NAME}, model_best.pt, metrics.json, log.jsonl, "
        + ", ".join(path.name for path in figures)
    )
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return result
