"""``diffusio bench sde-order``: measured weak order of the stochastic samplers.

The weak error of a sampler at ``n`` steps is |E[phi(x)] - E_exact[phi(x)]| at t_min for phi(x) = x and x^2, on a
1-D two-component Gaussian mixture (dpm-solver-v3.md's test mixture) on the linear VP path, where the marginal at
t_min is an exact mixture. Starting points are drawn from the exact marginal at t_max (not the Gaussian prior), so
the only error left is the sampler's. Expectations are Monte Carlo means over ``--samples`` draws; the slope of
log error against log steps is reported only where the error is well above the Monte Carlo standard error.
Writes ``sde_order.{json,md}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import time

import torch

from ..data import GaussianMixture
from ..io import save_json
from ..paths import LinearVP
from ..samplers import SOLVERS, sample

SOLVER_NAMES = ("euler_maruyama", "ddpm", "dpmpp_2m_sde", "dpmpp_3m_sde")
STEPS = (8, 16, 32, 64, 128)


WEIGHTS, MEANS, STDS = (0.4, 0.6), (-1.0, 1.0), (0.5, 0.6)


def _exact_moments(path, t) -> tuple[float, float]:
    """E[x], E[x^2] of the mixture's marginal at ``t``: components N(alpha mu, alpha^2 s^2 + sigma^2)."""
    a, s = float(path.alpha(t)), float(path.sigma(t))
    m1 = sum(w * a * mu for w, mu in zip(WEIGHTS, MEANS))
    m2 = sum(w * ((a * mu) ** 2 + (a * sd) ** 2 + s**2) for w, mu, sd in zip(WEIGHTS, MEANS, STDS))
    return m1, m2


def weak_errors(name: str, steps, samples: int, chunk: int = 500_000) -> list[dict]:
    g = GaussianMixture(torch.tensor([[m] for m in MEANS]), torch.tensor(STDS), list(WEIGHTS))
    path = LinearVP()
    model = g.as_model(path)
    t_hi = torch.tensor(path.t_max, dtype=torch.float64)
    m1, m2 = _exact_moments(path, torch.tensor(path.t_min, dtype=torch.float64))
    rows = []
    for n in steps:
        s1 = s2 = s4 = 0.0
        done, t0 = 0, time.time()
        while done < samples:
            k = min(chunk, samples - done)
            gen = torch.Generator().manual_seed(1_000_003 * n + done)
            x0 = g.sample(k, generator=gen, dtype=torch.float64)
            xt = path.perturb(x0, torch.randn(x0.shape, generator=gen, dtype=torch.float64), t_hi.expand(k))
            y = sample(model, xt, solver=name, steps=n, grid="logsnr", generator=gen).x[:, 0]
            s1, s2, s4 = s1 + float(y.sum()), s2 + float((y**2).sum()), s4 + float((y**4).sum())
            done += k
        e1, e2 = s1 / samples - m1, s2 / samples - m2
        se1 = math.sqrt(max(s2 / samples - (s1 / samples) ** 2, 0.0) / samples)
        se2 = math.sqrt(max(s4 / samples - (s2 / samples) ** 2, 0.0) / samples)
        rows.append({"steps": n, "err_mean": e1, "se_mean": se1, "err_m2": e2, "se_m2": se2, "s": time.time() - t0})
    return rows


def slopes(rows: list[dict], key: str = "m2", min_snr: float = 5.0) -> list[float | None]:
    """log2 ratios of successive errors; None where either error is within ``min_snr`` standard errors of 0."""
    out = []
    for a, b in itertools.pairwise(rows):
        ea, eb = abs(a[f"err_{key}"]), abs(b[f"err_{key}"])
        ok = ea > min_snr * a[f"se_{key}"] and eb > min_snr * b[f"se_{key}"]
        out.append(math.log2(ea / eb) if ok else None)
    return out


def markdown(results: dict) -> str:
    lines = ["# Weak order of the stochastic samplers", "", __doc__.split("\n\n")[1].replace("\n", " "), ""]
    lines += [f"Samples per run: {results['samples']}; steps {results['steps']}.", ""]
    for name, res in results["solvers"].items():
        lines += [f"## {name} (declared order {res['declared']})", ""]
        lines += ["| steps | err E[x] (se) | err E[x^2] (se) | slope E[x^2] |", "| --- | --- | --- | --- |"]
        sl = [None, *res["slopes_m2"]]
        for r, s in zip(res["rows"], sl):
            slope = "-" if s is None else f"{s:.2f}"
            lines.append(
                f"| {r['steps']} | {r['err_mean']:+.2e} ({r['se_mean']:.1e}) | {r['err_m2']:+.2e} ({r['se_m2']:.1e})"
                f" | {slope} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench sde-order", description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=2_000_000)
    p.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    p.add_argument("--solvers", nargs="+", default=list(SOLVER_NAMES))
    p.add_argument("--out", default="bench/results")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    results = {"samples": a.samples, "steps": a.steps, "solvers": {}}
    for name in a.solvers:
        rows = weak_errors(name, a.steps, a.samples)
        results["solvers"][name] = {"declared": SOLVERS[name].order, "rows": rows, "slopes_m2": slopes(rows)}
        print(name, [f"{r['err_m2']:+.2e}" for r in rows], results["solvers"][name]["slopes_m2"], flush=True)
    os.makedirs(a.out, exist_ok=True)
    save_json(results, os.path.join(a.out, "sde_order.json"))
    md = markdown(results)
    with open(os.path.join(a.out, "sde_order.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    main()
