"""Deterministic baseline samplers of the probability-flow ODE dx/dt = u(x, t) (Song et al. 2021, Eq. 13;
Karras et al. 2022, Sec. 3)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusio.core.time import coeffs
from diffusio.models.base import ModelBase
from diffusio.samplers.base import Callback, kernel_sampler, run_kernel
from diffusio.samplers.kernels import ddim_step, euler_step, heun_step

__all__ = ["sample_ddim", "sample_euler", "sample_heun"]


sample_euler = kernel_sampler(
    euler_step,
    "sample_euler",
    """Euler's method on the probability-flow ODE in the path's native time (1 call per step, order 1).""",
)


def sample_heun(
    model: ModelBase,
    x: Tensor,
    ts: Tensor,
    *,
    cond: dict | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    churn: float = 0.0,
    churn_tmin: float = 0.0,
    churn_tmax: float = math.inf,
    churn_noise: float = 1.0,
) -> Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 2) in native time, with optional stochastic churn.

    ``churn`` is EDM's S_churn: at steps whose noise level s = sigma/alpha lies in [churn_tmin, churn_tmax] the
    level is raised to s (1 + gamma), gamma = min(churn / steps, sqrt(2) - 1), by adding fresh noise; the
    ``churn_*`` bounds are noise levels, as in EDM. 2 calls per step.
    """
    if churn < 0 or churn_noise < 0:
        raise ValueError("churn and churn_noise must be >= 0")
    gamma_max = min(churn / (len(ts) - 1), math.sqrt(2) - 1)

    def step(model: ModelBase, x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
        if gamma_max > 0:
            x, t = _churn(
                model.path, x, t, gamma_max, s_lo=churn_tmin, s_hi=churn_tmax, s_noise=churn_noise, generator=generator
            )
        return heun_step(model, x, t, t_next, cond=cond)

    return run_kernel(step, model, x, ts, callback)


def _churn(path, x, t, gamma, *, s_lo, s_hi, s_noise, generator):
    """EDM's noise injection: raise the noise level s = sigma/alpha to s (1 + gamma) by adding noise."""
    c = coeffs(path, t)
    s = c.sigma / c.alpha
    if not (s_lo <= float(s) <= s_hi):
        return x, t
    s_hat = s * (1 + gamma)
    t_hat = path.t_of_noise_level(s_hat).clamp(max=path.t_hi)
    c_hat = coeffs(path, t_hat)
    s_hat = c_hat.sigma / c_hat.alpha  # exact level actually reached after clamping
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    scale = float(c_hat.alpha / c.alpha)
    return scale * x + float(c_hat.alpha * torch.sqrt((s_hat**2 - s**2).clamp(min=0))) * s_noise * z, t_hat


sample_ddim = kernel_sampler(
    ddim_step,
    "sample_ddim",
    """DDIM (Song, Meng & Ermon 2021, Eq. 12): x_s = alpha_s x0 + sqrt(sigma_s^2 - (eta c)^2) eps + eta c z.

    ``eta = 0`` is the deterministic first-order exponential integrator, written as
    x_s = (sigma_s/sigma_t) x_t - alpha_s expm1(lambda_t - lambda_s) x0; ``eta = 1`` is DDPM's ancestral step.
    """,
    nonnegative=("eta",),
)
