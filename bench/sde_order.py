"""``diffusio bench sde-order``: measured weak order of the stochastic samplers.

The weak error of a sampler at ``n`` steps is E[phi(x)] - E_exact[phi(x)] at t_min for phi(x) = x^2 (E[x] is shown
too), on the linear VP path with a logSNR-uniform grid, starting from the exact marginal at t_max (not the Gaussian
prior) so that the only error left is the sampler's. Two problems: (1) 1-D Gaussian data, where every sampler is affine
in its start and its normal draws, so the moments of its output are computed exactly (no Monte Carlo error; see
``gaussian_weak_errors``); (2) a 1-D two-component Gaussian mixture (a nonlinear denoiser), where the expectations are
Monte Carlo means over ``--samples`` draws and an error counts as resolved only when it is at least ``MIN_SNR``
standard errors away from zero. The measured order is the slope of log |error| against log n between the two finest
resolved step counts (a least-squares slope over the finest resolved points of one sign is shown beside it); it
passes within 0.3 of the order the registry declares, and is "unresolved" where no two successive errors are both
resolved and of one sign (the error is lost in the Monte Carlo noise, or crosses zero). Multistep samplers run
without lower-order final steps, so that every step count uses the same method. Writes ``sde_order.{json,md}`` to
``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time

import torch

from diffusio.core.paths import LinearVP
from diffusio.data import GaussianMixture
from diffusio.io import save_json
from diffusio.models import ExactModel
from diffusio.samplers import SOLVERS, sample

OPTIONS: dict[str, dict] = {
    "euler_maruyama": {},
    "ddpm": {},
    "dpmpp_2m_sde": {"lower_order_final": False},
    "dpmpp_3m_sde": {"lower_order_final": False},
}
GAUSSIAN_STEPS = (16, 32, 64, 128, 256)
# Monte Carlo step counts: coarse enough that the weak error stands out of the noise (the high-order samplers reach
# it within a few dozen steps), fine enough to be past the pre-asymptotic regime
MIXTURE_STEPS: dict[str, tuple[int, ...]] = {
    "euler_maruyama": (16, 32, 64, 128),
    "ddpm": (16, 32, 64, 128),
    "dpmpp_2m_sde": (12, 16, 24, 32, 48),
    "dpmpp_3m_sde": (12, 16, 24, 32),
}
MIN_SNR = 4.0
TOLERANCE = 0.3
WEIGHTS, MEANS, STDS = (0.4, 0.6), (-1.0, 1.0), (0.5, 0.6)


def mixture() -> GaussianMixture:
    return GaussianMixture(torch.tensor([[m] for m in MEANS]), torch.tensor(STDS), list(WEIGHTS))


def exact_moments(path, t: float) -> tuple[float, float]:
    """E[x], E[x^2] of the mixture's marginal at ``t``: components N(alpha mu, alpha^2 s^2 + sigma^2)."""
    t = torch.tensor(t, dtype=torch.float64)
    a, s = float(path.alpha(t)), float(path.sigma(t))
    m1 = sum(w * a * mu for w, mu in zip(WEIGHTS, MEANS))
    m2 = sum(w * ((a * mu) ** 2 + (a * sd) ** 2 + s**2) for w, mu, sd in zip(WEIGHTS, MEANS, STDS))
    return m1, m2


def weak_errors(name: str, steps, samples: int, chunk: int = 250_000, seed: int = 0, **opts) -> list[dict]:
    """Weak errors of ``name`` at each step count: {steps, err_mean, se_mean, err_m2, se_m2, seconds}."""
    g, path = mixture(), LinearVP()
    model = ExactModel(g, path)
    t_hi = torch.full((1,), path.t_max, dtype=torch.float64)
    m1, m2 = exact_moments(path, path.t_min)
    rows = []
    for n in steps:
        s1 = s2 = s4 = 0.0
        done, t0 = 0, time.time()
        while done < samples:
            k = min(chunk, samples - done)
            gen = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * n + done)
            x0 = g.sample(k, generator=gen, dtype=torch.float64)
            xt = path.perturb(x0, torch.randn(x0.shape, generator=gen, dtype=torch.float64), t_hi.expand(k))
            y = sample(model, xt, solver=name, steps=n, grid="logsnr", generator=gen, **opts).x[:, 0]
            s1, s2, s4 = s1 + float(y.sum()), s2 + float((y**2).sum()), s4 + float((y**4).sum())
            done += k
        e1, e2 = s1 / samples, s2 / samples
        rows.append(
            {
                "steps": n,
                "err_mean": e1 - m1,
                "se_mean": math.sqrt(max(e2 - e1**2, 0.0) / samples),
                "err_m2": e2 - m2,
                "se_m2": math.sqrt(max(s4 / samples - e2**2, 0.0) / samples),
                "seconds": time.time() - t0,
            }
        )
    return rows


