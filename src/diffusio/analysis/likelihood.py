"""Exact likelihood through the probability-flow ODE (Song et al. 2021, Sec. 4.3 and App. D.2; FFJORD, Grathwohl 2019).

Along dx/dt = u(x, t) the log-density obeys d log p_t(x_t)/dt = -div u(x_t, t), so

    log p_{t_min}(x) = log p_{t_max}(x(t_max)) + int_{t_min}^{t_max} div u(x(t), t) dt,

integrated forward from the data with the augmented state (x, int div u) by the adaptive Dormand-Prince solver.
The divergence is exact (one backward pass per dimension) up to ``exact_below`` dimensions, else Hutchinson's
estimator E_v[v^T (du/dx) v] with Rademacher or Gaussian probes that stay fixed along the trajectory (unbiased).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffusio.core.time import time_batch
from diffusio.models.base import ModelBase
from diffusio.samplers.adaptive import odeint

__all__ = ["bits_per_dim", "log_likelihood"]


def _divergence(u_fn, x: Tensor, t: Tensor, probes: Tensor | None) -> tuple[Tensor, Tensor]:
    """(u, div u) at x ``(batch, D)``: exact if ``probes`` is None, else the Hutchinson mean over ``probes``."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        u = u_fn(xg, t)
        if probes is None:
            div = sum(torch.autograd.grad(u[:, j].sum(), xg, retain_graph=True)[0][:, j] for j in range(x.shape[1]))
        else:
            div = 0
            for v in probes:
                (vjp,) = torch.autograd.grad(u, xg, v, retain_graph=True)
                div = div + (vjp * v).sum(1)
            div = div / len(probes)
    return u.detach(), div.detach()


def log_likelihood(
    model: ModelBase,
    x: Tensor,
    *,
    t_min: float | None = None,
    t_max: float | None = None,
    cond: dict | None = None,
    prior_log_prob: Callable[[Tensor], Tensor] | None = None,
    exact_below: int = 16,
    probes: int = 1,
    noise: str = "rademacher",
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> Tensor:
    """log p_{t_min}(x) ``(batch,)`` in nats for data ``x`` ``(batch, ...)``, through the probability-flow ODE.

    ``prior_log_prob`` is log p_{t_max} of the final state (default: N(0, sigma(t_max)^2 I), the path's prior).
    The divergence is exact below ``exact_below`` dimensions, else Hutchinson with ``probes`` fixed ``noise``
    vectors ("rademacher" or "gaussian") drawn from ``generator``. Works in ``x``'s dtype (use float64 to check).
    """
    if noise not in ("rademacher", "gaussian"):
        raise ValueError(f"noise must be 'rademacher' or 'gaussian', got {noise!r}")
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    path = model.path
    lo = float(path.t_min if t_min is None else t_min)
    hi = float(path.t_max if t_max is None else t_max)
    path.check_t(torch.tensor([lo, hi], dtype=torch.float64), "(t_min, t_max)")
    batch, shape = x.shape[0], x.shape[1:]
    d = math.prod(shape)
    xf = x.reshape(batch, d)
    vs = None
    if d > exact_below:
        if noise == "rademacher":
            vs = torch.randint(0, 2, (probes, batch, d), generator=generator, device=x.device).to(x.dtype) * 2 - 1
        else:
            vs = torch.randn((probes, batch, d), generator=generator, device=x.device, dtype=x.dtype)

    def u_fn(xx: Tensor, t: Tensor) -> Tensor:
        return model.predict(xx.reshape(batch, *shape), t, "velocity", **(cond or {})).reshape(batch, d)

    def f(t: float, y: Tensor) -> Tensor:
        u, div = _divergence(u_fn, y[:, :d], time_batch(torch.tensor(t), y), vs)
        return torch.cat([u.to(y.dtype), div.to(y.dtype)[:, None]], 1)

    y0 = torch.cat([xf, torch.zeros(batch, 1, dtype=x.dtype, device=x.device)], 1)
    y1 = odeint(f, y0, lo, hi, rtol=rtol, atol=atol)
    x_end, delta = y1[:, :d], y1[:, d]
    if prior_log_prob is None:
        s = float(path.sigma(torch.tensor(hi, dtype=torch.float64)))
        prior = -0.5 * (x_end**2).sum(1) / s**2 - d * (math.log(s) + 0.5 * math.log(2 * math.pi))
    else:
        prior = prior_log_prob(x_end.reshape(batch, *shape))
    return prior + delta


def bits_per_dim(log_prob: Tensor, dims: int, *, levels: int = 256, data_range: float = 2.0) -> Tensor:
    """Bits per dimension of a continuous density on data scaled from ``levels`` integer levels to an interval of
    width ``data_range`` (images in [-1, 1]: 256 levels over width 2), without dequantisation: the density is
    moved to the integer scale, bpd = (-log p / D + log(levels / data_range)) / log 2 (Song et al. 2021's
    dequantisation-free convention; uniform dequantisation would add the integral over each bin)."""
    return (-log_prob / dims + math.log(levels / data_range)) / math.log(2)
