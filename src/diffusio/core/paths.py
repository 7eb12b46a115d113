"""Forward processes x_t = alpha(t) x0 + sigma(t) eps (Kingma et al. 2021, Eq. 1; Karras et al. 2022,
Eq. 12).

A path owns its coefficients, their time derivatives, the half log-SNR lambda(t) = log(alpha/sigma) and its
inverse. Time runs from data (``t_min``) to noise (``t_max``); ``t`` is a tensor of shape ``(batch,)`` or a
scalar tensor, and every method works elementwise in the dtype of ``t``.

Variance-preserving paths (alpha^2 + sigma^2 = 1) are defined by lambda(t) alone: alpha^2 = sigmoid(2 lambda),
and the derivatives follow from d alpha/d lambda = alpha sigma^2, d sigma/d lambda = -sigma alpha^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from diffusio.core.time import broadcast

__all__ = [
    "EDM",
    "VE",
    "CosineVP",
    "DiscreteDDPM",
    "LinearVP",
    "Path",
    "RectifiedFlow",
    "Trigonometric",
    "VPPath",
]


class Path:
    """A Gaussian forward process. Subclasses define ``alpha``, ``sigma``, ``d_alpha``, ``d_sigma``,
    ``t_of_log_snr`` and the interval ``[t_min, t_max]`` on which samplers integrate by default.

    ``t_lo``/``t_hi`` bound the closed domain where the formulas hold (``t_min``/``t_max`` lie inside it and
    keep lambda finite, which log-SNR solvers need).

    Usable domain. An end where lambda is infinite is *singular*: at the data end of a VP, flow or trigonometric
    path sigma = 0 (lambda = +inf, so eps = (x - alpha x0)/sigma is 0/0), at the noise end of the flow and
    trigonometric paths alpha = 0 (lambda = -inf, x0 = (x - sigma eps)/alpha is 0/0). ``singular_ends()`` names
    them. A model may be evaluated anywhere in ``[t_lo, t_hi]`` (a velocity network is finite at alpha = 0), but a
    sampling grid never ends on a singular data end (``check_t(..., grid=True)`` refuses it with the usable
    minimum: sample down to ``t_min`` and pass ``denoise=True`` for the limit x0), and the front door
    ``diffusio.samplers.sample`` refuses a singular noise end for the solvers that work in log-SNR.
    """

    name: str = "path"
    t_min: float
    t_max: float
    t_lo: float
    t_hi: float

    # --- coefficients (subclasses) -----------------------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        """Time derivative of alpha."""
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        """Time derivative of sigma."""
        raise NotImplementedError

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of ``log_snr``."""
        raise NotImplementedError

    # --- derived quantities (written once) ---------------------------------------------------------------
    def log_snr(self, t: Tensor) -> Tensor:
        """Half log-SNR lambda(t) = log(alpha/sigma), strictly decreasing in t."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def d_log_snr(self, t: Tensor) -> Tensor:
        """d lambda / dt = alpha'/alpha - sigma'/sigma (negative)."""
        return self.d_alpha(t) / self.alpha(t) - self.d_sigma(t) / self.sigma(t)

    def drift(self, t: Tensor) -> Tensor:
        """f(t) = alpha'/alpha of the equivalent linear SDE dx = f x dt + g dW."""
        return self.d_alpha(t) / self.alpha(t)

    def diffusion2(self, t: Tensor) -> Tensor:
        """g^2(t) = -2 sigma^2 lambda'(t) of the equivalent linear SDE."""
        return -2 * self.sigma(t) ** 2 * self.d_log_snr(t)

    def noise_level(self, t: Tensor) -> Tensor:
        """The VE-equivalent noise level sigma/alpha = exp(-lambda) of x_t / alpha."""
        return self.sigma(t) / self.alpha(t)

    def t_of_noise_level(self, s: Tensor) -> Tensor:
        """Inverse of ``noise_level``."""
        return self.t_of_log_snr(-torch.log(s))

    def net_time(self, t: Tensor) -> Tensor:
        """What a network is fed as its time input: ``t`` itself on bounded paths."""
        return t

    def perturb(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) noise; ``x0``, ``noise``: ``(batch, ...)``; ``t``: ``(batch,)``."""
        return broadcast(self.alpha(t), x0) * x0 + broadcast(self.sigma(t), x0) * noise

    def noise_sample(
        self, shape: tuple[int, ...], *, generator: torch.Generator | None = None, device=None, dtype=None
    ) -> Tensor:
        """A draw of the unit-scale noise of ``perturb``: N(0, I) here; heavy-tailed kernels (PFGM++) override it."""
        return torch.randn(shape, generator=generator, device=device, dtype=dtype or torch.get_default_dtype())

    def prior_sample(
        self, shape: tuple[int, ...], *, generator: torch.Generator | None = None, device=None, dtype=None
    ) -> Tensor:
        """A draw from the prior at ``t_max``: ``sigma(t_max) * noise`` (alpha(t_max) x0 is negligible)."""
        z = self.noise_sample(shape, generator=generator, device=device, dtype=dtype)
        return z * float(self.sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    def singular_ends(self) -> tuple[bool, bool]:
        """``(data_end, noise_end)``: whether lambda is infinite at ``t_lo`` / ``t_hi`` (see the class docstring)."""
        with torch.no_grad():
            ends = torch.tensor([self.t_lo, self.t_hi], dtype=torch.float64)
            if not math.isfinite(self.t_hi):
                return (not math.isfinite(float(self.log_snr(ends[:1]))), False)
            lam = self.log_snr(ends)
        return (not math.isfinite(float(lam[0])), not math.isfinite(float(lam[1])))

    def check_t(self, t: Tensor, name: str = "t", *, grid: bool = False) -> None:
        """Raise a clear error if ``t`` leaves the path's domain ``[t_lo, t_hi]``; with ``grid=True`` (sampling
        grids) also if it touches a singular data end, where every solver's formulas divide by sigma = 0."""
        t = torch.as_tensor(t)
        if torch.isnan(t).any():
            raise ValueError(f"{name} contains NaN")
        lo, hi = float(t.min()), float(t.max())
        tol = 1e-9 * max(1.0, abs(self.t_hi))
        if lo < self.t_lo - tol or hi > self.t_hi + tol:
            raise ValueError(
                f"{name} must lie in [{self.t_lo:g}, {self.t_hi:g}] for path {self.name!r}; got values in "
                f"[{lo:g}, {hi:g}]"
            )
        if grid and lo <= self.t_lo and self.singular_ends()[0]:
            raise ValueError(
                f"{name} reaches t = {self.t_lo:g}, the singular data end of path {self.name!r} (sigma = 0, log-SNR "
                f"= +inf; the solvers' formulas divide by zero there): sampling grids must stay above it (usable "
                f"domain ({self.t_lo:g}, {self.t_hi:g}]); end at the path's t_min = {self.t_min:g} (the default) and "
                "pass denoise=True for the x0 prediction there"
            )

    def config(self) -> dict:
        """Constructor arguments as a JSON-able dict (with ``name``), for checkpoints and configs."""
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class VPPath(Path):
    """VP path given by lambda(t): alpha = sqrt(sigmoid(2 lambda)), sigma = sqrt(sigmoid(-2 lambda))."""

    def lam(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_lam(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def log_snr(self, t: Tensor) -> Tensor:
        return self.lam(t)

    def d_log_snr(self, t: Tensor) -> Tensor:
        return self.d_lam(t)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * F.logsigmoid(2 * self.lam(t)))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * F.logsigmoid(-2 * self.lam(t)))

    def d_alpha(self, t: Tensor) -> Tensor:
        return self.alpha(t) * self.sigma(t) ** 2 * self.d_lam(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return -self.sigma(t) * self.alpha(t) ** 2 * self.d_lam(t)

    def drift(self, t: Tensor) -> Tensor:
        return self.sigma(t) ** 2 * self.d_lam(t)


@dataclass(repr=False)
class LinearVP(VPPath):
    """VP-SDE with linear beta(t) = beta0 + (beta1 - beta0) t (Song et al. 2021; DDPM's continuous limit).

    log alpha = -(beta1 - beta0) t^2 / 4 - beta0 t / 2.
    """

    beta0: float = 0.1
    beta1: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0
    name = "vp_linear"
    t_lo = 0.0
    t_hi = 1.0

    def __post_init__(self):
        _check_positive(beta0=self.beta0, beta1=self.beta1)
        if self.beta1 < self.beta0:
            raise ValueError(f"beta1 ({self.beta1}) must be >= beta0 ({self.beta0})")
        _check_interval(self)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -(self.beta1 - self.beta0) * t**2 / 4 - self.beta0 * t / 2

    def lam(self, t: Tensor) -> Tensor:
        la = self._log_alpha(t)
        # log sigma = 0.5 log(1 - alpha^2) = 0.5 log(-expm1(2 log alpha)), exact near t = 0
        return la - 0.5 * torch.log(-torch.expm1(2 * la))

    def d_lam(self, t: Tensor) -> Tensor:
        beta = self.beta0 + (self.beta1 - self.beta0) * t
        # d lambda/dt = d log alpha/dt / sigma^2 with d log alpha/dt = -beta/2
        return -0.5 * beta / torch.exp(F.logsigmoid(-2 * self.lam(t)))

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        log_alpha = 0.5 * F.logsigmoid(2 * lam)
        a, b = (self.beta1 - self.beta0) / 4, self.beta0 / 2  # a t^2 + b t + log_alpha = 0
        disc = b * b - 4 * a * log_alpha
        return 2 * (-log_alpha) / (b + torch.sqrt(disc))  # stable root (no cancellation when a is small)


@dataclass(repr=False)
class CosineVP(VPPath):
    """Cosine VP schedule (Nichol & Dhariwal 2021): alpha = cos(pi/2 (t+s)/(1+s)) / cos(pi/2 s/(1+s)).

    lambda -> -inf at t = 1, so ``t_max`` defaults to the t where lambda = -5.1 (DPM-Solver's clipping).
    """

    s: float = 0.008
    t_min: float = 1e-3
    t_max: float | None = None
    name = "vp_cosine"
    t_lo = 0.0

    def __post_init__(self):
        _check_positive(s=self.s)
        self._phi0 = math.pi / 2 * self.s / (1 + self.s)
        self.t_hi = float(self.t_of_log_snr(torch.tensor(-9.0, dtype=torch.float64)))
        if self.t_max is None:
            self.t_max = round(float(self.t_of_log_snr(torch.tensor(-5.1, dtype=torch.float64))), 6)
        _check_interval(self)

    def _phi(self, t: Tensor) -> Tensor:
        return math.pi / 2 * (t + self.s) / (1 + self.s)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return torch.log(torch.cos(self._phi(t))) - math.log(math.cos(self._phi0))

    def lam(self, t: Tensor) -> Tensor:
        la = self._log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2 * la))

    def d_lam(self, t: Tensor) -> Tensor:
        d_log_alpha = -math.pi / 2 / (1 + self.s) * torch.tan(self._phi(t))
        return d_log_alpha / torch.exp(F.logsigmoid(-2 * self.lam(t)))

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        log_alpha = 0.5 * F.logsigmoid(2 * lam)
        phi = torch.arccos(torch.exp(log_alpha + math.log(math.cos(self._phi0))))
        return phi * 2 * (1 + self.s) / math.pi - self.s

    def config(self) -> dict:
        return {"name": self.name, "s": self.s, "t_min": self.t_min, "t_max": self.t_max}


