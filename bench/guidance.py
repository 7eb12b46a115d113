"""Guidance benchmark (issue 5): ``diffusio bench guidance``.

1. Classifier-free guidance sweep on the class-conditional digits prior: class accuracy and confidence of the
   metric classifier on guided samples rise with the scale w while diversity (mean pairwise distance within a
   class, in pixels and in classifier features) falls -> ``cfg_sweep.{json,md,png}``.
2. Classifier guidance with a noise-conditional classifier trained by diffusio, on the same prior's
   unconditional (null-class) model: accuracy against the guidance scale.
3. Optimization via reward-conditioned diffusion on data in a 2-D subspace of R^8 (overview brief, test 2):
   true reward and off-subspace distance of samples for targets a = 0..3.
All written to ``guidance.{json,md}`` beside.
"""

from __future__ import annotations

import argparse

import torch

from bench.common import results_dir, write_results
from diffusio.guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    fit_reward_model,
    reward_conditioned_model,
    sample_at_reward,
    train_noisy_classifier,
)
from diffusio.metrics import get_digits_classifier
from diffusio.samplers import sample
from diffusio.training import NetFit


def _diversity(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance between samples of the same class, averaged over classes."""
    out = []
    for k in labels.unique():
        v = x[labels == k].flatten(1)
        d = torch.cdist(v, v)
        out.append(float(d.sum() / (len(v) * (len(v) - 1))))
    return sum(out) / len(out)


def _judge(x: torch.Tensor, labels: torch.Tensor, clf) -> dict:
    with torch.no_grad():
        logits = clf(x.float())
        feats = clf.features(x.float())
    prob = torch.softmax(logits, 1)
    return {"accuracy": float((logits.argmax(1) == labels).float().mean()),
            "confidence": float(prob.gather(1, labels[:, None]).mean()),
            "diversity_pixels": _diversity(x, labels), "diversity_features": _diversity(feats, labels)}  # fmt: skip


def cfg_sweep(model, scales, per_class: int, steps: int, seed: int, clf) -> list[dict]:
    labels = torch.arange(10).repeat_interleave(per_class)
    rows, grids = [], []
    for w in scales:
        guided = ClassifierFreeGuidance(model, w)
        res = sample(guided, shape=(len(labels), 1, 8, 8), solver="heun", steps=steps, cond={"y": labels},
                     generator=torch.Generator().manual_seed(seed))  # fmt: skip
        x = res.x.clamp(-1, 1)
        rows.append({"scale": w, "nfe": res.nfe, **_judge(x, labels, clf)})
        grids.append(x.reshape(10, per_class, 1, 8, 8)[:, :8].flatten(0, 1))
        print(f"cfg w={w:<4} acc {rows[-1]['accuracy']:.3f} conf {rows[-1]['confidence']:.3f} "
              f"div {rows[-1]['diversity_pixels']:.3f}")  # fmt: skip
    return rows, grids


def classifier_guidance(model, scales, per_class: int, steps: int, seed: int, clf, train_steps: int) -> list[dict]:
    from diffusio.data.digits import load_digits

    x, y = load_digits(8, "pad", "train")
    noisy = train_noisy_classifier(x, y, model.path, fit=NetFit(steps=train_steps), sigma_data=0.6,
                                   generator=torch.Generator().manual_seed(seed))  # fmt: skip
    labels = torch.arange(10).repeat_interleave(per_class)
    rows = []
    for w in scales:
        guided = ClassifierGuidance(model, noisy, w)  # inner called without y: the null-class model
        res = sample(guided, shape=(len(labels), 1, 8, 8), solver="heun", steps=steps, cond={"y": labels},
                     generator=torch.Generator().manual_seed(seed))  # fmt: skip
        rows.append({"scale": w, "nfe": res.nfe, **_judge(res.x.clamp(-1, 1), labels, clf)})
        print(f"classifier guidance w={w:<4} acc {rows[-1]['accuracy']:.3f}")
    return rows


def reward_conditioned(seed: int, train_steps: int, n: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    D, d = 8, 2
    basis = torch.linalg.qr(torch.randn(D, d, generator=g))[0]
    theta = basis @ torch.tensor([1.0, 0.5])
    x_u = torch.randn(20000, d, generator=g) @ basis.T
    x_l = x_u[:200]
    f = fit_reward_model(x_l, x_l @ theta + 0.1 * torch.randn(200, generator=g))
    model = reward_conditioned_model(x_u, f, nu=0.3, steps=train_steps, seed=seed)
    labels = f(x_u)
    rows = []
    for a in (0.0, 1.0, 2.0, 3.0):
        xs = sample_at_reward(model, a, n, steps=50, generator=torch.Generator().manual_seed(seed))
        off = (xs - xs @ basis @ basis.T).norm(dim=1)
        rows.append({"target": a, "true_reward": float((xs @ theta).mean()),
                     "off_subspace_rms": float(off.pow(2).mean().sqrt()),
                     "extrapolation": bool(a > float(labels.max()))})  # fmt: skip
        print(f"reward-conditioned a={a}: true reward {rows[-1]['true_reward']:.3f}, off-subspace "
              f"{rows[-1]['off_subspace_rms']:.3f}")  # fmt: skip
    return rows, float(labels.quantile(0.99))


def _plot(rows: list[dict], file) -> None:
    from diffusio.app.plotting import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ws = [r["scale"] for r in rows]
    ax.plot(ws, [r["accuracy"] for r in rows], "o-", color="C0", label="class accuracy (metric classifier)")
    ax.plot(ws, [r["confidence"] for r in rows], "s--", color="C0", alpha=0.6, label="mean confidence")
    ax.set_xlabel("CFG scale w (1 = conditional, 0 = unconditional)")
    ax.set_ylabel("accuracy / confidence", color="C0")
    ax2 = ax.twinx()
    ax2.plot(ws, [r["diversity_pixels"] for r in rows], "^-", color="C3", label="diversity (pixels)")
    ax2.set_ylabel("mean within-class pairwise distance", color="C3")
    fig.legend(loc="lower center", fontsize=8, ncol=3)
    ax.set_title("Classifier-free guidance on 8x8 digits")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(file, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench guidance", description=__doc__.split("\n")[0])
    p.add_argument("--digits", default="runs/digits/model.safetensors")
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classifier-steps", type=int, default=1500)
    p.add_argument("--reward-steps", type=int, default=3000)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from diffusio.app.config import load_model
    from diffusio.app.plotting import save_image_grid

    out = results_dir(args.out)
    model, _ = load_model(args.digits)
    clf = get_digits_classifier(8, "pad")
    scales = [0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0]
    cfg_rows, grids = cfg_sweep(model, scales, args.per_class, args.steps, args.seed, clf)
    _plot(cfg_rows, out / "cfg_sweep.png")
    save_image_grid(torch.cat(grids[:1] + grids[2:5]), out / "cfg_sweep_samples.png", nrow=8, scale=4)
    md = ["# Classifier-free guidance sweep (8x8 digits, class-conditional EDM U-Net)", "",
          f"{args.per_class} samples per class, Heun {args.steps} steps, one batched call of 2B per evaluation; "
          "metric classifier = diffusio's digits classifier.", "",
          "| w | accuracy | confidence | diversity (pixels) | diversity (features) | model calls |",
          "| ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    md += [f"| {r['scale']} | {r['accuracy']:.3f} | {r['confidence']:.3f} | {r['diversity_pixels']:.3f} | "
           f"{r['diversity_features']:.3f} | {r['nfe']} |" for r in cfg_rows]  # fmt: skip
    write_results(out, "cfg_sweep", {"rows": cfg_rows, "args": vars(args)}, "\n".join(md) + "\n")
    cg_rows = classifier_guidance(model, [0.0, 1.0, 2.0, 4.0], 10, args.steps, args.seed, clf, args.classifier_steps)
    rc_rows, q99 = reward_conditioned(args.seed, args.reward_steps, 2000)
    md2 = ["# Guidance", "", "## Classifier guidance (noise-conditional MLP classifier trained by diffusio, "
           "null-class model)", "", "| w | accuracy | confidence | diversity (pixels) |",
           "| ---: | ---: | ---: | ---: |"]  # fmt: skip
    md2 += [f"| {r['scale']} | {r['accuracy']:.3f} | {r['confidence']:.3f} | {r['diversity_pixels']:.3f} |"
            for r in cg_rows]  # fmt: skip
    md2 += ["", "## Optimization via reward-conditioned diffusion (D = 8, subspace d = 2, 200 labels)", "",
            f"99% quantile of the pseudo-labels: {q99:.2f} (targets above it extrapolate).", "",
            "| target a | true reward | off-subspace RMS |", "| ---: | ---: | ---: |"]  # fmt: skip
    md2 += [f"| {r['target']} | {r['true_reward']:.3f} | {r['off_subspace_rms']:.3f} |" for r in rc_rows]
    write_results(out, "guidance", {"classifier": cg_rows, "reward_conditioned": rc_rows}, "\n".join(md2) + "\n")
    print(f"wrote {out / 'cfg_sweep.png'}, cfg_sweep.md, guidance.md")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
