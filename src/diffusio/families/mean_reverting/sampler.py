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
and SDE-DPM-Solver(++) on the MR schedule (Li et al. 2025, Sec. 4); order 1 data form is DDIM, SDE order 1 data
form is DDPM's ancestral step (IR-SDE's "posterior" sampler).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffusio.models.base import ModelBase
from diffusio.samplers.base import Callback
from diffusio.samplers.dpm import MultistepPlan, run_multistep
from diffusio.samplers.kernels import data_sde_update, data_update, noise_sde_update, noise_update

__all__ = ["FORMS", "sample_mrs", "sample_mrs_sde"]


_FORMS = {"data": "x0", "noise": "eps"}
FORMS = tuple(_FORMS)


def _head(form: str) -> str:
    if form not in _FORMS:
        raise ValueError(f"unknown form {form!r}; valid: {', '.join(_FORMS)} (data is recommended at few steps)")
    return _FORMS[form]


def _check(order: int, allowed: tuple[int, ...], name: str) -> None:
    if order not in allowed:
        raise ValueError(f"order must be one of {allowed} for {name}; got order={order!r}")


def _update(head: str, stochastic: bool, generator):
    """The MRS update s -> t from the derivative estimates ``ds``: the exponential-integrator kernels (ODE: data or
    noise form; SDE: SDE-DPM-Solver++ with eta = 1 in data form, MRS Eq. 16 in noise form)."""

    def update(x: Tensor, s, t, ds: list[Tensor]) -> Tensor:
        if not stochastic:
            return data_update(x, s, t, ds) if head == "x0" else noise_update(x, s, t, ds)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return data_sde_update(x, s, t, ds, 1.0, z) if head == "x0" else noise_sde_update(x, s, t, ds, z)

    return update


def _run(model, x, ts, cond, callback, generator, opts: _MRS) -> Tensor:
    """The multistep DPM-Solver++ driver with MRS's options: Taylor two-point formula, D2 weight w3 (1: the
    official three-point variant, 2: Taylor), and the last orders lowered on runs shorter than 10 steps (official
    MRSampler)."""
    head = _head(opts.form)
    variant = "official" if opts.w3 == 1.0 else "taylor3"
    plan = MultistepPlan(opts.order, head, variant, "taylor", bool(opts.lower_order_final), below=10)
    return run_multistep(model, x, ts, cond, callback, plan, _update(head, opts.stochastic, generator))


@dataclass(frozen=True)
class _MRS:
    """The options of one MRS run: ``order``, ``form`` (data or noise), ``stochastic`` (SDE), the D2 weight ``w3``
    (1: official, 2: Taylor) and ``lower_order_final``."""

    order: int
    form: str
    stochastic: bool
    w3: float = 1.0
    lower_order_final: bool = True


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
    return _run(model, x, ts, cond, callback, None, _MRS(order, form, False, w3, lower_order_final))


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
    return _run(model, x, ts, cond, callback, generator, _MRS(order, form, True, 1.0, lower_order_final))
