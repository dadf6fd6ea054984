"""Pretrained backbone weights from local files: no download ever happens here.

A checkpoint is a state dict saved with torch.save (read with weights_only=True) or a
.safetensors file. Wrappers written by common trainers ({"state_dict": ...},
{"model": ...}, a "module." prefix from DataParallel) are unwrapped. Keys of the
ImageNet classifier heads that our backbones drop are ignored; anything else that
does not fit raises an error naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Union

import torch
from torch import nn

PathLike = Union[str, os.PathLike]


def cache_dirs() -> list[Path]:
    """Where downloaded checkpoints usually sit: torchvision's cache (torch.hub) and
    torchreid's ($TORCH_HOME/checkpoints)."""
    hub_checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    torch_home = Path(torch.hub.get_dir()).parent
    return list(dict.fromkeys([hub_checkpoints, torch_home / "checkpoints"]))


def find_in_cache(backbone: str, file_names: Iterable[str]) -> Path:
    """The first of `file_names` found in the checkpoint caches, else FileNotFoundError."""
    candidates = [folder / name for folder in cache_dirs() for name in file_names]
    for path in candidates:
        if path.is_file():
            return path
    searched = "\n  ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"pretrained weights for {backbone!r} were not found in the checkpoint cache; looked for:\n  {searched}\n"
        "This library never downloads: place the file there or pass pretrained=<path to the file>."
    )


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
    under `ignored_prefixes` (classifier heads the backbone does not have)."""
    state = read_state_dict(path)
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
