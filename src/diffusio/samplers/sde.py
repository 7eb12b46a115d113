"""Stochastic baseline samplers: DDPM ancestral sampling and Euler–Maruyama on the reverse-SDE family."""

from __future__ import annotations

from diffusio.samplers.base import kernel_sampler
from diffusio.samplers.kernels import ancestral_step, euler_maruyama_step

__all__ = ["sample_ddpm", "sample_euler_maruyama"]


sample_ddpm = kernel_sampler(
    ancestral_step,
    "sample_ddpm",
    """Ancestral sampling from p(x_s | x_t) = q(x_s | x_t, x0_hat) (Ho et al. 2020, Alg. 2).

    mu = (a sigma_s^2/sigma_t^2) x_t + (alpha_s v/sigma_t^2) x0_hat, a = alpha_t/alpha_s, v = sigma_t^2 - a^2 sigma_s^2.
    """,
)

sample_euler_maruyama = kernel_sampler(
    euler_maruyama_step,
    "sample_euler_maruyama",
    """Euler–Maruyama on the reverse SDE family dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dW (Song et al. 2021,
    Eq. 6; Karras et al. 2022, Eq. 6).

    ``eta = 1`` is Anderson's reverse SDE, ``eta = 0`` the probability-flow ODE; all share the marginals p_t.
    ``w2`` replaces eta^2 g(t)^2 by a free diffusion coefficient w(t)^2 (a number or a function of the time).
    """,
    nonnegative=("eta",),
)
