"""Int8 post-training quantization on CPU: speed, size and quality of real int8 kernels against float32, per-layer
sensitivity (which layers to keep float32), and the calibration ablation (naive one-t vs noised training data vs
uniform-over-steps vs PTQ4DM's normally distributed time steps).

Two models: a wide residual MLP (hidden 512, 4 blocks) trained briefly on flattened 8x8 digits, and the bundled
class-conditional digits U-Net (``configs/digits.yaml``, cached by ``bench.solvers``). For each: the per-layer
sensitivity and the layers it keeps float32 (``choose_keep_float``); wall time of one 10-step DDIM sampling run at
batch sizes 64-4096 for fp32 eager, fp32 ``torch.compile``, int8 PT2E (X86 Inductor, static activations calibrated
with PTQ4DM, those layers float32) and, for the MLP, int8 torchao (dynamic activations); ratios against fp32 eager
and fp32 compiled, with the machine load per row; model size; eps relative MSE per t against fp32; Fréchet distance
(digit-classifier features) of 10-step samples; observer and weight-scale settings. The ablation quantizes with
each calibration set (same size, quantizer and seeds) at ``--bits`` over ``--seeds`` seeds (reference int8
arithmetic, un-compiled: the same integers, without the kernel timing).

``python -m bench.quantize`` (or ``diffusio bench quantize``); ``--quick`` for a smoke run; ``--parts`` and
``--merge`` to run the parts apart on a loaded machine.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings

import torch

from bench.common import results_dir, write_results
from diffusio.compress import CalibrationSet, calibration_set, choose_keep_float, quantize
from diffusio.core.paths import LinearVP
from diffusio.core.timesteps import get_timesteps
from diffusio.io import cache_dir, load_safetensors, save_safetensors
from diffusio.models import Model
from diffusio.nets import MLP, FlattenNet
from diffusio.samplers import sample

METHODS = ("naive", "data", "uniform", "ptq4dm")
ABLATION_BITS = ("W8A8", "W4A8", "W8A6")  # the default of --bits: weight and activation bits


def _log(msg: str) -> None:
    print(f"[quantize] {msg}", flush=True)


def mlp_model(steps: int = 600) -> Model:
    """A 512-wide, 4-block residual MLP eps-model on flattened digits (VP path), trained once and cached."""
    from diffusio.data.digits import load_digits
    from diffusio.training.losses import DiffusionLoss

    torch.manual_seed(0)
    net = FlattenNet(MLP(64, hidden=512, depth=4, time_dim=64), (1, 8, 8))
    model = Model(net, LinearVP(), "eps")
    f = cache_dir("bench", "quantize") / f"mlp512_{steps}.safetensors"
    if f.is_file():
        net.load_state_dict(load_safetensors(f)[0])
        return model.eval()
    _log(f"training the wide MLP ({steps} steps, once; cached in {f.parent})")
    x, _ = load_digits(8, "pad", "train")
    loss_fn, g = DiffusionLoss("eps"), torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for _ in range(steps):
        x0 = x[torch.randint(len(x), (256,), generator=g)]
        t, noise = loss_fn.draw(x0, model.path, g)
        loss = loss_fn(model, x0, t, noise, {}).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_safetensors(net.state_dict(), f, {"steps": steps})
    return model.eval()


def unet_model():
    """The bundled class-conditional digits U-Net (EDM), trained once by ``bench.solvers.digits_model``."""
    from bench.solvers import digits_model

    return digits_model(progress=_log)[0]


def _time_run(model, x, cond, steps: int, repeats: int, warm: bool) -> float:
    """Median wall time of one ``steps``-step DDIM run from ``x`` (after one warm-up run if ``warm``: compiled
    variants compile there, once per batch size)."""
    run = lambda: sample(model, x.clone(), solver="ddim", steps=steps, cond=cond)  # noqa: E731
    if warm:
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def noised_inputs(path, data, cond_fn, n_t: int = 10, seed: int = 3) -> CalibrationSet:
    """The eps-error inputs: every image of ``data`` noised by the path at ``n_t`` times even in log-SNR from
    ``t_max`` down (the smallest-noise time included), one fixed noise draw."""
    g = torch.Generator().manual_seed(seed)
    ts = get_timesteps(path, n_t, "logsnr")[:-1]
    xs, tt = [], []
    for t in ts:
        t_b = t.expand(len(data)).double()
        xs.append(path.perturb(data.double(), torch.randn(data.shape, generator=g, dtype=torch.float64), t_b).float())
        tt.append(t_b)
    cond = {k: v.repeat(len(ts)) for k, v in cond_fn(len(data)).items()}
    return CalibrationSet(torch.cat(xs), torch.cat(tt), cond, "eval")


def _per_t(err: dict) -> list[dict]:
    return [{"t": t, "rel_mse": e} for t, e in err.items()]


def _mean(rows: list[dict]) -> float:
    return sum(r["rel_mse"] for r in rows) / len(rows)


def _max(rows: list[dict]) -> float:
    return max(r["rel_mse"] for r in rows)


def _samples(model, x_T, cond, steps: int, batch: int) -> torch.Tensor:
    """Deterministic ``steps``-step DDIM samples from the fixed prior draws ``x_T`` (so variants can be compared
    sample by sample), in chunks of ``batch``."""
    xs = [
        sample(
            model,
            x_T[i : i + batch].clone(),
            solver="ddim",
            steps=steps,
            cond={k: v[i : i + batch] for k, v in cond.items()},
        ).x
        for i in range(0, len(x_T), batch)
    ]
    return torch.cat(xs).clamp(-1, 1)


def _size(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.net.parameters())


def load_load() -> str:
    """The machine's 1/5/15-minute load averages (the timings are taken on a shared machine)."""
    return "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg()) + f" on {os.cpu_count()} cores"


