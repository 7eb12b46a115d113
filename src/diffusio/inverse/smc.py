"""Weighted-particle posterior sampling that is exact as the particle count grows: twisted sequential Monte Carlo
along the reverse diffusion with closed-form Gaussian moves for a linear Gaussian likelihood.

Targets. For y = A x0 + n, n ~ N(0, s_y^2 I), the particles at grid time t target

    q_t(x) ~ p_t(x) psi_t(x),    psi_t(x) = N(y; A (kappa_t x + beta_t), s_y^2 I + rho_t A A^T),

with psi at the data end equal to the likelihood, so the last target is the posterior. Two twists:

- ``twist="likelihood"``: kappa = 1, beta = 0, rho = 0, i.e. psi_t = exp(-mu_y(x_t)) evaluated at the noisy
  state. This is the family of AFDPS (Chen, Ren, Min, Ying, Izzo 2025, "approximation-free" ensemble sampling):
  its continuous-time limit is their Fokker-Planck equation with reaction term R.
- ``twist="gaussian"`` (default): psi_t = p(y | x_t) computed exactly for an isotropic Gaussian prior
  N(data_mean, data_var I): E[x0 | x_t] = kappa x + beta, Var[x0 | x_t] = rho I. For a prior of that form the
  weights stay uniform; for any other prior it is an approximation that only affects the weights' variance,
  never the limit (the twisting idea of twisted SMC, Wu et al. 2023, with a twist that needs no network call).

Moves (``eta`` > 0, the SDE variant). The reverse kernel k(x' | x) = N(m(x), c^2 I) with m from
:func:`~diffusio.samplers.kernels.ddim_update` (``eta = 1``: DDPM's ancestral step) times psi_{t'}(x') is a
Gaussian in x' (psi is linear-Gaussian in x'), so particles move by an exact draw from the locally optimal proposal
k(x'|x) psi_{t'}(x') / Z(x) and the log-weight grows by log Z(x) - log psi_t(x): the increment is exactly the one
of the move made, computed before the move (a fully adapted particle filter, Pitt & Shephard 1999), so resampling
happens before moving. Nothing is stepped explicitly, so the scheme is stable for every s_y and time step, in
float32 and float64; its continuous-time limit is the AFDPS weight rate. ``analytic_var`` adds
b^2 Var[x0 | x] to c^2 (b the kernel's x0 coefficient; Bao et al. 2022's analytic reverse variance), which makes
the kernel the exact reverse transition for an isotropic Gaussian prior.

``eta = 0`` is the ODE + corrector variant of AFDPS: a deterministic DDIM (probability-flow) step carries q_t to
p_{t'} psi_t(x), the weight grows by log psi_{t'}(x') - log psi_t(x), and a corrector rejuvenates the particles.

Rejuvenation (resample-move, Gilks & Berzuini 2001): after each resampling (``eta = 0``: after every step),
``mcmc_steps`` preconditioned MALA steps leave q_t invariant. The gradient is the model score plus grad log psi;
the preconditioner P = (I / v_t + kappa^2 A^T Gamma^{-1} A)^{-1} is the covariance of the Gaussian approximation
of q_t (v_t = alpha^2 data_var + sigma^2), applied and sampled in closed form; the log-density ratio of p_t
between the two points is Simpson's rule on the line integral of the score (one extra model call at the midpoint;
exact when p_t is Gaussian, error O(|x' - x|^5) otherwise; the trapezoidal rule alone biased a 2-D three-mode
mixture). The step size adapts towards an acceptance rate of 0.574.

Output: at the last grid time the particles are denoised, x0 = E[x0 | x_K] (one model call), and reweighted by
exp(-mu_y(x0)) / psi_K(x_K), so the weighted ensemble targets the exact-likelihood posterior.
Start: x_{t_max} ~ N(alpha data_mean, v_{t_max} I) psi_{t_max} exactly (the Gaussian approximation of p_{t_max}).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusio.core.time import coeffs, time_batch
from diffusio.core.timesteps import get_timesteps
from diffusio.inverse.exact import prior_moments
from diffusio.inverse.operators import LinearOperator, conjugate_gradient
from diffusio.models.base import ModelBase
from diffusio.samplers.kernels import ddim_update, posterior_std

__all__ = ["TWISTS", "resample", "solve_smc", "stage_one"]

TWISTS = ("gaussian", "likelihood")


def stage_one(
    operator: LinearOperator, y: Tensor, rho2: float, *, generator: torch.Generator | None = None, iters: int = 200
) -> Tensor:
    """Exact draws from N(x; 0, rho2 I) exp(-mu_y(x)) = N(m0, Lambda^{-1}), Lambda = A^T A / s^2 + I / rho2, by
    perturb-and-solve: Lambda x = A^T (y + s z2) / s^2 + z1 / sqrt(rho2), solved with conjugate gradients.
    ``y``: ``(B, *out_shape)``; returns ``(B, *in_shape)``."""
    s2 = operator.noise_std**2
    z1 = torch.randn((y.shape[0], *operator.in_shape), generator=generator, device=y.device, dtype=y.dtype)
    z2 = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    b = operator.adjoint(y + operator.noise_std * z2) / s2 + z1 / math.sqrt(rho2)
    return conjugate_gradient(lambda v: operator.normal(v) / s2 + v / rho2, b, iters=iters)


def resample(logw: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Systematic resampling (Kitagawa 1996) within each row of ``logw`` ``(B, N)``: ancestor indices ``(B, N)``."""
    b, n = logw.shape
    cdf = torch.softmax(logw.double(), 1).cumsum(1)
    cdf[:, -1] = 1.0
    u = (torch.rand((b, 1), generator=generator, dtype=torch.float64).to(logw.device) + torch.arange(n)) / n
    return torch.searchsorted(cdf, u).clamp(max=n - 1)


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """Rows of ``x`` ``(B N, ...)`` picked per group by ``idx`` ``(B, N)``."""
    b, n = idx.shape
    flat = (idx + n * torch.arange(b, device=idx.device)[:, None]).reshape(-1)
    return x[flat]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(1)


