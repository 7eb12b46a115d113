"""Time grids: pure functions returning a float64 tensor ``(steps + 1,)`` from ``t_max`` down to ``t_min``.

Grids never touch a singular data end of the path (sigma = 0, e.g. t = 0 on the VP, flow and trigonometric
paths; ``Path.singular_ends``): asking for one is an error naming the usable range.

Every grid is defined on some monotone reparametrisation of time and mapped back through the path:
``uniform`` is uniform in t, ``logsnr`` uniform in lambda, ``karras`` uniform in (sigma/alpha)^(1/rho)
(Karras et al. 2022, Eq. 5), ``quadratic`` uniform in sqrt(t - t_min) (DDIM's quadratic skip).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

from diffusio.core.paths import Path

__all__ = ["GRIDS", "check_grid", "get_timesteps", "karras", "logsnr", "quadratic", "uniform"]


def _bounds(path: Path, t_min: float | None, t_max: float | None) -> tuple[Tensor, Tensor]:
    lo = path.t_min if t_min is None else t_min
    hi = path.t_max if t_max is None else t_max
    lo, hi = (float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else v for v in (lo, hi))
    for name, v in (("t_min", lo), ("t_max", hi)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if not lo < hi:
        raise ValueError(f"t_min ({lo}) must be below t_max ({hi})")
    path.check_t(torch.tensor([lo, hi], dtype=torch.float64), "grid end points (t_min, t_max)", grid=True)
    return torch.tensor(hi, dtype=torch.float64), torch.tensor(lo, dtype=torch.float64)


def _check_steps(steps: int) -> int:
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def _ends_exact(ts: Tensor, hi: Tensor, lo: Tensor) -> Tensor:
    ts[0], ts[-1] = hi, lo  # mapping back through the path can round the end points
    return ts


def _finite_ends(path: Path, grid: str, what: str, values: Tensor) -> None:
    if not torch.isfinite(values).all():
        raise ValueError(
            f"grid {grid!r} is uniform in {what}, which is infinite at a singular end of path {path.name!r} "
            f"(t = {path.t_hi:g}, alpha = 0); use grid='uniform' to start there, or t_max <= {path.t_max:g} (default)"
        )


def uniform(path: Path, steps: int, t_min: float | None = None, t_max: float | None = None) -> Tensor:
    """Uniform in the path's native time t."""
    steps = _check_steps(steps)
    hi, lo = _bounds(path, t_min, t_max)
    return torch.linspace(float(hi), float(lo), steps + 1, dtype=torch.float64)


def logsnr(path: Path, steps: int, t_min: float | None = None, t_max: float | None = None) -> Tensor:
    """Uniform in half log-SNR lambda (DPM-Solver's default)."""
    steps = _check_steps(steps)
    hi, lo = _bounds(path, t_min, t_max)
    _finite_ends(path, "logsnr", "the log-SNR", path.log_snr(torch.stack([hi, lo])))
    lams = torch.linspace(float(path.log_snr(hi)), float(path.log_snr(lo)), steps + 1, dtype=torch.float64)
    return _ends_exact(path.t_of_log_snr(lams), hi, lo)


def karras(path: Path, steps: int, t_min: float | None = None, t_max: float | None = None, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) Eq. 5: uniform in s^(1/rho) for the noise level s = sigma/alpha."""
    steps = _check_steps(steps)
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not (rho > 0 and math.isfinite(rho)):
        raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
    hi, lo = _bounds(path, t_min, t_max)
    _finite_ends(path, "karras", "the noise level sigma/alpha", path.noise_level(torch.stack([hi, lo])))
    s_hi, s_lo = path.noise_level(hi) ** (1 / rho), path.noise_level(lo) ** (1 / rho)
    s = torch.linspace(float(s_hi), float(s_lo), steps + 1, dtype=torch.float64) ** rho
    return _ends_exact(path.t_of_noise_level(s), hi, lo)


def quadratic(path: Path, steps: int, t_min: float | None = None, t_max: float | None = None) -> Tensor:
    """Quadratic in t: denser near the data end (Song et al. 2021, DDIM "quadratic" skip)."""
    steps = _check_steps(steps)
    hi, lo = _bounds(path, t_min, t_max)
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return lo + (hi - lo) * u**2


GRIDS: dict[str, Callable[..., Tensor]] = {
    "uniform": uniform,
    "logsnr": logsnr,
    "karras": karras,
    "quadratic": quadratic,
}


def check_grid(ts: Tensor, path: Path | None = None, *, singular_data_end: bool = True) -> Tensor:
    """Validate a user grid: 1-D, at least two points, strictly decreasing, inside the path's domain; with
    ``singular_data_end=False`` also away from a singular data end (``Path.check_t(..., grid=True)``)."""
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"a time grid must be 1-D with at least 2 points; got shape {tuple(ts.shape)}")
    if not torch.isfinite(ts).all():
        raise ValueError("the time grid contains NaN or inf")
    if not (ts[1:] < ts[:-1]).all():
        bad = int(torch.nonzero(ts[1:] >= ts[:-1])[0])
        raise ValueError(
            f"the time grid must be strictly decreasing (noise to data); ts[{bad}]={float(ts[bad]):g} "
            f"is not above ts[{bad + 1}]={float(ts[bad + 1]):g}; pass distinct times from t_max (noise) down to t_min "
            "(data), e.g. a named grid (grid='logsnr') or torch.sort(ts, descending=True).values without repeats"
        )
    if path is not None:
        path.check_t(ts, "the time grid", grid=singular_data_end is False)
    return ts


def get_timesteps(path: Path, steps: int, grid: str | Tensor = "logsnr", **opts) -> Tensor:
    """A grid by name (``uniform``, ``logsnr``, ``karras``, ``quadratic``) or a user tensor, validated."""
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(f"unknown grid {grid!r}; valid: {', '.join(GRIDS)} (or pass a tensor of times)")
        return GRIDS[grid](path, steps, **opts)
    return check_grid(grid, path)
