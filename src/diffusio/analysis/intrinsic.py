"""Intrinsic dimension from the spectrum of the score's Jacobian near the data (Horvat & Pfister 2024, Sec. 5).

Near a d-dimensional data manifold in R^D, at a small noise level s = sigma_t/alpha_t, the Jacobian of the
score J = d s_theta/dx has D - d eigenvalues ~ -1/sigma_t^2 (normal directions: the density collapses onto the
manifold) and d eigenvalues of order 1/(alpha_t^2 c + sigma_t^2) (tangent directions, c the data's spread along the
manifold). We read it through the Jacobian of the denoiser, Tweedie's alpha_t E[x0 | x] = x + sigma_t^2 s(x):

    M = I + sigma_t^2 J_sym,    eigenvalues in [0, 1]: ~1 tangent, ~0 normal,

which is the fraction of variance kept in each direction (alpha^2 c / (alpha^2 c + sigma^2) for a local Gaussian).
Only the symmetric part of J enters (for a conservative field J is symmetric; for others the antisymmetric part
rotates directions and is reported by :func:`diffusio.analysis.decomposition.jacobian_asymmetry`).

Choice of t: the noise level must lie between the off-manifold spread and the on-manifold scale (and the radius of
curvature); the default ``noise_level = 0.05`` (for data scaled to O(1)) resolves spreads below ~1e-2 as normal and
above ~0.2 as tangent. Scan several levels and look for a plateau when unsure.
Gap rule: ``"threshold"`` counts eigenvalues of M above ``threshold`` (0.5: the direction keeps more than half of its
variance); ``"gap"`` sorts them descending with sentinels 1 and 0 at the ends and cuts at the largest drop.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusio.core.time import as_time
from diffusio.models.base import ModelBase

__all__ = ["denoiser_spectrum", "intrinsic_dimension", "score_jacobian", "time_of_noise_level"]

RULES = ("threshold", "gap")


def score_jacobian(model: ModelBase, x: Tensor, t: Tensor | float, cond: dict | None = None) -> Tensor:
    """d score / dx ``(B, D, D)`` (row i = gradient of component i) at ``x`` ``(B, ...)`` and time ``t``."""
    t = as_time(t, x)
    model.path.check_t(t)
    batch, d = x.shape[0], math.prod(x.shape[1:])
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        s = model.predict(xg, t, "score", **(cond or {})).reshape(batch, d)
        rows = [torch.autograd.grad(s[:, i].sum(), xg, retain_graph=i < d - 1)[0].reshape(batch, d) for i in range(d)]
    return torch.stack(rows, 1).detach()


def time_of_noise_level(model: ModelBase, noise_level: float, like: Tensor) -> Tensor:
    """The path time ``(B,)`` at which sigma_t/alpha_t equals ``noise_level``."""
    if not (isinstance(noise_level, int | float) and math.isfinite(noise_level) and noise_level > 0):
        raise ValueError(f"noise_level must be a finite number > 0, got {noise_level!r}")
    t = model.path.t_of_noise_level(torch.tensor(float(noise_level), dtype=torch.float64))
    return as_time(t, like)


def denoiser_spectrum(
    model: ModelBase, x: Tensor, t: Tensor | float | None = None, *, noise_level: float = 0.05, cond: dict | None = None
) -> Tensor:
    """Eigenvalues ``(B, D)``, descending, of I + sigma_t^2 sym(d score/dx) at ``x`` (default t: ``noise_level``)."""
    t = time_of_noise_level(model, noise_level, x) if t is None else as_time(t, x)
    jac = score_jacobian(model, x, t, cond).to(torch.float64)
    sig2 = model.path.sigma(t.to(torch.float64)) ** 2
    eye = torch.eye(jac.shape[1], dtype=torch.float64, device=jac.device)
    m = eye + sig2[:, None, None] * 0.5 * (jac + jac.mT)
    return torch.linalg.eigvalsh(m).flip(-1)


def intrinsic_dimension(
    model: ModelBase,
    x: Tensor,
    t: Tensor | float | None = None,
    *,
    noise_level: float = 0.05,
    rule: str = "threshold",
    threshold: float = 0.5,
    cond: dict | None = None,
) -> Tensor:
    """Local intrinsic dimension ``(B,)`` (int64) at points ``x`` ``(B, ...)`` near the data.

    ``t`` is the path time of the score (default: where sigma_t/alpha_t = ``noise_level``); ``rule`` is
    ``"threshold"`` (eigenvalues of the denoiser Jacobian above ``threshold``) or ``"gap"`` (largest drop).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    lam = denoiser_spectrum(model, x, t, noise_level=noise_level, cond=cond)
    if rule == "threshold":
        return (lam > threshold).sum(1)
    ends = torch.ones_like(lam[:, :1])
    padded = torch.cat([ends, lam.clamp(0, 1), 0 * ends], 1)
    return (padded[:, :-1] - padded[:, 1:]).argmax(1)
