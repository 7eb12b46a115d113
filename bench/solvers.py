"""``diffusio bench solvers``: few-step solver accuracy against an adaptive reference, side by side with the peers.

Three models, all on the DDPM discrete (linear-beta) schedule so that diffusers' schedulers run on them unchanged:
exact Gaussian mixtures (a 2-D ring of 8 narrow components, a 64-D mixture of 10) and the bundled class-conditional
digits model (EDM U-Net, trained once and cached under ``diffusio.io.cache_dir('bench', 'digits')``), re-scheduled
onto the same VP path with :class:`diffusio.models.Rescheduled`. For every budget of model calls (4, 5, 6, 8, 10, 15,
20) each registered deterministic diffusio solver runs on three time grids (uniform in log-SNR, Karras rho = 7,
quadratic in t), as do k-diffusion's samplers; diffusers' schedulers run with their own timestep spacings. Every run
starts from the same noise and is scored by the RMS error against a tight Dormand-Prince solution of the same ODE,
and by the sliced Wasserstein-2 distance to data. A second table reruns diffusio on exactly the peer's grid and
options wherever both implement the same algorithm, and reports the relative difference of the errors. Writes JSON,
markdown and a PNG to ``--out`` (default bench/results)."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from bench.peers import load_diffusers, load_k_diffusion_sampling
from diffusio.core.paths import EDM, DiscreteDDPM
from diffusio.core.timesteps import get_timesteps
from diffusio.data import GaussianMixture
from diffusio.io import cache_dir, save_json
from diffusio.models import ExactModel
from diffusio.models.adapters import reschedule, to_diffusers, to_k_diffusion
from diffusio.models.base import CountingModel
from diffusio.samplers import SOLVERS, odeint, sample
from diffusio.samplers.dpm_v3 import estimate_statistics
from diffusio.samplers.tuning import autotune

NFES = (4, 5, 6, 8, 10, 15, 20)
GRIDS = ("logsnr", "karras", "quadratic")
DIGITS_RUN = str(cache_dir("bench", "digits"))
AGREEMENT = 0.02  # same algorithm, same grid: errors within 2%
TARGET_NFES = (5, 10)  # budgets at which diffusio's best solver must beat every peer's best
AUTOTUNE_TARGET = 0.7  # autotune's error / the best peer's at TARGET_NFES

# a runner maps (x, nfe) to (samples, model calls, the grid it used), or None if the budget does not fit
Runner = Callable[[Tensor, int], "tuple[Tensor, int, Tensor | None] | None"]


@dataclass
class Problem:
    """One bench model: the Model, data samples for the distance and the statistics, the prior draw, and the
    per-sample conditioning (the same for every solver and the reference)."""

    name: str
    model: object
    data: Tensor
    x: Tensor
    cond: dict | None = None
    data_cond: dict | None = None
    rtol: float = 1e-7  # reference tolerance (1e-5 for float32 networks)
    note: str = ""
    ems: tuple[int, int] = (1024, 120)  # DPM-Solver-v3 statistics: data samples, lambda intervals


def sliced_w2(a: Tensor, b: Tensor, projections: int = 256, generator: torch.Generator | None = None) -> float:
    """Sliced Wasserstein-2 distance between equal-size samples ``(n, ...)`` (sorted 1-D projections)."""
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    dirs = torch.randn(a.shape[1], projections, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, pb = torch.sort(a @ dirs, 0)[0], torch.sort(b @ dirs, 0)[0]
    return float(((pa - pb) ** 2).mean().sqrt())


def ring2d() -> GaussianMixture:
    k = 8
    ang = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    return GaussianMixture(torch.stack([1.5 * ang.cos(), 1.5 * ang.sin()], 1), 0.2)


def gmm64() -> GaussianMixture:
    gen = torch.Generator().manual_seed(64)
    means = torch.randn(10, 64, generator=gen, dtype=torch.float64) * 0.5
    stds = 0.3 + 0.4 * torch.rand(10, 64, generator=gen, dtype=torch.float64)
    return GaussianMixture(means, stds, weights=torch.rand(10, generator=gen, dtype=torch.float64) + 0.5)


def mixture_problem(name: str, mix: GaussianMixture, batch: int, path=None) -> Problem:
    """A mixture on the DDPM table (default) or another path (``EDM()``: sigma from 80 to 0.002, t = sigma)."""
    path = DiscreteDDPM() if path is None else path
    data = mix.sample(max(batch, 1024), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = path.prior_sample((batch, *mix.event_shape), generator=torch.Generator().manual_seed(0))
    note = "" if isinstance(path, DiscreteDDPM) else f"exact mixture on the {path.name} path (t = sigma, 80 to 0.002)"
    return Problem(name, ExactModel(mix, path), data, x, note=note)


def digits_model(run_dir: str = DIGITS_RUN, progress=print):
    """The bundled digits config trained once (~2000 steps) and cached in ``run_dir``; returns (Model, config).
    A cached model that is unfinished or no longer loads into this build's network is retrained from scratch."""
    from diffusio.app.config import load_model, run_training
    from diffusio.app.resources import packaged_config
    from diffusio.io import load_safetensors

    cfg = packaged_config("digits")
    f = os.path.join(run_dir, "model.safetensors")
    if os.path.isfile(f) and load_safetensors(f)[1].get("step") == cfg["train"]["steps"]:
        try:
            return load_model(f)
        except RuntimeError as err:  # e.g. the network's parameter names changed since it was trained
            progress(f"[digits] the cached model in {run_dir} does not load ({str(err).splitlines()[0]}); retraining")
    progress(f"[digits] training the bundled digits config into {run_dir} (once; minutes on a CPU)")
    run_training(cfg, run_dir, progress=False)
    return load_model(f)


