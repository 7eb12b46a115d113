"""Overhead benchmark: (1) time a sampler spends outside model calls, for a small MLP at batch 4096;
(2) the Trainer's step time against a bare PyTorch loop on the same model and batch.

Targets (issue 2): sampler overhead < 5% of wall time; trainer step within 1.15x of the bare loop.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import diffusio.families  # noqa: F401  (registers the families' solvers: flowmap, si_ode, si_sde, mrs, mrs_sde)
from bench.common import median_time, results_dir, write_results
from diffusio.app.plotting import _plt
from diffusio.core.paths import LinearVP, RectifiedFlow
from diffusio.data.sources import FunctionSource
from diffusio.data.toy import sample_toy
from diffusio.families.flowmap import FlowMapModel
from diffusio.models.base import Model
from diffusio.nets import MLP
from diffusio.samplers import SOLVERS, sample
from diffusio.samplers.dpm_v3 import Statistics
from diffusio.training import TrainConfig, Trainer
from diffusio.training.losses import DiffusionLoss


class TimedNet(nn.Module):
    """Accumulates the wall time spent inside the wrapped network's forward."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.seconds = net, 0.0

    def forward(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.net(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        return out


class _TwoTimes(nn.Module):
    """A flow-map network ``net(x, t, s)`` made of a one-time network (the arithmetic per call is what is timed)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, t, s):
        return self.net(x, t)


def sampler_overhead(batch: int, steps: int, repeats: int) -> list[dict]:
    net = MLP(2, hidden=256, depth=4).eval()
    timed = TimedNet(net)
    gaussian_model = Model(timed, LinearVP(), "eps")
    flowmap_model = FlowMapModel(_TwoTimes(timed), RectifiedFlow())
    rows = []
    for name, spec in SOLVERS.items():
        if spec.calls_per_step is None or spec.min_steps > steps:
            continue
        model = flowmap_model if name == "flowmap" else gaussian_model  # the jump sampler needs a flow-map model
        # solvers that need statistics get the trivial ones: the same arithmetic per step as estimated ones
        opts = {"statistics": Statistics.trivial(model.path, (2,))} if "statistics" in spec.needs else {}
        fracs, walls = [], []
        for r in range(repeats + 1):
            timed.seconds = 0.0
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(r)
            sample(model, shape=(batch, 2), solver=name, steps=steps, generator=gen, **opts)
            wall = time.perf_counter() - t0
            if r:  # the first run is a warm-up
                fracs.append(1 - timed.seconds / wall)
                walls.append(wall)
        fracs.sort()
        rows.append(
            {
                "solver": name,
                "steps": steps,
                "wall_s": sorted(walls)[len(walls) // 2],
                "overhead_fraction": fracs[len(fracs) // 2],
            }
        )
    return rows


def trainer_vs_bare(batch: int, steps: int, repeats: int) -> dict:
    path = LinearVP()

    def make():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return MLP(2, hidden=256, depth=4)

    net_a, net_b = make(), make()
    data = FunctionSource(lambda n, g: sample_toy("moons", n, generator=g), (2,))
    trainer = Trainer(
        Model(net_a, path, "eps"),
        DiffusionLoss("eps"),
        data,
        TrainConfig(steps=10**9, batch_size=batch, progress=False, ema_decay=0.999),
    )
    opt = torch.optim.AdamW(net_b.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def bare_steps():
        for _ in range(steps):
            x0 = sample_toy("moons", batch, generator=g)
            t = path.t_min + (path.t_max - path.t_min) * torch.rand(batch, generator=g, dtype=torch.float64)
            eps = torch.randn(x0.shape, generator=g)
            xt = path.alpha(t).float()[:, None] * x0 + path.sigma(t).float()[:, None] * eps
            loss = ((net_b(xt, t.float()) - eps) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def trainer_steps():
        for _ in range(steps):
            trainer.train_step()

    # interleave the two so that machine load affects both alike
    bare, ours = [], []
    for _ in range(repeats):
        bare.append(median_time(bare_steps, repeats=1, warmup=0) / steps)
        ours.append(median_time(trainer_steps, repeats=1, warmup=0) / steps)
    bare.sort()
    ours.sort()
    b, o = bare[len(bare) // 2], ours[len(ours) // 2]
    return {"batch": batch, "bare_step_ms": 1e3 * b, "trainer_step_ms": 1e3 * o, "ratio": o / b}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffusio bench overhead", description=__doc__)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-batch", type=int, default=512)
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    out = results_dir(a.out)
    rows = sampler_overhead(a.batch, a.steps, a.repeats)
    train = trainer_vs_bare(a.train_batch, a.train_steps, a.repeats)
    worst = max(r["overhead_fraction"] for r in rows)
    md = [
        "# Overhead benchmark",
        "",
        f"Sampler: MLP(2, hidden=256, depth=4), batch {a.batch}, {a.steps} steps; overhead = 1 - (time inside the "
        "network) / (sampler wall time), median of repeats. Target < 5%. Every solver but flowmap runs the same eps "
        "network on LinearVP (the interpolant solvers si_ode / si_sde through its velocity and score heads, mrs / "
        "mrs_sde on it as a Gaussian path); flowmap runs a flow-map network built from it.",
        "",
        "| solver | wall (s) | overhead |",
        "|---|---|---|",
        *[f"| {r['solver']} | {r['wall_s']:.3f} | {100 * r['overhead_fraction']:.2f}% |" for r in rows],
        "",
        f"Worst sampler overhead: **{100 * worst:.2f}%**.",
        "",
        f"Trainer: same MLP, batch {a.train_batch}; bare loop = sample data, perturb, MSE on eps, backward, AdamW. "
        "The trainer adds gradient clipping, EMA, warm-up and NaN checks. Target ratio <= 1.15.",
        "",
        "| bare step (ms) | trainer step (ms) | ratio |",
        "|---|---|---|",
        f"| {train['bare_step_ms']:.2f} | {train['trainer_step_ms']:.2f} | **{train['ratio']:.3f}** |",
        "",
    ]
    write_results(out, "overhead", {"sampler": rows, "trainer": train}, "\n".join(md))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([r["solver"] for r in rows], [100 * r["overhead_fraction"] for r in rows])
    ax.axhline(5, color="red", ls="--", lw=1, label="5% target")
    ax.set_ylabel("time outside model calls (%)")
    ax.set_title(f"Sampler overhead, MLP at batch {a.batch}")
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(out / "overhead.png", dpi=110)
    plt.close(fig)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