def run_model(name, model, data, train, test, cond_fn, args, clf) -> dict:
    """The measurements of one model; ``args.parts`` picks ``main`` (sensitivity, speed, quality, settings) and/or
    ``ablation`` (the calibration study; it needs the kept layers, from this run's sensitivity or ``--keep-float``)."""
    from diffusio.compress import layer_sensitivity

    args = argparse.Namespace(**args) if isinstance(args, dict) else args
    shape = tuple(data.shape[1:])
    res = {"load_start": load_load()}
    _log(f"{name}: calibrating (PTQ4DM, {args.calib} inputs); {res['load_start']}")
    g = torch.Generator().manual_seed(0)
    calib = calibration_set(model, shape, args.calib, "ptq4dm", steps=args.steps, cond=cond_fn(args.calib), generator=g)
    res["calibration_t_mean"] = float(calib.t.mean())
    evals = noised_inputs(model.path, test[: args.n_eps], cond_fn)
    keep: list[str] = list(args.keep_float or [])
    if name in args.sensitivity and not keep:
        _log(f"{name}: per-layer sensitivity (each layer alone in int8)")
        sens_in = noised_inputs(model.path, test[: args.n_sens], cond_fn)
        sens = layer_sensitivity(model, calib, sens_in, progress=False)
        keep = choose_keep_float(sens, args.budget)
        res["sensitivity"] = {k: _per_t(v) for k, v in sens.items()}
        _log(f"{name}: keep float32: {keep}")
    res["keep_float"] = keep
    x_T = model.path.prior_sample((args.n_fd, *shape), generator=torch.Generator().manual_seed(7))
    cond = cond_fn(args.n_fd)
    fd_b = min(args.batches, key=lambda b: abs(b - 512))  # a batch size compiled during the timing
    ref_samples = _samples(model, x_T, cond, args.steps, fd_b)
    if "main" in args.parts:
        res.update(_main_part(name, model, data, calib, evals, keep, x_T, cond, fd_b, ref_samples, cond_fn, args, clf))
    if name in args.ablation and "ablation" in args.parts:
        k = args.n_ablation
        res["ablation"] = ablation(
            model,
            data,
            train,
            test,
            cond_fn,
            keep,
            ref_samples[:k],
            x_T[:k],
            {c: v[:k] for c, v in cond.items()},
            args,
            clf,
        )
    res["load_end"] = load_load()
    return res


