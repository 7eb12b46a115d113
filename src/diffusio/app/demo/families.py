"""The demo's families page: diffusion (VP), flow matching (independent and minibatch-OT couplings), a stochastic
interpolant, PFGM++ and a distilled flow map, each trained with its own objective on the same 2-D data (two moons),
the same network and the same budget, sampled with its own sampler; sliced W2 and model calls side by side."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from diffusio.app.demo.toytrain import sample_metrics, toy_source, train
from diffusio.app.plotting import _plt
from diffusio.core.paths import CosineVP, RectifiedFlow
from diffusio.data.toy import sample_toy
from diffusio.families.flow_matching import MinibatchOT
from diffusio.families.flowmap import FlowMapDistillation, FlowMapModel, LagrangianTarget
from diffusio.families.interpolants import BrownianGamma, Interpolant, InterpolantLoss, InterpolantModel
from diffusio.families.interpolants import generate as si_generate
from diffusio.families.pfgmpp import PFGMPP
from diffusio.models.base import EDMPrecond, Model
from diffusio.nets import MLP, FlowMapMLP
from diffusio.samplers import sample
from diffusio.training.losses import DiffusionLoss, EDMLogNormal, EDMWeight, UniformTime

__all__ = ["run_families"]

DATA = "moons"
NET = {"hidden": 64, "depth": 2, "time_dim": 32}


def _net(cls=MLP, seed: int = 0, **kw):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls(2, **NET, **kw)


def _trained(steps: int) -> tuple[dict, dict]:
    """Every family's model on the same data, network size and budget; returns (models, training seconds)."""
    data, flow = toy_source(DATA), RectifiedFlow()
    specs = {
        "diffusion (VP, v)": (Model(_net(), CosineVP(), "v"), DiffusionLoss("v")),
        "flow matching": (Model(_net(), flow, "velocity"), DiffusionLoss("velocity", UniformTime())),
        "flow matching + OT": (
            Model(_net(), flow, "velocity"),
            DiffusionLoss("velocity", UniformTime(), coupling=MinibatchOT()),
        ),
        "stochastic interpolant": (
            InterpolantModel(_net(out_dim=4), Interpolant(gamma=BrownianGamma(1.0))),
            InterpolantLoss(),
        ),
        "PFGM++ (D=128)": (
            Model(_net(), PFGMPP(D=128.0), "x0", EDMPrecond(1.0)),
            DiffusionLoss("x0", EDMLogNormal(), EDMWeight(1.0)),
        ),
    }
    models, seconds = {}, {}
    for name, (model, loss) in specs.items():
        models[name], seconds[name] = train(model, loss, data, steps)
    # the flow map is distilled from the flow-matching model (same budget again): 1-2 jumps instead of an ODE solve
    distill = FlowMapDistillation(
        models["flow matching"], UniformTime(0.0, 1.0), p_jump=0.75, target=LagrangianTarget(2)
    )
    models["flow map"], seconds["flow map"] = train(FlowMapModel(_net(FlowMapMLP, 1), flow), distill, data, steps)
    return models, seconds


def _draw(name: str, model, z: torch.Tensor, how: tuple) -> tuple[torch.Tensor, int]:
    """Samples of one family from the shared noise ``z`` with ``how`` = (solver, steps)."""
    solver, steps = how
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        if name == "stochastic interpolant":
            return si_generate(model, z.clone(), steps, 0.0 if solver == "ode" else 0.5, generator=g)
        if name.startswith("PFGM"):  # the heavy-tailed prior of its own path, not N(0, I)
            x = model.path.prior_sample(tuple(z.shape), generator=g)
            res = sample(model, x, solver=solver, steps=steps, grid="karras")
        else:
            path = model.path
            if isinstance(path, RectifiedFlow):  # noise at exactly t = 1 on the linear path
                x, opts = z.clone(), {"grid": "uniform", "t_max": 1.0}
            else:
                x, opts = z * float(path.sigma(torch.tensor(path.t_max, dtype=torch.float64))), {}
            res = sample(model, x, solver=solver, steps=steps, **opts)
    return res.x, res.nfe


