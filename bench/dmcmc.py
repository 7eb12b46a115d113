"""``diffusio bench dmcmc``: Denoising Langevin Gibbs + Heun from each chain's lowest noise level versus Heun from
sigma_max, at equal model calls per sample (Kim & Ye 2023), on the EDM path (sigma 80 to 0.002):

- ``gaussians``: the toy "gaussians" as its exact mixture (8 Gaussians of std 0.08 on a circle of radius sqrt(2)),
  exact score; level classifier = the bundled ``gaussians_levels`` config trained by ``diffusio train``'s code
  (``run_training``) and cached;
- ``gmm64``: a 64-D, 10-component mixture, exact score; level classifier of the same family (``level_mlp``) trained by
  the same Trainer on fresh draws of the mixture (it has no data config) and cached;
- ``digits``: the bundled digits model (``configs/digits.yaml``, cached, shared with ``bench solvers``) with the
  bundled ``digits_levels`` classifier, scored by the Fréchet distance of the metric digits classifier's features.

On the mixtures the exact level posterior (logits log p_sigma(x)) runs as a reference row. Ablation: the chains of the
trained classifier with the level held fixed (no classifier) at the median level they reach. Mixtures are scored by
the sliced Wasserstein-2 distance to fresh data (the data-vs-data distance of equal-size samples is the floor).
Writes JSON, markdown and a PNG (histograms of the levels reached) to ``--out``."""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from bench.common import publish
from bench.solvers import digits_model, gmm64, sliced_w2
from diffusio.core.paths import EDM
from diffusio.data import GaussianMixture
from diffusio.io import cache_dir, load_safetensors
from diffusio.models import ExactModel
from diffusio.samplers import sample
from diffusio.samplers.dmcmc import ChainState, ExactLevelPosterior, init_chains, sample_dmcmc

BUDGETS = {10: (4, 3), 20: (6, 7), 40: (10, 15)}  # total calls per sample: (Langevin sweeps, Heun steps)
ETA = {"gaussians": 0.02, "gmm64": 0.05, "digits": 0.1}
INIT_STEPS = 10  # the initial Heun solve (Kim & Ye 2023, Alg. 1, step 1): 20 calls


def gaussians() -> GaussianMixture:
    """The toy data set "gaussians" (``diffusio.data.toy``) as its exact mixture."""
    ang = torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8
    return GaussianMixture(math.sqrt(2) * torch.stack([ang.cos(), ang.sin()], 1), 0.08)


def bundled_classifier(name: str, progress=print):
    """The bundled ``name`` levels config, trained once into ``cache_dir('bench', name)`` (as ``diffusio train
    name --out DIR`` does) and loaded; retrained if unfinished."""
    from diffusio.app.config import load_model, run_training
    from diffusio.app.resources import packaged_config

    cfg = packaged_config(name)
    run = cache_dir("bench", name)
    f = run / "model.safetensors"
    if not (f.is_file() and load_safetensors(f)[1].get("step") == cfg["train"]["steps"]):
        progress(f"[{name}] training the bundled config into {run} ({cfg['train']['steps']} steps, once)")
        run_training(cfg, run, resume=(run / "checkpoint.safetensors").is_file(), progress=False)
    return load_model(f)[0], cfg["train"]


def mixture_classifier(name: str, mix: GaussianMixture, steps: int = 2000, progress=print):
    """A ``levels``-family classifier (``level_mlp``, 200 levels of the EDM path) trained by the library's Trainer on
    fresh draws of ``mix`` (a mixture with no data config), cached in ``cache_dir('bench', name + '_levels')``."""
    from diffusio.app.config import build_loss, build_model
    from diffusio.data.sources import FunctionSource
    from diffusio.training import TrainConfig, Trainer

    cfg = {
        "family": "levels",
        "path": {"name": "edm"},
        "net": {"name": "level_mlp", "hidden": 256, "depth": 3},
        "model": {"levels": 200},
        "loss": {},
    }
    train = {"steps": steps, "batch_size": 512, "lr": 2e-3, "warmup": 100, "ema_decay": 0.995, "progress": False}
    shape = tuple(mix.event_shape)
    model = build_model(cfg, shape)
    run = cache_dir("bench", f"{name}_levels")
    f = run / "model.safetensors"
    if not (f.is_file() and load_safetensors(f)[1].get("step") == steps):
        progress(f"[{name}] training a level classifier on draws of the mixture into {run} ({steps} steps, once)")
        data = FunctionSource(lambda n, g: mix.sample(n, generator=g, dtype=torch.float32), shape)
        trainer = Trainer(model, build_loss(cfg, model), data, TrainConfig(**train), run, {**cfg, "data_shape": shape})
        trainer.fit(resume=(run / "checkpoint.safetensors").is_file())
    model.net.load_state_dict(load_safetensors(f)[0])
    model.net.eval()
    return model, train


