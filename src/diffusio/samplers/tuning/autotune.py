"""``autotune``: pick a solver, a time grid and options for a budget of model calls, by measurement.

Stage 1 runs every candidate solver on every named grid (``logsnr``, ``karras``, ``quadratic``, ``uniform``) with
as many steps as the budget allows, from held-out noise, and scores each by the RMS trajectory error against an
adaptive (Dormand-Prince) reference from the same noise. Stage 2 refines the grids of the best few solvers with
the continuous log-SNR optimiser (:func:`~diffusio.samplers.tuning.search.optimise_logsnr`) and tries the
dynamic-programming grid (:func:`~diffusio.samplers.tuning.search.dp_search`) with them. The finalists are
re-scored on fresh noise and the best becomes the :class:`Plan`. DPM-Solver-v3 is a candidate when ``data`` is
given: its statistics are estimated from that data (Zheng et al. 2023, Sec. 3.3). Plans are cached by model
fingerprint in ``diffusio.io.cache_dir('autotune')``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusio.core.timesteps import check_grid, get_timesteps
from diffusio.io import cache_dir, save_json
from diffusio.models.base import ModelBase
from diffusio.samplers import SOLVERS, get_solver
from diffusio.samplers.dpm_v3 import statistics_for
from diffusio.samplers.tuning.search import Fitness, dp_search, optimise_logsnr, teacher
from diffusio.samplers.tuning.store import model_fingerprint

__all__ = ["CANDIDATES", "NAMED_GRIDS", "Plan", "autotune", "steps_for"]

CANDIDATES = (
    "ddim",
    "heun",
    "dpm_solver_2",
    "dpm_solver_3",
    "dpmpp_2m",
    "dpmpp_3m",
    "unipc",
    "unipc3",
    "ipndm",
    "evodiff",
    "dpm_v3",
)
NAMED_GRIDS = ("logsnr", "karras", "quadratic", "uniform")
CACHE_VERSION = 1


@dataclass
class Plan:
    """A tuned sampling recipe: ``solver`` on ``grid`` (``steps`` steps, ``nfe`` model calls) with ``options``.

    Use it as ``diffusio.sample(model, x, plan=plan)`` or ``diffusio.sample(model, x, **plan.kwargs(model))``.
    ``error`` is its RMS trajectory error on the validation noise, ``table`` every candidate tried (one dict per
    row), ``search_calls`` the model calls the tuning spent."""

    solver: str
    steps: int
    grid: Tensor
    nfe: int
    budget: int
    error: float
    fingerprint: str
    options: dict = field(default_factory=dict)
    table: list[dict] = field(default_factory=list)
    search_calls: int = 0
    grid_source: str = ""
    statistics: object | None = field(default=None, repr=False)  # DPM-Solver-v3 statistics (not serialised)

    def kwargs(self, model: ModelBase | None = None) -> dict:
        """Keyword arguments for :func:`diffusio.sample` (solver, steps, grid and options); with ``model``, checks
        that the plan was tuned for it."""
        if model is not None:
            fp = model_fingerprint(model)
            if fp != self.fingerprint:
                raise ValueError(
                    f"this plan (and its grid) was tuned on another model (fingerprint {self.fingerprint[:12]}, this "
                    f"model {fp[:12]}); run diffusio.autotune(model, nfe) for this model"
                )
            check_grid(self.grid, model.path)
        out = {"solver": self.solver, "steps": self.steps, "grid": self.grid.clone(), **self.options}
        if "statistics" in get_solver(self.solver).needs:
            if self.statistics is None:
                raise ValueError(f"plan for {self.solver!r} has no statistics; re-run autotune with data=...")
            out["statistics"] = self.statistics
        return out

    def to_json(self) -> dict:
        return {
            "solver": self.solver,
            "steps": self.steps,
            "grid": [float(v) for v in self.grid],
            "nfe": self.nfe,
            "budget": self.budget,
            "error": self.error,
            "fingerprint": self.fingerprint,
            "options": self.options,
            "table": self.table,
            "search_calls": self.search_calls,
            "grid_source": self.grid_source,
        }

    @classmethod
    def from_json(cls, d: dict) -> Plan:
        d = dict(d)
        d["grid"] = check_grid(torch.tensor(d["grid"], dtype=torch.float64))
        return cls(**d)

    def format_table(self) -> str:
        """The candidates tried, best first, as a fixed-width text table."""
        rows = sorted(self.table, key=lambda r: (r["error"], r["solver"]))
        head = f"{'solver':<14} {'grid':<22} {'steps':>5} {'calls':>5} {'search err':>11} {'valid err':>11}"
        lines = [head, "-" * len(head)]
        for r in rows:
            v = r.get("validation")
            lines.append(
                f"{r['solver']:<14} {r['grid']:<22} {r['steps']:>5} {r['nfe']:>5} {r['error']:>11.3e} "
                + (f"{v:>11.3e}" if v is not None else f"{'':>11}")
            )
        chosen = f"chosen: {self.solver} on {self.grid_source} ({self.steps} steps, {self.nfe} of {self.budget} calls)"
        lines += ["", chosen + f", validation error {self.error:.3e}; search cost {self.search_calls} model calls"]
        return "\n".join(lines)


def steps_for(solver: str, nfe: int) -> int | None:
    """Most steps of ``solver`` within ``nfe`` calls, or None if even its fewest steps do not fit."""
    spec = get_solver(solver)
    if spec.calls_per_step is None:
        return None
    steps = (nfe - spec.extra_calls) // spec.calls_per_step
    return steps if steps >= max(1, spec.min_steps) else None


def _check_data(model: ModelBase, data: Tensor | None, shape, n: int) -> tuple[int, ...]:
    if data is None and shape is None:
        raise ValueError("autotune needs data=... (held-out samples, (n, ...)) or shape=... (one sample's shape)")
    if data is not None:
        if not torch.is_tensor(data) or data.ndim < 2:
            raise ValueError(f"data must be a tensor (n, ...) of samples; got {getattr(data, 'shape', type(data))}")
        if not torch.isfinite(data).all():
            raise ValueError("data contains NaN or inf")
        event = tuple(data.shape[1:])
        if shape is not None and tuple(shape) != event:
            raise ValueError(f"data has sample shape {event} but shape={tuple(shape)}; pass one of them")
    else:
        event = tuple(shape)
    probe = torch.zeros((2, *event))
    try:
        with torch.no_grad():
            out = model.predict(probe, torch.full((2,), float(model.path.t_min), dtype=torch.float64), "x0")
    except Exception as err:  # the network rejects the shape: say so in one line
        raise ValueError(f"data of sample shape {event} does not fit the model: {str(err).splitlines()[0]}") from err
    if tuple(out.shape) != tuple(probe.shape):
        raise ValueError(f"data of sample shape {event} does not fit the model (it returned shape {tuple(out.shape)})")
    mix = getattr(model, "mixture", None)
    if mix is not None and tuple(mix.event_shape) != event:
        raise ValueError(f"data has sample shape {event}; the model's distribution has {tuple(mix.event_shape)}")
    return event


def _cache_key(fp: str, nfe: int, settings: dict) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "fp": fp, "nfe": nfe, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def autotune(
    model: ModelBase,
    nfe: int,
    *,
    data: Tensor | None = None,
    shape: tuple[int, ...] | None = None,
    generator: torch.Generator | None = None,
    solvers: tuple[str, ...] | None = None,
    grids: tuple[str, ...] = NAMED_GRIDS,
    n: int = 256,
    refine: int = 3,
    max_evals: int = 60,
    dp_lattice: int = 60,
    rtol: float = 1e-6,
    cond: dict | None = None,
    data_cond: dict | None = None,
    statistics_options: dict | None = None,
    statistics: object | None = None,
    cache: bool = True,
    progress: bool = True,
) -> Plan:
    """A :class:`Plan` (solver, grid, options) using at most ``nfe`` model calls, chosen by measured error.

    ``data``: held-out samples ``(n, ...)``; they fix the sample shape and give DPM-Solver-v3 its statistics
    (without data pass ``shape`` and dpm_v3 is skipped). ``generator`` draws the search and validation noise
    (``n`` samples each). ``solvers`` defaults to :data:`CANDIDATES`; ``grids`` are the named grids of stage 1;
    the ``refine`` best solvers get an optimised log-SNR grid (``max_evals`` evaluations each) and the DP grid
    (``dp_lattice`` lattice intervals). ``rtol`` is the reference's tolerance (1e-5 suits float32 networks).
    Results are cached by (model fingerprint, nfe, settings) unless ``cache=False``.
    """
    if not isinstance(model, ModelBase):
        raise TypeError(f"model must be a diffusio Model (ModelBase), got {type(model).__name__}")
    solvers = CANDIDATES if solvers is None else tuple(solvers)
    for s in solvers:
        get_solver(s)
    if not solvers:
        raise ValueError("solvers must name at least one registered solver")
    for g in grids:
        if g not in NAMED_GRIDS:
            raise ValueError(f"unknown grid {g!r} in grids; valid: {', '.join(NAMED_GRIDS)}")
    if isinstance(nfe, bool) or not isinstance(nfe, int):
        raise ValueError(f"nfe must be an integer number of model calls, got {nfe!r}")
    if data is None:
        solvers = tuple(s for s in solvers if "statistics" not in SOLVERS[s].needs)
    usable = [s for s in solvers if SOLVERS[s].calls_per_step is not None and not SOLVERS[s].stochastic]
    fits = {s: steps_for(s, nfe) for s in usable}
    fits = {s: k for s, k in fits.items() if k is not None}
    if not fits:
        cheapest = min((SOLVERS[s].nfe(max(1, SOLVERS[s].min_steps)), s) for s in usable) if usable else (None, None)
        raise ValueError(
            f"a budget of nfe={nfe} model calls is below the cheapest candidate ({cheapest[1]!r} needs "
            f"{cheapest[0]} calls); raise nfe to at least {cheapest[0]}"
        )
    for name, v, lo in (("n", n, 2), ("refine", refine, 0), ("max_evals", max_evals, 1), ("dp_lattice", dp_lattice, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not (isinstance(rtol, float | int) and 0 < rtol < 1e-2):
        raise ValueError(f"rtol must be in (0, 0.01), got {rtol!r}")
    event = _check_data(model, data, shape, n)
    fp = model_fingerprint(model)
    settings = dict(
        solvers=sorted(fits), grids=list(grids), n=n, refine=refine, max_evals=max_evals, dp=dp_lattice, rtol=rtol,
        seed=None if generator is None else int(generator.initial_seed()), cond=cond is not None,
        stats=statistics_options,
    )  # fmt: skip
    f_cache = cache_dir("autotune") / f"{fp[:20]}-nfe{nfe}-{_cache_key(fp, nfe, settings)}.json"
    stats = statistics
    if stats is None and data is not None and any("statistics" in SOLVERS[s].needs for s in fits):
        so = {"n_grid": 60, "batch_size": 256, "exact_below": 8, "probes": 2, "progress": progress}
        so.update(statistics_options or {})
        k = int(so.pop("samples", 512))
        sc = None if data_cond is None else {name: v[:k] for name, v in data_cond.items()}
        stats = statistics_for(model, data[:k], cond=sc, generator=torch.Generator().manual_seed(2), **so)
    if cache and f_cache.is_file() and cond is None and statistics is None:
        plan = Plan.from_json(json.loads(f_cache.read_text()))
        if plan.fingerprint == fp:
            plan.statistics = stats
            return plan

    path = model.path
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    x_fit = path.prior_sample((n, *event), generator=gen)
    x_val = path.prior_sample((n, *event), generator=gen)
    ref_fit, c1 = teacher(model, x_fit, cond=cond, rtol=rtol, atol=rtol)
    ref_val, c2 = teacher(model, x_val, cond=cond, rtol=rtol, atol=rtol)
    calls = c1 + c2

    def options(s: str) -> dict:
        return {"statistics": stats} if "statistics" in SOLVERS[s].needs else {}

    fit = {s: Fitness(model, s, x_fit, ref=ref_fit, cond=cond, options=options(s)) for s in fits}
    val = {s: Fitness(model, s, x_val, ref=ref_val, cond=cond, options=options(s)) for s in fits}
    table: list[dict] = []
    grids_of: dict[tuple[str, str], Tensor] = {}
    jobs = [(s, g) for s in fits for g in grids]
    for s, g in tqdm(jobs, desc=f"autotune stage 1 (nfe={nfe})", disable=not progress):
        ts = get_timesteps(path, fits[s], g)
        err = fit[s](ts)
        grids_of[(s, g)] = ts
        table.append({"solver": s, "grid": g, "steps": fits[s], "nfe": SOLVERS[s].nfe(fits[s]), "error": err})

    best_by_solver: dict[str, dict] = {}
    for r in sorted(table, key=lambda r: r["error"]):
        best_by_solver.setdefault(r["solver"], r)
    top = [r for r in sorted(best_by_solver.values(), key=lambda r: r["error"]) if math.isfinite(r["error"])][:refine]
    dp_grids: dict[int, Tensor] = {}
    for r in tqdm(top, desc=f"autotune stage 2 (nfe={nfe})", disable=not progress or not top):
        s, k = r["solver"], r["steps"]
        res = optimise_logsnr(fit[s], k, init=grids_of[(s, r["grid"])], max_evals=max_evals, progress=False)
        label = f"logsnr-opt<{r['grid']}"
        grids_of[(s, label)] = res.ts
        table.append({"solver": s, "grid": label, "steps": k, "nfe": SOLVERS[s].nfe(k), "error": res.fitness})
        if k not in dp_grids:
            m = max(2, n // 4)
            c_dp = None if cond is None else {name: v[:m] for name, v in cond.items()}
            d = dp_search(model, x_fit[:m], k, lattice=max(dp_lattice, k), cond=c_dp, rtol=rtol, progress=False)
            dp_grids[k] = d.ts
            calls += d.calls
        grids_of[(s, "dp")] = dp_grids[k]
        table.append({"solver": s, "grid": "dp", "steps": k, "nfe": SOLVERS[s].nfe(k), "error": fit[s](dp_grids[k])})

    finalists = sorted((r for r in table if math.isfinite(r["error"])), key=lambda r: r["error"])[: max(3, refine + 2)]
    if not finalists:
        raise RuntimeError(f"autotune: every candidate diverged at nfe={nfe}; check the model")
    for r in finalists:
        r["validation"] = val[r["solver"]](grids_of[(r["solver"], r["grid"])])
    win = min(finalists, key=lambda r: r["validation"])
    calls += sum(f.calls for f in fit.values()) + sum(f.calls for f in val.values())
    s = win["solver"]
    plan = Plan(
        solver=s,
        steps=win["steps"],
        grid=grids_of[(s, win["grid"])],
        nfe=win["nfe"],
        budget=nfe,
        error=win["validation"],
        fingerprint=fp,
        options={},
        table=table,
        search_calls=calls,
        grid_source=win["grid"],
        statistics=stats if "statistics" in SOLVERS[s].needs else None,
    )
    if plan.nfe > nfe:  # guarded by construction; kept as a hard check
        raise RuntimeError(f"autotune chose {plan.nfe} calls for a budget of {nfe}")
    if cache and cond is None and statistics is None:
        save_json(plan.to_json(), f_cache)
    return plan
