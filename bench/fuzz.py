"""Fuzzing the boundaries (issue 9): mostly-valid inputs with one field wrong at a time, over ``diffusio.sample``,
``inverse.solve``, the config loader and the CLI; and a numerics sweep (every solver x built-in path x steps x
dtype at the defaults and at the domain ends ``check_t`` accepts).

Each case runs under a time limit and is classified: ``ok`` (finite result), ``refused`` (one clear
ValueError/TypeError, or exit code 2 from the CLI), or a failure: ``nan`` (a non-finite result returned),
``raw`` (any other exception: a raw traceback), ``hang`` (over the time limit). The target is 0 failures.

    diffusio bench fuzz [--cases N] [--seed S] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import random
import signal
import time
from collections import Counter

import torch
from tqdm.auto import tqdm

from diffusio.core.paths import EDM, VE, CosineVP, DiscreteDDPM, LinearVP, RectifiedFlow, Trigonometric
from diffusio.data import GaussianMixture
from diffusio.models import ExactModel

FAILURES = ("nan", "raw", "hang")
PATHS = {
    "vp_linear": LinearVP,
    "vp_cosine": CosineVP,
    "ve": VE,
    "edm": EDM,
    "flow": RectifiedFlow,
    "trig": Trigonometric,
    "ddpm": DiscreteDDPM,
}
GMM = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), 0.3)
BAD_NUMBERS = [float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 1e30, -1e-300, True, "abc", None, [1.0]]


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise _Timeout after ``seconds`` (main thread, POSIX)."""

    def handler(signum, frame):
        raise _Timeout

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.5)  # re-fires if a callback swallowed the first
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def classify(fn, limit: float = 10.0) -> tuple[str, str]:
    """Run ``fn() -> Tensor | int`` and classify the outcome (see the module docstring)."""
    try:
        with time_limit(limit):
            out = fn()
    except _Timeout:
        return "hang", f"over {limit} s"
    except (ValueError, TypeError) as e:
        msg = str(e)
        return ("refused", msg) if msg.strip() else ("raw", f"{type(e).__name__} without a message")
    except Exception as e:  # a raw traceback
        return "raw", f"{type(e).__name__}: {e}"
    if isinstance(out, int):
        return ("ok" if out == 0 else "refused" if out == 2 else "raw"), f"exit {out}"
    if torch.is_tensor(out) and not bool(torch.isfinite(out.float()).all()):
        return "nan", "non-finite result"
    return "ok", ""


# --- case generators: one field wrong at a time ----------------------------------------------------------------------


def sample_case(rng: random.Random):
    from diffusio.samplers import SOLVERS, sample
    from diffusio.samplers.dpm_v3 import Statistics

    path = PATHS[rng.choice(sorted(PATHS))]()
    solver = rng.choice(sorted(n for n, s in SOLVERS.items() if n not in ("flowmap", "mrs", "mrs_sde")))
    spec = SOLVERS[solver]
    kw = {"shape": (4, 2), "solver": solver, "steps": max(spec.min_steps, rng.choice([3, 5, 8]))}
    kw["generator"] = torch.Generator().manual_seed(rng.randrange(1000))
    if "statistics" in spec.needs:
        kw["statistics"] = Statistics.trivial(path, (2,), n_grid=200)
    field = rng.choice(["none", "option", "steps", "t_min", "t_max", "shape", "generator", "x", "grid", "dtype"])
    hi = path.t_hi if math.isfinite(path.t_hi) else 1e4
    if field == "option":
        opts = spec.options()
        opts = [o for o in opts if o not in ("statistics",)]
        if opts:
            kw[rng.choice(opts)] = rng.choice(BAD_NUMBERS)
    elif field == "steps":
        kw["steps"] = rng.choice([0, -1, 2.5, True, "5", None, 10**7])
    elif field == "t_min":
        kw["t_min"] = rng.choice([path.t_lo, path.t_lo + 1e-12, -0.5, float("nan"), path.t_max, "x"])
    elif field == "t_max":
        kw["t_max"] = rng.choice([hi, hi - 1e-12, float("inf"), path.t_min, 2 * hi])
    elif field == "shape":
        kw["shape"] = rng.choice([(-1, 2), (0, 2), (4,), 4, (4, 2.5), "4,2", (True, 2)])
    elif field == "generator":
        kw["generator"] = rng.choice([0, "seed", torch.Generator().manual_seed(0).get_state()])
    elif field == "x":
        kw.pop("shape")
        x = path.prior_sample((4, 2), generator=torch.Generator().manual_seed(0))
        kw["x"] = rng.choice(
            [x.bool(), x.long(), x.half(), x.bfloat16(), x.double(), x[:, :1], x.flatten(), x * math.nan]
        )
    elif field == "grid":
        kw["grid"] = rng.choice(
            ["nope", torch.tensor([0.5, 0.5, 0.1]), torch.tensor([0.1, 0.5]), torch.tensor([hi, path.t_lo]), 3]
        )
    elif field == "dtype":
        kw.pop("shape")
        dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32, torch.float64])
        kw["x"] = path.prior_sample((4, 2), generator=torch.Generator().manual_seed(1), dtype=dtype)
    model = ExactModel(GMM, path)
    return f"sample {solver} on {path.name}: {field}", lambda: sample(model, **kw).x