def run_chains(model, x0, levels, classifier, eta, burn, score, cond, seed, fixed_ablation):
    """Start the chains, then one output per budget (consecutive windows of the same chains)."""
    gen = torch.Generator().manual_seed(seed)
    state, init_calls = init_chains(model, x0, levels, classifier, eta=eta, burn=burn, steps=INIT_STEPS, cond=cond,
                                    generator=gen)  # fmt: skip
    rows, hist = {}, {}
    for total, (sweeps, steps) in BUDGETS.items():
        y, win, calls = sample_dmcmc(model, state, levels, classifier, eta=eta, sweeps=sweeps, solver="heun",
                                     steps=steps, cond=cond, generator=gen)  # fmt: skip
        sig = model.path.noise_level(levels[win.idx_min])
        row = {
            "calls": calls,
            "classifier_calls": win.classifier_calls,
            "score": score(y),
            "median_sigma_min": float(sig.median()),
        }
        if fixed_ablation:
            j = int(win.idx_min.float().median())
            fixed = ChainState(state.x, torch.full_like(state.idx, j))
            y_fix, _, calls_fix = sample_dmcmc(model, fixed, levels, None, eta=eta, sweeps=sweeps, solver="heun",
                                               steps=steps, level="fixed", cond=cond, generator=gen)  # fmt: skip
            sig_j = float(model.path.noise_level(levels[j]))
            row["fixed"] = {"calls": calls_fix, "score": score(y_fix), "sigma": sig_j}
        state = win.state  # chains persist across outputs
        rows[total], hist[total] = row, sig.tolist()
    return {"init_calls": init_calls, "burn_in_sweeps": burn, "budgets": rows, "sigma_min": hist}


