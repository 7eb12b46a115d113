"""The mean-reverting family record: MR-SDE models on an ``mr_*`` path, restoring degraded images."""

from __future__ import annotations

import math

import torch

from diffusio.families.base import Builders, Family
from diffusio.families.mean_reverting.sde import MeanReverting, MRLoss, MRModel, add_noise, gaussian_blur, restore

__all__ = ["DEGRADATIONS", "FAMILY"]

DEGRADATIONS = {"noise": add_noise, "blur": gaussian_blur}


def build_model(config: dict, data_shape, num_classes, build: Builders) -> MRModel:
    """The net sees the state and the degraded image mu concatenated (twice the input channels or features)."""
    from diffusio.nets import FlattenNet

    path = build.path(config.get("path", "mr_cosine"))
    if not isinstance(path, MeanReverting):
        raise ValueError(f"the mean_reverting family needs an mr_* path; got {path.name!r}")
    net_cfg, seed, dim = dict(config["net"]), config.get("train", {}).get("seed", 0), math.prod(data_shape)
    if net_cfg.get("name") == "mlp":  # the condition is concatenated: twice the input features
        net = FlattenNet(build.net({**net_cfg, "dim": 2 * dim, "out_dim": dim}, (2 * dim,), None, seed), data_shape)
    else:
        channels = {"in_channels": 2 * data_shape[0], "out_channels": data_shape[0]}
        net = build.net({**net_cfg, **channels}, data_shape, None, seed)
    return MRModel(net, path, config.get("model", {}).get("prediction", "x0"))


def generate(model, cfg: dict, n: int, *, solver: str, steps: int, seed: int, build: Builders, **options):
    """Restores ``n`` degraded test images of the config's data with ``solver`` (e.g. mrs, mrs_sde,
    euler_maruyama, ddpm) and reports their PSNR and the degraded images' PSNR."""
    psnr = build.metrics["psnr"]
    g = torch.Generator().manual_seed(seed)
    data = dict(cfg["data"])
    clean_cfg = {**data.get("clean", {"name": "digits"}), "split": "test"}
    clean = build.data(clean_cfg).x[:n]
    mu = build.pick(DEGRADATIONS, data.get("degrade", "noise"), "degradation")(clean, g)
    x, nfe = restore(model, mu, solver=solver, steps=steps, generator=g, **options)
    scores = {"psnr": float(psnr(x, clean).mean()), "psnr_degraded": float(psnr(mu.clamp(-1, 1), clean).mean())}
    return x, nfe, scores


FAMILY = Family(
    "mean_reverting",
    "mean-reverting SDEs (IR-SDE) for image restoration, with the MRS solvers (Li et al. 2025)",
    build_model=build_model,
    loss_class=MRLoss,
    generate=generate,
    solvers=("mrs", "mrs_sde"),
    configs=("mr_digits.yaml",),
)
