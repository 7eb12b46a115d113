"""The ODE-SDE gap against the Fokker–Planck regulariser's weight (Deveney et al. 2023, arXiv 2311.15996).

Per 2-D data set: one MLP eps-model is pre-trained with plain denoising score matching (cached), then fine-tuned
for the same number of steps with ``FokkerPlanckLoss`` at each weight (weight 0 is the control: the same
fine-tuning without the term). For each model: the gap W(ODE, SDE) = sliced W2 between probability-flow ODE and
reverse-SDE samples from one prior draw (Euler–Maruyama eta 0 / 1 on one grid), both samples against the data,
the plain denoising loss on a fixed held-out batch (the regulariser's cost), and the mean normalised residual on
fixed collocation points. The paper's claim: the gap shrinks as the weight grows, at a small denoising-loss cost.

Every model is trained with ``--seeds`` seeds (initialisation, pre-training and fine-tuning batches); the table
gives mean ± std over seeds and the gap's change against weight 0 paired by seed (same pre-trained model), with its
standard error, so that sampling and training noise are not read as an effect.

Run from the repository root: ``diffusio bench fokker-planck [--pretrain 3000 --finetune 300 --seeds 3]``
-> bench/results/fokker_planck.*
"""

from __future__ import annotations

import argparse
import copy
import itertools

import torch

from bench.common import results_dir, write_results
from diffusio.analysis.fokker_planck import normalized_residual, ode_sde_gap
from diffusio.app.demo.toytrain import toy_source, train
from diffusio.app.plotting import _plt
from diffusio.core.paths import LinearVP
from diffusio.data.toy import sample_toy
from diffusio.metrics import sliced_wasserstein
from diffusio.models.base import Model
from diffusio.nets import MLP
from diffusio.training import TrainConfig, Trainer
from diffusio.training.losses import DiffusionLoss
from diffusio.training.regularizers import FokkerPlanckLoss

DATASETS = ("moons", "gaussians")
WEIGHTS = (0.0, 1.0, 10.0)
BOX = 4.0  # the paper's metric drops samples outside [-4, 4]^2 (and reports how many escaped)


def _swd(a, b) -> float:
    return sliced_wasserstein(a, b, 256, generator=torch.Generator().manual_seed(0))


def _heldout(name: str, model: Model, n: int = 4096):
    g = torch.Generator().manual_seed(123)
    x0 = sample_toy(name, n, generator=g)
    t, noise = DiffusionLoss("eps").draw(x0, model.path, g)
    return x0, t, noise


def _evaluate(model: Model, name: str, n: int, steps: int, draws: int) -> dict:
    x0, t, noise = _heldout(name, model)
    with torch.no_grad():
        dsm = float(DiffusionLoss("eps")(model, x0, t, noise).mean())
    xt = model.path.perturb(x0[:512], noise[:512], t[:512])
    res = float((normalized_residual(model, xt, t[:512]) ** 2).sum(1).mean())
    ref = sample_toy(name, n, generator=torch.Generator().manual_seed(7))
    gaps, w_ode, w_sde, out_ode, out_sde = [], [], [], [], []
    for seed in range(draws):
        g = torch.Generator().manual_seed(seed)
        gap, ode, sde = ode_sde_gap(model, (n, 2), _swd, steps=steps, box=BOX, generator=g)
        gaps.append(gap)
        for s, w, o in ((ode, w_ode, out_ode), (sde, w_sde, out_sde)):
            inside = s.abs().amax(1) <= BOX
            w.append(_swd(s[inside], ref))
            o.append(1 - float(inside.float().mean()))
    return {"dsm_loss": dsm, "fp_residual": res, "gap": _mean(gaps), "w2_ode_data": _mean(w_ode),
            "w2_sde_data": _mean(w_sde), "escaped_ode": _mean(out_ode), "escaped_sde": _mean(out_sde),
            "gap_draws": gaps}  # fmt: skip


def _mean(v) -> float:
    return sum(v) / len(v)


def _std(v) -> float:
    m = _mean(v)
    return (sum((a - m) ** 2 for a in v) / max(len(v) - 1, 1)) ** 0.5


