"""Stochastic baseline samplers: DDPM ancestral sampling and Euler–Maruyama on the reverse-SDE family."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusio.core.parametrization import from_x0
from diffusio.core.time import coeffs, time_batch
from diffusio.models.base import ModelBase
from diffusio.samplers.base import Callback, Step, model_x0
from diffusio.samplers.ode import _posterior_std

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
    """Ancestral sampling from p(x_s | x_t) = q(x_s | x_t, x0_hat) (Ho et al. 2020, Alg. 2; principles.md).

    mu = (a sigma_s^2/sigma_t^2) x_t + (alpha_s v/sigma_t^2) x0_hat, a = alpha_t/alpha_s, v = sigma_t^2 - a^2 sigma_s^2.
    """
    path = model.path
    for i in range(len(ts) - 1):
        ct, cs = coeffs(path, ts[i]), coeffs(path, ts[i + 1])
        x0 = model_x0(model, x, ts[i], cond)
        r = torch.exp(2 * (ct.lam - cs.lam))  # a^2 sigma_s^2 / sigma_t^2, from lambda to avoid cancellation
        c_x = r * cs.alpha / ct.alpha  # a sigma_s^2 / sigma_t^2
        c_x0 = cs.alpha * (-torch.expm1(2 * (ct.lam - cs.lam)))  # alpha_s v / sigma_t^2
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = float(c_x) * x + float(c_x0) * x0 + float(_posterior_std(ct, cs)) * z
        if callback is not None:
            callback(Step(i, float(ts[i + 1]), x, x0))
    return x


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
    """Euler–Maruyama on the reverse SDE family dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dW (principles.md).

    ``eta = 1`` is Anderson's reverse SDE, ``eta = 0`` the probability-flow ODE; all share the marginals p_t.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    path = model.path
    for i in range(len(ts) - 1):
        t, dt = ts[i], float(ts[i + 1] - ts[i])
        tb = time_batch(t, x)
        f, g2 = float(path.drift(t)), float(path.diffusion2(t))
        x0 = model_x0(model, x, t, cond)
        score = from_x0("score", x0, x, tb, path).to(x.dtype)
        x = x + (f * x - 0.5 * (1 + eta**2) * g2 * score) * dt
        if eta > 0:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + eta * (g2 * abs(dt)) ** 0.5 * z
        if callback is not None:
            callback(Step(i, float(ts[i + 1]), x, x0))
    return x
