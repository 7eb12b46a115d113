"""Stochastic interpolants x_t = a(t) x_0 + b(t) x_1 + gamma(t) z (Albergo, Boffi & Vanden-Eijnden 2023,
arXiv 2303.08797, Def. 2.1): one- and two-sided, velocity and denoiser objectives, the transport ODE and the SDE
family with a free diffusion epsilon(t) >= 0 that keeps the marginals, and data-to-data bridges.

Time convention: this module uses the paper's time, t in [0, 1] from rho_0 (t = 0) to rho_1 (t = 1). For
generation rho_0 = N(0, I) is the noise and rho_1 the data, so the library's time is t_lib = 1 - t; the one-sided
Gaussian case converts to a library :class:`~diffusio.paths.Path` with :meth:`Interpolant.as_path`.

Fields (all functions of (x, t), in the paper's notation):
  velocity  v(t, x) = E[a' x_0 + b' x_1 + gamma' z | x_t = x]            (paper: b; Eq. 2.10)
  denoiser  eta(t, x) = E[g | x_t = x] for the Gaussian part g of x_t: g = z with coefficient gamma (two-sided),
            or g = x_0 with coefficient a (one-sided, Gaussian base);  score s = -eta / coefficient.
  ODE  dX = v dt;  forward SDE  dX = (v + eps s) dt + sqrt(2 eps) dW;  backward SDE  dX = (v - eps s) dt +
  sqrt(2 eps) dW_bar with time running 1 -> 0 (Thm. 2.21-2.22). All have the marginals of x_t.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffusio.core.paths import Path
from diffusio.core.time import as_time, broadcast
from diffusio.data.gmm import GaussianMixture

__all__ = [
    "BrownianGamma",
    "Coefficient",
    "ConstantEpsilon",
    "CosineDown",
    "FunctionCoefficient",
    "GaussianMixtureFields",
    "Interpolant",
    "InterpolantLoss",
    "InterpolantModel",
    "InterpolantPath",
    "LinearDown",
    "LinearUp",
    "ScaledGamma",
    "SineUp",
    "TapEpsilon",
    "ZeroGamma",
    "generate",
    "sample_ode",
    "sample_sde",
]

_F64 = torch.float64


# --- coefficients: values with value(t) and deriv(t) -----------------------------------------------------------
class Coefficient:
    """A scalar function of time: ``value(t)`` and ``deriv(t)`` elementwise on a tensor ``t``."""

    def value(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def deriv(self, t: Tensor) -> Tensor:
        raise NotImplementedError


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


# --- fields: learned and exact ------------------------------------------------------------------------------------
class InterpolantModel(nn.Module):
    """A network ``net(x, t) -> (B, k * C, ...)`` read as the heads ``heads`` (split along dim 1), for ``interpolant``.

    ``heads`` are among ``"velocity"`` and ``"eta"`` (denoiser of the Gaussian part). ``gaussian_base`` says whether
    rho_0 = N(0, I), which makes a one-sided model's eta = E[x_0 | x_t] a score. ``t`` is the paper's time.
    """

    HEADS = ("velocity", "eta")

    def __init__(
        self,
        net: nn.Module,
        interpolant: Interpolant,
        heads: Sequence[str] = ("velocity", "eta"),
        gaussian_base: bool = True,
    ):
        super().__init__()
        bad = [h for h in heads if h not in self.HEADS]
        if bad or not heads or len(set(heads)) != len(heads):
            raise ValueError(f"heads must be distinct names among {', '.join(self.HEADS)}; got {list(heads)}")
        self.net, self.interpolant, self.heads, self.gaussian_base = net, interpolant, tuple(heads), gaussian_base

    @property
    def path(self) -> Interpolant:
        """The interpolant (the Trainer passes ``model.path`` to the loss's ``draw``)."""
        return self.interpolant

    def with_net(self, net: nn.Module) -> InterpolantModel:
        return InterpolantModel(net, self.interpolant, self.heads, self.gaussian_base)

    def fields(self, x: Tensor, t: Tensor) -> dict[str, Tensor]:
        """All heads at ``x`` ``(B, ...)`` and ``t`` ``(B,)``."""
        dtype = next(self.net.parameters()).dtype
        out = self.net(x.to(dtype), t.to(dtype)).to(x.dtype)
        return dict(zip(self.heads, out.chunk(len(self.heads), dim=1)))

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        return self._head("velocity", x, t)

    def eta(self, x: Tensor, t: Tensor) -> Tensor:
        return self._head("eta", x, t)

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """s = -eta / c(t) with c = gamma (two-sided) or a (one-sided, Gaussian base)."""
        return -self.eta(x, t) / broadcast(noise_coefficient(self.interpolant, self.gaussian_base)(t), x)

    def velocity_and_score(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(v, s) from one network call."""
        out = self.fields(x, t)
        for name in ("velocity", "eta"):
            if name not in out:
                raise ValueError(f"the SDE needs a {name!r} head; this model has {', '.join(self.heads)}")
        c = noise_coefficient(self.interpolant, self.gaussian_base)(t)
        return out["velocity"], -out["eta"] / broadcast(c, x)

    def _head(self, name: str, x: Tensor, t: Tensor) -> Tensor:
        if name not in self.heads:
            raise ValueError(f"this model has no {name!r} head (heads: {', '.join(self.heads)}); train it with one")
        return self.fields(x, t)[name]


def noise_coefficient(interpolant: Interpolant, gaussian_base: bool) -> Callable[[Tensor], Tensor]:
    """The coefficient of the Gaussian part of x_t whose conditional mean eta estimates: gamma, or a."""
    if interpolant.stochastic:
        return interpolant.gamma.value
    if gaussian_base:
        return interpolant.a.value
    raise ValueError("a one-sided interpolant between two data sets (gamma = 0) has no score; use gamma > 0")


class GaussianMixtureFields:
    """Exact v, eta and score of an interpolant between two Gaussian mixtures ``rho0``, ``rho1`` (independent
    coupling), in float64. Component pair (i, j) of x_t is Gaussian with mean m = a m0_i + b m1_j and covariance
    S = a^2 C0_i + b^2 C1_j + gamma^2 I; E[a' x0 + b' x1 + gamma' z | x, (i, j)] = a' m0_i + b' m1_j +
    (a a' C0_i + b b' C1_j + gamma gamma' I) S^-1 (x - m), mixed with the posterior weights of the pairs.
    """

    def __init__(self, interpolant: Interpolant, rho0: GaussianMixture, rho1: GaussianMixture):
        if rho0.D != rho1.D:
            raise ValueError(f"rho0 and rho1 must have the same dimension; got {rho0.D} and {rho1.D}")
        self.interpolant, self.rho0, self.rho1, self.D = interpolant, rho0, rho1, rho0.D

    @staticmethod
    def _covs(g: GaussianMixture, diagonal: bool) -> Tensor:
        """Component covariances: ``(K, D)`` diagonals when ``diagonal``, else ``(K, D, D)``."""
        if diagonal:
            return g.evals
        e = torch.diag_embed(g.evals)
        return e if g.U is None else g.U @ e @ g.U.mT

    def _pairs(self, x: Tensor, t: Tensor):
        """Posterior pair weights ``(B, K0, K1, 1)``, S^-1 (x - m) ``(B, K0, K1, D)`` and the covariances."""
        it = self.interpolant
        diag = self.rho0.U is None and self.rho1.U is None  # then every S is diagonal: no linear solves
        a, b, g = (c.value(t)[:, None, None, None] for c in (it.a, it.b, it.gamma))
        c0, c1 = self._covs(self.rho0, diag)[None, :, None], self._covs(self.rho1, diag)[None, None, :]
        m = a * self.rho0.means[None, :, None] + b * self.rho1.means[None, None, :]  # (B, K0, K1, D)
        r = x[:, None, None, :] - m
        if diag:
            S = a**2 * c0 + b**2 * c1 + g**2  # (B, K0, K1, D)
            sol, logdet = r / S, torch.log(S).sum(-1)
        else:
            S = a[..., None] ** 2 * c0 + b[..., None] ** 2 * c1 + g[..., None] ** 2 * torch.eye(self.D, dtype=_F64)
            sol, logdet = torch.linalg.solve(S, r.unsqueeze(-1)).squeeze(-1), torch.linalg.slogdet(S)[1]
        lw = self.rho0.log_weights[None, :, None] + self.rho1.log_weights[None, None, :]
        logp = lw - 0.5 * (logdet + (r * sol).sum(-1) + self.D * math.log(2 * math.pi))
        w = torch.softmax(logp.flatten(1), 1).reshape(logp.shape)[..., None]
        return w, sol, c0, c1

    def _prep(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return x.reshape(x.shape[0], -1).to(_F64), as_time(t, x).to(_F64)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact v(t, x) ``(B, ...)``."""
        xf, t = self._prep(x, t)
        return self._velocity(*self._pairs(xf, t), t).reshape(x.shape)

    def _velocity(self, w, sol, c0, c1, t) -> Tensor:
        it = self.interpolant
        a, b = (c.value(t)[:, None, None, None] for c in (it.a, it.b))
        da, db = (c.deriv(t)[:, None, None, None] for c in (it.a, it.b))
        ggd = it.gamma.gg_dot(t)[:, None, None, None]
        mean = da * self.rho0.means[None, :, None] + db * self.rho1.means[None, None, :]
        if c0.ndim == 4:  # diagonal covariances
            v = mean + ((a * da) * c0 + (b * db) * c1) * sol + ggd * sol
        else:
            gain = (a * da)[..., None] * c0 + (b * db)[..., None] * c1
            v = mean + (gain @ sol.unsqueeze(-1)).squeeze(-1) + ggd * sol
        return (w * v).sum((1, 2))

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact grad log rho(t, x) ``(B, ...)``."""
        xf, t = self._prep(x, t)
        w, sol, _, _ = self._pairs(xf, t)
        return -(w * sol).sum((1, 2)).reshape(x.shape)

    def velocity_and_score(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(v, s) sharing one pass over the component pairs."""
        xf, t = self._prep(x, t)
        w, sol, c0, c1 = self._pairs(xf, t)
        return self._velocity(w, sol, c0, c1, t).reshape(x.shape), -(w * sol).sum((1, 2)).reshape(x.shape)

    def eta(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact E[z | x_t = x] = gamma S^-1 (x - m), mixed (two-sided)."""
        _, tt = self._prep(x, t)
        return -broadcast(self.interpolant.gamma.value(tt), x.to(_F64)) * self.score(x, t)


# --- samplers (paper time, any direction) -------------------------------------------------------------------------
def _tb(t: Tensor, x: Tensor) -> Tensor:
    return torch.as_tensor(t, dtype=_F64, device=x.device).expand(x.shape[0])


@torch.no_grad()
def sample_ode(fields, x: Tensor, ts: Tensor, *, callback: Callable | None = None) -> Tensor:
    """Heun's method on the transport ODE dX/dt = v(t, X) over the grid ``ts`` (increasing: rho_0 -> rho_1;
    decreasing: backward). ``x``: ``(B, ...)`` draws at ``ts[0]``. 2 field calls per step (paper Sec. 6)."""
    for i in range(len(ts) - 1):
        h = float(ts[i + 1] - ts[i])
        d = fields.velocity(x, _tb(ts[i], x)).to(x.dtype)
        x_e = x + h * d
        x = x + 0.5 * h * (d + fields.velocity(x_e, _tb(ts[i + 1], x)).to(x.dtype))
        if callback is not None:
            callback(i, float(ts[i + 1]), x)
    return x


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


@torch.no_grad()
def sample_sde(
    fields,
    x: Tensor,
    ts: Tensor,
    epsilon: Callable[[Tensor], Tensor] | float,
    *,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
) -> Tensor:
    """Euler–Maruyama on the SDE family with diffusion ``epsilon(t) >= 0`` (paper Thm. 2.21, Eqs. 2.33-2.34).

    Increasing ``ts``: forward SDE dX = (v + eps s) dt + sqrt(2 eps) dW. Decreasing ``ts``: backward SDE
    dX = (v - eps s) dt + sqrt(2 eps) dW_bar. Every epsilon gives the same marginals; ``epsilon = 0`` is the ODE.
    ``fields`` provides ``velocity(x, t)`` and ``velocity_and_score(x, t)``; ``x``: ``(B, ...)`` draws at ``ts[0]``.
    """
    eps_fn = ConstantEpsilon(float(epsilon)) if isinstance(epsilon, int | float) else epsilon
    for i in range(len(ts) - 1):
        t, dt = ts[i], float(ts[i + 1] - ts[i])
        e = float(eps_fn(torch.as_tensor(t, dtype=_F64)))
        if not e >= 0:
            raise ValueError(f"epsilon(t) must be >= 0 at every step; got epsilon({float(t):.4g}) = {e:.4g}")
        tb = _tb(t, x)
        if e > 0:
            v, s = fields.velocity_and_score(x, tb)
            drift = v.to(x.dtype) + math.copysign(e, dt) * s.to(x.dtype)
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + drift * dt + math.sqrt(2 * e * abs(dt)) * z
        else:
            x = x + fields.velocity(x, tb).to(x.dtype) * dt
        if callback is not None:
            callback(i, float(ts[i + 1]), x)
    return x


# --- the training objective --------------------------------------------------------------------------------------
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

    def draw(self, x1: Tensor, interpolant: Interpolant, generator: torch.Generator | None = None):
        """Times ``(B,)`` and the stacked noise ``(B, 2, ...)`` = (x_0, z) for one batch of data ``x1``."""
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


def generate(
    model: InterpolantModel,
    x0: Tensor,
    steps: int = 100,
    epsilon: float | Callable[[Tensor], Tensor] = 0.0,
    *,
    t_lo: float = 1e-3,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """Carry draws ``x0`` ``(B, ...)`` of rho_0 to rho_1: the ODE (Heun on [0, 1], 2 calls per step) when
    ``epsilon`` is 0, else the forward SDE (Euler–Maruyama on [t_lo, 1 - t_lo], where the learned score
    -eta/gamma stays finite; 1 call per step). Returns (samples, field evaluations per sample)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    if isinstance(epsilon, int | float) and epsilon == 0:
        ts = torch.linspace(0.0, 1.0, steps + 1, dtype=_F64)
        return sample_ode(model, x0, ts), 2 * steps
    ts = torch.linspace(t_lo, 1 - t_lo, steps + 1, dtype=_F64)
    return sample_sde(model, x0, ts, epsilon, generator=generator), steps
