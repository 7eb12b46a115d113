"""Samplers: pure functions ``sample_<name>(model, x, ts, *, cond, callback, generator, **opts) -> x``.

``SOLVERS`` maps names to :class:`Solver` records (function, declared order, model calls per step);
:func:`sample` is the front door.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..flowmap import sample_flowmap  # imports samplers.base only, so this order is safe
from ..model import ModelBase, ModelWrapper
from ..timesteps import get_timesteps
from .adaptive import odeint, sample_adaptive
from .base import Callback, Step
from .mrs import sample_mrs, sample_mrs_sde
from .ode import sample_ddim, sample_euler, sample_heun
from .sde import sample_ddpm, sample_euler_maruyama

__all__ = [
    "SOLVERS",
    "CountingModel",
    "SampleResult",
    "Solver",
    "Step",
    "get_solver",
    "odeint",
    "register_solver",
    "sample",
    "sample_adaptive",
    "sample_ddim",
    "sample_ddpm",
    "sample_euler",
    "sample_euler_maruyama",
    "sample_heun",
    "sample_mrs",
    "sample_mrs_sde",
]


@dataclass(frozen=True)
class Solver:
    """A registered sampler: its function, declared order (ODE order; weak order for SDEs), model calls per step,
    whether it draws noise, the fewest steps it accepts and the grid it uses by default."""

    name: str
    fn: Callable[..., Tensor]
    order: int
    calls_per_step: int | None  # None: adaptive
    stochastic: bool = False
    min_steps: int = 1
    default_grid: str = "logsnr"
    summary: str = ""
    extra_calls: int = 0  # calls outside the per-step count (e.g. a warm-up)

    def nfe(self, steps: int) -> int | None:
        """Model calls for ``steps`` steps (None for adaptive solvers)."""
        return None if self.calls_per_step is None else self.calls_per_step * steps + self.extra_calls

    def options(self) -> list[str]:
        """The keyword options this solver accepts beyond (model, x, ts, cond, callback, generator)."""
        skip = {"model", "x", "ts", "cond", "callback", "generator"}
        return [p for p in inspect.signature(self.fn).parameters if p not in skip]


SOLVERS: dict[str, Solver] = {}


def register_solver(solver: Solver) -> Solver:
    """Add a solver to the registry (names are unique)."""
    if solver.name in SOLVERS:
        raise ValueError(f"a solver named {solver.name!r} is already registered")
    SOLVERS[solver.name] = solver
    return solver


def get_solver(name: str) -> Solver:
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; valid: {', '.join(sorted(SOLVERS))}")
    return SOLVERS[name]


for _s in (
    Solver("euler", sample_euler, 1, 1, default_grid="karras", summary="Euler on the probability-flow ODE"),
    Solver("heun", sample_heun, 2, 2, default_grid="karras", summary="Heun / EDM 2nd order (optional churn)"),
    Solver("ddim", sample_ddim, 1, 1, summary="DDIM; eta > 0 adds noise (eta = 1 is DDPM)"),
    Solver("ddpm", sample_ddpm, 1, 1, stochastic=True, summary="DDPM ancestral sampling"),
    Solver(
        "euler_maruyama",
        sample_euler_maruyama,
        1,
        1,
        stochastic=True,
        summary="Euler-Maruyama on the reverse SDE (eta scales the noise)",
    ),
    Solver("adaptive", sample_adaptive, 5, None, summary="Dormand-Prince 5(4) with error control (reference)"),
    Solver("mrs", sample_mrs, 2, 1, summary="MRS-ODE multistep (order 1-3, data or noise form; = DPM-Solver++)"),
    Solver("mrs_sde", sample_mrs_sde, 2, 1, stochastic=True, summary="MRS-SDE (order 1-2, data or noise form)"),
    Solver("flowmap", sample_flowmap, 1, 1, default_grid="uniform", summary="jumps of a learned flow map (1-4 steps)"),
):
    register_solver(_s)


class CountingModel(ModelWrapper):
    """Counts batched model calls (``calls``) made through it."""

    def __init__(self, inner: ModelBase):
        super().__init__(inner)
        self.calls = 0

    def predict(self, x, t, kind="x0", **cond):
        self.calls += 1
        return self.inner.predict(x, t, kind, **cond)


@dataclass
class SampleResult:
    """Output of :func:`sample`: samples ``x``, model calls ``nfe``, the time grid ``ts`` and the solver name."""

    x: Tensor
    nfe: int
    ts: Tensor
    solver: str
    options: dict = field(default_factory=dict)


def sample(
    model: ModelBase,
    x: Tensor | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    solver: str = "heun",
    steps: int = 18,
    grid: str | Tensor | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    cond: dict | None = None,
    generator: torch.Generator | None = None,
    denoise: bool = False,
    callback: Callback | None = None,
    **options,
) -> SampleResult:
    """Sample ``model`` with a registered solver: the front door.

    Pass the prior draw ``x`` ``(batch, ...)`` or a ``shape`` (then x = ``model.path.prior_sample(shape)``).
    ``grid`` is a grid name (``uniform``, ``logsnr``, ``karras``, ``quadratic``; default: the solver's) or a
    decreasing tensor of times. ``denoise=True`` returns the x0 prediction at the last time (one more call).
    Solver ``options`` (e.g. ``eta``, ``churn``) are checked against the solver's signature.
    """
    spec = get_solver(solver)
    unknown = sorted(set(options) - set(spec.options()))
    if unknown:
        valid = ", ".join(spec.options()) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for solver {solver!r}; valid: {valid}")
    if not isinstance(model, ModelBase):
        raise TypeError(f"model must be a diffusio Model (ModelBase), got {type(model).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < spec.min_steps:
        raise ValueError(f"steps must be an integer >= {spec.min_steps} for solver {solver!r}, got {steps!r}")
    path = model.path
    ts = (
        get_timesteps(path, steps, spec.default_grid if grid is None else grid, t_min=t_min, t_max=t_max)
        if isinstance(grid, str | None)
        else get_timesteps(path, steps, grid)
    )
    x = _initial(path, x, shape, generator)
    if "generator" in inspect.signature(spec.fn).parameters:
        options["generator"] = generator
    counted = CountingModel(model)
    with torch.no_grad():
        out = spec.fn(counted, x, ts, cond=cond, callback=callback, **options)
        if denoise:
            out = counted.predict(out, ts[-1].to(out.device).expand(out.shape[0]), "x0", **(cond or {})).to(out.dtype)
    options.pop("generator", None)
    return SampleResult(out, counted.calls, ts, solver, options)


def _initial(path, x: Tensor | None, shape, generator) -> Tensor:
    if (x is None) == (shape is None):
        raise ValueError("pass exactly one of x (the prior draw) or shape")
    if x is None:
        device = generator.device if generator is not None else None
        return path.prior_sample(tuple(shape), generator=generator, device=device)
    if not torch.is_tensor(x) or x.ndim < 2:
        raise ValueError(f"x must be a tensor of shape (batch, ...) with ndim >= 2; got {getattr(x, 'shape', x)}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf")
    return x
