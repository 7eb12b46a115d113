"""Calibration sets for post-training quantization: network inputs ``(x, t, cond)`` drawn from the full-precision
model's own sampling trajectories.

Three ways to choose them (``CALIBRATIONS``):

- ``naive``: every input at one time (default the first sampling step, pure prior noise): the baseline that
  ignores how activations drift with t.
- ``data``: training images noised to times drawn uniformly from the sampler's grid, ``x = alpha x0 + sigma eps``
  (the usual PTQ recipe carried over from classifiers; PTQ4DM's Sec. 4.1 argues it mismatches what the sampler
  feeds the network). Needs ``data``.
- ``uniform``: inputs kept at every step of the sampler, uniformly over the steps (Li et al. 2023,
  "Q-Diffusion", Sec. 4.2: time step-aware calibration on intermediate samples).
- ``ptq4dm``: Normally Distributed Time-step Calibration (Shang et al. 2023, "Post-training Quantization on
  Diffusion Models", Sec. 4.2): for each trajectory draw ``i = clamp(round(T * N(mu, sigma^2)), 0, T - 1)`` and
  keep the state that enters the network at step index ``i`` counted **from the data end** (``i = 0``: the last,
  least-noisy network call; the DDPM convention of the paper, where ``mu = 0.4 < 1/2`` concentrates calibration
  at low noise). Defaults ``mu = sigma = 0.4`` as in the official script.

Convention (the pitfall the paper's script falls into): a calibration input is recorded *at the model call* by
a wrapper, so each ``x`` is stored with the time it was actually evaluated at; nothing is re-indexed afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffusio.models.base import ModelBase, ModelWrapper

__all__ = ["CALIBRATIONS", "CalibrationSet", "calibration_set", "ndtc_indices"]

CALIBRATIONS = ("naive", "data", "uniform", "ptq4dm")


@dataclass
class CalibrationSet:
    """Network inputs for calibration: ``x`` ``(N, ...)``, times ``t`` ``(N,)`` (the path's time), ``cond`` (each
    value ``(N, ...)``). ``method`` records how it was drawn."""

    x: Tensor
    t: Tensor
    cond: dict = field(default_factory=dict)
    method: str = "custom"

    def __post_init__(self):
        if not torch.is_tensor(self.x) or self.x.ndim < 2:
            raise ValueError(f"calibration x must be a tensor (N, ...); got {getattr(self.x, 'shape', self.x)}")
        n = self.x.shape[0]
        if not torch.is_tensor(self.t) or self.t.shape != (n,):
            raise ValueError(
                f"calibration t must have shape ({n},), one time per input; got {getattr(self.t, 'shape', self.t)}"
            )
        for k, v in self.cond.items():
            if not torch.is_tensor(v) or v.shape[:1] != (n,):
                raise ValueError(
                    f"calibration cond[{k!r}] must be a tensor with {n} rows; got {getattr(v, 'shape', v)}"
                )
        if not (torch.isfinite(self.x).all() and torch.isfinite(self.t).all()):
            raise ValueError("calibration x and t must be finite")

    def __len__(self) -> int:
        return self.x.shape[0]

    def batches(self, batch_size: int):
        """``(x, t, cond)`` slices of at most ``batch_size`` rows."""
        for i in range(0, len(self), batch_size):
            sl = slice(i, i + batch_size)
            yield self.x[sl], self.t[sl], {k: v[sl] for k, v in self.cond.items()}


class _Recorder(ModelWrapper):
    """Records every ``(x, t, cond)`` the sampler feeds the model (the true pairs, by construction)."""

    def __init__(self, inner: ModelBase):
        super().__init__(inner)
        self.records: list[tuple[Tensor, Tensor, dict]] = []

    def predict(self, x, t, kind="x0", **cond):
        self.records.append((x.detach().clone(), t.detach().clone(), {k: v.detach() for k, v in cond.items()}))
        return self.inner.predict(x, t, kind, **cond)


def ndtc_indices(n: int, steps: int, mu: float = 0.4, sigma: float = 0.4, generator=None) -> Tensor:
    """PTQ4DM's step indices ``clamp(round(steps * N(mu, sigma^2)), 0, steps - 1)`` ``(n,)`` (0 = least noisy)."""
    z = torch.randn(n, generator=generator, dtype=torch.float64) * sigma + mu
    return torch.round(steps * z).clamp(0, steps - 1).long()


