"""Fokker–Planck residuals of a learned score and the ODE–SDE sample gap (Deveney et al. 2023, arXiv 2311.15996).

For the linear forward SDE dx = f(t) x dt + g(t) dW of a path (f = alpha'/alpha, g^2 = -2 sigma^2 lambda'), the
log-density u = log p_t solves (Deveney et al. 2023, Sec. 3, the log form of the Fokker–Planck equation)

    d_t u = -D f - f x . grad u + (g^2/2) (Lap u + |grad u|^2),

and its gradient, the score s = grad u, solves (Lai et al. 2023, FP-Diffusion, Eq. 6)

    d_t s = grad_x [ -f x . s + (g^2/2) (div s + |s|^2) ].

A learned score that leaves a residual is not the score of any density family transported by the forward SDE,
and the probability-flow ODE and the reverse SDE driven by it then reach different laws; Deveney et al. bound the
W2 distance between the two by the residual. Divergences are exact (one backward pass per dimension) up to
``exact_below`` dimensions, else Hutchinson's estimator with Rademacher probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffusio.core.paths import Path
from diffusio.core.time import as_time, broadcast
from diffusio.models.base import ModelBase
from diffusio.samplers import sample
from diffusio.training.regularizers import divergence, normalized_residual, score_fp_residual

__all__ = [
    "divergence",
    "log_density_residual",
    "normalized_residual",
    "ode_sde_gap",
    "score_fp_residual",
]


def _sde(path: Path, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """f(t) and g^2(t) as ``(B, 1)`` columns in ``x``'s dtype."""
    return broadcast(path.drift(t), x).to(x.dtype), broadcast(path.diffusion2(t), x).to(x.dtype)


def log_density_residual(u: Callable[[Tensor, Tensor], Tensor], path: Path, x: Tensor, t: Tensor | float) -> Tensor:
    """R_log = d_t u + D f + f x . grad u - (g^2/2)(Lap u + |grad u|^2) ``(B,)`` for a log-density ``u(x, t) -> (B,)``
    at ``x`` ``(B, D)`` (Deveney et al. 2023, log-FP residual; exact Laplacian). Zero for u = log p_t."""
    t = as_time(t, x)
    path.check_t(t)
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_(True)  # keep an outer graph (grad_x R_log)
        tg = t.detach().clone().requires_grad_(True)
        val = u(xg, tg)
        du_dt, grad = torch.autograd.grad(val.sum(), (tg, xg), create_graph=True)
        lap = divergence(grad, xg)
        f, g2 = _sde(path, tg, xg)
        f, g2 = f[:, 0], g2[:, 0]
        res = du_dt.to(x.dtype) + x.shape[1] * f + f * (xg * grad).sum(1) - 0.5 * g2 * (lap + (grad * grad).sum(1))
    return res


def ode_sde_gap(
    model: ModelBase,
    shape: tuple[int, ...],
    distance: Callable[[Tensor, Tensor], float],
    *,
    steps: int = 200,
    box: float | None = None,
    cond: dict | None = None,
    generator: torch.Generator | None = None,
) -> tuple[float, Tensor, Tensor]:
    """(distance(ODE samples, SDE samples), ODE samples, SDE samples) from one model and one prior draw.

    Both use Euler–Maruyama on the same grid (``eta = 0``: the probability-flow ODE's Euler method; ``eta = 1``: the
    reverse SDE), so only the injected noise differs (Deveney et al. 2023, Sec. 5). ``distance`` is e.g.
    ``diffusio.metrics.sliced_wasserstein``. With ``box`` the distance is taken, as in the paper's metric, between
    the samples inside [-box, box]^D of each set, truncated to the same size (the returned samples are all of them).
    """
    if box is not None and not (math.isfinite(box) and box > 0):
        raise ValueError(f"box must be a finite number > 0 or None, got {box!r}")
    x = model.path.prior_sample(tuple(shape), generator=generator)
    ode = sample(model, x.clone(), solver="euler_maruyama", steps=steps, cond=cond, eta=0.0).x
    sde = sample(model, x.clone(), solver="euler_maruyama", steps=steps, cond=cond, eta=1.0, generator=generator).x
    a, b = ode, sde
    if box is not None:
        a, b = (s[s.reshape(s.shape[0], -1).abs().amax(1) <= box] for s in (ode, sde))
        n = min(a.shape[0], b.shape[0])
        if n < 2:
            raise ValueError(f"fewer than 2 samples inside the box [-{box}, {box}]^D; widen box")
        a, b = a[:n], b[:n]
    return float(distance(a, b)), ode, sde
