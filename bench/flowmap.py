"""Flow maps distilled from a flow-matching teacher on two moons, sampled in 1, 2 and 4 jumps, against the teacher
with Euler/Heun at 1-40 steps. Two distillation targets on the same budget: Eulerian (MeanFlow identity with the
teacher's velocity and a JVP) and Lagrangian (teacher ODE solves, 2 Heun steps).

Run from the repository root: ``diffusio bench flowmap [--steps 3000]`` -> bench/results/flowmap.*
"""

from __future__ import annotations

import argparse

import torch

from bench.common import results_dir, write_results
from diffusio.app.demo.toytrain import data_floor, sample_metrics, toy_source, train
from diffusio.app.plotting import _plt
from diffusio.core.paths import RectifiedFlow
from diffusio.data.toy import sample_toy
from diffusio.families.flowmap import EulerianTarget, FlowMapDistillation, FlowMapModel, LagrangianTarget
from diffusio.models.base import Model
from diffusio.nets import MLP, FlowMapMLP
from diffusio.samplers import sample
from diffusio.training.losses import DiffusionLoss, LogitNormal, UniformTime

JUMPS = (1, 2, 4)
TEACHER = (("euler", 1), ("euler", 2), ("euler", 4), ("heun", 2), ("euler", 20), ("heun", 20), ("heun", 40))


def _net(cls, seed, **kw):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls(2, hidden=128, depth=3, time_dim=32, **kw)


def run(teacher_steps: int, steps: int, seed: int = 0) -> dict:
    data, path = toy_source("moons"), RectifiedFlow()
    teacher, t_teacher = train(
        Model(_net(MLP, seed), path, "velocity"),
        DiffusionLoss("velocity", LogitNormal()),
        data,
        teacher_steps,
        cache="flowmap/teacher",
    )
    students, seconds = {}, {"teacher": t_teacher}
    for name, target in (("eulerian", EulerianTarget()), ("lagrangian", LagrangianTarget(2))):
        loss = FlowMapDistillation(teacher, UniformTime(0.0, 1.0), p_jump=0.75, target=target)
        students[name], seconds[name] = train(
            FlowMapModel(_net(FlowMapMLP, seed + 1), path),
            loss,
            data,
            steps,
            lr=1e-3,
            cache=f"flowmap/{name}_teacher{teacher_steps}",
        )
    ref = sample_toy("moons", 8000, generator=torch.Generator().manual_seed(5))
    z = torch.randn(8000, 2, generator=torch.Generator().manual_seed(6))
    rows, samples = [], {}
    for solver, n in TEACHER:
        res = sample(teacher, z.clone(), solver=solver, steps=n, grid="uniform", t_max=1.0)
        rows.append({"model": "teacher", "solver": solver, "steps": n, "nfe": res.nfe, **sample_metrics(res.x, ref)})
        samples[f"teacher {solver} {n}"] = res.x
    for name, m in students.items():
        for n in JUMPS:
            res = sample(m, z.clone(), solver="flowmap", steps=n, grid="uniform", t_max=1.0)
            rows.append(
                {
                    "model": f"flowmap ({name})",
                    "solver": "flowmap",
                    "steps": n,
                    "nfe": res.nfe,
                    **sample_metrics(res.x, ref),
                }
            )
            samples[f"{name} {n} jump{'s' * (n > 1)}"] = res.x
    return {
        "teacher_steps": teacher_steps,
        "distill_steps": steps,
        "train_seconds": seconds,
        "rows": rows,
        "floor": data_floor("moons", 8000, ref),
        "_samples": samples,
        "_ref": ref,
    }


def _markdown(res: dict) -> str:
    f = res["floor"]
    lines = [
        "# Flow maps: 1-4 jumps vs the teacher's ODE",
        "",
        f"Two moons. Teacher: flow matching, MLP(2, 128, depth 3), {res['teacher_steps']} steps (logit-normal t). "
        f"Students: FlowMapMLP of the same size, {res['distill_steps']} distillation steps each (batch 256, "
        "AdamW 1e-3, 75% of pairs with s < t, adaptive weight p = 1), Eulerian = MeanFlow identity with the teacher's "
        "velocity (one teacher call + one JVP per batch), Lagrangian = regression on 2-step Heun teacher solves. "
        "8000 samples from the same noise; sliced W2 and MMD against 8000 fresh data points (lower is better).",
        "",
        "| model | solver | steps | NFE | sliced W2 | MMD |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['model']} | {r['solver']} | {r['steps']} | {r['nfe']} | {r['sliced_w2']:.4f} | {r['mmd']:.4f} |"
        )
    s = res["train_seconds"]
    lines += [
        "",
        f"Data vs data (same size): sliced W2 {f['sliced_w2']:.4f}, MMD {f['mmd']:.4f}. Training time: teacher "
        f"{s['teacher']:.0f} s, Eulerian {s['eulerian']:.0f} s, Lagrangian {s['lagrangian']:.0f} s.",
        "",
        "![samples](flowmap.png)",
        "",
    ]
    return "\n".join(lines)


def _plot(res: dict, out) -> None:
    plt = _plt()
    keys = ["teacher euler 1", "teacher heun 20", *[k for k in res["_samples"] if not k.startswith("teacher")]]
    fig, axes = plt.subplots(2, 4, figsize=(14, 7))
    for ax, k in zip(axes.flat, keys):
        x = res["_samples"][k][:2000]
        ax.scatter(res["_ref"][:2000, 0], res["_ref"][:2000, 1], s=1, color="lightgray")
        ax.scatter(x[:, 0], x[:, 1], s=1, color="tab:blue")
        ax.set(title=k, xlim=(-3, 3), ylim=(-2.5, 2.5))
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(out / "flowmap.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench flowmap", description=__doc__)
    p.add_argument("--teacher-steps", type=int, default=3000)
    p.add_argument("--steps", type=int, default=3000, help="distillation steps per student")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out = results_dir(a.out)
    res = run(a.teacher_steps, a.steps)
    md = _markdown(res)
    _plot(res, out)
    write_results(out, "flowmap", {k: v for k, v in res.items() if not k.startswith("_")}, md)
    print(md)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
