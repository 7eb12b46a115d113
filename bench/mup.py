"""muP for the DiT: coordinate check, learning-rate transfer across widths, and DiT vs U-Net on digits.

1. Coordinate check (Yang et al. 2021; Zheng et al. 2025, Sec. 4): class-conditional eps-training on 8x8 digits at
   widths 32-256 (head dim 16, depth 2, patch 2), Adam at a fixed learning rate; mean |h| of the last block's output
   and of the network output after each of the first steps. Flat in width under muP, growing under the standard
   parametrization (SP: nn.Linear readout, plain AdamW).
2. Learning-rate transfer: held-out denoising loss after a short run for log2 lr in a grid at each width, SP and muP.
3. DiT (muP, learning rate taken from the transfer sweep's muP optimum) vs the bundled digits U-Net at a similar
   parameter count, same EDM recipe and training budget: Fréchet distance of the metric classifier's features.

Run from the repository root: ``diffusio bench mup [--sweep-steps 150 --train-steps 2000]`` -> bench/results/mup.*
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import results_dir, write_results
from diffusio.app.config import build_data
from diffusio.app.demo.toytrain import train
from diffusio.app.plotting import _plt
from diffusio.core.paths import EDM, LinearVP
from diffusio.data.digits import load_digits
from diffusio.metrics import digits_frechet_distance, get_digits_classifier
from diffusio.models.base import EDMPrecond, Model
from diffusio.nets import UNet
from diffusio.nets.dit import DiT
from diffusio.samplers import sample
from diffusio.training.losses import DiffusionLoss, EDMLogNormal, EDMWeight

WIDTHS = (32, 64, 128, 256)
LOG2_LRS = tuple(range(-12, -4))
COORD_LR = 2**-7
BASE = {"head_dim": 16, "depth": 2, "base_width": 32, "num_classes": 10}


def _digits():
    x, y = load_digits(8, "pad", "train")
    return x, y


def _heldout(path, n: int = 512):
    x, y = load_digits(8, "pad", "test")
    g = torch.Generator().manual_seed(11)
    idx = torch.randint(0, x.shape[0], (n,), generator=g)
    x0 = x[idx]
    t, noise = DiffusionLoss("eps").draw(x0, path, g)
    return x0, y[idx], t, noise


def _run(width: int, mup: bool, lr: float, steps: int, record: bool = False) -> tuple[float, list[tuple[float, float]]]:
    """Train ``steps`` Adam steps; (held-out loss, per-step (mean |last block|, mean |output|) if ``record``)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = DiT(width=width, mup=mup, **BASE)
    model, loss_fn = Model(net, LinearVP(), "eps"), DiffusionLoss("eps")
    opt = net.make_optimizer(lr=lr)
    x, y = _digits()
    g = torch.Generator().manual_seed(1)
    probe_x, probe_y, probe_t, _ = _heldout(model.path, 64)
    scales, trace = [], []
    hook = net.blocks[-1].register_forward_hook(lambda m, i, o: scales.append(float(o.detach().abs().mean())))
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (64,), generator=g)
        t, noise = loss_fn.draw(x[idx], model.path, g)
        loss = loss_fn(model, x[idx], t, noise, {"y": y[idx]}).mean()
        if not torch.isfinite(loss):
            hook.remove()
            return float("inf"), trace
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if record:
            with torch.no_grad():
                scales.clear()
                out = net(probe_x, probe_t.float(), probe_y)
            trace.append((scales[-1], float(out.abs().mean())))
    hook.remove()
    x0, yh, t, noise = _heldout(model.path)
    with torch.no_grad():
        held = float(loss_fn(model, x0, t, noise, {"y": yh}).mean())
    return held, trace


def coord_check(steps: int) -> dict:
    out = {}
    for mup in (False, True):
        out["mup" if mup else "sp"] = {w: _run(w, mup, COORD_LR, steps, record=True)[1] for w in WIDTHS}
    return out


