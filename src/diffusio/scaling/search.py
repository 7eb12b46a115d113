"""Inference-time search over noises and paths, and the one front door :func:`search` for every strategy.

Ma et al. (2025, "Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps", Sec. 3.2) treat a
deterministic sampler as a map noise -> sample and search it with a verifier: random search (best-of-N),
zero-order search around a pivot noise, and search over paths (branching at intermediate noise levels). The
particle methods of Kim et al. (2025) -- SMC and Rollover Budget Forcing -- live in :mod:`.particles` and share the
front door and the budget account (:mod:`.account`): ``budget`` is the number of model evaluations (NFE) allowed
per output sample, search included; verifier calls are counted separately (a verifier that calls the model, like
:class:`~.verifiers.SelfConsistency`, is charged its NFE too).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffusio.core.paths import LinearVP
from diffusio.core.time import coeffs
from diffusio.core.timesteps import get_timesteps
from diffusio.models.base import ModelBase
from diffusio.models.wrappers import Rescheduled
from diffusio.samplers import get_solver, sample
from diffusio.scaling.account import Account, index_cond
from diffusio.scaling.particles import make_transition, rbf_loop, smc_loop

__all__ = ["STRATEGIES", "SearchResult", "neighbours", "paths_schedule", "search", "smc"]

STRATEGIES = ("steps", "best_of_n", "zero_order", "paths", "smc", "rbf")
_OPTIONS = {
    "steps": (),
    "best_of_n": (),
    "zero_order": ("neighbours", "cos_sim", "patience", "restart"),
    "paths": ("width", "branches", "start", "renoise", "advance", "score_with"),
    "smc": ("temperature", "ess_threshold", "tempering", "select", "diffusion", "diffusion_scale", "eta"),
    "rbf": ("init", "diffusion", "diffusion_scale", "eta"),
}


@dataclass
class SearchResult:
    """What a search returns: the best sample per output ``x`` ``(B, ...)``, its verifier ``scores`` ``(B,)``, the
    model evaluations spent per output ``nfe`` ``(B,)`` (search included) and samples scored ``verifier_calls``
    ``(B,)``, batched forward passes ``model_calls``, ``history`` = [(mean NFE per output, mean best score)], wall
    time and the time inside model and verifier calls."""

    x: Tensor
    scores: Tensor
    nfe: Tensor
    verifier_calls: Tensor
    model_calls: int
    history: list[tuple[float, float]]
    strategy: str
    budget: int
    seconds: float
    model_seconds: float
    verifier_seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def overhead(self) -> float:
        """Fraction of wall time spent outside model and verifier calls (the search loop's own cost)."""
        return max(0.0, 1.0 - (self.model_seconds + self.verifier_seconds) / max(self.seconds, 1e-12))

    def summary(self) -> dict:
        return {
            "strategy": self.strategy,
            "budget": self.budget,
            "score_mean": float(self.scores.mean()),
            "nfe_mean": float(self.nfe.double().mean()),
            "nfe_max": int(self.nfe.max()),
            "verifier_calls_mean": float(self.verifier_calls.double().mean()),
            "model_calls": self.model_calls,
            "seconds": self.seconds,
            "overhead": self.overhead,
            **{k: v for k, v in self.extra.items() if isinstance(v, int | float | str)},
        }


def neighbours(pivot: Tensor, n: int, cos_sim: float, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points on the sphere of radius ||pivot|| at cosine similarity ``cos_sim`` to ``pivot`` ``(B, ...)``:
    m = ||p|| (lambda u + sqrt(1 - lambda^2) w), u = p/||p||, w a random unit vector orthogonal to u (Ma et al.
    2025, zero-order search). Returns ``(B, n, ...)``; ``cos_sim = 1`` returns copies of the pivot."""
    if not (math.isfinite(cos_sim) and -1 <= cos_sim <= 1):
        raise ValueError(f"cos_sim must lie in [-1, 1], got {cos_sim}")
    flat = pivot.flatten(1).double()
    norm = flat.norm(dim=1, keepdim=True)
    u = flat / norm.clamp(min=1e-300)
    w = torch.randn((flat.shape[0], n, flat.shape[1]), generator=generator, dtype=torch.float64, device=pivot.device)
    w = w - (w * u[:, None]).sum(-1, keepdim=True) * u[:, None]
    w = w / w.norm(dim=-1, keepdim=True).clamp(min=1e-300)
    m = norm[:, None] * (cos_sim * u[:, None] + math.sqrt(max(0.0, 1 - cos_sim**2)) * w)
    return m.to(pivot.dtype).reshape(pivot.shape[0], n, *pivot.shape[1:])


class _Ctx:
    """One search: model, account, solver grid and the rollout of noises in chunks of ``max_batch`` rows."""

    def __init__(self, acc, path, solver, steps, grid, t_min, t_max, cond, generator, max_batch, solver_opts):
        self.acc, self.path, self.solver, self.steps = acc, path, solver, steps
        self.spec = get_solver(solver)
        self.cond, self.generator, self.max_batch, self.solver_opts = cond, generator, max_batch, solver_opts
        g = self.spec.default_grid if grid is None else grid
        self.ts = (get_timesteps(path, steps, g, t_min=t_min, t_max=t_max) if isinstance(g, str)
                   else get_timesteps(path, steps, g))  # fmt: skip

    @property
    def cost(self) -> int:
        return self.spec.nfe(self.steps)

    def run(self, x: Tensor, owner: Tensor, ts: Tensor | None = None) -> Tensor:
        """Integrate ``x`` (rows owned by ``owner``) over ``ts`` (default: the whole grid)."""
        ts = self.ts if ts is None else ts
        outs = []
        for i in range(0, x.shape[0], self.max_batch):
            sl = slice(i, i + self.max_batch)
            with self.acc.owned(owner[sl]) as m:
                res = sample(m, x=x[sl], solver=self.solver, steps=len(ts) - 1, grid=ts,
                             cond=index_cond(self.cond, owner[sl], self.acc.n_out), generator=self.generator,
                             **self.solver_opts)  # fmt: skip
            outs.append(res.x)
        return torch.cat(outs)

    def score(self, x: Tensor, owner: Tensor) -> Tensor:
        return torch.cat(
            [
                self.acc.score(x[i : i + self.max_batch], owner[i : i + self.max_batch])
                for i in range(0, x.shape[0], self.max_batch)
            ]
        )

    def prior(self, n: int, event) -> Tensor:
        return self.path.prior_sample((n, *event), generator=self.generator)


def _budget_error(budget: int, cost: int, what: str) -> ValueError:
    return ValueError(f"budget={budget} NFE is smaller than one sample's cost ({cost} NFE: {what}); raise the budget "
                      "or lower steps")  # fmt: skip


def _best_of_n(ctx: _Ctx, event, budget: int, history: list) -> tuple[Tensor, Tensor, dict]:
    n_out, cost = ctx.acc.n_out, ctx.cost + ctx.acc.verifier.nfe_per_sample
    n = budget // cost
    if n < 1:
        raise _budget_error(budget, cost, f"{ctx.solver} with {ctx.steps} steps")
    owner = torch.arange(n_out).repeat_interleave(n)
    x = ctx.run(ctx.prior(n_out * n, event), owner)
    s = ctx.score(x, owner).reshape(n_out, n)
    running = s.cummax(1).values
    for j in sorted({2**i - 1 for i in range(int(math.log2(n)) + 1)} | {n - 1}):
        history.append((float((j + 1) * cost), float(running[:, j].mean())))
    pick = s.argmax(1)  # first maximum on ties: deterministic
    return x.reshape(n_out, n, *event)[torch.arange(n_out), pick], s[torch.arange(n_out), pick], {"candidates": n}


def _zero_order(ctx: _Ctx, event, budget: int, history: list, neighbours_: int = 4, cos_sim: float = 0.95,
                patience: int = 1, restart: bool = True) -> tuple[Tensor, Tensor, dict]:  # fmt: skip
    acc, n_out, cost = ctx.acc, ctx.acc.n_out, ctx.cost + ctx.acc.verifier.nfe_per_sample
    N = _int_opt(neighbours_, "neighbours", 1)
    patience = _int_opt(patience, "patience", 1)
    if not (math.isfinite(cos_sim) and -1 <= cos_sim <= 1):
        raise ValueError(f"cos_sim must lie in [-1, 1], got {cos_sim}")
    if budget < (N + 1) * cost:
        raise _budget_error(budget, (N + 1) * cost, f"a pivot and {N} neighbours, {ctx.solver} with {ctx.steps} steps")
    pivot = ctx.prior(n_out, event)
    fresh = torch.ones(n_out, dtype=torch.bool)
    piv_s = torch.full((n_out,), -math.inf, dtype=torch.float64)
    best_x = torch.zeros((n_out, *event), dtype=pivot.dtype)
    best_s = torch.full((n_out,), -math.inf, dtype=torch.float64)
    stall = torch.zeros(n_out, dtype=torch.long)
    rounds = restarts = 0
    while True:
        need = (N + fresh.long()) * cost
        active = torch.nonzero(acc.remaining() >= need)[:, 0]
        if active.numel() == 0:
            break
        nb = neighbours(pivot[active], N, cos_sim, ctx.generator)  # (A, N, ...)
        cands, owner = [], []
        for j, b in enumerate(active.tolist()):
            if fresh[b]:
                cands.append(pivot[b : b + 1])
                owner.append(b)
            cands.append(nb[j])
            owner += [b] * N
        cands_t, owner_t = torch.cat(cands), torch.tensor(owner)
        x = ctx.run(cands_t, owner_t)
        s = ctx.score(x, owner_t)
        pos = 0
        for b in active.tolist():
            if fresh[b]:
                piv_s[b] = s[pos]
                _keep(best_x, best_s, b, x[pos], s[pos])
                pos += 1
                fresh[b] = False
            sb, xb, nb_b = s[pos : pos + N], x[pos : pos + N], cands_t[pos : pos + N]
            j = int(sb.argmax())
            _keep(best_x, best_s, b, xb[j], sb[j])
            if sb[j] > piv_s[b]:
                pivot[b], piv_s[b], stall[b] = nb_b[j], sb[j], 0
            else:
                stall[b] += 1
                if restart and stall[b] >= patience:  # re-draw a fresh pivot (evaluated with its neighbours)
                    pivot[b] = ctx.prior(1, event)[0]
                    fresh[b], stall[b] = True, 0
                    restarts += 1
            pos += N
        rounds += 1
        history.append((float(acc.nfe.double().mean()), float(best_s.mean())))
    return best_x, best_s, {"rounds": rounds, "restarts": restarts}


def _keep(best_x, best_s, b, x, s):
    if s > best_s[b]:
        best_x[b], best_s[b] = x, s


def _int_opt(v, name: str, lo: int) -> int:
    if isinstance(v, bool) or not float(v).is_integer() or int(v) < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def paths_schedule(steps: int, start: int, renoise: int, advance: int) -> list[tuple[int, int, int]]:
    """Rounds (i, i - renoise, j) of search over paths on a grid of ``steps`` steps: from grid index i re-noise up
    to i - renoise, integrate down to j = min(i - renoise + advance, steps)."""
    rounds, i = [], start
    while i < steps:
        j = min(i - renoise + advance, steps)
        rounds.append((i, i - renoise, j))
        i = j
    return rounds


def _paths(ctx: _Ctx, event, budget: int, history: list, width: int | None = None, branches: int = 4,
           start: int | None = None, renoise: int = 1, advance: int = 2,
           score_with: str = "x0") -> tuple[Tensor, Tensor, dict]:  # fmt: skip
    acc, n_out, K, cps = ctx.acc, ctx.acc.n_out, ctx.steps, ctx.spec.calls_per_step
    M = _int_opt(branches, "branches", 1)
    kf, kb = _int_opt(renoise, "renoise", 0), _int_opt(advance, "advance", 1)
    start = max(kf, K // 4) if start is None else _int_opt(start, "start", 0)
    if kb <= kf:
        raise ValueError(f"advance ({kb}) must exceed renoise ({kf}) grid steps so each round makes progress")
    if not kf <= start < K:
        raise ValueError(f"start must be a grid index in [renoise={kf}, steps={K}); got {start}")
    if score_with not in ("x0", "rollout"):
        raise ValueError(f"score_with must be 'x0' (one-step Tweedie estimate) or 'rollout', got {score_with!r}")
    if kb < ctx.spec.min_steps or (start and start < ctx.spec.min_steps):
        raise ValueError(f"solver {ctx.solver!r} needs >= {ctx.spec.min_steps} steps per segment; raise advance/start")
    sched = paths_schedule(K, start, kf, kb)
    vn = acc.verifier.nfe_per_sample
    per_beam = start * cps
    for _i, i_up, j in sched:
        seg = (j - i_up) * cps
        score = 0 if j == K else (1 if score_with == "x0" else (K - j) * cps)
        per_beam += M * (seg + score + vn)
    n = budget // per_beam if width is None else _int_opt(width, "width", 1)
    if n < 1 or n * per_beam > budget:
        raise _budget_error(budget, per_beam, f"one beam of {M} branches over {len(sched)} rounds")
    owner = torch.arange(n_out).repeat_interleave(n)
    ts = ctx.ts
    x = ctx.prior(n_out * n, event)
    if start > 0:
        x = ctx.run(x, owner, ts[: start + 1])
    for i, i_up, j in sched:
        x = x.repeat_interleave(M, 0)
        own = owner.repeat_interleave(M)
        if i_up < i:  # forward noising q(x_{t'} | x_t) = N((a'/a) x, s'^2 - (a'/a)^2 s^2)
            c, cu = coeffs(ctx.path, ts[i]), coeffs(ctx.path, ts[i_up])
            ratio = float(cu.alpha / c.alpha)
            std = float(torch.sqrt((cu.sigma**2 - ratio**2 * c.sigma**2).clamp(min=0)))
            x = ratio * x + std * torch.randn(x.shape, generator=ctx.generator, dtype=x.dtype)
        x = ctx.run(x, own, ts[i_up : j + 1])
        if j == K:
            s = ctx.score(x, own)
        else:
            if score_with == "x0":
                xs = _predict(ctx, x, own, ts[j])
            else:
                xs = ctx.run(x, own, ts[j:])
            s = ctx.score(xs, own)
        s2 = s.reshape(n_out, n * M)
        keep = 1 if j == K else n
        top = s2.topk(keep, dim=1, sorted=True).indices  # ties: lowest index first (stable for equal scores)
        rows = (top + torch.arange(n_out)[:, None] * n * M).reshape(-1)
        x, best_s = x[rows], s2.gather(1, top)[:, 0]
        history.append((float(acc.nfe.double().mean()), float(best_s.mean())))
    return x, best_s, {"width": n, "branches": M, "rounds": len(sched)}


def _predict(ctx: _Ctx, x: Tensor, owner: Tensor, t: Tensor) -> Tensor:
    from diffusio.core.time import time_batch

    outs = []
    for i in range(0, x.shape[0], ctx.max_batch):
        sl = slice(i, i + ctx.max_batch)
        with ctx.acc.owned(owner[sl]) as m:
            c = index_cond(ctx.cond, owner[sl], ctx.acc.n_out) or {}
            outs.append(m.predict(x[sl], time_batch(t, x[sl]), "x0", **c).to(x.dtype))
    return torch.cat(outs)


def _check_common(model, verifier, shape, budget, steps):
    if not isinstance(model, ModelBase):
        raise TypeError(f"model must be a diffusio Model (ModelBase), got {type(model).__name__}")
    if not callable(verifier):
        raise TypeError("verifier must be callable as verifier(x, cond=None) -> (B,) scores")
    if shape is None or len(shape) < 2 or any(isinstance(s, bool) or int(s) != s or s < 1 for s in shape):
        raise ValueError(f"shape must be (outputs, *event_shape) with positive integers, got {shape!r}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive integer (model evaluations per output), got {budget!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


@torch.no_grad()
def search(
    model: ModelBase,
    verifier: Callable,
    *,
    shape: tuple[int, ...],
    strategy: str = "best_of_n",
    budget: int,
    solver: str | None = None,
    steps: int = 10,
    grid: str | Tensor | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    generator: torch.Generator | None = None,
    cond: dict | None = None,
    verifier_cond: dict | None = None,
    interpolant: str | None = None,
    max_batch: int = 4096,
    progress: bool = False,
    **options,
) -> SearchResult:
    """Spend up to ``budget`` model evaluations per output on the best sample under ``verifier``.

    ``shape = (B, *event)``: B independent searches, batched so one model call serves all their candidates.
    ``strategy``:

    - ``steps``: one sample with ``budget // calls_per_step`` steps (the "more denoising steps" baseline);
    - ``best_of_n``: random search over ``budget // cost`` noises (cost = the solver's NFE for ``steps``);
    - ``zero_order``: ``neighbours`` (4) points at cosine similarity ``cos_sim`` (0.95) around a pivot noise;
      move to the best neighbour if it beats the pivot, else after ``patience`` (1) failures re-draw a random pivot
      (``restart=False``: keep the pivot and draw new neighbours);
    - ``paths``: search over paths with ``width`` beams (default: as many as the budget allows) and ``branches``
      (4) children per beam: ODE to grid index ``start``, then per round re-noise ``renoise`` (1) grid steps up,
      integrate ``advance`` (2) steps down, score the Tweedie estimate (``score_with="x0"``, one call) or a full
      roll-out (``"rollout"``), keep the top ``width``; the survivors' finished samples are scored at the end;
    - ``smc``: Feynman-Kac steering with ``budget // steps`` particles, potentials exp(r(x0_hat)/``temperature``),
      resampling when ESS < ``ess_threshold`` * P; returns each population's best particle (``select="best"``) or
      a draw from the final weights (``"sample"``);
    - ``rbf``: Rollover Budget Forcing with ``init`` initial noises (default budget // 20).

    ``solver`` defaults to ``heun`` for the noise searches and ``euler_maruyama`` for the particle methods (which
    need a stochastic transition: ``ddpm``, ``euler_maruyama`` with ``diffusion`` = ``square`` / ``linear`` /
    ``constant`` / ``path`` / a number / a function of t and ``diffusion_scale``, or ``ddim`` with ``eta > 0``).
    ``interpolant="vp"`` first converts the model to the VP path beta in [0.1, 20] at equal SNR (Kim et al. 2025,
    Sec. 4.2). ``cond`` conditions the model and, unless ``verifier_cond`` is given, the verifier (per-output
    tensors, first dimension B, follow their output's candidates). Other ``options`` are passed to the solver
    (e.g. ``eta``, ``churn``).
    """
    _check_common(model, verifier, shape, budget, steps)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
    if interpolant is not None:
        if interpolant != "vp":
            raise ValueError(f"interpolant must be None or 'vp', got {interpolant!r}")
        model = Rescheduled(model, LinearVP(beta0=0.1, beta1=20.0))
    particle = strategy in ("smc", "rbf")
    solver = solver or ("euler_maruyama" if particle else "heun")
    own = {k: options.pop(k) for k in list(options) if k in _OPTIONS[strategy]}
    n_out, event = int(shape[0]), tuple(int(s) for s in shape[1:])
    acc = Account(model, verifier, n_out, budget, progress, cond if verifier_cond is None else verifier_cond)
    history: list[tuple[float, float]] = []
    if particle:
        tr_keys = ("diffusion", "diffusion_scale", "eta")
        tr_opts = {k: own.pop(k) for k in tr_keys if k in own}
        if options:
            raise ValueError(f"unknown option(s) {', '.join(sorted(options))} for strategy {strategy!r}; valid: "
                             f"{', '.join(_OPTIONS[strategy])}")  # fmt: skip
        transition = make_transition(model.path, solver, strategy=strategy, **tr_opts)
        spec = get_solver(solver)
        g = spec.default_grid if grid is None else grid
        ts = (get_timesteps(model.path, steps, g, t_min=t_min, t_max=t_max) if isinstance(g, str)
              else get_timesteps(model.path, steps, g))  # fmt: skip
        K = len(ts) - 1
        vn = acc.verifier.nfe_per_sample
        if strategy == "smc":
            per = K + vn * (K + 1)
            P = budget // per
            if P < 1:
                raise _budget_error(budget, per, f"one particle over {K} steps")
            temperature = float(own.pop("temperature", 1.0))
            if not (math.isfinite(temperature) and temperature > 0):
                raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
            thr = float(own.pop("ess_threshold", 0.5))
            if not 0 <= thr <= 1:
                raise ValueError(f"ess_threshold must lie in [0, 1], got {thr}")
            tempering = own.pop("tempering", "constant")
            if tempering not in ("constant", "linear"):
                raise ValueError(f"tempering must be 'constant' or 'linear', got {tempering!r}")
            select = own.pop("select", "best")
            if select not in ("best", "sample"):
                raise ValueError(f"select must be 'best' or 'sample', got {select!r}")
            x = model.path.prior_sample((n_out * P, *event), generator=generator)
            res = smc_loop(acc, transition, ts, x, P, temperature=temperature, ess_threshold=thr,
                           tempering=tempering, cond=cond, generator=generator)  # fmt: skip
            if select == "best":
                pick = res.rewards.argmax(1)
            else:
                pick = torch.multinomial(res.log_weights.exp(), 1, generator=generator)[:, 0]
            rows = torch.arange(n_out)
            best_x, best_s = res.x[rows, pick], res.rewards[rows, pick]
            history.append((float(acc.nfe.double().mean()), float(best_s.mean())))
            extra = {"particles": P, "resamples_mean": float(res.resamples.double().mean()),
                     "final_ess_mean": float(res.ess[-1].mean())}  # fmt: skip
        else:
            init = own.pop("init", None)
            per = 1 + vn
            init = max(1, budget // 20) if init is None else _int_opt(init, "init", 1)
            quota = (budget - init * per) // (K * per)
            if quota < 1:
                raise _budget_error(budget, (init + K) * per, f"{init} initial noise(s) and one proposal per step "
                                    f"over {K} steps")  # fmt: skip
            x0, best_s, use = rbf_loop(acc, transition, ts, model.path, event, init=init, quota=quota, cond=cond,
                                       generator=generator, history=history)  # fmt: skip
            best_x = x0
            extra = {"init": init, "quota": quota, "proposals_per_step": use.double().mean(1).tolist()}
    else:
        unknown = sorted(set(options) - set(get_solver(solver).options()))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}: strategy {strategy!r} takes "
                             f"{', '.join(_OPTIONS[strategy]) or 'none'}; solver {solver!r} takes "
                             f"{', '.join(get_solver(solver).options()) or 'none'}")  # fmt: skip
        ctx = _Ctx(acc, model.path, solver, steps, grid, t_min, t_max, cond, generator, max_batch, options)
        if ctx.spec.calls_per_step is None:
            raise ValueError(f"solver {solver!r} is adaptive; search needs a fixed cost per step (e.g. 'heun')")
        if strategy == "steps":
            cps = ctx.spec.calls_per_step
            n_steps = (budget - ctx.spec.extra_calls - acc.verifier.nfe_per_sample) // cps
            if n_steps < ctx.spec.min_steps:
                raise _budget_error(budget, ctx.spec.nfe(ctx.spec.min_steps), f"{solver} with its fewest steps")
            ctx = _Ctx(acc, model.path, solver, n_steps, grid, t_min, t_max, cond, generator, max_batch, options)
            owner = torch.arange(n_out)
            best_x = ctx.run(ctx.prior(n_out, event), owner)
            best_s = ctx.score(best_x, owner)
            history.append((float(acc.nfe.double().mean()), float(best_s.mean())))
            extra = {"steps": n_steps}
        elif strategy == "best_of_n":
            best_x, best_s, extra = _best_of_n(ctx, event, budget, history)
        elif strategy == "zero_order":
            if "neighbours" in own:
                own["neighbours_"] = own.pop("neighbours")
            best_x, best_s, extra = _zero_order(ctx, event, budget, history, **own)
        else:
            best_x, best_s, extra = _paths(ctx, event, budget, history, **own)
    seconds = acc.close()
    if int(acc.nfe.max()) > budget:
        raise RuntimeError(f"internal: spent {int(acc.nfe.max())} NFE over the budget {budget}")
    return SearchResult(best_x, best_s, acc.nfe.clone(), acc.scored.clone(), acc.model_calls, history, strategy,
                        budget, seconds, acc.model_seconds, acc.verifier_seconds, extra)  # fmt: skip


@torch.no_grad()
def smc(
    model: ModelBase,
    reward: Callable,
    *,
    shape: tuple[int, ...],
    particles: int,
    steps: int,
    solver: str = "ddpm",
    temperature: float = 1.0,
    ess_threshold: float = 0.5,
    tempering: str = "constant",
    grid: str | Tensor | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    cond: dict | None = None,
    verifier_cond: dict | None = None,
    generator: torch.Generator | None = None,
    interpolant: str | None = None,
    **transition_options,
):
    """The weighted particle populations of SMC / Feynman-Kac steering (see :func:`~.particles.smc_loop`).

    ``shape = (B, *event)``: B independent populations of ``particles`` each. Returns a
    :class:`~.particles.ParticleResult` whose weighted particles target p(x) exp(r(x)/temperature) / Z, plus
    ``extra["nfe"]`` (model evaluations per population) and ``extra["verifier_calls"]``.
    """
    _check_common(model, reward, shape, 1, steps)
    P = _int_opt(particles, "particles", 1)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")
    if tempering not in ("constant", "linear"):
        raise ValueError(f"tempering must be 'constant' or 'linear', got {tempering!r}")
    if interpolant is not None:
        if interpolant != "vp":
            raise ValueError(f"interpolant must be None or 'vp', got {interpolant!r}")
        model = Rescheduled(model, LinearVP(beta0=0.1, beta1=20.0))
    transition = make_transition(model.path, solver, strategy="smc", **transition_options)
    g = get_solver(solver).default_grid if grid is None else grid
    ts = (get_timesteps(model.path, steps, g, t_min=t_min, t_max=t_max) if isinstance(g, str)
          else get_timesteps(model.path, steps, g))  # fmt: skip
    n_out, event = int(shape[0]), tuple(int(s) for s in shape[1:])
    acc = Account(model, reward, n_out, P * steps, verifier_cond=cond if verifier_cond is None else verifier_cond)
    x = model.path.prior_sample((n_out * P, *event), generator=generator)
    res = smc_loop(acc, transition, ts, x, P, temperature=temperature, ess_threshold=ess_threshold,
                   tempering=tempering, cond=cond, generator=generator)  # fmt: skip
    res.extra.update(nfe=acc.nfe.clone(), verifier_calls=acc.scored.clone(), seconds=acc.close())
    return res
