"""muP for the DiT and the MLP: coordinate check, learning-rate transfer across widths, and DiT vs U-Net on digits.

1. Coordinate check (Yang et al. 2021; Zheng et al. 2025, Sec. 4): eps-training on LinearVP at widths 32-256 with
   Adam at a fixed learning rate; mean |h| of the last block's output and of the network output after each of the
   first steps. Flat in width under muP, growing under the standard parametrization (SP: nn.Linear readout, plain
   AdamW). DiT: class-conditional 8x8 digits (head dim 16, depth 2, patch 2, batch 64); MLP: moons (depth 3,
   batch 256). Base width 32 for both.
2. Learning-rate transfer: held-out denoising loss after a short run for log2 lr in a grid at each width, SP and muP.
3. DiT (muP) vs the bundled digits U-Net at a similar parameter count, same EDM recipe, batch, EMA, warm-up and step
   count; the DiT at the U-Net's learning rate (2e-3 ~ 2^-9) and at the higher ones muP's sweep prefers:
   Fréchet distance of the metric classifier's features.

Run from the repository root: ``diffusio bench mup [--sweep-steps 60 --jobs 3]`` -> bench/results/mup.*
"""

from __future__ import annotations

import argparse
import time

import torch
from tqdm import tqdm

from bench.common import results_dir, write_results
from diffusio.app.config import build_data
from diffusio.app.demo.toytrain import train
from diffusio.app.plotting import _plt
from diffusio.core.paths import EDM, LinearVP
from diffusio.data.digits import load_digits
from diffusio.data.toy import sample_toy
from diffusio.metrics import digits_frechet_distance, get_digits_classifier
from diffusio.models.base import EDMPrecond, Model
from diffusio.nets import MLP, UNet
from diffusio.nets.dit import DiT
from diffusio.samplers import sample
from diffusio.training.losses import DiffusionLoss, EDMLogNormal, EDMWeight

WIDTHS = (32, 64, 128, 256)
LOG2_LRS = tuple(range(-12, -4))
COORD_LR = 2**-7
BASE = {"head_dim": 16, "depth": 2, "base_width": 32, "num_classes": 10}
MLP_BASE = {"depth": 3, "base_hidden": 32}
NETS = ("dit", "mlp")
DIT_VARIANTS = "2:-9,2:-6,2:-5,2:-4,1:-5"  # patch:log2 lr; the U-Net trains at 2e-3 ~ 2^-9


def _digits():
    x, y = load_digits(8, "pad", "train")
    return x, y


def _build(kind: str, width: int, mup: bool):
    if kind == "dit":
        return DiT(width=width, mup=mup, **BASE)
    return MLP(2, hidden=width, mup=mup, **MLP_BASE)


def _data(kind: str, split: str, n: int | None, g: torch.Generator):
    """Draws of (x0, cond) for the DiT (digits with labels) or the MLP (moons, unconditional)."""
    if kind == "mlp":
        return sample_toy("moons", n or 256, generator=g), {}
    x, y = load_digits(8, "pad", split)
    idx = torch.randint(0, x.shape[0], (n or 64,), generator=g)
    return x[idx], {"y": y[idx]}


def _heldout(kind: str, path, n: int = 512):
    g = torch.Generator().manual_seed(11)
    x0, cond = _data(kind, "test", n, g)
    t, noise = DiffusionLoss("eps").draw(x0, path, g)
    return x0, cond, t, noise