def run_problem(name: str, n: int, burn: int, progress=print) -> dict:
    path = EDM()
    t0 = time.time()
    if name == "digits":
        from diffusio.data.digits import load_digits
        from diffusio.metrics import get_digits_classifier
        from diffusio.metrics.fid import classifier_features, frechet_distance

        model, cfg = digits_model(progress=progress)
        clf, train = bundled_classifier("digits_levels", progress)
        metric = get_digits_classifier(cfg["data"].get("size", 8), cfg["data"].get("mode", "pad"))
        data, _ = load_digits(size=cfg["data"].get("size", 8), mode=cfg["data"].get("mode", "pad"))
        ref = classifier_features(data, metric)

        def score(x):
            return frechet_distance(classifier_features(x.clamp(-1, 1), metric), ref)

        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(3))[:n]
        floor = score(data[perm])
        cond = {"y": torch.arange(n) % 10}
        x0 = path.prior_sample((n, *data.shape[1:]), generator=torch.Generator().manual_seed(0))
        exact, metric_name = None, "frechet"
        floor_note = f"FD of {n} of the digits themselves to all {len(data)} (a subset: optimistic)"
    else:
        mix = gaussians() if name == "gaussians" else gmm64()
        model = ExactModel(mix, path)
        clf, train = (
            bundled_classifier("gaussians_levels", progress) if name == "gaussians" else mixture_classifier(name, mix)
        )
        data = mix.sample(n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

        def score(x):
            return sliced_w2(x.double(), data)

        floor = sliced_w2(mix.sample(n, generator=torch.Generator().manual_seed(6), dtype=torch.float64), data)
        cond = None
        x0 = path.prior_sample((n, *mix.event_shape), generator=torch.Generator().manual_seed(0)).double()
        exact, metric_name = ExactLevelPosterior(mix, path, clf.levels), "sliced_w2"
        floor_note = "sliced W2 between two fresh data sets of the same size"
    levels, eta = clf.levels, ETA[name]
    out = {
        "metric": metric_name,
        "floor": floor,
        "floor_note": floor_note,
        "eta": eta,
        "levels": len(levels),
        "classifier_training": {k: train[k] for k in ("steps", "batch_size", "lr")},
        "heun_from_sigma_max": {},
    }
    for total in BUDGETS:
        base = sample(model, x0, solver="heun", steps=total // 2, grid="karras", cond=cond)
        out["heun_from_sigma_max"][total] = {"calls": base.nfe, "score": score(base.x)}
    out["trained"] = run_chains(model, x0, levels, clf, eta, burn, score, cond, 0, True)
    if exact is not None:
        out["exact"] = run_chains(model, x0, levels, exact, eta, burn, score, cond, 0, False)
    for total in BUDGETS:
        h, tr = out["heun_from_sigma_max"][total]["score"], out["trained"]["budgets"][total]
        ex = out["exact"]["budgets"][total]["score"] if exact is not None else float("nan")
        progress(f"[{name}] {total} calls: Heun from sigma_max {h:.4f}, DLG (trained) {tr['score']:.4f}, DLG (exact) "
                 f"{ex:.4f}, fixed level {tr['fixed']['score']:.4f}")  # fmt: skip
    out["seconds"] = time.time() - t0
    return out


def markdown(res: dict) -> str:
    lines = [
        "# Denoising MCMC (Langevin-Gibbs) + Heun vs Heun from sigma_max",
        "",
        "EDM path (sigma 80 to 0.002), 200 noise levels. Level update: Gibbs sampling from a noise-level classifier "
        "trained by the library (`family: levels`; the bundled `gaussians_levels` and `digits_levels` configs, a "
        "classifier of the same family trained on draws of gmm64), and on the mixtures the exact posterior as a "
        "reference. Calls per sample = Langevin sweeps + Heun calls (classifier calls = sweeps, counted apart). "
        "Excluded, as in Kim & Ye 2023 where chains persist across outputs: the start of the chains (one 20-call "
        "Heun solve, re-noised by 0.5) and the burn-in sweeps. Outputs at 10, 20, 40 calls are consecutive windows "
        "of the same chains. Ablation: the trained classifier's chains with the level fixed at the median level "
        "they reached. Mixtures: sliced W2 to fresh data; digits: Fréchet distance (FD) of the metric classifier's "
        "features. Ratio < 1: DMCMC better. Reproduce: `diffusio bench dmcmc`.",
        "",
        "| model | metric | calls | Heun from sigma_max | DLG (trained) + Heun | ratio | DLG (exact) + Heun | "
        "fixed level + Heun | median sigma_min (trained) | floor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in res["models"].items():
        for total in r["heun_from_sigma_max"]:
            h = r["heun_from_sigma_max"][total]["score"]
            tr = r["trained"]["budgets"][total]
            ex = f"{r['exact']['budgets'][total]['score']:.4f}" if "exact" in r else "—"
            fx = f"{tr['fixed']['score']:.4f} (sigma {tr['fixed']['sigma']:.3f})"
            lines.append(
                f"| {name} (eta {r['eta']}) | {r['metric']} | {total} | {h:.4f} | {tr['score']:.4f} | "
                f"{tr['score'] / h:.2f} | {ex} | {fx} | {tr['median_sigma_min']:.3f} | {r['floor']:.4f} |"
            )
    lines += ["", "Classifier training budgets and floors:", ""]
    for name, r in res["models"].items():
        lines.append(f"- {name}: classifier {r['classifier_training']}; floor = {r['floor_note']}")
    return "\n".join(lines) + "\n"


def plot(res: dict, file: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = res["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, (name, r) in zip(axes[0], models.items()):
        for total, sig in r["trained"]["sigma_min"].items():
            ax.hist(np.log10(sig), bins=40, alpha=0.5, label=f"{total} calls")
        ax.set(xlabel="log10 sigma_min reached by the chain (trained classifier)", ylabel="chains", title=name)
        ax.legend()
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffusio bench dmcmc", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--n", type=int, default=1000, help="chains (= samples per output)")
    parser.add_argument("--burn", type=int, default=30, help="burn-in sweeps")
    parser.add_argument("--models", nargs="+", default=["gaussians", "gmm64", "digits"], choices=list(ETA))
    parser.add_argument("--eta", type=float, help="override the Langevin step of every model (calibration)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--merge", nargs="+", default=[], help="earlier dmcmc.json files: their models not re-run here")
    args = parser.parse_args(argv)
    if args.n < 10 or args.burn < 0:
        raise SystemExit("--n must be >= 10 and --burn >= 0")
    if args.eta is not None:
        if not 0 < args.eta < math.inf:
            raise SystemExit(f"--eta must be a positive number, got {args.eta}")
        ETA.update(dict.fromkeys(ETA, args.eta))
    torch.set_num_threads(args.threads)
    res = {"models": {}}
    for f in args.merge:
        with open(f) as fh:
            res["models"].update(json.load(fh)["models"])
    res["models"].update({name: run_problem(name, args.n, args.burn, progress=print) for name in args.models})
    return publish(args.out, "dmcmc", res, markdown(res), plot)


if __name__ == "__main__":
    main()
