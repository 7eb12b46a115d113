"""The multi-task family record: a shared backbone with an image head and a label head, trained jointly."""

from __future__ import annotations

import torch

from diffusio.families.base import Builders, Family
from diffusio.families.multitask import MultiTaskLoss, MultiTaskModel

__all__ = ["FAMILY"]


def build_model(config: dict, data_shape, num_classes, build: Builders) -> MultiTaskModel:
    """The image-label network (``nets.heads.image_label_net``) on the config's path, with the model options."""
    from diffusio.nets.heads import image_label_net

    if not num_classes:
        raise ValueError("the multitask family needs labelled data (e.g. data: {name: digits} with labels)")
    spec = {k: v for k, v in dict(config.get("net", {})).items() if k != "name"}
    spec.update(in_channels=data_shape[0], image_size=data_shape[-1], num_classes=num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.get("train", {}).get("seed", 0))
        net = build.pick({"image_label": image_label_net}, {"name": "image_label", **spec}, "net")
    m = dict(config.get("model", {}))
    path = build.path(config.get("path", "vp_linear"))
    return build.pick({"multitask": MultiTaskModel}, {"name": "multitask", "net": net, "path": path, **m}, "model")


def build_loss(config: dict, model, build: Builders) -> MultiTaskLoss:
    """The multi-task loss with the config's ``loss`` options."""
    return build.pick({"multitask": MultiTaskLoss}, {"name": "multitask", **dict(config.get("loss", {}))}, "loss")


FAMILY = Family(
    "multitask",
    "multi-task diffusion: joint (image, label) generation with a shared backbone and per-modality heads",
    build_model=build_model,
    build_loss=build_loss,
    configs=("multitask.yaml",),
)
