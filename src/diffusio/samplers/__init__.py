"""Samplers: pure functions ``sample_<name>(model, x, ts, *, cond, callback, generator, **opts) -> x``.

``SOLVERS`` maps names to :class:`Solver` records (function, declared order, model calls per step);
:func:`sample` is the front door.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

from diffusio.core.timesteps import check_grid, get_timesteps
from diffusio.models.base import CheckedModel, ModelBase, NonFiniteError
from diffusio.samplers.adaptive import odeint, sample_adaptive
from diffusio.samplers.base import Callback, Step
from diffusio.samplers.dpm import (
    sample_dpm_solver,
    sample_dpm_solver_fast,
    sample_dpmpp_2m,
    sample_dpmpp_2s,
    sample_dpmpp_3m,
    sample_dpmpp_sde,
    sample_ipndm,
)
from diffusio.samplers.dpm_v3 import sample_dpm_v3
from diffusio.samplers.evodiff import sample_evodiff
from diffusio.samplers.ode import sample_ddim, sample_euler, sample_heun
from diffusio.samplers.sde import sample_ddpm, sample_euler_maruyama
from diffusio.samplers.unipc import sample_unipc

__all__ = [
    "SOLVERS",
    "NonFiniteError",
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
    "sample_dpmpp_2s",
    "sample_dpmpp_3m",
    "sample_dpmpp_sde",
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
    log_snr: bool = False  # steps in log-SNR (or sigma/alpha): needs a finite lambda at every grid point
    data_end_ok: bool = True  # may a tensor grid end on a singular data end (a flow map jumps to t = 0)?

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
MAX_STEPS = 100_000  # a larger request is refused (a typo such as 10**7 would run for hours)


def register_solver(solver: Solver) -> Solver:
    """Add a solver to the registry (names are unique)."""
    if solver.name in SOLVERS:
        raise ValueError(f"a solver named {solver.name!r} is already registered")
    SOLVERS[solver.name] = solver
    return solver


def get_solver(name: str) -> Solver:
    """The registered :class:`Solver` called ``name``; a ValueError lists the valid names otherwise."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; valid: {', '.join(sorted(SOLVERS))}")
    return SOLVERS[name]