def _main_part(name, model, data, calib, evals, keep, x_T, cond, fd_b, ref_samples, cond_fn, args, clf) -> dict:
    from diffusio.compress import eps_error_per_t
    from diffusio.metrics import digits_frechet_distance

    shape = tuple(data.shape[1:])
    res = {}
    variants = {
        "fp32 eager": model,
        "fp32 compiled": Model(torch.compile(copy.deepcopy(model.net)), model.path, model.prediction, model.precond),
        "int8 pt2e": quantize(model, calib, backend="pt2e", keep_float=keep, progress=False),
    }
    if name == "mlp":
        variants["int8 torchao"] = quantize(model, calib, backend="torchao", progress=False)
    int8 = [v for v in variants if v.startswith("int8")]
    _log(f"{name}: quality")
    res["eps_error"] = {v: _per_t(eps_error_per_t(model, variants[v], evals)) for v in int8}
    res["settings"] = []
    for obs, gran, kf in (
        ("histogram", "per_channel", ()),
        ("histogram", "per_channel", tuple(keep)),
        ("minmax", "per_channel", tuple(keep)),
        ("histogram", "per_tensor", tuple(keep)),
    ):
        q = quantize(
            model, calib, backend="pt2e", keep_float=kf, observer=obs, granularity=gran, compile=False, progress=False
        )
        err = _per_t(eps_error_per_t(model, q, evals))
        res["settings"].append({"observer": obs, "granularity": gran, "keep_float": list(kf), "per_t": err})
    res["frechet"] = {"fp32 eager": digits_frechet_distance(ref_samples, data, clf)}
    res["sample_dev"] = {}
    res["timing"] = []
    for b in args.batches:
        x = model.path.prior_sample((b, *shape), generator=torch.Generator().manual_seed(1))
        row = {"batch": b}
        reps = args.repeats if b <= 1024 else 1
        for vname, m in variants.items():
            _log(f"{name}: timing {vname} at batch {b}")
            row[vname] = _time_run(m, x, cond_fn(b), args.steps, reps, warm=vname != "fp32 eager")
        row["load"] = load_load()
        res["timing"].append(row)
        if b == fd_b:  # the compiled int8 graphs for this batch exist now: the sample quality of the real kernels
            for v in int8:
                s = _samples(variants[v], x_T, cond, args.steps, fd_b)
                res["frechet"][v] = digits_frechet_distance(s, data, clf)
                res["sample_dev"][v] = float((s - ref_samples).square().mean() / ref_samples.square().mean())
    other = model.path.prior_sample(x_T.shape, generator=torch.Generator().manual_seed(8))
    res["frechet"]["fp32 eager, other seed"] = digits_frechet_distance(
        _samples(model, other, cond, args.steps, fd_b), data, clf
    )
    res["sizes"] = {"fp32": _size(model), **{v: variants[v].size_bytes() for v in int8}}
    return res


def ablation(model, data, train, test, cond_fn, keep, ref_samples, x_T, cond, args, clf) -> list[dict]:
    """PTQ4DM's claim: the four calibration sets (same size, same quantizer, same keep_float, same seeds; only the
    set differs) at several bit widths, a few seeds each. Errors: eps rel. MSE on noised held-out images (mean
    over t), eps rel. MSE on the float sampler's own states (mean over steps), final-sample deviation from fp32
    from the same noise, Fréchet distance."""
    from diffusio.compress import eps_error_per_t
    from diffusio.metrics import digits_frechet_distance

    shape = tuple(data.shape[1:])
    evals = noised_inputs(model.path, test[: args.n_ablation], cond_fn)
    traj = calibration_set(
        model,
        shape,
        50 * args.steps,
        "uniform",
        steps=args.steps,
        cond=cond_fn(50 * args.steps),
        generator=torch.Generator().manual_seed(99),
    )
    rows = []
    for seed in range(args.seeds):
        sets = {
            m: calibration_set(
                model,
                shape,
                args.calib,
                m,
                steps=args.steps,
                cond=cond_fn(args.calib),
                data=data,
                generator=torch.Generator().manual_seed(100 + seed),
            )
            for m in METHODS
        }
        for wb, ab in map(_wa, args.bits):
            for m, c in sets.items():
                _log(f"ablation: seed {seed}, W{wb}A{ab}, {m}")
                q = quantize(
                    model, c, backend="pt2e", bits=ab, weight_bits=wb, keep_float=keep, compile=False, progress=False
                )
                s = _samples(q, x_T, cond, args.steps, 512)
                rows.append(
                    {
                        "seed": seed,
                        "weight_bits": wb,
                        "act_bits": ab,
                        "method": m,
                        "eps_noised": _mean(_per_t(eps_error_per_t(model, q, evals))),
                        "eps_trajectory": _mean(_per_t(eps_error_per_t(model, q, traj))),
                        "sample_dev": float((s - ref_samples).square().mean() / ref_samples.square().mean()),
                        "frechet": digits_frechet_distance(s, data, clf),
                    }
                )
    return rows


