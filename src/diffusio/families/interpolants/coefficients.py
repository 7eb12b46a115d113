"""Stochastic-interpolant coefficients a(t), b(t), gamma(t), the interpolant x_t = a x_0 + b x_1 + gamma z with its
boundary checks (Albergo, Boffi & Vanden-Eijnden 2023, Def. 2.1), its library Path form, and the diffusion
schedules epsilon(t) of the SDE family (Thm. 2.21). Paper time: t = 0 is rho_0, t = 1 is rho_1."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusio.core.paths import Path
from diffusio.core.time import broadcast

_F64 = torch.float64


# --- coefficients: values with value(t) and deriv(t) -----------------------------------------------------------
class Coefficient(ABC):
    """A scalar function of time: ``value(t)`` and ``deriv(t)`` elementwise on a tensor ``t``."""

    @abstractmethod
    def value(self, t: Tensor) -> Tensor:
        """The coefficient at ``t``."""

    @abstractmethod
    def deriv(self, t: Tensor) -> Tensor:
        """Its time derivative at ``t``."""


@dataclass(frozen=True)
class LinearUp(Coefficient):
    """b(t) = t."""

    def value(self, t):
        return t

    def deriv(self, t):
        return torch.ones_like(t)


@dataclass(frozen=True)
class LinearDown(Coefficient):
    """a(t) = 1 - t."""

    def value(self, t):
        return 1 - t

    def deriv(self, t):
        return -torch.ones_like(t)


@dataclass(frozen=True)
class SineUp(Coefficient):
    """b(t) = sin(pi t / 2)."""

    def value(self, t):
        return torch.sin(math.pi / 2 * t)

    def deriv(self, t):
        return math.pi / 2 * torch.cos(math.pi / 2 * t)


@dataclass(frozen=True)
class CosineDown(Coefficient):
    """a(t) = cos(pi t / 2)."""

    def value(self, t):
        return torch.cos(math.pi / 2 * t)

    def deriv(self, t):
        return -math.pi / 2 * torch.sin(math.pi / 2 * t)


class Gamma(Coefficient):
    """A latent-noise coefficient: ``value``, ``deriv`` and the product ``gg_dot = gamma gamma'`` (smooth even where
    gamma' is singular, e.g. gamma = sqrt(t(1-t)) at t = 0, 1)."""

    def gg_dot(self, t: Tensor) -> Tensor:
        return self.value(t) * self.deriv(t)


@dataclass(frozen=True)
class FunctionCoefficient(Gamma):
    """Any coefficient from two callables ``fn(t)`` and ``d_fn(t)`` (checked by :class:`Interpolant`)."""

    fn: Callable[[Tensor], Tensor]
    d_fn: Callable[[Tensor], Tensor]

    def value(self, t):
        return self.fn(t)

    def deriv(self, t):
        return self.d_fn(t)


@dataclass(frozen=True)
class ZeroGamma(Gamma):
    """gamma = 0: a deterministic interpolant (one-sided with a Gaussian base, or a plain two-data-set flow)."""

    def value(self, t):
        return torch.zeros_like(t)

    def deriv(self, t):
        return torch.zeros_like(t)

    def gg_dot(self, t):
        return torch.zeros_like(t)


@dataclass(frozen=True)
class BrownianGamma(Gamma):
    """gamma = sqrt(k t (1 - t)) (the Brownian-bridge choice, paper Sec. 3.2); gamma gamma' = k (1 - 2t) / 2."""

    k: float = 1.0

    def __post_init__(self):
        if not self.k > 0:
            raise ValueError(f"BrownianGamma: k must be > 0, got {self.k}")

    def value(self, t):
        return torch.sqrt((self.k * t * (1 - t)).clamp(min=0))

    def deriv(self, t):
        return self.gg_dot(t) / self.value(t)

    def gg_dot(self, t):
        return self.k * (1 - 2 * t) / 2


@dataclass(frozen=True)
class ScaledGamma(Gamma):
    """gamma = c t (1 - t) (smooth at the ends; c > 0)."""

    c: float = 1.0

    def __post_init__(self):
        if not self.c > 0:
            raise ValueError(f"ScaledGamma: c must be > 0, got {self.c}")

    def value(self, t):
        return self.c * t * (1 - t)

    def deriv(self, t):
        return self.c * (1 - 2 * t)


