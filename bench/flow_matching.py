"""Flow matching couplings on two moons: independent coupling vs minibatch OT vs reflow, on the same training
budget per model. Measures straightness (Liu et al. 2023, Eq. 9) along Heun trajectories, the transport cost of the
induced noise-to-data map, and sample quality (sliced W2, MMD) with Euler at 1-8 steps and Heun at 20; checks the
exact assignment against POT's exact OT solver on the same batches (the peer torchcfm's OT-CFM relies on).

Run from the repository root: ``diffusio bench flow_matching [--steps 3000]`` -> bench/results/flow_matching.*
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import results_dir, write_results
from diffusio.app.demo.toytrain import data_floor, sample_metrics, toy_source, train
from diffusio.app.plotting import _plt
from diffusio.core.paths import RectifiedFlow
from diffusio.data.toy import sample_toy
from diffusio.families.flow_matching import MinibatchOT, ReflowCoupling, exact_assignment, straightness, transport_cost
from diffusio.models.base import Model
from diffusio.nets import MLP
from diffusio.samplers import sample
from diffusio.training.losses import DiffusionLoss, UniformTime

EULER_STEPS = (1, 2, 4, 8)


def _model(seed: int) -> Model:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Model(MLP(2, hidden=128, depth=3, time_dim=32), RectifiedFlow(), "velocity")


def _evaluate(model, z: torch.Tensor, ref: torch.Tensor) -> dict:
    out = {}
    ode = sample(model, z.clone(), solver="heun", steps=100, grid="uniform", t_max=1.0).x  # the model's own ODE map
    for steps in EULER_STEPS:
        x = sample(model, z.clone(), solver="euler", steps=steps, grid="uniform", t_max=1.0).x
        # discretisation error against the model's own ODE solution from the same noise: what straight paths save
        out[f"euler_{steps}"] = {**sample_metrics(x, ref), "ode_rmse": float((x - ode).pow(2).sum(1).mean().sqrt())}
    x = sample(model, z.clone(), solver="heun", steps=20, grid="uniform", t_max=1.0).x
    out["heun_20"] = sample_metrics(x, ref)
    ts = torch.linspace(1.0, 1e-3, 51, dtype=torch.float64)
    s, x_end = straightness(model, z[:2000].double(), ts)
    out["straightness"] = s
    out["transport_cost"] = transport_cost(x_end, z[:2000].double())
    return out


def _pot_check(n: int = 256, repeats: int = 5) -> dict:
    """Our exact assignment vs POT's ot.emd on the same cost: same cost value; wall-time ratio."""
    try:
        import ot
    except ImportError:
        return {"available": False}
    g = torch.Generator().manual_seed(3)
    gaps, t_ours, t_pot = [], 0.0, 0.0
    for _ in range(repeats):
        x0 = sample_toy("moons", n, generator=g).double()
        z = torch.randn(n, 2, generator=g, dtype=torch.float64)
        cost = torch.cdist(x0, z).pow(2).numpy()
        t0 = time.perf_counter()
        perm = exact_assignment(cost)
        t_ours += time.perf_counter() - t0
        t0 = time.perf_counter()
        plan = ot.emd(torch.full((n,), 1 / n).double().numpy(), torch.full((n,), 1 / n).double().numpy(), cost)
        t_pot += time.perf_counter() - t0
        gaps.append(abs(float(cost[torch.arange(n), perm].mean()) - float((plan * cost).sum())))
    return {"available": True, "batch": n, "max_cost_gap": max(gaps), "time_ratio_ours_over_pot": t_ours / t_pot}


def run(steps: int, pairs: int, seed: int = 0) -> dict:
    data = toy_source("moons")
    results, timings = {}, {}
    indep, timings["independent"] = train(
        _model(seed), DiffusionLoss("velocity", UniformTime()), data, steps, cache="flow_matching/independent"
    )
    ot_loss = DiffusionLoss("velocity", UniformTime(), coupling=MinibatchOT())
    ot_model, timings["minibatch_ot"] = train(_model(seed), ot_loss, data, steps, cache="flow_matching/minibatch_ot")
    t0 = time.perf_counter()
    coupling = ReflowCoupling.from_model(indep, pairs, (2,), steps=50, generator=torch.Generator().manual_seed(11))
    pair_seconds = time.perf_counter() - t0
    reflow, timings["reflow"] = train(
        _model(seed),
        DiffusionLoss("velocity", UniformTime(), coupling=coupling),
        data,
        steps,
        cache=f"flow_matching/reflow_{pairs}pairs",
    )
    timings["reflow"] += pair_seconds
    ref = sample_toy("moons", 8000, generator=torch.Generator().manual_seed(5))
    z = torch.randn(8000, 2, generator=torch.Generator().manual_seed(6))
    for name, m in (("independent", indep), ("minibatch_ot", ot_model), ("reflow", reflow)):
        results[name] = _evaluate(m, z, ref)
    models = {"independent": indep, "minibatch_ot": ot_model, "reflow": reflow}
    return {
        "train_steps": steps,
        "reflow_pairs": pairs,
        "train_seconds": timings,
        "results": results,
        "floor": data_floor("moons", 8000, ref),
        "pot": _pot_check(),
        "_models": models,
        "_z": z,
        "_ref": ref,
    }


