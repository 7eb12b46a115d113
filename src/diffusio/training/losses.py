"""Denoising losses: draw t from a density, perturb, call the model, weight (Ho et al. 2020, Alg. 1; Karras et al.
2022, Eq. 2).

Densities, weightings and targets are values. A weighting multiplies the squared error *in the target's own
space*; ``MinSNR`` and ``EDMWeight`` are defined on the x0 error and converted with the exact identities
||eps err||^2 = SNR ||x0 err||^2, ||v err||^2 = (a^2+s^2)^2/s^2 ||x0 err||^2, ||u err||^2 = (a lambda')^2 ||x0 err||^2,
||score err||^2 = a^2/s^4 ||x0 err||^2 (a = alpha, s = sigma): one weighting is one objective for every target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffusio.core.parametrization import check_kind
from diffusio.core.paths import Path
from diffusio.core.time import broadcast
from diffusio.models.base import ModelBase

__all__ = [
    "DiffusionLoss",
    "EDMLogNormal",
    "EDMWeight",
    "LogitNormal",
    "MinSNR",
    "UniformTime",
    "UniformWeight",
    "target_value",
    "x0_error_factor",
]


# --- time densities ------------------------------------------------------------------------------------------
@dataclass
class UniformTime:
    """t ~ U[t_min, t_max] (defaults: the path's sampling interval)."""

    t_min: float | None = None
    t_max: float | None = None

    def sample(self, n: int, path: Path, generator: torch.Generator | None = None, device=None) -> Tensor:
        lo = path.t_min if self.t_min is None else self.t_min
        hi = path.t_max if self.t_max is None else self.t_max
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        return lo + (hi - lo) * u


@dataclass
class LogitNormal:
    """t = t_min + (t_max - t_min) sigmoid(N(mean, std^2)) (Esser et al. 2024, rectified-flow training)."""

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self):
        if not self.std > 0:
            raise ValueError(f"std must be > 0, got {self.std}")

    def sample(self, n: int, path: Path, generator: torch.Generator | None = None, device=None) -> Tensor:
        z = torch.randn(n, generator=generator, device=device, dtype=torch.float64) * self.std + self.mean
        return path.t_min + (path.t_max - path.t_min) * torch.sigmoid(z)


@dataclass
class EDMLogNormal:
    """EDM's ln(s) ~ N(p_mean, p_std^2) on the noise level s = sigma/alpha, mapped to the path's time (clamped)."""

    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self):
        if not self.p_std > 0:
            raise ValueError(f"p_std must be > 0, got {self.p_std}")

    def sample(self, n: int, path: Path, generator: torch.Generator | None = None, device=None) -> Tensor:
        log_s = torch.randn(n, generator=generator, device=device, dtype=torch.float64) * self.p_std + self.p_mean
        lo, hi = path.log_snr(torch.tensor([path.t_max, path.t_min], dtype=torch.float64))
        return path.t_of_log_snr((-log_s).clamp(float(lo), float(hi)))


# --- weightings ------------------------------------------------------------------------------------------------
def x0_error_factor(path: Path, t: Tensor, target: str) -> Tensor:
    """c(t) with ||target error||^2 = c(t) ||x0 error||^2 at the same (x_t, t)."""
    a, s = path.alpha(t), path.sigma(t)
    factors = {
        "x0": lambda: torch.ones_like(t),
        "eps": lambda: (a / s) ** 2,
        "v": lambda: (a**2 + s**2) ** 2 / s**2,
        "velocity": lambda: (a * path.d_log_snr(t)) ** 2,
        "score": lambda: a**2 / s**4,
    }
    return factors[check_kind(target, "target")]()


@dataclass
class UniformWeight:
    """Weight 1 on the target's own squared error (DDPM's "simple" loss for eps; plain flow matching for velocity)."""

    def __call__(self, path: Path, t: Tensor, target: str) -> Tensor:
        return torch.ones_like(t)


@dataclass
class MinSNR:
    """Min-SNR-gamma (Hang et al. 2023): weight min(SNR, gamma) on the x0 error."""

    gamma: float = 5.0

    def __post_init__(self):
        if not self.gamma > 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")

    def __call__(self, path: Path, t: Tensor, target: str) -> Tensor:
        snr = torch.exp(2 * path.log_snr(t))
        return snr.clamp(max=self.gamma) / x0_error_factor(path, t, target)


@dataclass
class EDMWeight:
    """EDM's lambda(s) = (s^2 + sd^2)/(s sd)^2 on the x0 error, s = sigma/alpha (Karras et al. 2022, Table 1)."""

    sigma_data: float = 0.5

    def __call__(self, path: Path, t: Tensor, target: str) -> Tensor:
        s2 = path.noise_level(t) ** 2
        w = (s2 + self.sigma_data**2) / (s2 * self.sigma_data**2)
        return w / x0_error_factor(path, t, target)


# --- the loss ---------------------------------------------------------------------------------------------------
def target_value(target: str, x0: Tensor, noise: Tensor, t: Tensor, path: Path) -> Tensor:
    """The regression target of head ``target`` for the pair (x0, noise) at time ``t`` (eps: Ho et al. 2020;
    v: Salimans & Ho 2022; velocity: Lipman et al. 2023, Eq. 22)."""
    a, s = broadcast(path.alpha(t), x0), broadcast(path.sigma(t), x0)
    if target == "eps":
        return noise
    if target == "x0":
        return x0
    if target == "v":
        return a * noise - s * x0
    if target == "velocity":
        return broadcast(path.d_alpha(t), x0) * x0 + broadcast(path.d_sigma(t), x0) * noise
    if target == "score":
        return -noise / s
    raise ValueError(check_kind(target, "target"))


@dataclass
class DiffusionLoss:
    """E_t w(t) ||head(x_t, t) - target||^2, averaged over dimensions; ``__call__`` gives per-sample losses ``(B,)``.

    ``coupling`` (``flow_matching.MinibatchOT``, ``flow_matching.ReflowCoupling``) re-pairs each drawn batch of
    noise with the data before the loss; ``None`` is the independent coupling.
    """

    target: str = "eps"
    density: UniformTime | LogitNormal | EDMLogNormal = field(default_factory=UniformTime)
    weighting: UniformWeight | MinSNR | EDMWeight = field(default_factory=UniformWeight)
    coupling: Callable[..., tuple[Tensor, Tensor]] | None = None

    def __post_init__(self):
        check_kind(self.target, "target")

    def draw(self, x0: Tensor, path: Path, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Times ``(B,)`` (float64) and noise (shape of ``x0``) for one batch."""
        t = self.density.sample(x0.shape[0], path, generator, x0.device)
        noise = path.noise_sample(tuple(x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
        return t, noise

    def couple(self, x0: Tensor, noise: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Re-pair the drawn noise with the data (minibatch OT, reflow pairs); identity without a coupling."""
        if self.coupling is None:
            return x0, noise
        return self.coupling(x0, noise, generator)

    def __call__(self, model: ModelBase, x0: Tensor, t: Tensor, noise: Tensor, cond: dict | None = None) -> Tensor:
        path = model.path
        xt = path.perturb(x0, noise, t)
        pred = model.predict(xt, t, self.target, **(cond or {}))
        err = (pred - target_value(self.target, x0, noise, t, path)) ** 2
        w = self.weighting(path, t, self.target).to(err.dtype)
        return w * err.flatten(1).mean(1)
