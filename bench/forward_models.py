"""Diffusion with forward models on the linear-Gaussian toy (forward-models.md, test 1), against its exact answer.

Signals S ~ N(0, Sigma) in R^6 are seen only through 8 random 2x6 context and 8 random 4x6 target projections; the
model (``ContextProjectionGen``, EDM-preconditioned in observation space) never sees S. For several (context, target)
pose pairs and one context each, 4,000 sampled signals are compared with the exact S | O_c: context residual, mean
error in units of sqrt(tr Cov) (target < 0.1) and covariance relative error (target < 0.3). The same sampler with
the exact generator (``ExactToyGen``) is the reference without learning error. Pairs are reported with the condition
number of P_t N_c: a sampled target observation's error is amplified by up to that factor in the signal.

    diffusio bench forward-models     # about 15 min on 2 busy CPU cores the first time (training), then ~2 min
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from bench.common import results_dir, write_results
from diffusio.core.paths import CosineVP
from diffusio.inverse.forward_models import (
    ContextProjectionGen,
    ExactToyGen,
    ForwardModelDiffusion,
    LinearPoses,
    linear_gaussian_toy,
    posterior_errors,
    sample_signals,
    train_forward_model_diffusion,
)
from diffusio.io import cache_dir, load_safetensors, save_safetensors
from diffusio.training.losses import EDMWeight

TARGETS = {"context_rel_error": 0.05, "mean_error_rel_sqrt_trace": 0.1, "cov_rel_error": 0.3}


def trained_model(sigma, pc, pt, data, args) -> tuple[ForwardModelDiffusion, float | None]:
    """The trained toy model (cached) and the seconds its training took (``None`` if not recorded)."""
    path = CosineVP()
    sd = float(data.obs_t.std())
    gen = ContextProjectionGen(pc, pt, path, sigma_data=sd, hidden=args.hidden, depth=3)
    model = ForwardModelDiffusion(gen, LinearPoses(pt), path)
    key = f"toy_{args.weighting}_{args.train_steps}_{args.n}_{args.hidden}_{args.seed}"
    f = cache_dir("bench", "forward_models") / f"{key}.safetensors"
    if os.path.isfile(f):
        try:
            tensors, meta = load_safetensors(f)
            gen.load_state_dict(tensors)
            return model.eval(), meta.get("train_seconds")
        except RuntimeError as err:
            print(f"[forward-models] the cached generator does not load ({str(err).splitlines()[0]}); retraining")
    print(f"[forward-models] training {args.train_steps} steps on {args.n} observation pairs (cached in {f})")
    weighting = EDMWeight(sd) if args.weighting == "edm" else None
    start = time.perf_counter()
    train_forward_model_diffusion(model, data, steps=args.train_steps, seed=args.seed, weighting=weighting)
    seconds = round(time.perf_counter() - start, 1)
    save_safetensors(gen.state_dict(), f, {"key": key, "train_seconds": seconds})
    return model, seconds


def condition_numbers(pc: torch.Tensor, pt: torch.Tensor) -> dict[tuple[int, int], float]:
    """cond(P_t N_c) for every (context, target) pose pair, N_c an orthonormal basis of null(P_c)."""
    mc = pc.shape[1]
    out = {}
    for i in range(pc.shape[0]):
        null = torch.linalg.svd(pc[i], full_matrices=True)[2][mc:].T
        for j in range(pt.shape[0]):
            out[(i, j)] = float(torch.linalg.cond(pt[j] @ null))
    return out


def _plot(rows: list[dict], file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key in zip(axes, ("mean_error_rel_sqrt_trace", "cov_rel_error"), strict=True):
        for gen, marker in (("trained", "o"), ("exact", "x")):
            pts = [(r["cond"], r[gen][key]) for r in rows]
            ax.scatter(*zip(*pts, strict=True), marker=marker, label=f"{gen} generator")
        ax.axhline(TARGETS[key], color="k", ls="--", lw=1, label="target")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("cond(P_t N_c) of the pose pair")
        ax.set_title(key)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(file, dpi=100)
    plt.close(fig)


def _markdown(res: dict) -> str:
    a = res["args"]
    lines = [
        "# Diffusion with forward models: linear-Gaussian toy (`diffusio bench forward-models`)", "",
        f"Generator: `ContextProjectionGen` (hidden {a['hidden']}, depth 3, EDM preconditioning in observation space), "
        f"{a['train_steps']} steps of batch 256 on {a['n']} observation pairs, x0 loss weighting `{a['weighting']}`, "
        f"CosineVP, DDIM {a['sample_steps']} steps, {a['samples']} samples per context. Targets (forward-models.md "
        "test 1): context residual < 0.05, mean error < 0.1 sqrt(tr Cov), covariance relative error < 0.3. "
        "Pose pairs: the one the earlier bench used, (0, 1), then pairs at quantiles of cond(P_t N_c) over all 64.",
        "", "| pose pair | cond(P_t N_c) | trained: context | trained: mean err | trained: cov err "
        "| exact gen: mean err | exact gen: cov err | trained meets targets |", "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in res["pairs"]:
        t, e = r["trained"], r["exact"]
        ok = all(t[k] < v for k, v in TARGETS.items())
        lines.append(
            f"| {tuple(r['pair'])} | {r['cond']:.1f} | {t['context_rel_error']:.1e} | "
            f"{t['mean_error_rel_sqrt_trace']:.3f} | {t['cov_rel_error']:.3f} | {e['mean_error_rel_sqrt_trace']:.3f} | "
            f"{e['cov_rel_error']:.3f} | {'yes' if ok else 'no'} |"
        )
    trained = "not recorded" if res["train_seconds"] is None else f"{res['train_seconds']} s"
    lines += ["", f"Training (once, then cached): {trained}; this run: {res['seconds']} s.", ""]
    lines += ["![errors](forward_models.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench forward-models", description=__doc__.split("\n\n")[0])
    p.add_argument("--train-steps", type=int, default=6000)
    p.add_argument("--n", type=int, default=200000, help="training observation pairs")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--weighting", choices=("edm", "uniform"), default="edm")
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--quantiles", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    start = time.perf_counter()
    sigma, pc, pt, data = linear_gaussian_toy(args.n, seed=args.seed)
    model, train_seconds = trained_model(sigma, pc, pt, data, args)
    exact = ForwardModelDiffusion(ExactToyGen(sigma, pc, pt, model.path), LinearPoses(pt), model.path)
    conds = condition_numbers(pc, pt)
    order = sorted(conds, key=conds.get)
    pairs = [(0, 1)] + [order[min(int(q * len(order)), len(order) - 1)] for q in args.quantiles]
    g = torch.Generator().manual_seed(args.seed + 1)
    rows, k = [], args.samples
    for i, j in dict.fromkeys(pairs):
        oc = (pc[i] @ torch.randn(pc.shape[2], generator=g, dtype=torch.float64)).float()
        cond = (oc.expand(k, -1).clone(), torch.full((k,), i), torch.full((k,), j))
        row = {"pair": [i, j], "cond": conds[(i, j)]}
        for name, m in (("trained", model), ("exact", exact)):
            sig, _ = sample_signals(m, *cond, steps=args.sample_steps, generator=torch.Generator().manual_seed(7))
            row[name] = posterior_errors(sig, sigma, pc[i], oc)
        rows.append(row)
        print(f"[forward-models] pair {(i, j)} cond {row['cond']:.1f}: trained {row['trained']}, exact {row['exact']}")
    out = results_dir(args.out)
    _plot(rows, out / "forward_models.png")
    res = {"pairs": rows, "train_seconds": train_seconds, "seconds": round(time.perf_counter() - start, 1),
           "targets": TARGETS, "args": vars(args)}  # fmt: skip
    write_results(out, "forward_models", res, _markdown(res))
    print(f"[forward-models] wrote {out / 'forward_models.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
