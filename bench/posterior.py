"""Exact posteriors (issue 10): ``diffusio bench posterior``.

Every case has a closed-form posterior: a d = 16 prior (one anisotropic Gaussian, or a two-component mixture whose
modes the measurement cannot tell apart well) on 1x4x4 images, an 8x16 Gaussian matrix or a 50% inpainting mask,
sigma_y = 1 and 0.1, on the VP (linear) and EDM paths, with the exact denoiser of the prior as the model
(``ExactModel``), so every error is the method's own. Each method's N samples are scored by the error of their
(weighted) mean and covariance (Frobenius) in multiples of the *floor*: the median error of N exact posterior draws
over ``--floor-draws`` repetitions. On the bimodal cases the posterior mass of each mode is compared with the exact
one in Monte-Carlo standard deviations sqrt(w (1 - w) / N). Methods: diffusio's SMC (defaults and the AFDPS
variants), DPS, PiGDM, DDRM, RED-Diff (a point estimate: mean error only) and deepinv 0.5's DPS, PiGDM and
moment-matching posterior diffusions, DiffPIR and DDRM on the same exact denoiser (wrapped as deepinv's [0, 1]
denoiser) and the same operator; model calls and seconds per sample. SMC is also run with 10x the particles to
check the 1/sqrt(N) rate. Writes ``posterior.json``, ``posterior.md`` and ``posterior.png`` to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from tqdm import tqdm

from bench.common import results_dir, write_results
from bench.peers import DeepinvDenoiser, import_deepinv
from diffusio.core.paths import EDM, LinearVP
from diffusio.data import GaussianMixture
from diffusio.inverse import Inpainting, MatrixOperator, gmm_posterior, solve
from diffusio.models.exact import ExactModel

SHAPE = (1, 4, 4)
D = 16
F64 = torch.float64


# --- cases -----------------------------------------------------------------------------------------------------
def make_case(prior: str, op: str, sigma_y: float, seed: int = 0):
    """(prior mixture, operator, A (m, D), y (1, m), exact posterior) for one cell."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=F64))
    if op == "matrix":
        A = torch.randn(8, D, generator=g, dtype=F64) / math.sqrt(D) * 2
        operator = MatrixOperator(A, noise_std=sigma_y, in_shape=SHAPE)
        null = torch.eye(D, dtype=F64) - torch.linalg.pinv(A) @ A
    else:
        mask = torch.zeros(D, dtype=F64)
        mask[torch.randperm(D, generator=g)[: D // 2]] = 1
        operator = Inpainting(mask.reshape(4, 4), shape=SHAPE, noise_std=sigma_y)
        A = torch.diag(mask)
        null = torch.diag(1 - mask)
    if prior == "gaussian":
        cov = q @ torch.diag(torch.linspace(0.2, 1.5, D, dtype=F64)) @ q.T
        mixture = GaussianMixture(0.2 * torch.ones(1, *SHAPE, dtype=F64), cov[None])
    else:  # modes mostly along an unobserved direction: the posterior stays bimodal
        u = null @ torch.randn(D, generator=g, dtype=F64) + 0.1 * torch.randn(D, generator=g, dtype=F64)
        u = 1.5 * u / u.norm()
        c = q @ torch.diag(torch.linspace(0.05, 0.4, D, dtype=F64)) @ q.T
        mixture = GaussianMixture(torch.stack([u, -u]).reshape(2, *SHAPE), torch.stack([c, c]), [0.5, 0.5])
    x = mixture.sample(1, generator=g).to(F64)
    y = operator(x) + sigma_y * torch.randn((1, *operator.out_shape), generator=g, dtype=F64)
    if op == "inpainting":
        y = y * operator.mask.to(y)
    post = gmm_posterior(mixture, A, y.flatten(1)[0], sigma_y)
    return mixture, operator, y, post


def moments(xs: torch.Tensor, log_w: torch.Tensor | None):
    xs = xs.reshape(len(xs), -1).to(F64)
    w = torch.full((len(xs),), 1 / len(xs), dtype=F64) if log_w is None else torch.softmax(log_w.to(F64), 0)
    mu = (w[:, None] * xs).sum(0)
    cov = ((xs - mu).T * w) @ (xs - mu)
    if log_w is None:
        cov = cov * len(xs) / (len(xs) - 1)
    return mu, cov


def errors(post: GaussianMixture, xs, log_w=None) -> tuple[float, float]:
    mu, cov = moments(xs, log_w)
    return float((mu - post.mean().reshape(-1)).norm()), float((cov - post.covariance()).norm())


def floor(post: GaussianMixture, n: int, draws: int, seed: int = 123) -> tuple[float, float]:
    """Median mean and covariance error of n exact posterior draws over ``draws`` repetitions."""
    g = torch.Generator().manual_seed(seed)
    errs = np.array([errors(post, post.sample(n, generator=g)) for _ in range(draws)])
    return float(np.median(errs[:, 0])), float(np.median(errs[:, 1]))


def mode_weights(post: GaussianMixture, xs, log_w=None) -> list[float]:
    """Posterior mass of each component: samples assigned to the component of highest responsibility."""
    xs = xs.reshape(len(xs), -1).to(F64)
    w = torch.full((len(xs),), 1 / len(xs), dtype=F64) if log_w is None else torch.softmax(log_w.to(F64), 0)
    comps = [GaussianMixture(post.means[k : k + 1], post_cov(post)[k : k + 1]) for k in range(post.K)]
    resp = torch.stack([post.log_weights[k] + comps[k].log_prob(xs) for k in range(post.K)], 1).argmax(1)
    return [float(w[resp == k].sum()) for k in range(post.K)]


def post_cov(post: GaussianMixture) -> torch.Tensor:
    from diffusio.inverse.exact import component_covariances

    return component_covariances(post)


# --- methods ---------------------------------------------------------------------------------------------------
def run_diffusio(method: str, model, operator, y, n: int, opts: dict, seed: int):
    """(samples (n, D), log-weights or None, model calls per sample)."""
    gen = torch.Generator().manual_seed(seed)
    if method == "smc":
        r = solve(model, operator, y, "smc", particles=n, generator=gen, **opts)
        return r.particles[0], r.log_weights[0], r.nfe
    r = solve(model, operator, y.expand(n, *y.shape[1:]).contiguous(), method, generator=gen, **opts)
    return r.x, None, r.nfe


def _svd(A: torch.Tensor):
    u, s, vh = torch.linalg.svd(A, full_matrices=True)
    return u, s, vh


def run_deepinv(dinv, name: str, model, operator, A, y, n: int, sigma_y: float, steps: int, seed: int):
    """deepinv on the same prior and operator in its [0, 1] convention: x01 = (x + 1) / 2, sigma01 = sigma_y / 2."""
    dtype = torch.float32
    den = DeepinvDenoiser(model, clamp="sampling")
    A32 = A.to(dtype)
    u, s, vh = _svd(A32)
    m = A.shape[0]
    svals = torch.zeros(D, dtype=dtype)
    svals[: min(m, D)] = s[: min(m, D)]
    noise = dinv.physics.GaussianNoise(sigma=sigma_y / 2)
    if name == "deepinv_ddrm":  # SVD form: A x = U S V^T x, padded to D singular values

        def vt(x, **k):
            return (x.flatten(1) @ vh.T).reshape(x.shape[0], *SHAPE)

        def v(z, **k):
            return (z.flatten(1) @ vh).reshape(z.shape[0], *SHAPE)

        def ut(yy, **k):
            out = torch.zeros(yy.shape[0], D, dtype=yy.dtype)
            out[:, :m] = yy.flatten(1) @ u
            return out.reshape(yy.shape[0], *SHAPE)

        def uu(z, **k):
            return z.flatten(1)[:, :m] @ u.T

        physics = dinv.physics.DecomposablePhysics(
            U=uu, U_adjoint=ut, V=v, V_adjoint=vt, mask=svals.reshape(1, *SHAPE), noise_model=noise
        )
    else:
        physics = dinv.physics.LinearPhysics(
            A=lambda v, **k: v.flatten(1) @ A32.T,
            A_adjoint=lambda yy, **k: (yy @ A32).reshape(yy.shape[0], *SHAPE),
            noise_model=noise,
        )
    ones = torch.ones((1, *SHAPE), dtype=dtype)
    y01 = ((y.to(dtype).flatten(1) + ones.flatten(1) @ A32.T) / 2).expand(n, m).contiguous()
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    if name == "deepinv_dps":
        out = dinv.sampling.DPS(den, num_steps=steps, weight=1.0, rng=rng, dtype=dtype)(y01, physics, seed=seed)
    elif name == "deepinv_diffpir":
        out = dinv.sampling.DiffPIR(den, dinv.optim.data_fidelity.L2(), sigma=sigma_y / 2, max_iter=steps)(y01, physics)
    elif name == "deepinv_ddrm":
        out = dinv.sampling.DDRM(den, sigmas=np.linspace(1, 0, steps))(y01, physics, seed=seed)
    else:
        fid = {"deepinv_pigdm": dinv.sampling.PiGDMDataFidelity, "deepinv_mm": dinv.sampling.MomentMatchingDataFidelity}
        sde = dinv.sampling.VariancePreservingDiffusion(denoiser=den, dtype=dtype, rng=rng)
        solver = dinv.sampling.PosteriorDiffusion(
            data_fidelity=fid[name](denoiser=den), denoiser=den, sde=sde, dtype=dtype,
            solver=dinv.sampling.EulerSolver(timesteps=np.linspace(1, 1e-3, steps + 1), rng=rng),
        )  # fmt: skip
        out = solver(y01, physics, seed=seed)
    return (2 * out.to(F64) - 1).reshape(n, -1), None, den.calls


# --- the run ------------------------------------------------------------------------------------------------------
OURS = {  # name: (method, options, samples); SMC's sample count is its particle count
    "smc": ("smc", {}, None),
    "smc_afdps_sde": ("smc", {"twist": "likelihood"}, None),
    "smc_afdps_ode": ("smc", {"twist": "likelihood", "eta": 0.0}, None),
    "dps": ("dps", {"steps": 200}, 1000),
    "dps_paper_rule": ("dps", {"steps": 200, "step_rule": "paper"}, 1000),
    "pigdm": ("pigdm", {"steps": 50}, 1000),
    "ddrm": ("ddrm", {"steps": 20}, 1000),
    "reddiff": ("reddiff", {"steps": 100}, 1000),
}
PEERS = ("deepinv_dps", "deepinv_pigdm", "deepinv_mm", "deepinv_diffpir", "deepinv_ddrm")


def cell_rows(prior, op, sigma_y, path, args, dinv) -> list[dict]:
    mixture, operator, y, post = make_case(prior, op, sigma_y)
    model = ExactModel(mixture, path)
    A = operator.A.double() if op == "matrix" else torch.diag(operator.mask.double().flatten())
    exact_w = post.log_weights.exp().tolist()
    floors: dict[int, tuple[float, float]] = {}
    rows = []

    def score(name, xs, log_w, nfe, seconds, n, seed, point=False):
        if n not in floors:
            floors[n] = floor(post, n, args.floor_draws)
        em, ec = errors(post, xs, log_w)
        fm, fc = floors[n]
        row = {"prior": prior, "operator": op, "sigma_y": sigma_y, "path": path.name, "method": name, "n": n,
               "seed": seed, "mean_error": em, "mean_ratio": em / fm, "floor_mean": fm,
               "cov_error": None if point else ec, "cov_ratio": None if point else ec / fc, "floor_cov": fc,
               "nfe_per_sample": nfe, "seconds_per_sample": seconds / n}  # fmt: skip
        if post.K > 1 and not point:
            mw = mode_weights(post, xs, log_w)
            sd = math.sqrt(exact_w[0] * (1 - exact_w[0]) / n)
            row.update(mode_weight=mw[0], exact_mode_weight=exact_w[0], mode_sd=sd, mode_z=(mw[0] - exact_w[0]) / sd)
        rows.append(row)

    for name in args.methods:
        if name in OURS:
            method, opts, n = OURS[name]
            seeds = range(args.smc_seeds) if name == "smc" else range(1)
            big = name == "smc" and (prior, op, sigma_y) in BIG_N
            ns = [args.particles] + ([10 * args.particles] if big else [])
            for n_run in ns if n is None else [min(n, args.samples)]:
                for seed in seeds if n_run == args.particles or n is not None else range(1):
                    t0 = time.perf_counter()
                    xs, lw, nfe = run_diffusio(method, model, operator, y, n_run, opts, seed)
                    score(name, xs, lw, nfe, time.perf_counter() - t0, n_run, seed, point=name == "reddiff")
        elif dinv is not None:
            n = min(args.samples, args.peer_samples)
            t0 = time.perf_counter()
            xs, lw, nfe = run_deepinv(dinv, name, model, operator, A, y, n, sigma_y, args.peer_steps, 0)
            if not torch.isfinite(xs).all():
                raise FloatingPointError(f"{name} returned non-finite samples on {prior}/{op}/{sigma_y}/{path.name}")
            score(name, xs, lw, nfe, time.perf_counter() - t0, n, 0)
    return rows


BIG_N = {("gaussian", "matrix", 0.1)}  # cells where SMC also runs with 10x the particles


def summarise(rows: list[dict]) -> list[dict]:
    """One line per (cell, method, n): medians over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["prior"], r["operator"], r["sigma_y"], r["path"], r["method"], r["n"]), []).append(r)
    out = []
    for key, rs in groups.items():
        med = {k: float(np.median([r[k] for r in rs])) for k in ("mean_ratio", "nfe_per_sample", "seconds_per_sample")}
        cov = [r["cov_ratio"] for r in rs if r["cov_ratio"] is not None]
        med["cov_ratio"] = float(np.median(cov)) if cov else None
        med["mean_error"] = float(np.median([r["mean_error"] for r in rs]))
        med["cov_error"] = float(np.median(cov)) * rs[0]["floor_cov"] if cov else None
        if "mode_z" in rs[0]:
            med["mode_z_max"] = float(max(abs(r["mode_z"]) for r in rs))
            med["mode_weights"] = [round(r["mode_weight"], 3) for r in rs]
            med["exact_mode_weight"] = rs[0]["exact_mode_weight"]
        out.append(dict(zip(("prior", "operator", "sigma_y", "path", "method", "n"), key, strict=True)) | med)
    return out


def targets(summary: list[dict], particles: int) -> dict:
    smc = [s for s in summary if s["method"] == "smc" and s["n"] == particles]
    gauss = [s for s in smc if s["prior"] == "gaussian"]
    bi = [s for s in smc if s["prior"] == "bimodal"]
    worst = {
        "gaussian_worst_mean_ratio": max(s["mean_ratio"] for s in gauss) if gauss else None,
        "gaussian_worst_cov_ratio": max(s["cov_ratio"] for s in gauss) if gauss else None,
        "bimodal_worst_mean_ratio": max(s["mean_ratio"] for s in bi) if bi else None,
        "bimodal_worst_cov_ratio": max(s["cov_ratio"] for s in bi) if bi else None,
        "bimodal_worst_mode_z": max(s["mode_z_max"] for s in bi) if bi else None,
    }
    rate = []
    for s in summary:
        if s["method"] == "smc" and s["n"] == 10 * particles:
            base = next(b for b in smc if all(b[k] == s[k] for k in ("prior", "operator", "sigma_y", "path")))
            rate.append({k: s[k] for k in ("prior", "operator", "sigma_y", "path")} | {
                "mean_error_shrink": base["mean_error"] / s["mean_error"],
                "cov_error_shrink": base["cov_error"] / s["cov_error"], "mean_ratio_at_10n": s["mean_ratio"],
                "cov_ratio_at_10n": s["cov_ratio"]})  # fmt: skip
    worst["shrink_10x_particles"] = rate
    worst["expected_shrink"] = math.sqrt(10)
    return worst


def markdown(summary: list[dict], tg: dict, args, dinv) -> str:
    lines = [
        "# Exact posteriors: error in multiples of the exact sampler's floor",
        "",
        f"`diffusio bench posterior` (particles {args.particles}, samples {args.samples}, deepinv samples "
        f"{args.peer_samples} with {args.peer_steps} steps, floor: median of {args.floor_draws} exact draws of the "
        f"same size; deepinv {getattr(dinv, '__version__', 'not installed')}). Ratio 1 = as good as exact sampling "
        "with the same number of samples. RED-Diff is an optimiser: its row is a point estimate (mean error only)."
        + (f" {args.note}" if getattr(args, "note", None) else ""),
        "",
        "## Targets (SMC, weighted ensemble)",
        "",
        f"- Gaussian prior, worst cell: mean {tg['gaussian_worst_mean_ratio']:.2f}x, covariance "
        f"{tg['gaussian_worst_cov_ratio']:.2f}x (target 1.5x)",
        f"- Bimodal prior, worst cell: mean {tg['bimodal_worst_mean_ratio']:.2f}x, covariance "
        f"{tg['bimodal_worst_cov_ratio']:.2f}x (target 3x); mode weight worst |z| {tg['bimodal_worst_mode_z']:.2f} "
        "(target 3 MC standard deviations)",
        f"- 10x particles: errors shrink by (expected sqrt(10) = {tg['expected_shrink']:.2f}):",
    ]
    for r in tg["shrink_10x_particles"]:
        lines.append(
            f"  - {r['prior']}/{r['operator']}/sigma_y={r['sigma_y']}/{r['path']}: mean {r['mean_error_shrink']:.2f}, "
            f"covariance {r['cov_error_shrink']:.2f} (ratios at 10x: {r['mean_ratio_at_10n']:.2f}, "
            f"{r['cov_ratio_at_10n']:.2f})"
        )
    lines += ["", "## All cells", "", "| prior | operator | sigma_y | path | method | N | mean / floor | cov / floor | "
              "mode weight (exact) | calls/sample | ms/sample |", "|" + "---|" * 11]  # fmt: skip
    for s in summary:
        cov = "point estimate" if s["cov_ratio"] is None else f"{s['cov_ratio']:.2f}"
        mode = f"{s['mode_weights']} ({s['exact_mode_weight']:.3f})" if "mode_weights" in s else ""
        lines.append(
            f"| {s['prior']} | {s['operator']} | {s['sigma_y']} | {s['path']} | {s['method']} | {s['n']} | "
            f"{s['mean_ratio']:.2f} | {cov} | {mode} | {s['nfe_per_sample']:.0f} | "
            f"{1e3 * s['seconds_per_sample']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted({(s["prior"], s["operator"], s["sigma_y"], s["path"]) for s in summary})
    methods = list(dict.fromkeys(s["method"] for s in summary))
    fig, axes = plt.subplots(2, 1, figsize=(max(10, len(cells) * 0.9), 8), sharex=True)
    width = 0.8 / len(methods)
    for ax, key in zip(axes, ("mean_ratio", "cov_ratio"), strict=True):
        for j, m in enumerate(methods):
            vals = []
            for c in cells:
                hit = [s for s in summary if (s["prior"], s["operator"], s["sigma_y"], s["path"]) == c
                       and s["method"] == m and s["n"] == min(x["n"] for x in summary if x["method"] == m)]  # fmt: skip
                v = hit[0][key] if hit and hit[0][key] is not None else np.nan
                vals.append(v)
            ax.bar(np.arange(len(cells)) + j * width, vals, width, label=m, color=plt.cm.tab20(j % 20))
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.5, color="k", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_ylabel(f"{key.replace('_', ' ')} (x floor)")
    axes[1].set_xticks(np.arange(len(cells)) + 0.4, ["/".join(map(str, c)) for c in cells], rotation=60, ha="right")
    axes[0].legend(ncol=4, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench posterior", description=__doc__.split("\n\n")[0])
    p.add_argument("--particles", type=int, default=2000, help="SMC particles (also run at 10x on two cells)")
    p.add_argument("--samples", type=int, default=1000, help="samples of the sampling methods")
    p.add_argument("--peer-samples", type=int, default=500, help="samples of each deepinv method")
    p.add_argument("--peer-steps", type=int, default=100, help="deepinv steps")
    p.add_argument("--smc-seeds", type=int, default=3, help="SMC seeds per cell (medians reported)")
    p.add_argument("--floor-draws", type=int, default=25, help="exact draws behind each floor (median)")
    p.add_argument("--methods", nargs="+", default=[*OURS, *PEERS])
    p.add_argument("--paths", nargs="+", default=["vp_linear", "edm"], choices=["vp_linear", "edm"])
    p.add_argument("--no-peers", action="store_true", help="skip deepinv")
    p.add_argument("--out", default=None)
    p.add_argument("--note", default=None, help="a sentence for the report's header (how a merged table was made)")
    p.add_argument("--merge", nargs="+", default=None, help="posterior.json files of partial runs (e.g. one per "
                   "--paths) to combine into one report instead of running")  # fmt: skip
    args = p.parse_args(argv)
    for m in args.methods:
        if m not in OURS and m not in PEERS:
            p.error(f"unknown method {m!r}; valid: {', '.join([*OURS, *PEERS])}")
    torch.set_num_threads(1)
    dinv = None if args.no_peers else import_deepinv()
    paths = {"vp_linear": LinearVP(), "edm": EDM()}
    cells = [(pr, op, sy, paths[pa]) for pr in ("gaussian", "bimodal") for op in ("matrix", "inpainting")
             for sy in (1.0, 0.1) for pa in args.paths]  # fmt: skip
    rows = []
    if args.merge:
        import json

        for f in args.merge:
            rows += json.loads(open(f).read())["rows"]
        args.paths = sorted({r["path"] for r in rows})
    else:
        for cell in tqdm(cells, desc="posterior cells"):
            rows += cell_rows(*cell, args, dinv)
    summary = summarise(rows)
    tg = targets(summary, args.particles)
    out = results_dir(args.out)
    payload = {"config": vars(args), "targets": tg, "summary": summary, "rows": rows}
    write_results(out, "posterior", payload, markdown(summary, tg, args, dinv))
    plot(summary, out / "posterior.png")
    print(markdown(summary, tg, args, dinv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
