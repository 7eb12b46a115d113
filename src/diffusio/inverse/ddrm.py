"""DDRM: denoising diffusion restoration in the singular-value basis of a linear operator (Kawar, Elad, Ermon, Song,
NeurIPS 2022, Eq. 7-8 and Appendix).

A = U S V^T. In the VE variables xbar = V^T x_t / alpha_t (noise level s_t = sigma_t / alpha_t) every spectral
component i with singular value s_i and ybar_i = (U^T y)_i / s_i moves from t to the next level s by
- s_i = 0:                    xbar' = x0bar + s (sqrt(1 - eta^2) epsbar + eta z)
- s_i s < sigma_y:            xbar' = x0bar + sqrt(1 - eta^2) s (ybar - x0bar) / (sigma_y / s_i) + eta s z
- s_i s >= sigma_y:           xbar' = (1 - eta_b) x0bar + eta_b ybar + sqrt(s^2 - eta_b^2 sigma_y^2 / s_i^2) z
with x0bar = V^T x0_hat, epsbar = (xbar - x0bar) / s_t; then x_s = alpha_s V xbar'. Start: components with
s_i s_T > sigma_y at ybar + sqrt(s_T^2 - sigma_y^2 / s_i^2) z, the others at s_T z. The last update goes to s = 0,
so the output is x0_hat with the observed components replaced by y when sigma_y = 0. No gradients; one model call
per step.

Exactness: with the exact denoiser of a Gaussian prior whose covariance is diagonal in V every component follows a
closed-form affine recursion (docs/posterior.md, "When DDRM is exact"). The posterior mean is exact for sigma_y = 0
(observed components equal ybar, unobserved ones keep the prior mean); for sigma_y > 0 the weight of ybar is set by
the step grid and eta and does not converge to the posterior gain lam / (lam + sigma_y^2 / s_i^2), and for a prior
that V does not diagonalise the unobserved components are biased even at sigma_y = 0. Kawar et al.'s Theorem 1
(particular eta, eta_b) concerns the training objective, not the distribution of the samples.

:func:`operator_svd` gives the SVD of the operators that have one in closed form: matrices, inpainting masks, block
averaging (super-resolution) and circular blur (Fourier basis; the transfer function is real and even, so the
spectral coefficients stay Hermitian-symmetric and the image real).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusio.core.time import coeffs, time_batch
from diffusio.core.timesteps import get_timesteps
from diffusio.inverse.operators import GaussianBlur, Inpainting, LinearOperator, MatrixOperator, SuperResolution
from diffusio.models.base import ModelBase

__all__ = ["SVD", "ddrm_times", "operator_svd", "solve_ddrm"]


@dataclass
class SVD:
    """A = U S V^T as functions: ``vt`` (x -> spectral coefficients ``(B, n)``), ``v`` (inverse), ``ut`` (y ->
    ``(B, n)``, zero where S is), singular values ``s`` ``(n,)`` (float64, zero-padded) and ``noise`` (a standard
    normal draw in spectral coordinates that maps to a real image)."""

    vt: Callable[[Tensor], Tensor]
    v: Callable[[Tensor], Tensor]
    ut: Callable[[Tensor], Tensor]
    s: Tensor
    noise: Callable[[int, torch.dtype, torch.Generator | None], Tensor]


def _real_noise(shape, vt):
    def draw(b: int, dtype, generator) -> Tensor:
        return vt(torch.randn((b, *shape), generator=generator, dtype=dtype))

    return draw


def _block_basis(f: int) -> Tensor:
    """An orthogonal (f^2, f^2) matrix whose first column is the constant 1/f (Householder reflection of e_1)."""
    n = f * f
    u = torch.full((n,), 1 / f, dtype=torch.float64)
    u[0] -= 1
    if u.norm() < 1e-12:
        return torch.eye(n, dtype=torch.float64)
    u = u / u.norm()
    return torch.eye(n, dtype=torch.float64) - 2 * torch.outer(u, u)


def operator_svd(operator: LinearOperator, tol: float = 1e-6) -> SVD:
    """The closed-form SVD of ``operator`` (MatrixOperator, Inpainting, SuperResolution, GaussianBlur); singular
    values below ``tol`` (relative to the largest) count as zero. Raises for operators without one."""
    shape = operator.in_shape
    if isinstance(operator, MatrixOperator):
        A = operator.A.double()
        u, sv, vh = torch.linalg.svd(A, full_matrices=True)
        d, m = A.shape[1], A.shape[0]
        s = torch.zeros(d, dtype=torch.float64)
        s[: min(m, d)] = sv[: min(m, d)]

        def vt(x):
            return x.flatten(1) @ vh.T.to(x)

        def v(z):
            return (z @ vh.to(z)).reshape(z.shape[0], *shape)

        def ut(y):
            out = torch.zeros(y.shape[0], d, dtype=y.dtype, device=y.device)
            k = min(m, d)
            out[:, :k] = (y @ u.to(y))[:, :k]
            return out

    elif isinstance(operator, Inpainting):
        s = operator.mask.double().flatten()

        def vt(x):
            return x.flatten(1)

        def v(z):
            return z.reshape(z.shape[0], *shape)

        ut = vt
    elif isinstance(operator, SuperResolution):
        f, (c, h, w) = operator.factor, shape
        q = _block_basis(f)
        s = torch.zeros(c, h // f, w // f, f * f, dtype=torch.float64)
        s[..., 0] = 1 / f
        s = s.flatten()

        def vt(x):
            blocks = x.reshape(x.shape[0], c, h // f, f, w // f, f).permute(0, 1, 2, 4, 3, 5)
            return (blocks.reshape(x.shape[0], c, h // f, w // f, f * f) @ q.to(x)).flatten(1)

        def v(z):
            blocks = (z.reshape(z.shape[0], c, h // f, w // f, f * f) @ q.T.to(z)).reshape(
                z.shape[0], c, h // f, w // f, f, f
            )
            return blocks.permute(0, 1, 2, 4, 3, 5).reshape(z.shape[0], c, h, w)

        def ut(y):
            out = torch.zeros(y.shape[0], c, h // f, w // f, f * f, dtype=y.dtype, device=y.device)
            out[..., 0] = y
            return out.flatten(1)

    elif isinstance(operator, GaussianBlur):
        s = operator.transfer.double().expand(shape).flatten()

        def vt(x):
            return torch.fft.fft2(x.to(torch.float64), norm="ortho").flatten(1)

        def v(z):
            return torch.fft.ifft2(z.reshape(z.shape[0], *shape), norm="ortho").real

        ut = vt
    else:
        raise ValueError(
            f"DDRM needs an operator with a closed-form SVD (MatrixOperator, Inpainting, SuperResolution, "
            f"GaussianBlur); got {type(operator).__name__}"
        )
    s = torch.where(s.abs() > tol * s.abs().max().clamp(min=1e-300), s, torch.zeros_like(s))
    return SVD(vt, v, ut, s, _real_noise(shape, vt))


def ddrm_times(path, steps: int, grid: str = "logsnr") -> Tensor:
    """The ``steps`` times at which DDRM calls the model: ``grid`` from t_max down to t_min (the last call's update
    goes to noise level 0), as in the official code where the 20-step default means 20 model calls."""
    return get_timesteps(path, max(steps - 1, 1), grid)[:steps]


def solve_ddrm(
    model: ModelBase,
    operator: LinearOperator,
    y: Tensor,
    *,
    steps: int = 20,
    eta: float = 0.85,
    eta_b: float = 1.0,
    grid: str = "logsnr",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict]:
    """DDRM (module docstring) with ``steps`` model calls; ``eta``, ``eta_b`` as in the paper (defaults 0.85, 1).
    ``y``: ``(B, *out_shape)``; returns samples ``(B, *in_shape)``."""
    if not 0 <= eta <= 1 or not 0 <= eta_b <= 1:
        raise ValueError(f"eta and eta_b must lie in [0, 1]; got eta={eta}, eta_b={eta_b}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    operator.check_y(y)
    svd = operator_svd(operator)
    path, sy, b = model.path, float(operator.noise_std), y.shape[0]
    ts = ddrm_times(path, steps, grid)
    levels = [(float(c.sigma / c.alpha), float(c.alpha)) for c in (coeffs(path, t) for t in ts)]
    s = svd.s.to(y.device)
    obs = s > 0
    s_safe = torch.where(obs, s, torch.ones_like(s))
    ybar = svd.ut(y) / s_safe.to(svd.ut(y).dtype)

    def noise() -> Tensor:
        return svd.noise(b, y.dtype, generator).to(ybar.dtype)

    def update(x0bar: Tensor, epsbar: Tensor | None, lvl: float) -> Tensor:
        z = noise()
        base = x0bar + lvl * (math.sqrt(1 - eta**2) * epsbar + eta * z) if epsbar is not None else lvl * z
        if sy > 0:
            weak = obs & (s * lvl < sy)
            strong = obs & (s * lvl >= sy)
            if epsbar is not None:
                toward = x0bar + math.sqrt(1 - eta**2) * lvl * (ybar - x0bar) * (s_safe / sy) + eta * lvl * z
                base = torch.where(weak, toward, base)
        else:
            strong = obs
        eb = eta_b
        if epsbar is None:  # start: ybar + sqrt(s_T^2 - sigma_y^2 / s_i^2) z, whatever eta_b (as the official code)
            x0bar, eb = ybar, 1.0
        var = (lvl**2 - eb**2 * sy**2 / s_safe**2).clamp(min=0)
        fixed = (1 - eb) * x0bar + eb * ybar + var.sqrt() * z
        return torch.where(strong, fixed, base)

    lvl0, alpha0 = levels[0]
    xbar = update(torch.zeros_like(ybar), None, lvl0)
    x = alpha0 * svd.v(xbar).to(y.dtype)
    for i in range(steps):
        with torch.no_grad():
            x0 = model.predict(x, time_batch(ts[i], x), "x0").to(y.dtype)
        if not torch.isfinite(x0).all():
            raise FloatingPointError("DDRM: the model returned non-finite predictions")
        x0bar = svd.vt(x0).to(xbar.dtype)
        epsbar = (xbar - x0bar) / levels[i][0]
        lvl_next, alpha_next = levels[i + 1] if i + 1 < steps else (0.0, 1.0)  # the last update goes to level 0
        xbar = update(x0bar, epsbar, lvl_next)
        x = alpha_next * svd.v(xbar).to(y.dtype)
    return x, {}