def lr_sweep(steps: int, widths: tuple[int, ...]) -> dict:
    out = {}
    for mup in (False, True):
        key = "mup" if mup else "sp"
        out[key] = {}
        for w in widths:
            out[key][w] = {k: _run(w, mup, 2.0**k, steps)[0] for k in LOG2_LRS}
            print(key, w, out[key][w], flush=True)
    return out


def _best(losses: dict) -> int:
    return min(losses, key=lambda k: losses[k])


def quality(steps: int, dit_lr: float, n: int = 1000) -> dict:
    data = build_data({"name": "digits", "size": 8, "mode": "pad", "split": "train"})
    loss = DiffusionLoss("x0", EDMLogNormal(), EDMWeight(0.6))
    nets = {
        "unet": (UNet(1, channels=(32, 64), num_res_blocks=1, time_dim=64, num_classes=10), 2e-3),
        "dit": (DiT(width=80, depth=4, head_dim=16, base_width=32, num_classes=10), dit_lr),
    }
    ref, _ = load_digits(8, "pad", "test")
    clf = get_digits_classifier(8, "pad")
    out = {}
    for name, (net, lr) in nets.items():
        model = Model(net, EDM(), "x0", EDMPrecond(0.6))
        model, secs = train(model, loss, data, steps, batch=128, lr=lr, cache=f"mup/{name}_{steps}_{lr:g}")
        labels = torch.arange(n) % 10
        t0 = time.perf_counter()
        res = sample(model, shape=(n, 1, 8, 8), solver="heun", steps=18, cond={"y": labels},
                     generator=torch.Generator().manual_seed(3))  # fmt: skip
        x = res.x.clamp(-1, 1)
        acc = float((clf(x).argmax(1) == labels).float().mean())
        out[name] = {"params": sum(p.numel() for p in net.parameters()), "lr": lr, "train_seconds": secs,
                     "sample_seconds": time.perf_counter() - t0, "frechet": digits_frechet_distance(x, ref, clf),
                     "label_accuracy": acc}  # fmt: skip
        print(name, out[name], flush=True)
    return out


