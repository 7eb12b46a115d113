"""The ``diffusio`` command line: demo, train, sample, eval, solvers, bench."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from diffusio.app.options import parse_opts

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
    "scaling": "scaling",
    "quantize": "quantize",
    "finetune": "finetune",
    "memorization": "memorization",
    "fokker-planck": "fokker_planck",
    "mup": "mup",
    "multitask": "multitask",
    "fuzz": "fuzz",
    "posterior": "posterior",
    "dmcmc": "dmcmc",
    "autodiffusion": "autodiffusion",
    "crash": "crash",
    "anomaly": "anomaly",
    "forward-models": "forward_models",
}


def positive_int(v: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {n}")
    return n


def check_device(device: str | None) -> str | None:
    """Refuse a device torch does not know or that is not present (e.g. cuda without CUDA)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: diffusio runs on cpu or cuda")
    return device


def check_out(out: str | Path, what: str = "--out") -> Path:
    """Refuse an output path that lies inside a regular file (or is a directory where a file is wanted)."""
    out = Path(out)
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{what} {out}: {parent} is a file, not a directory")
            break
    return out


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

    check_device(args.device)
    cfg = resolve_config(args.config)
    out = check_out(args.out or Path("runs") / Path(args.config).stem)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a directory for the run")
    if args.finetune:
        from diffusio.app.config import run_finetune

        res = run_finetune(cfg, args.finetune, out, steps=args.steps)
        print(f"fine-tuned ({res['method']}, {res['trainable']} trainable parameters, {res['steps']} steps, loss "
              f"{res['loss']:.4f}); wrote {out / 'model.safetensors'}")  # fmt: skip
        return 0
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
        if set(t) != {"samples"}:
            raise ValueError(f"{file} is not a diffusio sample file (tensors: {', '.join(sorted(t)) or 'none'})")
        return _checked_samples(file, t["samples"], meta)
    import zipfile

    if file.suffix != ".npz":
        raise ValueError(f"{file}: sample files are .npz or .safetensors (written by diffusio sample)")
    try:
        with np.load(file, allow_pickle=False) as z:
            if set(z.files) != {"samples", "meta"}:
                raise ValueError(f"{file} is not a diffusio sample file (arrays: {', '.join(z.files) or 'none'})")
            info = z.zip.getinfo("samples.npy") if hasattr(z, "zip") else None
            if info is not None and info.file_size > MAX_SAMPLE_BYTES:
                raise ValueError(f"{file}: the samples array is {info.file_size} bytes (limit {MAX_SAMPLE_BYTES})")
            samples, meta_raw = z["samples"], z["meta"]
            if meta_raw.dtype.kind != "U" or meta_raw.ndim != 0:
                raise ValueError(f"{file}: the meta entry must be a JSON string")
            meta = json.loads(str(meta_raw))
    except (zipfile.BadZipFile, OSError, EOFError, json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"{file} is not a readable sample file ({type(e).__name__}: {e})") from e
    return _checked_samples(file, torch.from_numpy(np.ascontiguousarray(samples)), meta)


MAX_SAMPLE_BYTES = 4 << 30


def _checked_samples(file: Path, x: torch.Tensor, meta) -> tuple[torch.Tensor, dict]:
    if not isinstance(meta, dict):
        raise ValueError(f"{file}: the sample metadata must be a JSON object")
    if not x.is_floating_point() or x.ndim < 2 or x.shape[0] < 2 or x.numel() == 0:
        raise ValueError(f"{file}: samples must be a floating array (n >= 2, ...); got {x.dtype} {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{file}: the samples contain NaN or inf")
    data = meta.get("data")
    if data is not None:
        from diffusio.app.config import check_config

        check_config({"data": data})
    return x, meta


