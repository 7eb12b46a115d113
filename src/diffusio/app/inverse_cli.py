"""``diffusio inverse``: reconstruct held-out images of a trained prior from simulated measurements and write
measurement | reconstruction | ground truth side by side (PNG) with PSNR/SSIM (JSON)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from diffusio.app.options import parse_opts

__all__ = ["add_inverse_parser", "run_inverse"]


def add_inverse_parser(subparsers) -> None:
    """Register the ``inverse`` sub-command on an argparse ``subparsers`` object."""
    from diffusio.inverse import METHODS
    from diffusio.inverse.tasks import TASKS

    p = subparsers.add_parser("inverse", help="solve an inverse problem with a trained prior; PNG + PSNR/SSIM")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--method", default="dps", choices=sorted(METHODS))
    p.add_argument("--ckpt", required=True, help="model.safetensors of a prior trained on digits/patches/phantoms")
    p.add_argument("--n", type=int, default=8, help="number of held-out images (ct3d: slices of one volume)")
    p.add_argument("--noise", type=float, default=0.05, help="measurement noise std (images in [-1, 1])")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/inverse", help="output directory")
    p.add_argument("--opt", action="append", help="method option NAME=VALUE (e.g. steps=100), repeatable")
    p.set_defaults(fn=_cmd_inverse)


def _cmd_inverse(args) -> int:
    opts = dict(parse_opts(args.opt))
    report = run_inverse(args.ckpt, args.task, args.method, n=args.n, noise_std=args.noise, seed=args.seed,
                         out=Path(args.out), **opts)  # fmt: skip
    print(json.dumps({k: v for k, v in report.items() if k != "per_image"}, indent=2))
    return 0


def run_inverse(
    ckpt: str | Path,
    task: str,
    method: str,
    *,
    n: int = 8,
    noise_std: float = 0.05,
    seed: int = 0,
    out: Path | None = None,
    **options,
) -> dict:
    """Run one (task, method) on ``n`` held-out images of the prior in ``ckpt``; write PNG + JSON to ``out``."""
    from diffusio.app.config import load_model
    from diffusio.inverse import solve
    from diffusio.inverse.tasks import baseline, ground_truth, make_operator, measurement_image, method_options
    from diffusio.metrics import psnr, ssim

    model, cfg = load_model(ckpt)
    x = ground_truth(cfg.get("data", {}), n, seed=1234 + seed, task=task, slices=n)
    g = torch.Generator().manual_seed(seed)
    op = make_operator(task, tuple(x.shape[1:]), noise_std, generator=g)
    y = op.measure(x, generator=g)
    opts = {**method_options(method, task), **options}
    if method == "mbir" and task != "ct3d":
        raise ValueError("method 'mbir' reconstructs a volume: use it with --task ct3d")
    t0 = time.perf_counter()
    if method == "pinv":
        rec, nfe = baseline(op, y), 0
    else:
        res = solve(model, op, y, method, generator=g, **opts)
        rec, nfe = res.x, res.nfe
    seconds = time.perf_counter() - t0
    rec = rec.clamp(-1, 1)
    win = min(7, x.shape[-1]) | 1
    p, s = psnr(rec, x), ssim(rec, x, win_size=win)
    report = {"task": task, "method": method, "ckpt": str(ckpt), "n": int(x.shape[0]), "noise_std": noise_std,
              "psnr": float(p.mean()), "ssim": float(s.mean()), "nfe": nfe, "seconds": seconds,
              "options": {k: v for k, v in opts.items() if not isinstance(v, torch.Tensor)},
              "per_image": {"psnr": p.tolist(), "ssim": s.tolist()}}  # fmt: skip
    if out is not None:
        _write(out, f"{task}_{method}", measurement_image(op, y), rec, x, report)
    return report


def _write(out: Path, stem: str, meas, rec, truth, report: dict) -> None:
    from diffusio.app.plotting import save_image_grid
    from diffusio.io import save_json

    out.mkdir(parents=True, exist_ok=True)
    rows = torch.stack([meas.float(), rec.float(), truth.float()], 1).flatten(0, 1)  # per image: y | x_hat | x
    save_image_grid(rows, out / f"{stem}.png", nrow=3 * min(4, truth.shape[0]), scale=8 if truth.shape[-1] <= 16 else 4)
    save_json(report, out / f"{stem}.json")
    print(f"wrote {out / f'{stem}.png'} (measurement | reconstruction | ground truth) and {out / f'{stem}.json'}")
