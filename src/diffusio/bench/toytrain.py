"""Helpers shared by the model-family benchmarks: quick seeded training on 2-D toys, and sample metrics."""

from __future__ import annotations

import time

import torch

from ..data.sources import FunctionSource
from ..data.toy import sample_toy
from ..metrics import mmd, sliced_wasserstein
from ..train import TrainConfig, Trainer

__all__ = ["data_floor", "sample_metrics", "toy_source", "train"]


def toy_source(name: str) -> FunctionSource:
    """Fresh draws of a 2-D toy (``data.toy``) as a training source."""
    return FunctionSource(lambda n, g: sample_toy(name, n, generator=g), (2,))


def train(model, loss, data, steps: int, *, batch: int = 256, lr: float = 2e-3, seed: int = 0, ema: float = 0.995):
    """Train ``model`` in place with the library's Trainer and load its EMA weights; returns (model, seconds)."""
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=lr, warmup=100, ema_decay=ema, seed=seed, progress=False)
    t0 = time.perf_counter()
    tr = Trainer(model, loss, data, cfg)
    tr.fit()
    model.net.load_state_dict(tr.ema.state_dict())
    model.net.eval()
    return model, time.perf_counter() - t0


def sample_metrics(x: torch.Tensor, ref: torch.Tensor) -> dict:
    """Sliced W2 (512 projections, fixed seed) and MMD (RBF, median bandwidths) of samples against a reference."""
    return {
        "sliced_w2": sliced_wasserstein(x, ref, 512, generator=torch.Generator().manual_seed(0)),
        "mmd": mmd(x[:2000], ref[:2000]),
    }


def data_floor(name: str, n: int, ref: torch.Tensor) -> dict:
    """The metrics of a second independent draw of real data: the best any model can score at this size."""
    return sample_metrics(sample_toy(name, n, generator=torch.Generator().manual_seed(777)), ref)