def _cmd_sample(args) -> int:
    import os

    from diffusio.app.config import load_model

    check_device(args.device)
    out = check_out(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; pass a file name such as samples.npz")
    if out.suffix not in (".npz", ".safetensors"):
        raise ValueError(f"--out {out}: use a .npz or .safetensors file name")
    info = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: the batches are dealt to the ranks
        from diffusio.training import setup

        info = setup(args.device or "cpu")
    model, cfg = load_model(args.ckpt, device=info.device if info else (args.device or "cpu"))
    opts = dict(parse_opts(args.opt))
    if cfg.get("family", "diffusion") != "diffusion":  # interpolants, flow maps, mean-reverting restoration
        if info is not None:
            from diffusio.training import cleanup

            cleanup()
            raise ValueError("sampling across processes covers diffusion/flow checkpoints; run it without torchrun")
        return _sample_family(model, cfg, args, opts)
    if args.solver == "dmcmc":  # Denoising MCMC with a trained noise-level classifier (app/dmcmc_cli.py)
        from diffusio.app.dmcmc_cli import sample_dmcmc_cli

        return sample_dmcmc_cli(model, cfg, args, opts, _labels(cfg, args.n, args.class_), save_samples)
    if args.levels_ckpt:
        raise ValueError("--levels-ckpt is used by --solver dmcmc only")
    if args.solver == "auto":  # autotuned solver and grid for --nfe calls (app/tune_cli.py)
        from diffusio.app.tune_cli import sample_auto

        return sample_auto(model, cfg, args, opts, _labels(cfg, args.n, args.class_), save_samples)
    shown = dict(opts)
    if args.solver == "dpm_v3":
        opts["statistics"] = _dpm_v3_statistics(model, cfg, args.steps)
    x, nfe = _sample_sharded(model, cfg, args, opts, info)
    if x is None:  # a rank other than 0: its share is in rank 0's merged file
        return 0
    meta = {"solver": args.solver, "steps": args.steps, "nfe": nfe, "grid": args.grid, "seed": args.seed, **shown}
    for f in save_samples(x, Path(args.out), cfg, meta):
        print(f"wrote {f}")
    print(f"{args.n} samples, {nfe} model calls each")
    return 0


def _sample_sharded(model, cfg: dict, args, opts: dict, info):
    """The run's batches (each from its own seeded generator, app/shards.py); under torchrun each rank makes its
    share, writes OUT.rankK.npz, and rank 0 merges them (returns (None, nfe) on the other ranks)."""
    import torch.distributed as dist

    from diffusio.app.shards import merge_shards, sample_batches, shard_file, write_shard
    from diffusio.training import cleanup

    rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
    batches, nfe = sample_batches(
        model,
        tuple(cfg["data_shape"]),
        args.n,
        solver=args.solver,
        steps=args.steps,
        grid=args.grid,
        seed=args.seed,
        batch_size=args.batch_size,
        labels=_labels(cfg, args.n, args.class_),
        rank=rank,
        world_size=world,
        progress=rank == 0,
        **opts,
    )
    if world == 1:
        return torch.cat([batches[k] for k in sorted(batches)]), nfe
    try:
        write_shard(batches, args.out, rank, nfe)
        dist.barrier()
        if rank != 0:
            return None, nfe
        x, nfe = merge_shards(args.out, world, -(-args.n // args.batch_size))
        for r in range(world):
            shard_file(args.out, r).unlink()
        return x, nfe
    finally:
        cleanup()


def _dpm_v3_statistics(model, cfg: dict, steps: int):
    """DPM-Solver-v3 statistics of a checkpoint, estimated once from its own data config (progress bar) and cached
    under ``diffusio.io.cache_dir("dpm_v3")`` by the model's fingerprint (a later run loads them)."""
    from diffusio.app.config import build_data
    from diffusio.samplers.dpm_v3 import statistics_for

    n_grid = max(60, 4 * steps)
    x0, cond = build_data(cfg["data"]).sample(512, torch.Generator().manual_seed(0))
    # var_floor 1e-6: the ridge matched to float32 networks (their eps is accurate to ~1e-7 relative)
    opts = {"exact_below": 16, "var_floor": 1e-6, "progress": True}
    return statistics_for(model, x0, n_grid=n_grid, cond=cond or None, **opts)


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


def _cmd_eval(args) -> int:
    import os

    from diffusio.app.evaluation import evaluate

    x, meta = load_samples(args.samples)
    data_cfg = meta.get("data")
    if args.config:
        from diffusio.app.config import load_config

        data_cfg = load_config(args.config)["data"]
    if not data_cfg:
        raise SystemExit("the sample file names no data set; pass --config CONFIG.yaml")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: the per-sample work is dealt to the ranks
        metrics = _eval_sharded(x.float(), data_cfg)
        if metrics is None:  # a rank other than 0: rank 0 prints and writes
            return 0
    else:
        metrics = evaluate(x.float(), data_cfg)
    print(json.dumps(metrics, indent=2))
    if args.json:
        from diffusio.io import save_json

        save_json({"samples": str(args.samples), **meta, "metrics": metrics}, args.json)
    return 0


def _eval_sharded(x, data_cfg: dict) -> dict | None:
    """``diffusio eval`` under torchrun (gloo on CPU): each rank computes its units of the evaluation
    (app/evaluation.py ``evaluation_parts``), rank 0 gathers them and combines them into the metrics of one
    process, bit for bit; the other ranks return None."""
    import torch.distributed as dist

    from diffusio.app.evaluation import combine_evaluation, evaluation_parts
    from diffusio.training import cleanup, setup

    info = setup("cpu")
    try:
        if data_cfg.get("name") == "digits":  # rank 0 trains and caches the metric classifier once; the others load it
            if info.rank == 0:
                from diffusio.metrics import get_digits_classifier

                get_digits_classifier(size=data_cfg.get("size", 8), mode=data_cfg.get("mode", "pad"))
            dist.barrier()
        parts = evaluation_parts(x, data_cfg, rank=info.rank, world_size=info.world_size)
        gathered = [None] * info.world_size if info.rank == 0 else None
        dist.gather_object(parts, gathered, dst=0)
        return combine_evaluation(*gathered) if info.rank == 0 else None
    finally:
        cleanup()


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


def _cmd_serve(args) -> int:
    from diffusio.app.ui import serve

    serve(args.root, host=args.host, port=args.port, gallery=args.gallery)
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffusio")
    except PackageNotFoundError:  # a source tree that is not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffusio",
        description="Diffusion and flow models: train, sample, evaluate. --debug (any command): show tracebacks.",
    )
    p.add_argument("--version", action="version", version=f"diffusio {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train a 2-D and a digits model, sample with every baseline sampler, report")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--fast", action="store_true", help="a much shorter run (for smoke tests)")
    d.set_defaults(fn=_cmd_demo)

    t = sub.add_parser("train", help="train from a YAML config (torchrun-aware)")
    t.add_argument("config", help="a YAML file, or the name of a bundled config (see configs/)")
    t.add_argument("--steps", type=positive_int, help="total steps (overrides the config)")
    t.add_argument("--out", help="output directory (default runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    t.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    t.add_argument("--finetune", metavar="CKPT", help="adapt this trained model with the config's finetune: section")
    t.set_defaults(fn=_cmd_train)

    s = sub.add_parser("sample", help="sample a trained model")
    s.add_argument("ckpt", help="model.safetensors or checkpoint.safetensors")
    s.add_argument("--solver", default="heun")
    s.add_argument("--steps", type=int, default=18)
    s.add_argument("--grid", default=None, help="uniform, logsnr, karras or quadratic (default: the solver's)")
    s.add_argument(
        "--n", "--num-samples", dest="n", type=positive_int, default=1000, help="samples (--num-samples under torchrun)"
    )
    s.add_argument("--out", default="samples.npz", help="FILE.npz or FILE.safetensors; a PNG is written beside")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=positive_int, default=1000)
    s.add_argument("--class", dest="class_", type=int, help="sample one class of a class-conditional model")
    s.add_argument("--opt", action="append", help="solver option NAME=VALUE (e.g. eta=0.5), repeatable")
    s.add_argument("--device", default=None)
    s.add_argument("--nfe", type=int, help="with --solver auto: the budget of model calls per sample")
    s.add_argument("--levels-ckpt", help="with --solver dmcmc: the noise-level classifier (diffusio train *_levels)")
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

    from diffusio.app.scaling_cli import add_search_parser

    add_search_parser(sub)

    sv = sub.add_parser("serve", help="the web studio: sample, watch previews, cancel, inpaint, compare, gallery")
    sv.add_argument("--root", default="runs", help="folder searched for model.safetensors / checkpoint.safetensors")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    sv.add_argument("--port", type=int, default=8765)
    sv.add_argument("--gallery", help="where the studio saves its PNGs (default ROOT/studio)")
    sv.set_defaults(fn=_cmd_serve)

    from diffusio.app.tune_cli import add_tune_parser

    add_tune_parser(sub)

    b = sub.add_parser("bench", help="benchmarks (write JSON, markdown and a plot to bench/results/)")
    b.add_argument("name", choices=sorted(BENCHES))
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark")
    b.set_defaults(fn=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every error becomes one line ``diffusio CMD: error: ...`` and exit code 2; ``--debug``
    (anywhere before a bench's own options) shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("bench") + 2 if "bench" in argv else len(argv)
    debug = "--debug" in argv[:cut]
    if debug:
        argv = [a for i, a in enumerate(argv) if not (a == "--debug" and i < cut)]
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print(f"diffusio {args.command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        if isinstance(e.code, str):  # a message raised as SystemExit inside a command
            if debug:
                raise
            print(f"diffusio {args.command}: error: {e.code}", file=sys.stderr)
            return 2
        raise
    except Exception as e:  # the boundary: one line per library error, the traceback only with --debug
        if debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        kind = "" if isinstance(e, ValueError | FileNotFoundError) else f"{type(e).__name__}: "
        print(f"diffusio {args.command}: error: {kind}{msg} (run with --debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