ABLATION_METRICS = ("eps_noised", "eps_trajectory", "sample_dev", "frechet")


def ablation_summary(rows: list[dict]) -> dict:
    """Mean and standard deviation over seeds of each metric, by ``(bits, method)``; and how often (over seeds)
    PTQ4DM's set beats each other set on each metric."""
    out = {}
    for wb, ab in sorted({(r["weight_bits"], r["act_bits"]) for r in rows}, key=lambda wa: (-wa[0], -wa[1])):
        key = f"W{wb}A{ab}"
        sub = [r for r in rows if r["weight_bits"] == wb and r["act_bits"] == ab]
        if not sub:
            continue
        out[key] = {}
        for m in METHODS:
            vals = {k: torch.tensor([r[k] for r in sub if r["method"] == m]) for k in ABLATION_METRICS}
            out[key][m] = {k: [float(v.mean()), float(v.std()) if len(v) > 1 else 0.0] for k, v in vals.items()}
        seeds = sorted({r["seed"] for r in sub})
        wins = {}
        val = {(r["method"], r["seed"], k): r[k] for r in sub for k in ABLATION_METRICS}
        for other in METHODS[:-1]:
            for k in ABLATION_METRICS:
                wins[f"{other}/{k}"] = sum(val["ptq4dm", s, k] < val[other, s, k] for s in seeds) / len(seeds)
        out[key]["ptq4dm_wins"] = wins
    return out


def _wa(spec: str) -> tuple[int, int]:
    """``"W8A6"`` -> ``(8, 6)``."""
    import re

    m = re.fullmatch(r"W([2-8])A([2-8])", spec)
    if not m:
        raise ValueError(f"bit widths look like W8A8 or W4A8 (2-8 each); got {spec!r}")
    return int(m[1]), int(m[2])


def _pm(v: list[float], plain: bool) -> str:
    return f"{v[0]:.2f} ± {v[1]:.2f}" if plain else f"{v[0]:.2e} ± {v[1]:.1e}"


def _ablation_md(r: dict, args) -> list[str]:
    if not r.get("ablation"):
        return []
    lines = []
    if r.get("ablation"):
        summ = ablation_summary(r["ablation"])
        n_seeds = len({a["seed"] for a in r["ablation"]})
        lines += [
            f"Calibration ablation (PT2E, keep float as above; {args.calib} inputs per set, mean ± std "
            f"over {n_seeds} seeds; lower is better). naive = prior noise at t_max only; data = training "
            "images noised at uniform grid times; uniform = the fp32 sampler's states, every step equally; "
            "ptq4dm = the fp32 sampler's states at NDTC steps (mu = sigma = 0.4, low-noise end). Samples: the "
            f"first {args.n_ablation} of the fp32 noise draws (so the Fréchet distances are of "
            f"{args.n_ablation} samples: comparable across rows, not with the table above).",
            "",
            "| bits | calibration | eps rel. MSE, noised data | eps rel. MSE, sampler states | "
            "sample deviation | Fréchet distance |",
            "|---|---|---|---|---|---|",
        ]
        for key, d in summ.items():
            for m in METHODS:
                lines.append(
                    f"| {key} | {m} | " + " | ".join(_pm(d[m][k], k == "frechet") for k in ABLATION_METRICS) + " |"
                )
        lines.append("")
    return lines


