"""The stochastic-interpolant training objective (Albergo, Boffi & Vanden-Eijnden 2023, Eqs. 2.13, 2.16, 3.7)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffusio.core.time import broadcast
from diffusio.families.interpolants.coefficients import Interpolant, InterpolantPath
from diffusio.families.interpolants.fields import InterpolantModel, noise_coefficient

_F64 = torch.float64


@dataclass
class InterpolantLoss:
    """Quadratic objectives of the paper (Eqs. 2.13, 2.16; one-sided Eq. 3.7) for the heads of an
    :class:`InterpolantModel`: velocity -> a' x_0 + b' x_1 + gamma' z, eta -> the Gaussian part (z or x_0).

    ``base`` draws x_0 (``None``: N(0, I); else anything with ``sample(n, generator) -> (x, cond)``, for bridges
    between two data sets). The Trainer's data batch is x_1. ``antithetic`` evaluates each sample at
    I +- gamma z with targets from +-z (Sec. 6.1: removes the gamma'(t) z / z variance at the ends).
    t ~ U[t_lo, t_hi]. Per-sample loss ``(B,)``, summed over heads and averaged over dimensions.
    """

    base: object | None = None
    t_lo: float = 1e-3
    t_hi: float = 1 - 1e-3
    antithetic: bool = True

    def __post_init__(self):
        if not 0 <= self.t_lo < self.t_hi <= 1:
            raise ValueError(f"need 0 <= t_lo < t_hi <= 1; got t_lo={self.t_lo}, t_hi={self.t_hi}")

    def draw(self, x1: Tensor, path: Interpolant | InterpolantPath, generator: torch.Generator | None = None):
        """Paper times ``(B,)`` and the stacked noise ``(B, 2, ...)`` = (x_0, z) for one batch of data ``x1``
        (``path``: the model's path, as the Trainer passes it, or the interpolant; only its noise is used)."""
        n = x1.shape[0]
        t = self.t_lo + (self.t_hi - self.t_lo) * torch.rand(n, generator=generator, dtype=_F64)
        if self.base is None:
            x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype)
        else:
            x0 = self.base.sample(n, generator)[0].to(x1.dtype)
            if x0.shape != x1.shape:
                raise ValueError(f"base draws have shape {tuple(x0.shape)}; the data {tuple(x1.shape)}")
        z = torch.randn(x1.shape, generator=generator, dtype=x1.dtype)
        return t.to(x1.device), torch.stack([x0, z], 1).to(x1.device)

    def __call__(self, model: InterpolantModel, x1: Tensor, t: Tensor, noise: Tensor, cond: dict | None = None):
        it = model.interpolant
        x0, z = noise.unbind(1)
        signs = (1.0, -1.0) if (self.antithetic and it.stochastic) else (1.0,)
        total = x1.new_zeros(x1.shape[0])
        for sgn in signs:
            xt = it.interpolate(x0, x1, sgn * z, t)
            out = model.fields(xt, t)
            for head, pred in out.items():
                total = total + (pred - self._target(head, it, model, x0, x1, sgn * z, t)).pow(2).flatten(1).mean(1)
        return total / len(signs)

    @staticmethod
    def _target(head: str, it: Interpolant, model: InterpolantModel, x0, x1, z, t) -> Tensor:
        if head == "velocity":
            return it.d_interpolate(x0, x1, t) + broadcast(it.gamma.deriv(t), z) * z
        noise_coefficient(it, model.gaussian_base)  # raises if there is no Gaussian part
        return z if it.stochastic else x0