def gaussian_weak_errors(name: str, steps, mean: float = 0.5, std: float = 0.5, seed: int = 0, **opts) -> list[dict]:
    """Exact weak errors on 1-D Gaussian data N(mean, std^2), where the denoiser is linear in x.

    Every sampler here is then affine in its start x_T and the normal draws z_1..z_n it takes (one ``randn`` of
    x's shape per step): x_0 = m + M x_T + sum_k c_k z_k. Running it on a batch of n + 16 starts and replaying the
    same generator gives those draws, so a least-squares fit recovers (m, M, c) exactly (the residual is checked),
    and the mean and second moment of x_0 follow in closed form without any Monte Carlo error."""
    path = LinearVP()
    model = ExactModel(GaussianMixture(torch.tensor([[mean]]), torch.tensor([std]), [1.0]), path)
    hi, lo = (torch.tensor(t, dtype=torch.float64) for t in (path.t_max, path.t_min))
    mu_t, var_t = float(path.alpha(hi)) * mean, float(path.alpha(hi) * std) ** 2 + float(path.sigma(hi)) ** 2
    m1 = float(path.alpha(lo)) * mean
    m2 = m1**2 + float(path.alpha(lo) * std) ** 2 + float(path.sigma(lo)) ** 2
    rows = []
    for n in steps:
        x_t = torch.linspace(-3.0, 3.0, n + 16, dtype=torch.float64)[:, None]
        y = sample(
            model, x_t, solver=name, steps=n, grid="logsnr", generator=torch.Generator().manual_seed(seed), **opts
        )
        replay = torch.Generator().manual_seed(seed)
        z = [torch.randn(x_t.shape, generator=replay, dtype=torch.float64)[:, 0] for _ in range(n)]
        design = torch.stack([torch.ones_like(x_t[:, 0]), x_t[:, 0], *z], 1)
        coef = torch.linalg.lstsq(design, y.x[:, 0:1]).solution[:, 0]
        residual = float((design @ coef - y.x[:, 0]).abs().max())
        if residual > 1e-9 * float(y.x.abs().max()):
            raise RuntimeError(f"{name}: the sampler's noise could not be replayed (residual {residual:.1e})")
        mean_0 = float(coef[0] + coef[1] * mu_t)
        second = mean_0**2 + float(coef[1]) ** 2 * var_t + float((coef[2:] ** 2).sum())
        rows.append({"steps": n, "err_mean": mean_0 - m1, "se_mean": 0.0, "err_m2": second - m2, "se_m2": 0.0})
    return rows


def resolved(row: dict, key: str = "m2", min_snr: float = MIN_SNR) -> bool:
    return abs(row[f"err_{key}"]) >= min_snr * row[f"se_{key}"]


def slopes(rows: list[dict], key: str = "m2", min_snr: float = MIN_SNR) -> list[float | None]:
    """Slopes -d log|err| / d log n between successive step counts; None unless both errors are resolved and of
    the same sign."""
    out = []
    for a, b in itertools.pairwise(rows):
        ea, eb = a[f"err_{key}"], b[f"err_{key}"]
        ok = resolved(a, key, min_snr) and resolved(b, key, min_snr) and ea * eb > 0
        out.append(math.log(abs(ea) / abs(eb)) / math.log(b["steps"] / a["steps"]) if ok else None)
    return out


def fitted_order(rows: list[dict], key: str = "m2", min_snr: float = MIN_SNR) -> float | None:
    """Least-squares slope of -log|err| on log n over the finest resolved points of one sign (None with fewer than
    two): across a sign change |err| passes through zero and says nothing about the order."""
    found = [r for r in rows if resolved(r, key, min_snr)]
    while len(found) > 1 and found[0][f"err_{key}"] * found[-1][f"err_{key}"] <= 0:
        found = found[1:]
    pts = [(math.log(r["steps"]), math.log(abs(r[f"err_{key}"]))) for r in found]
    if len(pts) < 2:
        return None
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    return -sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def measured_order(rows: list[dict], key: str = "m2", min_snr: float = MIN_SNR) -> float | None:
    """The slope between the finest two successive resolved step counts."""
    found = [s for s in slopes(rows, key, min_snr) if s is not None]
    return found[-1] if found else None


