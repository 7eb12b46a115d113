"""The ``diffusio`` command line: demo, train, sample, eval, solvers, bench."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

__all__ = ["main"]

# benchmark name -> module of the checkout's top-level bench/ package (not installed with the library)
BENCHES = {
    "overhead": "overhead",
    "solvers": "solvers",
    "sde-order": "sde_order",
    "inverse": "inverse",
    "guidance": "guidance",
    "mrs": "mrs",
    "flow_matching": "flow_matching",
    "flowmap": "flowmap",
    "pfgmpp": "pfgmpp",
    "interpolants": "interpolants",
    "dmcmc": "dmcmc",
}


def find_bench_root() -> Path:
    """The checkout holding ``bench/``: the one this package was installed from (editable), else the working
    directory or one of its parents. Raises with the fix when there is none (a wheel install)."""
    here = Path(__file__).resolve().parents[3]  # src/diffusio/app/cli.py -> checkout root
    for root in (here, Path.cwd(), *Path.cwd().parents):
        if (root / "bench" / "__init__.py").is_file():
            return root
    raise FileNotFoundError(
        "benchmarks live in a checkout's top-level bench/ folder, which is not installed with the package: "
        "run `diffusio bench NAME` from a clone of the diffusio repository (or `python -m bench.NAME` there)"
    )


def _cmd_train(args) -> int:
    from diffusio.app.config import run_training
    from diffusio.app.resources import resolve_config
    from diffusio.training import cleanup, setup

    cfg = resolve_config(args.config)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    info = setup(args.device)
    try:
        trainer = run_training(cfg, out, steps=args.steps, resume=args.resume, dist_info=info)
    finally:
        cleanup()
    if info.is_main:
        print(f"trained {trainer.step} steps; wrote {out / 'model.safetensors'} and {out / 'metrics.jsonl'}")
    return 0


def _labels(cfg: dict, n: int, class_: int | None) -> torch.Tensor | None:
    k = cfg.get("num_classes")
    if not k:
        if class_ is not None:
            raise SystemExit("--class was given but this model is not class-conditional")
        return None
    if class_ is not None and not 0 <= class_ < k:
        raise SystemExit(f"--class must be in [0, {k - 1}], got {class_}")
    return torch.full((n,), class_) if class_ is not None else torch.arange(n) % k


def save_samples(x: torch.Tensor, out: Path, cfg: dict, meta: dict) -> list[Path]:
    """Write ``out`` as .npz (+ .safetensors if asked) and a PNG picture (image grid or 2-D scatter)."""
    from diffusio.app.plotting import save_image_grid, save_scatter
    from diffusio.io import save_safetensors

    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")
    written = [stem.with_suffix(".npz")]
    np.savez_compressed(written[0], samples=x.numpy(), meta=json.dumps({**meta, "data": cfg.get("data", {})}))
    if out.suffix == ".safetensors":
        written.append(save_safetensors({"samples": x}, out, {**meta, "data": cfg.get("data", {})}))
    png = stem.with_suffix(".png")
    if x.ndim == 2 and x.shape[1] == 2:
        save_scatter(x, png, title=meta.get("solver", ""))
    elif x.ndim == 4:
        save_image_grid(x[:100], png, nrow=10)
    written.append(png)
    return written


def load_samples(file: str | Path) -> tuple[torch.Tensor, dict]:
    """Read samples written by ``diffusio sample`` (.npz or .safetensors)."""
    file = Path(file)
    if not file.is_file():
        raise SystemExit(f"no sample file at {file}")
    if file.suffix == ".safetensors":
        from diffusio.io import load_safetensors

        t, meta = load_safetensors(file)
        return t["samples"], meta
    with np.load(file, allow_pickle=False) as z:
        return torch.from_numpy(z["samples"]), json.loads(str(z["meta"]))


def _cmd_sample(args) -> int:
    from diffusio.app.config import load_model
    from diffusio.app.evaluation import generate

    model, cfg = load_model(args.ckpt, device=args.device or "cpu")
    opts = dict(_parse_opts(args.opt))
    if cfg.get("family", "diffusion") != "diffusion":  # interpolants, flow maps, mean-reverting restoration
        return _sample_family(model, cfg, args, opts)
    if args.solver == "auto":  # autotuned solver and grid for --nfe calls (app/tune_cli.py)
        from diffusio.app.tune_cli import sample_auto

        return sample_auto(model, cfg, args, opts, _labels(cfg, args.n, args.class_), save_samples)
    x, nfe = generate(
        model,
        tuple(cfg["data_shape"]),
        args.n,
        solver=args.solver,
        steps=args.steps,
        grid=args.grid,
        seed=args.seed,
        batch_size=args.batch_size,
        labels=_labels(cfg, args.n, args.class_),
        progress=True,
        **opts,
    )
    meta = {"solver": args.solver, "steps": args.steps, "nfe": nfe, "grid": args.grid, "seed": args.seed, **opts}
    for f in save_samples(x, Path(args.out), cfg, meta):
        print(f"wrote {f}")
    print(f"{args.n} samples, {nfe} model calls each")
    return 0


def _sample_family(model, cfg: dict, args, opts: dict) -> int:
    from diffusio.app.evaluation import generate_family

    solver = "flowmap" if cfg["family"] == "flowmap" and args.solver == "heun" else args.solver
    if cfg["family"] == "mean_reverting" and args.solver == "heun":
        solver = "mrs"
    x, nfe, extra = generate_family(model, cfg, args.n, solver=solver, steps=args.steps, seed=args.seed, **opts)
    meta = {"family": cfg["family"], "solver": solver, "steps": args.steps, "nfe": nfe, "seed": args.seed, **opts}
    for f in save_samples(x, Path(args.out), cfg, {**meta, **extra}):
        print(f"wrote {f}")
    print(f"{len(x)} samples, {nfe} model calls each" + "".join(f", {k} {v:.3f}" for k, v in extra.items()))
    return 0


def _parse_opts(items: list[str] | None) -> list[tuple[str, float | str]]:
    out = []
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--opt takes NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out.append((k, float(v)))
        except ValueError:
            out.append((k, v))
    return out


def _cmd_eval(args) -> int:
    from diffusio.app.evaluation import evaluate

    x, meta = load_samples(args.samples)
    data_cfg = meta.get("data")
    if args.config:
        from diffusio.app.config import load_config

        data_cfg = load_config(args.config)["data"]
    if not data_cfg:
        raise SystemExit("the sample file names no data set; pass --config CONFIG.yaml")
    metrics = evaluate(x.float(), data_cfg)
    print(json.dumps(metrics, indent=2))
    if args.json:
        from diffusio.io import save_json

        save_json({"samples": str(args.samples), **meta, "metrics": metrics}, args.json)
    return 0


def _cmd_solvers(args) -> int:
    from diffusio.samplers import SOLVERS

    print(f"{'name':<18}{'order':>6}{'calls/step':>12}  {'kind':<11}options")
    for s in SOLVERS.values():
        calls = "adaptive" if s.calls_per_step is None else str(s.calls_per_step)
        kind = "stochastic" if s.stochastic else "ODE"
        print(f"{s.name:<18}{s.order:>6}{calls:>12}  {kind:<11}{', '.join(s.options()) or '-'}   {s.summary}")
    return 0


def _cmd_demo(args) -> int:
    from diffusio.app.demo import run_demo

    run_demo(Path(args.out), fast=args.fast)
    return 0


def _cmd_bench(args) -> int:
    import importlib

    root = str(find_bench_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    mod = importlib.import_module(f"bench.{BENCHES[args.name]}")
    return int(mod.main(args.rest) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffusio", description="Diffusion and flow models: train, sample, evaluate.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train a 2-D and a digits model, sample with every baseline sampler, report")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--fast", action="store_true", help="a much shorter run (for smoke tests)")
    d.set_defaults(fn=_cmd_demo)

    t = sub.add_parser("train", help="train from a YAML config (torchrun-aware)")
    t.add_argument("config", help="a YAML file, or the name of a bundled config (see configs/)")
    t.add_argument("--steps", type=int, help="total steps (overrides the config)")
    t.add_argument("--out", help="output directory (default runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    t.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    t.set_defaults(fn=_cmd_train)

    s = sub.add_parser("sample", help="sample a trained model")
    s.add_argument("ckpt", help="model.safetensors or checkpoint.safetensors")
    s.add_argument("--solver", default="heun")
    s.add_argument("--steps", type=int, default=18)
    s.add_argument("--grid", default=None, help="uniform, logsnr, karras or quadratic (default: the solver's)")
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--out", default="samples.npz", help="FILE.npz or FILE.safetensors; a PNG is written beside")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=1000)
    s.add_argument("--class", dest="class_", type=int, help="sample one class of a class-conditional model")
    s.add_argument("--opt", action="append", help="solver option NAME=VALUE (e.g. eta=0.5), repeatable")
    s.add_argument("--device", default=None)
    s.add_argument("--nfe", type=int, help="with --solver auto: the budget of model calls per sample")
    s.set_defaults(fn=_cmd_sample)

    e = sub.add_parser("eval", help="metrics of a sample file against its data set")
    e.add_argument("samples")
    e.add_argument("--config", help="a run config naming the data (default: read from the sample file)")
    e.add_argument("--json", help="also write the metrics to this JSON file")
    e.set_defaults(fn=_cmd_eval)

    so = sub.add_parser("solvers", help="list the registered samplers")
    so.set_defaults(fn=_cmd_solvers)

    from diffusio.app.inverse_cli import add_inverse_parser

    add_inverse_parser(sub)

    from diffusio.app.tune_cli import add_tune_parser

    add_tune_parser(sub)

    b = sub.add_parser("bench", help="benchmarks (write JSON, markdown and a plot to bench/results/)")
    b.add_argument("name", choices=sorted(BENCHES))
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark")
    b.set_defaults(fn=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"diffusio {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
