"""Training: loop, EMA, checkpoints, distributed set-up."""

from .checkpoint import load_checkpoint, save_checkpoint, save_model_file
from .distributed import DistInfo, cleanup, setup
from .ema import EMA
from .loop import TrainConfig, Trainer

__all__ = [
    "EMA",
    "DistInfo",
    "TrainConfig",
    "Trainer",
    "cleanup",
    "load_checkpoint",
    "save_checkpoint",
    "save_model_file",
    "setup",
]