def run(pretrain: int, finetune: int, n: int, steps: int, points: int, seeds: int, draws: int) -> dict:
    """Per data set and seed: pre-train (seed-specific init and batches, cached), fine-tune once per weight."""
    rows, floors = [], {}
    for name in DATASETS:
        floors[name] = _swd(sample_toy(name, n, generator=torch.Generator().manual_seed(8)),
                            sample_toy(name, n, generator=torch.Generator().manual_seed(7)))  # fmt: skip
        for seed in range(seeds):
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                base = Model(MLP(2, hidden=64, depth=2, time_dim=32), LinearVP(), "eps")
            base, _ = train(base, DiffusionLoss("eps"), toy_source(name), pretrain, lr=2e-3, seed=seed,
                            cache=f"fokker_planck/{name}_seed{seed}")  # fmt: skip
            for w in WEIGHTS:
                model = copy.deepcopy(base).train()
                loss = FokkerPlanckLoss(DiffusionLoss("eps"), w, points)
                cfg = TrainConfig(steps=finetune, batch_size=256, lr=5e-4, warmup=0, ema_decay=0.99, seed=100 + seed,
                                  progress=False)  # fmt: skip
                tr = Trainer(model, loss, toy_source(name), cfg)
                tr.fit()
                model.net.load_state_dict(tr.ema.state_dict())
                model.net.eval()
                row = {"data": name, "seed": seed, "weight": w, **_evaluate(model, name, n, steps, draws)}
                print(row, flush=True)
                rows.append(row)
    return {"rows": rows, "data_floor": floors, "pretrain_steps": pretrain, "finetune_steps": finetune,
            "samples": n, "sampler_steps": steps, "collocation_points": points, "seeds": seeds,
            "sampling_draws": draws}  # fmt: skip


KEYS = ("gap", "w2_ode_data", "w2_sde_data", "dsm_loss", "fp_residual", "escaped_ode")


