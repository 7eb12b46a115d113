"""PFGM++: Poisson flow generative models in N + D dimensions (Xu et al., ICML 2023, arXiv 2302.04265).

Data y in R^N are charges on the hyperplane of an (N + D)-dimensional space; with the alignment r = sigma sqrt(D)
(paper Sec. 4, Prop. 4.1) the perturbation kernel is

    p_r(x | y) ∝ (||x - y||^2 + r^2)^(-(N + D)/2),                                    (paper Eq. 4)

a multivariate Student-t with D degrees of freedom and scale sigma: n = x - y has ||n||^2 / r^2 ~ BetaPrime(N/2, D/2)
and a uniform direction. D -> inf recovers the Gaussian kernel N(0, sigma^2 I) (EDM); small D gives heavy tails.
Everything else is EDM unchanged: the x0 (denoiser) head with EDM preconditioning at noise level sigma, the EDM
log-normal sigma density and weighting, the ODE dx/dsigma = (x - D(x, sigma))/sigma (paper Eq. 7 in sigma units)
and Karras grids. Only the noise of training and the prior change, which is what :class:`PFGMPP` overrides.

The kernel is not Gaussian, so eps-, score- and v-heads and the Gaussian SDE samplers (DDPM, Euler–Maruyama) do
not apply; use ``x0``/``velocity`` heads and the ODE samplers (``euler``, ``heun``, ``ddim``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusio.core.parametrization import convert
from diffusio.core.paths import EDM
from diffusio.core.time import as_time
from diffusio.families.base import Family
from diffusio.models.base import ModelBase

__all__ = ["FAMILY", "PFGMPP", "PointSetModel", "sample_chi2", "sample_kernel"]

_F64 = torch.float64


def check_D(D: float) -> float:
    """Validate the augmented dimension: a real D >= 1 (math.inf is the Gaussian / EDM limit)."""
    if isinstance(D, bool) or not isinstance(D, int | float) or math.isnan(D) or D < 1:
        raise ValueError(
            f"D (the number of augmented dimensions) must be a number >= 1; got D={D!r}. PFGM++ needs D >= 1 "
            "(D > 2 for a finite perturbation variance; D = inf is the Gaussian limit, i.e. EDM)"
        )
    return float(D)


def _standard_gamma(shape_param: float, n: int, generator: torch.Generator | None, device=None) -> Tensor:
    """``n`` draws of Gamma(shape_param, 1) in float64 from ``generator`` (Marsaglia & Tsang 2000, with the
    U^(1/a) boost for shape < 1). Vectorised rejection; acceptance is > 95% for shape >= 1."""
    a = shape_param
    boost = a < 1
    a = a + 1 if boost else a
    d = a - 1 / 3
    c = 1 / math.sqrt(9 * d)
    out = torch.empty(n, dtype=_F64, device=device)
    todo = torch.arange(n, device=device)
    while todo.numel():
        m = todo.numel()
        x = torch.randn(m, generator=generator, dtype=_F64, device=device)
        u = torch.rand(m, generator=generator, dtype=_F64, device=device)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp(min=1e-300)))
        out[todo[ok]] = (d * v)[ok]
        todo = todo[~ok]
    if boost:
        u = torch.rand(n, generator=generator, dtype=_F64, device=device)
        out = out * u ** (1 / shape_param)
    return out


def sample_chi2(dof: float, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """``n`` chi-square draws with ``dof`` (real) degrees of freedom, float64: 2 Gamma(dof/2, 1)."""
    return 2 * _standard_gamma(dof / 2, n, generator, device)


def sample_kernel(
    shape: tuple[int, ...],
    D: float,
    sigma: float | Tensor = 1.0,
    *,
    generator: torch.Generator | None = None,
    device=None,
    dtype=None,
) -> Tensor:
    """Draws n ~ p_r(. | 0) with r = sigma sqrt(D), shape ``(B, ...)`` (N = prod of the rest), per-sample
    ``sigma`` scalar or ``(B,)``.

    n = sigma g / sqrt(chi2_D / D) with g ~ N(0, I_N): the radius R = ||n|| then satisfies R^2/r^2 = chi2_N/chi2_D
    ~ BetaPrime(N/2, D/2) exactly (paper Eq. 8 / App. B: B ~ Beta(N/2, D/2), R = r sqrt(B/(1-B))), and g/||g|| is
    uniform on the sphere. Computed in float64; no clipping. ``D = inf`` gives sigma N(0, I).
    """
    D = check_D(D)
    g = torch.randn(shape, generator=generator, dtype=_F64, device=device)
    scale = torch.as_tensor(sigma, dtype=_F64, device=device)
    if math.isfinite(D):
        scale = scale / torch.sqrt(sample_chi2(D, shape[0], generator, device) / D)
    scale = scale.reshape(-1, *[1] * (len(shape) - 1)) if scale.ndim else scale
    return (g * scale).to(dtype or torch.get_default_dtype())


@dataclass(repr=False)
class PFGMPP(EDM):
    """The PFGM++ process as a path: EDM's alpha = 1, sigma = t (t is sigma, r = t sqrt(D)) with the heavy-tailed
    kernel of dimension ``D`` as its noise, so ``perturb(y, noise, t) = y + t noise`` and the prior at sigma_max
    is the kernel at r_max = sigma_max sqrt(D) (paper Sec. 4; not sigma_max N(0, I), a silent bug at small D)."""

    D: float = 128.0
    name = "pfgmpp"

    def __post_init__(self):
        self.D = check_D(self.D)
        super().__post_init__()

    def noise_sample(self, shape, *, generator=None, device=None, dtype=None) -> Tensor:
        """Unit-sigma kernel draws (r = sqrt(D)): the noise whose multiple t * noise is the perturbation."""
        return sample_kernel(tuple(shape), self.D, 1.0, generator=generator, device=device, dtype=dtype)

    def config(self) -> dict:
        return {"name": self.name, "D": self.D, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class PointSetModel(ModelBase):
    """The exact PFGM++ posterior mean for data on weighted atoms {(pi_i, y_i)}: the "oracle denoiser".

    log w_i = log pi_i - ((N + D)/2) log(||x - y_i||^2 + r^2), r = sigma sqrt(D), E[y | x] = sum_i softmax(w)_i y_i
    (the kernel of paper Eq. 4 in Bayes' rule); for D = inf the Gaussian softmax of -||x - y_i||^2/(2 sigma^2).
    ``atoms``: ``(K, *event_shape)``; ``weights``: ``(K,)``. Float64.
    """

    def __init__(self, atoms: Tensor, weights: Tensor | None = None, path: PFGMPP | EDM | None = None):
        super().__init__()
        self.path = path if path is not None else PFGMPP()
        self.atoms = torch.as_tensor(atoms, dtype=_F64)
        k = self.atoms.shape[0]
        w = torch.full((k,), 1 / k, dtype=_F64) if weights is None else torch.as_tensor(weights, dtype=_F64)
        if w.shape != (k,) or not (w > 0).all():
            raise ValueError(f"weights must be {k} positive numbers; got {w.tolist()}")
        self.log_pi = torch.log(w / w.sum())
        self.D = getattr(self.path, "D", math.inf)

    def posterior_logits(self, x: Tensor, sigma: Tensor) -> Tensor:
        """log w_i ``(B, K)`` (unnormalised) at ``x`` ``(B, ...)`` and ``sigma`` ``(B,)``."""
        d2 = torch.cdist(x.reshape(x.shape[0], -1).to(_F64), self.atoms.reshape(self.atoms.shape[0], -1)) ** 2
        s2 = sigma.to(_F64)[:, None] ** 2
        if math.isinf(self.D):
            return self.log_pi - d2 / (2 * s2)
        n = self.atoms[0].numel()
        # (N + D)/2 log(d^2 + r^2) up to an x-independent constant, written as log1p for large D
        return self.log_pi - (n + self.D) / 2 * torch.log1p(d2 / (self.D * s2))

    def predict(self, x: Tensor, t: Tensor, kind: str = "x0", **cond) -> Tensor:
        t64 = as_time(t, x).to(_F64)
        w = torch.softmax(self.posterior_logits(x, t64), 1)
        x0 = (w @ self.atoms.reshape(self.atoms.shape[0], -1)).reshape(x.shape)
        return convert(x0, "x0", kind, x.to(_F64), t64, self.path).to(x.dtype)


FAMILY = Family(
    "pfgmpp",
    "PFGM++ (Xu et al. 2023): EDM with a heavy-tailed kernel of D augmented dimensions (the Gaussian diffusion "
    "builders on the ``pfgmpp`` path)",
    configs=("pfgmpp.yaml",),
)
