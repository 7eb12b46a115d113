"""Time handling shared by every layer: ``(batch,)`` time tensors, broadcasting and per-time path coefficients.

Inside the library a time is a ``(batch,)`` tensor in the path's native convention (data at ``t_min``, prior at
``t_max``); :func:`as_time` makes one from a scalar, :func:`time_batch` repeats a grid point over a batch in
float64, :func:`broadcast` shapes a per-sample coefficient against data, and :class:`Coeffs` is the one record of
a path's quantities at a time point (used by every one-step kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from diffusio.core.paths import Path

__all__ = ["Coeffs", "as_time", "broadcast", "coeffs", "time_batch"]


def broadcast(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient ``(batch,)`` or scalar to broadcast against ``x`` ``(batch, ...)``."""
    coef = torch.as_tensor(coef, device=x.device)
    if coef.ndim == 0:
        return coef.to(x.dtype)
    return coef.to(x.dtype).reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


def as_time(t: Tensor | float, x: Tensor) -> Tensor:
    """Return ``t`` as a ``(batch,)`` tensor on ``x``'s device; a scalar is repeated over the batch."""
    t = torch.as_tensor(t, device=x.device)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must have shape (batch,) = ({x.shape[0]},) or be a scalar; got {tuple(t.shape)}")
    return t


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
