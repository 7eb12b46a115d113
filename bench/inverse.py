"""Inverse-problem benchmark (issue 5): ``diffusio bench inverse``.

1. Exact: a 2-D Gaussian-mixture prior with a linear measurement has a closed-form posterior (a mixture of
   Gaussians); each method's samples are compared with it (mean error, relative covariance error).
2. Images: PSNR/SSIM, model calls and time per method per task on held-out images of the trained priors (digits:
   inpainting, 2x SR, deblurring; phantoms: 4x MRI, sparse-view CT), side by side with deepinv's DPS and DiffPIR
   run on the *same* prior (our model wrapped as the [0, 1]-range denoiser deepinv expects) and the same operator.
3. 3-D: DiffusionMBIR against the same sampler without the z-TV term (slice-wise 2-D) and slice-wise FBP on a
   phantom volume in sparse-view CT; PSNR of the volume and of its x-z reslices (along the third axis).

Writes ``inverse.json``, ``inverse.md``, ``inverse.png`` and example grids to ``bench/results/``. Train the priors
first: ``diffusio train digits --out runs/digits``, ``diffusio train patches --out runs/patches`` and
``diffusio train phantoms --out runs/phantoms``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import results_dir, write_results
from bench.peers import import_deepinv
from diffusio.core.paths import LinearVP
from diffusio.data import GaussianMixture
from diffusio.inverse import MatrixOperator, gmm_posterior, solve
from diffusio.inverse.tasks import (
    METHOD_DEFAULTS,
    baseline,
    ground_truth,
    make_operator,
    measurement_image,
    method_options,
)
from diffusio.metrics import psnr, ssim
from diffusio.models import ExactModel


# --- 1. exact posterior ----------------------------------------------------------------------------------------------
def exact_section(n: int, seed: int) -> list[dict]:
    g = GaussianMixture(torch.tensor([[1.5, 0.0], [-1.0, 1.0], [0.0, -1.5]]), torch.tensor([0.5, 0.6, 0.4]),
                        [0.3, 0.3, 0.4])  # fmt: skip
    A, s = torch.tensor([[1.0, 0.5]], dtype=torch.float64), 0.5
    y = torch.tensor([[0.4]], dtype=torch.float64)
    post = gmm_posterior(g, A, y[0], s)
    model, op = ExactModel(g, LinearVP()), MatrixOperator(A, noise_std=s)
    runs = {
        "dps": {"steps": 500, "scale": 0.1, "grid": "uniform"},  # scale tuned over {0.01, 0.03, 0.1, 0.5}
        "pigdm": {"steps": 200},
        "reddiff": {"steps": 500, "lr": 0.05},
        "smc": {"particles": n, "steps": 200},
    }
    rows = [_exact_row("prior (no measurement)", g.sample(n, generator=torch.Generator().manual_seed(seed),
                                                           dtype=torch.float64), None, post, 0, 0.0)]  # fmt: skip
    for method, opts in runs.items():
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(seed)
        if method == "smc":
            r = solve(model, op, y, method, generator=gen, **opts)
            xs, lw = r.particles[0], r.log_weights[0]
        else:
            r = solve(model, op, y.expand(n, 1), method, generator=gen, **opts)
            xs, lw = r.x, None
        rows.append(_exact_row(method, xs, lw, post, r.nfe, time.perf_counter() - t0, opts))
    return rows


def _exact_row(name, xs, log_w, post, nfe, seconds, opts=None) -> dict:
    w = torch.full((len(xs),), 1 / len(xs), dtype=torch.float64) if log_w is None else torch.softmax(log_w, 0)
    mu = (w[:, None] * xs).sum(0)
    cov = ((xs - mu).T * w) @ (xs - mu)
    return {"method": name, "mean_error": float((mu - post.mean()).norm()),
            "cov_rel_error": float((cov - post.covariance()).norm() / post.covariance().norm()),
            "nfe": nfe, "seconds": round(seconds, 2), "options": opts or {}}  # fmt: skip


# --- 2. images -------------------------------------------------------------------------------------------------------
class _DeepinvDenoiser(torch.nn.Module):
    """Our model as deepinv's denoiser D(x, sigma) on [0, 1] images: x_ours = 2x - 1 has noise level 2 sigma."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x, sigma, *args, **kwargs):
        self.calls += 1
        path = self.model.path
        s = (2 * torch.as_tensor(sigma, dtype=torch.float64, device=x.device)).flatten().clamp(min=1e-4)
        t = path.t_of_noise_level(s.expand(x.shape[0]) if s.numel() == 1 else s).clamp(path.t_lo, path.t_hi)
        a = path.alpha(t).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (self.model.predict((2 * x - 1) * a, t, "x0") + 1) / 2


