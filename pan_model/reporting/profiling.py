"""Parameter and FLOP counts with torch.utils.flop_counter.

FLOPs are those FlopCounterMode counts (matmuls and convolutions, 2 per multiply-add;
pan_ops.weighted_pool through its registered formula or, without the compiled op, its
einsum); MACs = FLOPs / 2, the unit papers usually call "FLOPs". Elementwise work
(BN, ReLU, pooling maxima) is not counted, as in the paper's tables.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..models import eval_mode


def count_parameters(model: nn.Module, include_classifiers: bool = False) -> int:
    """Parameters of `model`; identity classifiers (submodules named `classifier`, whose
    size depends on the number of training identities) are left out by default, so the
    count is the inference model's, as papers report it."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if include_classifiers or "classifier" not in name.split(".")[:-1]
    )


def count_flops(fn: Callable, *inputs) -> int:
    """FLOPs of `fn(*inputs)` (no gradient), as FlopCounterMode counts them."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*inputs)
    return counter.get_total_flops()


def profile_model(model: nn.Module, input_size: tuple[int, int] = (256, 128), batch_size: int = 1) -> dict:
    """Per-image inference cost of `model` at `input_size` (H, W), in eval mode on the
    model's device: {"params", "params_with_classifiers", "macs", "flops"}."""
    parameter = next(model.parameters())
    images = torch.randn(batch_size, 3, *input_size, device=parameter.device, dtype=parameter.dtype)
    with eval_mode(model):
        flops = count_flops(model, images) // batch_size
    return {
        "params": count_parameters(model),
        "params_with_classifiers": count_parameters(model, include_classifiers=True),
        "macs": flops // 2,
        "flops": flops,
    }
