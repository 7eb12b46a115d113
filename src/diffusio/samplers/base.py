"""What every sampler shares: the step record passed to callbacks, per-step time tensors and coefficients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model import ModelBase
from ..paths import Path

__all__ = ["Callback", "Coeffs", "Step", "coeffs", "model_x0", "time_batch"]


@dataclass
class Step:
    """One sampler step, for callbacks: index ``i``, time ``t`` (float), the state ``x`` after the step and the
    x0 prediction the step used (``None`` where a solver does not form one)."""

    i: int
    t: float
    x: Tensor
    x0: Tensor | None = None


Callback = Callable[[Step], None]


@dataclass(frozen=True)
class Coeffs:
    """Path quantities at one time point, as float64 scalars: alpha, sigma, lambda and their t-derivatives."""

    t: Tensor
    alpha: Tensor
    sigma: Tensor
    lam: Tensor
    d_alpha: Tensor
    d_sigma: Tensor


def coeffs(path: Path, t: Tensor) -> Coeffs:
    """Evaluate the path at a scalar float64 time ``t``."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return Coeffs(t, path.alpha(t), path.sigma(t), path.log_snr(t), path.d_alpha(t), path.d_sigma(t))


def time_batch(t: Tensor, x: Tensor) -> Tensor:
    """A scalar time repeated to ``(batch,)`` in float64 on ``x``'s device (models cast as they need)."""
    return torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])


def model_x0(model: ModelBase, x: Tensor, t: Tensor, cond: dict | None) -> Tensor:
    """One model call: the x0 prediction at scalar time ``t``, in ``x``'s dtype."""
    return model.predict(x, time_batch(t, x), "x0", **(cond or {})).to(x.dtype)