class DiscreteDDPM(VPPath):
    """A discrete DDPM table abar_n (n = 0..N-1) on continuous time t_n = (n+1)/N, lambda interpolated linearly.

    Default betas are DDPM's linear 1e-4..0.02 with N = 1000. ``timestep(t) = N t - 1`` gives the discrete
    label the network was trained with (DDPM numbers steps 1..N, Ho et al. 2020; diffusers 0..N-1).
    """

    name = "ddpm"
    t_lo = 0.0

    def __init__(
        self,
        betas: Tensor | None = None,
        *,
        num_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        alphas_cumprod: Tensor | None = None,
    ):
        self._custom = betas is not None or alphas_cumprod is not None
        if alphas_cumprod is None:
            if betas is None:
                _check_positive(num_steps=num_steps, beta_start=beta_start, beta_end=beta_end)
                betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
            betas = torch.as_tensor(betas, dtype=torch.float64)
            if betas.ndim != 1 or not ((betas > 0) & (betas < 1)).all():
                raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
            alphas_cumprod = torch.cumprod(1 - betas, 0)
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if abar.ndim != 1 or not ((abar > 0) & (abar < 1)).all() or not (abar[1:] < abar[:-1]).all():
            raise ValueError("alphas_cumprod must be 1-D, in (0, 1) and strictly decreasing")
        self.num_steps = n = abar.numel()
        self._lams = 0.5 * (torch.log(abar) - torch.log1p(-abar))
        self._ts = torch.arange(1, n + 1, dtype=torch.float64) / n
        self._slopes = torch.diff(self._lams) / torch.diff(self._ts)
        self.t_min, self.t_max, self.t_hi = float(self._ts[0]), 1.0, 1.0
        self.t_lo = self.t_min
        self._beta_config = {"num_steps": num_steps, "beta_start": beta_start, "beta_end": beta_end}

    @property
    def alphas_cumprod(self) -> Tensor:
        return torch.sigmoid(2 * self._lams)

    def _segment(self, t: Tensor) -> Tensor:
        idx = torch.searchsorted(self._ts.to(t.device), t.detach().to(torch.float64).contiguous(), right=True) - 1
        return idx.clamp(0, self.num_steps - 2)

    def lam(self, t: Tensor) -> Tensor:
        i = self._segment(t)
        ts, lams, slopes = (v.to(device=t.device, dtype=t.dtype) for v in (self._ts, self._lams, self._slopes))
        return lams[i] + slopes[i] * (t - ts[i])

    def d_lam(self, t: Tensor) -> Tensor:
        return self._slopes.to(device=t.device, dtype=t.dtype)[self._segment(t)]

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        # lambda is decreasing in t: search on the negated (increasing) table
        neg = (-self._lams).to(lam.device)
        i = torch.searchsorted(neg, (-lam).detach().to(torch.float64).contiguous(), right=True) - 1
        i = i.clamp(0, self.num_steps - 2)
        ts, lams, slopes = (v.to(device=lam.device, dtype=lam.dtype) for v in (self._ts, self._lams, self._slopes))
        return ts[i] + (lam - lams[i]) / slopes[i]

    def timestep(self, t: Tensor) -> Tensor:
        """The (fractional) discrete label N t - 1 of continuous time t."""
        return t * self.num_steps - 1

    def net_time(self, t: Tensor) -> Tensor:
        return t

    def config(self) -> dict:
        if self._custom:
            raise ValueError("a DiscreteDDPM built from a custom table has no compact config; pass betas again")
        return {"name": self.name, **self._beta_config}

    def __repr__(self) -> str:
        return f"DiscreteDDPM(num_steps={self.num_steps})"