@dataclass(frozen=True)
class _Twist:
    """psi(x) = N(y; A (kappa x + beta), s2 I + rho A A^T) at one time."""

    kappa: float
    beta: float
    rho: float


class _Gauss:
    """Closed-form Gaussian algebra for the linear model y = A (kappa x + beta) + e, e ~ N(0, s2 I + rho A A^T)."""

    def __init__(self, operator: LinearOperator, y: Tensor, generator):
        self.op, self.y, self.gen = operator, y, generator
        self.s2 = operator.noise_std**2

    def _randn(self, like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=self.gen, device=like.device, dtype=like.dtype)

    def resid(self, x: Tensor, tw: _Twist) -> Tensor:
        return self.y - self.op(tw.kappa * x + tw.beta)

    def log_psi(self, x: Tensor, tw: _Twist) -> Tensor:
        """log psi(x) up to a constant shared by all particles, float64 ``(B N,)``."""
        r = self.resid(x, tw)
        return -0.5 * _dot(r, self.op.solve_aat(r, tw.rho, self.s2)).double()

    def grad_log_psi(self, x: Tensor, tw: _Twist) -> Tensor:
        r = self.resid(x, tw)
        return tw.kappa * self.op.adjoint(self.op.solve_aat(r, tw.rho, self.s2))

    def product(self, m: Tensor, c2: float, tw: _Twist, draw: bool = True) -> tuple[Tensor, Tensor]:
        """N(x; m, c2 I) psi(x) = Z N(x; mean, cov): returns (a draw, or the mean if ``draw`` is False; log Z up to
        a shared constant). The draw is Matheron's rule: x = u + K (y - A(kappa u + beta) - e), u ~ N(m, c2 I)."""
        r2 = tw.rho + tw.kappa**2 * c2
        res = self.y - self.op(tw.kappa * m + tw.beta)
        log_z = -0.5 * _dot(res, self.op.solve_aat(res, r2, self.s2)).double()
        if draw and c2 > 0:
            z = self._randn(m)
            e = math.sqrt(self.s2) * self._randn(self.y)
            if tw.rho > 0:
                e = e + math.sqrt(tw.rho) * self.op(self._randn(m))
            res = res - self.op(tw.kappa * math.sqrt(c2) * z) - e
            m = m + math.sqrt(c2) * z
        x = m + tw.kappa * c2 * self.op.adjoint(self.op.solve_aat(res, r2, self.s2))
        return x, log_z

    def precond(self, g: Tensor, v: float, tw: _Twist) -> Tensor:
        """P g, P = (I / v + kappa^2 A^T Gamma^{-1} A)^{-1} = v I - v^2 kappa^2 A^T (Gamma + v kappa^2 A A^T)^{-1} A."""
        inner = self.op.solve_aat(self.op(g), tw.rho + v * tw.kappa**2, self.s2)
        return v * g - v**2 * tw.kappa**2 * self.op.adjoint(inner)

    def precond_noise(self, like: Tensor, v: float, tw: _Twist) -> Tensor:
        """A draw from N(0, P) (the centred Gaussian product with prior N(0, v I))."""
        zero_tw = _Twist(tw.kappa, 0.0, tw.rho)
        saved = self.y
        self.y = torch.zeros_like(self.y)
        try:
            x, _ = self.product(torch.zeros_like(like), v, zero_tw)
        finally:
            self.y = saved
        return x

    def inv_quad(self, u: Tensor, v: float, tw: _Twist) -> Tensor:
        """u^T P^{-1} u = |u|^2 / v + kappa^2 (A u)^T Gamma^{-1} (A u), float64 ``(B N,)``."""
        au = self.op(u)
        return (_dot(u, u) / v + tw.kappa**2 * _dot(au, self.op.solve_aat(au, tw.rho, self.s2))).double()


