"""Denoising MCMC: Denoising Langevin Gibbs (Kim & Ye 2023, "Denoising MCMC for Accelerating Diffusion-Based
Generative Models", ICML; Sec. 3-4, Alg. 1).

The chain targets the joint pi(x, i) = p(i) p_{t_i}(x) over data x and an index i into a grid of noise levels
(uniform prior p(i)). One Gibbs sweep is

1. a Langevin step on x at the fixed level t = t_i, with the model's score (Kim & Ye 2023, Eq. 9; the step
   ``eta`` is absolute, not scaled by sigma^2):  x <- x + (eta / 2) score(x, t_i) + sqrt(eta) z  (one model call),
2. a Gibbs update of the level from pi(i | x) proportional to p_{t_i}(x), given by a noise-level classifier as
   logits over the grid: ``level="sample"`` draws i ~ softmax(logits) (the Gibbs-exact update), ``"argmax"`` takes
   the mode (the official demo's greedy choice, which biases the chain toward modal levels).

Each chain keeps the visited state with the lowest noise in a window of sweeps and hands it to any registered
ODE/SDE solver started at that chain's own level (chains with equal levels share one batched solve). The level
posterior comes from any callable x -> logits: a noise-level classifier trained by ``diffusio train`` (the
``levels`` family, :class:`diffusio.families.levels.LevelClassifier`, whose grid is checked against the chain's)
or, for a known Gaussian mixture, :class:`ExactLevelPosterior` (tests, reference rows of the benchmark). The Langevin
step is :func:`diffusio.samplers.kernels.em_update` (drift score/2, unit diffusion, dt = eta). Model calls are
counted per sample; classifier calls are reported separately.

Levels are times of the path: :func:`level_grid` spaces them geometrically in the noise level s = sigma/alpha
between the path's ends (Kim & Ye: u_i = linspace(1, 1e-3), s_i = s_min (s_max/s_min)^{u_i}), so the chain works
on VP paths as well as on VE/EDM ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusio.core.timesteps import get_timesteps
from diffusio.models.base import CountingModel, ModelBase
from diffusio.samplers import get_solver, sample
from diffusio.samplers.kernels import em_update

__all__ = [
    "ChainState",
    "DLGResult",
    "ExactLevelPosterior",
    "check_classifier_grid",
    "init_chains",
    "langevin_gibbs",
    "level_grid",
    "sample_dmcmc",
]

_F64 = torch.float64

LevelLogits = Callable[[Tensor], Tensor]  # x (B, ...) -> logits (B, L) over the level grid


def level_grid(path, n: int = 1000, u_min: float = 1e-3) -> Tensor:
    """``n`` decreasing times whose noise levels s = sigma/alpha are s_min (s_max/s_min)^u for u = linspace(1, u_min)
    (Kim & Ye 2023, official demo): index 0 is t_max; the last index is just above t_min."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if not 0 <= u_min < 1:
        raise ValueError(f"u_min must be in [0, 1), got {u_min!r}")
    ends = torch.tensor([path.t_max, path.t_min], dtype=_F64)
    s_hi, s_lo = path.noise_level(ends).tolist()
    u = torch.linspace(1.0, u_min, n, dtype=_F64)
    ts = path.t_of_noise_level(s_lo * (s_hi / s_lo) ** u)
    ts[0] = path.t_max
    return ts.clamp(min=path.t_min, max=path.t_max)


class ExactLevelPosterior:
    """The exact noise-level posterior of a Gaussian mixture: logits_i = log p_{t_i}(x) (uniform prior).
    A stand-in for the trained classifier where the data are a known mixture (tests, toy benchmarks)."""

    def __init__(self, mixture, path, levels: Tensor):
        self.mixture, self.path, self.levels = mixture, path, torch.as_tensor(levels, dtype=_F64)

    def __call__(self, x: Tensor) -> Tensor:
        xs = x.to(_F64)
        return torch.stack([self.mixture.log_prob(xs, t, self.path) for t in self.levels], 1)


@dataclass
class ChainState:
    """B persistent chains: states ``x`` and level indices ``idx`` ``(B,)`` into the level grid."""

    x: Tensor
    idx: Tensor


