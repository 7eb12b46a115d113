"""UniPC: unified predictor-corrector for diffusion ODEs (Zhao et al., NeurIPS 2023), data-prediction form.

A step of order p from s = t_{i-1} to t uses past data predictions at lambda_{i-1-k} (k = 1..p-1) through the
scaled differences D_k = (m_{i-1-k} - m_{i-1}) / r_k, r_k = (lambda_{i-1-k} - lambda_{i-1}) / h. With hh = -h,
B(h) = hh ("bh1") or expm1(hh) ("bh2") and b_j = j! hh phi_{j+1}(hh) / B(h) (Zhao et al., Eq. 8 and App. C):

* UniP-p (predictor, order p):     x_P = x_base - alpha_t B(h) sum_k rho_k D_k,   R[:p-1, :p-1] rho = b[:p-1]
* UniC-p (corrector, order p + 1): x_C = x_base - alpha_t B(h) (sum_k rhoc_k D_k + rhoc_p (m(x_P, t) - m_{i-1}))

with x_base = (sigma_t/sigma_s) x_s - alpha_t expm1(hh) m_{i-1} and R[j, k] = r_k^j (r_p = 1). The corrector reuses
the model call at x_P that the next step needs anyway, so one call per step; the state continues from x_C while
m(x_P, t) is cached. No corrector on the last step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusio.core.time import Coeffs
from diffusio.models.base import ModelBase
from diffusio.samplers.base import Callback, Step, model_x0
from diffusio.samplers.dpm import check_steps, final_order, grid_points
from diffusio.samplers.kernels import phi

__all__ = ["sample_unipc", "unipc_coefficients"]


def unipc_coefficients(rks: list[float], h: float, variant: str) -> tuple[Tensor, Tensor, float]:
    """(R, b, B(h)) for nodes ``rks`` (the r_k of the history followed by 1), all float64."""
    hh = -h
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = math.expm1(hh)
    else:
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    p = len(rks)
    r = torch.tensor(rks, dtype=torch.float64)
    R = torch.stack([r**j for j in range(p)])
    b = torch.tensor([math.factorial(j) * hh * phi(j + 1, hh) / b_h for j in range(1, p + 1)], dtype=torch.float64)
    return R, b, b_h


def _combine(rho: Tensor, ds: list[Tensor]) -> Tensor | float:
    return sum(float(c) * d for c, d in zip(rho, ds)) if ds else 0.0


def _unipc_step(x, s: Coeffs, t: Coeffs, hist, p, *, variant, corrector, model, cond):
    """One UniPC step of order p; returns (x_next, m at the predicted point or None)."""
    h = t.lam - s.lam
    (l0, m0), prev = hist[0], hist[1:p]
    rks = [(lk - l0) / h for lk, _ in prev]
    ds = [(mk - m0) / rk for rk, (_, mk) in zip(rks, prev)]
    R, b, b_h = unipc_coefficients(rks + [1.0], h, variant)
    x_base = (t.sigma / s.sigma) * x - (t.alpha * math.expm1(-h)) * m0
    if p == 1:
        x_p = x_base
    else:
        rho_p = torch.tensor([0.5], dtype=torch.float64) if p == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
        x_p = x_base - (t.alpha * b_h) * _combine(rho_p, ds)
    if not corrector:
        return x_p, None
    m_t = model_x0(model, x_p, t.t, cond)
    rho_c = torch.tensor([0.5], dtype=torch.float64) if p == 1 else torch.linalg.solve(R, b)
    x_c = x_base - (t.alpha * b_h) * (_combine(rho_c[:-1], ds) + float(rho_c[-1]) * (m_t - m0))
    return x_c, m_t


def sample_unipc(
    model: ModelBase,
    x: Tensor,
    ts: Tensor,
    *,
    cond: dict | None = None,
    callback: Callback | None = None,
    order: int = 2,
    variant: str = "bh2",
    use_corrector: bool = True,
    lower_order_final: bool | int | str = True,
) -> Tensor:
    """UniPC-p (Zhao et al. 2023, Alg. 2-3 / official wl-zhao/UniPC): UniP-p predictor + UniC-p corrector, 1 call/step.

    ``order`` is the predictor's order p (1-3); the corrector raises the step's accuracy to p + 1.
    ``use_corrector=False`` gives the bare UniP-p predictor (UniP-2 with bh2 is DPM-Solver++(2M)).
    ``lower_order_final``: the last steps' orders drop to 1, 2, ... on runs of fewer than 15 steps (True; keeps the
    declared order as h -> 0), on every run ("always": the official code and diffusers), or never (False).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3 for unipc, got {order!r}")
    check_steps(ts, order, "unipc", "pass more steps or a lower order")
    pts = grid_points(model, ts)
    steps = len(pts) - 1
    m = model_x0(model, x, pts[0].t, cond)
    hist: list[tuple[float, Tensor]] = []
    for i in range(steps):
        s, t = pts[i], pts[i + 1]
        hist = [(s.lam, m)] + hist[: order - 1]
        p = final_order(order, i, steps, lower_order_final)
        corrector = use_corrector and i < steps - 1
        x_next, m_t = _unipc_step(x, s, t, hist, p, variant=variant, corrector=corrector, model=model, cond=cond)
        if callback is not None:
            callback(Step(i, float(t.t), x_next, m))
        x = x_next
        if i < steps - 1:
            m = m_t if m_t is not None else model_x0(model, x, t.t, cond)
    return x