@dataclass(repr=False)
class VE(Path):
    """Variance-exploding SDE (Song et al. 2021): alpha = 1, sigma = sigma_min (sigma_max/sigma_min)^t, t in [0, 1]."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 0.0
    t_max: float = 1.0
    name = "ve"
    t_lo = 0.0
    t_hi = 1.0

    def __post_init__(self):
        _check_positive(sigma_min=self.sigma_min, sigma_max=self.sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError("sigma_max must exceed sigma_min")
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        _check_interval(self)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(self._log_ratio * t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return self._log_ratio * self.sigma(t)

    def log_snr(self, t: Tensor) -> Tensor:
        return -math.log(self.sigma_min) - self._log_ratio * t

    def d_log_snr(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -self._log_ratio)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        return (-lam - math.log(self.sigma_min)) / self._log_ratio

    def config(self) -> dict:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


@dataclass(repr=False)
class EDM(Path):
    """EDM / Karras et al. (2022): alpha = 1, sigma = t, t in [sigma_min, sigma_max]; the net sees ln(sigma)/4."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    name = "edm"
    t_lo = 0.0

    def __post_init__(self):
        _check_positive(sigma_min=self.sigma_min, sigma_max=self.sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError("sigma_max must exceed sigma_min")
        self.t_min, self.t_max = self.sigma_min, self.sigma_max
        self.t_lo, self.t_hi = 1e-8, float("inf")

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def log_snr(self, t: Tensor) -> Tensor:
        return -torch.log(t)

    def d_log_snr(self, t: Tensor) -> Tensor:
        return -1 / t

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        return torch.exp(-lam)

    def net_time(self, t: Tensor) -> Tensor:
        return torch.log(t) / 4

    def config(self) -> dict:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


@dataclass(repr=False)
class _OpenUnitPath(Path):
    """A path on t in [0, 1] whose log-SNR is infinite at both ends (alpha = 0 at t = 1, sigma = 0 at t = 0): by
    default samplers integrate on [1e-3, 1 - 1e-3]."""

    t_min: float = 1e-3
    t_max: float = 1 - 1e-3
    t_lo = 0.0
    t_hi = 1.0

    def __post_init__(self):
        _check_interval(self)


@dataclass(repr=False)
class RectifiedFlow(_OpenUnitPath):
    """Linear interpolation / rectified flow / conditional-OT flow matching: alpha = 1 - t, sigma = t.

    Data at t = 0, noise at t = 1 (the library convention; many flow-matching papers flip it). lambda is
    infinite at both ends, so the default sampling interval is [1e-3, 1 - 1e-3]; Euler may start at t = 1.
    """

    name = "flow"

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def log_snr(self, t: Tensor) -> Tensor:
        return torch.log1p(-t) - torch.log(t)

    def d_log_snr(self, t: Tensor) -> Tensor:
        return -1 / (1 - t) - 1 / t

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(-lam)


@dataclass(repr=False)
class Trigonometric(_OpenUnitPath):
    """Trigonometric interpolant: alpha = cos(pi t / 2), sigma = sin(pi t / 2) (VP, lambda = -log tan(pi t/2))."""

    name = "trig"

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(math.pi / 2 * t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sin(math.pi / 2 * t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return -math.pi / 2 * torch.sin(math.pi / 2 * t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return math.pi / 2 * torch.cos(math.pi / 2 * t)

    def log_snr(self, t: Tensor) -> Tensor:
        return -torch.log(torch.tan(math.pi / 2 * t))

    def d_log_snr(self, t: Tensor) -> Tensor:
        return -math.pi / torch.sin(math.pi * t)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        return 2 / math.pi * torch.atan(torch.exp(-lam))


def _check_positive(**values: float) -> None:
    for k, v in values.items():
        if not v > 0:
            raise ValueError(f"{k} must be > 0, got {v}")


def _check_interval(path: Path) -> None:
    if not (path.t_lo <= path.t_min < path.t_max <= path.t_hi):
        raise ValueError(
            f"{type(path).__name__}: need {path.t_lo} <= t_min < t_max <= {path.t_hi}; "
            f"got t_min={path.t_min}, t_max={path.t_max}"
        )
