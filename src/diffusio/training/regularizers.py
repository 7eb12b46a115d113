"""Fokker–Planck regularisation of denoising training (Deveney et al. 2023, arXiv 2311.15996, Sec. 4).

A learned score s that solves the score Fokker–Planck equation of the forward SDE dx = f x dt + g dW,

    d_t s = grad_x [ -f x . s + (g^2/2) (div s + |s|^2) ]      (Lai et al. 2023, FP-Diffusion, Eq. 6),

is the score of a density family the forward SDE transports, and then the probability-flow ODE and the reverse
SDE reach the same law. :class:`FokkerPlanckLoss` adds ``weight`` times the mean squared residual to any
denoising loss. The residual is taken in the score's own units, R sigma_t^3 / g^2(t) (for Gaussian data it is the
relative error of the score, so every time counts alike), at collocation points that are the first ``points``
noised training samples (x_t, t) of the batch: where p_t has its mass and the samplers go (the official code uses
points uniform in a box instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusio.core.paths import Path
from diffusio.core.time import as_time, broadcast
from diffusio.models.base import ModelBase
from diffusio.training.losses import DiffusionLoss

__all__ = ["FokkerPlanckLoss", "divergence", "score_fp_residual"]


def divergence(field: Tensor, x: Tensor, probes: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    """div of ``field`` ``(B, D)`` w.r.t. ``x`` ``(B, D)`` (graph kept): exact if ``probes`` is None, else the mean of
    ``probes`` Rademacher estimates v^T (d field/dx) v (Hutchinson 1989)."""
    d = x.shape[1]
    if probes is None:
        return sum(torch.autograd.grad(field[:, i].sum(), x, create_graph=True)[0][:, i] for i in range(d))
    if probes < 1:
        raise ValueError(f"probes must be >= 1 or None (exact), got {probes}")
    total = 0
    for _ in range(probes):
        v = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
        (vjp,) = torch.autograd.grad(field, x, v, create_graph=True)
        total = total + (vjp * v).sum(1)
    return total / probes


def _sde(path: Path, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """f(t) and g^2(t) as ``(B, 1)`` columns in ``x``'s dtype."""
    return broadcast(path.drift(t), x).to(x.dtype), broadcast(path.diffusion2(t), x).to(x.dtype)


def score_fp_residual(
    model: ModelBase,
    x: Tensor,
    t: Tensor | float,
    *,
    cond: dict | None = None,
    exact_below: int = 16,
    probes: int = 4,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
) -> Tensor:
    """R_s = d_t s - grad_x[-f x . s + (g^2/2)(div s + |s|^2)], shape of ``x`` ``(B, ...)``, of the model's score.

    Exact divergence up to ``exact_below`` dimensions, else ``probes`` Hutchinson probes from ``generator`` (the
    estimate enters a gradient, so its error does not vanish pointwise; it does where d score/dx is constant in x).
    ``create_graph=True`` keeps the graph to the parameters (for a training regulariser).
    """
    t = as_time(t, x)
    model.path.check_t(t)
    batch, d = x.shape[0], math.prod(x.shape[1:])
    n_probes = None if d <= exact_below else probes
    with torch.enable_grad():
        xg = x.detach().reshape(batch, d).requires_grad_(True)
        tg = t.detach().clone().requires_grad_(True)
        s = model.predict(xg.reshape(x.shape), tg, "score", **(cond or {})).reshape(batch, d)
        ds_dt = torch.stack([torch.autograd.grad(s[:, i].sum(), tg, create_graph=True)[0] for i in range(d)], 1)
        f, g2 = _sde(model.path, tg, s)
        div = divergence(s, xg, n_probes, generator)
        phi = -f[:, 0] * (xg * s).sum(1) + 0.5 * g2[:, 0] * (div + (s * s).sum(1))
        (grad_phi,) = torch.autograd.grad(phi.sum(), xg, create_graph=True)
        res = ds_dt.to(s.dtype) - grad_phi
    return res.reshape(x.shape) if create_graph else res.detach().reshape(x.shape)


def normalized_residual(model: ModelBase, x: Tensor, t: Tensor, **kwargs) -> Tensor:
    """R_s sigma_t^3 / g^2(t), flattened ``(B, D)``: the residual in the units of the score's relative error."""
    res = score_fp_residual(model, x, t, **kwargs).reshape(x.shape[0], -1)
    scale = model.path.sigma(t) ** 3 / model.path.diffusion2(t)
    return res * scale.to(res.dtype)[:, None]


@dataclass
class FokkerPlanckLoss:
    """``base`` per-sample loss + ``weight`` * mean ||R sigma^3 / g^2||^2 over ``points`` collocation points ``(B,)``.

    Same interface as :class:`~diffusio.training.losses.DiffusionLoss` (``draw``, ``couple``, ``__call__``), so the
    Trainer takes it unchanged. ``exact_below``/``probes``: divergence as in :func:`score_fp_residual`.
    """

    base: DiffusionLoss
    weight: float = 1.0
    points: int = 64
    exact_below: int = 16
    probes: int = 4

    def __post_init__(self):
        if not (isinstance(self.weight, int | float) and math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"fokker_planck weight must be a finite number >= 0, got {self.weight!r}")
        if isinstance(self.points, bool) or not isinstance(self.points, int) or self.points < 1:
            raise ValueError(f"fokker_planck points must be an integer >= 1, got {self.points!r}")

    @property
    def target(self) -> str:
        return self.base.target

    def draw(self, x0: Tensor, path: Path, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return self.base.draw(x0, path, generator)

    def couple(self, x0: Tensor, noise: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return self.base.couple(x0, noise, generator)

    def penalty(self, model: ModelBase, x0: Tensor, t: Tensor, noise: Tensor, cond: dict | None = None) -> Tensor:
        """Mean squared normalised residual (a scalar) at the first ``points`` noised samples of the batch."""
        n = min(self.points, x0.shape[0])
        xt = model.path.perturb(x0[:n], noise[:n], t[:n]).detach()
        c = {k: v[:n] for k, v in (cond or {}).items()}
        res = normalized_residual(
            model, xt, t[:n], cond=c, exact_below=self.exact_below, probes=self.probes, create_graph=True
        )
        return (res**2).sum(1).mean()

    def __call__(self, model: ModelBase, x0: Tensor, t: Tensor, noise: Tensor, cond: dict | None = None) -> Tensor:
        loss = self.base(model, x0, t, noise, cond)
        if self.weight == 0:
            return loss
        return loss + self.weight * self.penalty(model, x0, t, noise, cond).to(loss.dtype)
