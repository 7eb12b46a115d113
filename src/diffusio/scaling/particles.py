"""Particle methods on stochastic transitions: SMC / Feynman-Kac steering and Rollover Budget Forcing.

Both need a *stochastic* one-step transition. Diffusion models have one (DDPM's ancestral step, Euler-Maruyama on
the reverse SDE); for a flow model, Kim et al. (2025, "Inference-Time Scaling for Flow Models via Stochastic
Generation and Rollover Budget Forcing", Sec. 4.1, Eq. 8-10) turn the ODE into the marginal-preserving SDE

    dx = [u_t(x) - g_t^2 / 2 * s_t(x)] dt + g_t dW,    s_t = score recovered from the velocity u_t,

with a free diffusion coefficient g_t (their choice g_t = 3 t^2), and optionally first convert the linear
interpolant to a VP one at equal SNR (Sec. 4.2; :class:`~diffusio.models.Rescheduled` with a VP path). Both are the
kernels' :func:`~diffusio.samplers.kernels.em_update` with ``w2 = g_t^2``; the score and velocity come from the
model's x0 prediction through the conversion hub, which for the linear path is Kim et al.'s Eq. 9,
s = -((1 - t) u + x) / t.

Every transition here is an ``*_update`` (pure arithmetic on the x0 prediction), so a particle's Tweedie estimate
x0_hat -- on which rewards are computed -- reuses the model call that also drives its next step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffusio.core.paths import Path
from diffusio.core.time import coeffs, time_batch
from diffusio.samplers import SOLVERS
from diffusio.samplers.kernels import ancestral_update, ddim_update, em_update
from diffusio.scaling.account import Account

__all__ = [
    "DIFFUSIONS",
    "ParticleResult",
    "Transition",
    "diffusion_schedule",
    "make_transition",
    "rbf_loop",
    "smc_loop",
    "systematic_resample",
]

DIFFUSIONS = ("square", "linear", "constant", "path")


def diffusion_schedule(name: str, scale: float, path: Path) -> Callable[[Tensor], float]:
    """w2(t) = g_t^2 for a named diffusion schedule: ``square`` g = c t^2 (Kim et al. 2025, their default c = 3),
    ``linear`` g = c t, ``constant`` g = c, ``path`` g = c g_path(t) (c = 1: Anderson's reverse SDE)."""
    if name not in DIFFUSIONS:
        raise ValueError(f"diffusion must be one of {', '.join(DIFFUSIONS)}, a number or a function of t; got {name!r}")
    if not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"diffusion_scale must be a finite number >= 0, got {scale}")
    c2 = float(scale) ** 2
    if name == "square":
        return lambda t: c2 * float(t) ** 4
    if name == "linear":
        return lambda t: c2 * float(t) ** 2
    if name == "constant":
        return lambda t: c2
    return lambda t: c2 * float(path.diffusion2(torch.as_tensor(t, dtype=torch.float64)))


