"""Writing a synthetic dataset to disk in the Market-1501 layout: bounding_box_train, query
and bounding_box_test (names ``0001_c1s1_000123_00.jpg``), plus synthetic.json (format,
parameters, counts) and annotations.csv (one row per image: split, file, pid, camera,
occluder). Images are drawn in parallel worker processes; the files do not depend on how
many.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from ..layout import (
    SPLIT_FOLDERS,
    SYNTHETIC_FORMAT_VERSION,
    SYNTHETIC_METADATA_NAME,
    market_file_name,
    read_synthetic_metadata,
)
from .plan import ImageSpec, SyntheticConfig, World, plan_images

ANNOTATIONS_NAME = "annotations.csv"


def generate(
    root: "str | Path", overwrite: bool = False, progress: bool = False, workers: Optional[int] = None, **options
) -> Path:
    """Write the dataset described by SyntheticConfig(**options) into `root` and return it.

    A folder already holding this very dataset (same parameters and format) is reused
    as it is unless overwrite=True. One holding another synthetic dataset is replaced; one
    holding anything else in its split folders is never touched (FileExistsError).
    workers: processes drawing images (default: the CPU count, at most 8); the files do
    not depend on it.
    """
    config = SyntheticConfig(**{key: tuple(value) if isinstance(value, list) else value for key, value in options.items()})
    root = Path(root)
    parameters = _parameters(config)
    metadata = read_synthetic_metadata(root)
    if metadata is not None and metadata.get("complete") and metadata["parameters"] == parameters and not overwrite:
        return root
    split_dirs = [root / folder for folder in SPLIT_FOLDERS.values()]
    if metadata is None and any(path.is_dir() and any(path.iterdir()) for path in split_dirs):
        raise FileExistsError(f"synthetic: {root} already holds images that this generator did not write; choose another root")
    for path in split_dirs:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    _write_metadata(root, {"format": SYNTHETIC_FORMAT_VERSION, "complete": False, "parameters": parameters})

    specs = plan_images(config)
    folder_of = dict(zip(SPLIT_FOLDERS, split_dirs))
    jobs = [(spec, folder_of[spec.split] / _file_name(spec)) for spec in specs]
    _run_jobs(config, jobs, workers or min(os.cpu_count() or 1, 8), f"synthetic -> {root}" if progress else None)

    with open(root / ANNOTATIONS_NAME, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "file", "pid", "camera", "occluder"])
        writer.writerows([spec.split, _file_name(spec), spec.pid, spec.camera, spec.occluder or "none"] for spec in specs)
    counts = _counts(specs)
    _write_metadata(root, {"format": SYNTHETIC_FORMAT_VERSION, "complete": True, "parameters": parameters, "counts": counts})
    return root


_worker_world: Optional[World] = None  # the world of a generator worker process


def _start_worker(config: SyntheticConfig) -> None:
    global _worker_world
    _worker_world = World(config)


def _write_images(jobs: list, world: Optional[World] = None) -> int:
    world = world or _worker_world
    for spec, path in jobs:
        world.render(spec).save(path, quality=world.config.jpeg_quality)
    return len(jobs)


def _run_jobs(config: SyntheticConfig, jobs: list, workers: int, progress_label: Optional[str]) -> None:
    """Render and save (spec, path) jobs in batches, in worker processes when workers > 1."""
    batches = [jobs[start : start + 64] for start in range(0, len(jobs), 64)]
    bar = None
    if progress_label:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=progress_label, unit="img")
    if workers <= 1 or len(batches) <= 1:
        world = World(config)
        done = (_write_images(batch, world) for batch in batches)
        pool = None
    else:
        # fork shares the imported modules; a spawned worker would re-import torch.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        pool = ProcessPoolExecutor(min(workers, len(batches)), mp_context=context, initializer=_start_worker, initargs=(config,))
        done = pool.map(_write_images, batches)
    try:
        for count in done:
            if bar is not None:
                bar.update(count)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()


def _file_name(spec: ImageSpec) -> str:
    return market_file_name(spec.pid, spec.camera, spec.index)  # the running number is the frame


def _parameters(config: SyntheticConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))  # tuples become lists, as read back from JSON


def _write_metadata(root: Path, metadata: dict) -> None:
    (root / SYNTHETIC_METADATA_NAME).write_text(json.dumps(metadata, indent=2) + "\n")


def _counts(specs: list) -> list:
    """[train ids, train images, query images, gallery images], as build_dataset counts them."""
    train = [spec for spec in specs if spec.split == "train"]
    return [len({spec.pid for spec in train}), len(train), sum(s.split == "query" for s in specs), sum(s.split == "gallery" for s in specs)]
