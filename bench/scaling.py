"""Inference-time scaling benchmark (issue 11): ``diffusio bench scaling``.

Verifier score versus model evaluations per output (NFE, search included) for: more denoising steps, best-of-N,
zero-order search, search over paths, SMC (Feynman-Kac steering) and Rollover Budget Forcing, on

1. a 2-D mixture (8 Gaussians on a ring) with the exact flow model ``ExactModel(gmm, RectifiedFlow())``; verifier
   = the exact class-conditional log-density log p(x | c) of a target component c (held out: the unconditional
   log-density log p(x), the fraction in mode c, the spread of the outputs);
2. 8x8 digits: the bundled digits config (EDM U-Net, trained once and cached in ``cache_dir('bench', 'digits')``)
   seen as a flow model (``Rescheduled`` to the linear path), sampled with its null class; verifier = the digits
   metric classifier's probability of a target class c (held out: a logistic-regression classifier on pixels,
   and the diversity of the outputs).

Verifier hacking: on the mixture, search on the exact class posterior p(c | x) (a perfect "classifier") and report
the held-out log p(x | c) and the spread. Overhead: the fraction of wall time outside model and verifier calls,
per method, on the digits U-Net. Writes ``scaling.{json,md,png}`` and ``scaling_hacking.png``,
``scaling_digits.png``.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from bench.common import results_dir, write_results
from diffusio.core.paths import RectifiedFlow
from diffusio.data.gmm import GaussianMixture
from diffusio.models.exact import ExactModel
from diffusio.models.wrappers import Rescheduled
from diffusio.scaling import CallableVerifier, MixtureLogDensity, search

PARTICLE = {"diffusion": "square", "diffusion_scale": 3.0, "grid": "uniform"}
# method -> (strategy, options); every search uses Euler on the flow ODE with 8 steps (8 NFE per roll-out)
METHODS = {
    "more steps": ("steps", {"solver": "euler", "grid": "uniform"}),
    "best-of-N": ("best_of_n", {"solver": "euler", "steps": 8, "grid": "uniform"}),
    "zero-order": ("zero_order", {"solver": "euler", "steps": 8, "grid": "uniform", "neighbours": 3, "cos_sim": 0.95}),
    "paths": ("paths", {"solver": "euler", "steps": 8, "grid": "uniform", "branches": 2, "start": 2, "renoise": 1,
                        "advance": 3}),
    "SMC": ("smc", {"steps": 8, "temperature": 1.0, **PARTICLE}),
    "RBF": ("rbf", {"steps": 8, **PARTICLE}),
}  # fmt: skip

DIGITS_OVERRIDES = {"SMC": {"temperature": 0.1}}


def ring(k: int = 8, radius: float = 2.0, std: float = 0.25) -> GaussianMixture:
    ang = torch.arange(k) * 2 * math.pi / k
    return GaussianMixture(torch.stack([radius * ang.cos(), radius * ang.sin()], 1), std, labels=torch.arange(k))


def _spread(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean pairwise distance between outputs of the same target class, averaged over classes."""
    out = []
    for k in labels.unique():
        v = x[labels == k].flatten(1).double()
        if len(v) > 1:
            out.append(float(torch.cdist(v, v).sum() / (len(v) * (len(v) - 1))))
    return sum(out) / len(out)


def run_curve(model, verifier, shape, budgets, methods, cond, vcond, seed, judge, log, overrides=None) -> dict:
    rows = {}
    for name in methods:
        strategy, opts = METHODS[name]
        opts = {**opts, **(overrides or {}).get(name, {})}
        rows[name] = []
        for b in budgets:
            try:
                res = search(model, verifier, shape=shape, strategy=strategy, budget=b, cond=cond, verifier_cond=vcond,
                             generator=torch.Generator().manual_seed(seed), **opts)  # fmt: skip
            except ValueError as e:  # a budget below the method's smallest unit
                rows[name].append({"budget": b, "error": str(e)})
                continue
            row = {"budget": b, **res.summary(), "model_seconds": res.model_seconds,
                   "verifier_seconds": res.verifier_seconds, **judge(res.x)}  # fmt: skip
            rows[name].append(row)
            log(f"  {name:<11} budget {b:>5}: score {row['score_mean']:.4f} (NFE {row['nfe_mean']:.0f}, "
                f"{row['seconds']:.1f} s, overhead {100 * row['overhead']:.1f}%)")  # fmt: skip
    return rows


