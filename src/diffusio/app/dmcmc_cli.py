"""``diffusio sample CKPT --solver dmcmc --levels-ckpt CLASSIFIER``: Denoising MCMC (Kim & Ye 2023) with a noise-level
classifier trained by ``diffusio train`` (``family: levels``, e.g. the bundled ``gaussians_levels`` or
``digits_levels`` configs) on the same path as the model.

``--n`` chains are started from prior noise (one Heun solve of ``init_steps`` steps, re-noised by 0.5), run ``burn``
Langevin-Gibbs sweeps, then one window of ``sweeps`` sweeps; each chain's lowest-noise state is integrated by Heun
with ``--steps`` steps down to t_min. Options (``--opt NAME=VALUE``): ``eta`` (the absolute Langevin step, default
0.1), ``sweeps`` (default 5), ``burn`` (default 20), ``init_steps`` (default 10), ``level`` (``sample``: Gibbs,
default; ``argmax``: the official demo's greedy update)."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["load_level_classifier", "sample_dmcmc_cli"]

DEFAULTS = {"eta": 0.1, "sweeps": 5, "burn": 20, "init_steps": 10, "level": "sample"}


def load_level_classifier(file: str, model):
    """The trained noise-level classifier in ``file``, checked to be a ``levels`` checkpoint on ``model``'s path."""
    from diffusio.app.config import load_model

    clf, cfg = load_model(file)
    if cfg.get("family") != "levels":
        raise ValueError(
            f"--levels-ckpt {file} is a {cfg.get('family', 'diffusion')} model, not a noise-level classifier; train "
            "one with diffusio train gaussians_levels (or digits_levels, or a config with family: levels)"
        )
    a, b = model.path, clf.path
    ends = torch.tensor([a.t_max, a.t_min], dtype=torch.float64)
    same = type(a) is type(b) and (a.t_max, a.t_min) == (b.t_max, b.t_min)
    if not same or not torch.allclose(a.noise_level(ends), b.noise_level(ends)):
        raise ValueError(
            f"--levels-ckpt {file} was trained on the {type(b).__name__} path, the model runs on {type(a).__name__} "
            "with other noise levels; train the classifier with the model's path section"
        )
    return clf


def _options(opts: dict) -> dict:
    unknown = sorted(set(opts) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown dmcmc option(s) {', '.join(unknown)}; valid: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **opts}
    for k in ("sweeps", "burn", "init_steps"):
        if isinstance(out[k], bool) or not isinstance(out[k], int) or out[k] < (1 if k != "burn" else 0):
            raise ValueError(f"--opt {k}= must be an integer >= {1 if k != 'burn' else 0}, got {out[k]!r}")
    out["eta"] = float(out["eta"]) if isinstance(out["eta"], int | float) and not isinstance(out["eta"], bool) else None
    if out["eta"] is None or not 0 < out["eta"] < float("inf"):
        raise ValueError(f"--opt eta= (the absolute Langevin step) must be a positive number, got {opts.get('eta')!r}")
    if out["level"] not in ("sample", "argmax"):
        raise ValueError(f"--opt level= must be sample (Gibbs) or argmax (greedy), got {out['level']!r}")
    return out


def sample_dmcmc_cli(model, cfg: dict, args, opts: dict, labels, save) -> int:
    """Run Denoising Langevin Gibbs + Heun for ``args.n`` chains and write the samples (``save(x, out, cfg, meta)``)."""
    from diffusio.samplers.dmcmc import init_chains, sample_dmcmc

    if not args.levels_ckpt:
        raise ValueError("--solver dmcmc needs --levels-ckpt CLASSIFIER (train one: diffusio train gaussians_levels)")
    if args.steps < 1:
        raise ValueError(f"--steps (Heun steps from each chain's lowest noise) must be >= 1, got {args.steps}")
    o = _options(opts)
    clf = load_level_classifier(args.levels_ckpt, model)
    gen = torch.Generator().manual_seed(args.seed)
    x = model.path.prior_sample((args.n, *cfg["data_shape"]), generator=gen)
    cond = {"y": labels} if labels is not None else None
    state, init_calls = init_chains(
        model, x, clf.levels, clf, eta=o["eta"], burn=o["burn"], steps=o["init_steps"], cond=cond, generator=gen,
        progress=True,
    )  # fmt: skip
    y, win, calls = sample_dmcmc(
        model, state, clf.levels, clf, eta=o["eta"], sweeps=o["sweeps"], solver="heun", steps=args.steps,
        level=o["level"], cond=cond, generator=gen,
    )  # fmt: skip
    sig = model.path.noise_level(clf.levels[win.idx_min])
    meta = {
        "solver": "dmcmc",
        "integrator": "heun",
        "steps": args.steps,
        "nfe": calls,
        "init_calls": init_calls,
        "classifier_calls": win.classifier_calls,
        "median_noise_level": float(sig.median()),
        "seed": args.seed,
        "levels_ckpt": str(args.levels_ckpt),
        **{k: v for k, v in o.items()},
    }
    for f in save(y, Path(args.out), cfg, meta):
        print(f"wrote {f}")
    print(
        f"{args.n} samples, {calls} model calls each ({o['sweeps']} Langevin-Gibbs sweeps + Heun from the chain's "
        f"lowest noise, median sigma {float(sig.median()):.3g}); {init_calls} calls per chain to start the chains "
        f"and {win.classifier_calls} classifier calls"
    )
    return 0
