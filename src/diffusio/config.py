"""Strings to objects: the one place where config names map to paths, nets, data, densities and weightings.

A run config is a plain dict (read from YAML) with sections ``data``, ``path``, ``net``, ``model``, ``loss``,
``train`` and ``sample``; each section names its object with ``name`` and passes the rest as arguments. The
same dict is stored in every checkpoint, so :func:`load_model` can rebuild what was trained.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path as FsPath

import torch
import yaml

from . import losses, paths
from .data.sources import FunctionSource, TensorSource
from .io import load_safetensors
from .model import EDMPrecond, Model

__all__ = [
    "DATA",
    "DENSITIES",
    "NETS",
    "PATHS",
    "WEIGHTINGS",
    "build_data",
    "build_loss",
    "build_model",
    "build_path",
    "load_config",
    "load_model",
]

PATHS: dict[str, Callable[..., paths.Path]] = {
    "vp_linear": paths.LinearVP,
    "vp_cosine": paths.CosineVP,
    "ddpm": paths.DiscreteDDPM,
    "ve": paths.VE,
    "edm": paths.EDM,
    "flow": paths.RectifiedFlow,
    "trig": paths.Trigonometric,
}
DENSITIES = {"uniform": losses.UniformTime, "logit_normal": losses.LogitNormal, "edm": losses.EDMLogNormal}
WEIGHTINGS = {"uniform": losses.UniformWeight, "min_snr": losses.MinSNR, "edm": losses.EDMWeight}


def _nets() -> dict[str, Callable[..., torch.nn.Module]]:
    from .nets import MLP, UNet

    return {"mlp": MLP, "unet": UNet}


NETS = ("mlp", "unet")
DATA = ("toy", "digits", "images", "patches", "phantoms", "gmm")


def _pick(registry: dict, section: dict | str, what: str):
    """``registry[section['name']](**rest)`` with errors that list the valid names."""
    spec = {"name": section} if isinstance(section, str) else dict(section)
    name = spec.pop("name", None)
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(registry)}")
    try:
        return registry[name](**spec)
    except TypeError as e:
        raise ValueError(f"bad arguments for {what} {name!r}: {e}") from e


def build_path(section: dict | str) -> paths.Path:
    return _pick(PATHS, section, "path")


def build_data(section: dict):
    """A training data source (``sample(n, generator) -> (x0, cond)``) with ``shape`` and ``num_classes``."""
    spec = dict(section)
    name = spec.pop("name", None)
    if name == "toy":
        from .data.toy import sample_toy

        dataset = spec.pop("dataset", "moons")
        sample_toy(dataset, 1)  # validates the name early
        return FunctionSource(lambda n, g: sample_toy(dataset, n, generator=g), (2,))
    if name == "digits":
        from .data.digits import load_digits

        labels = spec.pop("labels", True)
        x, y = load_digits(**spec)
        return TensorSource(x, y if labels else None)
    if name == "images":
        from .data.images import load_image_folder

        return TensorSource(load_image_folder(**spec))
    if name == "patches":
        from .data.images import image_patches

        n, image, seed = spec.pop("n", 20000), spec.pop("image", "all"), spec.pop("seed", 0)
        return TensorSource(image_patches(image, n=n, generator=torch.Generator().manual_seed(seed), **spec))
    if name == "phantoms":  # fresh procedural phantoms every batch (an infinite data set)
        from .data.phantoms import random_phantoms

        size = spec.pop("size", 32)
        random_phantoms(1, size, **spec)  # validates the arguments early
        return FunctionSource(lambda n, g: random_phantoms(n, size, generator=g, **spec), (1, size, size))
    raise ValueError(f"unknown data {name!r}; valid: {', '.join(DATA)}")


def build_net(section: dict, data_shape: tuple[int, ...], num_classes: int | None, seed: int = 0):
    """Build the network with a deterministic initialisation (the global RNG is left untouched)."""
    spec = dict(section)
    name = spec.get("name")
    nets = _nets()
    if name == "mlp":
        spec.setdefault("dim", data_shape[0])
    elif name == "unet":
        spec.setdefault("in_channels", data_shape[0])
    if spec.get("num_classes", "auto") == "auto":
        spec["num_classes"] = num_classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _pick(nets, spec, "net")


def build_model(config: dict, data_shape: tuple[int, ...], num_classes: int | None = None) -> Model:
    """Network + path + parametrization (+ EDM preconditioning) from a run config."""
    path = build_path(config.get("path", "vp_linear"))
    net_cfg = config.get("net")
    if net_cfg is None:
        raise ValueError("the config needs a 'net' section, e.g. {name: mlp, hidden: 256}")
    net = build_net(net_cfg, data_shape, num_classes, config.get("train", {}).get("seed", 0))
    m = dict(config.get("model", {}))
    precond = m.pop("precond", None)
    prediction = m.pop("prediction", "x0" if precond else "eps")
    if m:
        raise ValueError(f"unknown model option(s) {', '.join(sorted(m))}; valid: prediction, precond")
    pre = EDMPrecond(**(precond if isinstance(precond, dict) else {})) if precond else None
    return Model(net, path, prediction, pre)


def build_loss(config: dict, model: Model) -> losses.DiffusionLoss:
    spec = dict(config.get("loss", {}))
    target = spec.pop("target", model.prediction)
    density = _pick(DENSITIES, spec.pop("density", "uniform"), "t-density")
    weighting = _pick(WEIGHTINGS, spec.pop("weighting", "uniform"), "weighting")
    if spec:
        raise ValueError(f"unknown loss option(s) {', '.join(sorted(spec))}; valid: target, density, weighting")
    return losses.DiffusionLoss(target, density, weighting)


def load_config(path: str | os.PathLike) -> dict:
    """Read a YAML run config."""
    p = FsPath(path)
    if not p.is_file():
        raise FileNotFoundError(f"no config file at {p}")
    cfg = yaml.safe_load(p.read_text())
    if not isinstance(cfg, dict):
        raise ValueError(f"{p} must hold a mapping with sections data, path, net, model, loss, train")
    return cfg


def load_model(file: str | os.PathLike, device: str | torch.device = "cpu", ema: bool = True) -> tuple[Model, dict]:
    """Rebuild a trained Model from ``model.safetensors`` (EMA weights) or ``checkpoint.safetensors``."""
    tensors, meta = load_safetensors(file, device=device)
    cfg = meta.get("config")
    if not isinstance(cfg, dict):
        raise ValueError(f"{file} has no diffusio config in its metadata; was it written by diffusio?")
    if meta.get("format") == "diffusio-checkpoint-1":
        prefix = "ema/" if ema else "model/"
        tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    shape = tuple(cfg["data_shape"])
    model = build_model(cfg, shape, cfg.get("num_classes"))
    model.net.load_state_dict(tensors)
    model.net.to(device).eval()
    return model, copy.deepcopy(cfg)


def run_training(
    config: dict,
    out_dir: str | os.PathLike | None,
    *,
    steps: int | None = None,
    resume: bool = False,
    dist_info=None,
    progress: bool = True,
):
    """Train from a run config; returns the Trainer (its ``model`` holds the raw weights, ``ema`` the average).

    With ``resume`` the stored config of ``out_dir/checkpoint.safetensors`` must describe the same model.
    """
    from .train import TrainConfig, Trainer

    cfg = copy.deepcopy(config)
    train_cfg = dict(cfg.get("train", {}))
    if steps is not None:
        train_cfg["steps"] = steps
    train_cfg.setdefault("progress", progress)
    tc = TrainConfig.from_dict(train_cfg)
    data = build_data(cfg.get("data", {}))
    cfg["data_shape"], cfg["num_classes"] = list(data.shape), data.num_classes
    model = build_model(cfg, data.shape, data.num_classes)
    loss = build_loss(cfg, model)
    run_cfg = {k: v for k, v in cfg.items() if k != "train"}
    trainer = Trainer(model, loss, data, tc, out_dir, run_cfg, dist_info)
    if resume:
        _check_same_model(FsPath(out_dir) / "checkpoint.safetensors", run_cfg)
    trainer.fit(resume=resume)
    return trainer


def _check_same_model(ckpt: FsPath, run_cfg: dict) -> None:
    if not ckpt.is_file():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt}; run without --resume first")
    _, meta = load_safetensors(ckpt)
    stored = {k: v for k, v in meta.get("config", {}).items() if k in ("path", "net", "model", "data")}
    want = {k: v for k, v in run_cfg.items() if k in ("path", "net", "model", "data")}
    if stored != want:
        raise ValueError(f"cannot resume: {ckpt} was trained with a different config ({stored} vs {want})")