def inverse_case(rng: random.Random):
    from diffusio.inverse import solve
    from diffusio.inverse.operators import MatrixOperator

    path = PATHS[rng.choice(["vp_linear", "edm", "flow", "ve"])]()
    method = rng.choice(["dps", "pigdm", "reddiff", "smc", "pinv"])
    op = MatrixOperator(torch.tensor([[1.0, 0.0]]), noise_std=rng.choice([0.0, 0.1]))
    y = torch.tensor([[0.7], [-0.3], [0.2]])
    kw = {"steps": rng.choice([5, 10])} if method != "pinv" else {}
    kw["generator"] = torch.Generator().manual_seed(0)
    field = rng.choice(["none", "steps", "y", "generator", "option"])
    if field == "steps" and method != "pinv":
        kw["steps"] = rng.choice([0, -3, 2.5, float("nan")])
    elif field == "y":
        y = rng.choice([y * math.nan, y[:, :0], y.long(), torch.ones(3, 2)])
    elif field == "generator":
        kw["generator"] = rng.choice([0, "x"])
    elif field == "option":
        name = {"dps": "scale", "pigdm": "eta", "reddiff": "lr", "smc": "particles", "pinv": "generator"}[method]
        kw[name] = rng.choice(BAD_NUMBERS)
    model = ExactModel(GMM, path)
    return f"inverse {method} on {path.name}: {field}", lambda: solve(model, op, y, method, **kw).x


def config_case(rng: random.Random):
    from diffusio.app.config import check_config
    from diffusio.app.resources import packaged_config, packaged_configs

    cfg = packaged_config(rng.choice(packaged_configs()))
    field = "none"
    if rng.random() < 0.9:
        section = rng.choice(sorted(cfg))
        value = cfg[section]
        if isinstance(value, dict) and value and rng.random() < 0.8:
            key = rng.choice(sorted(value))
            field = f"{section}.{key}"
            value[key] = rng.choice([*BAD_NUMBERS, "x" * 3, {"a": 1}, key + "z"])
            if rng.random() < 0.3:
                value[key + "x"] = value.pop(key)
        else:
            field = section
            cfg[rng.choice([section, section + "s", section[:-1] or "x"])] = rng.choice([None, 3, "abc", [], {}])

    def run():
        try:
            check_config(copy.deepcopy(cfg))
        except ValueError:
            raise
        return 0

    return f"config {field}", run


