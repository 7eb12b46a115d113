"""``diffusio bench solvers``: few-step solver accuracy against an adaptive reference, side by side with the peers.

Models: exact Gaussian mixtures on the DDPM discrete schedule (a 2-D ring and a 64-D mixture), plus a trained
digits model when a checkpoint is given. For every solver and every budget of model calls (4, 5, 6, 8, 10, 15, 20)
it records the RMS error of the final samples against a tight Dormand-Prince solution of the same ODE from the
same noise, and the sliced Wasserstein-2 distance to true data samples. Peers (diffusers schedulers, k-diffusion
samplers) run on the same model, same noise and same budget, in the same process. Writes JSON, a markdown table
and a PNG plot to ``--out`` (default bench/results).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable

import torch
from torch import Tensor

from ..data import GaussianMixture
from ..interop import to_diffusers, to_k_diffusion
from ..io import save_json
from ..paths import DiscreteDDPM
from ..samplers import SOLVERS, CountingModel, odeint, sample
from ..samplers.dpm_v3 import estimate_statistics
from ..timesteps import get_timesteps
from .peers import load_diffusers, load_k_diffusion_sampling

NFES = (4, 5, 6, 8, 10, 15, 20)
SKIP = {"adaptive", "ddpm", "euler_maruyama", "dpmpp_2m_sde", "dpmpp_3m_sde"}  # reference / stochastic


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


# --- runners: each returns (samples at t_min, model calls) ---


def _diffusio_runs(model, data, stats) -> dict[str, Callable[[Tensor, int], tuple[Tensor, int] | None]]:
    runs = {}
    for name, spec in SOLVERS.items():
        if name in SKIP:
            continue
        opts = {"statistics": stats} if name == "dpm_v3" else {}

        def run(x, nfe, name=name, spec=spec, opts=opts):
            if nfe % spec.calls_per_step or nfe // spec.calls_per_step < spec.min_steps:
                return None
            res = sample(model, x, solver=name, steps=nfe // spec.calls_per_step, **opts)
            return res.x, res.nfe

        runs[name] = run
    return runs


def _diffusers_runs(model, diffusers) -> dict[str, Callable]:
    eps_net = to_diffusers(model, "epsilon")
    table = model.path.alphas_cumprod.float()
    common = {"num_train_timesteps": model.path.num_steps, "trained_betas": None}

    def make(cls, **cfg):
        def run(x, nfe):
            sched = cls(**common, **cfg)
            sched.alphas_cumprod = table  # the same table as the model's path
            if hasattr(sched, "alpha_t"):
                sched.alpha_t, sched.sigma_t = table.sqrt(), (1 - table).sqrt()
                sched.lambda_t = sched.alpha_t.log() - sched.sigma_t.log()
            sched.set_timesteps(nfe)
            counted, y = CountingModel(model), x.clone()
            net = to_diffusers(counted, "epsilon")
            for t in sched.timesteps:
                y = sched.step(net(y, t), t, y).prev_sample
            return y, counted.calls

        return run

    del eps_net
    d = diffusers
    multi = {"final_sigmas_type": "sigma_min", "lower_order_final": True}
    return {
        "diffusers:DDIM": make(d.DDIMScheduler, clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing"),
        "diffusers:DPM++2M": make(d.DPMSolverMultistepScheduler, solver_order=2, **multi),
        "diffusers:DPM++3M": make(d.DPMSolverMultistepScheduler, solver_order=3, **multi),
        "diffusers:DPM++2M-logSNR": make(d.DPMSolverMultistepScheduler, solver_order=2, use_lu_lambdas=True, **multi),
        "diffusers:DPM++3M-logSNR": make(d.DPMSolverMultistepScheduler, solver_order=3, use_lu_lambdas=True, **multi),
        "diffusers:UniPC-2": make(d.UniPCMultistepScheduler, solver_order=2, **multi),
        "diffusers:UniPC-3": make(d.UniPCMultistepScheduler, solver_order=3, **multi),
        "diffusers:DEIS-3": make(d.DEISMultistepScheduler, solver_order=3, lower_order_final=True),
    }


def _k_diffusion_runs(model, kd) -> dict[str, Callable]:
    path = model.path
    t_hi = torch.tensor(path.t_max, dtype=torch.float64)
    t_lo = torch.tensor(path.t_min, dtype=torch.float64)
    s_max, s_min = float(path.noise_level(t_hi)), float(path.noise_level(t_lo))
    a_hi, a_lo = float(path.alpha(t_hi)), float(path.alpha(t_lo))

    def make(fn, calls_per_step, grid, **opts):
        def run(x, nfe):
            if nfe % calls_per_step:
                return None
            n = nfe // calls_per_step
            if grid == "karras":
                sig = kd.get_sigmas_karras(n + 1, s_min, s_max, rho=7.0, device=x.device)[:-1].double()
            else:
                sig = path.noise_level(get_timesteps(path, n, "logsnr"))
            counted = CountingModel(model)
            den = to_k_diffusion(counted)
            y = fn(den, x / a_hi, sig.to(x.dtype), disable=True, **opts) * a_lo
            return y, counted.calls

        return run

    runs = {}
    for grid in ("karras", "logsnr"):
        runs[f"k-diffusion:dpmpp_2m@{grid}"] = make(kd.sample_dpmpp_2m, 1, grid)
        runs[f"k-diffusion:dpmpp_3m(eta=0)@{grid}"] = make(kd.sample_dpmpp_3m_sde, 1, grid, eta=0.0)
        runs[f"k-diffusion:lms@{grid}"] = make(kd.sample_lms, 1, grid)
        runs[f"k-diffusion:heun@{grid}"] = make(kd.sample_heun, 2, grid)
        runs[f"k-diffusion:dpm_2@{grid}"] = make(kd.sample_dpm_2, 2, grid)
    return runs


# --- the benchmark -----


def bench_model(name, model, data, x, nfes, progress=print) -> dict:
    progress = _flushing(progress)
    """All solvers on one model; returns {"rows": {solver: {nfe: {...}}}, ...}."""
    t0 = time.time()
    ref = reference(model, x.double())
    progress(f"[{name}] reference solved in {time.time() - t0:.1f}s")
    t0 = time.time()
    stats = estimate_statistics(model, data[:512].double(), n_grid=120, exact_below=8, probes=2, progress=False)
    progress(f"[{name}] DPM-Solver-v3 statistics estimated in {time.time() - t0:.1f}s")
    runs = {"diffusio:" + k: v for k, v in _diffusio_runs(model, data, stats).items()}
    diffusers, kd = load_diffusers(), load_k_diffusion_sampling()
    peers = []
    if diffusers is not None and isinstance(model.path, DiscreteDDPM):
        runs.update(_diffusers_runs(model, diffusers))
        peers.append(f"diffusers {diffusers.__version__}")
    if kd is not None:
        runs.update(_k_diffusion_runs(model, kd))
        peers.append("k-diffusion (sampling module)")
    gen = torch.Generator().manual_seed(7)
    rows: dict[str, dict] = {}
    for label, run in runs.items():
        rows[label] = {}
        for nfe in nfes:
            t0 = time.time()
            with torch.no_grad():
                out = run(x, nfe)
            if out is None:
                continue
            y, calls = out
            if calls != nfe:
                raise RuntimeError(f"{label} used {calls} model calls for a budget of {nfe}")
            y = y.double()
            finite = bool(torch.isfinite(y).all())
            err = float((y - ref).reshape(len(y), -1).pow(2).sum(1).mean().sqrt()) if finite else float("inf")
            w2 = sliced_w2(y, data[: len(y)], generator=gen) if finite else float("inf")
            rows[label][nfe] = {"error": err, "sliced_w2": w2, "seconds": time.time() - t0}
    w2_ref = sliced_w2(ref, data[: len(ref)], generator=gen)
    return {"rows": rows, "peers": peers, "reference_sliced_w2": w2_ref, "batch": len(x)}


def _flushing(fn):
    def out(msg):
        fn(msg, flush=True) if fn is print else fn(msg)

    return out


def reference(model, x: Tensor, rtol: float = 1e-7, atol: float = 1e-7) -> Tensor:
    """Dormand-Prince on the PF-ODE written in lambda, dx/dlambda = u / lambda'(t): a discrete table's lambda(t) is
    piecewise linear in t (kinks every 1/N) but the flow is smooth in lambda, so the adaptive solver runs there."""
    path = model.path
    t_hi, t_lo = (torch.tensor(v, dtype=torch.float64) for v in (path.t_max, path.t_min))

    def f(lam: float, y: Tensor) -> Tensor:
        t = path.t_of_log_snr(torch.tensor(lam, dtype=torch.float64))
        u = model.predict(y, t.expand(y.shape[0]), "velocity")
        return u / float(path.d_log_snr(t))

    return odeint(f, x, float(path.log_snr(t_hi)), float(path.log_snr(t_lo)), rtol=rtol, atol=atol)


def _best(rows: dict, nfe: int, prefix: str, peer: bool) -> tuple[str, float]:
    cands = [(k, v[nfe]["error"]) for k, v in rows.items() if nfe in v and (k.startswith(prefix) != peer)]
    return min(cands, key=lambda c: c[1]) if cands else ("-", float("inf"))


def markdown(results: dict, nfes) -> str:
    lines = ["# Few-step solvers against an adaptive reference", ""]
    lines.append("RMS error of the final samples against Dormand-Prince (rtol = atol = 1e-7) from the same noise; ")
    lines.append("sliced W2 to true data in the second table. `-`: the budget is not a multiple of the calls per step.")
    for name, res in results["models"].items():
        if "skipped" in res:
            lines += ["", f"## {name}", "", f"skipped: {res['skipped']}"]
            continue
        lines += ["", f"## {name} (batch {res['batch']}; peers: {', '.join(res['peers']) or 'none installed'})", ""]
        for metric in ("error", "sliced_w2"):
            lines.append(
                f"### {metric}" + (f" (reference's own: {res['reference_sliced_w2']:.4f})" if metric != "error" else "")
            )
            lines.append("")
            lines.append("| solver | " + " | ".join(str(n) for n in nfes) + " |")
            lines.append("| --- |" + " --- |" * len(nfes))
            for label, by_nfe in res["rows"].items():
                cells = [f"{by_nfe[n][metric]:.2e}" if n in by_nfe else "-" for n in nfes]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
        lines.append("### best diffusio vs best peer (error)")
        lines.append("")
        lines.append("| NFE | diffusio best | error | peer best | error | ratio |")
        lines.append("| --- | --- | --- | --- | --- | --- |")
        for n in nfes:
            (a, ea), (b, eb) = _best(res["rows"], n, "diffusio:", False), _best(res["rows"], n, "diffusio:", True)
            ratio = ea / eb if eb not in (0, float("inf")) else float("nan")
            lines.append(f"| {n} | {a} | {ea:.2e} | {b} | {eb:.2e} | {ratio:.2f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, nfes, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = {k: v for k, v in results["models"].items() if "rows" in v}
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(7 * max(len(models), 1), 6), squeeze=False)
    for ax, (name, res) in zip(axes[0], models.items()):
        for label, by_nfe in res["rows"].items():
            xs = [n for n in nfes if n in by_nfe]
            style = "-" if label.startswith("diffusio:") else "--"
            ax.plot(xs, [by_nfe[n]["error"] for n in xs], style, marker="o", ms=3, lw=1, label=label)
        ax.set(
            xscale="log", yscale="log", xlabel="model calls (NFE)", ylabel="RMS error vs adaptive reference", title=name
        )
        ax.set_xticks(list(nfes), [str(n) for n in nfes])
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _digits(checkpoint: str | None, nfes, progress) -> dict:
    if not checkpoint:
        return {"skipped": "no --checkpoint given (train one with the digits trainer, then pass its path)"}
    if not os.path.exists(checkpoint):
        return {"skipped": f"checkpoint {checkpoint} does not exist"}
    try:
        from ..train import load_model  # type: ignore[attr-defined]
    except ImportError:
        return {"skipped": "diffusio.train.load_model is not available in this build; cannot load the checkpoint"}
    from sklearn.datasets import load_digits

    model = load_model(checkpoint)
    data = torch.tensor(load_digits().data, dtype=torch.float64) / 8 - 1
    data = data.reshape(-1, *model_shape(model, data))
    x = model.path.prior_sample((256, *data.shape[1:]), generator=torch.Generator().manual_seed(0))
    return bench_model(
        "digits", model, data[torch.randperm(len(data), generator=torch.Generator().manual_seed(1))], x, nfes, progress
    )


def model_shape(model, data) -> tuple[int, ...]:
    """Event shape the digits model expects: ``model.event_shape`` if it declares one, else (1, 8, 8)."""
    return tuple(getattr(model, "event_shape", (1, 8, 8)))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="diffusio bench solvers", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results", help="output directory")
    parser.add_argument(
        "--checkpoint", default=None, help="trained digits model checkpoint (section skipped if absent)"
    )
    parser.add_argument("--nfe", type=int, nargs="+", default=list(NFES), help="model-call budgets")
    parser.add_argument("--batch", type=int, default=512, help="samples per model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    nfes = tuple(args.nfe)
    results = {"nfes": list(nfes), "models": {}}
    path = DiscreteDDPM()
    for name, mix in (("ring2d", ring2d()), ("gmm64", gmm64())):
        model = mix.as_model(path)
        data = mix.sample(max(args.batch, 1024), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        x = path.prior_sample((args.batch, *mix.event_shape), generator=torch.Generator().manual_seed(0))
        results["models"][name] = bench_model(name, model, data, x, nfes)
    results["models"]["digits"] = _digits(args.checkpoint, nfes, print)
    if "skipped" in results["models"]["digits"]:
        print(f"[digits] skipped: {results['models']['digits']['skipped']}")
    os.makedirs(args.out, exist_ok=True)
    save_json(results, os.path.join(args.out, "solvers.json"))
    md = markdown(results, nfes)
    with open(os.path.join(args.out, "solvers.md"), "w") as f:
        f.write(md)
    plot(results, nfes, os.path.join(args.out, "solvers.png"))
    print(md)
    return results


if __name__ == "__main__":
    main()