def _run(kind: str, width: int, mup: bool, lr: float, steps: int, record: bool = False):
    """Train ``steps`` Adam steps; (held-out loss, per-step (mean |last block|, mean |output|) if ``record``)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = _build(kind, width, mup)
    model, loss_fn = Model(net, LinearVP(), "eps"), DiffusionLoss("eps")
    opt = net.make_optimizer(lr=lr)
    g = torch.Generator().manual_seed(1)
    probe_x, probe_c, probe_t, _ = _heldout(kind, model.path, 64)
    scales, trace = [], []
    hook = net.blocks[-1].register_forward_hook(lambda m, i, o: scales.append(float(o.detach().abs().mean())))
    for _ in range(steps):
        x0, cond = _data(kind, "train", None, g)
        t, noise = loss_fn.draw(x0, model.path, g)
        loss = loss_fn(model, x0, t, noise, cond).mean()
        if not torch.isfinite(loss):
            hook.remove()
            return float("inf"), trace
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if record:
            with torch.no_grad():
                scales.clear()
                out = net(probe_x, probe_t.float(), **probe_c)
            trace.append((scales[-1], float(out.abs().mean())))
    hook.remove()
    x0, cond, t, noise = _heldout(kind, model.path)
    with torch.no_grad():
        held = float(loss_fn(model, x0, t, noise, cond).mean())
    return held, trace


def coord_check(kind: str, steps: int) -> dict:
    out = {}
    for mup in (False, True):
        out["mup" if mup else "sp"] = {w: _run(kind, w, mup, COORD_LR, steps, record=True)[1] for w in WIDTHS}
    return out


def _sweep_run(task: tuple) -> float:
    torch.set_num_threads(1)
    kind, width, mup, log2_lr, steps = task
    return _run(kind, width, mup, 2.0**log2_lr, steps)[0]


def lr_sweeps(steps: int, widths: tuple[int, ...], jobs: int) -> dict:
    """Held-out loss per (net, parametrization, width, log2 lr); ``jobs`` worker processes share the runs."""
    tasks = [(kind, w, mup, k, steps) for w in sorted(widths, reverse=True) for kind in NETS for mup in (False, True)
             for k in LOG2_LRS]  # fmt: skip
    bar = tqdm(total=len(tasks), desc="lr sweeps", dynamic_ncols=True)
    if jobs == 1:
        losses = []
        for task in tasks:
            losses.append(_sweep_run(task))
            bar.update(1)
    else:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as ex:
            losses = []
            for loss in ex.map(_sweep_run, tasks):
                losses.append(loss)
                bar.update(1)
    bar.close()
    out = {kind: {"sp": {w: {} for w in widths}, "mup": {w: {} for w in widths}} for kind in NETS}
    for (kind, w, mup, k, _), loss in zip(tasks, losses):
        out[kind]["mup" if mup else "sp"][w][k] = loss
    for kind in NETS:  # the grid in increasing lr, whatever order the runs finished in
        for key in ("sp", "mup"):
            out[kind][key] = {w: dict(sorted(out[kind][key][w].items())) for w in widths}
    return out


def _best(losses: dict) -> int:
    return min(losses, key=lambda k: losses[k])


def _dit_spec(patch: int, width: int, depth: int) -> dict:
    return {"width": width, "depth": depth, "head_dim": 16, "base_width": 32, "patch": patch}


def quality(steps: int, variants: list[tuple[int, int]], width: int, depth: int, n: int = 1000) -> dict:
    """The U-Net (lr 2e-3) and one muP DiT per (patch, log2 lr) in ``variants``."""
    data = build_data({"name": "digits", "size": 8, "mode": "pad", "split": "train"})
    loss = DiffusionLoss("x0", EDMLogNormal(), EDMWeight(0.6))
    unet = UNet(1, channels=(32, 64), num_res_blocks=1, time_dim=64, num_classes=10)
    runs = [("unet", unet, 2e-3, "mup/unet")]
    for patch, log2_lr in variants:
        spec = _dit_spec(patch, width, depth)
        torch.manual_seed(0)
        tag = "_".join(f"{k}{v}" for k, v in spec.items())
        runs.append((f"dit p{patch} lr 2^{log2_lr}", DiT(num_classes=10, **spec), 2.0**log2_lr, f"mup/dit_{tag}"))
    ref, _ = load_digits(8, "pad", "test")
    clf = get_digits_classifier(8, "pad")
    out = {}
    for name, net, lr, cache in runs:
        model = Model(net, EDM(), "x0", EDMPrecond(0.6))
        model, secs = train(model, loss, data, steps, batch=128, lr=lr, cache=f"{cache}_{steps}_{lr:g}")
        labels = torch.arange(n) % 10
        t0 = time.perf_counter()
        res = sample(model, shape=(n, 1, 8, 8), solver="heun", steps=18, cond={"y": labels},
                     generator=torch.Generator().manual_seed(3))  # fmt: skip
        x = res.x.clamp(-1, 1)
        acc = float((clf(x).argmax(1) == labels).float().mean())
        out[name] = {"params": sum(p.numel() for p in net.parameters()), "lr": lr, "train_seconds": secs,
                     "sample_seconds": time.perf_counter() - t0, "frechet": digits_frechet_distance(x, ref, clf),
                     "label_accuracy": acc, "patch": getattr(net, "patch", None)}  # fmt: skip
        print(name, out[name], flush=True)
    return out


def _plot(payload: dict, file) -> None:
    plt = _plt()
    fig, axes = plt.subplots(2, 4, figsize=(17, 7.6))
    for row, kind in zip(axes, NETS):
        for ax, key in zip(row[:2], ("sp", "mup")):
            cc = payload[kind]["coord_check"][key]
            steps = len(next(iter(cc.values())))
            for s in range(steps):
                ax.plot(WIDTHS, [cc[w][s][0] for w in WIDTHS], "o-", label=f"step {s + 1}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("width")
            ax.set_title(f"{kind.upper()} coord check ({key.upper()}): mean |last block|", fontsize=9)
            ax.legend(fontsize=7)
        for ax, key in zip(row[2:], ("sp", "mup")):
            sw = payload[kind]["lr_sweep"][key]
            for w in sw:
                ks = list(sw[w])
                ax.plot(ks, [min(sw[w][k], 2.0) for k in ks], "o-", label=f"width {w}")
                best = _best(sw[w])
                ax.plot([best], [sw[w][best]], "k*", ms=9)
            ax.set_yscale("log")
            ax.set_xlabel("log2 learning rate")
            ax.set_ylabel("held-out loss (clipped at 2)")
            ax.set_title(f"{kind.upper()} LR transfer ({key.upper()}); * = best", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def _slope(values: list[float]) -> float:
    lw = torch.log2(torch.tensor(WIDTHS, dtype=torch.float64))
    lv = torch.log2(torch.tensor(values, dtype=torch.float64))
    a = torch.stack([lw, torch.ones_like(lw)], 1)
    return float(torch.linalg.lstsq(a, lv[:, None]).solution[0, 0])


_SETUP = {
    "dit": "DiT depth 2, head dim 16, patch 2, base width 32, class-conditional eps on LinearVP, 8x8 digits, batch 64.",
    "mlp": "Residual MLP depth 3, base width (hidden) 32, eps on LinearVP, moons, batch 256.",
}


def _net_markdown(p: dict, kind: str) -> list[str]:
    q = p[kind]
    lines = [f"## {kind.upper()}", "", _SETUP[kind], "",
             f"### Coordinate check (Adam at lr 2^{int(torch.log2(torch.tensor(COORD_LR)))}, widths "
             f"{', '.join(map(str, WIDTHS))})", "",
             "Slope of log2 mean |activation| against log2 width (0 = flat), at each of the first steps:", "",
             "| parametrization | step | last block | output |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
    for key in ("sp", "mup"):
        cc = q["coord_check"][key]
        for s in range(len(cc[WIDTHS[0]])):
            lines.append(f"| {key.upper()} | {s + 1} | {_slope([cc[w][s][0] for w in WIDTHS]):+.2f} | "
                         f"{_slope([cc[w][s][1] for w in WIDTHS]):+.2f} |")  # fmt: skip
    widths = p["sweep_widths"]
    lines += ["", f"### Learning-rate transfer ({p['sweep_steps']} steps per run, log2 lr {p['log2_lrs'][0]} to "
              f"{p['log2_lrs'][-1]}; held-out denoising loss)", "",
              "| parametrization | " + " | ".join(f"width {w}" for w in widths) + " | spread (grid points) |",
              "| --- |" + " ---: |" * (len(widths) + 1)]  # fmt: skip
    for key in ("sp", "mup"):
        best = [_best(q["lr_sweep"][key][w]) for w in widths]
        cells = [f"2^{b} ({q['lr_sweep'][key][w][b]:.4f})" for b, w in zip(best, widths)]
        lines.append(f"| {key.upper()} best log2 lr (loss) | " + " | ".join(cells) + f" | {max(best) - min(best)} |")
    return lines + [""]


def _markdown(p: dict) -> str:
    lines = ["# muP for the DiT and the MLP (`diffusio bench mup`)", "", f"Budget: {p['budget']}.", ""]
    for kind in NETS:
        lines += _net_markdown(p, kind)
    q = p["quality"]
    lines += [f"## DiT vs U-Net on 8x8 digits ({p['train_steps']} steps, batch 128, EDM recipe, warm-up 100, EMA "
              "0.995, Heun 18 steps, 1000 class-conditional samples; Fréchet distance to the test split on the "
              "metric classifier's features)", "",
              f"DiT: muP, width {p['dit_width']}, depth {p['dit_depth']}, head dim 16, base width 32.", "",
              "| net | parameters | lr | train s | Fréchet | classifier agrees with label |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name, r in q.items():
        lines.append(f"| {name} | {r['params']:,} | {r['lr']:.3g} | {r['train_seconds']:.0f} | {r['frechet']:.2f} | "
                     f"{r['label_accuracy']:.1%} |")  # fmt: skip
    head = min((k for k in q if k != "unet"), key=lambda k: q[k]["frechet"])
    ratio = q[head]["frechet"] / q["unet"]["frechet"]
    verdict = "reaches" if ratio <= 1.1 else "does not reach"
    lines += ["", f"Best DiT ({head}, picked on this same Fréchet distance, so slightly optimistic) / U-Net Fréchet "
              f"ratio: **{ratio:.2f}** (the DiT {verdict} the U-Net's quality within 10%). The U-Net's learning rate "
              "is the digits config's; the DiT's lowest one matches it. Train seconds are wall time on a shared "
              "machine (cached models keep the seconds of the run that trained them)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="diffusio bench mup", description=__doc__.split("\n\n")[0])
    ap.add_argument("--coord-steps", type=int, default=5)
    ap.add_argument("--sweep-steps", type=int, default=60)
    ap.add_argument("--train-steps", type=int, default=600)
    ap.add_argument("--sweep-widths", default="32,64,128", help="comma-separated widths of the LR sweep")
    ap.add_argument("--log2-lrs", default="-10,-5", help="lowest,highest log2 lr (step 1), e.g. --log2-lrs=-12,-5")
    ap.add_argument("--dit-width", type=int, default=80, help="width of the DiT compared with the U-Net")
    ap.add_argument("--dit-depth", type=int, default=4)
    ap.add_argument("--dit-variants", default=DIT_VARIANTS,
                    help="comma-separated patch:log2_lr DiTs against the U-Net")  # fmt: skip
    ap.add_argument("--jobs", type=int, default=1, help="worker processes for the LR sweeps")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    global LOG2_LRS
    try:
        sweep_widths = tuple(int(w) for w in a.sweep_widths.split(","))
        lo, hi = (int(v) for v in a.log2_lrs.split(","))
        variants = [tuple(int(v) for v in item.split(":")) for item in a.dit_variants.split(",")]
    except ValueError:
        ap.error("--sweep-widths takes integers like 32,64,128, --log2-lrs two integers like -12,-5 and "
                 "--dit-variants patch:log2_lr pairs like 1:-9,2:-9")  # fmt: skip
    if lo > hi or any(w % BASE["head_dim"] for w in sweep_widths):
        ap.error(f"need --log2-lrs low <= high and widths that are multiples of {BASE['head_dim']}")
    if any(len(v) != 2 or v[0] not in (1, 2, 4, 8) for v in variants) or a.dit_width % 16:
        ap.error("--dit-variants needs patch:log2_lr pairs with patch in 1, 2, 4, 8; --dit-width a multiple of 16")
    LOG2_LRS = tuple(range(lo, hi + 1))
    for k in ("coord_steps", "sweep_steps", "train_steps", "dit_depth", "jobs"):
        if getattr(a, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1")
    t0 = time.perf_counter()
    payload = {"coord_steps": a.coord_steps, "sweep_steps": a.sweep_steps, "train_steps": a.train_steps,
               "sweep_widths": list(sweep_widths), "log2_lrs": list(LOG2_LRS), "dit_width": a.dit_width,
               "dit_depth": a.dit_depth}  # fmt: skip
    sweeps = lr_sweeps(a.sweep_steps, sweep_widths, a.jobs)
    for kind in NETS:
        payload[kind] = {"coord_check": coord_check(kind, a.coord_steps), "lr_sweep": sweeps[kind]}
    payload["quality"] = quality(a.train_steps, variants, a.dit_width, a.dit_depth)
    payload["budget"] = (f"coordinate check {a.coord_steps} steps x {len(WIDTHS)} widths x 2 parametrizations; LR "
                         f"sweep {a.sweep_steps} steps x {len(LOG2_LRS)} lrs x {len(sweep_widths)} widths x 2, per "
                         f"net ({a.jobs} processes); {a.train_steps} training steps per digits model; "
                         f"{time.perf_counter() - t0:.0f} s wall (2 shared cores)")  # fmt: skip
    out = results_dir(a.out)
    write_results(out, "mup", payload, _markdown(payload))
    _plot(payload, out / "mup.png")
    print(_markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