# --- the interpolant ----------------------------------------------------------------------------------------------
class Interpolant:
    """``Interpolant(a, b, gamma)``: x_t = a(t) x_0 + b(t) x_1 + gamma(t) z on t in [0, 1].

    Boundary conditions (paper Def. 2.1) are checked at construction: a(0) = 1, a(1) = 0, b(0) = 0, b(1) = 1,
    gamma(0) = gamma(1) = 0, gamma >= 0, and each ``deriv`` must match finite differences of ``value``.
    Defaults: the linear two-sided interpolant with gamma = sqrt(t(1-t)). ``gamma = ZeroGamma()`` is one-sided
    (with a Gaussian base) or a deterministic bridge.
    """

    def __init__(self, a: Coefficient | None = None, b: Coefficient | None = None, gamma: Gamma | None = None):
        self.a = a if a is not None else LinearDown()
        self.b = b if b is not None else LinearUp()
        self.gamma = gamma if gamma is not None else BrownianGamma()
        _check_boundary(self)

    @property
    def stochastic(self) -> bool:
        """True when gamma is not identically zero (a latent z term is present)."""
        return not isinstance(self.gamma, ZeroGamma)

    def coeffs(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(a, b, gamma) at ``t`` ``(B,)``, broadcast against ``x`` ``(B, ...)``."""
        return tuple(broadcast(c.value(t), x) for c in (self.a, self.b, self.gamma))

    def interpolate(self, x0: Tensor, x1: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """x_t = a x_0 + b x_1 + gamma z; all ``(B, ...)``, ``t`` ``(B,)``."""
        a, b, g = self.coeffs(t, x0)
        return a * x0 + b * x1 + g * z

    def d_interpolate(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """dI/dt = a' x_0 + b' x_1 (the velocity target without the gamma' z term)."""
        return broadcast(self.a.deriv(t), x0) * x0 + broadcast(self.b.deriv(t), x0) * x1

    def as_path(self, t_min: float = 1e-3, t_max: float = 1 - 1e-3) -> InterpolantPath:
        """The one-sided Gaussian interpolant as a library Path (t_lib = 1 - t, alpha = b, sigma = a)."""
        if self.stochastic:
            raise ValueError("as_path needs a one-sided interpolant (gamma = ZeroGamma()); this one has gamma > 0")
        return InterpolantPath(self, t_min, t_max)

    def __repr__(self) -> str:
        return f"Interpolant(a={self.a!r}, b={self.b!r}, gamma={self.gamma!r})"


def _check_boundary(it: Interpolant) -> None:
    """Raise a ValueError naming the coefficient whose boundary value, sign or derivative is wrong."""
    ends = torch.tensor([0.0, 1.0], dtype=_F64)
    want = {"a": (1.0, 0.0), "b": (0.0, 1.0), "gamma": (0.0, 0.0)}
    for name, (v0, v1) in want.items():
        got = getattr(it, name).value(ends)
        if not (abs(float(got[0]) - v0) < 1e-6 and abs(float(got[1]) - v1) < 1e-6):
            raise ValueError(
                f"interpolant coefficient {name} must satisfy {name}(0) = {v0:g} and {name}(1) = {v1:g} (so that x_t "
                f"is x_0 at t = 0 and x_1 at t = 1); got {name}(0) = {float(got[0]):.6g}, "
                f"{name}(1) = {float(got[1]):.6g}"
            )
    t = torch.linspace(0.02, 0.98, 49, dtype=_F64)
    g = it.gamma.value(t)
    if (g < 0).any() or (it.stochastic and not (g > 0).all()):
        raise ValueError("interpolant coefficient gamma must be > 0 on (0, 1) (or use ZeroGamma() for none)")
    h = 1e-6
    for name in ("a", "b", "gamma"):
        c = getattr(it, name)
        fd = (c.value(t + h) - c.value(t - h)) / (2 * h)
        if not torch.allclose(c.deriv(t), fd, rtol=1e-4, atol=1e-5):
            raise ValueError(f"interpolant coefficient {name}: deriv(t) does not match the derivative of value(t)")


class InterpolantPath(Path):
    """A one-sided interpolant x = a x_0 + b x_1 (x_0 ~ N(0, I)) in library time: alpha(t) = b(1 - t),
    sigma(t) = a(1 - t). The inverse log-SNR is found by bisection (lambda must be decreasing)."""

    name = "interpolant"
    t_lo, t_hi = 0.0, 1.0

    def __init__(self, interpolant: Interpolant, t_min: float = 1e-3, t_max: float = 1 - 1e-3):
        self.interpolant, self.t_min, self.t_max = interpolant, t_min, t_max
        lam = self.log_snr(torch.linspace(t_min, t_max, 201, dtype=_F64))
        if not (lam[1:] < lam[:-1]).all():
            raise ValueError("this interpolant's log(b/a) is not monotone in t; it has no library Path form")

    def alpha(self, t):
        return self.interpolant.b.value(1 - t)

    def sigma(self, t):
        return self.interpolant.a.value(1 - t)

    def d_alpha(self, t):
        return -self.interpolant.b.deriv(1 - t)

    def d_sigma(self, t):
        return -self.interpolant.a.deriv(1 - t)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        lo, hi = torch.zeros_like(lam) + 1e-12, torch.ones_like(lam) - 1e-12
        for _ in range(80):  # bisection to float64 resolution
            mid = (lo + hi) / 2
            above = self.log_snr(mid) > lam  # lambda decreasing: the root lies to the right
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return (lo + hi) / 2

    def config(self) -> dict:
        raise ValueError("an InterpolantPath has no compact config; store the interpolant's coefficients instead")

    def __repr__(self) -> str:
        return f"InterpolantPath({self.interpolant!r})"


@dataclass(frozen=True)
class ConstantEpsilon:
    """epsilon(t) = c >= 0 (the official demos use c in 0.1 .. 1)."""

    c: float = 0.5

    def __post_init__(self):
        if not self.c >= 0:
            raise ValueError(f"epsilon must be >= 0 (it is a diffusion coefficient); got c = {self.c}")

    def __call__(self, t: Tensor) -> Tensor:
        return torch.full_like(t, self.c)


@dataclass(frozen=True)
class TapEpsilon:
    """epsilon(t) = c sin^2(pi t): noise that vanishes at both ends, where the score is singular (c >= 0)."""

    c: float = 1.0

    def __post_init__(self):
        if not self.c >= 0:
            raise ValueError(f"epsilon must be >= 0 (it is a diffusion coefficient); got c = {self.c}")

    def __call__(self, t: Tensor) -> Tensor:
        return self.c * torch.sin(math.pi * t) ** 2