@dataclass
class DLGResult:
    """One window of sweeps: the final chain ``state``, the lowest-noise states ``x_min``, ``idx_min`` per chain,
    model calls per chain (``calls``), classifier calls per chain (``classifier_calls``) and the level index of
    every chain after each sweep (``trace``, ``(sweeps, B)``)."""

    state: ChainState
    x_min: Tensor
    idx_min: Tensor
    calls: int
    classifier_calls: int
    trace: Tensor = field(default_factory=lambda: torch.empty(0))


def _validate(levels: Tensor, eta: float, sweeps: int, level: str) -> None:
    if levels.ndim != 1 or levels.numel() < 2 or not (levels[1:] < levels[:-1]).all():
        raise ValueError("levels must be a 1-D strictly decreasing grid of times (e.g. dmcmc.level_grid(path))")
    if not (isinstance(eta, float | int) and eta > 0 and eta < float("inf")):
        raise ValueError(f"eta (the absolute Langevin step) must be a positive finite number, got {eta!r}")
    if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps < 0:
        raise ValueError(f"sweeps must be an integer >= 0, got {sweeps!r}")
    if level not in ("sample", "argmax", "fixed"):
        raise ValueError(f"level must be 'sample' (Gibbs), 'argmax' (greedy) or 'fixed' (no update), got {level!r}")


def check_classifier_grid(classifier, levels: Tensor) -> None:
    """A classifier that carries its level grid (``classifier.levels``, e.g. a trained
    :class:`diffusio.families.levels.LevelClassifier`) must have been trained on ``levels`` (Kim & Ye 2023: an
    index shift silently moves every noise level)."""
    own = getattr(classifier, "levels", None)
    if own is None:
        return
    own = torch.as_tensor(own, dtype=_F64)
    if own.shape != levels.shape or not torch.allclose(own, levels.to(own), rtol=1e-6, atol=0.0):
        raise ValueError(
            f"the classifier was trained on another level grid ({len(own)} levels, t from {float(own[0]):.4g} to "
            f"{float(own[-1]):.4g}) than the chain's ({len(levels)} levels, {float(levels[0]):.4g} to "
            f"{float(levels[-1]):.4g}); pass levels=classifier.levels"
        )


