"""``diffusio bench autodiffusion``: AutoDiffusion's claim at small scale (Li et al. 2023, Sec. 4, Table 1) on the
trained digits model: at 4-6 steps a grid found by the evolutionary search (``samplers.tuning.evolutionary_search``,
fitness = Fréchet distance of the metric classifier's features to the digits, on one fixed noise seed) beats the
uniform and Karras grids for DDIM and for DPM-Solver++(2M), and the grid searched on one seed transfers to other
seeds (scored on fresh noise seeds never seen by the search).

The model is the bundled digits config (``configs/digits.yaml``, EDM U-Net) trained once and cached under
``diffusio.io.cache_dir('bench', 'digits')`` (shared with ``bench solvers``), re-scheduled onto the 1000-step DDPM table
(``models.adapters.reschedule``) so that "uniform" is DDIM's uniform spacing of the discrete steps, as in the paper.
Writes JSON, markdown and a PNG to ``--out``."""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import publish
from bench.solvers import digits_model
from diffusio.core.paths import DiscreteDDPM
from diffusio.core.timesteps import get_timesteps
from diffusio.data.digits import load_digits
from diffusio.metrics import get_digits_classifier
from diffusio.metrics.fid import classifier_features, frechet_distance
from diffusio.models.adapters import reschedule
from diffusio.samplers import sample
from diffusio.samplers.tuning import Fitness, evolutionary_search

SOLVERS = ("ddim", "dpmpp_2m")
BASELINES = ("uniform", "karras", "logsnr")


def frechet_to(reference: torch.Tensor, classifier):
    """``distance(samples, _) ->`` Fréchet distance of the classifier features of ``samples`` to ``reference``'s."""
    ref = classifier_features(reference, classifier)

    def distance(samples: torch.Tensor, _data=None) -> float:
        if not torch.isfinite(samples).all():
            return float("inf")
        return frechet_distance(classifier_features(samples.clamp(-1, 1), classifier), ref)

    return distance


