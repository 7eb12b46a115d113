"""Int8 post-training quantization on CPU: speed, size and quality of real int8 kernels against float32, and the
calibration ablation (naive one-t vs uniform-over-steps vs PTQ4DM's normally distributed time steps).

Two models: a wide residual MLP (hidden 512, 4 blocks) trained briefly on flattened 8x8 digits, and the bundled
class-conditional digits U-Net (``configs/digits.yaml``, cached by ``bench.solvers``). For each: wall time of one
10-step DDIM sampling run at several batch sizes for fp32 eager, fp32 ``torch.compile``, int8 PT2E (X86 Inductor,
static activations calibrated with PTQ4DM) and, for the MLP, int8 torchao (dynamic activations); ratios against
fp32 eager and fp32 compiled; model size; eps relative MSE per t against fp32; Fréchet distance (digit-classifier
features) of 10-step samples. The ablation quantizes with each calibration at W8A8 and W4A8 and reports the eps
error averaged over t (reference int8 arithmetic, un-compiled: the same integers, without the kernel timing).

``python -m bench.quantize`` (or ``diffusio bench quantize``); ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch

from bench.common import results_dir, write_results
from diffusio.compress import calibration_set, quantize
from diffusio.core.paths import LinearVP
from diffusio.core.timesteps import get_timesteps
from diffusio.io import cache_dir, load_safetensors, save_safetensors
from diffusio.models import Model
from diffusio.nets import MLP, FlattenNet
from diffusio.samplers import sample

METHODS = ("naive", "uniform", "ptq4dm")


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


def _time_run(model, x, cond, steps: int, repeats: int) -> float:
    """Median wall time of one ``steps``-step DDIM run from ``x`` (after one warm-up run, which compiles)."""
    run = lambda: sample(model, x.clone(), solver="ddim", steps=steps, cond=cond)  # noqa: E731
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _eps_error(ref, model, data, cond_fn, n_t: int = 10) -> list[dict]:
    """Relative eps MSE ``mean (eps_q - eps)^2 / mean eps^2`` at ``n_t`` times, on noised data."""
    path, g = ref.path, torch.Generator().manual_seed(3)
    out = []
    ts = get_timesteps(path, n_t, "logsnr")[:-1]  # n_t times from t_max down, even in log-SNR
    for t in ts:
        x0 = data
        tt = t.expand(len(x0))
        xt = path.perturb(x0, torch.randn(x0.shape, generator=g), tt).float()
        with torch.no_grad():
            a = ref.eps(xt, tt.float(), **cond_fn(len(x0)))
            b = model.eps(xt, tt.float(), **cond_fn(len(x0)))
        out.append({"t": float(t), "rel_mse": float((a - b).square().mean() / a.square().mean())})
    return out


def _samples(model, n: int, batch: int, steps: int, cond_fn, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xs = []
    for _ in range(0, n, batch):
        x = model.path.prior_sample((batch, 1, 8, 8), generator=g)
        xs.append(sample(model, x, solver="ddim", steps=steps, cond=cond_fn(batch)).x)
    return torch.cat(xs)[:n].clamp(-1, 1)


def _size(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.net.parameters())


def run_model(name, model, data, cond_fn, args, clf) -> dict:
    from diffusio.metrics import digits_frechet_distance

    args = argparse.Namespace(**args) if isinstance(args, dict) else args
    shape = tuple(data.shape[1:])
    _log(f"{name}: calibrating (PTQ4DM, {args.calib} inputs) and quantizing")
    g = torch.Generator().manual_seed(0)
    calib = calibration_set(model, shape, args.calib, "ptq4dm", steps=args.steps, cond=cond_fn(args.calib), generator=g)
    variants = {"fp32 eager": model, "fp32 compiled": Model(torch.compile(copy.deepcopy(model.net)), model.path,
                                                             model.prediction, model.precond)}  # fmt: skip
    variants["int8 pt2e"] = quantize(model, calib, backend="pt2e", progress=False)
    if name == "mlp":
        variants["int8 torchao"] = quantize(model, calib, backend="torchao", progress=False)
    rows = []
    for b in args.batches:
        x = model.path.prior_sample((b, *shape), generator=torch.Generator().manual_seed(1))
        cond = cond_fn(b)
        row = {"batch": b}
        for vname, m in variants.items():
            _log(f"{name}: timing {vname} at batch {b}")
            row[vname] = _time_run(m, x, cond, args.steps, args.repeats)
        rows.append(row)
    sizes = {"fp32": _size(model), "int8 pt2e": variants["int8 pt2e"].size_bytes()}
    if "int8 torchao" in variants:
        sizes["int8 torchao"] = variants["int8 torchao"].size_bytes()
    _log(f"{name}: quality")
    quality = {v: _eps_error(model, variants[v], data[: args.n_eps], cond_fn) for v in variants if v.startswith("int8")}
    fd = {}
    ref_samples = data[: args.n_fd]
    fd_b = min(args.batches, key=lambda b: abs(b - 512))  # a batch size compiled during the timing
    for vname in ("fp32 eager", *[v for v in variants if v.startswith("int8")]):
        s = _samples(variants[vname], args.n_fd, fd_b, args.steps, cond_fn, seed=7)
        fd[vname] = digits_frechet_distance(s, ref_samples, clf)
    fd["fp32 eager, other seed"] = digits_frechet_distance(
        _samples(model, args.n_fd, fd_b, args.steps, cond_fn, seed=8), ref_samples, clf
    )
    _log(f"{name}: calibration ablation")
    ablation = []
    for wbits in (8, 4):
        for method in METHODS:
            c = calibration_set(model, shape, args.calib, method, steps=args.steps, cond=cond_fn(args.calib),
                                generator=torch.Generator().manual_seed(0))  # fmt: skip
            q = quantize(model, c, backend="pt2e", weight_bits=wbits, compile=False, progress=False)
            err = _eps_error(model, q, data[: args.n_eps], cond_fn)
            ablation.append({"weight_bits": wbits, "method": method, "mean_rel_mse": _mean(err), "per_t": err})
    return {"timing": rows, "sizes": sizes, "eps_error": quality, "frechet": fd, "ablation": ablation,
            "calibration_t_mean": float(calib.t.mean())}  # fmt: skip


def _mean(rows: list[dict]) -> float:
    return sum(r["rel_mse"] for r in rows) / len(rows)


def _markdown(res: dict, args) -> str:
    lines = [
        "# Int8 post-training quantization (CPU)",
        "",
        f"`diffusio bench quantize` — {args.steps}-step DDIM runs, {torch.get_num_threads()} thread(s), median of "
        f"{args.repeats} after a warm-up (compile) run. Ratios are fp32-eager time / variant time (> 1: faster).",
        "",
    ]
    for name, r in res["models"].items():
        variants = [k for k in r["timing"][0] if k != "batch"]
        lines += [f"## {name}", "", "| batch | " + " | ".join(f"{v} (s)" for v in variants) + " | "
                  + " | ".join(f"{v} vs eager" for v in variants[1:]) + " | int8 pt2e vs fp32 compiled |",
                  "|" + "---|" * (2 * len(variants) + 1)]  # fmt: skip
        for row in r["timing"]:
            e = row["fp32 eager"]
            ratios = " | ".join(f"{e / row[v]:.2f}x" for v in variants[1:])
            vs_c = row["fp32 compiled"] / row["int8 pt2e"]
            lines.append(f"| {row['batch']} | " + " | ".join(f"{row[v]:.3f}" for v in variants) + f" | {ratios} | "
                         f"{vs_c:.2f}x |")  # fmt: skip
        lines += ["", "Size: " + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in r["sizes"].items()), ""]
        lines += ["| variant | eps rel. MSE (mean over t) | max over t | Fréchet distance (10-step samples) |",
                  "|---|---|---|---|"]  # fmt: skip
        lines.append(f"| fp32 eager | 0 | 0 | {r['frechet']['fp32 eager']:.3f} |")
        for v, err in r["eps_error"].items():
            lines.append(f"| {v} | {_mean(err):.2e} | {max(e['rel_mse'] for e in err):.2e} | {r['frechet'][v]:.3f} |")
        lines += [f"| fp32, another sampling seed | | | {r['frechet']['fp32 eager, other seed']:.3f} |", ""]
        lines += ["Calibration ablation (PT2E static int8, eps rel. MSE averaged over t):", "",
                  "| weights | " + " | ".join(METHODS) + " |", "|---|---|---|---|"]  # fmt: skip
        for wb in (8, 4):
            vals = {a["method"]: a["mean_rel_mse"] for a in r["ablation"] if a["weight_bits"] == wb}
            lines.append(f"| W{wb}A8 | " + " | ".join(f"{vals[m]:.2e}" for m in METHODS) + " |")
        lines.append("")
    lines += ["## Verdict", "", *res["verdict"], ""]
    return "\n".join(lines)


def _verdict(res: dict) -> list[str]:
    out = []
    for name, r in res["models"].items():
        for row in r["timing"]:
            e, c = row["fp32 eager"], row["fp32 compiled"]
            for v in [k for k in row if k.startswith("int8")]:
                out.append(f"- {name}, batch {row['batch']}: {v} {e / row[v]:.2f}x fp32 eager, {c / row[v]:.2f}x fp32 "
                           f"compiled" + (" (int8 slower than fp32 eager)" if row[v] > e else ""))  # fmt: skip
        fd0 = r["frechet"]["fp32 eager"]
        for v in r["eps_error"]:
            out.append(f"- {name}: {v} Fréchet distance {r['frechet'][v]:.3f} vs fp32 {fd0:.3f} "
                       f"({100 * (r['frechet'][v] / fd0 - 1):+.1f}%)")  # fmt: skip
        for wb in (8, 4):
            vals = {a["method"]: a["mean_rel_mse"] for a in r["ablation"] if a["weight_bits"] == wb}
            best = min(vals, key=vals.get)
            out.append(f"- {name}, W{wb}A8: lowest eps error with {best} calibration")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench quantize", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 4096], help="MLP batch sizes")
    p.add_argument("--unet-batches", type=int, nargs="+", default=[64, 1024])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--n-eps", type=int, default=512)
    p.add_argument("--n-fd", type=int, default=1024)
    p.add_argument("--models", nargs="+", default=["mlp", "unet"], choices=["mlp", "unet"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.unet_batches, args.repeats, args.calib, args.n_eps, args.n_fd = [64], [64], 1, 64, 64, 128
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from diffusio.data.digits import load_digits
    from diffusio.metrics import get_digits_classifier

    clf = get_digits_classifier()
    x, _ = load_digits(8, "pad", "all")  # FD reference; the eps errors use its first n_eps images
    res = {"models": {}, "args": vars(args)}
    if "mlp" in args.models:
        res["models"]["mlp"] = run_model("mlp", mlp_model(), x, lambda n: {}, args, clf)
    if "unet" in args.models:
        labels = lambda n: {"y": torch.arange(n) % 10}  # noqa: E731
        unet_args = {**vars(args), "batches": args.unet_batches}
        res["models"]["unet"] = run_model("unet", unet_model(), x, labels, unet_args, clf)
    res["verdict"] = _verdict(res)
    out = results_dir(args.out)
    write_results(out, "quantize", res, _markdown(res, args))
    _plot(res, out / "quantize.png")
    print(_markdown(res, args))
    return 0


def _plot(res: dict, file) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 * len(res["models"]), figsize=(6 * len(res["models"]) * 2, 4))
    for i, (name, r) in enumerate(res["models"].items()):
        ax = axes[2 * i]
        bs = [row["batch"] for row in r["timing"]]
        for v in [k for k in r["timing"][0] if k != "batch"]:
            ax.plot(bs, [row["fp32 eager"] / row[v] for row in r["timing"]], "o-", label=v)
        ax.set(xscale="log", xlabel="batch", ylabel="speed-up vs fp32 eager", title=f"{name}: sampling run")
        ax.axhline(1, color="gray", lw=0.5)
        ax.legend(fontsize=8)
        ax = axes[2 * i + 1]
        for v, err in r["eps_error"].items():
            ax.plot([e["t"] for e in err], [e["rel_mse"] for e in err], "o-", label=v)
        for a in r["ablation"]:
            if a["weight_bits"] == 8:
                ax.plot(
                    [e["t"] for e in a["per_t"]], [e["rel_mse"] for e in a["per_t"]], "--", label=f"W8A8 {a['method']}"
                )
        ax.set(yscale="log", xlabel="t", ylabel="eps rel. MSE vs fp32", title=f"{name}: error per t")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
