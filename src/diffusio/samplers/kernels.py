"""One-step kernels: every integrator's single step, written once and driven by every sampler.

Two levels. An ``*_update`` is pure arithmetic on a state and a prediction (no model call), so a method that
changes the prediction first (posterior guidance, particle weights, MCMC) reuses the exact step. A ``*_step``
calls the model (once; Heun twice) and returns ``(x_next, x0)``: the new state and the x0 prediction it used.
Times ``t``, ``t_next`` are scalar grid points (float64 tensors or floats) in the path's native time; ``cond`` is
passed to the model. Coefficients are evaluated in float64 and applied as Python scalars, so the arithmetic stays
in ``x``'s dtype.

The reverse-time SDE family with marginals p_t (Song et al. 2021, Eq. 6; Karras et al. 2022, Eq. 6) is

    dx = [u(x, t) - w(t)^2 / 2 * score(x, t)] dt + w(t) dW,    u = alpha'/alpha x + ... the PF-ODE velocity,

for any free diffusion coefficient w(t) >= 0: w = 0 is the probability-flow ODE, w = g (g^2 the path's
``diffusion2``) Anderson's reverse SDE. :func:`euler_maruyama_step` takes ``w2`` directly or as ``eta^2 g^2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffusio.core.parametrization import from_x0
from diffusio.core.paths import Path
from diffusio.core.time import Coeffs, broadcast, coeffs, time_batch
from diffusio.models.base import ModelBase

__all__ = [
    "ancestral_step",
    "ancestral_update",
    "data_sde_update",
    "data_update",
    "ddim_step",
    "ddim_update",
    "em_update",
    "euler_maruyama_step",
    "euler_step",
    "heun_step",
    "heun_update",
    "noise_sde_update",
    "noise_update",
    "phi",
    "posterior_std",
    "predict_x0",
    "velocity",
]


def predict_x0(model: ModelBase, x: Tensor, t: Tensor | float, cond: dict | None = None) -> Tensor:
    """One model call: the x0 prediction at the scalar time ``t``, in ``x``'s dtype."""
    return model.predict(x, time_batch(t, x), "x0", **(cond or {})).to(x.dtype)


def velocity(model: ModelBase, x: Tensor, t: Tensor | float, cond: dict | None = None) -> tuple[Tensor, Tensor]:
    """The probability-flow ODE drift u = alpha' x0 + sigma' eps from one x0 call; returns ``(u, x0)``."""
    x0 = predict_x0(model, x, t, cond)
    return from_x0("velocity", x0, x, time_batch(t, x), model.path).to(x.dtype), x0


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


# --- probability-flow ODE in native time ---------------------------------------------------------------------------


def euler_step(
    model: ModelBase, x: Tensor, t: Tensor | float, t_next: Tensor | float, *, cond: dict | None = None
) -> tuple[Tensor, Tensor]:
    """Euler's method on the PF-ODE: x + (t_next - t) u(x, t). One call."""
    u, x0 = velocity(model, x, t, cond)
    return x + float(t_next - t) * u, x0


def heun_update(
    f: Callable[[Tensor, Tensor], Tensor], x: Tensor, d: Tensor, h: float | Tensor, t_next: Tensor | float
) -> tuple[Tensor, Tensor]:
    """Heun's corrector for dx/dt = f(x, t) (Karras et al. 2022, Alg. 1, lines 5-8; Suli & Mayers 2003, Sec. 12):
    x + h (d + f(x + h d, t_next)) / 2 with the slope ``d = f(x, t)`` already evaluated (one call of ``f``).

    ``h = t_next - t`` is a number or a per-sample ``(batch,)`` tensor (then ``t_next`` is ``(batch,)`` too), so
    drivers with their own time convention (interpolants, flow-map targets) reuse the step. Returns
    ``(x_next, slope)`` with ``slope = (d + d2) / 2`` the step's mean velocity.
    """
    hb = broadcast(h, x) if torch.is_tensor(h) and h.ndim else float(h)
    slope = 0.5 * (d + f(x + hb * d, t_next))
    return x + hb * slope, slope


def heun_step(
    model: ModelBase, x: Tensor, t: Tensor | float, t_next: Tensor | float, *, cond: dict | None = None
) -> tuple[Tensor, Tensor]:
    """Heun's second-order step on the PF-ODE (Karras et al. 2022, Alg. 1, lines 5-8). Two calls."""
    d, x0 = velocity(model, x, t, cond)
    x_next, _ = heun_update(lambda y, s: velocity(model, y, s, cond)[0], x, d, float(t_next - t), t_next)
    return x_next, x0


# --- DDIM and DDPM: exact Gaussian transitions given an x0 prediction ----------------------------------------------


