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

The flow-map estimator (Horvat & Pfister 2024, Sec. 5, the paper's own): integrate the probability-flow ODE from
x_T at t_max to a small t_min and take the singular values of the flow map's Jacobian Y = d x_{t_min} / d x_T (here
by reverse-mode autograd through a fixed Heun solver on the log-SNR grid: D backward passes, so meant for small D).
For a conservative field and data on a d-dimensional manifold, d singular values stay of order one (tangent
directions: a local Gaussian of spread c along the manifold maps with factor sqrt(alpha^2 c + sigma^2) / sigma_T)
and D - d collapse to the normal floor sigma_{t_min}/sigma_{t_max} (no spread: the map only shrinks the noise).
Choice of t: ``noise_level`` (sigma/alpha at t_min) defaults to 0.01 (t_min ~ 1e-3 on the linear VP path, the
paper's choice); the floor must be well below the data's tangent spread and above its off-manifold spread.
Gap rule: ``"gap"`` sorts the singular values, appends the floor, and cuts at the largest drop of log sv (the group
that separates); ``"threshold"`` counts sv_i / sv_1 > ``threshold`` (default 0.1, the paper's tau). Local estimates
at data points x encode x to x_T with the same ODE run forward first (:func:`pf_ode_encode`).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from diffusio.core.time import as_time
from diffusio.core.timesteps import get_timesteps
from diffusio.models.base import ModelBase
from diffusio.samplers.kernels import heun_step

__all__ = [
    "denoiser_spectrum",
    "flow_map_spectrum",
    "intrinsic_dimension",
    "pf_ode_encode",
    "score_jacobian",
    "time_of_noise_level",
]

RULES = ("threshold", "gap")
METHODS = ("score", "flow")
DEFAULTS = {"score": {"noise_level": 0.05, "threshold": 0.5}, "flow": {"noise_level": 0.01, "threshold": 0.1}}


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


def _flow_grid(model: ModelBase, noise_level: float, steps: int, like: Tensor) -> Tensor:
    """The log-SNR grid from t_max down to the time where sigma/alpha = ``noise_level``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    t_min = float(time_of_noise_level(model, noise_level, like[:1])[0])
    if not model.path.t_lo < t_min < model.path.t_max:
        raise ValueError(f"noise_level {noise_level!r} falls outside the path's time range; use a smaller one")
    return get_timesteps(model.path, steps, "logsnr", t_min=t_min)


def pf_ode_encode(
    model: ModelBase, x: Tensor, *, noise_level: float = 0.01, steps: int = 100, cond: dict | None = None
) -> Tensor:
    """x_T: points ``x`` ``(B, ...)`` at sigma/alpha = ``noise_level`` carried to t_max by the probability-flow ODE
    (Heun on the reversed log-SNR grid), the start from which :func:`flow_map_spectrum` returns near ``x``."""
    ts = _flow_grid(model, noise_level, steps, x).flip(0)
    with torch.no_grad():
        for t, t_next in itertools.pairwise(ts):
            x, _ = heun_step(model, x, t, t_next, cond=cond)
    return x


def flow_map_spectrum(
    model: ModelBase, x_T: Tensor, *, noise_level: float = 0.01, steps: int = 100, cond: dict | None = None
) -> tuple[Tensor, Tensor]:
    """(singular values ``(B, D)`` descending, end points ``(B, ...)``) of the PF-ODE flow map x_T -> x_{t_min}.

    Heun with ``steps`` steps on the log-SNR grid from t_max to the time where sigma/alpha = ``noise_level``; the
    Jacobian Y = d x_{t_min}/d x_T by reverse-mode autograd through the solver (one backward pass per dimension).
    """
    ts = _flow_grid(model, noise_level, steps, x_T)
    batch, d = x_T.shape[0], math.prod(x_T.shape[1:])
    with torch.enable_grad():
        start = x_T.detach().requires_grad_(True)
        x = start
        for t, t_next in itertools.pairwise(ts):
            x, _ = heun_step(model, x, t, t_next, cond=cond)
        flat = x.reshape(batch, d)
        rows = [torch.autograd.grad(flat[:, i].sum(), start, retain_graph=i < d - 1)[0] for i in range(d)]
    jac = torch.stack([r.reshape(batch, d) for r in rows], 1).to(torch.float64)
    return torch.linalg.svdvals(jac), x.detach()


def _floor(model: ModelBase, noise_level: float) -> float:
    """sigma(t_min)/sigma(t_max): the flow map's singular value along a direction where the data has no spread."""
    t_min = model.path.t_of_noise_level(torch.tensor(float(noise_level), dtype=torch.float64))
    t_max = torch.tensor(model.path.t_max, dtype=torch.float64)
    return float(model.path.sigma(t_min) / model.path.sigma(t_max))


def _count_flow(sv: Tensor, rule: str, threshold: float, floor: float) -> Tensor:
    if rule == "threshold":
        return (sv / sv[:, :1] > threshold).sum(1)
    logs = torch.cat([sv, torch.full_like(sv[:, :1], floor)], 1).clamp_min(1e-300).log()
    return (logs[:, :-1] - logs[:, 1:]).argmax(1) + 1


def intrinsic_dimension(
    model: ModelBase,
    x: Tensor,
    t: Tensor | float | None = None,
    *,
    method: str = "score",
    noise_level: float | None = None,
    rule: str = "threshold",
    threshold: float | None = None,
    steps: int = 100,
    prior: bool = False,
    cond: dict | None = None,
) -> Tensor:
    """Local intrinsic dimension ``(B,)`` (int64) at points ``x`` ``(B, ...)`` near the data.

    ``method="score"``: the spectrum of the denoiser's Jacobian at path time ``t`` (default: where sigma_t/alpha_t =
    ``noise_level``, 0.05); ``rule`` ``"threshold"`` counts eigenvalues above ``threshold`` (0.5), ``"gap"`` cuts at
    the largest drop. ``method="flow"``: the singular values of the PF-ODE flow map's Jacobian from t_max to
    sigma/alpha = ``noise_level`` (0.01), Heun with ``steps`` steps; ``x`` is encoded to t_max first, or, with
    ``prior=True``, ``x`` already holds the starting points x_T (e.g. ``model.path.prior_sample``); ``"threshold"``
    counts sv_i/sv_1 > ``threshold`` (0.1), ``"gap"`` cuts at the largest log drop above the normal floor.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
    noise_level = DEFAULTS[method]["noise_level"] if noise_level is None else noise_level
    threshold = DEFAULTS[method]["threshold"] if threshold is None else threshold
    if not (isinstance(threshold, int | float) and 0 < threshold < 1):
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    if method == "flow":
        if t is not None:
            raise ValueError("method='flow' takes no t: its end time is set by noise_level")
        start = x if prior else pf_ode_encode(model, x, noise_level=noise_level, steps=steps, cond=cond)
        sv, _ = flow_map_spectrum(model, start, noise_level=noise_level, steps=steps, cond=cond)
        return _count_flow(sv, rule, threshold, _floor(model, noise_level))
    if prior:
        raise ValueError("prior=True is for method='flow'")
    lam = denoiser_spectrum(model, x, t, noise_level=noise_level, cond=cond)
    if rule == "threshold":
        return (lam > threshold).sum(1)
    ends = torch.ones_like(lam[:, :1])
    padded = torch.cat([ends, lam.clamp(0, 1), 0 * ends], 1)
    return (padded[:, :-1] - padded[:, 1:]).argmax(1)
