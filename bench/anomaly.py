"""Medical anomaly detection on phantoms: reconstruction-based anomaly maps from a diffusion prior trained on healthy
phantoms only, against simple baselines, on phantoms with synthetic lesions (exact pixel masks).

1. The prior: the bundled ``phantoms`` config (EDM, random 32x32 ellipse phantoms, a fresh batch every step) with a
   smaller U-Net and batch, trained once and cached in ``diffusio.io.cache_dir("bench", "anomaly")``.
2. ``t0`` (as the noise level sigma/alpha) is chosen on a validation set of lesioned phantoms by the pixel-level
   AUROC over body pixels; the whole sweep is reported.
3. Test: pixel-level AUROC over the lesioned test phantoms (all pixels, and body pixels only), image-level AUROC of
   lesioned vs healthy phantoms (the 99th percentile of each map), and the mean score on healthy phantoms over the
   mean on lesion pixels.
   Baselines: |x - mean healthy image| and |x - nearest healthy phantom| (L2 nearest in a bank of healthy
   phantoms), smoothed like the diffusion maps.

    diffusio bench anomaly            # ~35 min on 2 busy CPU cores the first time (training), then ~5 min
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from bench.common import results_dir, write_results
from diffusio.data.phantoms import random_phantoms
from diffusio.inverse.anomaly import anomaly_map, anomaly_score, auroc, gaussian_smooth, insert_lesions
from diffusio.io import cache_dir

LEVELS = (0.1, 0.2, 0.3, 0.5, 0.8)  # candidate noise levels sigma/alpha at t0 (images in [-1, 1])
BODY = -0.9  # body pixels: healthy value above this (the background is -1)
TARGET_PIXEL_AUROC = 0.85  # medical survey: pixel-wise AUROC >= 0.85
TARGET_HEALTHY_RATIO = 0.5  # medical survey: mean score on lesion-free phantoms < 0.5x that on lesion pixels


def phantom_prior(steps: int, progress=print):
    """The bundled phantoms config with a U-Net of channels (16, 32, 32) and batches of 16, trained ``steps`` steps
    once and cached."""
    from diffusio.app.config import load_model, run_training
    from diffusio.app.resources import packaged_config
    from diffusio.io import load_safetensors

    cfg = packaged_config("phantoms")
    cfg["net"]["channels"] = [16, 32, 32]
    cfg["train"].update(steps=steps, batch_size=16, ckpt_every=max(1, min(500, steps)))
    run_dir = cache_dir("bench", "anomaly", f"phantoms_c16_b16_{steps}")
    f = os.path.join(run_dir, "model.safetensors")
    if os.path.isfile(f) and load_safetensors(f)[1].get("step") == steps:
        try:
            return load_model(f)[0]
        except RuntimeError as err:  # the network changed since it was cached
            progress(f"[anomaly] the cached prior in {run_dir} does not load ({str(err).splitlines()[0]}); retraining")
    progress(f"[anomaly] training the healthy-phantom prior ({steps} steps) into {run_dir} (once)")
    run_training(cfg, run_dir, progress=True)
    return load_model(f)[0]


def _baselines(x: torch.Tensor, bank: torch.Tensor, smooth: float) -> dict[str, torch.Tensor]:
    mean = bank.mean(0, keepdim=True)
    d = torch.cdist(x.flatten(1), bank.flatten(1))
    nearest = bank[d.argmin(1)]
    return {
        "mean healthy image": gaussian_smooth((x - mean).abs().mean(1), smooth),
        "nearest healthy phantom": gaussian_smooth((x - nearest).abs().mean(1), smooth),
    }


def _row(
    maps: torch.Tensor, mask: torch.Tensor, body: torch.Tensor, healthy_maps: torch.Tensor, quantile: float
) -> dict:
    scores = torch.cat([anomaly_score(maps, quantile), anomaly_score(healthy_maps, quantile)])
    labels = torch.cat([torch.ones(len(maps), dtype=torch.bool), torch.zeros(len(healthy_maps), dtype=torch.bool)])
    return {
        "pixel_auroc": auroc(maps, mask),
        "body_pixel_auroc": auroc(maps[body], mask[body]),
        "image_auroc": auroc(scores, labels),
        "healthy_over_lesion": float(healthy_maps.mean() / maps[mask].mean()),
    }


def _plot(x, mask, maps: dict[str, torch.Tensor], file: Path, k: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["lesioned phantom", "lesion mask", *maps]
    fig, axes = plt.subplots(k, len(cols), figsize=(2.1 * len(cols), 2.1 * k))
    for i in range(k):
        panels = [x[i, 0], mask[i].float(), *(m[i] for m in maps.values())]
        for j, (ax, p) in enumerate(zip(axes[i], panels, strict=True)):
            ax.imshow(p.numpy(), cmap="gray" if j < 2 else "magma", vmin=-1 if j == 0 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=90)
    plt.close(fig)


def _markdown(res: dict) -> str:
    a = res["args"]
    lines = [
        "# Anomaly detection on phantoms (`diffusio bench anomaly`)", "",
        f"Healthy-phantom prior: bundled `phantoms` config (EDM, 32x32) with a (16, 32, 32) U-Net, {a['train_steps']} "
        f"training steps of 16 phantoms. Lesions: smooth elliptical blobs (`insert_lesions`), mask = pixels changed "
        "by > 0.1. "
        f"Maps: {a['n']} noise draws, {a['steps']} DDIM steps back from t0, Gaussian smoothing {a['smooth']} px; "
        f"image score = the {a['quantile']} quantile of the map. Validation {a['val']} lesioned phantoms, test "
        f"{a['test']} lesioned + {a['test']} healthy phantoms (disjoint seeds). Synthetic phantoms: no clinical claim.",
        "Pixel AUROC is over all pixels of the lesioned test phantoms; body-pixel AUROC leaves out the background "
        "(an easy negative for every method) and is the one t0 is chosen by.",
        "", "## t0 sweep (validation)", "", "| noise level sigma/alpha at t0 | t0 | pixel AUROC | body-pixel AUROC |",
        "|---|---|---|---|",
    ]  # fmt: skip
    lines += [f"| {r['level']} | {r['t0']:.3g} | {r['pixel_auroc']:.3f} | {r['body_pixel_auroc']:.3f} |"
              for r in res["sweep"]]  # fmt: skip
    lines += ["", f"Chosen: noise level {res['chosen_level']} (t0 = {res['chosen_t0']:.3g}).", "",
              "## Test", "",
              "| method | pixel AUROC | body-pixel AUROC | image AUROC | healthy mean / lesion-pixel mean |",
              "|---|---|---|---|---|"]  # fmt: skip
    lines += [
        f"| {name} | {r['pixel_auroc']:.3f} | {r['body_pixel_auroc']:.3f} | {r['image_auroc']:.3f} | "
        f"{r['healthy_over_lesion']:.3f} |"
        for name, r in res["test"].items()
    ]
    d = res["test"]["diffusion reconstruction"]
    pix = "met" if d["pixel_auroc"] >= TARGET_PIXEL_AUROC else "missed"
    ratio = "met" if d["healthy_over_lesion"] < TARGET_HEALTHY_RATIO else "missed"
    lines += ["", f"Survey targets (medical-survey.md, test 4): pixel AUROC >= {TARGET_PIXEL_AUROC}: {pix} "
              f"({d['pixel_auroc']:.3f}); healthy/lesion < {TARGET_HEALTHY_RATIO}: {ratio} "
              f"({d['healthy_over_lesion']:.3f}).", "",
              f"Wall time {res['seconds']} s (with training when not cached).", ""]  # fmt: skip
    lines += ["![maps](anomaly.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench anomaly", description=__doc__.split("\n\n")[0])
    p.add_argument("--train-steps", type=int, default=1500, help="training steps of the healthy prior (cached)")
    p.add_argument("--val", type=int, default=32, help="lesioned validation phantoms (t0 selection)")
    p.add_argument("--test", type=int, default=64, help="lesioned test phantoms (and as many healthy ones)")
    p.add_argument("--bank", type=int, default=2000, help="healthy phantoms for the baselines")
    p.add_argument("--n", type=int, default=4, help="noise draws per map")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps from t0")
    p.add_argument("--smooth", type=float, default=1.0, help="Gaussian smoothing of the maps (pixels)")
    p.add_argument("--quantile", type=float, default=0.99, help="image score: this quantile of the map")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    model = phantom_prior(args.train_steps).eval()
    path = model.path
    size = 32

    def lesioned(n, seed):
        healthy = random_phantoms(n, size, generator=torch.Generator().manual_seed(seed))
        x, mask = insert_lesions(healthy, generator=torch.Generator().manual_seed(seed + 1))
        return healthy[:, 0] > BODY, x, mask

    bv, xv, mv = lesioned(args.val, 1000 + args.seed)
    opts = {"n": args.n, "steps": args.steps, "smooth": args.smooth}
    sweep = []
    for level in LEVELS:
        t0 = float(path.t_of_noise_level(torch.tensor(level, dtype=torch.float64)))
        maps = anomaly_map(model, xv, t0=t0, generator=torch.Generator().manual_seed(args.seed), **opts)
        sweep.append(
            {"level": level, "t0": t0, "pixel_auroc": auroc(maps, mv), "body_pixel_auroc": auroc(maps[bv], mv[bv])}
        )
        print(f"[anomaly] validation: noise level {level} (t0 {t0:.3g}): {sweep[-1]}")
    best = max(sweep, key=lambda r: r["body_pixel_auroc"])

    bt, xt, mt = lesioned(args.test, 2000 + args.seed)
    clean = random_phantoms(args.test, size, generator=torch.Generator().manual_seed(3000 + args.seed))
    bank = random_phantoms(args.bank, size, generator=torch.Generator().manual_seed(4000 + args.seed))
    g = torch.Generator().manual_seed(args.seed + 1)
    maps = {"diffusion reconstruction": anomaly_map(model, xt, t0=best["t0"], generator=g, **opts)}
    healthy_maps = {"diffusion reconstruction": anomaly_map(model, clean, t0=best["t0"], generator=g, **opts)}
    maps.update(_baselines(xt, bank, args.smooth))
    healthy_maps.update(_baselines(clean, bank, args.smooth))
    test = {k: _row(maps[k], mt, bt, healthy_maps[k], args.quantile) for k in maps}
    for k, r in test.items():
        print(f"[anomaly] test {k}: {r}")
    out = results_dir(args.out)
    _plot(xt, mt, maps, out / "anomaly.png")
    res = {"sweep": sweep, "chosen_level": best["level"], "chosen_t0": best["t0"], "test": test,
           "seconds": round(time.perf_counter() - t_start, 1), "args": vars(args)}  # fmt: skip
    write_results(out, "anomaly", res, _markdown(res))
    print(f"[anomaly] wrote {out / 'anomaly.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