def _deepinv_run(dinv, name: str, model, op, y: torch.Tensor, noise_std: float, steps: int, seed: int):
    den = _DeepinvDenoiser(model)
    physics = dinv.physics.LinearPhysics(
        A=lambda v, **k: op(v), A_adjoint=lambda v, **k: op.adjoint(v),
        noise_model=dinv.physics.GaussianNoise(sigma=noise_std / 2), max_iter=50, tol=1e-6,
    )  # fmt: skip
    y01 = (y + op(torch.ones((1, *op.in_shape), dtype=y.dtype))) / 2  # the same measurement of (x + 1) / 2
    torch.manual_seed(seed)  # deepinv draws from the global generator
    if name == "deepinv_dps":
        # weight: deepinv documents lambda "in the hundreds" for guidance="norm"; 100 was the best of {0.1, 1, 10, 100,
        # 300, 1000} on 8 digits (inpainting, not the benchmark's images)
        solver = dinv.sampling.DPS(den, num_steps=steps, weight=100.0, rng=torch.Generator().manual_seed(seed),
                                   dtype=torch.float32)  # fmt: skip
        out = solver(y01, physics, seed=seed)
    else:
        fid = dinv.optim.data_fidelity.L2()
        out = dinv.sampling.DiffPIR(den, fid, sigma=noise_std / 2, max_iter=steps)(y01, physics)
    return 2 * out - 1, den.calls


def image_section(priors: dict, n: int, noise_std: float, seed: int, dinv, out: Path, peer_steps: dict) -> list[dict]:
    from diffusio.app.config import load_model
    from diffusio.app.plotting import save_image_grid

    rows = []
    for prior, (ckpt, tasks) in priors.items():
        if not Path(ckpt).is_file():
            print(f"skipping prior {prior}: no checkpoint at {ckpt}")
            continue
        model, cfg = load_model(ckpt)
        for task in tasks:
            x = ground_truth(cfg["data"], n, seed=1234 + seed)
            g = torch.Generator().manual_seed(seed)
            op = make_operator(task, tuple(x.shape[1:]), noise_std, generator=g)
            y = op.measure(x, generator=g)
            shown = [measurement_image(op, y)]
            methods = ["pinv", "dps", "pigdm", "reddiff"] + (["deepinv_dps", "deepinv_diffpir"] if dinv else [])
            for method in methods:
                t0 = time.perf_counter()
                if method == "pinv":
                    rec, nfe = baseline(op, y), 0
                elif method.startswith("deepinv"):
                    rec, nfe = _deepinv_run(dinv, method, model, op, y, noise_std, peer_steps[method], seed)
                else:
                    res = solve(model, op, y, method, generator=torch.Generator().manual_seed(seed),
                                **method_options(method, task))  # fmt: skip
                    rec, nfe = res.x, res.nfe
                sec = time.perf_counter() - t0
                rec = rec.detach().clamp(-1, 1)
                shown.append(rec)
                rows.append(_image_row(prior, task, method, rec, x, nfe, sec))
                print(f"{prior:9s} {task:7s} {method:16s} PSNR {rows[-1]['psnr']:6.2f}  SSIM {rows[-1]['ssim']:.3f}"
                      f"  NFE {nfe:5d}  {sec:6.1f}s")  # fmt: skip
            grid = torch.stack([*shown, x], 1)[: min(n, 6)].flatten(0, 1)
            save_image_grid(grid, out / f"inverse_{prior}_{task}.png", nrow=len(shown) + 1,
                            scale=8 if x.shape[-1] <= 16 else 4)  # fmt: skip
    return rows


def _image_row(prior, task, method, rec, x, nfe, seconds) -> dict:
    win = min(7, x.shape[-1]) | 1
    return {"prior": prior, "task": task, "method": method, "psnr": float(psnr(rec, x).mean()),
            "ssim": float(ssim(rec, x, win_size=win).mean()), "nfe": nfe, "seconds": round(seconds, 2)}  # fmt: skip


