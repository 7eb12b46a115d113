"""What every sampler shares: the step record passed to callbacks, per-step time tensors and coefficients."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from diffusio.core.time import Coeffs, time_batch
from diffusio.models.base import ModelBase

__all__ = ["Callback", "Step", "kernel_sampler", "model_x0", "run_grid", "run_kernel"]


@dataclass
class Step:
    """One sampler step, for callbacks: index ``i``, time ``t`` (float), the state ``x`` after the step and the
    x0 prediction the step used (``None`` where a solver does not form one)."""

    i: int
    t: float
    x: Tensor
    x0: Tensor | None = None


Callback = Callable[[Step], None]


def model_x0(model: ModelBase, x: Tensor, t: Tensor, cond: dict | None) -> Tensor:
    """One model call: the x0 prediction at scalar time ``t``, in ``x``'s dtype."""
    return model.predict(x, time_batch(t, x), "x0", **(cond or {})).to(x.dtype)


def run_grid(step: Callable, x: Tensor, points: Sequence, callback: Callback | None) -> Tensor:
    """Drive ``step(i, x, s, t) -> (x_next, x0)`` over consecutive pairs ``(s, t)`` of ``points`` (times, or
    :class:`~diffusio.core.time.Coeffs` records with a ``.t``), reporting each step to ``callback``: the loop of
    every sampler (``x0`` is the prediction the step used, or None)."""
    for i in range(len(points) - 1):
        t = points[i + 1]
        x, x0 = step(i, x, points[i], t)
        if callback is not None:
            callback(Step(i, float(t.t if isinstance(t, Coeffs) else t), x, x0))
    return x


def run_kernel(step: Callable, model: ModelBase, x: Tensor, ts: Tensor, callback: Callback | None, **kw) -> Tensor:
    """Drive a one-step kernel ``step(model, x, t, t_next, **kw) -> (x_next, x0)`` over the grid ``ts``, reporting
    each step to ``callback``: the whole loop of every single-step sampler."""
    return run_grid(lambda i, x, t, t_next: step(model, x, t, t_next, **kw), x, ts, callback)


def kernel_sampler(step: Callable, name: str, doc: str, nonnegative: tuple[str, ...] = ()) -> Callable[..., Tensor]:
    """The single-step sampler ``name(model, x, ts, *, cond=None, callback=None, **options) -> x`` that drives the
    one-step kernel ``step`` over the grid ``ts`` (:func:`run_kernel`). Its options, with their defaults, are the
    kernel's own keyword parameters (its signature says so, for the registry's option checks); the options named in
    ``nonnegative`` are refused below 0."""
    kernel_options = [p for p in inspect.signature(step).parameters.values() if p.kind is p.KEYWORD_ONLY]
    defaults = {p.name: p.default for p in kernel_options}
    if "cond" not in defaults:
        raise TypeError(f"kernel {step.__name__} must take the keyword 'cond' (the model's conditioning)")

    def sampler(model: ModelBase, x: Tensor, ts: Tensor, *, callback: Callback | None = None, **options) -> Tensor:
        for k in nonnegative:
            v = options.get(k, defaults[k])
            if v < 0:
                raise ValueError(f"{k} must be >= 0, got {v}")
        return run_kernel(step, model, x, ts, callback, **options)

    positional = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("model", "x", "ts")]
    callback = inspect.Parameter("callback", inspect.Parameter.KEYWORD_ONLY, default=None)
    cond, *rest = sorted(kernel_options, key=lambda p: p.name != "cond")  # cond first, the rest in kernel order
    sampler.__signature__ = inspect.Signature([*positional, cond, callback, *rest])
    sampler.__name__ = sampler.__qualname__ = name
    sampler.__doc__ = doc
    return sampler
