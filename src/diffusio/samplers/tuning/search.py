"""Searching the time grid of a solver for a fixed number of steps.

Every search here scores a grid by its **trajectory error**: the RMS distance between the solver's samples on that
grid and a tight adaptive solution of the same probability-flow ODE from the same noise (the "teacher"), or, with
``data=``, by the sliced Wasserstein-2 distance of the samples to held-out data. Grids are parametrised in the
half log-SNR lambda between the path's two end points (kept fixed), so every grid produced is strictly decreasing
in time and inside the path's domain by construction.

- :func:`evolutionary_search`: AutoDiffusion (Li et al. 2023, Sec. 3.3, Alg. 1): a population of grids drawn from a
  fine lambda lattice, evolved by mutation, uniform crossover, top-k selection and random refill; a memo prevents
  re-evaluating a grid; the top few are re-scored on fresh noise before the winner is returned.
- :func:`dp_search`: teacher-trajectory dynamic programming in the style of GITS (Chen et al. 2024, Sec. 4.2) and
  Optimal Stepsize (Pei et al. 2025, Eq. 6): a teacher solution is stored at every lattice point, the local error of
  one first-order (DDIM) step between any two lattice points is tabulated, and the K-step path of least summed local
  error is found exactly by dynamic programming.
- :func:`optimise_logsnr`: a continuous optimiser of the lambda grid (increments parametrised by a softmax, so that
  the grid stays strictly monotone), minimising the trajectory error with Nelder-Mead (scipy), in the spirit of
  DM-NonUniform (Xue et al. 2024), which optimises the log-SNR grid against an error bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusio.core.timesteps import check_grid, get_timesteps
from diffusio.models.base import CountingModel, ModelBase
from diffusio.samplers import get_solver, sample
from diffusio.samplers.adaptive import odeint
from diffusio.samplers.kernels import predict_x0

__all__ = [
    "Fitness",
    "SearchResult",
    "dp_search",
    "evolutionary_search",
    "grid_of_lambdas",
    "lambdas_of_grid",
    "optimise_logsnr",
    "rms_error",
    "sliced_w2",
    "teacher",
]

_F64 = torch.float64


# --- helpers --------------------------------------------------------------------------------------------------------


def _ends(path) -> tuple[float, float]:
    """(lambda at t_max, lambda at t_min): the fixed ends of every searched grid."""
    t = torch.tensor([path.t_max, path.t_min], dtype=_F64)
    lam = path.log_snr(t)
    return float(lam[0]), float(lam[1])


def grid_of_lambdas(path, lams: Tensor) -> Tensor:
    """Times of an increasing lambda grid, with the end points set exactly to (t_max, t_min) and validated."""
    ts = path.t_of_log_snr(torch.as_tensor(lams, dtype=_F64)).clone()
    ts[0], ts[-1] = path.t_max, path.t_min
    return check_grid(ts, path)


def lambdas_of_grid(path, ts: Tensor) -> Tensor:
    """The half log-SNR lambda = log(alpha/sigma) at each time of the grid ``ts`` (float64)."""
    return path.log_snr(torch.as_tensor(ts, dtype=_F64))


def rms_error(y: Tensor, ref: Tensor) -> float:
    """Per-sample RMS distance (over all dimensions), averaged over the batch; inf if ``y`` is not finite."""
    y = y.to(_F64)
    if not torch.isfinite(y).all():
        return math.inf
    return float((y - ref.to(_F64)).reshape(len(y), -1).pow(2).sum(1).mean().sqrt())


def sliced_w2(a: Tensor, b: Tensor, projections: int = 128, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between equal-size samples (sorted 1-D projections; fixed directions)."""
    a, b = a.reshape(a.shape[0], -1).to(_F64), b.reshape(b.shape[0], -1).to(_F64)
    if not torch.isfinite(a).all():
        return math.inf
    dirs = torch.randn(a.shape[1], projections, generator=torch.Generator().manual_seed(seed), dtype=_F64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, pb = torch.sort(a @ dirs, 0)[0], torch.sort(b @ dirs, 0)[0]
    return float(((pa - pb) ** 2).mean().sqrt())


def teacher(
    model: ModelBase,
    x: Tensor,
    lams: Sequence[float] | Tensor | None = None,
    *,
    cond: dict | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-6,
) -> tuple[Tensor, int]:
    """The adaptive (Dormand-Prince) solution of the PF-ODE from ``x`` at t_max, written in lambda.

    Returns ``(states, calls)``: ``states`` is the float64 solution at the final time ``(batch, ...)``, or, if
    ``lams`` (increasing half log-SNR values from the t_max end to the t_min end) is given, stacked at those points
    ``(len(lams), batch, ...)``. The ODE is integrated in lambda, where the flow is smooth even for a discrete
    table's piecewise-linear lambda(t)."""
    path = model.path
    lo, hi = _ends(path)
    counted = CountingModel(model)

    def f(lam: float, y: Tensor) -> Tensor:
        t = path.t_of_log_snr(torch.tensor(lam, dtype=_F64))
        u = counted.predict(y, t.expand(y.shape[0]), "velocity", **(cond or {})).to(_F64)
        return u / float(path.d_log_snr(t))

    y = x.to(_F64)
    with torch.no_grad():
        if lams is None:
            return odeint(f, y, lo, hi, rtol=rtol, atol=atol), counted.calls
        lams = [float(v) for v in lams]
        out, cur = [], lo
        for lam in lams:
            if lam < cur - 1e-12:
                raise ValueError("teacher: lams must increase from the t_max end to the t_min end")
            y = odeint(f, y, cur, lam, rtol=rtol, atol=atol) if lam > cur else y
            out.append(y)
            cur = lam
    return torch.stack(out), counted.calls


# --- fitness --------------------------------------------------------------------------------------------------------


@dataclass
class Fitness:
    """Scores a grid for one solver: trajectory error to the teacher from the same noise ``x`` (``ref``), or, if
    ``data`` is given, ``distance(samples, data)`` (default: the sliced W2 distance; e.g. a Fréchet distance of
    classifier features for images). Counts the model calls it spends (``calls``) and the number of grids scored
    (``evaluations``). The noise is fixed: common random numbers across candidates."""

    model: ModelBase
    solver: str
    x: Tensor
    ref: Tensor | None = None
    data: Tensor | None = None
    cond: dict | None = None
    options: dict = field(default_factory=dict)
    distance: Callable[[Tensor, Tensor], float] | None = None
    calls: int = 0
    evaluations: int = 0
    rejected: list[str] = field(default_factory=list)

    def __post_init__(self):
        if (self.ref is None) == (self.data is None):
            raise ValueError("Fitness needs exactly one of ref (the teacher's solution) or data (held-out samples)")
        if self.data is not None and len(self.data) < len(self.x):
            raise ValueError(f"data must hold at least as many samples as x ({len(self.x)}), got {len(self.data)}")
        if self.distance is not None and (self.data is None or not callable(self.distance)):
            raise ValueError("distance must be a callable (samples, data) -> float and needs data=")

    def samples(self, ts: Tensor) -> Tensor:
        counted = CountingModel(self.model)
        res = sample(counted, self.x, solver=self.solver, grid=ts, cond=self.cond, **self.options)
        self.calls += counted.calls
        self.evaluations += 1
        return res.x

    def __call__(self, ts: Tensor) -> float:
        """The grid's score; inf for a grid the solver rejects (e.g. DPM-Solver-v3 times that collide on its
        statistics grid), with the reason kept in ``rejected``."""
        try:
            y = self.samples(ts)
        except ValueError as err:
            self.rejected.append(str(err).splitlines()[0])
            return math.inf
        if self.ref is not None:
            return rms_error(y, self.ref)
        if self.distance is not None:
            d = float(self.distance(y, self.data))
            return d if math.isfinite(d) else math.inf
        return sliced_w2(y, self.data[: len(y)])


@dataclass
class SearchResult:
    """A searched grid ``ts`` (strictly decreasing times), its fitness (on the validation noise if there was one),
    the model calls the search spent and the history of best fitness per epoch/iteration."""

    ts: Tensor
    fitness: float
    calls: int
    method: str
    history: list[float] = field(default_factory=list)


def _steps_ok(solver: str, steps: int) -> None:
    spec = get_solver(solver)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < max(1, spec.min_steps):
        raise ValueError(f"steps must be an integer >= {max(1, spec.min_steps)} for solver {solver!r}, got {steps!r}")


# --- AutoDiffusion's evolutionary search ----------------------------------------------------------------------------


def _lattice(path, n: int) -> Tensor:
    lo, hi = _ends(path)
    return torch.linspace(lo, hi, n + 1, dtype=_F64)


def _snap(path, ts: Tensor, lattice: Tensor) -> tuple[int, ...] | None:
    """Interior points of a grid snapped to lattice indices (None if two collide)."""
    lam = lambdas_of_grid(path, ts)[1:-1]
    idx = torch.bucketize(lam, lattice).clamp(1, len(lattice) - 2)
    left = (idx - 1).clamp(min=1)
    closer = (lam - lattice[left]).abs() < (lattice[idx] - lam).abs()
    idx = torch.where(closer, left, idx).tolist()
    return tuple(idx) if len(set(idx)) == len(idx) else None


def _from_top(op: Callable, top: list, rng: np.random.Generator, parents: int, *args):
    """``op`` applied to ``parents`` candidates drawn uniformly from the top-k (and ``args``)."""
    return op(*(top[int(rng.integers(len(top)))] for _ in range(parents)), *args)


def evolutionary_search(
    fitness: Fitness,
    steps: int,
    *,
    lattice: int = 1000,
    population: int = 30,
    select: int = 6,
    mutations: int = 15,
    crossovers: int = 8,
    epochs: int = 8,
    m_prob: float = 0.25,
    seeds: Sequence[str | Tensor] = ("logsnr", "karras", "quadratic", "uniform"),
    validation: Fitness | None = None,
    recheck: int = 3,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> SearchResult:
    """AutoDiffusion's evolutionary search over grids of ``steps`` steps (Li et al. 2023, Alg. 1).

    A candidate is a sorted tuple of ``steps - 1`` distinct interior indices into a lattice of ``lattice + 1``
    points uniform in lambda (the ends t_max and t_min are fixed, as for DPM-Solver candidates in the paper).
    Initial population: the ``seeds`` grids snapped to the lattice (the uniform schedule first, as in the paper),
    ``population // 2`` random candidates and mutations of the first seed. Each epoch keeps the top ``select``
    (elitist over all candidates seen) and refills the population with ``mutations`` mutations (each position
    replaced with probability ``m_prob`` by an unused lattice index), ``crossovers`` uniform crossovers (candidates
    with duplicates are rejected) and random candidates. A memo keyed by the candidate prevents re-evaluation.
    The best ``recheck`` candidates are re-scored on ``validation`` (fresh noise) when given, against fitness noise.
    """
    path = fitness.model.path
    _steps_ok(fitness.solver, steps)
    for name, v in dict(lattice=lattice, population=population, select=select, epochs=epochs, recheck=recheck).items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not 0 <= m_prob <= 1:
        raise ValueError(f"m_prob must be in [0, 1], got {m_prob!r}")
    k = steps - 1
    if lattice < steps + 1:
        raise ValueError(f"lattice ({lattice}) must exceed steps + 1 ({steps + 1}); pass a finer lattice")
    lat = _lattice(path, lattice)
    rng = np.random.default_rng(None if generator is None else int(torch.randint(2**31, (1,), generator=generator)))
    pool = np.arange(1, lattice)
    memo: dict[tuple[int, ...], float] = {}
    calls0 = fitness.calls

    def to_ts(c: tuple[int, ...]) -> Tensor:
        return grid_of_lambdas(path, torch.cat([lat[:1], lat[list(c)], lat[-1:]]))

    def score(c: tuple[int, ...]) -> float:
        if c not in memo:
            memo[c] = fitness(to_ts(c))
        return memo[c]

    def random_cand() -> tuple[int, ...]:
        return tuple(sorted(rng.choice(pool, size=k, replace=False).tolist()))

    def mutate(c: tuple[int, ...], p: float) -> tuple[int, ...]:
        free = list(set(pool.tolist()) - set(c))
        out = list(c)
        for i in range(k):
            if rng.random() < p and free:
                out[i] = free.pop(int(rng.integers(len(free))))
        return tuple(sorted(out))

    def crossover(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
        c = tuple(sorted(a[i] if rng.random() < 0.5 else b[i] for i in range(k)))
        return c if len(set(c)) == k else None

    def collect(make: Callable[[], tuple[int, ...] | None], n: int, out: list) -> None:
        tries = 0
        while n > 0 and tries < 10 * max(n, 1) + 10:
            tries += 1
            c = make()
            if c is None or c in memo or c in out:
                continue
            out.append(c)
            n -= 1

    if k == 0:  # one step: the grid is the two end points
        ts = to_ts(())
        fit = (validation or fitness)(ts)
        return SearchResult(ts, fit, fitness.calls - calls0 + (validation.calls if validation else 0), "evolution")
    first: list[tuple[int, ...]] = []
    for s in seeds:
        ts = get_timesteps(path, steps, s)
        c = _snap(path, ts, lat)
        if c is not None and c not in first:
            first.append(c)
    cands = list(first)
    collect(random_cand, population // 2, cands)
    if first:
        collect(lambda: mutate(first[0], m_prob), population - len(cands), cands)
    collect(random_cand, population - len(cands), cands)
    history = []
    bar = tqdm(range(epochs), desc=f"evolutionary search ({fitness.solver}, {steps} steps)", disable=not progress)
    for epoch in bar:
        for c in cands:
            score(c)
        top = sorted(memo, key=memo.get)[:select]
        history.append(memo[top[0]])
        bar.set_postfix(best=f"{memo[top[0]]:.3e}", evaluated=len(memo))
        if epoch == epochs - 1:
            break
        cands = []
        collect(partial(_from_top, mutate, top, rng, 1, m_prob), mutations, cands)
        collect(partial(_from_top, crossover, top, rng, 2), crossovers, cands)
        collect(random_cand, population - len(cands), cands)
    ranked = sorted(memo, key=memo.get)
    best, fit = ranked[0], memo[ranked[0]]
    extra = 0
    if validation is not None:
        v0 = validation.calls
        scored = [(validation(to_ts(c)), c) for c in ranked[:recheck]]
        fit, best = min(scored)
        extra = validation.calls - v0
    return SearchResult(to_ts(best), fit, fitness.calls - calls0 + extra, "evolution", history)


# --- teacher-trajectory dynamic programming (GITS / Optimal Stepsize) -----------------------------------------------


def dp_search(
    model: ModelBase,
    x: Tensor,
    steps: int,
    *,
    lattice: int = 100,
    cond: dict | None = None,
    rtol: float = 1e-6,
    progress: bool = True,
) -> SearchResult:
    """The ``steps``-step grid on a lattice of ``lattice + 1`` points uniform in lambda that minimises the summed
    local error of first-order (DDIM) steps against a teacher trajectory from the noise ``x`` (Chen et al. 2024,
    GITS, Eq. 7: cost c(i, j) = ||DDIM(X_i, t_i -> t_j) - X_j||; Pei et al. 2025 solve the same recursion).

    The teacher (adaptive, ``rtol``) is stored at every lattice point; one model call per lattice point gives the
    x0 predictions, so the whole cost table costs ``lattice`` calls beyond the teacher's. The recursion
    D[k, j] = min_i D[k-1, i] + c(i, j) is solved exactly; the fitness reported is D[steps, lattice] (RMS units).
    """
    path = model.path
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(lattice, bool) or not isinstance(lattice, int) or lattice < steps:
        raise ValueError(f"lattice must be an integer >= steps ({steps}), got {lattice!r}")
    lat = _lattice(path, lattice)
    ts_lat = grid_of_lambdas(path, lat)
    states, calls = teacher(model, x, lat, cond=cond, rtol=rtol, atol=rtol)
    counted = CountingModel(model)
    m = lattice + 1
    cost = torch.full((m, m), math.inf, dtype=_F64)
    # DDIM from lattice point i to every j > i at once (the deterministic step of kernels.ddim_update, Song et al.
    # 2021, Eq. 12, vectorised over the destinations): y_j = (sigma_j / sigma_i) x_i - alpha_j expm1(lam_i - lam_j) x0
    alpha, sigma, lam = path.alpha(ts_lat), path.sigma(ts_lat), path.log_snr(ts_lat)
    flat = states.reshape(m, states.shape[1], -1)
    with torch.no_grad():
        for i in tqdm(range(m - 1), desc=f"DP search cost table ({steps} steps)", disable=not progress):
            x0 = predict_x0(counted, states[i].to(x.dtype), ts_lat[i], cond).to(_F64).reshape(flat.shape[1:])
            a = (sigma[i + 1 :] / sigma[i])[:, None, None]
            b = (alpha[i + 1 :] * torch.expm1(lam[i] - lam[i + 1 :]))[:, None, None]
            y = a * flat[i] - b * x0
            cost[i, i + 1 :] = (y - flat[i + 1 :]).pow(2).sum(-1).mean(-1).sqrt()
    big = math.inf
    D = torch.full((steps + 1, m), big, dtype=_F64)
    arg = torch.zeros((steps + 1, m), dtype=torch.long)
    D[0, 0] = 0.0
    for k in range(1, steps + 1):
        tot = D[k - 1][:, None] + cost  # (i, j)
        D[k], arg[k] = tot.min(0)
    idx, j = [m - 1], m - 1
    for k in range(steps, 0, -1):
        j = int(arg[k, j])
        idx.append(j)
    idx = idx[::-1]
    ts = grid_of_lambdas(path, lat[idx])
    return SearchResult(ts, float(D[steps, m - 1]), calls + counted.calls, "dp")


# --- continuous optimiser of the log-SNR grid -----------------------------------------------------------------------


def _theta_of(path, ts: Tensor) -> np.ndarray:
    lam = lambdas_of_grid(path, ts)
    inc = (lam[1:] - lam[:-1]).clamp(min=1e-12)
    return torch.log(inc[:-1] / inc[-1]).numpy()  # the last logit is pinned to 0 (softmax is shift-invariant)


def _lams_of(path, theta: np.ndarray) -> Tensor:
    lo, hi = _ends(path)
    logits = torch.cat([torch.as_tensor(theta, dtype=_F64).reshape(-1), torch.zeros(1, dtype=_F64)])
    w = torch.softmax(logits, 0)
    w = (w + 1e-6) / (1 + 1e-6 * len(w))  # keeps every step positive
    return torch.cat([torch.zeros(1, dtype=_F64), torch.cumsum(w, 0)]) * (hi - lo) + lo


def optimise_logsnr(
    fitness: Fitness,
    steps: int,
    *,
    init: str | Tensor = "logsnr",
    max_evals: int = 200,
    validation: Fitness | None = None,
    progress: bool = True,
) -> SearchResult:
    """Minimise the fitness over the lambda grid of ``steps`` steps (end points fixed): the ``steps`` lambda
    increments are ``softmax(theta)`` of the span, so every iterate is a strictly decreasing grid in the domain.
    Nelder-Mead (scipy.optimize) from ``init`` (a grid name or tensor), at most ``max_evals`` fitness calls; the
    result is never worse than ``init`` on the search noise. ``validation`` re-scores the winner on fresh noise."""
    from scipy.optimize import minimize

    path = fitness.model.path
    _steps_ok(fitness.solver, steps)
    if isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < 1:
        raise ValueError(f"max_evals must be a positive integer, got {max_evals!r}")
    ts0 = get_timesteps(path, steps, init)
    if len(ts0) != steps + 1:
        raise ValueError(f"init has {len(ts0) - 1} steps; steps is {steps}")
    calls0 = fitness.calls
    theta0 = _theta_of(path, ts0)
    best = {"f": fitness(ts0), "theta": theta0}
    history = [best["f"]]
    bar = tqdm(total=max_evals, desc=f"log-SNR optimiser ({fitness.solver}, {steps} steps)", disable=not progress)

    def f(theta: np.ndarray) -> float:
        ts = grid_of_lambdas(path, _lams_of(path, theta))
        val = fitness(ts)
        bar.update(1)
        if val < best["f"]:
            best.update(f=val, theta=np.array(theta))
            bar.set_postfix(best=f"{val:.3e}")
        history.append(best["f"])
        return val if math.isfinite(val) else 1e30

    if steps > 1:
        simplex = np.array([theta0] + [theta0 + 0.5 * row for row in np.eye(len(theta0))])
        opts = {"maxfev": max_evals - 1, "xatol": 1e-4, "fatol": 1e-12, "initial_simplex": simplex}
        minimize(f, theta0, method="Nelder-Mead", options=opts)
    bar.close()
    ts = ts0 if best["theta"] is theta0 else grid_of_lambdas(path, _lams_of(path, best["theta"]))
    fit, extra = best["f"], 0
    if validation is not None:
        v0 = validation.calls
        fit = validation(ts)
        extra = validation.calls - v0
    return SearchResult(ts, fit, fitness.calls - calls0 + extra, "logsnr-opt", history)