def _plot(payload: dict, file) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, key in zip(axes[:2], ("sp", "mup")):
        cc = payload["coord_check"][key]
        steps = len(next(iter(cc.values())))
        for s in range(steps):
            ax.plot(WIDTHS, [cc[w][s][0] for w in WIDTHS], "o-", label=f"step {s + 1}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width")
        ax.set_title(f"coord check ({key.upper()}): mean |last block|")
        ax.legend(fontsize=7)
    for ax, key in zip(axes[2:], ("sp", "mup")):
        sw = payload["lr_sweep"][key]
        for w in sw:
            ks = list(sw[w])
            ax.plot(ks, [min(sw[w][k], 2.0) for k in ks], "o-", label=f"width {w}")
        ax.set_xlabel("log2 learning rate")
        ax.set_ylabel("held-out loss (clipped at 2)")
        ax.set_title(f"LR transfer ({key.upper()})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def _slope(values: list[float]) -> float:
    lw = torch.log2(torch.tensor(WIDTHS, dtype=torch.float64))
    lv = torch.log2(torch.tensor(values, dtype=torch.float64))
    a = torch.stack([lw, torch.ones_like(lw)], 1)
    return float(torch.linalg.lstsq(a, lv[:, None]).solution[0, 0])


def _markdown(p: dict) -> str:
    lines = ["# muP for the DiT (`diffusio bench mup`)", "",
             "DiT depth 2, head dim 16, patch 2, base width 32, class-conditional eps on LinearVP, 8x8 digits, "
             "batch 64.",
             "", f"## Coordinate check (Adam at lr 2^{int(torch.log2(torch.tensor(COORD_LR)))})", "",
             "Slope of log2 mean |activation| against log2 width (0 = flat), at each of the first steps:", "",
             "| parametrization | step | last block | output |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
    for key in ("sp", "mup"):
        cc = p["coord_check"][key]
        for s in range(len(cc[WIDTHS[0]])):
            lines.append(f"| {key.upper()} | {s + 1} | {_slope([cc[w][s][0] for w in WIDTHS]):+.2f} | "
                         f"{_slope([cc[w][s][1] for w in WIDTHS]):+.2f} |")  # fmt: skip
    lines += ["", f"## Learning-rate transfer ({p['sweep_steps']} steps per run; held-out denoising loss)", "",
              "| parametrization | " + " | ".join(f"width {w}" for w in p["sweep_widths"])
              + " | spread (grid points) |",
              "| --- |" + " ---: |" * (len(p["sweep_widths"]) + 1)]  # fmt: skip
    for key in ("sp", "mup"):
        best = [_best(p["lr_sweep"][key][w]) for w in p["sweep_widths"]]
        cells = [f"2^{b} ({p['lr_sweep'][key][w][b]:.4f})" for b, w in zip(best, p["sweep_widths"])]
        lines.append(f"| {key.upper()} best log2 lr (loss) | " + " | ".join(cells) + f" | {max(best) - min(best)} |")
    q = p["quality"]
    lines += ["", f"## DiT vs U-Net on 8x8 digits ({p['train_steps']} steps, batch 128, EDM recipe, Heun 18 steps, "
              "1000 class-conditional samples; Fréchet distance to the test split on the metric classifier's "
              "features)", "", "| net | parameters | lr | train s | Fréchet | classifier agrees with label |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name, r in q.items():
        lines.append(f"| {name} | {r['params']:,} | {r['lr']:.2g} | {r['train_seconds']:.0f} | {r['frechet']:.3f} | "
                     f"{r['label_accuracy']:.1%} |")  # fmt: skip
    ratio = q["dit"]["frechet"] / q["unet"]["frechet"]
    verdict = "DiT reaches" if ratio <= 1.1 else "DiT does not reach"
    lines += ["", f"DiT / U-Net Fréchet ratio: **{ratio:.2f}** ({verdict} the U-Net's quality within 10%)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="diffusio bench mup", description=__doc__.split("\n\n")[0])
    ap.add_argument("--coord-steps", type=int, default=5)
    ap.add_argument("--sweep-steps", type=int, default=150)
    ap.add_argument("--train-steps", type=int, default=2000)
    ap.add_argument("--sweep-widths", default="32,64,128,256", help="comma-separated widths of the LR sweep")
    ap.add_argument("--log2-lrs", default="-12,-5", help="lowest,highest log2 lr (step 1), e.g. --log2-lrs=-12,-5")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    global LOG2_LRS
    try:
        sweep_widths = tuple(int(w) for w in a.sweep_widths.split(","))
        lo, hi = (int(v) for v in a.log2_lrs.split(","))
    except ValueError:
        ap.error("--sweep-widths takes integers like 32,64,128 and --log2-lrs two integers like -12,-5")
    if lo > hi or any(w % BASE["head_dim"] for w in sweep_widths):
        ap.error(f"need --log2-lrs low <= high and widths that are multiples of {BASE['head_dim']}")
    LOG2_LRS = tuple(range(lo, hi + 1))
    for k in ("coord_steps", "sweep_steps", "train_steps"):
        if getattr(a, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1")
    payload = {"coord_steps": a.coord_steps, "sweep_steps": a.sweep_steps, "train_steps": a.train_steps,
               "coord_check": coord_check(a.coord_steps), "lr_sweep": lr_sweep(a.sweep_steps, sweep_widths),
               "sweep_widths": list(sweep_widths)}  # fmt: skip
    dit_lr = 2.0 ** _best(payload["lr_sweep"]["mup"][sweep_widths[0]])  # tuned at the base width, transferred
    payload["quality"] = quality(a.train_steps, dit_lr)
    out = results_dir(a.out)
    write_results(out, "mup", payload, _markdown(payload))
    _plot(payload, out / "mup.png")
    print(_markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
