"""Adapters to and from the peers' conventions: diffusers (integer timesteps, scheduler tables) and k-diffusion
(``D(x, sigma)`` on the VE scale). Conventions are converted here, never inside the math.

* ``from_diffusers(unet, scheduler)``: a diffusers ``UNet2DModel`` (or any ``net(x, timestep).sample`` /
  tensor-returning callable) trained with ``epsilon``, ``v_prediction`` or ``sample`` on a discrete schedule becomes a
  Model on ``DiscreteDDPM(alphas_cumprod=...)``; the network sees the label N t - 1 (DDPM numbers steps 1..N,
  Ho et al. 2020; diffusers 0..N-1).
* ``to_k_diffusion(model)``: a Model as a k-diffusion denoiser D(x, sigma) = x0(alpha x, t(sigma)), with
  x on the VE scale x/alpha and sigma the noise level sigma/alpha.
* ``reschedule(model, path)``: the same model (the same probability-flow ODE) seen on another Gaussian path, e.g.
  an EDM model on a DDPM table so that diffusers' schedulers can drive it.
* ``to_diffusers(model, kind)``: a Model on a discrete path as a diffusers-style ``f(sample, timestep)`` returning
  the ``epsilon``/``v_prediction``/``sample`` head at integer labels.

diffusers is optional (the ``bench`` extra); nothing here imports it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from diffusio.core.paths import DiscreteDDPM, Path
from diffusio.core.time import as_time, broadcast
from diffusio.models.base import Model, ModelBase
from diffusio.models.wrappers import Rescheduled

__all__ = [
    "DiffusersNet",
    "alphas_cumprod_from_config",
    "from_diffusers",
    "reschedule",
    "to_diffusers",
    "to_k_diffusion",
]

_PREDICTION = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def _config(scheduler) -> Mapping:
    return scheduler if isinstance(scheduler, Mapping) else scheduler.config


def alphas_cumprod_from_config(config: Mapping) -> Tensor:
    """The abar table of a diffusers scheduler config (``trained_betas`` or ``beta_schedule`` in
    linear / scaled_linear / squaredcos_cap_v2, as diffusers defines them), float64."""
    n = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        betas = torch.as_tensor(config["trained_betas"], dtype=torch.float64)
    else:
        kind = config.get("beta_schedule", "linear")
        b0, b1 = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
        if kind == "linear":
            betas = torch.linspace(b0, b1, n, dtype=torch.float64)
        elif kind == "scaled_linear":
            betas = torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float64) ** 2
        elif kind == "squaredcos_cap_v2":
            f = lambda i: torch.cos((torch.as_tensor(i, dtype=torch.float64) / n + 0.008) / 1.008 * torch.pi / 2) ** 2  # noqa: E731
            i = torch.arange(n, dtype=torch.float64)
            betas = torch.clamp(1 - f(i + 1) / f(i), max=0.999)
        else:
            raise ValueError(
                f"unsupported beta_schedule {kind!r}; valid: linear, scaled_linear, squaredcos_cap_v2, trained_betas"
            )
    return torch.cumprod(1 - betas, 0)


class DiffusersNet(nn.Module):
    """Calls a diffusers network at the discrete label N t - 1 and unwraps ``.sample``."""

    def __init__(self, unet, path: DiscreteDDPM):
        super().__init__()
        self.unet = unet
        self.path = path

    def forward(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        out = self.unet(x, self.path.timestep(t).to(x.dtype), **cond)
        return out.sample if hasattr(out, "sample") else out


def from_diffusers(unet, scheduler) -> Model:
    """A diffusers ``UNet2DModel`` + scheduler (object or config dict) as a diffusio Model on ``DiscreteDDPM``."""
    config = _config(scheduler)
    pred = config.get("prediction_type", "epsilon")
    if pred not in _PREDICTION:
        raise ValueError(f"unsupported prediction_type {pred!r}; valid: {', '.join(_PREDICTION)}")
    abar = getattr(scheduler, "alphas_cumprod", None)
    abar = alphas_cumprod_from_config(config) if abar is None else torch.as_tensor(abar, dtype=torch.float64)
    path = DiscreteDDPM(alphas_cumprod=abar)
    return Model(DiffusersNet(unet, path), path, _PREDICTION[pred])


class KDiffusionDenoiser(nn.Module):
    """A Model seen as a k-diffusion denoiser: D(x, sigma) with x and sigma on the VE scale."""

    def __init__(self, model: ModelBase):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        path = self.model.path
        sigma = as_time(sigma, x).to(torch.float64)
        t = path.t_of_noise_level(sigma).clamp(path.t_lo, path.t_hi)
        a = broadcast(path.alpha(t), x)
        return self.model.predict(x * a, t, "x0", **cond)


def to_k_diffusion(model: ModelBase) -> KDiffusionDenoiser:
    """``model`` as ``D(x, sigma)`` for k-diffusion samplers (sigma = sigma_t/alpha_t, x = x_t/alpha_t)."""
    return KDiffusionDenoiser(model)


class DiffusersStyle(nn.Module):
    """A Model on a discrete path as ``f(sample, timestep) -> head`` at integer labels n (t = (n + 1)/N)."""

    def __init__(self, model: ModelBase, kind: str):
        super().__init__()
        if kind not in _PREDICTION:
            raise ValueError(f"kind must be one of {', '.join(_PREDICTION)}, got {kind!r}")
        if not isinstance(model.path, DiscreteDDPM):
            raise ValueError("to_diffusers needs a model on a DiscreteDDPM path (integer timesteps)")
        self.model, self.kind = model, _PREDICTION[kind]

    def forward(self, sample: Tensor, timestep: Tensor | int, **cond) -> Tensor:
        n = as_time(torch.as_tensor(timestep, dtype=torch.float64), sample)
        t = (n + 1) / self.model.path.num_steps
        return self.model.predict(sample, t, self.kind, **cond)


def to_diffusers(model: ModelBase, kind: str = "epsilon") -> DiffusersStyle:
    """``model`` as a diffusers-style network returning the ``kind`` head ("epsilon", "v_prediction", "sample")."""
    return DiffusersStyle(model, kind)


def reschedule(model: ModelBase, path: Path) -> ModelBase:
    """``model`` seen on another Gaussian ``path`` (the same PF-ODE up to the scaling x/alpha), with noise levels beyond
    the model path's domain clamped to it, as k-diffusion does: ``Rescheduled(model, path, clamp=True)``. EDM's
    domain is unbounded, so an EDM model sees every level of a DDPM table (up to sigma/alpha ~ 157 > its sigma_max)."""
    return Rescheduled(model, path, clamp=True)
