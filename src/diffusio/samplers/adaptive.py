"""Adaptive Runge–Kutta: Dormand–Prince 5(4) with error control, the reference solver for tests and benchmarks.

The tableau is a value (``DOPRI5``); ``odeint`` integrates any ``f(t, y)`` and ``sample_adaptive`` integrates the
probability-flow ODE of a Model through the points of a grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusio.core.time import time_batch
from diffusio.models.base import ModelBase
from diffusio.samplers.base import Callback, Step

__all__ = ["DOPRI5", "ButcherTableau", "odeint", "sample_adaptive"]


@dataclass(frozen=True)
class ButcherTableau:
    """An embedded explicit Runge–Kutta pair: nodes c, lower-triangular rows a, weights b, b_err = b - b_hat."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_err: tuple[float, ...]
    order: int


_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)

DOPRI5 = ButcherTableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _B5[:6],
    ),
    b=_B5,
    b_err=tuple(p - q for p, q in zip(_B5, _B4)),
    order=5,
)


@dataclass
class ODEStats:
    """Counters of one ``odeint`` solve."""

    nfev: int = 0
    accepted: int = 0
    rejected: int = 0


def odeint(
    f: Callable[[float, Tensor], Tensor],
    y0: Tensor,
    t0: float,
    t1: float,
    *,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    h0: float | None = None,
    max_steps: int = 100_000,
    tableau: ButcherTableau = DOPRI5,
    stats: ODEStats | None = None,
) -> Tensor:
    """Integrate dy/dt = f(t, y) from t0 to t1 (either direction) with an embedded RK pair and error control.

    The error norm is the RMS of err / (atol + rtol max(|y|, |y_new|)) over all elements (Hairer, Nørsett &
    Wanner, II.4); the first-same-as-last stage is reused. ``y0`` keeps its dtype (use float64 for references).
    """
    if rtol <= 0 or atol < 0:
        raise ValueError(f"rtol must be > 0 and atol >= 0; got rtol={rtol}, atol={atol}")
    stats = stats if stats is not None else ODEStats()
    direction = 1.0 if t1 >= t0 else -1.0
    span = abs(t1 - t0)
    if span == 0:
        return y0
    t, y = float(t0), y0
    k1 = f(t, y)
    stats.nfev += 1
    h = min(h0 if h0 is not None else _initial_step(y, k1, rtol, atol, tableau.order), span)
    q = tableau.order  # the error estimate is that of the embedded order-(q-1) method: exponent 1/q
    for _ in range(max_steps):
        if direction * (t1 - t) <= 1e-15 * max(1.0, abs(t1)):
            return y
        h = min(h, abs(t1 - t))
        ks = [k1]
        for ci, row in zip(tableau.c[1:], tableau.a[1:]):
            yi = y + direction * h * sum(aij * kj for aij, kj in zip(row, ks) if aij != 0)
            ks.append(f(t + direction * h * ci, yi))
        stats.nfev += len(ks) - 1
        y_new = y + direction * h * sum(bi * ki for bi, ki in zip(tableau.b, ks) if bi != 0)
        err = direction * h * sum(ei * ki for ei, ki in zip(tableau.b_err, ks) if ei != 0)
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        norm = float(torch.sqrt(torch.mean((err / scale) ** 2)))
        if norm <= 1.0:
            t, y, k1 = t + direction * h, y_new, ks[-1]  # FSAL: c[-1] = 1 and a[-1] = b
            stats.accepted += 1
        else:
            stats.rejected += 1
        factor = 5.0 if norm == 0 else min(5.0, max(0.2, 0.9 * norm ** (-1.0 / q)))
        h *= factor
    raise RuntimeError(f"odeint did not reach t1={t1} in max_steps={max_steps} steps (stopped at t={t})")


def _initial_step(y: Tensor, f0: Tensor, rtol: float, atol: float, order: int) -> float:
    scale = atol + rtol * y.abs()
    d0 = float(torch.sqrt(torch.mean((y / scale) ** 2)))
    d1 = float(torch.sqrt(torch.mean((f0 / scale) ** 2)))
    return 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1


def sample_adaptive(
    model: ModelBase,
    x: Tensor,
    ts: Tensor,
    *,
    cond: dict | None = None,
    callback: Callback | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> Tensor:
    """Solve the probability-flow ODE with Dormand–Prince 5(4) through each point of ``ts`` (adaptive calls)."""

    def f(t: float, y: Tensor) -> Tensor:
        tb = time_batch(torch.tensor(t, dtype=torch.float64), y)
        return model.predict(y, tb, "velocity", **(cond or {})).to(y.dtype)

    for i in range(len(ts) - 1):
        x = odeint(f, x, float(ts[i]), float(ts[i + 1]), rtol=rtol, atol=atol)
        if callback is not None:
            callback(Step(i, float(ts[i + 1]), x))
    return x
