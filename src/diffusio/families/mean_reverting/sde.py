"""Mean-reverting diffusion (IR-SDE; Luo et al., ICML 2023) for image restoration, in the library's terms.

The forward SDE dx = theta_t (mu - x) dt + sigma_t dW with sigma_t^2 = 2 lam^2 theta_t drifts a clean image x_0
towards its degraded version mu (the condition) while adding noise;
x_t | x_0 ~ N(mu + alpha_t (x_0 - mu), lam^2 (1 - alpha_t^2)) with alpha_t = exp(-thetabar_t) and
thetabar_t = int_0^t theta (Luo et al. Eq. 7-9). In the variable

    u = (x - mu) / lam:    u_t = alpha_t u_0 + sqrt(1 - alpha_t^2) eps,

so mean-reverting diffusion *is* a variance-preserving path (Luo et al. 2023, IR-SDE, Eq. 3; Li et al. 2025,
Sec. 3). This module gives that path (:class:`MeanReverting` and its schedules), a model wrapper that feeds the
network the x-space state and the condition (:class:`MRModel`), a restoration data source and :func:`restore`.
Every library sampler then runs on u: ``euler_maruyama`` is IR-SDE's reverse SDE, ``ddpm`` its posterior sampler,
and ``mrs`` / ``mrs_sde`` (``mean_reverting/sampler.py``) are the MRS semi-analytic solvers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusio.core.parametrization import check_kind, convert
from diffusio.core.paths import VPPath
from diffusio.models.base import ModelBase, _net_dtype
from diffusio.training.losses import DiffusionLoss

__all__ = [
    "ConstantTheta",
    "CosineTheta",
    "MRLoss",
    "MRModel",
    "MeanReverting",
    "RestorationSource",
    "add_noise",
    "gaussian_blur",
    "restore",
]

_F64 = torch.float64


class MeanReverting(VPPath):
    """The IR-SDE path in u = (x - mu)/lam: alpha = exp(-thetabar(t)), sigma = sqrt(1 - alpha^2) (VP), so
    lambda(t) = -thetabar - 0.5 log(-expm1(-2 thetabar)). Subclasses give thetabar(t), its derivative theta(t) and
    its inverse. ``max_sigma`` is lam, the stationary std of x (IR-SDE's ``max_sigma``), used to map x <-> u.

    The equivalent linear SDE of the library (``drift``, ``diffusion2``) is then f = -theta, g^2 = 2 theta: IR-SDE's
    drift theta (mu - x) and sigma_t^2 = 2 lam^2 theta_t divided by lam.
    """

    max_sigma: float

    def thetabar(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def theta(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t_of_thetabar(self, tb: Tensor) -> Tensor:
        raise NotImplementedError

    def lam(self, t: Tensor) -> Tensor:
        tb = self.thetabar(t)
        return -tb - 0.5 * torch.log(-torch.expm1(-2 * tb))

    def d_lam(self, t: Tensor) -> Tensor:
        return -self.theta(t) / (-torch.expm1(-2 * self.thetabar(t)))

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        # e^{2 lambda} = 1/(e^{2 tb} - 1)  =>  2 tb = log1p(e^{-2 lambda}) = softplus(-2 lambda)
        return self.t_of_thetabar(0.5 * F.softplus(-2 * lam))

    def to_state(self, x: Tensor, mu: Tensor) -> Tensor:
        """u = (x - mu) / lam."""
        return (x - mu) / self.max_sigma

    def from_state(self, u: Tensor, mu: Tensor) -> Tensor:
        """x = mu + lam u."""
        return mu + self.max_sigma * u


@dataclass(repr=False)
class ConstantTheta(MeanReverting):
    """Constant mean-reversion rate: thetabar = theta t on t in [0, T] (continuous time)."""

    theta_rate: float = 1.0
    max_sigma: float = 0.5
    T: float = 5.0
    t_min: float = 1e-3
    name = "mr_constant"
    t_lo = 0.0

    def __post_init__(self):
        for k in ("theta_rate", "max_sigma", "T"):
            if not getattr(self, k) > 0:
                raise ValueError(f"{k} must be > 0, got {getattr(self, k)}")
        self.t_max = self.t_hi = float(self.T)
        if not 0 < self.t_min < self.t_max:
            raise ValueError(f"need 0 < t_min < T; got t_min={self.t_min}, T={self.T}")

    def thetabar(self, t):
        return self.theta_rate * t

    def theta(self, t):
        return torch.full_like(t, self.theta_rate)

    def t_of_thetabar(self, tb):
        return tb / self.theta_rate

    def config(self) -> dict:
        return {"name": self.name, "theta_rate": self.theta_rate, "max_sigma": self.max_sigma, "T": self.T}


@dataclass(repr=False)
class CosineTheta(MeanReverting):
    """IR-SDE's cosine schedule (Luo et al. 2023, code ``IRSDE`` with schedule='cosine'): theta_i = betas of an
    offset-cosine table over ``steps`` training steps, thetabar_i = dt (sum_{k<=i} theta_k - theta_0) with dt set so
    that alpha at the last step is ``eps``. Time t = i/steps in [0, 1]; thetabar is interpolated piecewise-linearly
    (so theta(t) is piecewise constant). ``t_min`` defaults to the first training step 1/steps."""

    max_sigma: float = 0.5
    steps: int = 100
    eps: float = 0.005
    s: float = 0.008
    name = "mr_cosine"
    t_lo = 0.0
    t_hi = 1.0

    def __post_init__(self):
        if not (self.max_sigma > 0 and 0 < self.eps < 1 and isinstance(self.steps, int) and self.steps >= 2):
            raise ValueError(
                f"need max_sigma > 0, 0 < eps < 1 and integer steps >= 2; got max_sigma={self.max_sigma}, "
                f"eps={self.eps}, steps={self.steps}"
            )
        n = self.steps + 2
        x = torch.linspace(0, n, n + 1, dtype=_F64)
        abar = torch.cos((x / n + self.s) / (1 + self.s) * math.pi / 2) ** 2
        thetas = 1 - (abar / abar[0])[1:-1]  # steps + 1 values
        cum = torch.cumsum(thetas, 0) - thetas[0]  # thetabar_0 = 0 exactly
        self._tb = cum * (-math.log(self.eps) / cum[-1])
        self._ts = torch.linspace(0, 1, self.steps + 1, dtype=_F64)
        self._slope = torch.diff(self._tb) / torch.diff(self._ts)
        self.t_min, self.t_max = 1.0 / self.steps, 1.0

    def _seg(self, t: Tensor) -> Tensor:
        i = torch.searchsorted(self._ts.to(t.device), t.detach().to(_F64).contiguous(), right=True) - 1
        return i.clamp(0, self.steps - 1)

    def thetabar(self, t):
        i = self._seg(t)
        ts, tb, sl = (v.to(device=t.device, dtype=t.dtype) for v in (self._ts, self._tb, self._slope))
        return tb[i] + sl[i] * (t - ts[i])

    def theta(self, t):
        return self._slope.to(device=t.device, dtype=t.dtype)[self._seg(t)]

    def t_of_thetabar(self, tb):
        i = torch.searchsorted(self._tb.to(tb.device), tb.detach().to(_F64).contiguous(), right=True) - 1
        i = i.clamp(0, self.steps - 1)
        ts, tbs, sl = (v.to(device=tb.device, dtype=tb.dtype) for v in (self._ts, self._tb, self._slope))
        return ts[i] + (tb - tbs[i]) / sl[i]

    def config(self) -> dict:
        return {"name": self.name, "max_sigma": self.max_sigma, "steps": self.steps, "eps": self.eps, "s": self.s}


class MRModel(ModelBase):
    """A restoration network as a Model on a :class:`MeanReverting` path, in the state u = (x - mu)/lam.

    The network sees the x-space state and the condition, ``net(cat([x, mu], dim=1), path.net_time(t))``, and
    predicts ``prediction``: ``"x0"`` (the clean image x_0), ``"eps"`` (the noise) or ``"v"`` (the MRS velocity
    v = lam alpha eps - (sigmahat/lam)(x_0 - mu) of Li et al. 2025, which is lam times the library's v of u).
    ``predict(u, t, kind, mu=...)`` returns any head in u-space; the condition ``mu`` is required.
    """

    PREDICTIONS = ("x0", "eps", "v")

    def __init__(self, net: nn.Module | Callable, path: MeanReverting, prediction: str = "x0"):
        super().__init__()
        if not isinstance(path, MeanReverting):
            raise TypeError(f"path must be a MeanReverting path, got {type(path).__name__}")
        if prediction not in self.PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(self.PREDICTIONS)}")
        self.net, self.path, self.prediction, self.precond = net, path, prediction, None

    def with_net(self, net) -> MRModel:
        return MRModel(net, self.path, self.prediction)

    def predict(self, x: Tensor, t: Tensor, kind: str = "x0", mu: Tensor | None = None, **cond) -> Tensor:
        check_kind(kind, "kind")
        if mu is None:
            raise ValueError("an MRModel needs the degraded image: pass mu=... (cond={'mu': mu} to samplers)")
        lam = self.path.max_sigma
        xs = self.path.from_state(x, mu)
        dtype = _net_dtype(self.net, x)
        out = self.net(torch.cat([xs, mu.to(xs)], 1).to(dtype), self.path.net_time(t).to(dtype), **cond).to(x.dtype)
        if self.prediction == "x0":
            out = (out - mu) / lam
        elif self.prediction == "v":
            out = out / lam
        return convert(out, self.prediction, kind, x, t, self.path)

    def extra_repr(self) -> str:
        return f"path={self.path!r}, prediction={self.prediction!r}"


# --- degradations and data ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class add_noise:
    """Additive white Gaussian noise of std ``std`` (in the data's units)."""

    std: float = 0.4

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return x + self.std * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


@dataclass(frozen=True)
class gaussian_blur:
    """Isotropic Gaussian blur (``width`` px std, ``size`` taps, reflect padding) plus optional noise ``std``."""

    width: float = 1.0
    size: int = 5
    std: float = 0.0

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        r = torch.arange(self.size, dtype=x.dtype, device=x.device) - (self.size - 1) / 2
        k = torch.exp(-(r**2) / (2 * self.width**2))
        k = (k[:, None] * k[None, :]) / k.sum() ** 2
        c = x.shape[1]
        p = self.size // 2
        y = F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), k.expand(c, 1, -1, -1), groups=c)
        return add_noise(self.std)(y, generator) if self.std > 0 else y


class RestorationSource:
    """Training pairs: ``sample(n, generator) -> (x_0, {"mu": mu})``, clean images drawn uniformly (with
    replacement) from ``clean`` ``(N, C, H, W)`` and mu = ``degrade(x_0, generator)`` drawn afresh each time."""

    def __init__(self, clean: Tensor, degrade: Callable):
        if clean.ndim < 2 or not torch.isfinite(clean).all():
            raise ValueError("clean must be a finite (N, ...) tensor")
        self.clean, self.degrade = clean, degrade
        self.shape, self.num_classes = tuple(clean.shape[1:]), None

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        x0 = self.clean[torch.randint(0, self.clean.shape[0], (n,), generator=generator)]
        return x0, {"mu": self.degrade(x0, generator)}


@dataclass
class MRLoss(DiffusionLoss):
    """A :class:`~diffusio.losses.DiffusionLoss` in the state u = (x - mu)/lam: the batch holds clean images x_0
    and ``cond["mu"]`` their degraded versions. (IR-SDE trains a maximum-likelihood L1 objective on the reverse
    step mean; any denoising regression has the same minimiser E[x_0 | x_t, mu], which is what we fit.)"""

    def __call__(self, model: ModelBase, x0: Tensor, t: Tensor, noise: Tensor, cond: dict | None = None) -> Tensor:
        if not cond or "mu" not in cond:
            raise ValueError("MRLoss needs the degraded images in cond['mu'] (use a RestorationSource)")
        return super().__call__(model, model.path.to_state(x0, cond["mu"]), t, noise, cond)


def restore(
    model: MRModel,
    mu: Tensor,
    *,
    solver: str = "mrs",
    steps: int = 20,
    generator: torch.Generator | None = None,
    clip: tuple[float, float] | None = (-1.0, 1.0),
    **options,
) -> tuple[Tensor, int]:
    """Restore degraded images ``mu`` ``(B, ...)``: start at x_T = mu + lam z (IR-SDE's noisy LQ state), run a
    registered solver in u-space, map back to x. Returns (images, model calls per image)."""
    from diffusio.samplers import sample

    u_T = model.path.prior_sample(tuple(mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
    res = sample(model, u_T, solver=solver, steps=steps, cond={"mu": mu}, generator=generator, **options)
    x = model.path.from_state(res.x, mu)
    return (x.clamp(*clip) if clip is not None else x), res.nfe
