"""Checkpoints: atomic writes, weights-only loading, and the random-number state that makes
a resumed run repeat an uninterrupted one.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)`` (no arbitrary code runs when opening a file).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1


def save_checkpoint(state: dict, path: "str | Path") -> Path:
    """Write `state` to `path` atomically: into a temporary file in the same folder, flushed
    to disk, then renamed over `path`. A crash or kill mid-write leaves the previous file
    intact (and at worst a stray ``.tmp`` file next to it)."""
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
    return path


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
    config or the scores are wanted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    if not isinstance(state, dict) or "format_version" not in state:
        raise ValueError(f"{path} is not a pan_model checkpoint (no format_version)")
    if state["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format {state['format_version']}, newer than this "
            f"pan_model understands ({FORMAT_VERSION}); upgrade pan_model"
        )
    return state


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
