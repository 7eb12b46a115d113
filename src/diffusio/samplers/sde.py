"""Stochastic baseline samplers: DDPM ancestral sampling and Euler–Maruyama on the reverse-SDE family."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusio.models.base import ModelBase
from diffusio.samplers.base import Callback, run_kernel
from diffusio.samplers.kernels import ancestral_step, euler_maruyama_step

__all__ = ["sample_ddpm", "sample_euler_maruyama"]


def sample_ddpm(
    model: ModelBase,
    x: Tensor,
    ts: Tensor,
    *,
    cond: dict | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Ancestral sampling from p(x_s | x_t) = q(x_s | x_t, x0_hat) (Ho et al. 2020, Alg. 2).

    mu = (a sigma_s^2/sigma_t^2) x_t + (alpha_s v/sigma_t^2) x0_hat, a = alpha_t/alpha_s, v = sigma_t^2 - a^2 sigma_s^2.
    """
    return run_kernel(ancestral_step, model, x, ts, callback, cond=cond, generator=generator)


def sample_euler_maruyama(
    model: ModelBase,
    x: Tensor,
    ts: Tensor,
    *,
    cond: dict | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
) -> Tensor:
    """Euler–Maruyama on the reverse SDE family dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dW (Song et al. 2021,
    Eq. 6; Karras et al. 2022, Eq. 6).

    ``eta = 1`` is Anderson's reverse SDE, ``eta = 0`` the probability-flow ODE; all share the marginals p_t.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    return run_kernel(euler_maruyama_step, model, x, ts, callback, cond=cond, eta=eta, generator=generator)