def _summary(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds per (data, weight), and the paired change of the gap against weight 0 (same seed,
    same pre-trained model): its mean and standard error."""
    out = []
    for name in DATASETS:
        base = {r["seed"]: r for r in rows if r["data"] == name and r["weight"] == 0.0}
        for w in WEIGHTS:
            rs = [r for r in rows if r["data"] == name and r["weight"] == w]
            row = {"data": name, "weight": w, "n_seeds": len(rs)}
            for k in KEYS:
                row[k], row[k + "_std"] = _mean([r[k] for r in rs]), _std([r[k] for r in rs])
            diff = [r["gap"] - base[r["seed"]]["gap"] for r in rs]
            ratio = [r["dsm_loss"] / base[r["seed"]]["dsm_loss"] for r in rs]
            row["gap_change"], row["gap_change_se"] = _mean(diff), _std(diff) / len(diff) ** 0.5
            row["dsm_ratio"] = _mean(ratio)
            out.append(row)
    return out


def _verdict(summary: list[dict]) -> dict:
    """The claim at the largest weight: the paired gap change is negative beyond 2 standard errors and the
    denoising loss rises by less than 20%. "reversed" if it is positive beyond 2 SE, else "within noise"."""
    out = {}
    for name in DATASETS:
        r = {row["weight"]: row for row in summary if row["data"] == name}
        top = r[max(WEIGHTS)]
        gaps = [r[w]["gap"] for w in WEIGHTS]
        change, se = top["gap_change"], top["gap_change_se"]
        if change < -2 * se and top["dsm_ratio"] < 1.2:
            verdict = "holds"
        elif change < -2 * se:
            verdict = "gap shrinks but the denoising loss rises > 20%"
        elif change > 2 * se:
            verdict = "reversed (gap grows)"
        else:
            verdict = "within noise"
        out[name] = {
            "gap_ratio_max_weight": top["gap"] / r[0.0]["gap"],
            "gap_change_max_weight": change,
            "gap_change_se": se,
            "dsm_cost_ratio_max_weight": top["dsm_ratio"],
            "gap_monotone": all(b <= a for a, b in itertools.pairwise(gaps)),
            "claim": verdict,
        }
    return out


def _plot(payload: dict, file) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name in DATASETS:
        rows = [r for r in payload["summary"] if r["data"] == name]
        x = [max(r["weight"], 0.01) for r in rows]
        for ax, key in zip(axes, ("gap", "dsm_loss", "fp_residual")):
            ax.errorbar(x, [r[key] for r in rows], yerr=[r[key + "_std"] for r in rows], fmt="o-", capsize=3,
                        label=name)  # fmt: skip
        axes[0].axhline(payload["data_floor"][name], ls=":", color=axes[0].lines[-1].get_color())
    titles = ("W(ODE, SDE) +- std over seeds (dotted: data floor)", "held-out denoising loss", "mean FP residual^2")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_xlabel("FP weight (0 drawn at 0.01)")
        ax.set_title(title, fontsize=9)
        ax.legend()
    axes[2].set_yscale("log")
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def _markdown(payload: dict) -> str:
    lines = [
        "# ODE-SDE gap vs the Fokker–Planck regulariser (`diffusio bench fokker-planck`)",
        "",
        f"MLP eps-model on LinearVP, pre-trained {payload['pretrain_steps']} steps with plain DSM, then fine-tuned "
        f"{payload['finetune_steps']} steps per weight (weight 0 = same fine-tuning without the term), "
        f"{payload['seeds']} seeds (each its own initialisation, pre-training and fine-tuning batches); "
        f"{payload['samples']} samples, Euler–Maruyama {payload['sampler_steps']} steps (eta 0 = ODE, 1 = SDE) "
        "from one prior draw; sliced W2 (256 projections) between the samples inside [-4, 4]^2 (the paper's box; "
        f"the share outside is reported); gap averaged over {payload['sampling_draws']} prior draws per model. "
        "Cells: mean ± std over seeds; 'gap change' = gap(w) - gap(0) paired by seed, mean ± standard error.",
        "",
        "| data | weight | W(ODE,SDE) | gap change vs w=0 | W(ODE,data) | W(SDE,data) | ODE escaped "
        "| held-out DSM loss | DSM ratio | FP residual^2 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    pm = lambda r, k, f: f"{r[k]:{f}} ± {r[k + '_std']:{f}}"  # noqa: E731
    for r in payload["summary"]:
        change = f"{r['gap_change']:+.4f} ± {r['gap_change_se']:.4f}"
        cells = [r["data"], f"{r['weight']:g}", pm(r, "gap", ".4f"), change,
                 pm(r, "w2_ode_data", ".4f"), pm(r, "w2_sde_data", ".4f"), f"{r['escaped_ode']:.2%}",
                 pm(r, "dsm_loss", ".4f"), f"{r['dsm_ratio']:.3f}", pm(r, "fp_residual", ".3g")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Data floor (two independent data draws of {payload['samples']}): "
              + ", ".join(f"{k} {v:.4f}" for k, v in payload["data_floor"].items()), ""]  # fmt: skip
    for name, v in payload["verdict"].items():
        lines.append(
            f"- **{name}**: at w={max(WEIGHTS):g} the gap changes by {v['gap_change_max_weight']:+.4f} ± "
            f"{v['gap_change_se']:.4f} (ratio {v['gap_ratio_max_weight']:.2f}), DSM loss ratio "
            f"{v['dsm_cost_ratio_max_weight']:.3f}, mean gap monotone in the weight: {v['gap_monotone']}; "
            f"claim: **{v['claim']}**"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench fokker-planck", description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrain", type=int, default=3000)
    p.add_argument("--finetune", type=int, default=300)
    p.add_argument("--samples", type=int, default=8000)
    p.add_argument("--steps", type=int, default=100, help="sampler steps")
    p.add_argument("--points", type=int, default=16, help="collocation points per batch")
    p.add_argument("--seeds", type=int, default=3, help="training seeds (init, pre-training, fine-tuning)")
    p.add_argument("--draws", type=int, default=2, help="prior draws per model for the gap")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    for k in ("pretrain", "finetune", "samples", "steps", "points", "seeds", "draws"):
        if getattr(a, k) < 1:
            p.error(f"--{k} must be >= 1")
    if a.seeds < 2:
        p.error("--seeds must be >= 2 (the verdict needs a spread over seeds)")
    payload = run(a.pretrain, a.finetune, a.samples, a.steps, a.points, a.seeds, a.draws)
    payload["summary"] = _summary(payload["rows"])
    payload["verdict"] = _verdict(payload["summary"])
    out = results_dir(a.out)
    write_results(out, "fokker_planck", payload, _markdown(payload))
    _plot(payload, out / "fokker_planck.png")
    print(_markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