RUNS = (  # (family, solver, steps): each family's own sampler at ~20 calls, and the few-call regime
    ("diffusion (VP, v)", "dpmpp_2m", 20),
    ("diffusion (VP, v)", "ddim", 2),
    ("flow matching", "heun", 10),
    ("flow matching", "euler", 2),
    ("flow matching + OT", "heun", 10),
    ("flow matching + OT", "euler", 2),
    ("stochastic interpolant", "ode", 10),
    ("stochastic interpolant", "sde", 20),
    ("PFGM++ (D=128)", "heun", 10),
    ("flow map", "flowmap", 1),
    ("flow map", "flowmap", 2),
)


def run_families(out: Path, fast: bool = False, log=print) -> dict:
    """Train and sample every family into ``out`` (``families.png``); returns the rows of the report's table."""
    t0 = time.perf_counter()
    steps, n = (20, 300) if fast else (1000, 4000)
    log(f"[families] training 6 models on {DATA} ({steps} steps each) ...")
    # tiny MLPs on batches of 256: a second intra-op thread only adds synchronisation (measured: 24 s with one
    # thread, 400 s with two on a busy 2-core machine for the fast page), so this page runs on one thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(out, steps, n, log, t0)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, steps: int, n: int, log, t0: float) -> dict:
    models, seconds = _trained(steps)
    ref = sample_toy(DATA, n, generator=torch.Generator().manual_seed(5))
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(6))
    rows, shown = [], {}
    for name, solver, k in RUNS:
        x, nfe = _draw(name, models[name], z, (solver, k))
        m = sample_metrics(x, ref)
        rows.append({"family": name, "sampler": f"{solver} {k}", "nfe": nfe, "sliced_w2": m["sliced_w2"]})
        shown.setdefault(name, (x, f"{solver}, {nfe} calls"))
        log(f"  {name:<24} {solver:<8} steps={k:<3} nfe={nfe:<3} sliced_w2={m['sliced_w2']:.4f}")
    floor = sample_metrics(sample_toy(DATA, n, generator=torch.Generator().manual_seed(777)), ref)["sliced_w2"]
    _plot(shown, ref, out / "families.png")
    return {
        "train_steps": steps,
        "n": n,
        "train_seconds": seconds,
        "rows": rows,
        "data_floor": floor,
        "seconds": time.perf_counter() - t0,
    }


def _plot(shown: dict, ref: torch.Tensor, file: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(2.6 * (len(shown) + 1), 2.9))
    panels = [("data", (ref, "")), *shown.items()]
    for ax, (name, (x, how)) in zip(axes, panels):
        p = x[:2000].detach().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.5, linewidths=0)
        ax.set(xlim=(-2.5, 2.5), ylim=(-2.0, 2.0), xticks=[], yticks=[])
        ax.set_aspect("equal")
        ax.set_title(f"{name}\n{how}".strip(), fontsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def families_report(res: dict) -> list[str]:
    """The report's section: table of sliced W2 and model calls, and the picture."""
    lines = [
        "## Families on the same data (two moons)",
        "",
        f"Every family trains its own objective on the same data with the same MLP (hidden {NET['hidden']}, depth "
        f"{NET['depth']}) for {res['train_steps']} steps (batch 256, AdamW 2e-3, EMA); the flow map is distilled "
        "from the flow-matching model (Lagrangian target, same number of steps). Each is sampled with its own "
        f"sampler from the same noise; sliced W2 of {res['n']} samples against fresh data (lower is better; two "
        f"draws of real data score {res['data_floor']:.4f}).",
        "",
        "| family | sampler | model calls | sliced W2 | train s |",
        "|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['family']} | {r['sampler']} | {r['nfe']} | {r['sliced_w2']:.4f} | "
            f"{res['train_seconds'][r['family']]:.0f} |"
        )
    lines += ["", "![families](families.png)", ""]
    return lines
