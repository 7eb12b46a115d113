"""RED-Diff: variational posterior sampling as stochastic optimisation (Mardani, Song, Kautz, Vahdat 2023,
Alg. 1).

q(x0 | y) = N(mu, sigma^2 I) with sigma -> 0: minimise over the image mu
    obs_weight * mean((y - A mu)^2) / 2 + lambda_t * mean(sg[eps_hat(x_t, t) - eps] * mu),
x_t = alpha_t mu + sigma_t eps,
with one fresh (t, eps) per Adam step, t descending (coarse to fine), and no backpropagation through the network:
the gradient of the second term w.r.t. mu is lambda_t (eps_hat - eps) / numel (paper Eq. 11; official
``algos/reddiff.py``). Means over elements, as in the official code, so ``reg_weight`` = 0.25 means the same there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffusio.core.paths import Path
from diffusio.core.time import time_batch
from diffusio.core.timesteps import get_timesteps
from diffusio.inverse.operators import Operator
from diffusio.models.base import ModelBase

__all__ = ["SNRWeight", "solve_reddiff"]


@dataclass(frozen=True)
class SNRWeight:
    """lambda_t = (sigma_t / alpha_t)^power = SNR_t^(-power/2); ``power = 1`` is RED-Diff's "linear" default,
    ``power = 0`` a constant weight."""

    power: float = 1.0

    def __call__(self, path: Path, t: Tensor) -> Tensor:
        return path.noise_level(t) ** self.power


def solve_reddiff(
    model: ModelBase,
    operator: Operator,
    y: Tensor,
    *,
    steps: int = 100,
    lr: float = 0.1,
    reg_weight: float = 0.25,
    obs_weight: float = 1.0,
    weighting: SNRWeight = SNRWeight(),
    grid: str = "uniform",
    ascending: bool = False,
    generator: torch.Generator | None = None,
    x_init: Tensor | None = None,
) -> tuple[Tensor, dict]:
    """RED-Diff (Mardani et al. 2023, Alg. 1): ``steps`` Adam steps (betas 0.9, 0.99) on mu from ``x_init`` (default
    the pseudo-inverse A^+ y, or zeros for a nonlinear operator); one model call per step, no backward pass
    through the network. ``ascending=True`` reverses the time order (the paper's ablation). Returns mu ``(B, ...)``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    operator.check_y(y)
    path = model.path
    ts = get_timesteps(path, steps, grid)[1:]  # t_max excluded, t_min included (official: T - s, ..., 0)
    if ascending:
        ts = ts.flip(0)
    mu = _init(operator, y, x_init).detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([mu], lr=lr, betas=(0.9, 0.99))
    fits = []
    for t in ts:
        tb = time_batch(t, mu)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        with torch.no_grad():
            xt = path.perturb(mu, eps, tb.to(mu.dtype))
            eps_hat = model.predict(xt, tb, "eps")
        lam = reg_weight * weighting(path, t).to(mu.dtype)
        reg = lam * ((eps_hat - eps) * mu).flatten(1).mean(1)
        fit = obs_weight * (y - operator(mu)).flatten(1).pow(2).mean(1) / 2
        opt.zero_grad(set_to_none=True)
        (reg + fit).sum().backward()
        opt.step()
        fits.append(float(fit.detach().mean()))
    return mu.detach(), {"data_fit": fits}


def _init(operator: Operator, y: Tensor, x_init: Tensor | None) -> Tensor:
    if x_init is not None:
        operator.check_x(x_init, "x_init")
        return x_init
    if operator.linear:
        return operator.pinv(y)
    return torch.zeros((y.shape[0], *operator.in_shape), dtype=y.dtype, device=y.device)
