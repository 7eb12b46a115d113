"""``diffusio search``: inference-time search with a verifier on a trained model; writes the best samples (PNG grid
or scatter), the score-versus-NFE curve (PNG) and a JSON record. Also wires the digits metric classifier as a
verifier (the classifier lives in ``metrics``, which ``scaling`` may not import)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from diffusio.app.options import parse_opts

__all__ = ["add_search_parser", "as_flow", "digits_verifier", "run_search"]

VERIFIERS = ("classifier", "self", "MODULE:FUNCTION")


def digits_verifier(kind: str = "prob", target: int | None = None, size: int = 8, mode: str = "pad"):
    """The digits metric classifier's belief in the class (``cond["y"]`` or ``target``) as a verifier."""
    from diffusio.metrics import get_digits_classifier
    from diffusio.scaling import ClassifierVerifier

    return ClassifierVerifier(get_digits_classifier(size, mode), target=target, kind=kind)


def as_flow(model):
    """``model`` re-scheduled to the linear (rectified-flow) path over the same noise range, sigma/alpha = s:
    t = s / (1 + s) (``Rescheduled``), so flow-time diffusion schedules such as g = 3 t^2 apply."""
    from diffusio.core.paths import RectifiedFlow
    from diffusio.models.wrappers import Rescheduled

    path = model.path
    lo, hi = (float(path.noise_level(torch.tensor(t, dtype=torch.float64))) for t in (path.t_min, path.t_max))
    return Rescheduled(model, RectifiedFlow(t_min=lo / (1 + lo), t_max=min(hi / (1 + hi), 1 - 1e-3)))


def add_search_parser(subparsers) -> None:
    """Register the ``search`` sub-command on an argparse ``subparsers`` object."""
    from diffusio.scaling import STRATEGIES

    p = subparsers.add_parser("search", help="inference-time search with a verifier (best-of-N, zero-order, paths, "
                              "SMC, RBF); PNGs + JSON")  # fmt: skip
    p.add_argument("ckpt", help="model.safetensors of a trained model")
    p.add_argument("--verifier", default="classifier",
                   help="classifier (digits metric classifier, needs --class), self (self-consistency), or "
                        "MODULE:FUNCTION (a function(x, cond) -> (B,) scores)")  # fmt: skip
    p.add_argument("--strategy", default="best_of_n", choices=STRATEGIES)
    p.add_argument("--budget", type=int, default=256, help="model evaluations (NFE) per output, search included")
    p.add_argument("--n", type=int, default=16, help="number of outputs (independent searches)")
    p.add_argument("--solver", default=None, help="default: heun (search), euler_maruyama (smc, rbf)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--grid", default=None)
    p.add_argument("--class", dest="class_", type=int, help="target class (conditions the verifier and the model)")
    p.add_argument("--unconditional-model", action="store_true",
                   help="sample with the null class; only the verifier sees --class")  # fmt: skip
    p.add_argument("--flow", action="store_true",
                   help="view the model as a linear flow over its noise range (smc/rbf, diffusion=square)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/search", help="output directory")
    p.add_argument("--opt", action="append", help="strategy/solver option NAME=VALUE (e.g. cos_sim=0.9), repeatable")
    p.set_defaults(fn=_cmd_search)


def _make_verifier(spec: str, model, cfg: dict):
    from diffusio.scaling import SelfConsistency

    if spec == "classifier":
        data = cfg.get("data", {})
        if data.get("name") != "digits":
            raise ValueError("--verifier classifier is the digits metric classifier: use it with a digits model, or "
                             "pass self / MODULE:FUNCTION")  # fmt: skip
        return digits_verifier(size=data.get("size", 8), mode=data.get("mode", "pad"))
    if spec == "self":
        return SelfConsistency(model)
    if ":" in spec:
        mod, fn = spec.split(":", 1)
        try:
            return getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot import the verifier {spec!r}: {e}") from None
    raise ValueError(f"unknown verifier {spec!r}; valid: {', '.join(VERIFIERS)}")