# solvers stepping in log-SNR or sigma/alpha: a grid touching a singular noise end (alpha = 0) is refused for them
_LOG_SNR = {
    "dpm_solver_1",
    "dpm_solver_2",
    "dpm_solver_3",
    "dpm_solver_fast",
    "dpmpp_2s",
    "dpmpp_2m",
    "dpmpp_3m",
    "dpmpp_3m_official",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "unipc",
    "unipc3",
    "dpm_v3",
    "evodiff",
    "ipndm",
}

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
    *(
        Solver(f"dpmpp_{k}m_sde", partial(sample_dpmpp_sde, order=k), 2, 1, stochastic=True, min_steps=k, summary=doc)
        for k, doc in (
            (2, "SDE-DPM-Solver++(2M), weak order 2 (eta scales the noise; eta=0 is dpmpp_2m)"),
            (3, "multistep SDE-DPM-Solver++ with the 3M extrapolation: weak order 2 (eta=0 is dpmpp_3m, order 3)"),
        )
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
    # the built-in solvers divide by sigma at the last grid point: a tensor grid ending at a singular data end is
    # refused for them (named grids never go there)
    _s = dataclasses.replace(_s, log_snr=_s.name in _LOG_SNR, data_end_ok=False)
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
    Solver ``options`` (e.g. ``eta``, ``churn``) are checked against the solver's signature; numbers must be
    finite (NaN/inf refused by name).
    ``plan``: a tuned recipe from ``diffusio.autotune`` (its solver, steps, grid and options replace those
    arguments). float16/bfloat16 ``x`` is computed in float32 and returned in its dtype.

    Finite-output guarantee: the model is wrapped in :class:`~diffusio.models.base.CheckedModel`, which checks the
    state handed to it and its answer at every call (one reduced ``isfinite``); NaN/inf anywhere, or in the
    result, raises :class:`NonFiniteError` naming the solver, the call/step, the time and the likely cause.
    Grids never touch a singular data end of the path (``Path.check_t(..., grid=True)``), and log-SNR solvers
    refuse a singular noise end (alpha = 0).
    """
    if plan is not None:
        kw = {"shape": shape, "cond": cond, "generator": generator, "denoise": denoise, "callback": callback}
        return sample(model, x, **kw, **plan.kwargs(model), **options)
    if not isinstance(solver, str):
        raise TypeError(f"solver must be a solver name (str), got {type(solver).__name__}")
    spec = get_solver(solver)
    unknown = sorted(set(options) - set(spec.options()))
    if unknown:
        valid = ", ".join(spec.options()) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for solver {solver!r}; valid: {valid}")
    if not isinstance(model, ModelBase):
        raise TypeError(f"model must be a diffusio Model (ModelBase), got {type(model).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < spec.min_steps:
        lower = "; pass more steps or a lower-order solver (e.g. 'ddim', 1 call per step)" if spec.min_steps > 1 else ""
        raise ValueError(f"steps must be an integer >= {spec.min_steps} for solver {solver!r}, got {steps!r}{lower}")
    steps = int(steps)
    if steps > MAX_STEPS:
        raise ValueError(f"steps={steps} is beyond {MAX_STEPS} (hours of model calls); pass fewer steps")
    _check_options(spec, options)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if cond is not None and not isinstance(cond, dict):
        raise TypeError(f"cond must be a dict of keyword arguments for the model (e.g. {{'y': labels}}), got {cond!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable (it receives a Step), got {type(callback).__name__}")
    if not isinstance(denoise, bool):
        raise TypeError(f"denoise must be True or False, got {denoise!r}")
    if grid is not None and not isinstance(grid, str) and not torch.is_tensor(grid):
        raise TypeError(f"grid must be a grid name or a 1-D tensor of times, got {type(grid).__name__}")
    path = model.path
    if isinstance(grid, str | None):
        ts = get_timesteps(path, steps, spec.default_grid if grid is None else grid, t_min=t_min, t_max=t_max)
    else:
        if t_min is not None or t_max is not None:
            raise ValueError("t_min/t_max apply to named grids; a tensor grid already fixes its end points")
        ts = check_grid(grid, path, singular_data_end=spec.data_end_ok)
    if spec.log_snr and not torch.isfinite(path.log_snr(ts)).all():
        raise ValueError(
            f"solver {solver!r} steps in log-SNR, which is infinite at t = {float(ts[0]):g} (the singular noise end "
            f"of path {path.name!r}, alpha = 0); start at the path's t_max = {path.t_max:g} (the default) or use a "
            "native-time solver such as 'euler' or 'heun'"
        )
    x = _initial(path, x, shape, generator)
    out_dtype = x.dtype
    if x.dtype in (torch.float16, torch.bfloat16):  # solver arithmetic in float32, returned in the caller's dtype
        x = x.float()
    if "generator" in inspect.signature(spec.fn).parameters:
        options["generator"] = generator
    shown = {k: v for k, v in options.items() if k != "generator"}
    counted = CheckedModel(model, f"solver {solver!r}", spec.calls_per_step, shown)
    with torch.no_grad():
        out = spec.fn(counted, x, ts, cond=cond, callback=callback, **options)
        if denoise:
            out = counted.predict(out, ts[-1].to(out.device).expand(out.shape[0]), "x0", **(cond or {})).to(out.dtype)
        out = out.to(out_dtype)
        if not bool(torch.isfinite(out).all()):
            where = "the result" + (f" cast back to {out_dtype}" if out_dtype != x.dtype else "")
            raise NonFiniteError(counted.describe(where, ts[-1], final=True))
    options.pop("generator", None)
    return SampleResult(out, counted.calls, ts, solver, options)


def _check_options(spec: Solver, options: dict) -> None:
    """Numbers must be finite (an infinite value only where the option's default is infinite); floating tensors
    finite; booleans stay booleans."""
    params = inspect.signature(spec.fn).parameters
    for k, v in options.items():
        default = params[k].default if k in params else inspect.Parameter.empty
        if isinstance(v, numbers.Real) and not isinstance(v, bool):
            v = float(v)
            inf_ok = isinstance(default, float) and math.isinf(default) and v == default
            if math.isnan(v) or (math.isinf(v) and not inf_ok):
                raise ValueError(f"option {k}={v} for solver {spec.name!r} must be a finite number")
        elif torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"option {k} for solver {spec.name!r} contains NaN or inf")


def _initial(path, x: Tensor | None, shape, generator) -> Tensor:
    if (x is None) == (shape is None):
        raise ValueError("pass exactly one of x (the prior draw) or shape")
    if x is None:
        if isinstance(shape, numbers.Integral) or not isinstance(shape, tuple | list | torch.Size):
            raise ValueError(f"shape must be a tuple (batch, *event_shape), got {shape!r}")
        bad = [d for d in shape if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1]
        if len(shape) < 2 or bad:
            raise ValueError(f"shape must be a tuple of >= 2 positive integers (batch, *event_shape), got {shape!r}")
        device = generator.device if generator is not None else None
        return path.prior_sample(tuple(int(d) for d in shape), generator=generator, device=device)
    if not torch.is_tensor(x) or x.ndim < 2:
        raise ValueError(f"x must be a tensor of shape (batch, ...) with ndim >= 2; got {getattr(x, 'shape', x)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (the prior draw), got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)}); pass at least one sample")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf")
    return x