# --- 3. volume -------------------------------------------------------------------------------------------------------
def volume_section(ckpt: str, slices: int, noise_std: float, seed: int, steps: int, out: Path) -> list[dict]:
    from diffusio.app.config import load_model
    from diffusio.app.plotting import save_image_grid

    if not Path(ckpt).is_file():
        print(f"skipping ct3d: no checkpoint at {ckpt}")
        return []
    model, cfg = load_model(ckpt)
    vol = ground_truth(cfg["data"], slices, seed=4321 + seed, task="ct3d", slices=slices)
    g = torch.Generator().manual_seed(seed)
    op = make_operator("ct3d", tuple(vol.shape[1:]), noise_std, generator=g)
    y = op.measure(vol, generator=g)
    opts = {**METHOD_DEFAULTS["mbir"], "steps": steps}
    rows, shown = [], {}
    for name, tv in (("fbp (slice-wise)", None), ("2-D prior, slice-wise (tv=0)", 0.0), ("DiffusionMBIR", None)):
        t0 = time.perf_counter()
        if tv is None and name.startswith("fbp"):
            rec, nfe = baseline(op, y), 0
        else:
            o = opts if tv is None else {**opts, "tv_weight": tv}
            r = solve(model, op, y, "mbir", generator=torch.Generator().manual_seed(seed), **o)
            rec, nfe = r.x, r.nfe
        rec = rec.clamp(-1, 1)
        shown[name] = rec
        rows.append(_volume_row(name, rec, vol, nfe, time.perf_counter() - t0))
        print(f"ct3d {name:30s} PSNR {rows[-1]['psnr_volume']:.2f}  xz {rows[-1]['psnr_xz']:.2f}")
    reslice = [v[:, 0].permute(1, 0, 2)[:, None] for v in [*shown.values(), vol]]  # (H, 1, slices, W)
    mid = vol.shape[-2] // 2
    save_image_grid(torch.cat([r[mid - 2 : mid + 2] for r in reslice]), out / "inverse_ct3d_xz.png", nrow=4, scale=8)
    return rows


def _volume_row(name, rec, vol, nfe, seconds) -> dict:
    xz = lambda v: v[:, 0].permute(1, 0, 2)[:, None]  # noqa: E731 - (H, 1, slices, W): images along z
    mse = (rec.double() - vol.double()).square().mean()
    return {"method": name, "psnr_volume": float(10 * torch.log10(4 / mse)),
            "psnr_slices": float(psnr(rec, vol).mean()),
            "psnr_xz": float(psnr(xz(rec), xz(vol)).mean()), "nfe": nfe, "seconds": round(seconds, 2)}  # fmt: skip