def run_search(ckpt, *, verifier: str = "classifier", strategy: str = "best_of_n", budget: int = 256, n: int = 16,
               solver: str | None = None, steps: int = 10, grid: str | None = None, class_: int | None = None,
               unconditional_model: bool = False, flow: bool = False, seed: int = 0, out: Path | None = None,
               progress: bool = True,
               **options) -> dict:  # fmt: skip
    """Search ``n`` outputs of the model in ``ckpt``; write PNGs + JSON to ``out``; return the JSON record."""
    from diffusio.app.config import load_model
    from diffusio.scaling import search

    model, cfg = load_model(ckpt)
    if flow:
        model = as_flow(model)
    k = cfg.get("num_classes")
    vcond = cond = None
    if class_ is not None:
        if not 0 <= class_ <= 9 and verifier == "classifier":
            raise ValueError(f"--class must be a digit 0..9, got {class_}")
        vcond = {"y": torch.full((n,), class_)}
        if k:
            cond = {"y": torch.full((n,), k if unconditional_model else class_)}
    elif verifier == "classifier":
        raise ValueError("--verifier classifier scores the probability of a class: pass --class C")
    v = _make_verifier(verifier, model, cfg)
    res = search(model, v, shape=(n, *cfg["data_shape"]), strategy=strategy, budget=budget, solver=solver,
                 steps=steps, grid=grid, cond=cond, verifier_cond=vcond, generator=torch.Generator().manual_seed(seed),
                 progress=progress, **options)  # fmt: skip
    record = {"ckpt": str(ckpt), "verifier": verifier, "class": class_, "seed": seed, "options": options,
              **res.summary(), "scores": res.scores.tolist(), "nfe": res.nfe.tolist(),
              "history": [{"nfe": a, "best_score_mean": b} for a, b in res.history],
              "model_seconds": res.model_seconds, "verifier_seconds": res.verifier_seconds}  # fmt: skip
    if out is not None:
        _write(Path(out), res, record)
    return record


def _write(out: Path, res, record: dict) -> None:
    from diffusio.app.plotting import plot_curves, save_image_grid, save_scatter
    from diffusio.io import save_json

    out.mkdir(parents=True, exist_ok=True)
    x = res.x.float()
    order = res.scores.argsort(descending=True)
    if x.ndim == 2 and x.shape[1] == 2:
        save_scatter(x, out / "samples.png", title=f"{res.strategy} (budget {res.budget})")
    elif x.ndim == 4:
        save_image_grid(x[order][:100].clamp(-1, 1), out / "samples.png", nrow=min(10, len(x)))
    xs, ys = zip(*res.history) if res.history else ((), ())
    plot_curves({res.strategy: (list(xs), list(ys))}, out / "curve.png", xlabel="model evaluations per output (NFE)",
                ylabel="best verifier score (mean over outputs)", title="score versus NFE", logy=False)  # fmt: skip
    save_json(record, out / "search.json")
    print(f"wrote {out / 'samples.png'}, {out / 'curve.png'} and {out / 'search.json'}")


def _cmd_search(args) -> int:
    opts = {}
    for key, val in parse_opts(args.opt):
        if key in ("budget", "steps", "grid", "solver", "strategy", "n", "seed", "verifier"):
            raise SystemExit(f"--opt {key}=... duplicates a flag: pass --{key} {val}")
        opts[key] = val
    record = run_search(args.ckpt, verifier=args.verifier, strategy=args.strategy, budget=args.budget, n=args.n,
                        solver=args.solver, steps=args.steps, grid=args.grid, class_=args.class_,
                        unconditional_model=args.unconditional_model, flow=args.flow, seed=args.seed,
                        out=Path(args.out), **opts)  # fmt: skip
    keep = ("strategy", "budget", "score_mean", "nfe_mean", "verifier_calls_mean", "model_calls", "seconds", "overhead")
    print(json.dumps({k: record[k] for k in keep}, indent=2))
    return 0