def noise(model, n: int, seed: int) -> tuple[torch.Tensor, dict]:
    x = model.path.prior_sample((n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    return x, {"y": torch.arange(n) % 10}


def run(args, progress=print) -> dict:
    edm, cfg = digits_model(progress=progress)
    model = reschedule(edm, DiscreteDDPM())
    clf = get_digits_classifier(cfg["data"].get("size", 8), cfg["data"].get("mode", "pad"))
    data, _ = load_digits(size=cfg["data"].get("size", 8), mode=cfg["data"].get("mode", "pad"))
    dist = frechet_to(data, clf)
    x_fit, c_fit = noise(model, args.n_fit, args.search_seed)
    x_val, c_val = noise(model, args.n_fit, args.search_seed + 1000)
    evals = {s: noise(model, args.n_eval, s) for s in [args.search_seed, *args.eval_seeds]}
    res = {
        "model": "configs/digits.yaml trained 2000 steps (cached), rescheduled onto DiscreteDDPM",
        "search_seed": args.search_seed,
        "eval_seeds": args.eval_seeds,
        "n_fit": args.n_fit,
        "n_eval": args.n_eval,
        "ea": {
            "population": args.population,
            "select": args.select,
            "mutations": args.mutations,
            "crossovers": args.crossovers,
            "epochs": args.epochs,
            "m_prob": 0.25,
            "lattice": 1000,
        },
        "rows": [],
    }
    for solver in SOLVERS:
        for steps in args.steps:
            t0 = time.time()
            fit = Fitness(model, solver, x_fit, data=data, cond=c_fit, distance=dist)
            val = Fitness(model, solver, x_val, data=data, cond=c_val, distance=dist)
            found = evolutionary_search(
                fit, steps, population=args.population, select=args.select, mutations=args.mutations,
                crossovers=args.crossovers, epochs=args.epochs, validation=val, recheck=3,
                generator=torch.Generator().manual_seed(0), progress=True,
            )  # fmt: skip
            grids = {g: get_timesteps(model.path, steps, g) for g in BASELINES}
            grids["searched"] = found.ts
            fd = {}
            for g, ts in grids.items():
                fd[g] = {}
                for seed, (x, c) in evals.items():
                    fd[g][seed] = dist(sample(model, x, solver=solver, grid=ts, cond=c).x)
            row = {
                "solver": solver,
                "steps": steps,
                "search_calls": found.calls,
                "search_seconds": time.time() - t0,
                "fitness_history": found.history,
                "searched_grid": found.ts.tolist(),
                "searched_sigma": model.path.noise_level(found.ts).tolist(),
                "fd": {g: {str(s): v for s, v in d.items()} for g, d in fd.items()},
            }
            res["rows"].append(row)
            other = args.eval_seeds
            mean = {g: sum(fd[g][s] for s in other) / len(other) for g in grids}
            wins = sum(fd["searched"][s] < min(fd["uniform"][s], fd["karras"][s]) for s in other)
            progress(
                f"[{solver} {steps} steps] search {found.calls} calls {row['search_seconds']:.0f}s; FD on the "
                f"{len(other)} other seeds: "
                + ", ".join(f"{g} {v:.2f}" for g, v in mean.items())
                + f"; searched beats uniform and Karras on {wins}/{len(other)}"
            )
    return res


def summary(row: dict, seeds: list[int]) -> dict:
    fd = row["fd"]
    mean = {g: sum(fd[g][str(s)] for s in seeds) / len(seeds) for g in fd}
    best_fixed = min(mean["uniform"], mean["karras"])
    wins = sum(fd["searched"][str(s)] < min(fd["uniform"][str(s)], fd["karras"][str(s)]) for s in seeds)
    return {"mean": mean, "ratio": mean["searched"] / best_fixed, "wins": wins}


def markdown(res: dict) -> str:
    seeds = res["eval_seeds"]
    lines = [
        "# AutoDiffusion on digits: searched grid vs uniform and Karras (DDIM, DPM-Solver++ 2M)",
        "",
        f"Model: {res['model']}. Fréchet distance (FD) of the metric digits classifier's features to the 1797 digits",
        f"(lower is better). Search: AutoDiffusion's evolutionary search (Li et al. 2023) with fitness = FD of "
        f"{res['n_fit']} samples from noise seed {res['search_seed']} (re-check of the top 3 on seed "
        f"{res['search_seed'] + 1000}); EA settings {res['ea']}. Transfer: FD of {res['n_eval']} samples from noise "
        f"seeds {seeds} that the search never saw (mean over them; 'wins' counts the seeds where the searched grid "
        "beats both uniform and Karras). 'uniform' is DDIM's uniform spacing of the 1000 DDPM steps; logsnr is shown"
        " for reference. Reproduce: `diffusio bench autodiffusion`.",
        "",
        "| solver | steps | uniform | Karras | logSNR | searched | searched / best of (uniform, Karras) | wins | FD on "
        "the search seed (searched / best) | search calls |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in res["rows"]:
        s = summary(row, seeds)
        m = s["mean"]
        own = row["fd"]
        k = str(res["search_seed"])
        own_best = min(own["uniform"][k], own["karras"][k])
        lines.append(
            f"| {row['solver']} | {row['steps']} | {m['uniform']:.2f} | {m['karras']:.2f} | {m['logsnr']:.2f} | "
            f"{m['searched']:.2f} | {s['ratio']:.2f} | {s['wins']}/{len(seeds)} | "
            f"{own['searched'][k]:.2f} / {own_best:.2f} | {row['search_calls']} |"
        )
    lines += ["", "Searched grids (sigma = noise level of each time point):", ""]
    for row in res["rows"]:
        sig = ", ".join(f"{v:.3g}" for v in row["searched_sigma"])
        lines.append(f"- {row['solver']}, {row['steps']} steps: sigma = [{sig}]")
    return "\n".join(lines) + "\n"


def plot(res: dict, file: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = [str(s) for s in res["eval_seeds"]]
    fig, axes = plt.subplots(1, len(SOLVERS), figsize=(6 * len(SOLVERS), 4), squeeze=False)
    for ax, solver in zip(axes[0], SOLVERS):
        rows = [r for r in res["rows"] if r["solver"] == solver]
        for g in ("uniform", "karras", "logsnr", "searched"):
            ks = [r["steps"] for r in rows]
            vals = [[r["fd"][g][s] for s in seeds] for r in rows]
            mean = [sum(v) / len(v) for v in vals]
            (line,) = ax.plot(ks, mean, "o-", label=g)
            for k, v in zip(ks, vals):
                ax.scatter([k] * len(v), v, s=8, alpha=0.4, color=line.get_color())
        ax.set_xticks(sorted({r["steps"] for r in rows}))
        ax.set(xlabel="steps", ylabel="Fréchet distance (other seeds)", yscale="log", title=solver)
        ax.legend()
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffusio bench autodiffusion", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 5, 6])
    parser.add_argument("--n-fit", type=int, default=300, help="samples per fitness evaluation")
    parser.add_argument("--n-eval", type=int, default=500, help="samples per evaluation seed")
    parser.add_argument("--search-seed", type=int, default=0)
    parser.add_argument("--eval-seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--select", type=int, default=4)
    parser.add_argument("--mutations", type=int, default=6)
    parser.add_argument("--crossovers", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if min(args.steps) < 2 or args.n_fit < 100 or args.n_eval < 100 or not args.eval_seeds:
        raise SystemExit("--steps must be >= 2, --n-fit and --n-eval >= 100, and --eval-seeds non-empty")
    if args.search_seed in args.eval_seeds:
        raise SystemExit("--eval-seeds must differ from --search-seed (they measure the transfer)")
    torch.set_num_threads(args.threads)
    res = run(args)
    return publish(args.out, "autodiffusion", res, markdown(res), plot)


if __name__ == "__main__":
    main()
