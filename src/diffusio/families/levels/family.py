"""The noise-level classifier family record (``family: levels``): the classifier and its cross-entropy loss."""

from __future__ import annotations

import torch

from diffusio.families.base import Builders, Family
from diffusio.families.levels import LevelClassifier, LevelLoss

__all__ = ["FAMILY", "LEVEL_NETS", "MODEL_KEYS"]


def _nets() -> dict:
    from diffusio.nets.level import LevelCNN, LevelMLP

    return {"level_mlp": LevelMLP, "level_cnn": LevelCNN}


LEVEL_NETS = ("level_mlp", "level_cnn")
MODEL_KEYS = {"levels": int, "u_min": float}


def build_model(config: dict, data_shape, num_classes, build: Builders) -> LevelClassifier:
    """The classifier: ``net: {name: level_mlp | level_cnn, ...}`` sized for the data, over ``model.levels`` noise
    levels (default 200) of the config's path (default edm) spaced by ``model.u_min`` (default 1e-3)."""
    m = dict(config.get("model", {}))
    unknown = sorted(set(m) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(f"unknown model option(s) {', '.join(unknown)} for family levels; valid: levels, u_min")
    n, u_min = m.get("levels", 200), m.get("u_min", 1e-3)
    spec = dict(config.get("net") or {"name": "level_mlp" if len(data_shape) == 1 else "level_cnn"})
    if spec.get("name") == "level_mlp":
        spec["dim"] = int(torch.tensor(data_shape).prod())
    elif spec.get("name") == "level_cnn":
        spec.update(in_channels=data_shape[0], image_size=data_shape[-1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.get("train", {}).get("seed", 0))
        net = build.pick(_nets(), {**spec, "num_levels": n}, "net")
    return LevelClassifier(net, build.path(config.get("path", "edm")), n, u_min)


def build_loss(config: dict, model: LevelClassifier, build: Builders) -> LevelLoss:
    """Cross-entropy over the model's levels with the config's ``loss`` options (``label_smoothing``)."""
    spec = {"name": "levels", "num_levels": model.num_levels, **dict(config.get("loss", {}))}
    return build.pick({"levels": LevelLoss}, spec, "loss")


def generate(model, config, n, *, solver, steps, seed=0, build=None, **options):
    raise ValueError(
        "a noise-level classifier does not generate samples; pass it to Denoising MCMC: diffusio sample MODEL "
        "--solver dmcmc --levels-ckpt CLASSIFIER"
    )


FAMILY = Family(
    "levels",
    "noise-level classifier p(level | x) over a path's noise levels, for Denoising MCMC (samplers.dmcmc)",
    build_model=build_model,
    build_loss=build_loss,
    loss_class=LevelLoss,
    generate=generate,
    configs=("digits_levels.yaml", "gaussians_levels.yaml"),
)