def _markdown(res: dict, args) -> str:
    lines = [
        "# Int8 post-training quantization (CPU)",
        "",
        f"`diffusio bench quantize` — {args.steps}-step DDIM runs, {args.threads} thread(s); wall time of one whole "
        f"sampling run, median of {args.repeats} after a warm-up (compile) run (one run above batch 1024; eager "
        "variants are not warmed per batch). Ratios are fp32-eager time / variant time (> 1: faster). The machine "
        "is shared (2 cores, several jobs): the load is listed per row; ratios within a row are what count.",
        "",
        "eps rel. MSE = `sum (eps_int8 - eps_fp32)^2 / sum eps_fp32^2` per t, on held-out digits noised at 10 times "
        "even in log-SNR (t_max down to the smallest-noise time); the 'mean' is over those 10 times, 'max' the worst "
        "t. Sample deviation = the same ratio on the final 10-step samples drawn from the same noise as fp32.",
        "",
    ]
    for name, r in res["models"].items():
        if "timing" not in r:  # an ablation-only part: its section is the ablation table
            lines += [f"## {name}", "", "(speed and quality not measured in this run)", ""]
            lines += _ablation_md(r, args)
            continue
        variants = [k for k in r["timing"][0] if k not in ("batch", "load")]
        int8 = [v for v in variants if v.startswith("int8")]
        lines += [f"## {name}", "", f"Load at start: {r['load_start']}; at end: {r['load_end']}.", ""]
        if r.get("keep_float"):
            why = (
                f"chosen by `choose_keep_float` from the per-layer sensitivity below, budget {args.budget:g}"
                if r.get("sensitivity")
                else "given with --keep-float"
            )
            lines += [f"Kept in float32 (every other conv/linear int8): `{', '.join(r['keep_float'])}` ({why}).", ""]
        lines += [
            "| batch | "
            + " | ".join(f"{v} (s)" for v in variants)
            + " | "
            + " | ".join(f"{v} vs eager" for v in variants[1:])
            + " | "
            + " | ".join(f"{v} vs fp32 compiled" for v in int8)
            + " | load |",
            "|" + "---|" * (len(variants) + len(variants) - 1 + len(int8) + 2),
        ]
        for row in r["timing"]:
            e, c = row["fp32 eager"], row["fp32 compiled"]
            lines.append(
                f"| {row['batch']} | "
                + " | ".join(f"{row[v]:.3f}" for v in variants)
                + " | "
                + " | ".join(f"{e / row[v]:.2f}x" for v in variants[1:])
                + " | "
                + " | ".join(f"{c / row[v]:.2f}x" for v in int8)
                + " | "
                + row["load"].split(" on")[0].removeprefix("load average ")
                + " |"
            )
        lines += ["", "Size: " + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in r["sizes"].items()), ""]
        lines += [
            "| variant | eps rel. MSE (mean over t) | max over t | at the smallest t | sample deviation | "
            "Fréchet distance (10-step samples) |",
            "|---|---|---|---|---|---|",
            f"| fp32 eager | 0 | 0 | 0 | 0 | {r['frechet']['fp32 eager']:.3f} |",
        ]
        for v, err in r["eps_error"].items():
            lines.append(
                f"| {v} | {_mean(err):.2e} | {_max(err):.2e} | {err[-1]['rel_mse']:.2e} | "
                f"{r['sample_dev'].get(v, float('nan')):.2e} | "
                f"{r['frechet'].get(v, float('nan')):.3f} |"
            )
        lines += [f"| fp32, another sampling seed | | | | | {r['frechet']['fp32 eager, other seed']:.3f} |", ""]
        if r.get("sensitivity"):
            sens = sorted(r["sensitivity"].items(), key=lambda kv: -_max(kv[1]))
            lines += [
                "Per-layer sensitivity (only that layer int8; eps rel. MSE):",
                "",
                "| layer | mean over t | max over t | at the smallest t |",
                "|---|---|---|---|",
            ]
            lines += [f"| {n} | {_mean(e):.2e} | {_max(e):.2e} | {e[-1]['rel_mse']:.2e} |" for n, e in sens[:12]]
            lines += (
                [f"| ({len(sens) - 12} more layers, each below {_max(sens[12][1]):.1e}) | | | |"]
                if len(sens) > 12
                else []
            )
            lines.append("")
        if r.get("settings"):
            lines += [
                "Quantizer settings (PTQ4DM calibration, reference int8 arithmetic):",
                "",
                "| activation observer | weight scales | keep float | eps mean | eps max |",
                "|---|---|---|---|---|",
            ]
            for st in r["settings"]:
                kf = ", ".join(st["keep_float"]) or "none"
                lines.append(
                    f"| {st['observer']} | {st['granularity']} symmetric | {kf} | {_mean(st['per_t']):.2e} | "
                    f"{_max(st['per_t']):.2e} |"
                )
            lines.append("")
        lines += _ablation_md(r, args)
    lines += ["## Verdict", "", *res["verdict"], ""]
    return "\n".join(lines)


