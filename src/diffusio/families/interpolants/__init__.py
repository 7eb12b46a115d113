"""Stochastic interpolants x_t = a(t) x_0 + b(t) x_1 + gamma(t) z (Albergo, Boffi & Vanden-Eijnden 2023,
arXiv 2303.08797, Def. 2.1): one- and two-sided, velocity and denoiser objectives, the transport ODE and the SDE
family with a free diffusion epsilon(t) >= 0 that keeps the marginals, and data-to-data bridges.

Time convention: the paper's time, t in [0, 1] from rho_0 (t = 0) to rho_1 (t = 1). For generation rho_0 = N(0, I)
is the noise and rho_1 the data, so the library's time is t_lib = 1 - t; the one-sided Gaussian case converts to a
library :class:`~diffusio.core.paths.Path` with :meth:`Interpolant.as_path`.

Fields (all functions of (x, t), in the paper's notation):
  velocity  v(t, x) = E[a' x_0 + b' x_1 + gamma' z | x_t = x]            (paper: b; Eq. 2.10)
  denoiser  eta(t, x) = E[g | x_t = x] for the Gaussian part g of x_t: g = z with coefficient gamma (two-sided),
            or g = x_0 with coefficient a (one-sided, Gaussian base);  score s = -eta / coefficient.
  ODE  dX = v dt;  forward SDE  dX = (v + eps s) dt + sqrt(2 eps) dW;  backward SDE  dX = (v - eps s) dt +
  sqrt(2 eps) dW_bar with time running 1 -> 0 (Thm. 2.21-2.22). All have the marginals of x_t.

Modules: ``coefficients`` (a, b, gamma, epsilon schedules, the Interpolant and its Path form), ``fields`` (learned
and exact fields), ``integration`` (ODE/SDE samplers on the one-step kernels), ``loss`` (the objective),
``family`` (the :class:`~diffusio.families.base.Family` record: model, loss and generation from a config).
"""

from diffusio.families.interpolants.coefficients import (
    BrownianGamma,
    Coefficient,
    ConstantEpsilon,
    CosineDown,
    FunctionCoefficient,
    Gamma,
    Interpolant,
    InterpolantPath,
    LinearDown,
    LinearUp,
    ScaledGamma,
    SineUp,
    TapEpsilon,
    ZeroGamma,
)
from diffusio.families.interpolants.family import FAMILY
from diffusio.families.interpolants.fields import (
    GaussianMixtureFields,
    InterpolantModel,
    PaperFields,
    noise_coefficient,
)
from diffusio.families.interpolants.integration import generate, sample_ode, sample_sde, sample_si_ode, sample_si_sde
from diffusio.families.interpolants.loss import InterpolantLoss

__all__ = [
    "FAMILY",
    "BrownianGamma",
    "Coefficient",
    "ConstantEpsilon",
    "CosineDown",
    "FunctionCoefficient",
    "Gamma",
    "GaussianMixtureFields",
    "Interpolant",
    "InterpolantLoss",
    "InterpolantModel",
    "InterpolantPath",
    "LinearDown",
    "LinearUp",
    "PaperFields",
    "ScaledGamma",
    "SineUp",
    "TapEpsilon",
    "ZeroGamma",
    "generate",
    "noise_coefficient",
    "sample_ode",
    "sample_sde",
    "sample_si_ode",
    "sample_si_sde",
]
