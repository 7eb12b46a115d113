"""Samplers: pure functions ``sample_<name>(model, x, ts, *, cond, callback, generator, **opts) -> x``.

``SOLVERS`` maps names to :class:`Solver` records (function, declared order, model calls per step);
:func:`sample` is the front door.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

from diffusio.core.timesteps import get_timesteps
from diffusio.models.base import CountingModel, ModelBase
from diffusio.samplers.adaptive import odeint, sample_adaptive
from diffusio.samplers.base import Callback, Step
from diffusio.samplers.dpm import (
    sample_dpm_solver,
    sample_dpm_solver_fast,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s,
    sample_dpmpp_3m,
    sample_dpmpp_3m_sde,
    sample_ipndm,
)
from diffusio.samplers.dpm_v3 import sample_dpm_v3
from diffusio.samplers.evodiff import sample_evodiff
from diffusio.samplers.ode import sample_ddim, sample_euler, sample_heun
from diffusio.samplers.sde import sample_ddpm, sample_euler_maruyama
from diffusio.samplers.unipc import sample_unipc

__all__ = [
    "SOLVERS",
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
    "sample_dpm_solver",
    "sample_dpm_solver_fast",
    "sample_dpm_v3",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2s",
    "sample_dpmpp_3m",
    "sample_dpmpp_3m_sde",
    "sample_euler",
    "sample_euler_maruyama",
    "sample_evodiff",
    "sample_heun",
    "sample_ipndm",
    "sample_unipc",
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
    needs: tuple[str, ...] = ()  # options without a usable default that a caller must supply (e.g. "statistics")

    def nfe(self, steps: int) -> int | None:
        """Model calls for ``steps`` steps (None for adaptive solvers)."""
        return None if self.calls_per_step is None else self.calls_per_step * steps + self.extra_calls

    def options(self) -> list[str]:
        """The keyword options this solver accepts beyond (model, x, ts, cond, callback, generator)."""
        skip = {"model", "x", "ts", "cond", "callback", "generator"}
        if isinstance(self.fn, partial):  # options fixed by the registry entry (e.g. order) are not options
            skip |= set(self.fn.keywords)
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
    # exponential integrators in log-SNR (samplers/dpm.py, samplers/unipc.py)
    Solver("dpm_solver_1", partial(sample_dpm_solver, order=1), 1, 1, summary="DPM-Solver-1 (noise form; = DDIM)"),
    Solver("dpm_solver_2", partial(sample_dpm_solver, order=2), 2, 2, summary="singlestep DPM-Solver-2 (noise form)"),
    Solver("dpm_solver_3", partial(sample_dpm_solver, order=3), 3, 3, summary="singlestep DPM-Solver-3 (noise form)"),
    Solver(
        "dpm_solver_fast",
        sample_dpm_solver_fast,
        3,
        1,
        min_steps=3,
        summary="DPM-Solver-fast: singlestep orders 3,..,3,2,1 within a budget of `steps` model calls",
    ),
    Solver("dpmpp_2s", sample_dpmpp_2s, 2, 2, summary="DPM-Solver++(2S), singlestep data form"),
    Solver("dpmpp_2m", sample_dpmpp_2m, 2, 1, min_steps=2, summary="DPM-Solver++(2M), multistep data form"),
    Solver(
        "dpmpp_3m",
        sample_dpmpp_3m,
        3,
        1,
        min_steps=3,
        summary="DPM-Solver++(3M); variant='official' is the peers' (global order 2) coefficient",
    ),
    Solver(
        "dpmpp_3m_official",
        partial(sample_dpmpp_3m, variant="official"),
        2,
        1,
        min_steps=3,
        summary="DPM-Solver++(3M) with the official phi_3 coefficient (LuChengTHU, diffusers, k-diffusion): order 2",
    ),
    # SDE weak orders: 2 for both multistep SDE solvers (bench/results/sde_order.md: exact moments on Gaussian data,
    # Monte Carlo on a mixture); the third-order extrapolation does not lift 3M-SDE past 2 once noise is injected
    Solver(
        "dpmpp_2m_sde",
        sample_dpmpp_2m_sde,
        2,
        1,
        stochastic=True,
        min_steps=2,
        summary="SDE-DPM-Solver++(2M), weak order 2 (eta scales the noise; eta=0 is dpmpp_2m)",
    ),
    Solver(
        "dpmpp_3m_sde",
        sample_dpmpp_3m_sde,
        2,
        1,
        stochastic=True,
        min_steps=3,
        summary="multistep SDE-DPM-Solver++ with the 3M extrapolation: weak order 2 (eta=0 is dpmpp_3m, order 3)",
    ),
    Solver("unipc", sample_unipc, 3, 1, min_steps=2, summary="UniPC-2 (UniP-2 + UniC, bh2): order 3, 1 call/step"),
    Solver(
        "unipc3",
        partial(sample_unipc, order=3),
        4,
        1,
        min_steps=3,
        summary="UniPC-3 (UniP-3 + UniC): order 4, 1 call/step",
    ),
    Solver(
        "dpm_v3",
        sample_dpm_v3,
        3,
        1,
        min_steps=3,
        summary="DPM-Solver-v3 with empirical model statistics (needs statistics: samplers.dpm_v3.statistics_for)",
        needs=("statistics",),
    ),
    Solver(
        "evodiff",
        sample_evodiff,
        1,
        1,
        min_steps=2,
        summary="EVODiff (variance-optimised multistep; claimed order 2, measured 1 with the official constants)",
    ),
    Solver("ipndm", sample_ipndm, 4, 1, min_steps=4, summary="iPNDM: variable-step Adams-Bashforth-4 in sigma/alpha"),
):
    register_solver(_s)


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
    plan=None,
    **options,
) -> SampleResult:
    """Sample ``model`` with a registered solver: the front door.

    Pass the prior draw ``x`` ``(batch, ...)`` or a ``shape`` (then x = ``model.path.prior_sample(shape)``).
    ``grid`` is a grid name (``uniform``, ``logsnr``, ``karras``, ``quadratic``; default: the solver's) or a
    decreasing tensor of times. ``denoise=True`` returns the x0 prediction at the last time (one more call).
    Solver ``options`` (e.g. ``eta``, ``churn``) are checked against the solver's signature.
    ``plan``: a tuned recipe from ``diffusio.autotune`` (its solver, steps, grid and options replace those arguments).
    """
    if plan is not None:
        kw = {"shape": shape, "cond": cond, "generator": generator, "denoise": denoise, "callback": callback}
        return sample(model, x, **kw, **plan.kwargs(model), **options)
    spec = get_solver(solver)
    unknown = sorted(set(options) - set(spec.options()))
    if unknown:
        valid = ", ".join(spec.options()) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for solver {solver!r}; valid: {valid}")
    if not isinstance(model, ModelBase):
        raise TypeError(f"model must be a diffusio Model (ModelBase), got {type(model).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < spec.min_steps:
        lower = "; pass more steps or a lower-order solver (e.g. 'ddim', 1 call per step)" if spec.min_steps > 1 else ""
        raise ValueError(f"steps must be an integer >= {spec.min_steps} for solver {solver!r}, got {steps!r}{lower}")
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