# --- 4. diffusion with forward models --------------------------------------------------------------------------------
def forward_model_section(steps: int, seed: int) -> dict:
    """forward-models.md test 1: signals S ~ N(0, Sigma) in R^6 seen only through random 2x6 context and 4x6 target
    projections; the model never sees S. Sampled signals given one context vs the exact S | O_c."""
    from diffusio.core.paths import CosineVP
    from diffusio.inverse.forward_models import (
        ContextProjectionGen,
        ForwardModelDiffusion,
        LinearPoses,
        ObservationPairs,
        sample_signals,
        train_forward_model_diffusion,
    )

    g, d, n = torch.Generator().manual_seed(seed), 6, 20000
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    sigma = a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    pc, pt = (torch.randn(8, m, d, generator=g, dtype=torch.float64) for m in (2, 4))
    s = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(sigma).T
    ic, it = torch.randint(0, 8, (n,), generator=g), torch.randint(0, 8, (n,), generator=g)
    data = ObservationPairs(LinearPoses(pc)(s, ic).float(), ic, LinearPoses(pt)(s, it).float(), it)
    model = ForwardModelDiffusion(ContextProjectionGen(pc, pt, hidden=128, depth=3), LinearPoses(pt), CosineVP())
    t0 = time.perf_counter()
    train_forward_model_diffusion(model, data, steps=steps, batch_size=256, lr=1e-3, seed=seed)
    oc = (pc[0] @ torch.randn(d, generator=g, dtype=torch.float64)).float()
    k = 4000
    sig, _ = sample_signals(model, oc.expand(k, 2).clone(), torch.zeros(k, dtype=torch.long),
                            torch.ones(k, dtype=torch.long), steps=50, generator=g)  # fmt: skip
    sig = sig.double()
    gain = sigma @ pc[0].T @ torch.linalg.inv(pc[0] @ sigma @ pc[0].T)
    mean, cov = gain @ oc.double(), sigma - gain @ pc[0] @ sigma
    ctx = (sig @ pc[0].T - oc.double()).norm(dim=1).max() / oc.norm()
    row = {"train_steps": steps, "context_rel_error": float(ctx),
           "mean_error_rel_sqrt_trace": float((sig.mean(0) - mean).norm() / cov.trace().sqrt()),
           "cov_rel_error": float((torch.cov(sig.T) - cov).norm() / cov.norm()),
           "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    print(f"forward models: {row}")
    return row


# --- report ----------------------------------------------------------------------------------------------------------
def _markdown(exact, images, volume, env_note: str, dfm: dict | None = None) -> str:
    lines = ["# Inverse problems (issue 5)", "", env_note, "", "## Exact Gaussian-mixture posterior", "",
             "2-D three-component mixture, y = [1, 0.5] x + N(0, 0.5^2); errors of the samples' mean and covariance "
             "against the closed-form posterior (a Gaussian mixture). DPS and RED-Diff are not posterior samplers.", "",
             "| method | mean error | cov. rel. error | model calls | seconds |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    lines += [f"| {r['method']} | {r['mean_error']:.3f} | {r['cov_rel_error']:.3f} | {r['nfe']} | {r['seconds']} |"
              for r in exact]  # fmt: skip
    lines += ["", "## Images (held-out; PSNR dB / SSIM; model calls per reconstruction batch)", "",
              "| prior | task | method | PSNR | SSIM | model calls | seconds |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    lines += [f"| {r['prior']} | {r['task']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['nfe']} | "
              f"{r['seconds']} |" for r in images]  # fmt: skip
    if volume:
        lines += ["", "## 3-D sparse-view CT on a phantom volume", "",
                  "| method | PSNR volume | PSNR per slice | PSNR x-z reslices | model calls | seconds |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        lines += [f"| {r['method']} | {r['psnr_volume']:.2f} | {r['psnr_slices']:.2f} | {r['psnr_xz']:.2f} | "
                  f"{r['nfe']} | {r['seconds']} |" for r in volume]  # fmt: skip
    if dfm:
        lines += ["", "## Diffusion with forward models (linear-Gaussian toy, forward-models.md test 1)", "",
                  f"Trained {dfm['train_steps']} steps on observation pairs only. Signals sampled for one context: "
                  f"context residual {dfm['context_rel_error']:.1e} (relative), mean error "
                  f"{dfm['mean_error_rel_sqrt_trace']:.3f} sqrt(tr Cov) (brief: < 0.1), covariance relative error "
                  f"{dfm['cov_rel_error']:.3f} (brief: < 0.3)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _plot(images: list[dict], file: Path) -> None:
    from diffusio.app.plotting import _plt

    if not images:
        return
    plt = _plt()
    groups = sorted(
        {(r["prior"], r["task"]) for r in images},
        key=lambda k: [r["prior"] + r["task"] for r in images].index(k[0] + k[1]),
    )
    methods = list(dict.fromkeys(r["method"] for r in images))
    fig, ax = plt.subplots(figsize=(1.6 * len(groups) + 3, 4))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        vals = [
            next((r["psnr"] for r in images if (r["prior"], r["task"]) == gk and r["method"] == m), 0) for gk in groups
        ]
        ax.bar([i + j * width for i in range(len(groups))], vals, width, label=m)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], [f"{p}\n{t}" for p, t in groups])
    ax.set_ylabel("PSNR (dB)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench inverse", description=__doc__.split("\n")[0])
    p.add_argument("--digits", default="runs/digits/model.safetensors")
    p.add_argument("--phantoms", default="runs/phantoms/model.safetensors")
    p.add_argument("--patches", default="runs/patches/model.safetensors", help="photograph-patch prior (held-out)")
    p.add_argument("--n", type=int, default=8, help="held-out images per task")
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--mbir-steps", type=int, default=50)
    p.add_argument("--exact-samples", type=int, default=2000)
    p.add_argument("--no-peers", action="store_true", help="skip deepinv")
    p.add_argument("--dfm-steps", type=int, default=6000, help="training steps of the forward-model toy (0: skip)")
    p.add_argument("--skip", nargs="*", default=[], choices=["exact", "images", "volume"], help="sections to skip")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = results_dir(args.out)
    dinv = None if args.no_peers else import_deepinv()
    peer_steps = {"deepinv_dps": METHOD_DEFAULTS["dps"]["steps"], "deepinv_diffpir": METHOD_DEFAULTS["pigdm"]["steps"]}
    exact = [] if "exact" in args.skip else exact_section(args.exact_samples, args.seed)
    priors = {
        "digits": (args.digits, ("inpaint", "sr", "deblur")),
        "patches": (args.patches, ("inpaint", "deblur")),
        "phantoms": (args.phantoms, ("mri", "ct")),
    }
    images = (
        [] if "images" in args.skip else image_section(priors, args.n, args.noise, args.seed, dinv, out, peer_steps)
    )
    volume = [] if "volume" in args.skip else volume_section(args.phantoms, args.slices, args.noise, args.seed,
                                                             args.mbir_steps, out)  # fmt: skip
    dfm = forward_model_section(args.dfm_steps, args.seed) if args.dfm_steps > 0 else None
    note = (f"noise std {args.noise} on [-1, 1] images, {args.n} held-out images per task, seed {args.seed}; "
            f"deepinv {getattr(dinv, '__version__', 'not installed')}.")  # fmt: skip
    payload = {"exact": exact, "images": images, "volume": volume, "forward_models": dfm, "args": vars(args)}
    write_results(out, "inverse", payload, _markdown(exact, images, volume, note, dfm))
    _plot(images, out / "inverse.png")
    print(f"wrote {out / 'inverse.json'}, {out / 'inverse.md'}, {out / 'inverse.png'}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
