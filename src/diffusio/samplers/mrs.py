"""MRS: semi-analytic ODE and SDE solvers of mean-reverting diffusion (Li et al., ICLR 2025, arXiv 2502.07856).

On the state u = (x - mu)/lam of a :class:`~diffusio.mrsde.MeanReverting` path (or any Gaussian path) the reverse
PF-ODE and SDE have exact solutions in the half log-SNR lambda: a linear part integrated exactly plus an integral of
the network output (MRS Eqs. 12-13 for the ODE, 15-16 for the SDE; the mu terms of the paper vanish in u). With
h = lambda_t - lambda_s and the output expanded as a polynomial in lambda through its previous values (multistep),

  ODE, data form:  u_t = (sigma_t/sigma_s) u_s - alpha_t [phi1 q0 - phi2 D1 + w3 phi3 D2],
                   phi1 = expm1(-h), phi2 = phi1/h + 1, phi3 = phi2/h - 1/2;
  ODE, noise form: u_t = (alpha_t/alpha_s) u_s - sigma_t [psi1 e0 + psi2 D1 + w3 psi3 D2],
                   psi1 = expm1(h), psi2 = psi1/h - 1, psi3 = psi2/h - 1/2;
  SDE, data form:  u_t = (sigma_t/sigma_s) e^-h u_s + alpha_t (1 - e^-2h) q0 + alpha_t (1 - (1 - e^-2h)/(2h)) D1
                   + sigma_t sqrt(1 - e^-2h) z;
  SDE, noise form: u_t = (alpha_t/alpha_s) u_s - 2 sigma_t (psi1 e0 + psi2 D1) + sigma_t sqrt(e^2h - 1) z,

with D1 = (q0 - q1)/r (order 2) and the three-point D1, D2 of DPM-Solver++(3M) (order 3). The official code weighs
D2 with w3 = 1; the Taylor expansion gives w3 = 2 (``taylor3=True``; see the module tests). These are DPM-Solver(++)
and SDE-DPM-Solver(++) on the MR schedule, as the MRS brief notes; order 1 data form is DDIM, SDE order 1 data
form is DDPM's ancestral step (IR-SDE's "posterior" sampler).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model import ModelBase
from .base import Callback, Step, coeffs, time_batch

__all__ = ["FORMS", "sample_mrs", "sample_mrs_sde"]


@dataclass(frozen=True)
class _Form:
    """One parametrisation of the semi-analytic solution: the head it integrates and its coefficients."""

    head: str

    def ode(self, cs, ct, h: float, w3: float) -> tuple[float, list[float]]:
        """(coefficient of u_s, coefficients of [q0, D1, D2]) for an ODE step s -> t."""
        raise NotImplementedError

    def sde(self, cs, ct, h: float) -> tuple[float, list[float], float]:
        """(coefficient of u_s, coefficients of [q0, D1], noise std) for an SDE step s -> t."""
        raise NotImplementedError


class _DataForm(_Form):
    def ode(self, cs, ct, h, w3):
        phi1 = math.expm1(-h)
        phi2 = phi1 / h + 1
        phi3 = phi2 / h - 0.5
        a = float(ct.alpha)
        return float(ct.sigma / cs.sigma), [-a * phi1, a * phi2, -w3 * a * phi3]

    def sde(self, cs, ct, h):
        a, e2 = float(ct.alpha), -math.expm1(-2 * h)  # 1 - e^{-2h}
        lin = float(ct.sigma / cs.sigma) * math.exp(-h)
        return lin, [a * e2, a * (1 - e2 / (2 * h))], float(ct.sigma) * math.sqrt(e2)


class _NoiseForm(_Form):
    def ode(self, cs, ct, h, w3):
        psi1 = math.expm1(h)
        psi2 = psi1 / h - 1
        psi3 = psi2 / h - 0.5
        s = float(ct.sigma)
        return float(ct.alpha / cs.alpha), [-s * psi1, -s * psi2, -w3 * s * psi3]

    def sde(self, cs, ct, h):
        psi1 = math.expm1(h)
        s = float(ct.sigma)
        return float(ct.alpha / cs.alpha), [-2 * s * psi1, -2 * s * (psi1 / h - 1)], s * math.sqrt(math.expm1(2 * h))


FORMS: dict[str, _Form] = {"data": _DataForm("x0"), "noise": _NoiseForm("eps")}


def _form(form: str) -> _Form:
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; valid: {', '.join(FORMS)} (data is recommended at few steps)")
    return FORMS[form]


def _derivatives(hist: list[tuple[float, Tensor]], h: float, k: int) -> list[Tensor]:
    """[q0, D1, D2][:k] from the last k (lambda, output) pairs (DPM-Solver++ multistep differences)."""
    (l0, q0), out = hist[-1], [hist[-1][1]]
    if k >= 2:
        l1, q1 = hist[-2]
        r0 = (l0 - l1) / h
        d1_0 = (q0 - q1) / r0
        if k == 2:
            return [q0, d1_0]
        l2, q2 = hist[-3]
        r1 = (l1 - l2) / h
        d1_1 = (q1 - q2) / r1
        out += [d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1), (d1_0 - d1_1) / (r0 + r1)]
    return out


def _order(order: int, i: int, steps: int, lam_next: float, lower_order_final: bool) -> int:
    """Warm-up (order <= i + 1), MRS's lower order near the end for short runs, and order 1 into lambda = inf."""
    k = min(order, i + 1)
    if lower_order_final and steps < 10:
        k = min(k, steps - i)
    return 1 if math.isinf(lam_next) else k