def summarize(name: str, rows: list[dict]) -> dict:
    declared, order = SOLVERS[name].order, measured_order(rows)
    return {
        "rows": rows,
        "slopes_m2": slopes(rows),
        "measured": order,
        "fitted": fitted_order(rows),
        "pass": None if order is None else abs(order - declared) <= TOLERANCE,
    }


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


VERDICT = {True: "pass", False: "FAIL", None: "unresolved"}
PROBLEMS = {"gaussian": "Gaussian data, exact moments", "mixture": "two-component mixture, Monte Carlo"}


def markdown(results: dict) -> str:
    lines = ["# Weak order of the stochastic samplers", "", " ".join(__doc__.split("\n\n")[1].split()), ""]
    lines += [
        f"Monte Carlo samples per run: {results['samples']:,}; resolved: |error| >= {results['min_snr']:g} standard"
        f" errors. Reproduce: `{results['command']}`.",
        "",
        "| solver | declared weak order | "
        + " | ".join(f"{p}: measured (least-squares) | within {TOLERANCE}" for p in PROBLEMS.values())
        + " |",
        "| --- | --- |" + " --- | --- |" * len(PROBLEMS),
    ]
    for name, res in results["solvers"].items():
        cells = [f"{_f(res[p]['measured'])} ({_f(res[p]['fitted'])}) | {VERDICT[res[p]['pass']]}" for p in PROBLEMS]
        lines.append(f"| {name} | {res['declared']} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, res in results["solvers"].items():
        opts = ", ".join(f"{k}={v}" for k, v in res["options"].items())
        lines += [f"## {name} (declared order {res['declared']}{'; ' + opts if opts else ''})", ""]
        for p, title in PROBLEMS.items():
            if p not in res:
                continue
            lines += [
                f"{title}:",
                "",
                "| steps | error E[x^2] (s.e.) | slope | error E[x] (s.e.) |",
                "|---|---|---|---|",
            ]
            for r, s in zip(res[p]["rows"], [None, *res[p]["slopes_m2"]]):
                se2, se1 = (f"({r[k]:.1e})" if r[k] > 0 else "(exact)" for k in ("se_m2", "se_mean"))
                lines.append(f"| {r['steps']} | {r['err_m2']:+.3e} {se2} | {_f(s)} | {r['err_mean']:+.2e} {se1} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench sde-order", description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=2_000_000, help="Monte Carlo draws per step count (mixture)")
    p.add_argument("--solvers", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    p.add_argument("--out", default="bench/results")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", metavar="JSON", help="only rewrite the summaries and markdown of a saved run")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.report:
        return _report(a.report, a.out)
    command = f"diffusio bench sde-order --samples {a.samples} --solvers {' '.join(a.solvers)}"
    results = {"samples": a.samples, "min_snr": MIN_SNR, "command": command, "solvers": {}}
    for name in a.solvers:
        opts = OPTIONS[name]
        res = results["solvers"][name] = {"declared": SOLVERS[name].order, "options": opts}
        t0 = time.time()
        res["gaussian"] = summarize(name, gaussian_weak_errors(name, GAUSSIAN_STEPS, **opts))
        res["mixture"] = summarize(name, weak_errors(name, MIXTURE_STEPS[name], a.samples, **opts))
        got = ", ".join(f"{p} {_f(res[p]['measured'])}" for p in PROBLEMS)
        print(f"{name}: declared {res['declared']}, measured {got} ({time.time() - t0:.0f}s)", flush=True)
    os.makedirs(a.out, exist_ok=True)
    save_json(results, os.path.join(a.out, "sde_order.json"))
    md = markdown(results)
    with open(os.path.join(a.out, "sde_order.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


def _report(saved: str, out: str) -> int:
    """Recompute the verdicts of a saved run from its raw errors (the rows) with this code; rewrite JSON and md."""
    with open(saved) as f:
        results = json.load(f)
    for name, res in results["solvers"].items():
        res["declared"] = SOLVERS[name].order
        for p in PROBLEMS:
            res[p] = summarize(name, res[p]["rows"])
    os.makedirs(out, exist_ok=True)
    save_json(results, os.path.join(out, "sde_order.json"))
    md = markdown(results)
    with open(os.path.join(out, "sde_order.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    main()