@dataclass
class Transition:
    """A stochastic one-step update ``update(x, x0, t, t_next, noise) -> x_next`` (no model call)."""

    name: str
    update: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def make_transition(path: Path, solver: str, *, strategy: str, **opts) -> Transition:
    """The stochastic transition named by ``solver`` (``ddpm``, ``euler_maruyama`` with ``diffusion`` /
    ``diffusion_scale`` / ``eta``, or ``ddim`` with ``eta > 0``); a deterministic one is refused."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(sorted(SOLVERS))}")
    fix = "use solver='euler_maruyama' (with diffusion='square' for a flow model) or solver='ddpm'"
    if solver == "ddpm":
        _no_opts(opts, solver)
        return Transition("ddpm", lambda x, x0, t, s, z: ancestral_update(path, x, x0, t, s, z))
    if solver == "ddim":
        eta = float(opts.pop("eta", 0.0))
        _no_opts(opts, solver)
        if not (math.isfinite(eta) and eta > 0):
            raise ValueError(
                f"strategy {strategy!r} resamples particles and needs a stochastic solver; solver 'ddim' with "
                f"eta={eta} is deterministic: pass eta > 0, or {fix}"
            )
        return Transition(f"ddim(eta={eta})", lambda x, x0, t, s, z: ddim_update(path, x, x0, t, s, eta=eta, noise=z))
    if solver == "euler_maruyama":
        diffusion = opts.pop("diffusion", None)
        scale = float(opts.pop("diffusion_scale", 3.0 if diffusion == "square" else 1.0))
        eta = float(opts.pop("eta", 1.0))
        _no_opts(opts, solver)
        if diffusion is None:
            w2 = diffusion_schedule("path", eta, path)
        elif isinstance(diffusion, str):
            w2 = diffusion_schedule(diffusion, scale, path)
        elif callable(diffusion):
            w2 = diffusion
        else:
            value = float(diffusion)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"diffusion must be >= 0 (it is w2 = g^2), got {diffusion}")
            w2 = lambda t: value  # noqa: E731
        probe = [w2(torch.tensor(v, dtype=torch.float64)) for v in (path.t_min, 0.5 * (path.t_min + path.t_max))]
        if all(float(p) == 0 for p in probe):
            raise ValueError(
                f"strategy {strategy!r} resamples particles and needs a stochastic solver; the diffusion coefficient "
                "is zero (the probability-flow ODE): pass eta > 0 or diffusion='square' / a positive w2"
            )

        cache: dict[float, tuple[float, float, float, float, float]] = {}

        def em(x, x0, t, s, z):
            # drift u - w2/2 score from x0: eps = (x - alpha x0)/sigma, u = alpha' x0 + sigma' eps, score = -eps/sigma
            key = float(t)
            if key not in cache:
                c = coeffs(path, torch.as_tensor(t, dtype=torch.float64))
                w = float(w2(c.t))
                if not (math.isfinite(w) and w >= 0):
                    raise ValueError(f"the diffusion coefficient w2 must be finite and >= 0, got {w} at t={key}")
                a, sg = float(c.alpha), float(c.sigma)
                cache[key] = (a, sg, float(c.d_alpha), float(c.d_sigma) + 0.5 * w / sg, w)
            a, sg, da, k_eps, w = cache[key]
            eps = (x - a * x0) / sg
            out = em_update(x, da * x0 + k_eps * eps, w, float(s - t), z)
            if not torch.isfinite(out).all():
                raise ValueError(
                    f"the particle states became non-finite at t={key:g} (w2 = {w:.3g}): the diffusion schedule is "
                    "too large for this path and step size; use more steps, a smaller diffusion_scale, or "
                    "diffusion='path' (on paths whose time is not in [0, 1], e.g. EDM, 'square' grows as t^4)"
                )
            return out

        return Transition("euler_maruyama", em)
    raise ValueError(
        f"strategy {strategy!r} resamples particles and needs a stochastic solver; solver {solver!r} is "
        f"{'deterministic' if not SOLVERS[solver].stochastic else 'not supported for particles'}: {fix}"
    )


def _no_opts(opts: dict, solver: str) -> None:
    if opts:
        raise ValueError(f"unknown option(s) {', '.join(sorted(opts))} for the particle transition {solver!r}")


def systematic_resample(log_w: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Systematic resampling (Kitagawa 1996) per row of ``log_w`` ``(B, P)``: ancestor indices ``(B, P)``."""
    b, p = log_w.shape
    w = torch.softmax(log_w.double(), 1)
    cdf = w.cumsum(1)
    cdf[:, -1] = 1.0
    u = (torch.rand(b, 1, generator=generator, dtype=torch.float64, device=log_w.device)
         + torch.arange(p, dtype=torch.float64, device=log_w.device)[None]) / p  # fmt: skip
    return torch.searchsorted(cdf, u).clamp(max=p - 1)


