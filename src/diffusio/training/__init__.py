"""Training: loop, EMA, checkpoints, distributed set-up."""

from diffusio.training.checkpoint import load_checkpoint, save_checkpoint, save_model_file
from diffusio.training.distributed import DistInfo, cleanup, setup
from diffusio.training.ema import EMA
from diffusio.training.fit import NetFit
from diffusio.training.loop import TrainConfig, Trainer

__all__ = [
    "EMA",
    "DistInfo",
    "NetFit",
    "TrainConfig",
    "Trainer",
    "cleanup",
    "load_checkpoint",
    "save_checkpoint",
    "save_model_file",
    "setup",
]