def cli_case(rng: random.Random, ckpt: str, out_dir: str):
    from diffusio.app.cli import main

    base = ["sample", ckpt, "--n", "8", "--steps", "4", "--out", f"{out_dir}/s.npz"]
    field = rng.choice(["none", "device", "out", "n", "batch", "opt", "solver", "grid", "ckpt", "eval"])
    argv = list(base)
    if field == "device":
        argv += ["--device", rng.choice(["bogus", "cuda", "cuda:7", "mps", "cpu"])]
    elif field == "out":
        argv[-1] = rng.choice([f"{ckpt}/x.npz", out_dir, f"{out_dir}/x.txt"])
    elif field == "n":
        argv[3] = rng.choice(["0", "-1", "abc", "1.5"])
    elif field == "batch":
        argv += ["--batch-size", rng.choice(["0", "-2", "x"])]
    elif field == "opt":
        argv += ["--solver", "ddim", "--opt", rng.choice(["eta=nan", "eta=inf", "eta=-1", "eta", "zzz=1", "eta=abc"])]
    elif field == "solver":
        argv += ["--solver", rng.choice(["rk9", "dpm_solver_2", "unipc", ""])]
    elif field == "grid":
        argv += ["--grid", rng.choice(["nope", "karras", ""])]
    elif field == "ckpt":
        argv[1] = rng.choice([out_dir, f"{out_dir}/missing.safetensors", f"{out_dir}/garbage.safetensors"])
    elif field == "eval":
        argv = ["eval", rng.choice([ckpt, f"{out_dir}/garbage.safetensors", f"{out_dir}/missing.npz"])]

    def run():
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse: usage error, exit 2
                code = e.code if isinstance(e.code, int) else 2
        text = err.getvalue()
        if "Traceback" in text:
            raise RuntimeError("a traceback was printed")
        return code

    return f"cli {field}: {' '.join(argv[2:])}", run


# --- numerics sweep ---------------------------------------------------------------------------------------------------


def numerics_sweep(steps_list=(5, 10, 50), dtypes=(torch.float32, torch.float64), progress=True, paths=None):
    """Every registered solver x built-in path x steps x dtype, at the defaults and the accepted domain ends."""
    from diffusio.samplers import SOLVERS, sample
    from diffusio.samplers.dpm_v3 import Statistics

    rows = []
    names = [n for n in SOLVERS if n not in ("flowmap", "mrs", "mrs_sde")]
    chosen = {k: v for k, v in PATHS.items() if paths is None or k in paths}
    total = len(names) * len(chosen) * len(steps_list) * len(dtypes) * 3
    bar = tqdm(total=total, desc="numerics sweep", disable=not progress)
    for pname, cls in chosen.items():
        path = cls()
        model = ExactModel(GMM, path)
        hi = path.t_hi if math.isfinite(path.t_hi) else 1e4
        for name in names:
            spec = SOLVERS[name]
            for steps in steps_list:
                for dtype in dtypes:
                    for where, kw in (
                        ("default", {}),
                        ("t_min=t_lo", {"t_min": path.t_lo}),
                        ("t_max=t_hi", {"t_max": hi}),
                    ):
                        opts = dict(kw)
                        if "statistics" in spec.needs:
                            try:
                                opts["statistics"] = Statistics.trivial(
                                    path, (2,), t_start=kw.get("t_max"), t_end=kw.get("t_min"), n_grid=400
                                )
                            except ValueError:
                                pass
                        x = path.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=dtype)
                        steps_ = max(steps, spec.min_steps)
                        outcome, detail = classify(
                            lambda x=x, name=name, steps_=steps_, opts=opts, model=model: (
                                sample(model, x, solver=name, steps=steps_, **opts).x
                            ),
                            60,
                        )
                        rows.append(
                            {
                                "path": pname,
                                "solver": name,
                                "steps": steps_,
                                "dtype": str(dtype)[6:],
                                "where": where,
                                "outcome": outcome,
                                "detail": detail[:200],
                            }
                        )
                        bar.update()
    bar.close()
    return rows


def run_fuzz(cases: int, seed: int, ckpt: str | None, out_dir: str | None, progress: bool = True) -> dict:
    rng = random.Random(seed)
    kinds = ["sample", "inverse", "config"] + (["cli"] if ckpt else [])
    counts: dict[str, Counter] = {k: Counter() for k in kinds}
    failures = []
    for _ in tqdm(range(cases), desc="fuzz", disable=not progress):
        kind = rng.choice(kinds)
        sub = random.Random(rng.randrange(2**32))
        name, fn = (
            cli_case(sub, ckpt, out_dir)
            if kind == "cli"
            else {"sample": sample_case, "inverse": inverse_case, "config": config_case}[kind](sub)
        )
        outcome, detail = classify(fn)
        counts[kind][outcome] += 1
        if outcome in FAILURES:
            failures.append({"case": name, "outcome": outcome, "detail": detail[:300]})
    return {"counts": {k: dict(v) for k, v in counts.items()}, "failures": failures}


