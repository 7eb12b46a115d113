"""EVODiff: entropy-aware variance-optimised multistep sampler (Li, Chen & Zeng, NeurIPS 2025; arXiv 2509.26096).

Data-prediction form in tau = e^lambda = alpha/sigma, where the PF-ODE is d(x/sigma)/dtau = x0_hat exactly, so the
DDIM step is x_E = (sigma_t/sigma_s) x_s + sigma_t h m_s with h = tau_t - tau_s. Each step predicts with a
backward difference, calls the model once at the prediction, and corrects with a mix of the backward and forward
differences whose weights (eta, zeta) come from closed-form least-squares projections of the current outputs.

The paper's text was not available; the step follows the official code (ShiguiLi/EVODiff,
code_demo/edm_cifar10/samplers/evodiff.py). Its hand-set constants are the fields of
:class:`EvoConstants`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusio.core.time import Coeffs
from diffusio.models.base import ModelBase
from diffusio.samplers.base import Callback, Step, model_x0
from diffusio.samplers.dpm import check_steps, grid_points

__all__ = ["EvoConstants", "sample_evodiff"]


@dataclass(frozen=True)
class EvoConstants:
    """The official code's hand-set constants (ShiguiLi/EVODiff, the EDM CIFAR-10 sampler)."""

    proj_clip: float = 2.0  # proj(a, b) = clip(<a, b>/<b, b>, -clip, clip)
    ratio_temperature: float = 0.25  # r_i = clip(sigmoid(T |c1|) r, lo r, hi r)
    ratio_clip: tuple[float, float] = (0.25, 1.5)
    eta_scale: float = 0.5  # eta = eta_scale * sigmoid(|eta*|)
    zeta_shift: float = 0.5  # zeta = sigmoid(|zeta*| - shift) (<= switch steps)
    time_weight: float = 0.5  # w_t = time_weight (1 - tn^2)
    zeta_switch_steps: int = 20  # above this many steps the zeta rule changes sign and gains a scale c
    zeta_min: float = 1e-3  # zeta divides the correction: keep it away from 0


_REDUCE = ("batch", "sample", "sample_channel")


def _proj(a: Tensor, b: Tensor, reduce: str, clip: float) -> Tensor:
    """clip(<a, b>/<b, b>) with the inner product over the ``reduce`` axes, shaped to broadcast against ``a``."""
    if reduce == "batch":
        dims = tuple(range(a.ndim))
    elif reduce == "sample" or a.ndim <= 2:
        dims = tuple(range(1, a.ndim))
    else:
        dims = tuple(range(2, a.ndim))
    num, den = (a * b).sum(dims, keepdim=True), (b * b).sum(dims, keepdim=True)
    return (num / den.clamp(min=torch.finfo(a.dtype).tiny)).clamp(-clip, clip)


def _final_step(x_e, s: Coeffs, t: Coeffs, h: float, m_s, m_p, final_step: str):
    """Last step without a model call: plain DDIM (``"ddim"``) or the official EDM-tuned heuristic (``"official"``)."""
    if final_step == "ddim" or m_p is None:
        return x_e
    rho = t.sigma / s.sigma
    c_f = 1 - math.sqrt(t.sigma * s.sigma)
    r_f = 1 - 0.5 * math.sqrt(rho) if rho < 0.5 else 1 - 0.5 * math.sqrt(rho - 0.5)
    return c_f * x_e + (0.5 * t.sigma * h) * (m_s - r_f * m_p)