def mixture_part(budgets, n_out, seed, log) -> tuple[dict, dict]:
    gmm = ring()
    model = ExactModel(gmm, RectifiedFlow())
    c = torch.arange(8).repeat(n_out // 8)
    vcond = {"y": c}
    verifier = MixtureLogDensity(gmm)

    def judge(x):
        x = x.double()
        return {"heldout_logp": float(gmm.log_prob(x).mean()),
                "mode_accuracy": float((torch.cdist(x, gmm.means).argmin(1) == c).double().mean()),
                "spread": _spread(x, c)}  # fmt: skip

    log("[mixture] verifier: exact log p(x | c)")
    curves = run_curve(model, verifier, (len(c), 2), budgets, list(METHODS), None, vcond, seed, judge, log)
    # verifier hacking: search on the exact class posterior p(c | x), judge with the held-out log p(x | c)
    post = CallableVerifier(
        lambda x, cond: (gmm.log_prob(x, y=cond["y"]) + math.log(1 / 8) - gmm.log_prob(x)).exp(), takes_cond=True
    )

    def judge2(x):
        return {**judge(x), "heldout_logp_c": float(gmm.log_prob(x.double(), y=c).mean())}

    log("[mixture] verifier hacking: search on p(c | x), held out log p(x | c)")
    hack = run_curve(model, post, (len(c), 2), budgets, ["best-of-N", "RBF"], None, vcond, seed, judge2, log)
    floor = {"data_spread": _spread(gmm.sample(len(c), generator=torch.Generator().manual_seed(1), y=c), c),
             "data_logp_c": float(gmm.log_prob(gmm.sample(4000, generator=torch.Generator().manual_seed(2),
                                                          y=torch.arange(8).repeat(500), dtype=torch.float64),
                                               y=torch.arange(8).repeat(500)).mean())}  # fmt: skip
    return {"curves": curves, "reference": floor}, hack


def digits_part(budgets, n_out, classes, seed, log) -> dict:
    from sklearn.linear_model import LogisticRegression

    from bench.solvers import digits_model
    from diffusio.app.scaling_cli import digits_verifier
    from diffusio.data.digits import load_digits
    from diffusio.metrics import get_digits_classifier

    edm, cfg = digits_model(progress=log)
    flow = Rescheduled(edm, RectifiedFlow(t_min=2e-3, t_max=0.985))  # sigma/alpha from 0.002 to ~66 (EDM's range)
    c = torch.arange(classes).repeat(n_out // classes)
    null = {"y": torch.full((len(c),), cfg["num_classes"])}
    verifier = digits_verifier()
    x_tr, y_tr = load_digits(8, "pad", "train")
    lr = LogisticRegression(max_iter=2000, C=0.5).fit(x_tr.flatten(1).numpy(), y_tr.numpy())
    clf = get_digits_classifier(8, "pad")

    def judge(x):
        x = x.float().clamp(-1, 1)
        p2 = torch.from_numpy(lr.predict_proba(x.flatten(1).numpy()))[torch.arange(len(c)), c]
        with torch.no_grad():
            feats = clf.features(x)
        return {"heldout_logreg_prob": float(p2.mean()), "diversity_pixels": _spread(x, c),
                "diversity_features": _spread(feats, c)}  # fmt: skip

    log("[digits] verifier: metric classifier p(c | x); model sampled with its null class (flow view)")
    t0 = time.perf_counter()
    # the reward is a probability in [0, 1]: SMC's potentials exp(r / temperature) need a smaller temperature
    curves = run_curve(flow, verifier, (len(c), 1, 8, 8), budgets, list(METHODS), null, {"y": c}, seed, judge, log,
                       DIGITS_OVERRIDES)  # fmt: skip
    log("[digits] search-loop overhead at 64 outputs, budget 128")
    c64 = torch.arange(classes).repeat(64 // classes + 1)[:64]
    overhead = {}
    for name, (strategy, opts) in METHODS.items():
        opts = {**opts, **DIGITS_OVERRIDES.get(name, {})}
        res = search(flow, verifier, shape=(64, 1, 8, 8), strategy=strategy, budget=128,
                     cond={"y": torch.full((64,), cfg["num_classes"])}, verifier_cond={"y": c64},
                     generator=torch.Generator().manual_seed(seed), **opts)  # fmt: skip
        overhead[name] = {"overhead": res.overhead, "seconds": res.seconds, "model_seconds": res.model_seconds,
                          "verifier_seconds": res.verifier_seconds, "model_calls": res.model_calls}  # fmt: skip
        log(f"  {name:<11} overhead {100 * res.overhead:.2f}% of {res.seconds:.1f} s")
    x_ref, y_ref = load_digits(8, "pad", "test")
    ref = {"data_diversity_pixels": _spread(x_ref[:400], y_ref[:400]),
           "data_classifier_prob": float(verifier(x_ref[:400], {"y": y_ref[:400]}).mean())}  # fmt: skip
    return {"curves": curves, "reference": ref, "overhead": overhead, "seconds": time.perf_counter() - t0}


def _plot(parts: dict, file, key="score_mean", ylabel="verifier score (mean over outputs)") -> None:
    from diffusio.app.plotting import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, len(parts), figsize=(6 * len(parts), 4.2), squeeze=False)
    for ax, (title, curves) in zip(axes[0], parts.items()):
        for name, rows in curves.items():
            ok = [r for r in rows if "error" not in r]
            ax.plot([r["budget"] for r in ok], [r[key] for r in ok], marker="o", ms=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("model evaluations per output (NFE, search included)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def _claims(curves: dict, budgets) -> dict:
    def at(name, b):
        r = next((r for r in curves[name] if r["budget"] == b and "error" not in r), None)
        return None if r is None else r["score_mean"]

    hi, mid = budgets[-1], budgets[len(budgets) // 2]
    gain = {n: (at(n, hi) - at(n, mid)) if at(n, hi) is not None and at(n, mid) is not None else None for n in curves}
    order = []
    for b in budgets:
        r, s, n = at("RBF", b), at("SMC", b), at("best-of-N", b)
        if None not in (r, s, n):
            order.append({"budget": b, "rbf_ge_smc": r >= s, "smc_ge_bon": s >= n, "rbf": r, "smc": s, "bon": n})
    return {"gain_mid_to_max": gain, "search_beats_steps_gain": all(
        g is not None and gain["more steps"] is not None and g > gain["more steps"]
        for k, g in gain.items() if k in ("best-of-N", "RBF")), "order": order}  # fmt: skip


def _table(curves: dict, cols: list[tuple[str, str]]) -> list[str]:
    head = "| method | budget | " + " | ".join(c[1] for c in cols) + " |"
    out = [head, "| --- | ---: | " + " | ".join("---:" for _ in cols) + " |"]
    for name, rows in curves.items():
        for r in rows:
            if "error" in r:
                out.append(f"| {name} | {r['budget']} | " + " | ".join("-" for _ in cols) + " |")
            else:
                vals = [f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k, _ in cols]
                out.append(f"| {name} | {r['budget']} | " + " | ".join(vals) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench scaling", description=__doc__.split("\n")[0])
    p.add_argument("--budgets", default="32,64,128,256,512,1024,2048")
    p.add_argument("--digits-budgets", default="32,128,512,2048")
    p.add_argument("--mixture-outputs", type=int, default=64)
    p.add_argument("--digits-outputs", type=int, default=10)
    p.add_argument("--digits-classes", type=int, default=5, help="target classes 0..C-1, outputs split evenly")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-digits", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = results_dir(args.out)
    budgets = [int(b) for b in args.budgets.split(",")]
    dbudgets = [int(b) for b in args.digits_budgets.split(",")]
    mix, hack = mixture_part(budgets, args.mixture_outputs, args.seed, print)
    payload = {"args": vars(args), "methods": {k: {"strategy": s, **o} for k, (s, o) in METHODS.items()},
               "mixture": {**mix, "claims": _claims(mix["curves"], budgets)}, "hacking": hack}  # fmt: skip
    parts = {"2-D mixture, exact flow model (verifier: log p(x | c))": mix["curves"]}
    if not args.skip_digits:
        dig = digits_part(dbudgets, args.digits_outputs, args.digits_classes, args.seed, print)
        payload["digits"] = {**dig, "claims": _claims(dig["curves"], dbudgets)}
        parts["8x8 digits, EDM U-Net as a flow (verifier: classifier p(c | x))"] = dig["curves"]
    _plot(parts, out / "scaling.png")
    _plot({"search on p(c | x): held-out log p(x | c)": hack}, out / "scaling_hacking.png", "heldout_logp_c",
          "held-out log p(x | c) (mean over outputs)")  # fmt: skip
    md = ["# Inference-time scaling (`diffusio bench scaling`)", "",
          "Verifier score (mean over outputs) versus model evaluations per output, search included; every search "
          "uses Euler on the flow ODE with 8 steps, SMC/RBF the marginal-preserving SDE with g = 3 t^2 on 8 uniform "
          "steps. Methods: " + "; ".join(f"{k} = `{s}` {o}" for k, (s, o) in METHODS.items()) + f". On digits: "
          f"{DIGITS_OVERRIDES} (the classifier reward lies in [0, 1]).", "",
          f"## 2-D mixture ({args.mixture_outputs} outputs, 8 target modes)", "",
          f"Reference: data log p(x | c) = {mix['reference']['data_logp_c']:.3f}, spread of data with the same "
          f"targets = {mix['reference']['data_spread']:.3f}.", ""]  # fmt: skip
    cols = [("score_mean", "log p(x|c)"), ("heldout_logp", "held-out log p(x)"), ("mode_accuracy", "in mode c"),
            ("spread", "spread"), ("nfe_mean", "NFE"), ("overhead", "overhead")]  # fmt: skip
    md += _table(mix["curves"], cols)
    md += ["", "### Claims (mixture)", "", _claims_md(payload["mixture"]["claims"]), "",
           "## Verifier hacking (mixture): search on p(c | x), held-out log p(x | c)", ""]  # fmt: skip
    md += _table(hack, [("score_mean", "p(c|x)"), ("heldout_logp_c", "held-out log p(x|c)"),
                        ("mode_accuracy", "in mode c"), ("spread", "spread")])  # fmt: skip
    if "digits" in payload:
        dig = payload["digits"]
        head = f"{args.digits_outputs} outputs, target classes 0..{args.digits_classes - 1}, null-class model"
        md += ["", f"## Digits ({head})", "",
               f"Reference (test digits): classifier p(c|x) = {dig['reference']['data_classifier_prob']:.3f}, "
               f"within-class pixel diversity = {dig['reference']['data_diversity_pixels']:.3f}.", ""]  # fmt: skip
        md += _table(dig["curves"], [("score_mean", "p(c|x)"), ("heldout_logreg_prob", "held-out logreg p(c|x)"),
                                     ("diversity_pixels", "diversity (px)"), ("nfe_mean", "NFE"),
                                     ("seconds", "seconds"), ("overhead", "overhead")])  # fmt: skip
        md += ["", "### Claims (digits)", "", _claims_md(dig["claims"]), ""]
        ov = dig["overhead"]
        worst = max((v["overhead"], n) for n, v in ov.items())
        md += ["## Search-loop overhead on the digits U-Net (64 outputs, budget 128)", "",
               "Fraction of wall time outside model and verifier calls (target < 5%):", "",
               "| method | overhead | wall s | model s | verifier s | batched model calls |",
               "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        md += [f"| {n} | {100 * v['overhead']:.2f}% | {v['seconds']:.1f} | {v['model_seconds']:.1f} | "
               f"{v['verifier_seconds']:.2f} | {v['model_calls']} |" for n, v in ov.items()]  # fmt: skip
        md += ["", f"Worst: {100 * worst[0]:.2f}% ({worst[1]}); below 5%: **{worst[0] < 0.05}**.", ""]
        payload["digits"]["worst_overhead"] = {"overhead": worst[0], "method": worst[1]}
    write_results(out, "scaling", payload, "\n".join(md) + "\n")
    print(f"wrote {out / 'scaling.png'}, scaling_hacking.png, scaling.md, scaling.json")
    return 0


def _claims_md(cl: dict) -> str:
    gains = ", ".join(f"{k} {v:+.4f}" for k, v in cl["gain_mid_to_max"].items() if v is not None)
    lines = [f"- Score gain from the middle to the largest budget: {gains}. Search (best-of-N and RBF) gains more "
             f"than more steps: **{cl['search_beats_steps_gain']}**."]  # fmt: skip
    for o in cl["order"]:
        lines.append(f"- budget {o['budget']}: RBF {o['rbf']:.4f} {'>=' if o['rbf_ge_smc'] else '<'} SMC "
                     f"{o['smc']:.4f} {'>=' if o['smc_ge_bon'] else '<'} best-of-N {o['bon']:.4f}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
