"""Integrating an interpolant's fields: Heun on the transport ODE and Euler-Maruyama on the SDE family with a free
diffusion epsilon(t) (Albergo, Boffi & Vanden-Eijnden 2023, Thm. 2.21-2.22), both on the samplers' one-step
kernels, in the paper's time (any direction)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffusio.core.time import time_batch
from diffusio.families.interpolants.coefficients import ConstantEpsilon
from diffusio.families.interpolants.fields import InterpolantModel
from diffusio.models.base import ModelBase
from diffusio.samplers import Solver, register_solver
from diffusio.samplers.base import Callback, run_grid
from diffusio.samplers.kernels import em_update, heun_update

_F64 = torch.float64


def _tb(t: Tensor, x: Tensor) -> Tensor:
    return torch.as_tensor(t, dtype=_F64, device=x.device).expand(x.shape[0])


@torch.no_grad()
def sample_ode(fields, x: Tensor, ts: Tensor, *, callback: Callable | None = None) -> Tensor:
    """Heun's method (:func:`~diffusio.samplers.kernels.heun_update`) on the transport ODE dX/dt = v(t, X) over the
    grid ``ts`` (increasing: rho_0 -> rho_1; decreasing: backward). ``x``: ``(B, ...)`` draws at ``ts[0]``. 2 field
    calls per step (paper Sec. 6). ``callback(i, t, x)`` after each step."""

    def v(y: Tensor, t: Tensor) -> Tensor:
        return fields.velocity(y, _tb(t, y)).to(y.dtype)

    for i in range(len(ts) - 1):
        x, _ = heun_update(v, x, v(x, ts[i]), float(ts[i + 1] - ts[i]), ts[i + 1])
        if callback is not None:
            callback(i, float(ts[i + 1]), x)
    return x


@torch.no_grad()
def sample_sde(
    fields,
    x: Tensor,
    ts: Tensor,
    epsilon: Callable[[Tensor], Tensor] | float,
    *,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
) -> Tensor:
    """Euler–Maruyama on the SDE family with diffusion ``epsilon(t) >= 0`` (paper Thm. 2.21, Eqs. 2.33-2.34).

    Increasing ``ts``: forward SDE dX = (v + eps s) dt + sqrt(2 eps) dW. Decreasing ``ts``: backward SDE
    dX = (v - eps s) dt + sqrt(2 eps) dW_bar. Every epsilon gives the same marginals; ``epsilon = 0`` is the ODE.
    ``fields`` provides ``velocity(x, t)`` and ``velocity_and_score(x, t)``; ``x``: ``(B, ...)`` draws at ``ts[0]``.
    """
    eps_fn = ConstantEpsilon(float(epsilon)) if isinstance(epsilon, int | float) else epsilon
    for i in range(len(ts) - 1):
        t, dt = ts[i], float(ts[i + 1] - ts[i])
        e = float(eps_fn(torch.as_tensor(t, dtype=_F64)))
        if not e >= 0:
            raise ValueError(f"epsilon(t) must be >= 0 at every step; got epsilon({float(t):.4g}) = {e:.4g}")
        tb = _tb(t, x)
        if e > 0:  # Euler-Maruyama kernel with w^2 = 2 epsilon; the sign of eps s follows the direction of time
            v, s = fields.velocity_and_score(x, tb)
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = em_update(x, v.to(x.dtype) + math.copysign(e, dt) * s.to(x.dtype), 2 * e, dt, z)
        else:
            x = em_update(x, fields.velocity(x, tb).to(x.dtype), 0.0, dt, None)
        if callback is not None:
            callback(i, float(ts[i + 1]), x)
    return x


def generate(
    model: InterpolantModel,
    x0: Tensor,
    steps: int = 100,
    epsilon: float | Callable[[Tensor], Tensor] = 0.0,
    *,
    t_lo: float = 1e-3,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """Carry draws ``x0`` ``(B, ...)`` of rho_0 to rho_1: the ODE (Heun on [0, 1], 2 calls per step) when
    ``epsilon`` is 0, else the forward SDE (Euler–Maruyama on [t_lo, 1 - t_lo], where the learned score
    -eta/gamma stays finite; 1 call per step). Returns (samples, field evaluations per sample)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    if isinstance(epsilon, int | float) and epsilon == 0:
        ts = torch.linspace(0.0, 1.0, steps + 1, dtype=_F64)
        return sample_ode(model.paper_fields(), x0, ts), 2 * steps
    ts = torch.linspace(t_lo, 1 - t_lo, steps + 1, dtype=_F64)
    return sample_sde(model.paper_fields(), x0, ts, epsilon, generator=generator), steps


# --- registered solvers in the library's time (data at t = 0): any Model with velocity and score heads ----------------
def _u(model: ModelBase, cond: dict | None) -> Callable[[Tensor, Tensor], Tensor]:
    def u(y: Tensor, t: Tensor) -> Tensor:
        return model.predict(y, time_batch(t, y), "velocity", **(cond or {})).to(y.dtype)

    return u


def sample_si_ode(
    model: ModelBase, x: Tensor, ts: Tensor, *, cond: dict | None = None, callback: Callback | None = None
) -> Tensor:
    """Heun on the transport ODE dx/dt = u(x, t) with the model's own velocity head, in library time (the
    interpolant's ODE, paper Sec. 6, for :class:`InterpolantModel` and its wrappers). 2 calls per step."""
    u = _u(model, cond)

    def step(i: int, x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, None]:
        return heun_update(u, x, u(x, t), float(t_next - t), t_next)[0], None

    return run_grid(step, x, ts, callback)


def sample_si_sde(
    model: ModelBase,
    x: Tensor,
    ts: Tensor,
    *,
    cond: dict | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    epsilon: float | Callable[[Tensor], Tensor] = 0.5,
) -> Tensor:
    """Euler-Maruyama on the interpolant SDE family in library time: dx = (u - eps s) dt + sqrt(2 eps) dW as t falls
    (the paper's forward SDE, Thm. 2.21, Eq. 2.33, with t = 1 - t_paper), ``epsilon(t_paper) >= 0`` a number or a
    schedule in the paper's time. 2 calls per step (velocity and score)."""
    eps_fn = ConstantEpsilon(float(epsilon)) if isinstance(epsilon, int | float) else epsilon
    u = _u(model, cond)

    def step(i: int, x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, None]:
        e = float(eps_fn(1 - torch.as_tensor(t, dtype=_F64)))
        if not (math.isfinite(e) and e >= 0):
            raise ValueError(f"epsilon(t) must be finite and >= 0 at every step; got {e:.4g} at t={float(t):.4g}")
        drift = u(x, t)
        z = None
        if e > 0:
            s = model.predict(x, time_batch(t, x), "score", **(cond or {})).to(x.dtype)
            drift = drift - e * s
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return em_update(x, drift, 2 * e, float(t_next - t), z), None

    return run_grid(step, x, ts, callback)


register_solver(
    Solver("si_ode", sample_si_ode, 2, 2, default_grid="uniform", summary="stochastic-interpolant ODE (Heun, velocity)")
)
register_solver(
    Solver(
        "si_sde",
        sample_si_sde,
        1,
        2,
        stochastic=True,
        default_grid="uniform",
        summary="stochastic-interpolant SDE (Euler-Maruyama, velocity + epsilon score)",
    )
)