def sample_evodiff(
    model: ModelBase,
    x: Tensor,
    ts: Tensor,
    *,
    cond: dict | None = None,
    callback: Callback | None = None,
    order: int = 2,
    reduce: str = "batch",
    final_step: str = "ddim",
    constants: EvoConstants | None = None,
) -> Tensor:
    """EVODiff (Li et al. 2025; official code's order-2 loop), one model call per step.

    Step 1 is DDIM; steps 2..M-1 predict x_P = x_E + sigma_t (h/2r_i) D1, call m(x_P), mix backward/forward
    differences with eta and rescale by 1/zeta; the last step makes no call (``final_step``: "ddim", or "official",
    the heuristic the code tunes for EDM's sigma in [0.002, 80], not meaningful on VP paths). ``reduce`` sets the
    inner-product axes of the projections: "batch" (stable for low-dimensional data), "sample", or
    "sample_channel" (per sample and channel over the spatial axes, as the official code does for images).
    ``order=1`` is DDIM.
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2 for evodiff (the official loop has no order-3 update), got {order!r}")
    if reduce not in _REDUCE:
        raise ValueError(f"reduce must be one of {_REDUCE}, got {reduce!r}")
    if final_step not in ("ddim", "official"):
        raise ValueError(f"final_step must be 'ddim' or 'official', got {final_step!r}")
    check_steps(ts, order, "evodiff", "pass more steps or order=1")
    pts = grid_points(model, ts)
    steps = len(pts) - 1
    run = _Run(model, cond, constants or EvoConstants(), reduce, steps, float(pts[0].t), float(pts[-1].t))
    m_s, m_p = model_x0(model, x, pts[0].t, cond), None
    for i in range(steps):
        p, s, t = (pts[i - 1] if i > 0 else None), pts[i], pts[i + 1]
        h = math.exp(t.lam) - math.exp(s.lam)
        x_e = (t.sigma / s.sigma) * x + (t.sigma * h) * m_s
        if i == steps - 1:
            x_new, m_t = _final_step(x_e, s, t, h, m_s, m_p, final_step if order == 2 else "ddim"), None
        elif order == 1 or i == 0:
            x_new = x_e
            m_t = model_x0(model, x_new, t.t, cond)
        else:
            x_new, m_t = _evo_step(run, x_e, p, s, t, h, m_s, m_p)
        if callback is not None:
            callback(Step(i, float(t.t), x_new, m_s))
        x, m_p, m_s = x_new, m_s, m_t
    return x


@dataclass(frozen=True)
class _Run:
    """What every step of one EVODiff run shares: the model and its condition, the constants, the projection axes,
    the number of steps and the grid's end times (native time; EDM: sigma)."""

    model: ModelBase
    cond: dict | None
    k: EvoConstants
    reduce: str
    steps: int
    t_start: float
    t_end: float

    def proj(self, a: Tensor, b: Tensor) -> Tensor:
        return _proj(a, b, self.reduce, self.k.proj_clip)


def _evo_step(run: _Run, x_e: Tensor, p: Coeffs, s: Coeffs, t: Coeffs, h: float, m_s: Tensor, m_p: Tensor):
    """One order-2 EVODiff step (official code's order-2 update); returns (x_t, m at the predicted point)."""
    model, cond, k, proj, steps = run.model, run.cond, run.k, run.proj, run.steps
    r = (s.lam - p.lam) / (t.lam - s.lam)
    tn = (float(t.t) + run.t_end) / (run.t_start + run.t_end)
    w_t = k.time_weight * (1 - tn**2)
    base = math.sqrt((t.sigma / s.sigma) / (s.sigma / p.sigma))
    c1 = (1 - w_t) * base + w_t * proj(m_s, m_p)
    d1 = m_s - c1 * m_p
    lo, hi = k.ratio_clip
    r_i = (torch.sigmoid(k.ratio_temperature * c1.abs()) * r).clamp(lo * r, hi * r)
    x_p = x_e + (0.5 * t.sigma * h) / r_i * d1
    m_t = model_x0(model, x_p, t.t, cond)
    c2 = (1 - w_t) * base + w_t * proj(m_t, m_s)
    d2 = m_t - c2 * m_s
    b_pre, b_next = d1 / (r * h), r * d2 / h
    eta = k.eta_scale * torch.sigmoid((0.5 * proj(b_next + b_pre, b_next - b_pre)).abs())
    b_theta = -(eta / r) * d1 + r * (1 - eta) * d2
    resid = x_p - x_e - (0.5 * t.sigma * h) / r_i * b_theta
    zeta_star = proj(resid, d1) / (h * t.sigma)
    if steps <= k.zeta_switch_steps:
        zeta = torch.sigmoid(zeta_star.abs() - k.zeta_shift)
    else:
        c = torch.sigmoid(proj(m_s, (m_s - m_p) / h) * (2 - (t.sigma / s.sigma) ** 2))
        zeta = torch.sigmoid(-(zeta_star.abs() - k.zeta_shift) * c)
    zeta = zeta.clamp(min=k.zeta_min)
    return x_e + (0.5 * t.sigma * h) / zeta * b_theta, m_t
