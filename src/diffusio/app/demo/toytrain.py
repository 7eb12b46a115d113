"""Helpers shared by the model-family benchmarks: quick seeded training on 2-D toys, and sample metrics."""

from __future__ import annotations

import time

import torch

from diffusio.data.sources import FunctionSource
from diffusio.data.toy import sample_toy
from diffusio.io import cache_dir, load_safetensors, save_safetensors
from diffusio.metrics import mmd, sliced_wasserstein
from diffusio.training import TrainConfig, Trainer

__all__ = ["data_floor", "sample_metrics", "toy_source", "train"]


def toy_source(name: str) -> FunctionSource:
    """Fresh draws of a 2-D toy (``data.toy``) as a training source."""
    return FunctionSource(lambda n, g: sample_toy(name, n, generator=g), (2,))


def train(
    model,
    loss,
    data,
    steps: int,
    *,
    batch: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    ema: float = 0.995,
    cache: str | None = None,
):
    """Train ``model`` in place with the library's Trainer and load its EMA weights; returns (model, seconds).

    With ``cache`` (a name such as ``"flow_matching/ot"``) the EMA weights are stored in
    ``cache_dir('bench')/<cache>.safetensors`` (:func:`diffusio.io.cache_dir`) with the training settings,
    and reused when a later run asks for the same
    name, settings and parameter shapes (``seconds`` is then the recorded training time)."""
    settings = {"steps": steps, "batch": batch, "lr": lr, "seed": seed, "ema": ema}
    shapes = {k: list(v.shape) for k, v in model.net.state_dict().items()}
    file = cache_dir("bench") / f"{cache}.safetensors" if cache else None
    if file is not None and file.is_file():
        tensors, meta = load_safetensors(file)
        if meta.get("settings") == settings and meta.get("shapes") == shapes:
            model.net.load_state_dict(tensors)
            model.net.eval()
            return model, float(meta["seconds"])
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=lr, warmup=100, ema_decay=ema, seed=seed, progress=False)
    t0 = time.perf_counter()
    tr = Trainer(model, loss, data, cfg)
    tr.fit()
    model.net.load_state_dict(tr.ema.state_dict())
    model.net.eval()
    seconds = time.perf_counter() - t0
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(model.net.state_dict(), file, {"settings": settings, "shapes": shapes, "seconds": seconds})
    return model, seconds


def sample_metrics(x: torch.Tensor, ref: torch.Tensor) -> dict:
    """Sliced W2 (512 projections, fixed seed) and MMD (RBF, median bandwidths) of samples against a reference."""
    return {
        "sliced_w2": sliced_wasserstein(x, ref, 512, generator=torch.Generator().manual_seed(0)),
        "mmd": mmd(x[:2000], ref[:2000]),
    }


def data_floor(name: str, n: int, ref: torch.Tensor) -> dict:
    """The metrics of a second independent draw of real data: the best any model can score at this size."""
    return sample_metrics(sample_toy(name, n, generator=torch.Generator().manual_seed(777)), ref)
