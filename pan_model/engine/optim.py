"""Optimiser and learning-rate schedule of the paper's recipe: Adam with a linear warm-up
from 3.5e-5 to 3.5e-4 over 20 epochs, then x0.1 at epochs 60 and 90 (120 epochs)."""

from __future__ import annotations

from bisect import bisect_right
from typing import Callable, Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

from ..config import OptimConfig
from ..registry import Registry

# (parameters or parameter groups, lr, weight_decay, momentum) -> optimiser
OptimizerFactory = Callable[[list, float, float, float], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerFactory] = Registry(
    "optimizer", unknown="build_optimizer: name must be one of {choices}, got {name!r}"
)


@OPTIMIZERS.register("adam")
def _adam(parameters: list, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(parameters: list, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("sgd")
def _sgd(parameters: list, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True)


def build_optimizer(
    model: torch.nn.Module,
    name: str = OptimConfig.name,
    lr: float = OptimConfig.lr,
    weight_decay: float = OptimConfig.weight_decay,
    momentum: float = OptimConfig.momentum,
    mask_lr_factor: float = OptimConfig.mask_lr_factor,
) -> torch.optim.Optimizer:
    """The optimiser `name` (OPTIMIZERS) over the model's trainable parameters.
    mask_lr_factor != 1 puts the parameters of a PAN model's mask generator in a group of
    their own at lr * factor (not in the paper; the schedule scales both groups alike)."""
    if mask_lr_factor <= 0:
        raise ValueError(f"build_optimizer: mask_lr_factor must be > 0, got {mask_lr_factor}")
    parameters = [p for p in model.parameters() if p.requires_grad]
    if mask_lr_factor != 1.0:
        generator = getattr(model, "mask_generator", None)
        masks = {id(p) for p in generator.parameters()} if generator is not None else set()
        if not masks:
            raise ValueError(f"build_optimizer: mask_lr_factor={mask_lr_factor} needs a model with a learned mask generator")
        rest = [p for p in parameters if id(p) not in masks]
        mask_params = [p for p in parameters if id(p) in masks]
        parameters = [{"params": rest}, {"params": mask_params, "lr": lr * mask_lr_factor}]
    return OPTIMIZERS.get(name)(parameters, lr, weight_decay, momentum)


class WarmupMultiStepLR(LRScheduler):
    """Per-epoch schedule: linear warm-up from base_lr * warmup_factor (epoch 0) to base_lr
    (epoch warmup_epochs), then base_lr * gamma^k after the k-th milestone.

    The rate is a closed-form function of the epoch, so resuming only needs `last_epoch`.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        gamma: float = OptimConfig.gamma,
        warmup_epochs: int = OptimConfig.warmup_epochs,
        warmup_factor: float = OptimConfig.warmup_factor,
        last_epoch: int = -1,
    ):
        if list(milestones) != sorted(milestones):
            raise ValueError(f"WarmupMultiStepLR: milestones must be increasing, got {list(milestones)}")
        if warmup_epochs < 0 or not 0.0 < warmup_factor <= 1.0:
            raise ValueError(
                f"WarmupMultiStepLR: need warmup_epochs >= 0 and 0 < warmup_factor <= 1, "
                f"got warmup_epochs={warmup_epochs}, warmup_factor={warmup_factor}"
            )
        self.milestones = list(milestones)
        self.gamma = gamma
        self.warmup_epochs = warmup_epochs
        self.warmup_factor = warmup_factor
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        """Multiplier of the base learning rate during `epoch` (0-based)."""
        decay = self.gamma ** bisect_right(self.milestones, epoch)
        if epoch < self.warmup_epochs:
            progress = epoch / self.warmup_epochs
            return (self.warmup_factor + (1.0 - self.warmup_factor) * progress) * decay
        return decay

    def get_lr(self) -> list[float]:
        return [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]
