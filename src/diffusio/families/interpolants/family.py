"""The stochastic-interpolant family record: its model, loss and generation from a run config."""

from __future__ import annotations

import torch

from diffusio.families.base import Builders, Family
from diffusio.families.interpolants.coefficients import (
    BrownianGamma,
    CosineDown,
    Interpolant,
    LinearDown,
    LinearUp,
    ScaledGamma,
    SineUp,
    ZeroGamma,
)
from diffusio.families.interpolants.fields import InterpolantModel
from diffusio.families.interpolants.integration import generate as si_generate
from diffusio.families.interpolants.loss import InterpolantLoss

__all__ = ["A_COEFFS", "B_COEFFS", "FAMILY", "GAMMAS"]

# config names of the coefficients (paper time: a goes 1 -> 0, b goes 0 -> 1, gamma vanishes at both ends)
A_COEFFS = {"linear": LinearDown, "cosine": CosineDown}
B_COEFFS = {"linear": LinearUp, "sine": SineUp}
GAMMAS = {"brownian": BrownianGamma, "scaled": ScaledGamma, "zero": ZeroGamma}


def build_model(config: dict, data_shape, num_classes, build: Builders) -> InterpolantModel:
    """``interpolant: {a, b, gamma}``, ``model: {heads}``; the net outputs one channel block per head."""
    spec = dict(config.get("interpolant", {}))
    it = Interpolant(
        build.pick(A_COEFFS, spec.pop("a", "linear"), "interpolant coefficient a"),
        build.pick(B_COEFFS, spec.pop("b", "linear"), "interpolant coefficient b"),
        build.pick(GAMMAS, spec.pop("gamma", "brownian"), "interpolant gamma"),
    )
    if spec:
        raise ValueError(f"unknown interpolant option(s) {', '.join(sorted(spec))}; valid: a, b, gamma")
    heads = tuple(config.get("model", {}).get("heads", ("velocity", "eta")))
    net_cfg = {**config["net"], "out_dim": len(heads) * data_shape[0]}
    net = build.net(net_cfg, data_shape, None, config.get("train", {}).get("seed", 0))
    return InterpolantModel(net, it, heads, gaussian_base=not config.get("base"))


def build_loss(config: dict, model, build: Builders) -> InterpolantLoss:
    base = config.get("base")
    return InterpolantLoss(build.data(base) if base else None, **dict(config.get("loss", {})))


def generate(model, cfg: dict, n: int, *, solver: str, steps: int, seed: int, build: Builders, **options):
    """Draws from the base (N(0, I) or the config's ``base`` data) carried by the ODE (``epsilon=0``, default) or
    the SDE (``epsilon > 0``); ``solver`` is not used (Heun for the ODE, Euler-Maruyama for the SDE)."""
    g = torch.Generator().manual_seed(seed)
    shape = tuple(cfg["data_shape"])
    base = cfg.get("base")
    x0 = build.data(base).sample(n, g)[0] if base else torch.randn((n, *shape), generator=g)
    x, nfe = si_generate(model, x0, steps, options.pop("epsilon", 0.0), generator=g)
    return x, nfe, {}


FAMILY = Family(
    "interpolant",
    "stochastic interpolants (Albergo, Boffi & Vanden-Eijnden 2023): one-/two-sided, ODE and SDE, bridges",
    build_model=build_model,
    build_loss=build_loss,
    generate=generate,
    solvers=("si_ode", "si_sde"),
    configs=("interpolant.yaml", "bridge.yaml"),
)