def posterior_std(ct: Coeffs, cs: Coeffs) -> Tensor:
    """Std c of q(x_s | x_t, x0), s < t: c^2 = (sigma_t^2 - a^2 sigma_s^2) sigma_s^2 / sigma_t^2, a = alpha_t/alpha_s.

    Written as sigma_s^2 (-expm1(2 (lambda_t - lambda_s))) to avoid cancellation for small steps (Ho et al. 2020).
    """
    return cs.sigma * torch.sqrt(-torch.expm1(2 * (ct.lam - cs.lam)))


def ddim_update(
    path: Path,
    x: Tensor,
    x0: Tensor,
    t: Tensor | float,
    t_next: Tensor | float,
    *,
    eta: float = 0.0,
    noise: Tensor | None = None,
) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021, Eq. 12): x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z, c = eta * std.

    ``eta = 0`` is the deterministic first-order exponential integrator, written as
    x_s = (sigma_s/sigma_t) x_t - alpha_s expm1(lambda_t - lambda_s) x0; ``eta = 1`` is DDPM's ancestral step.
    ``noise`` (same shape as ``x``) is required when ``eta > 0``.
    """
    ct, cs = coeffs(path, t), coeffs(path, t_next)
    if eta == 0:
        return float(cs.sigma / ct.sigma) * x - float(cs.alpha * torch.expm1(ct.lam - cs.lam)) * x0
    if noise is None:
        raise ValueError("ddim_update with eta > 0 needs noise (a standard normal draw shaped like x)")
    c = eta * posterior_std(ct, cs)
    eps = (x - float(ct.alpha) * x0) / float(ct.sigma)
    return float(cs.alpha) * x0 + float(torch.sqrt((cs.sigma**2 - c**2).clamp(min=0))) * eps + float(c) * noise


def ddim_step(
    model: ModelBase,
    x: Tensor,
    t: Tensor | float,
    t_next: Tensor | float,
    *,
    cond: dict | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """One DDIM step (:func:`ddim_update` after one x0 call)."""
    x0 = predict_x0(model, x, t, cond)
    noise = _noise(x, generator) if eta > 0 else None
    return ddim_update(model.path, x, x0, t, t_next, eta=eta, noise=noise), x0


def ancestral_update(
    path: Path, x: Tensor, x0: Tensor, t: Tensor | float, t_next: Tensor | float, noise: Tensor
) -> Tensor:
    """A draw from q(x_s | x_t, x0) (Ho et al. 2020, Eq. 7): mean (a sigma_s^2/sigma_t^2) x_t + (alpha_s v/sigma_t^2)
    x0 with a = alpha_t/alpha_s, v = sigma_t^2 - a^2 sigma_s^2, plus :func:`posterior_std` times ``noise``."""
    ct, cs = coeffs(path, t), coeffs(path, t_next)
    r = torch.exp(2 * (ct.lam - cs.lam))  # a^2 sigma_s^2 / sigma_t^2, from lambda to avoid cancellation
    c_x = r * cs.alpha / ct.alpha  # a sigma_s^2 / sigma_t^2
    c_x0 = cs.alpha * (-torch.expm1(2 * (ct.lam - cs.lam)))  # alpha_s v / sigma_t^2
    return float(c_x) * x + float(c_x0) * x0 + float(posterior_std(ct, cs)) * noise


def ancestral_step(
    model: ModelBase,
    x: Tensor,
    t: Tensor | float,
    t_next: Tensor | float,
    *,
    cond: dict | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """One DDPM ancestral step: p(x_s | x_t) = q(x_s | x_t, x0_hat) (Ho et al. 2020, Alg. 2)."""
    x0 = predict_x0(model, x, t, cond)
    return ancestral_update(model.path, x, x0, t, t_next, _noise(x, generator)), x0


# --- Euler-Maruyama on the reverse SDE with a free diffusion coefficient --------------------------------------------


def em_update(x: Tensor, drift: Tensor, w2: float, dt: float, noise: Tensor | None) -> Tensor:
    """x + drift dt + sqrt(w2 |dt|) noise (``noise`` may be None when ``w2 == 0``)."""
    out = x + drift * dt
    if w2 > 0:
        if noise is None:
            raise ValueError("em_update with w2 > 0 needs noise (a standard normal draw shaped like x)")
        out = out + math.sqrt(w2 * abs(dt)) * noise
    return out


def euler_maruyama_step(
    model: ModelBase,
    x: Tensor,
    t: Tensor | float,
    t_next: Tensor | float,
    *,
    cond: dict | None = None,
    eta: float = 1.0,
    w2: float | Callable[[Tensor], float] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """One Euler-Maruyama step of dx = [u - w^2/2 score] dt + w dW from ``t`` to ``t_next`` (one x0 call).

    ``w2`` is w(t)^2, a number or a function of the float64 time; by default ``eta^2 g(t)^2`` with g^2 the path's
    ``diffusion2`` (``eta = 1``: Anderson's reverse SDE; ``eta = 0``: the PF-ODE). For a VP/VE path the drift is
    f x - (1 + eta^2)/2 g^2 score.
    """
    path = model.path
    t64 = torch.as_tensor(t, dtype=torch.float64)
    w2_t = float(eta**2 * path.diffusion2(t64)) if w2 is None else float(w2(t64) if callable(w2) else w2)
    if not (math.isfinite(w2_t) and w2_t >= 0):
        raise ValueError(f"the diffusion coefficient w2 must be finite and >= 0, got {w2_t} at t={float(t64)}")
    u, x0 = velocity(model, x, t, cond)
    drift = u
    if w2_t > 0:
        score = from_x0("score", x0, x, time_batch(t, x), path).to(x.dtype)
        drift = u - 0.5 * w2_t * score
    noise = _noise(x, generator) if w2_t > 0 else None
    return em_update(x, drift, w2_t, float(t_next - t64), noise), x0


# --- exponential integrators in half log-SNR lambda = log(alpha / sigma) -----------------------------------------


def phi(k: int, z: float) -> float:
    """phi_k(z) = sum_{n>=0} z^n / (n+k)!, i.e. phi_0 = e^z, phi_{k+1} = (phi_k - 1/k!)/z (Hochbruck & Ostermann 2010).

    The recursion cancels badly for small |z|, so there the power series is summed instead.
    """
    if abs(z) < 0.5:
        term, total, n = 1.0 / math.factorial(k), 0.0, 0
        while abs(term) > 1e-18 * max(abs(total), 1e-300) or n < 2:
            total += term
            n += 1
            term *= z / (n + k)
        return total
    val = math.expm1(z) / z if k >= 1 else math.exp(z)
    for j in range(1, k):
        val = (val - 1 / math.factorial(j)) / z
    return val


def data_update(x: Tensor, s, t, ds: list[Tensor], eta: float = 0.0) -> Tensor:
    """Data-form exponential-integrator update s -> t with scaled derivatives ``ds`` (d_k ~ h^k x0^(k)):
    x_t = (sigma_t/sigma_s) x_s + alpha_t sum_k h phi_{k+1}(-h) d_k, h = lambda_t - lambda_s (Lu et al. 2022b, Eq. 9).

    ``s``, ``t`` carry ``alpha``, ``sigma``, ``lam`` (a :class:`~diffusio.core.time.Coeffs` or any record with
    those fields). ``eta`` > 0 gives the SDE variant's deterministic part (DPM-Solver++ SDE, Lu et al. 2022b, Sec.
    5: the linear part e^{-(1+eta) h} integrated exactly).
    """
    h = float(t.lam) - float(s.lam)
    h_eta = (1 + eta) * h
    out = (float(t.sigma) / float(s.sigma) * math.exp(-eta * h)) * x
    for k, d in enumerate(ds):
        out = out + (float(t.alpha) * h_eta * phi(k + 1, -h_eta)) * d
    return out


def data_sde_update(x: Tensor, s, t, ds: list[Tensor], eta: float, noise: Tensor) -> Tensor:
    """SDE-DPM-Solver++ in data form (Lu et al. 2022b, Sec. 5; Gonzalez et al. 2023, SEEDS): :func:`data_update`
    with the linear part e^{-(1+eta) h} plus sigma_t sqrt(1 - e^{-2 eta h}) ``noise``, the exact noise of the
    linear SDE. ``eta = 1`` is the reverse SDE (order 1 is DDPM's ancestral step)."""
    h = float(t.lam) - float(s.lam)
    return data_update(x, s, t, ds, eta) + float(t.sigma) * math.sqrt(-math.expm1(-2 * eta * h)) * noise


def noise_sde_update(x: Tensor, s, t, ds: list[Tensor], noise: Tensor) -> Tensor:
    """SDE-DPM-Solver in noise form (Lu et al. 2022b, Sec. 5; Li et al. 2025, MRS Eq. 16): the integral of the
    noise prediction carries twice the ODE's weight, x_t = (alpha_t/alpha_s) x_s - 2 sigma_t sum_k h phi_{k+1}(h)
    d_k + sigma_t sqrt(e^{2h} - 1) ``noise``."""
    h = float(t.lam) - float(s.lam)
    return noise_update(x, s, t, [2 * d for d in ds]) + float(t.sigma) * math.sqrt(math.expm1(2 * h)) * noise


def noise_update(x: Tensor, s, t, ds: list[Tensor]) -> Tensor:
    """Noise-form update s -> t with scaled derivatives ``ds`` (d_k ~ h^k eps^(k)):
    x_t = (alpha_t/alpha_s) x_s - sigma_t sum_k h phi_{k+1}(h) d_k (Lu et al. 2022a, Eq. 3.7)."""
    h = float(t.lam) - float(s.lam)
    out = (float(t.alpha) / float(s.alpha)) * x
    for k, d in enumerate(ds):
        out = out - (float(t.sigma) * h * phi(k + 1, h)) * d
    return out
