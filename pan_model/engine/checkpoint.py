"""Checkpoints: atomic writes, checked loading, and the random-number state that makes a
resumed run repeat an uninterrupted one.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)`` (no arbitrary code runs when opening a file). The
file is a zip archive whose records carry CRC-32 checksums; they are checked before
loading, since torch.load itself reads a damaged record without complaint.
"""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1
# What a checkpoint_last.pt holds beyond the model (a model_best.pt lacks these).
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "epoch", "step_in_epoch", "global_step", "sampler", "rng")
# Settings a resumed run may change: where files are, how fast, how often and how long it
# runs, and how it is evaluated. Every other setting shapes the training steps, so a
# checkpoint that differs in one belongs to another run.
MAY_CHANGE_ON_RESUME = frozenset(
    {
        "output_dir", "eval",
        "data.root", "data.num_workers", "data.test_batch_size",
        "model.pretrained", "model.pool_backend",
        "train.epochs", "train.device", "train.cpu_threads", "train.compile", "train.channels_last",
        "train.eval_every", "train.checkpoint_every", "train.log_every", "train.progress", "train.best_metric",
    }
)  # fmt: skip


class CheckpointError(ValueError):
    """A file that cannot serve as asked: not a pan_model checkpoint, damaged or cut short,
    of a newer format, or a checkpoint of another run."""


def save_checkpoint(state: dict, path: "str | Path") -> Path:
    """Write `state` to `path` atomically: into a temporary file in the same folder, flushed
    to disk, then renamed over `path`. A crash or kill mid-write leaves the previous file
    intact, and at worst a stray temporary file, which the next save of `path` removes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save({"format_version": FORMAT_VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    _remove_stray_temporaries(path)
    return path


def _remove_stray_temporaries(path: Path) -> None:
    """Temporaries of `path` left by writers that were killed mid-write (their process is gone)."""
    for stray in path.parent.glob(f".{path.name}.*.tmp"):
        pid = stray.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and not _process_exists(int(pid)):
            stray.unlink(missing_ok=True)


def _process_exists(pid: int) -> bool:
    if os.name != "posix":  # no harmless probe: keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable (POSIX); not possible on every platform."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def load_checkpoint(path: "str | Path", map_location: "str | torch.device" = "cpu", mmap: bool = False) -> dict:
    """Read a checkpoint written by `save_checkpoint` (weights_only: no code execution).
    mmap=True maps the tensors' bytes instead of reading them: cheap when only the
    config or the scores are wanted, so the records are then not checked against their
    checksums (a file cut short is still refused); a full load checks them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    _check_archive(path, check_records=not mmap)
    state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path} is not a pan_model checkpoint (no format_version)")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format_version']}, newer than this "
            f"pan_model understands ({FORMAT_VERSION}); upgrade pan_model"
        )
    return state


def _check_archive(path: Path, check_records: bool = True) -> None:
    """Refuse a file that is cut short (its central directory missing) or, with check_records,
    damaged (every record against its CRC-32, which reads the whole file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip() if check_records else None
    except (zipfile.BadZipFile, EOFError) as error:
        raise CheckpointError(
            f"{path} is not a complete checkpoint ({error}): it was cut short or damaged, e.g. by a copy "
            f"that did not finish (pan_model writes its checkpoints atomically, so never leaves one so)"
        ) from None
    if damaged is not None:
        raise CheckpointError(f"{path} is damaged: its record {damaged} does not match its checksum")


def check_resumable(state: dict, config, num_classes: int, path: "str | Path") -> None:
    """Raise CheckpointError, naming every difference, unless `state` is a training
    checkpoint of the run that `config` describes, on a dataset of `num_classes`
    training identities."""
    from ..config import config_from_dict

    missing = [key for key in TRAINING_STATE if key not in state]
    if missing:
        raise CheckpointError(
            f"cannot resume from {path}: it holds no training state ({', '.join(missing)} missing); "
            f"a model_best.pt keeps weights only, resume from the run's checkpoint_last.pt"
        )
    saved = _flat(config_from_dict(state["config"]).resolved().to_dict())
    current = _flat(config.resolved().to_dict())
    differences = [
        f"{key}: {saved[key]!r} in the checkpoint, {value!r} now"
        for key, value in current.items()
        if saved[key] != value and not {key, key.split(".")[0]} & MAY_CHANGE_ON_RESUME
    ]
    if state["num_classes"] != num_classes:
        differences.append(f"training identities: {state['num_classes']} in the checkpoint, {num_classes} in the dataset")
    if differences:
        raise CheckpointError(
            f"cannot resume from {path}: it is a checkpoint of another run; " + "; ".join(differences)
            + ". Resume with the checkpoint's own settings (pan-reid train --resume CHECKPOINT, without a config), "
            "or train the new settings into another output_dir"
        )


def _flat(tree: dict) -> dict:
    """{"section.key": value} of a config dict (section-level values, such as output_dir, as they are)."""
    flat = {}
    for section, values in tree.items():
        if isinstance(values, dict):
            flat.update({f"{section}.{key}": value for key, value in values.items()})
        else:
            flat[section] = values
    return flat


def capture_rng_state() -> dict:
    """Python, NumPy and torch (CPU and every CUDA device) generator states, as
    weights_only-loadable values."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gauss": float(cached_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(_as_tuples(state["python"]))
    saved = state["numpy"]
    np.random.set_state(
        (
            saved["kind"],
            saved["keys"].numpy().astype(np.uint32),
            saved["position"],
            saved["has_gauss"],
            saved["cached_gauss"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _as_tuples(value):
    """random.setstate needs the nested tuples it produced (a round trip may give lists)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def load_model(path: "str | Path", map_location: "str | torch.device" = "cpu"):
    """(model, config) from a model_best.pt or checkpoint_last.pt: the model is rebuilt from
    the config stored in the file and its weights loaded; it is returned in eval mode."""
    from .. import build_model
    from ..config import config_from_dict

    state = load_checkpoint(path, map_location)
    config = config_from_dict(state["config"])
    options = config.model.options()
    options["pretrained"] = None  # the checkpoint carries every weight
    model = build_model(config.model.arch, state["num_classes"], **options)
    model.load_state_dict(state["model"])
    return model.to(map_location).eval(), config
