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

__all__ = ["Coeffs", "as_time", "batch_coeffs", "broadcast", "coeffs", "time_batch"]


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
    """The one record of a path's quantities at a time: alpha, sigma, the half log-SNR lambda = log(alpha/sigma)
    and the t-derivatives alpha', sigma'.

    Three forms: :func:`coeffs` evaluates a grid point (every field a float64 scalar tensor; the one-step kernels),
    :meth:`floats` turns those into Python floats (the multistep solvers' scalar arithmetic, cheaper than 0-dim
    tensors), :func:`batch_coeffs` evaluates a ``(batch,)`` time with each field shaped to broadcast against the
    data (the parametrization hub; fields it was not asked for are ``None``). ``t`` stays a tensor.
    """

    t: Tensor
    alpha: Tensor | float
    sigma: Tensor | float
    lam: Tensor | float | None = None
    d_alpha: Tensor | float | None = None
    d_sigma: Tensor | float | None = None

    def floats(self) -> Coeffs:
        """The same record with every scalar field a Python float."""
        f = [None if v is None else float(v) for v in (self.alpha, self.sigma, self.lam, self.d_alpha, self.d_sigma)]
        return Coeffs(self.t, *f)


def coeffs(path: Path, t: Tensor | float) -> Coeffs:
    """Evaluate the path at a scalar float64 time ``t`` (all fields)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return Coeffs(t, path.alpha(t), path.sigma(t), path.log_snr(t), path.d_alpha(t), path.d_sigma(t))


def batch_coeffs(path: Path, t: Tensor, x: Tensor, *, derivatives: bool = False) -> Coeffs:
    """alpha, sigma (and with ``derivatives`` alpha', sigma') at ``t`` ``(batch,)``, broadcast against ``x``.

    A single time expanded over the batch (what samplers pass) is evaluated once: the coefficients are then
    ``(1, 1, ...)`` and broadcast against ``x``.
    """
    if t.ndim == 1 and t.shape[0] > 1 and t.stride(0) == 0:
        t = t[:1]
    a, s = broadcast(path.alpha(t), x), broadcast(path.sigma(t), x)
    if not derivatives:
        return Coeffs(t, a, s)
    return Coeffs(t, a, s, None, broadcast(path.d_alpha(t), x), broadcast(path.d_sigma(t), x))


def time_batch(t: Tensor, x: Tensor) -> Tensor:
    """A scalar time repeated to ``(batch,)`` in float64 on ``x``'s device (models cast as they need)."""
    return torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