def init_chains(
    model: ModelBase,
    x: Tensor,
    levels: Tensor,
    classifier: LevelLogits,
    *,
    eta: float,
    burn: int,
    steps: int = 10,
    renoise: float = 0.5,
    cond: dict | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> tuple[ChainState, int]:
    """Start B chains from prior noise ``x`` (Kim & Ye 2023, Alg. 1, step 1): rough samples from one Heun solve of
    ``steps`` steps, re-noised by ``renoise`` (a standard deviation), the level from the classifier's mode, then
    ``burn`` Langevin-Gibbs sweeps. Returns the state and the model calls per chain it spent."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps (of the initial Heun solve) must be an integer >= 1, got {steps!r}")
    if not (isinstance(renoise, float | int) and 0 <= renoise < float("inf")):
        raise ValueError(f"renoise must be a finite number >= 0, got {renoise!r}")
    levels = torch.as_tensor(levels, dtype=_F64)
    rough = sample(model, x, solver="heun", steps=steps, grid="karras", cond=cond)
    y = rough.x + renoise * torch.randn(rough.x.shape, generator=generator, dtype=rough.x.dtype)
    idx = torch.argmax(classifier(y), 1).to(torch.long)
    win = langevin_gibbs(
        model, ChainState(y, idx), levels, classifier, eta=eta, sweeps=burn, cond=cond, generator=generator,
        progress=progress,
    )  # fmt: skip
    return win.state, rough.nfe + win.calls


def langevin_gibbs(
    model: ModelBase,
    state: ChainState,
    levels: Tensor,
    classifier: LevelLogits | None,
    *,
    eta: float,
    sweeps: int,
    level: str = "sample",
    cond: dict | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> DLGResult:
    """``sweeps`` Langevin-Gibbs sweeps on ``state`` (Kim & Ye 2023, Alg. 1, step 2a), tracking per chain the
    lowest-noise state visited (the window starts at the current state). ``level="fixed"`` keeps every chain at its
    level (the ablation without the classifier; ``classifier`` may then be None)."""
    levels = torch.as_tensor(levels, dtype=_F64)
    _validate(levels, eta, sweeps, level)
    if classifier is None and level != "fixed":
        raise ValueError("a classifier (x -> logits over the levels) is needed unless level='fixed'")
    check_classifier_grid(classifier, levels)
    x, idx = state.x, state.idx.clone()
    if idx.shape != (x.shape[0],) or int(idx.min()) < 0 or int(idx.max()) >= len(levels):
        raise ValueError(f"state.idx must hold {x.shape[0]} indices in [0, {len(levels) - 1}]")
    counted = CountingModel(model)
    x_min, idx_min, trace, c_calls = x.clone(), idx.clone(), [], 0
    shape = (-1,) + (1,) * (x.ndim - 1)
    with torch.no_grad():
        for _ in tqdm(range(sweeps), desc="Langevin-Gibbs", disable=not progress):
            score = counted.predict(x, levels[idx], "score", **(cond or {})).to(x.dtype)
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = em_update(x, 0.5 * score, 1.0, float(eta), noise)
            if not torch.isfinite(x).all():
                raise RuntimeError(f"Langevin-Gibbs diverged (eta={eta}); use a smaller eta")
            if level != "fixed":
                logits = classifier(x).to(_F64)
                c_calls += 1
                if logits.shape != (x.shape[0], len(levels)):
                    raise ValueError(
                        f"classifier returned shape {tuple(logits.shape)}; want ({x.shape[0]}, {len(levels)})"
                    )
                if level == "sample":
                    u = torch.rand(logits.shape, generator=generator, dtype=_F64)
                    idx = torch.argmax(logits - torch.log(-torch.log(u.clamp_min(1e-300))), 1)  # Gumbel-max
                else:
                    idx = torch.argmax(logits, 1)
            lower = idx > idx_min  # a larger index is a lower noise level
            x_min = torch.where(lower.reshape(shape), x, x_min)
            idx_min = torch.where(lower, idx, idx_min)
            trace.append(idx.clone())
    tr = torch.stack(trace) if trace else torch.empty(0, x.shape[0], dtype=torch.long)
    return DLGResult(ChainState(x, idx), x_min, idx_min, sweeps, c_calls, tr)


def sample_dmcmc(
    model: ModelBase,
    state: ChainState,
    levels: Tensor,
    classifier: LevelLogits | None,
    *,
    eta: float,
    sweeps: int,
    solver: str = "heun",
    steps: int = 5,
    grid: str = "karras",
    level: str = "sample",
    cond: dict | None = None,
    generator: torch.Generator | None = None,
    **options,
) -> tuple[Tensor, DLGResult, int]:
    """One emitted batch (Kim & Ye 2023, Alg. 1, steps 2a-2b): ``sweeps`` Langevin-Gibbs sweeps, then ``solver``
    with ``steps`` steps on the ``grid`` from each chain's lowest level down to t_min (chains grouped by level).
    Returns ``(samples, window, calls per sample)`` where calls = sweeps + the solver's calls; the chains continue
    from ``window.state``. Per-sample conditioning (``cond`` tensors with B rows) follows its chains."""
    spec = get_solver(solver)
    if spec.calls_per_step is None:
        raise ValueError(f"solver {solver!r} is adaptive; pass a fixed-step ODE/SDE solver (e.g. heun, dpmpp_2m)")
    win = langevin_gibbs(
        model, state, levels, classifier, eta=eta, sweeps=sweeps, level=level, cond=cond, generator=generator
    )
    path, out, solve_calls = model.path, torch.empty_like(win.x_min), 0
    for j in torch.unique(win.idx_min).tolist():
        rows = win.idx_min == j
        t0 = float(levels[j])
        c = None if cond is None else {k: v[rows] for k, v in cond.items()}
        if t0 <= path.t_min:
            out[rows] = win.x_min[rows]
            continue
        ts = get_timesteps(path, steps, grid, t_max=t0)
        res = sample(model, win.x_min[rows], solver=solver, grid=ts, cond=c, generator=generator, **options)
        out[rows] = res.x
        solve_calls = max(solve_calls, res.nfe)
    return out, win, win.calls + solve_calls
