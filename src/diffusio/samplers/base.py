"""What every sampler shares: the step record passed to callbacks, per-step time tensors and coefficients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from diffusio.core.time import time_batch
from diffusio.models.base import ModelBase

__all__ = ["Callback", "Step", "model_x0", "run_kernel"]


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


def run_kernel(step: Callable, model: ModelBase, x: Tensor, ts: Tensor, callback: Callback | None, **kw) -> Tensor:
    """Drive a one-step kernel ``step(model, x, t, t_next, **kw) -> (x_next, x0)`` over the grid ``ts``, reporting
    each step to ``callback``: the whole loop of every single-step sampler."""
    for i in range(len(ts) - 1):
        x, x0 = step(model, x, ts[i], ts[i + 1], **kw)
        if callback is not None:
            callback(Step(i, float(ts[i + 1]), x, x0))
    return x