def _verdict(res: dict) -> list[str]:
    out = []
    for name, r in res["models"].items():
        for row in r.get("timing", []):
            e, c = row["fp32 eager"], row["fp32 compiled"]
            for v in [k for k in row if k.startswith("int8")]:
                slow = " (int8 SLOWER than fp32 eager)" if row[v] > e else ""
                slow += " (int8 SLOWER than fp32 compiled)" if row[v] > c else ""
                out.append(
                    f"- {name}, batch {row['batch']}: {v} {e / row[v]:.2f}x fp32 eager, {c / row[v]:.2f}x "
                    f"fp32 compiled{slow}"
                )
        fd0 = r.get("frechet", {}).get("fp32 eager", float("nan"))
        for v, err in r.get("eps_error", {}).items():
            ok = "meets" if _mean(err) <= 0.05 else "MISSES"
            out.append(
                f"- {name}: {v} eps rel. MSE mean {_mean(err):.2e} (max {_max(err):.2e}), {ok} the 5% target "
                f"on the mean; Fréchet {r['frechet'].get(v, float('nan')):.3f} vs fp32 {fd0:.3f}"
            )
        if r.get("ablation"):
            for key, d in ablation_summary(r["ablation"]).items():
                best = {k: min(METHODS, key=lambda m: d[m][k][0]) for k in ABLATION_METRICS}
                out.append(
                    f"- {name}, {key}: lowest mean "
                    + ", ".join(f"{k}: {m}" for k, m in best.items())
                    + "; ptq4dm wins per seed "
                    + ", ".join(f"{k} {v:.0%}" for k, v in d["ptq4dm_wins"].items())
                )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench quantize", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024, 4096], help="MLP batch sizes")
    p.add_argument("--unet-batches", type=int, nargs="+", default=[64, 256, 1024, 4096])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--n-eps", type=int, default=512, help="held-out images for the eps error (x 10 times)")
    p.add_argument("--n-fd", type=int, default=1024)
    p.add_argument("--models", nargs="+", default=["mlp", "unet"], choices=["mlp", "unet"])
    p.add_argument("--parts", nargs="+", default=["main", "ablation"], choices=["main", "ablation"])
    p.add_argument(
        "--sensitivity",
        nargs="*",
        default=["mlp", "unet"],
        choices=["mlp", "unet"],
        help="models whose per-layer sensitivity picks the layers kept in float32",
    )
    p.add_argument("--keep-float", nargs="*", default=None, help="layers kept float32 (skips the sensitivity)")
    p.add_argument("--n-sens", type=int, default=128, help="held-out images for the sensitivity (x 10 times)")
    p.add_argument("--budget", type=float, default=0.02, help="summed worst-t eps error left to the int8 layers")
    p.add_argument("--ablation", nargs="*", default=["unet"], choices=["mlp", "unet"])
    p.add_argument("--bits", nargs="+", default=list(ABLATION_BITS), help="ablation bit widths, e.g. W8A8 W8A6")
    p.add_argument("--seeds", type=int, default=3, help="calibration seeds in the ablation")
    p.add_argument(
        "--n-ablation", type=int, default=256, help="samples per ablation variant (the first of the FD noise)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="quantize", help="result file name (partial runs are merged with --merge)")
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="merge the per-model results of partial runs (e.g. main and ablation run apart)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    args = p.parse_args(argv)
    if args.budget <= 0 or args.seeds < 1 or args.n_ablation < 2:
        p.error("--budget must be > 0, --seeds >= 1, --n-ablation >= 2")
    out = results_dir(args.out)
    if args.merge:
        res = _merged(args.merge)
        args = argparse.Namespace(**{**vars(args), **res["args"]})
    else:
        res = _run(args)
    write_results(out, args.name, res, "")  # the measurements first: a report bug cannot lose a long run
    res["verdict"] = _verdict(res)
    write_results(out, args.name, res, _markdown(res, args))
    _plot(res, out / f"{args.name}.png")
    print(_markdown(res, args))
    return 0


def _merged(files: list[str]) -> dict:
    import json

    res = {"models": {}, "args": {}, "parts": []}
    for f in files:
        with open(f) as fh:
            part = json.load(fh)
        res["args"].update({k: v for k, v in part["args"].items() if k not in ("merge", "name", "out")})
        res["parts"].append({"file": os.path.basename(f), "args": part["args"]})
        for name, r in part["models"].items():
            res["models"].setdefault(name, {}).update(r)
    return res


def _run(args) -> dict:
    if args.quick:
        args.batches, args.unet_batches, args.repeats, args.calib, args.n_eps, args.n_fd = [64], [64], 1, 64, 64, 128
        args.seeds, args.ablation, args.sensitivity = 1, [], []
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from diffusio.data.digits import load_digits
    from diffusio.metrics import get_digits_classifier

    clf = get_digits_classifier()
    x, _ = load_digits(8, "pad", "all")  # the Fréchet reference
    train, _ = load_digits(8, "pad", "train")  # the 'data' calibration draws from it
    test, _ = load_digits(8, "pad", "test")  # the eps errors use its first n_eps images
    res = {"models": {}, "args": vars(args)}
    if "mlp" in args.models:
        res["models"]["mlp"] = run_model("mlp", mlp_model(), x, train, test, lambda n: {}, args, clf)
    if "unet" in args.models:
        labels = lambda n: {"y": torch.arange(n) % 10}  # noqa: E731
        unet_args = {**vars(args), "batches": args.unet_batches}
        res["models"]["unet"] = run_model("unet", unet_model(), x, train, test, labels, unet_args, clf)
    return res


def _plot(res: dict, file) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (n, k)
        for n, r in res["models"].items()
        for k in ("speed", "eps", "ablation")
        if (k == "ablation" and r.get("ablation")) or (k != "ablation" and "timing" in r)
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (name, kind) in zip(axes[0], panels):
        r = res["models"][name]
        if kind == "speed":
            bs = [row["batch"] for row in r["timing"]]
            for v in [k for k in r["timing"][0] if k not in ("batch", "load")]:
                ax.plot(bs, [row["fp32 eager"] / row[v] for row in r["timing"]], "o-", label=v)
            ax.set(xscale="log", xlabel="batch", ylabel="speed-up vs fp32 eager", title=f"{name}: one sampling run")
            ax.axhline(1, color="gray", lw=0.5)
            ax.axhline(2, color="gray", lw=0.5, ls=":")
        elif kind == "eps":
            for v, err in r["eps_error"].items():
                ax.plot([e["t"] for e in err], [e["rel_mse"] for e in err], "o-", label=v)
            ax.axhline(0.05, color="gray", lw=0.5, ls=":")
            ax.set(
                xscale="log",
                yscale="log",
                xlabel="t (sigma)" if name == "unet" else "t",
                ylabel="eps rel. MSE vs fp32",
                title=f"{name}: error per t",
            )
        else:
            summ = ablation_summary(r["ablation"])
            keys = list(summ)
            w = 0.8 / len(METHODS)
            for j, m in enumerate(METHODS):
                ys = [summ[k][m]["sample_dev"][0] for k in keys]
                es = [summ[k][m]["sample_dev"][1] for k in keys]
                ax.bar([i + j * w for i in range(len(keys))], ys, w, yerr=es, label=m)
            ax.set_xticks([i + 0.4 - w / 2 for i in range(len(keys))], keys)
            ax.set(yscale="log", ylabel="sample deviation from fp32", title=f"{name}: calibration ablation")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
