"""``diffusio tune CKPT --nfe 5,10`` and ``diffusio sample CKPT --solver auto --nfe 10``: autotune a trained model
with held-out data taken from its config (the training split for digits, fresh draws for toys)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

__all__ = ["add_tune_parser", "cached_plan", "plan_for", "sample_auto", "tune_data"]


def tune_data(cfg: dict, n: int = 1024) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Samples (and labels, for class-conditional digits) for autotune's DPM-Solver-v3 statistics and shape."""
    data_cfg = cfg["data"]
    if data_cfg.get("name") == "digits":
        from diffusio.data.digits import load_digits

        x, y = load_digits(split="train", **{k: v for k, v in data_cfg.items() if k in ("size", "mode")})
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:n]
        return x[perm], y[perm]
    from diffusio.app.evaluation import reference_data

    return reference_data(data_cfg, n, seed=777, split="train"), None


def plan_for(
    model, cfg: dict, nfe: int, *, n: int = 128, solvers=None, cache: bool = True, progress: bool = True, **opts
):
    """The autotuned :class:`~diffusio.samplers.tuning.Plan` for a loaded checkpoint at ``nfe`` model calls."""
    from diffusio.samplers.tuning import CANDIDATES, autotune

    data, labels = tune_data(cfg)
    k = cfg.get("num_classes")
    cond = {"y": torch.arange(n) % k} if k else None
    data_cond = {"y": labels} if k and labels is not None else None
    if k and data_cond is None:  # no labels for DPM-Solver-v3's statistics
        solvers = tuple(s for s in (solvers or CANDIDATES) if s != "dpm_v3")
    rtol = 1e-5 if any(p.dtype == torch.float32 for p in model.parameters()) else 1e-6
    return autotune(
        model, nfe, data=data, n=n, cond=cond, data_cond=data_cond, solvers=solvers, rtol=rtol, cache=cache,
        generator=torch.Generator().manual_seed(0), progress=progress, **opts,
    )  # fmt: skip


def _nfes(text: str) -> list[int]:
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--nfe takes comma-separated integers (e.g. 5,10), got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("--nfe needs at least one budget")
    return out


def _cmd_tune(args) -> int:
    from diffusio.app.config import load_model
    from diffusio.samplers.tuning import SearchedGrid, save_grid

    model, cfg = load_model(args.ckpt, device="cpu")
    if cfg.get("family", "diffusion") != "diffusion":
        raise ValueError(f"diffusio tune works on diffusion models; this checkpoint is a {cfg['family']} model")
    for nfe in args.nfe:
        opts = {"max_evals": args.max_evals, "dp_lattice": args.dp_lattice}
        plan = plan_for(model, cfg, nfe, n=args.n, solvers=args.solvers, cache=not args.no_cache, **opts)
        print(f"\n== nfe = {nfe} ==")
        print(plan.format_table())
        if args.save:
            name = f"{args.save}-nfe{nfe}"
            g = SearchedGrid(plan.grid, plan.solver, plan.steps, plan.error, plan.fingerprint, method=plan.grid_source,
                             calls=plan.search_calls, path=repr(model.path))  # fmt: skip
            print(f"saved grid {name!r} to {save_grid(g, name)}")
    return 0


def sample_auto(model, cfg: dict, args, opts: dict, labels, save_samples) -> int:
    """``diffusio sample --solver auto --nfe N``: sample with the plan ``diffusio tune`` cached for this model and
    budget, else tune now (``labels`` and ``save_samples`` come from the CLI's sample command)."""
    from diffusio.app.evaluation import generate

    if args.nfe is None:
        raise ValueError("--solver auto needs --nfe N (the budget of model calls per sample)")
    if opts:
        raise ValueError("--solver auto chooses the options itself; drop --opt")
    plan = cached_plan(model, args.nfe) or plan_for(model, cfg, args.nfe)
    extra = {k: v for k, v in plan.kwargs(model).items() if k not in ("solver", "steps", "grid")}
    x, nfe = generate(
        model, tuple(cfg["data_shape"]), args.n, solver=plan.solver, steps=plan.steps, grid=plan.grid,
        seed=args.seed, batch_size=args.batch_size, labels=labels, progress=True, **extra,
    )  # fmt: skip
    tuned = {"budget": args.nfe, "grid_source": plan.grid_source, "error": plan.error}
    grid = [float(t) for t in plan.grid]
    meta = {"solver": plan.solver, "steps": plan.steps, "nfe": nfe, "grid": grid, "autotune": tuned, "seed": args.seed}
    for f in save_samples(x, Path(args.out), cfg, meta):
        print(f"wrote {f}")
    print(f"{args.n} samples with {plan.solver} on its tuned grid ({plan.grid_source}), {nfe} model calls each")
    return 0


def cached_plan(model, nfe: int):
    """The newest plan ``diffusio tune`` cached for this model and budget (None if none, or if it needs DPM-Solver-v3
    statistics, which ``plan_for`` restores)."""
    import json

    from diffusio.io import cache_dir
    from diffusio.samplers import SOLVERS
    from diffusio.samplers.tuning import Plan, model_fingerprint

    fp = model_fingerprint(model)
    files = sorted(cache_dir("autotune").glob(f"{fp[:20]}-nfe{nfe}-*.json"), key=lambda f: f.stat().st_mtime)
    for f in reversed(files):
        plan = Plan.from_json(json.loads(f.read_text()))
        if plan.fingerprint == fp and not SOLVERS[plan.solver].needs:
            return plan
    return None


def add_tune_parser(sub) -> None:
    """Register ``diffusio tune CKPT --nfe 5,10``: autotune and print the table of candidates."""
    t = sub.add_parser("tune", help="autotune solver and time grid for budgets of model calls; prints the candidates")
    t.add_argument("ckpt", help="model.safetensors or checkpoint.safetensors")
    t.add_argument("--nfe", type=_nfes, required=True, help="budgets, comma-separated (e.g. 5,10)")
    t.add_argument("--n", type=int, default=128, help="noise samples for the search (and as many for validation)")
    t.add_argument(
        "--solvers",
        type=lambda v: tuple(s.strip() for s in v.split(",") if s.strip()),
        help="candidate solvers, comma-separated (default: samplers.tuning.CANDIDATES)",
    )
    t.add_argument("--max-evals", type=int, default=60, help="log-SNR optimiser evaluations per refined solver")
    t.add_argument("--dp-lattice", type=int, default=60, help="lattice intervals of the dynamic-programming search")
    t.add_argument("--save", help="save each chosen grid by name (NAME-nfeN), loadable with tuning.load_grid")
    t.add_argument("--no-cache", action="store_true", help="search again even if a plan is cached")
    t.set_defaults(fn=_cmd_tune)
