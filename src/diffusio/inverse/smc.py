"""Approximation-free ensemble posterior sampling with weighted particles (AFDPS; Chen, Ren, Min, Ying, Izzo
2025; ensemble-smc-inverse.md).

The family q(x, t) ~ p_t(x) exp(-mu_y(x)), mu_y(x) = ||A x - y||^2 / (2 sigma_y^2) evaluated at the current state,
is the posterior at the data end. In reverse time (clock tau with d tau = -dt) it solves a Fokker-Planck equation
with drift H - V^2 grad mu_y, diffusion V and reaction R - E_q[R], where H = -f x + (g^2 + V^2)/2 s is the prior's
reverse drift for any free diffusion V (here V = ``diffusion`` * g), and
R = (V^2/2)(||grad mu_y||^2 - Lap mu_y) - H . grad mu_y. Particles move by Euler-Maruyama, log-weights grow by
h R, and the ensemble is resampled (multinomial) when ESS/N falls below ``ess_threshold``. For a linear A the
Laplacian is a constant and drops out of the normalised weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusio.core.time import time_batch
from diffusio.core.timesteps import get_timesteps
from diffusio.inverse.operators import LinearOperator, conjugate_gradient
from diffusio.models.base import ModelBase

__all__ = ["solve_smc", "stage_one"]


def stage_one(
    operator: LinearOperator, y: Tensor, rho2: float, *, generator: torch.Generator | None = None, iters: int = 200
) -> Tensor:
    """Exact draws from q(x, t_max) ~ N(x; 0, rho2 I) exp(-mu_y(x)) = N(m0, Lambda^{-1}),
    Lambda = A^T A / s^2 + I / rho2, by perturb-and-solve: Lambda x = A^T (y + s z2) / s^2 + z1 / sqrt(rho2),
    solved with conjugate gradients. ``y``: ``(B, *out_shape)``; returns ``(B, *in_shape)``."""
    s2 = operator.noise_std**2
    z1 = torch.randn((y.shape[0], *operator.in_shape), generator=generator, device=y.device, dtype=y.dtype)
    z2 = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    b = operator.adjoint(y + operator.noise_std * z2) / s2 + z1 / math.sqrt(rho2)
    return conjugate_gradient(lambda v: operator.normal(v) / s2 + v / rho2, b, iters=iters)


def _resample(x: Tensor, logw: Tensor, generator) -> Tensor:
    """Multinomial resampling within each group: ``x`` ``(B, N, ...)``, ``logw`` ``(B, N)``."""
    b, n = logw.shape
    idx = torch.multinomial(torch.softmax(logw.double(), 1), n, replacement=True, generator=generator)
    return torch.gather(x, 1, idx.reshape(b, n, *([1] * (x.ndim - 2))).expand_as(x))


def solve_smc(
    model: ModelBase,
    operator: LinearOperator,
    y: Tensor,
    *,
    particles: int = 32,
    steps: int = 200,
    diffusion: float = 1.0,
    ess_threshold: float = 0.5,
    data_var: float = 1.0,
    grid: str = "uniform",
    weights: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict]:
    """AFDPS, SDE variant (ensemble-smc-inverse.md, "Algorithm"): ``particles`` weighted particles per measurement.

    ``y``: ``(B, *out_shape)``. Stage I draws from N(0, rho^2 I) exp(-mu_y) with
    rho^2 = sigma(t_max)^2 + alpha(t_max)^2 ``data_var`` (the Gaussian approximation of p_{t_max}).
    ``diffusion`` = V/g (1: reverse SDE; smaller: less noise, same marginals). ``weights=False`` disables the
    reaction term (a negative control: the drift alone does not target the posterior).
    Returns the weighted mean ``(B, *in_shape)``; ``info`` has ``particles`` ``(B, N, ...)``, ``log_weights``
    ``(B, N)`` and the ESS after every step. One batched model call (B N samples) per step.
    """
    if not isinstance(operator, LinearOperator) or operator.noise_std <= 0:
        raise ValueError("the SMC sampler needs a LinearOperator with noise_std > 0 (a Gaussian likelihood)")
    if particles < 1 or not 0 <= ess_threshold <= 1:
        raise ValueError(f"need particles >= 1 and ess_threshold in [0, 1]; got {particles}, {ess_threshold}")
    operator.check_y(y)
    path, (b, n), s2 = model.path, (y.shape[0], particles), operator.noise_std**2
    ts = get_timesteps(path, steps, grid)
    t_hi = torch.tensor(float(ts[0]), dtype=torch.float64)
    rho2 = float(path.sigma(t_hi) ** 2 + path.alpha(t_hi) ** 2 * data_var)
    yr = y.repeat_interleave(n, 0)
    x = stage_one(operator, yr, rho2, generator=generator)
    logw = torch.zeros(b, n, dtype=torch.float64, device=y.device)
    ess = []
    for i in range(steps):
        t, h = ts[i], float(ts[i] - ts[i + 1])
        f, g2 = float(path.drift(t)), float(path.diffusion2(t))
        v2 = diffusion**2 * g2
        with torch.no_grad():
            score = model.predict(x, time_batch(t, x), "score")
        drift = -f * x + 0.5 * (g2 + v2) * score
        gm = operator.adjoint(operator(x) - yr) / s2
        if weights:
            rate = 0.5 * v2 * gm.flatten(1).pow(2).sum(1) - (drift * gm).flatten(1).sum(1)
            logw = logw + h * rate.double().reshape(b, n)
            logw = logw - logw.max(1, keepdim=True).values
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x + h * (drift - v2 * gm) + math.sqrt(v2 * h) * z
        w = torch.softmax(logw, 1)
        ess.append(float((1 / (w**2).sum(1)).mean()))
        if ess[-1] < ess_threshold * n and i < steps - 1:
            x = _resample(x.reshape(b, n, *x.shape[1:]), logw, generator).reshape(x.shape)
            logw = torch.zeros_like(logw)
    xs = x.reshape(b, n, *x.shape[1:])
    w = torch.softmax(logw, 1).to(x.dtype)
    mean = (w.reshape(b, n, *([1] * (x.ndim - 1))) * xs).sum(1)
    return mean, {"particles": xs, "log_weights": logw, "ess": ess}