def _check(order: int, allowed: tuple[int, ...], name: str) -> None:
    if order not in allowed:
        raise ValueError(f"order must be one of {allowed} for {name}; got order={order!r}")


def _run(model, x, ts, cond, callback, generator, order, form, stochastic, w3, lower_order_final) -> Tensor:
    path, hist, steps = model.path, [], len(ts) - 1
    for i in range(steps):
        cs, ct = coeffs(path, ts[i]), coeffs(path, ts[i + 1])
        q = model.predict(x, time_batch(ts[i], x), form.head, **(cond or {})).to(x.dtype)
        hist = [*hist[-2:], (float(cs.lam), q)]
        h = float(ct.lam - cs.lam)
        k = _order(order, i, steps, float(ct.lam), lower_order_final)
        terms = _derivatives(hist, h, k)
        if stochastic:
            lin, cq, std = form.sde(cs, ct, h)
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = lin * x + sum(c * d for c, d in zip(cq, terms)) + std * z
        else:
            lin, cq = form.ode(cs, ct, h, w3)
            x = lin * x + sum(c * d for c, d in zip(cq, terms))
        if callback is not None:
            callback(Step(i, float(ts[i + 1]), x, q if form.head == "x0" else None))
    return x


def sample_mrs(
    model: ModelBase,
    x: Tensor,
    ts: Tensor,
    *,
    cond: dict | None = None,
    callback: Callback | None = None,
    order: int = 2,
    form: str = "data",
    taylor3: bool = False,
    lower_order_final: bool = True,
) -> Tensor:
    """MRS-ODE (Li et al. 2025, Alg. 1 with the ODE updates above), multistep, 1 model call per step.

    ``order`` 1, 2 or 3; ``form`` "data" (recommended) or "noise"; ``taylor3`` weighs D2 by its Taylor coefficient
    (2) instead of the official 1. ``x``: ``(B, ...)`` state at ``ts[0]`` (u = (x - mu)/lam for MR models, whose
    ``mu`` goes in ``cond``).
    """
    _check(order, (1, 2, 3), "sample_mrs (ODE)")
    w3 = 2.0 if taylor3 else 1.0
    return _run(model, x, ts, cond, callback, None, order, _form(form), False, w3, lower_order_final)


def sample_mrs_sde(
    model: ModelBase,
    x: Tensor,
    ts: Tensor,
    *,
    cond: dict | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    order: int = 2,
    form: str = "data",
    lower_order_final: bool = True,
) -> Tensor:
    """MRS-SDE (Li et al. 2025, SDE updates above): exact linear part and exact noise variance, ``order`` 1 or 2;
    1 model call per step; noise only from ``generator``."""
    _check(order, (1, 2), "sample_mrs_sde")
    return _run(model, x, ts, cond, callback, generator, order, _form(form), True, 1.0, lower_order_final)