def digits_problem(batch: int, progress=print, ckpt: str | None = None) -> Problem:
    from diffusio.app.config import load_model
    from diffusio.data.digits import load_digits

    edm, cfg = digits_model(progress=progress) if ckpt is None else load_model(ckpt)
    model = reschedule(edm, DiscreteDDPM())
    data, labels = load_digits(**{k: v for k, v in cfg["data"].items() if k != "name"})
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))
    x = model.path.prior_sample((batch, *data.shape[1:]), generator=torch.Generator().manual_seed(0))
    steps = cfg.get("train", {}).get("steps")
    origin = "configs/digits.yaml" if ckpt is None else f"the checkpoint {ckpt}"
    note = (
        f"class-conditional EDM U-Net ({origin}, trained {steps} steps; labels 0-9 in turn), re-scheduled onto the "
        "DDPM table (interop.reschedule) so that every solver, every peer and the reference solve the same ODE"
    )
    y = {"y": torch.arange(batch) % 10}
    return Problem("digits", model, data[perm].double(), x, y, {"y": labels[perm]}, 1e-5, note, (512, 60))


# --- runners ----------------------------------------------------------------------------------------------------


def _diffusio(model, name: str, grid, cond, **opts) -> Runner:
    spec = SOLVERS[name]

    def run(x, nfe):
        if nfe % spec.calls_per_step or nfe // spec.calls_per_step < spec.min_steps:
            return None
        g = grid(nfe // spec.calls_per_step) if callable(grid) else grid
        res = sample(model, x, solver=name, steps=nfe // spec.calls_per_step, grid=g, cond=cond, **opts)
        return res.x, res.nfe, res.ts

    return run


def diffusio_runs(model, stats, cond) -> dict[str, Runner]:
    """Every registered deterministic, fixed-step solver with its default options, on each of ``GRIDS``."""
    runs = {}
    for name, spec in SOLVERS.items():
        if spec.stochastic or spec.calls_per_step is None:
            continue
        if getattr(spec.fn, "func", spec.fn).__module__.startswith("diffusio.families"):
            continue  # a family's solver (flow maps, mean-reverting SDEs) needs that family's model
        opts = {"statistics": stats} if "statistics" in spec.needs else {}
        for grid in GRIDS:
            runs[f"diffusio:{name}@{grid}"] = _diffusio(model, name, grid, cond, **opts)
    return runs


def _diffusers_runner(model, cls, cond, **cfg) -> Runner:
    path = model.path
    table = path.alphas_cumprod.float()

    def run(x, nfe):
        sched = cls(num_train_timesteps=path.num_steps, trained_betas=None, **cfg)
        sched.alphas_cumprod = table  # the model's own table
        if hasattr(sched, "alpha_t"):
            sched.alpha_t, sched.sigma_t = table.sqrt(), (1 - table).sqrt()
            sched.lambda_t = sched.alpha_t.log() - sched.sigma_t.log()
        sched.set_timesteps(nfe)
        counted, y = CountingModel(model), x.clone()
        net = to_diffusers(counted, "epsilon")
        for t in sched.timesteps:
            y = sched.step(net(y, t, **(cond or {})), t, y).prev_sample
        last = torch.tensor([path.t_min], dtype=torch.float64)  # both final_sigmas_type="sigma_min" and DDIM's abar_0
        ts = torch.cat([(torch.as_tensor(sched.timesteps, dtype=torch.float64) + 1) / path.num_steps, last])
        return y, counted.calls, ts

    return run


def diffusers_runs(model, d, cond) -> dict[str, Runner]:
    multi = {"final_sigmas_type": "sigma_min", "lower_order_final": True}
    cases = {
        "DDIM": (d.DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": "trailing"}),
        "DPM++2M": (d.DPMSolverMultistepScheduler, {"solver_order": 2, **multi}),
        "DPM++3M": (d.DPMSolverMultistepScheduler, {"solver_order": 3, **multi}),
        "DPM++2M-logSNR": (d.DPMSolverMultistepScheduler, {"solver_order": 2, "use_lu_lambdas": True, **multi}),
        "DPM++3M-logSNR": (d.DPMSolverMultistepScheduler, {"solver_order": 3, "use_lu_lambdas": True, **multi}),
        "DPM++2M-karras": (d.DPMSolverMultistepScheduler, {"solver_order": 2, "use_karras_sigmas": True, **multi}),
        "DPM++3M-karras": (d.DPMSolverMultistepScheduler, {"solver_order": 3, "use_karras_sigmas": True, **multi}),
        "UniPC-2": (d.UniPCMultistepScheduler, {"solver_order": 2, **multi}),
        "UniPC-3": (d.UniPCMultistepScheduler, {"solver_order": 3, **multi}),
        "UniPC-2-karras": (d.UniPCMultistepScheduler, {"solver_order": 2, "use_karras_sigmas": True, **multi}),
        "DEIS-3": (d.DEISMultistepScheduler, {"solver_order": 3, "lower_order_final": True}),
    }
    return {f"diffusers:{k}": _diffusers_runner(model, cls, cond, **cfg) for k, (cls, cfg) in cases.items()}


def _diffusers_edm_runner(model, cls, cond, **cfg) -> Runner:
    """diffusers' EDM scheduler driven with the exact x0 prediction (inverted through its epsilon preconditioning)."""
    path = model.path

    def run(x, nfe):
        sched = cls(sigma_min=path.sigma_min, sigma_max=path.sigma_max, **cfg)
        sched.set_timesteps(nfe)
        counted, y, sd = CountingModel(model), x.clone(), sched.config.sigma_data
        for i, t in enumerate(sched.timesteps):
            s = float(sched.sigmas[i])
            d = counted.predict(y, torch.full((len(y),), s, dtype=torch.float64), "x0", **(cond or {})).to(y.dtype)
            out = (d - sd**2 / (s**2 + sd**2) * y) / (s * sd / (s**2 + sd**2) ** 0.5)
            y = sched.step(out, t, y).prev_sample
        return y, counted.calls, None

    return run


def diffusers_edm_runs(model, d, cond) -> dict[str, Runner]:
    """diffusers' EDM DPM-Solver++ (2M, 3M) on its two sigma schedules; final step to sigma = 0 (its default) or
    to sigma_min (then the last call is spent on a zero-length step)."""
    runs = {}
    for order in (2, 3):
        for sched in ("karras", "exponential"):
            for final in ("zero", "sigma_min"):
                cfg = {"solver_order": order, "sigma_schedule": sched, "final_sigmas_type": final}
                label = f"diffusers:EDM-DPM++{order}M-{sched}" + ("" if final == "zero" else "-to-sigma_min")
                runs[label] = _diffusers_edm_runner(model, d.EDMDPMSolverMultistepScheduler, cond, **cfg)
    return runs


def _kd_runner(model, fn, calls_per_step: int, grid, cond, **opts) -> Runner:
    path = model.path

    def run(x, nfe):
        if nfe % calls_per_step:
            return None
        ts = get_timesteps(path, nfe // calls_per_step, grid)
        counted = CountingModel(model)
        sig = path.noise_level(ts).to(x.dtype)
        a_hi, a_lo = float(path.alpha(ts[0])), float(path.alpha(ts[-1]))
        y = fn(to_k_diffusion(counted), x / a_hi, sig, disable=True, extra_args=cond or {}, **opts) * a_lo
        return y, counted.calls, ts

    return run


def _kd_fast(model, kd, cond) -> Runner:
    """k-diffusion's DPM-Solver-fast: its own outer grid, uniform in lambda, for a budget of ``nfe`` calls."""
    path = model.path
    s_max, s_min = (float(path.noise_level(torch.tensor(t, dtype=torch.float64))) for t in (path.t_max, path.t_min))

    def run(x, nfe):
        if nfe < 3:
            return None
        counted = CountingModel(model)
        a_hi, a_lo = (float(path.alpha(torch.tensor(t, dtype=torch.float64))) for t in (path.t_max, path.t_min))
        den = to_k_diffusion(counted)
        y = kd.sample_dpm_fast(den, x / a_hi, s_min, s_max, nfe, disable=True, extra_args=cond or {}) * a_lo
        return y, counted.calls, _fast_call_grid(path, nfe)

    return run


def _fast_call_grid(path, nfe: int) -> Tensor:
    """A call grid whose outer step ends ts[cumsum(orders)] are the lambda-uniform outer grid of the official
    DPM-Solver-fast (and k-diffusion's): what ``dpm_solver_fast`` needs to take the same steps."""
    from diffusio.samplers.dpm import fast_orders

    orders = fast_orders(nfe)
    lo, hi = (float(path.log_snr(torch.tensor(t, dtype=torch.float64))) for t in (path.t_max, path.t_min))
    outer = torch.linspace(lo, hi, len(orders) + 1, dtype=torch.float64)
    lams = [float(outer[0])]
    for i, k in enumerate(orders):  # the inner entries are not used by the sampler, only the step ends
        lams += [float(outer[i] + (outer[i + 1] - outer[i]) * (j + 1) / k) for j in range(k)]
    ts = path.t_of_log_snr(torch.tensor(lams, dtype=torch.float64))
    ts[0], ts[-1] = path.t_max, path.t_min
    return ts


def k_diffusion_runs(model, kd, cond) -> dict[str, Runner]:
    runs = {}
    for grid in GRIDS:
        runs[f"k-diffusion:euler@{grid}"] = _kd_runner(model, kd.sample_euler, 1, grid, cond)
        runs[f"k-diffusion:dpmpp_2m@{grid}"] = _kd_runner(model, kd.sample_dpmpp_2m, 1, grid, cond)
        runs[f"k-diffusion:dpmpp_3m(eta=0)@{grid}"] = _kd_runner(model, kd.sample_dpmpp_3m_sde, 1, grid, cond, eta=0.0)
        runs[f"k-diffusion:lms@{grid}"] = _kd_runner(model, kd.sample_lms, 1, grid, cond)
        runs[f"k-diffusion:heun@{grid}"] = _kd_runner(model, kd.sample_heun, 2, grid, cond)
        runs[f"k-diffusion:dpm_2@{grid}"] = _kd_runner(model, kd.sample_dpm_2, 2, grid, cond)
    runs["k-diffusion:dpm_fast"] = _kd_fast(model, kd, cond)
    return runs


# --- matched pairs: the same algorithm on the same grid ------------------------------------------------------------

# (diffusio solver, its options, peer row): diffusio reruns on the grid the peer used, with the peer's rule for the
# final orders: diffusers' DPM-Solver++ lowers them below 15 steps (diffusio's 2M default; 3M's is below 8), its UniPC
# always; k-diffusion never, and its 3M warm-up step is the Taylor (phi_2) form.
PAIRS = [
    ("ddim", {}, "diffusers:DDIM"),
    ("dpmpp_2m", {}, "diffusers:DPM++2M"),
    ("dpmpp_3m_official", {"lower_order_final": 15}, "diffusers:DPM++3M"),
    ("unipc", {"lower_order_final": "always"}, "diffusers:UniPC-2"),
    ("unipc3", {"lower_order_final": "always"}, "diffusers:UniPC-3"),
    *[
        pair
        for g in ("logsnr", "karras")
        for pair in (
            ("ddim", {}, f"k-diffusion:euler@{g}"),
            ("dpmpp_2m", {"lower_order_final": False}, f"k-diffusion:dpmpp_2m@{g}"),
            (
                "dpmpp_3m_official",
                {"lower_order_final": False, "second_order": "taylor"},
                f"k-diffusion:dpmpp_3m(eta=0)@{g}",
            ),
            ("ipndm", {}, f"k-diffusion:lms@{g}"),
            ("dpm_solver_2", {}, f"k-diffusion:dpm_2@{g}"),
        )
    ],
    ("dpm_solver_fast", {}, "k-diffusion:dpm_fast"),
]


def not_comparable(peer: str, nfe: int, path) -> str | None:
    """Why a peer's run at ``nfe`` is not a run on a grid diffusio can take, or None."""
    if peer == "diffusers:DDIM" and path.num_steps % nfe:
        # DDIMScheduler steps from t to t - N // n, but evaluates the next step at the next listed timestep
        return f"diffusers' DDIM steps to t - {path.num_steps} // {nfe} but resumes at the next listed timestep"
    return None


def matched_pairs(prob: Problem, rows: dict, grids: dict, ref: Tensor, nfes) -> list[dict]:
    out = []
    for name, opts, peer in PAIRS:
        if peer not in rows:
            continue
        for nfe in nfes:
            if nfe not in rows[peer] or (peer, nfe) not in grids or not_comparable(peer, nfe, prob.model.path):
                continue
            ts = grids[(peer, nfe)]
            steps = len(ts) - 1
            res = sample(prob.model, prob.x, solver=name, grid=ts, cond=prob.cond, **opts)
            if res.nfe != nfe or steps != nfe // SOLVERS[name].calls_per_step:
                raise RuntimeError(f"pair {name} / {peer}: {res.nfe} calls on {steps} steps for a budget of {nfe}")
            ours, theirs = _rms(res.x, ref), rows[peer][nfe]["error"]
            rel = abs(ours - theirs) / theirs if math.isfinite(theirs) and theirs > 0 else float("nan")
            label = f"diffusio:{name}" + (f"({', '.join(f'{k}={v}' for k, v in opts.items())})" if opts else "")
            out.append({"ours": label, "peer": peer, "nfe": nfe, "error_ours": ours, "error_peer": theirs, "rel": rel})
    return out


# --- the benchmark ----------------------------------------------------------------------------------------------


def _rms(y: Tensor, ref: Tensor) -> float:
    y = y.double()
    if not torch.isfinite(y).all():
        return float("inf")
    return float((y - ref).reshape(len(y), -1).pow(2).sum(1).mean().sqrt())


def autotune_rows(prob: Problem, nfes, ref: Tensor, n: int, gen, stats, progress=print) -> tuple[dict, dict]:
    """autotune's plan at each budget, searched on its own noise (``n`` samples, seed 11, not the bench's) with the
    DPM-Solver-v3 statistics the fixed rows use (estimated from the problem's data), then run on the bench's noise
    like every other row."""
    row, plans = {}, {}
    cond = None if prob.cond is None else {k: torch.arange(n) % 10 for k in prob.cond}
    float32 = any(p.dtype == torch.float32 for p in getattr(prob.model, "parameters", lambda: [])())
    for nfe in nfes:
        t0 = time.time()
        plan = autotune(
            prob.model, nfe, data=prob.data, n=n, cond=cond, data_cond=prob.data_cond, rtol=1e-5 if float32 else 1e-6,
            generator=torch.Generator().manual_seed(11), statistics=stats, cache=False, progress=False,
        )  # fmt: skip
        secs = time.time() - t0
        with torch.no_grad():
            res = sample(prob.model, prob.x, plan=plan, cond=prob.cond)
        if res.nfe > nfe:
            raise RuntimeError(f"autotune's plan used {res.nfe} calls for a budget of {nfe}")
        finite = bool(torch.isfinite(res.x).all())
        w2 = sliced_w2(res.x, prob.data[: len(res.x)], generator=gen) if finite else float("inf")
        row[nfe] = {"error": _rms(res.x, ref), "sliced_w2": w2, "seconds": secs, "nfe_used": res.nfe}
        plans[nfe] = {k: v for k, v in plan.to_json().items() if k != "table"} | {"candidates": len(plan.table)}
        progress(
            f"[{prob.name}] autotune nfe={nfe}: {plan.solver} on {plan.grid_source} ({res.nfe} calls), error "
            f"{row[nfe]['error']:.3e}; search {plan.search_calls} calls, {secs:.0f}s"
        )
    return row, plans


def bench_problem(prob: Problem, nfes, progress=print, autotune_n: int = 128, autotune_nfes=None) -> dict:
    """All solvers and peers on one problem; returns rows {label: {nfe: {error, sliced_w2, seconds}}} and pairs."""
    t0 = time.time()
    ref = reference(prob.model, prob.x.double(), prob.rtol, prob.rtol, prob.cond)
    progress(f"[{prob.name}] reference solved in {time.time() - t0:.1f}s")
    t0 = time.time()
    dim, (k, n_grid) = math.prod(prob.data.shape[1:]), prob.ems
    stats = estimate_statistics(
        prob.model,
        prob.data[:k],
        cond=None if prob.data_cond is None else {name: v[:k] for name, v in prob.data_cond.items()},
        n_grid=n_grid,
        batch_size=256,
        exact_below=8,
        probes=2,
        generator=torch.Generator().manual_seed(2),
        progress=False,
    )
    secs = time.time() - t0
    progress(f"[{prob.name}] DPM-Solver-v3 statistics ({dim} dims, {k} samples, {n_grid} intervals): {secs:.0f}s")
    runs = diffusio_runs(prob.model, stats, prob.cond)
    diffusers, kd = load_diffusers(), load_k_diffusion_sampling()
    peers = []
    if diffusers is not None:
        table = isinstance(prob.model.path, DiscreteDDPM)
        runs.update((diffusers_runs if table else diffusers_edm_runs)(prob.model, diffusers, prob.cond))
        peers.append(f"diffusers {diffusers.__version__}")
    if kd is not None:
        runs.update(k_diffusion_runs(prob.model, kd, prob.cond))
        peers.append("k-diffusion (sampling module)")
    gen = torch.Generator().manual_seed(7)
    rows: dict[str, dict] = {}
    grids: dict[tuple[str, int], Tensor] = {}
    t_all = time.time()
    for label, run in runs.items():
        rows[label] = {}
        for nfe in nfes:
            t0 = time.time()
            with torch.no_grad():
                out = run(prob.x, nfe)
            if out is None:
                continue
            y, calls, ts = out
            if calls != nfe:
                raise RuntimeError(f"{label} used {calls} model calls for a budget of {nfe}")
            if ts is not None:
                grids[(label, nfe)] = ts
            finite = bool(torch.isfinite(y).all())
            w2 = sliced_w2(y, prob.data[: len(y)], generator=gen) if finite else float("inf")
            rows[label][nfe] = {"error": _rms(y, ref), "sliced_w2": w2, "seconds": time.time() - t0}
    progress(f"[{prob.name}] {len(runs)} solver rows in {time.time() - t_all:.1f}s")
    if autotune_n:
        rows["autotune:plan"], plans = autotune_rows(prob, autotune_nfes or nfes, ref, autotune_n, gen, stats, progress)
    else:
        plans = {}
    with torch.no_grad():
        pairs = matched_pairs(prob, rows, grids, ref, nfes)
    w2_ref = sliced_w2(ref, prob.data[: len(ref)], generator=gen)
    return {
        "rows": rows,
        "plans": plans,
        "pairs": pairs,
        "peers": peers,
        "reference_sliced_w2": w2_ref,
        "reference_rtol": prob.rtol,
        "batch": len(prob.x),
        "note": prob.note,
    }


def reference(model, x: Tensor, rtol: float = 1e-7, atol: float = 1e-7, cond: dict | None = None) -> Tensor:
    """Dormand-Prince on the PF-ODE written in lambda, dx/dlambda = u / lambda'(t): a discrete table's lambda(t) is
    piecewise linear in t (kinks every 1/N) but the flow is smooth in lambda, so the adaptive solver runs there.
    (For a float32 network keep rtol >~ 1e-5: below that the error control chases the network's rounding.)"""
    path = model.path
    t_hi, t_lo = (torch.tensor(v, dtype=torch.float64) for v in (path.t_max, path.t_min))

    def f(lam: float, y: Tensor) -> Tensor:
        t = path.t_of_log_snr(torch.tensor(lam, dtype=torch.float64))
        u = model.predict(y, t.expand(y.shape[0]), "velocity", **(cond or {}))
        return u / float(path.d_log_snr(t))

    with torch.no_grad():
        return odeint(f, x, float(path.log_snr(t_hi)), float(path.log_snr(t_lo)), rtol=rtol, atol=atol)


# --- reporting ----------------------------------------------------------------------------------------------------


def best(rows: dict, nfe: int, prefix: str) -> tuple[str, float]:
    """The row with the lowest error at ``nfe`` among labels starting with ``prefix``."""
    cands = [(k, v[nfe]["error"]) for k, v in rows.items() if nfe in v and k.startswith(prefix)]
    return min(cands, key=lambda c: c[1]) if cands else ("-", float("inf"))


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if math.isfinite(a) and math.isfinite(b) and b > 0 else "-"


def markdown(results: dict, nfes) -> str:
    lines = ["# Few-step solvers against an adaptive reference", ""]
    lines += [
        "RMS error (per sample, over all dimensions) of the final samples against Dormand-Prince from the same noise;",
        "sliced W2 to data samples in the second table. `diffusio:NAME@GRID` is a registered solver with its default",
        "options on a grid (`logsnr`: uniform in log-SNR; `karras`: rho = 7; `quadratic`: quadratic in t);",
        "k-diffusion's samplers run on the same three grids; diffusers' schedulers use their own timestep spacings.",
        "`-`: the budget is not a multiple of the calls per step. Reproduce: `diffusio bench solvers --threads 1`",
        "(the digits model is trained once into the cache, `DIFFUSIO_CACHE/bench/digits`, and reused, unless",
        "`--digits-ckpt` names another checkpoint: the digits section's note says which model was used).",
    ]
    lines += ["", "## summary", "", *_summary_table(results, nfes)]
    lines += ["", "## autotune", "", *_autotune_table(results, nfes)]
    for name, res in results["models"].items():
        if "skipped" in res:
            lines += ["", f"## {name}", "", f"skipped: {res['skipped']}"]
            continue
        lines += ["", f"## {name} (batch {res['batch']}; peers: {', '.join(res['peers']) or 'none installed'})", ""]
        if res.get("note"):
            lines += [res["note"] + f"; reference rtol = atol = {res['reference_rtol']:g}.", ""]
        lines += _best_table(res, nfes) + _pairs_table(res["pairs"], nfes)
        for metric in ("error", "sliced_w2"):
            extra = f" (reference's own: {res['reference_sliced_w2']:.4f})" if metric != "error" else ""
            lines += [f"### {metric}{extra}", "", "| solver | " + " | ".join(str(n) for n in nfes) + " |"]
            lines.append("| --- |" + " --- |" * len(nfes))
            for label, by_nfe in res["rows"].items():
                cells = [f"{by_nfe[n][metric]:.2e}" if n in by_nfe else "-" for n in nfes]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def _peers(res: dict) -> list[str]:
    return sorted({k.split(":")[0] for k in res["rows"] if not k.startswith(("diffusio:", "autotune:"))})


def _wins(res: dict, n: int) -> bool:
    """diffusio's best error at ``n`` calls is below every peer's best."""
    ours = best(res["rows"], n, "diffusio:")[1]
    return all(ours < best(res["rows"], n, p + ":")[1] for p in _peers(res))


def _summary_table(results: dict, nfes) -> list[str]:
    """Per model: the targets of the issue (diffusio's best below every peer's best at 5 and 10 calls; matched pairs
    within 2%), with the ratios."""
    lines = [
        "| model | NFE | diffusio best (error) | peers' best (error) | ratio | diffusio best wins |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, res in results["models"].items():
        if "rows" not in res:
            continue
        for n in [k for k in TARGET_NFES if k in nfes]:
            a, ea = best(res["rows"], n, "diffusio:")
            theirs = [best(res["rows"], n, p + ":") for p in _peers(res)]
            b, eb = min(theirs, key=lambda c: c[1]) if theirs else ("-", float("inf"))
            lines.append(
                f"| {name} | {n} | {a} ({ea:.3e}) | {b} ({eb:.3e}) | {_ratio(ea, eb)} | {_yes(_wins(res, n))} |"
            )
    pairs = [p for res in results["models"].values() for p in res.get("pairs", [])]
    worst = max((p["rel"] for p in pairs if math.isfinite(p["rel"])), default=float("nan"))
    ok = all(_agrees(p) for p in pairs)
    lines += [
        "",
        f"Matched pairs (same algorithm and grid): {len(pairs)} comparisons, worst relative difference {worst:.3%}"
        f" (target < {AGREEMENT:.0%}): {_yes(ok)}.",
    ]
    return [*lines, ""]


def _autotune_table(results: dict, nfes) -> list[str]:
    """autotune's plan per model and budget against the best fixed diffusio row and the best peer."""
    lines = [
        "`diffusio.autotune(model, nfe, data=...)` searched on its own noise (seed 11; the bench's noise is seed 0)",
        "against an adaptive reference, with the problem's data for DPM-Solver-v3's statistics; its plan then runs on",
        f"the bench's noise like every row. Target: ratio to the best peer <= {AUTOTUNE_TARGET} at "
        f"{' and '.join(str(n) for n in TARGET_NFES)} calls. Search cost: model calls spent by autotune (batched over",
        "its noise samples; the reference solves included).",
        "",
        "| model | NFE | plan (solver, grid) | calls used | autotune error | best fixed diffusio (error) | best peer"
        " (error) | autotune / peer | target met | search calls | search s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, res in results["models"].items():
        row = res.get("rows", {}).get("autotune:plan")
        if not row:
            continue
        for n in nfes:
            if n not in row and str(n) not in row:
                continue
            r = row.get(n, row.get(str(n)))
            plan = res["plans"].get(n, res["plans"].get(str(n)))
            a, ea = best(res["rows"], n, "diffusio:")
            theirs = [best(res["rows"], n, p + ":") for p in _peers(res)]
            b, eb = min(theirs, key=lambda c: c[1]) if theirs else ("-", float("inf"))
            ratio = r["error"] / eb if math.isfinite(eb) and eb > 0 else float("nan")
            met = "-" if n not in TARGET_NFES else _yes(ratio <= AUTOTUNE_TARGET)
            lines.append(
                f"| {name} | {n} | {plan['solver']} on {plan['grid_source']} | {r['nfe_used']} | {r['error']:.3e} | "
                f"{a} ({ea:.3e}) | {b} ({eb:.3e}) | {ratio:.2f} | {met} | {plan['search_calls']} | {r['seconds']:.0f} |"
            )
    return [*lines, ""]


def _agrees(pair: dict) -> bool:
    return math.isfinite(pair["rel"]) and pair["rel"] < AGREEMENT


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _best_table(res: dict, nfes) -> list[str]:
    peers = _peers(res)
    head = "| NFE | diffusio best | error | " + " | ".join(f"{p} best | error | ratio" for p in peers)
    lines = ["### best diffusio vs each peer's best (error; ratio = ours / theirs, < 1: diffusio wins)", ""]
    lines += [head + " | diffusio wins |", "| --- |" + " --- |" * (3 + 3 * len(peers))]
    for n in nfes:
        a, ea = best(res["rows"], n, "diffusio:")
        cells = [f"{n}", a, f"{ea:.2e}"]
        for p in peers:
            b, eb = best(res["rows"], n, p + ":")
            cells += [b, f"{eb:.2e}", _ratio(ea, eb)]
        lines.append("| " + " | ".join(cells) + f" | {_yes(_wins(res, n))} |")
    return [*lines, ""]


def _pairs_table(pairs: list[dict], nfes) -> list[str]:
    if not pairs:
        return []
    worst = max((p["rel"] for p in pairs if math.isfinite(p["rel"])), default=float("nan"))
    lines = [
        f"### same algorithm, same grid (diffusio rerun on the peer's grid; worst relative difference {worst:.2%},"
        f" target < {AGREEMENT:.0%})",
        "",
        "Cells: diffusio's error / the peer's. diffusers' DDIM is left out where 1000 is not a multiple of the steps"
        " (6, 15): it steps to t - 1000 // n but resumes at the next listed timestep, which is no single grid.",
        "",
        "| diffusio | peer | " + " | ".join(str(n) for n in nfes) + f" | max rel. diff | within {AGREEMENT:.0%} |",
        "| --- | --- |" + " --- |" * (len(nfes) + 2),
    ]
    keys = list(dict.fromkeys((p["ours"], p["peer"]) for p in pairs))
    for ours, peer in keys:
        by = {p["nfe"]: p for p in pairs if (p["ours"], p["peer"]) == (ours, peer)}
        cells = [f"{by[n]['error_ours']:.3e} / {by[n]['error_peer']:.3e}" if n in by else "-" for n in nfes]
        rel = max((p["rel"] for p in by.values()), default=float("nan"))
        ok = all(_agrees(p) for p in by.values())
        lines.append(f"| {ours} | {peer} | " + " | ".join(cells) + f" | {rel:.3%} | {'pass' if ok else '**FAIL**'} |")
    return [*lines, ""]


def _families(rows: dict, nfes) -> dict[str, list[float]]:
    """Each solver's best error over the grids it ran on (for the plot)."""
    fam: dict[str, list[float]] = {}
    for label, by in rows.items():
        key = label.split("@")[0]
        errs = [by[n]["error"] if n in by else float("nan") for n in nfes]
        old = fam.get(key)
        fam[key] = errs if old is None else [min(a, b) if math.isfinite(a) else b for a, b in zip(old, errs)]
    return fam


def plot(results: dict, nfes, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = {k: v for k, v in results["models"].items() if "rows" in v}
    n = max(len(models), 1)
    fig, axes = plt.subplots(1, n, figsize=(7 * n, 6.5), squeeze=False)
    for ax, (name, res) in zip(axes[0], models.items()):
        for label, errs in _families(res["rows"], nfes).items():
            pts = [(k, e) for k, e in zip(nfes, errs) if math.isfinite(e)]
            if pts:
                style = "-" if label.startswith(("diffusio:", "autotune:")) else "--"
                lw = 3 if label.startswith("autotune:") else 1
                ax.plot(*zip(*pts), style, marker="o", ms=3, lw=lw, label=label, color="k" if lw == 3 else None)
        ax.set(xscale="log", yscale="log", xlabel="model calls (NFE)", ylabel="RMS error vs reference", title=name)
        ax.set_xticks(list(nfes), [str(k) for k in nfes])
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=5, ncol=2, loc="lower left")
    fig.suptitle("best grid per solver (solid: diffusio, dashed: peers)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffusio bench solvers", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results", help="output directory")
    parser.add_argument("--nfe", type=int, nargs="+", default=list(NFES), help="model-call budgets")
    parser.add_argument("--batch", type=int, default=512, help="samples per mixture model")
    parser.add_argument("--digits-batch", type=int, default=128, help="samples for the digits model")
    parser.add_argument(
        "--models", nargs="+", default=["ring2d", "gmm64", "ring2d_edm", "gmm64_edm", "digits"], help="which models"
    )
    parser.add_argument("--autotune-n", type=int, default=128, help="autotune's noise samples (0: no autotune rows)")
    parser.add_argument("--autotune-nfe", type=int, nargs="+", help="budgets with an autotune row (default: all)")
    parser.add_argument("--digits-ckpt", help="a trained digits checkpoint to use instead of the cached bundled one")
    parser.add_argument(
        "--merge", nargs="+", help="solvers.json files of earlier runs (e.g. one per model): merge, report, exit"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    nfes = tuple(args.nfe)
    results: dict = {"nfes": list(nfes), "grids": list(GRIDS), "models": {}}
    if args.merge:
        for f in args.merge:
            with open(f) as fh:
                part = json.load(fh)
            results["models"].update({k: _int_keys(v) for k, v in part["models"].items()})
        return _report(results, nfes, args.out)
    makers = {
        "ring2d": lambda: mixture_problem("ring2d", ring2d(), args.batch),
        "gmm64": lambda: mixture_problem("gmm64", gmm64(), args.batch),
        "ring2d_edm": lambda: mixture_problem("ring2d_edm", ring2d(), args.batch, EDM()),
        "gmm64_edm": lambda: mixture_problem("gmm64_edm", gmm64(), args.batch, EDM()),
        "digits": lambda: digits_problem(args.digits_batch, ckpt=args.digits_ckpt),
    }
    for name in args.models:
        if name not in makers:
            raise SystemExit(f"unknown model {name!r}; valid: {', '.join(makers)}")
        prob = makers[name]()
        n_at = min(args.autotune_n, len(prob.x))
        at_nfes = tuple(args.autotune_nfe or nfes)
        results["models"][name] = bench_problem(prob, nfes, _flushing(print), n_at, at_nfes)
    return _report(results, nfes, args.out)


def _int_keys(res: dict) -> dict:
    """A model's results read back from JSON: budgets as int keys again."""
    res = dict(res)
    for key in ("rows",):
        res[key] = {label: {int(n): v for n, v in by.items()} for label, by in res.get(key, {}).items()}
    res["plans"] = {int(n): v for n, v in res.get("plans", {}).items()}
    return res


def _report(results: dict, nfes, out: str) -> int:
    args_out = out
    os.makedirs(args_out, exist_ok=True)
    save_json(results, os.path.join(args_out, "solvers.json"))
    md = markdown(results, nfes)
    with open(os.path.join(args_out, "solvers.md"), "w") as f:
        f.write(md)
    plot(results, nfes, os.path.join(args_out, "solvers.png"))
    print(md)
    return 0


def _flushing(fn):
    def out(msg):
        fn(msg, flush=True)

    return out


if __name__ == "__main__":
    main()