def _tiny_checkpoint(root) -> str:
    import yaml

    from diffusio.app.cli import main

    cfg = {
        "data": {"name": "toy", "dataset": "moons"},
        "path": {"name": "vp_linear"},
        "net": {"name": "mlp", "hidden": 16, "depth": 1, "time_dim": 8},
        "train": {"steps": 4, "batch_size": 16, "progress": False, "log_every": 2, "ckpt_every": 2},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", str(root / "tiny.yaml"), "--out", str(root / "run")]) == 0
    (root / "garbage.safetensors").write_bytes(b"\xff" * 64)
    return str(root / "run" / "model.safetensors")


def main(argv=None) -> int:
    import tempfile
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.common import results_dir, write_results

    ap = argparse.ArgumentParser(prog="diffusio bench fuzz", description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", default="5,10,50", help="numerics sweep step counts")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = results_dir(args.out)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _tiny_checkpoint(Path(tmp))
        fuzz = run_fuzz(args.cases, args.seed, ckpt, tmp)
    rows = numerics_sweep(tuple(int(s) for s in args.steps.split(",")))
    sweep = Counter(r["outcome"] for r in rows)
    payload = {"fuzz": fuzz, "numerics": {"counts": dict(sweep), "rows": rows}, "seconds": time.perf_counter() - t0}
    md = [
        "# Fuzzing the boundaries (issue 9)",
        "",
        f"`diffusio bench fuzz --cases {args.cases} --seed {args.seed}`",
        "",
    ]
    md += ["| target | ok | refused (clear error) | silent NaN | raw traceback | hang |", "|---|---|---|---|---|---|"]
    for k, c in fuzz["counts"].items():
        md.append(
            f"| {k} | {c.get('ok', 0)} | {c.get('refused', 0)} | {c.get('nan', 0)} | {c.get('raw', 0)} | "
            f"{c.get('hang', 0)} |"
        )
    md += [
        "",
        "## Numerics sweep",
        "",
        "Every registered solver x 7 built-in paths x steps "
        f"{args.steps} x float32/float64, at the defaults and at t_min = t_lo, t_max = t_hi:",
        "",
    ]
    md += [f"- {k}: {v}" for k, v in sorted(sweep.items())]
    if fuzz["failures"]:
        md += ["", "## Failures", ""] + [f"- {f['outcome']}: {f['case']} — {f['detail']}" for f in fuzz["failures"]]
    bad = [r for r in rows if r["outcome"] in FAILURES]
    if bad:
        md += ["", "## Numerics failures", ""] + [f"- {r}" for r in bad]
    refusals = Counter(r["detail"].split(";")[0][:90] for r in rows if r["outcome"] == "refused")
    md += ["", "## Refusals in the sweep (first clause, count)", ""] + [
        f"- {n} x {d}" for d, n in refusals.most_common(8)
    ]
    write_results(out, "fuzz", payload, "\n".join(md) + "\n")
    fig, ax = plt.subplots(figsize=(7, 3.2))
    kinds = list(fuzz["counts"])
    outcomes = ["ok", "refused", *FAILURES]
    bottom = [0] * len(kinds)
    for o in outcomes:
        vals = [fuzz["counts"][k].get(o, 0) for k in kinds]
        ax.bar(kinds, vals, bottom=bottom, label=o)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("cases")
    ax.set_title(f"fuzz: {args.cases} cases, failures {sum(len(fuzz['failures']) for _ in [0])}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fuzz.png", dpi=120)
    print("\n".join(md[:12]))
    return 0 if not fuzz["failures"] and not bad else 1


if __name__ == "__main__":
    raise SystemExit(main())
