"""Multi-task diffusion on 8x8 digits (Chen et al. 2024): joint (image, label) generation against an image-only model
of the same size and budget, label agreement, and conditional generation both ways.

Both models are the same shared-trunk network (U-Net trunk, eps head, label head, label encoder) trained for the same
steps; the image-only model has no aggregation (w = 0) and no label term (lambda = 0), i.e. plain DDPM training. A
third model, the joint one with the label term 64x heavier, shows what the loss balance does.
Metrics: Fréchet distance of the metric classifier's features to the test split for unconditional samples; label
agreement = the metric classifier's class of a jointly generated image equals the generated label; label -> image
accuracy (the classifier recovers the requested label); image -> label accuracy of the label head on test digits.

Run from the repository root: ``diffusio bench multitask [--steps 1000]`` -> bench/results/multitask.*
"""

from __future__ import annotations

import argparse

import torch

from bench.common import results_dir, write_results
from diffusio.app.config import build_data
from diffusio.app.demo.toytrain import train
from diffusio.app.plotting import _plt
from diffusio.core.paths import LinearVP
from diffusio.data.digits import load_digits
from diffusio.families.multitask import MultiTaskLoss, MultiTaskModel, classify, sample_multitask
from diffusio.metrics import digits_frechet_distance, get_digits_classifier
from diffusio.nets.heads import image_label_net

NET = {"channels": (16, 32), "features": 16, "time_dim": 32}
# (aggregation weight w, label weight lambda); joint_ce_x64: the label term 64x heavier (lambda = 64: full CE beside a
# per-pixel mean MSE, the weighting before the fix), an ablation of the loss balance
MODELS = {"joint": (1.0, 1.0), "joint_ce_x64": (1.0, 64.0), "image_only": (0.0, 0.0)}


def _model(weight: float) -> MultiTaskModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return MultiTaskModel(image_label_net(1, 8, 10, **NET), LinearVP(), weight)


def trained(name: str, steps: int) -> tuple[MultiTaskModel, float]:
    """Model ``name`` of :data:`MODELS` trained ``steps`` steps (batch 128, lr 2e-3, EMA 0.995; cached)."""
    weight, lam = MODELS[name]
    data = build_data({"name": "digits", "size": 8, "mode": "pad", "split": "train"})
    tag = "-".join(str(v) for v in NET["channels"]) + f"f{NET['features']}"
    return train(_model(weight), MultiTaskLoss(lam), data, steps, batch=128, lr=2e-3,
                 cache=f"multitask/v2_{name}_{tag}_{steps}")  # fmt: skip


def run(steps: int, n: int, sample_steps: int) -> tuple[dict, dict]:
    ref, ref_y = load_digits(8, "pad", "test")
    clf = get_digits_classifier(8, "pad")
    rows, images = {}, {}
    for name in MODELS:
        model, secs = trained(name, steps)
        g = torch.Generator().manual_seed(0)
        x, y = sample_multitask(model, n, steps=sample_steps, generator=g, progress=True)
        x = x.clamp(-1, 1)
        images[name] = (x[:40], y[:40])
        pred = clf(x).argmax(1)
        row = {"params": sum(p.numel() for p in model.net.parameters()), "train_seconds": secs,
               "frechet": digits_frechet_distance(x, ref, clf)}  # fmt: skip
        if MODELS[name][1] > 0:
            labels = torch.arange(n) % 10
            xc, _ = sample_multitask(model, n, steps=sample_steps, labels=labels, generator=g, progress=True)
            probs = classify(model, ref, generator=g)
            row.update({
                "label_agreement": float((pred == y).float().mean()),
                "generated_label_histogram": torch.bincount(y, minlength=10).tolist(),
                "label_to_image_accuracy": float((clf(xc.clamp(-1, 1)).argmax(1) == labels).float().mean()),
                "image_to_label_accuracy": float((probs.argmax(1) == ref_y).float().mean()),
                "frechet_label_to_image": digits_frechet_distance(xc.clamp(-1, 1), ref, clf),
            })  # fmt: skip
        rows[name] = row
        print(name, row, flush=True)
    return {"rows": rows, "steps": steps, "samples": n, "sample_steps": sample_steps, "net": NET}, images


def _plot(images: dict, file) -> None:
    plt = _plt()
    fig, axes = plt.subplots(4, 20, figsize=(14, 3.2))
    for r, name in enumerate(("joint", "image_only")):
        x, y = images[name]
        for i in range(40):
            ax = axes[2 * r + i // 20, i % 20]
            ax.imshow(x[i, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if name == "joint":
                ax.set_title(str(int(y[i])), fontsize=7)
        axes[2 * r, 0].set_ylabel(name, fontsize=7)
    fig.suptitle("joint samples (generated label above) / image-only samples")
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def _markdown(p: dict) -> str:
    j, o, a = p["rows"]["joint"], p["rows"]["image_only"], p["rows"]["joint_ce_x64"]
    return "\n".join([
        "# Multi-task diffusion on 8x8 digits (`diffusio bench multitask`)", "",
        f"Shared U-Net trunk {p['net']} + eps head + label head; LinearVP; {p['steps']} steps, batch 128; "
        f"{p['samples']} samples, DDIM {p['sample_steps']} steps; Fréchet distance on the metric classifier's "
        "features to the test split. Joint loss (||eps - eps_hat||^2 + CE) / 64 (the paper's sum-norm objective per "
        "pixel), label embeddings of RMS 1, aggregation weight w = 1. Both models: same network, steps, batch, lr, "
        "EMA 0.995.", "",
        "| model | parameters | train s | Fréchet (unconditional) |", "| --- | ---: | ---: | ---: |",
        f"| joint (image, label) | {j['params']:,} | {j['train_seconds']:.0f} | {j['frechet']:.3f} |",
        f"| image-only (w = 0, lambda = 0) | {o['params']:,} | {o['train_seconds']:.0f} | {o['frechet']:.3f} |",
        f"| ablation: joint, label term x64 (lambda = 64) | {a['params']:,} | {a['train_seconds']:.0f} | "
        f"{a['frechet']:.3f} |", "",
        f"- joint / image-only Fréchet ratio: **{j['frechet'] / o['frechet']:.2f}**",
        f"- label agreement (metric classifier on jointly generated images vs generated labels): "
        f"**{j['label_agreement']:.1%}** (generated label histogram {j['generated_label_histogram']})",
        f"- label -> image: classifier recovers the requested label for **{j['label_to_image_accuracy']:.1%}** "
        f"(Fréchet {j['frechet_label_to_image']:.3f})",
        f"- image -> label: label head accuracy on the test digits (t = 0.05, 4 draws): "
        f"**{j['image_to_label_accuracy']:.1%}**",
        f"- ablation (lambda = 64): label agreement {a['label_agreement']:.1%}, label -> image "
        f"{a['label_to_image_accuracy']:.1%}, image -> label {a['image_to_label_accuracy']:.1%}", "",
    ])  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="diffusio bench multitask", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    for k in ("steps", "samples", "sample_steps"):
        if getattr(a, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1")
    payload, images = run(a.steps, a.samples, a.sample_steps)
    out = results_dir(a.out)
    write_results(out, "multitask", payload, _markdown(payload))
    _plot(images, out / "multitask.png")
    print(_markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