def _markdown(res: dict) -> str:
    names = list(res["results"])
    lines = [
        "# Flow matching couplings: independent vs minibatch OT vs reflow",
        "",
        f"Two moons; each model is MLP(2, 128, depth 3) trained {res['train_steps']} steps (batch 256, AdamW 2e-3, "
        f"EMA 0.995) with the velocity loss on the linear path, t ~ U. Reflow retrains the same network on "
        f"{res['reflow_pairs']} (noise, ODE(noise)) pairs of the independent model (Heun, 50 steps), so its total "
        "budget is twice the others'. Samples: 8000 from the same noise; reference: 8000 fresh data points.",
        "",
        "Straightness S = E int |u - (x_1 - x_0)| ^2 dt along Heun-50 trajectories (0 = straight); transport cost = "
        "E |x_data - z|^2 of the learned noise-to-data map; Euler error = RMS distance of Euler-k samples to the same "
        "model's ODE solution (Heun, 100 steps) from the same noise.",
        "",
        "| coupling | straightness | transport cost | "
        + " | ".join(f"SW2 Euler {s}" for s in EULER_STEPS)
        + " | SW2 Heun 20 | MMD Euler 1 | train s |",
        "|---|---|---|" + "---|" * len(EULER_STEPS) + "---|---|---|",
    ]
    for n in names:
        r = res["results"][n]
        sw = " | ".join(f"{r[f'euler_{s}']['sliced_w2']:.4f}" for s in EULER_STEPS)
        lines.append(
            f"| {n} | {r['straightness']:.4f} | {r['transport_cost']:.3f} | {sw} | {r['heun_20']['sliced_w2']:.4f} | "
            f"{r['euler_1']['mmd']:.4f} | {res['train_seconds'][n]:.0f} |"
        )
    lines += [
        "",
        "| coupling | " + " | ".join(f"Euler error {s}" for s in EULER_STEPS) + " |",
        "|---|" + "---|" * len(EULER_STEPS),
    ]
    for n in names:
        r = res["results"][n]
        lines.append(f"| {n} | " + " | ".join(f"{r[f'euler_{s}']['ode_rmse']:.4f}" for s in EULER_STEPS) + " |")
    f = res["floor"]
    lines += ["", f"Data vs data (same size): SW2 {f['sliced_w2']:.4f}, MMD {f['mmd']:.4f}.", ""]
    p = res["pot"]
    if p.get("available"):
        lines += [
            f"Exact assignment (scipy) vs POT `ot.emd` on {p['batch']}-point moons/noise batches: largest gap in the "
            f"optimal cost {p['max_cost_gap']:.2e}; wall-time ratio ours/POT {p['time_ratio_ours_over_pot']:.2f}.",
            "",
        ]
    lines += ["![quality vs steps](flow_matching.png)", ""]
    return "\n".join(lines)


def _plot(res: dict, out) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for name, r in res["results"].items():
        axes[0].plot(EULER_STEPS, [r[f"euler_{s}"]["sliced_w2"] for s in EULER_STEPS], "o-", label=name)
    axes[0].axhline(res["floor"]["sliced_w2"], color="gray", ls="--", lw=1, label="data vs data")
    axes[0].set(xscale="log", yscale="log", xlabel="Euler steps", ylabel="sliced W2", title="quality vs steps")
    axes[0].legend(fontsize=8)
    z = res["_z"][:300].double()
    ts = torch.linspace(1.0, 1e-3, 31, dtype=torch.float64)
    for ax, (name, m) in zip(axes[1:], res["_models"].items()):
        traj, x = [z], z
        for i in range(30):
            x = sample(m, x, solver="heun", steps=1, grid=ts[i : i + 2]).x
            traj.append(x)
        tr = torch.stack(traj).numpy()
        ax.plot(tr[:, :, 0], tr[:, :, 1], color="tab:blue", alpha=0.3, lw=0.6)
        ax.scatter(tr[-1, :, 0], tr[-1, :, 1], s=3, color="black")
        ax.set(title=f"{name}: S = {res['results'][name]['straightness']:.3f}", xlim=(-3.5, 3.5), ylim=(-3.5, 3.5))
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(out / "flow_matching.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench flow_matching", description=__doc__)
    p.add_argument("--steps", type=int, default=3000, help="training steps per model")
    p.add_argument("--pairs", type=int, default=20000, help="reflow pairs")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out = results_dir(a.out)
    res = run(a.steps, a.pairs)
    md = _markdown(res)
    _plot(res, out)
    write_results(out, "flow_matching", {k: v for k, v in res.items() if not k.startswith("_")}, md)
    print(md)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