def _ess(log_w: Tensor) -> Tensor:
    w = torch.softmax(log_w, 1)
    return 1.0 / (w**2).sum(1)


@dataclass
class ParticleResult:
    """Weighted particles of ``B`` independent populations: ``x`` ``(B, P, ...)``, normalised ``log_weights``
    ``(B, P)``, final ``rewards`` ``(B, P)``, resampling events per population, ESS per step ``(steps + 1, B)``."""

    x: Tensor
    log_weights: Tensor
    rewards: Tensor
    resamples: Tensor
    ess: Tensor
    ts: Tensor
    extra: dict = field(default_factory=dict)


def smc_loop(
    acc: Account,
    transition: Transition,
    ts: Tensor,
    x: Tensor,
    particles: int,
    *,
    temperature: float,
    ess_threshold: float,
    tempering: str,
    cond: dict | None,
    generator: torch.Generator | None,
) -> ParticleResult:
    """Sequential Monte Carlo / Feynman-Kac steering (Singhal et al. 2025, "A General Framework for Inference-time
    Scaling and Steering of Diffusion Models", Sec. 3; Kim et al. 2025, Sec. 5) on ``x`` ``(B * P, ...)``.

    Step k: one model call per particle gives x0_hat_k; the reward r_k = V(x0_hat_k) updates the log-weight by
    lam_k r_k - lam_{k-1} r_{k-1} (lam = 1/temperature; ``tempering="linear"`` ramps lam_k = lam (k+1)/(K+1));
    populations whose ESS falls below ``ess_threshold * P`` are resampled (systematic); then every particle moves
    with the stochastic ``transition``. The final increment uses the reward of the final sample itself, so the
    potentials telescope to exp(lam r(x_K)): the weighted particles target p_model(x) exp(r(x)/temperature) / Z.
    """
    n_out, P, K = x.shape[0] // particles, particles, len(ts) - 1
    owner = torch.arange(n_out).repeat_interleave(P)
    lam = 1.0 / temperature
    lams = [lam * (k + 1) / (K + 1) if tempering == "linear" else lam for k in range(K + 1)]
    log_w = torch.zeros(n_out, P, dtype=torch.float64)
    r_prev = torch.zeros(n_out, P, dtype=torch.float64)
    lam_prev = 0.0
    resamples = torch.zeros(n_out, dtype=torch.long)
    ess_hist = []
    cond_rows = None if cond is None else _rows(cond, owner, n_out)
    for k in range(K):
        with acc.owned(owner) as m:
            x0 = m.predict(x, time_batch(ts[k], x), "x0", **(cond_rows or {})).to(x.dtype)
        r = acc.score(x0, owner).reshape(n_out, P)
        log_w = log_w + lams[k] * r - lam_prev * r_prev
        log_w = log_w - torch.logsumexp(log_w, 1, keepdim=True)
        r_prev, lam_prev = r, lams[k]
        ess = _ess(log_w)
        ess_hist.append(ess)
        low = ess < ess_threshold * P
        if low.any():
            anc = systematic_resample(log_w[low], generator)
            base = (torch.nonzero(low)[:, 0] * P)[:, None]
            idx = torch.arange(n_out * P).reshape(n_out, P)
            idx[low] = base + anc
            flat = idx.reshape(-1)
            x, x0 = x[flat], x0[flat]
            r_prev = r_prev.reshape(-1)[flat].reshape(n_out, P)
            log_w[low] = -math.log(P)
            resamples += low.long()
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = transition.update(x, x0, ts[k], ts[k + 1], noise)
    r = acc.score(x, owner).reshape(n_out, P)
    log_w = log_w + lams[K] * r - lam_prev * r_prev
    log_w = log_w - torch.logsumexp(log_w, 1, keepdim=True)
    ess_hist.append(_ess(log_w))
    return ParticleResult(x.reshape(n_out, P, *x.shape[1:]), log_w, r, resamples, torch.stack(ess_hist), ts)


