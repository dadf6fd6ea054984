"""Training engine: the loop, checkpoints, optimiser/schedule, distributed set-up."""

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .optim import WarmupMultiStepLR, build_optimizer
from .trainer import NonFiniteLossError, Trainer, select_device, train

__all__ = [
    "Trainer",
    "train",
    "select_device",
    "NonFiniteLossError",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "build_optimizer",
    "WarmupMultiStepLR",
]