def calibration_set(
    model: ModelBase,
    shape: tuple[int, ...],
    n: int = 256,
    method: str = "ptq4dm",
    *,
    steps: int = 20,
    solver: str = "ddim",
    mu: float = 0.4,
    sigma: float = 0.4,
    t: float | None = None,
    cond: dict | None = None,
    data: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> CalibrationSet:
    """Draw ``n`` calibration inputs of per-sample ``shape`` from ``model``'s own ``solver`` trajectories.

    ``cond`` (each value ``(n, ...)``) is passed to every call (e.g. class labels). ``t`` (naive only) picks the
    single time; default the path's ``t_max``. ``data`` (``data`` only) holds training images ``(M, *shape)``, drawn
    with replacement. See the module docstring for the methods.
    """
    from diffusio.samplers import sample

    if method not in CALIBRATIONS:
        raise ValueError(f"unknown calibration method {method!r}; valid: {', '.join(CALIBRATIONS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"calibration size n must be an integer >= 2, got {n!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (sigma > 0 and 0 <= mu <= 1):
        raise ValueError(f"need sigma > 0 and mu in [0, 1] (fractions of the steps); got mu={mu}, sigma={sigma}")
    cond = dict(cond or {})
    if method == "naive":
        t0 = model.path.t_max if t is None else float(t)
        model.path.check_t(torch.tensor([t0], dtype=torch.float64), "calibration t")
        if t0 >= model.path.t_max:
            x = model.path.prior_sample((n, *shape), generator=generator)
        else:  # the FP sampler run down to t0: the state it feeds the network there
            x = sample(model, shape=(n, *shape), solver=solver, steps=steps, t_min=t0, cond=cond, generator=generator).x
        return CalibrationSet(x, torch.full((n,), t0, dtype=torch.float64), cond, "naive")
    if method == "data":
        return _data_set(model, shape, n, steps, solver, cond, data, generator)
    rec = _Recorder(model)
    sample(rec, shape=(n, *shape), solver=solver, steps=steps, cond=cond, generator=generator)
    calls = len(rec.records)  # == steps for one-call-per-step solvers
    if method == "uniform":
        k = torch.arange(n) % calls  # every step equally often
    else:
        k = calls - 1 - ndtc_indices(n, calls, mu, sigma, generator)  # index from the data end -> call order
    xs = torch.stack([r[0] for r in rec.records])  # (calls, n, ...)
    ts = torch.stack([r[1] for r in rec.records])
    rows = torch.arange(n)
    return CalibrationSet(xs[k, rows], ts[k, rows].to(torch.float64), cond, method)


def _data_set(model, shape, n, steps, solver, cond, data, generator) -> CalibrationSet:
    """Training images noised by the path at times drawn uniformly from the ``solver``'s ``steps``-step grid."""
    from diffusio.core.timesteps import get_timesteps
    from diffusio.samplers import SOLVERS

    if not torch.is_tensor(data) or tuple(data.shape[1:]) != tuple(shape) or len(data) < 1:
        raise ValueError(
            f"method='data' needs data=training images of shape (M, {', '.join(map(str, shape))}); "
            f"got {getattr(data, 'shape', data)}"
        )
    grid = get_timesteps(model.path, steps, SOLVERS[solver].default_grid)[:-1]  # the times the network is called at
    x0 = data[torch.randint(len(data), (n,), generator=generator)].to(torch.get_default_dtype())
    t = grid[torch.randint(len(grid), (n,), generator=generator)].to(torch.float64)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    x = model.path.perturb(x0.double(), noise.double(), t).to(x0.dtype)
    return CalibrationSet(x, t, cond, "data")