def _check_finite(name: str, *tensors: Tensor) -> None:
    for t in tensors:
        if not torch.isfinite(t).all():
            raise FloatingPointError(
                f"SMC produced non-finite {name}; check the model's predictions and the measurement (y, noise_std)"
            )


def solve_smc(
    model: ModelBase,
    operator: LinearOperator,
    y: Tensor,
    *,
    particles: int = 256,
    steps: int = 200,
    eta: float = 1.0,
    twist: str = "gaussian",
    analytic_var: bool = True,
    ess_threshold: float = 0.5,
    mcmc_steps: int = 1,
    rejuvenate: str = "always",
    final_mcmc: int = 10,
    data_var: float | None = None,
    data_mean: float | None = None,
    grid: str = "logsnr",
    weights: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict]:
    """Twisted SMC posterior sampler (module docstring) with ``particles`` particles per measurement.

    ``y``: ``(B, *out_shape)``. ``eta`` in (0, 1]: stochastic DDIM kernel with the exact Gaussian twist-adapted move
    (1 = ancestral, the default); ``eta = 0``: the ODE + MALA-corrector variant. ``twist``: ``"gaussian"`` (default)
    or ``"likelihood"`` (AFDPS's family exp(-mu_y(x_t))). ``data_var`` / ``data_mean``: per-pixel variance and mean
    of the prior (default: the exact model's, else 1 and 0); they enter the twist, the start, the analytic kernel
    variance and the MALA preconditioner, never the limit. ``mcmc_steps`` MALA steps after each resampling
    (``rejuvenate="always"`` or ``eta = 0``: after every step), ``final_mcmc`` more at the last time after a final
    resampling. ``weights=False`` drops the weights (a
    negative control). Returns the weighted posterior mean ``(B, *in_shape)``; ``info`` has ``particles``
    ``(B, N, ...)``, ``log_weights`` ``(B, N)`` (normalised), the ESS before each step, resampling count and MALA
    acceptance rates. Model calls: steps + 1 + two per MALA step (default 200 steps: 621 calls). 200 steps
    rather than 100: on the bimodal sigma_y = 0.1 bench cell 100 steps left the mode weights up to 3.4 standard
    deviations off, 200 steps within 1.
    """
    if not isinstance(operator, LinearOperator) or not operator.noise_std > 0:
        raise ValueError("the SMC sampler needs a LinearOperator with noise_std > 0 (a Gaussian likelihood)")
    if not isinstance(particles, int) or particles < 1:
        raise ValueError(f"particles must be an integer >= 1; got {particles!r}")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1] (0: ODE + corrector, 1: ancestral); got {eta}")
    if twist not in TWISTS:
        raise ValueError(f"twist must be one of {TWISTS}; got {twist!r}")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold must be in [0, 1]; got {ess_threshold}")
    if rejuvenate not in ("resample", "always"):
        raise ValueError(f"rejuvenate must be 'resample' (MALA after each resampling) or 'always'; got {rejuvenate!r}")
    if mcmc_steps < 0 or final_mcmc < 0:
        raise ValueError(f"mcmc_steps and final_mcmc must be >= 0; got {mcmc_steps}, {final_mcmc}")
    if eta == 0 and mcmc_steps < 1:
        raise ValueError("eta = 0 (ODE + corrector) needs mcmc_steps >= 1: a deterministic move never separates copies")
    operator.check_y(y)
    var, mean0 = prior_moments(model, data_var, data_mean)
    path, (b, n) = model.path, (y.shape[0], particles)
    ts = get_timesteps(path, steps, grid)
    gauss = _Gauss(operator, y.repeat_interleave(n, 0), generator)

    def twist_at(t) -> _Twist:
        c = coeffs(path, t)
        a, s = float(c.alpha), float(c.sigma)
        if twist == "likelihood":
            return _Twist(1.0, 0.0, 0.0)
        vt = a * a * var + s * s
        return _Twist(var * a / vt, mean0 * s * s / vt, var * s * s / vt)

    def marg_var(t) -> float:
        c = coeffs(path, t)
        return float(c.alpha) ** 2 * var + float(c.sigma) ** 2

    def x0_of(x: Tensor, t) -> Tensor:
        with torch.no_grad():
            out = model.predict(x, time_batch(t, x), "x0").to(x.dtype)
        _check_finite("model predictions", out)
        return out

    step_size = [0.5]
    acc_log: list[float] = []

    def mala(x: Tensor, x0: Tensor, t, tw: _Twist, k: int) -> tuple[Tensor, Tensor]:
        c = coeffs(path, t)
        a, s2t, v = float(c.alpha), float(c.sigma) ** 2, marg_var(t)
        for _ in range(k):
            h = step_size[0]
            score = (a * x0 - x) / s2t
            grad = score + gauss.grad_log_psi(x, tw)
            prop = x + 0.5 * h * gauss.precond(grad, v, tw) + math.sqrt(h) * gauss.precond_noise(x, v, tw)
            x0p = x0_of(prop, t)
            score_p = (a * x0p - prop) / s2t
            grad_p = score_p + gauss.grad_log_psi(prop, tw)
            d = prop - x
            mid = 0.5 * (x + prop)
            score_m = (a * x0_of(mid, t) - mid) / s2t
            log_p = _dot(score + 4 * score_m + score_p, d).double() / 6  # Simpson: log p_t(prop) - log p_t(x)
            log_r = log_p + gauss.log_psi(prop, tw) - gauss.log_psi(x, tw)
            fwd = gauss.inv_quad(d - 0.5 * h * gauss.precond(grad, v, tw), v, tw)
            bwd = gauss.inv_quad(-d - 0.5 * h * gauss.precond(grad_p, v, tw), v, tw)
            log_r = log_r - (bwd - fwd) / (2 * h)
            u = torch.rand(log_r.shape, generator=generator, dtype=torch.float64).to(log_r.device)
            accept = (torch.log(u) < log_r) & torch.isfinite(log_r)
            sel = accept.reshape(-1, *([1] * (x.ndim - 1)))
            x, x0 = torch.where(sel, prop, x), torch.where(sel, x0p, x0)
            rate = float(accept.double().mean())
            acc_log.append(rate)
            step_size[0] = min(max(h * math.exp(rate - 0.574), 1e-4), 4.0)
        return x, x0

    tw = twist_at(ts[0])
    c0 = coeffs(path, ts[0])
    x, _ = gauss.product(
        torch.full((b * n, *operator.in_shape), float(c0.alpha) * mean0, dtype=y.dtype, device=y.device),
        marg_var(ts[0]),
        tw,
    )
    x0 = x0_of(x, ts[0])
    logw = torch.zeros(b, n, dtype=torch.float64, device=y.device)
    ess, resamples = [], 0

    def normalise(lw: Tensor) -> Tensor:
        return lw - torch.logsumexp(lw, 1, keepdim=True)

    def maybe_resample(x, x0, logw):
        nonlocal resamples
        w = torch.softmax(logw, 1)
        ess.append(float((1 / (w**2).sum(1)).mean()) / n)
        if weights and float((1 / (w**2).sum(1)).min()) < ess_threshold * n:
            idx = resample(logw, generator)
            resamples += 1
            return _gather(x, idx), _gather(x0, idx), torch.zeros_like(logw), True
        return x, x0, logw, False

    def kernel(x: Tensor, x0: Tensor, ct, cs, t, t_next) -> tuple[Tensor, float]:
        """Mean and variance of the reverse kernel N(m(x), c^2 I) (plus the analytic x0-variance term)."""
        if eta == 0:
            return ddim_update(path, x, x0, t, t_next), 0.0
        c2 = float(eta * posterior_std(ct, cs)) ** 2
        mean = ddim_update(path, x, x0, t, t_next, eta=eta, noise=torch.zeros_like(x))
        if analytic_var:
            keep = math.sqrt(max(float(cs.sigma) ** 2 - c2, 0.0)) / float(ct.sigma)
            b_coef = float(cs.alpha) - keep * float(ct.alpha)
            a, s = float(ct.alpha), float(ct.sigma)
            c2 += b_coef**2 * var * s * s / (a * a * var + s * s)
        return mean, c2

    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        tw_next = twist_at(t_next)
        ct, cs = coeffs(path, t), coeffs(path, t_next)
        if eta > 0:  # fully adapted: weight by the predictive, resample, then draw the optimal move
            mean, c2 = kernel(x, x0, ct, cs, t, t_next)
            _, log_z = gauss.product(mean, c2, tw_next, draw=False)
            if weights:
                logw = normalise(logw + (log_z - gauss.log_psi(x, tw)).reshape(b, n))
            _check_finite("log-weights", logw)
            x, x0, logw, moved = maybe_resample(x, x0, logw)
            if moved:
                mean, c2 = kernel(x, x0, ct, cs, t, t_next)
            x, _ = gauss.product(mean, c2, tw_next)
            _check_finite("particles", x)
            x0 = x0_of(x, t_next)
            if mcmc_steps and (moved or rejuvenate == "always"):
                x, x0 = mala(x, x0, t_next, tw_next, mcmc_steps)
        else:  # ODE + corrector: deterministic flow step, reweight by the twist ratio, resample, MALA corrector
            x_new, _ = kernel(x, x0, ct, cs, t, t_next)
            _check_finite("particles", x_new)
            if weights:
                logw = normalise(logw + (gauss.log_psi(x_new, tw_next) - gauss.log_psi(x, tw)).reshape(b, n))
            _check_finite("log-weights", logw)
            x = x_new
            x0 = x0_of(x, t_next)
            x, x0, logw, _ = maybe_resample(x, x0, logw)
            x, x0 = mala(x, x0, t_next, tw_next, mcmc_steps)
        tw = tw_next
    if final_mcmc:  # resample-move at the last time: equal weights, then rejuvenate
        if weights:
            idx = resample(logw, generator)
            x, x0, logw, resamples = _gather(x, idx), _gather(x0, idx), torch.zeros_like(logw), resamples + 1
        x, x0 = mala(x, x0, ts[-1], tw, final_mcmc)
    # denoise and swap the twist for the exact likelihood at x0 = E[x0 | x_K]
    if weights:
        r = gauss.y - operator(x0)
        log_lik = -0.5 * _dot(r, r).double() / gauss.s2
        logw = normalise(logw + (log_lik - gauss.log_psi(x, tw)).reshape(b, n))
    _check_finite("final particles or weights", x0, logw)
    ess.append(float((1 / (torch.softmax(logw, 1) ** 2).sum(1)).mean()) / n)
    xs = x0.reshape(b, n, *x0.shape[1:])
    w = torch.softmax(logw, 1).to(x0.dtype)
    post_mean = (w.reshape(b, n, *([1] * (x0.ndim - 1))) * xs).sum(1)
    samples = _gather(x0, resample(logw, generator)).reshape(xs.shape)
    info = {
        "particles": xs,
        "log_weights": logw,
        "samples": samples,
        "ess": ess,
        "resamples": resamples,
        "acceptance": acc_log,
        "mcmc_step": step_size[0],
    }
    return post_mean, info