def _rows(cond: dict, owner: Tensor, n_out: int) -> dict:
    from diffusio.scaling.account import index_cond

    return index_cond(cond, owner, n_out)


def rbf_loop(
    acc: Account,
    transition: Transition,
    ts: Tensor,
    path: Path,
    event: tuple[int, ...],
    *,
    init: int,
    quota: int,
    cond: dict | None,
    generator: torch.Generator | None,
    history: list,
) -> tuple[Tensor, Tensor, Tensor]:
    """Rollover Budget Forcing (Kim et al. 2025, Sec. 4.3, Alg. 1) for ``B`` independent chains in lockstep.

    Draw ``init`` noises per chain at ts[0], keep the one whose Tweedie estimate scores best. At step k each chain
    proposes x' = transition(x, x0_hat) (1 model call for x0_hat' at ts[k+1], reward r' = V(x0_hat')) until a
    proposal beats the best reward so far (accepted at once; the unused quota rolls over to step k+1) or the quota
    ``quota + rollover`` is spent (the step's best proposal is accepted). At the last step nothing can roll over, so
    the chain spends its whole remaining quota and keeps the best proposal. Returns (x0_hat, reward, steps' use).
    """
    n_out, K = acc.n_out, len(ts) - 1
    owner = torch.arange(n_out).repeat_interleave(init)
    x = path.prior_sample((n_out * init, *event), generator=generator)
    with acc.owned(owner) as m:
        x0 = m.predict(x, time_batch(ts[0], x), "x0", **(_rows(cond, owner, n_out) if cond else {})).to(x.dtype)
    r = acc.score(x0, owner).reshape(n_out, init)
    pick = r.argmax(1) + torch.arange(n_out) * init
    x, x0, best = x[pick], x0[pick], r.reshape(-1)[pick].clone()
    cur_r = best.clone()
    history.append((float(acc.nfe.double().mean()), float(best.mean())))
    carry = torch.zeros(n_out, dtype=torch.long)
    use = torch.zeros(K, n_out, dtype=torch.long)
    all_rows = torch.arange(n_out)
    for k in range(K):
        last = k == K - 1
        Q = quota + carry
        used = torch.zeros(n_out, dtype=torch.long)
        done = torch.zeros(n_out, dtype=torch.bool)
        sb_r = torch.full((n_out,), -math.inf, dtype=torch.float64)
        sb_x, sb_x0 = x.clone(), x0.clone()
        while not done.all():
            a = all_rows[~done]
            noise = torch.randn((a.shape[0], *event), generator=generator, dtype=x.dtype)
            xp = transition.update(x[a], x0[a], ts[k], ts[k + 1], noise)
            with acc.owned(a) as m:
                x0p = m.predict(xp, time_batch(ts[k + 1], xp), "x0", **(_rows(cond, a, n_out) if cond else {}))
            x0p = x0p.to(x.dtype)
            rp = acc.score(x0p, a)
            used[a] += 1
            better = rp > sb_r[a]
            bi = a[better]
            sb_r[bi], sb_x[bi], sb_x0[bi] = rp[better], xp[better], x0p[better]
            improved = (rp > best[a]) & (not last)
            exhausted = used[a] >= Q[a]
            acc_now = a[improved]
            # rollover: accept the improving proposal at once, carry the unused quota to the next step
            x[acc_now], x0[acc_now], best[acc_now], cur_r[acc_now] = (
                xp[improved],
                x0p[improved],
                rp[improved],
                rp[improved],
            )
            carry[acc_now] = Q[acc_now] - used[acc_now]
            done[acc_now] = True
            forced = a[exhausted & ~improved]
            x[forced], x0[forced], cur_r[forced] = sb_x[forced], sb_x0[forced], sb_r[forced]
            best[forced] = torch.maximum(best[forced], sb_r[forced])
            carry[forced] = 0
            done[forced] = True
        use[k] = used
        history.append((float(acc.nfe.double().mean()), float(best.mean())))
    return x0, cur_r, use
