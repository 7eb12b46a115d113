"""The flow-map family record: a FlowMapModel distilled from a teacher (or trained MeanFlow-style from data)."""

from __future__ import annotations

from diffusio.families.base import Builders, Family
from diffusio.families.flowmap.maps import FlowMapDistillation, FlowMapModel

__all__ = ["FAMILY"]


def build_model(config: dict, data_shape, num_classes, build: Builders) -> FlowMapModel:
    path = build.path(config.get("path", "flow"))
    net = build.net(config["net"], data_shape, None, config.get("train", {}).get("seed", 0))
    return FlowMapModel(net, path)


def build_loss(config: dict, model, build: Builders) -> FlowMapDistillation:
    """``teacher``: a trained model file (none: MeanFlow from data); ``loss``: density and FlowMapDistillation's
    own options."""
    spec = dict(config.get("loss", {}))
    teacher = config.get("teacher")
    density = build.pick(build.densities, spec.pop("density", "uniform"), "t-density")
    return FlowMapDistillation(build.load_model(teacher) if teacher else None, density, **spec)


FAMILY = Family(
    "flowmap",
    "flow maps (MeanFlow, Geng et al. 2025): the PF-ODE's solution map, sampled in 1-4 jumps",
    build_model=build_model,
    build_loss=build_loss,
    solvers=("flowmap",),
    configs=("flowmap.yaml",),
)
