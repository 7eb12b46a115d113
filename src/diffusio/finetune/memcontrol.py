"""MemControl: choose *which* blocks to fine-tune so that the adapted model memorizes less (Dutt et al. 2025,
"MemControl: Mitigating Memorization in Diffusion Models via Automated Parameter Selection", Sec. 3).

Bi-level search: the outer level (an optuna multi-objective study, TPE with a fixed seed) draws a binary mask over
the candidate sites (blocks of the network) and a learning rate; the inner level adapts the sites with ``m_j = 1``
(a peft adapter on every Linear/Conv inside them), fine-tunes, and returns two objectives to minimize, a
memorization score and a quality score, computed by the caller's ``evaluate`` (e.g.
``diffusio.analysis.noise_difference`` and a Fréchet distance). The result holds every trial, the Pareto front
and the chosen mask (lowest quality score among masks with memorization <= ``max_memorization``; without a
target, the front point closest to the ideal after min-max scaling).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from diffusio.finetune.adapters import adapt, adapter_targets
from diffusio.finetune.train import finetune
from diffusio.models.base import Model

__all__ = ["MemControlResult", "memcontrol_search", "site_targets"]


def site_targets(net, site: str) -> list[str]:
    """The adaptable layers (Linear / Conv2d) inside module ``site`` of ``net`` (the mask -> module mapping)."""
    found = [n for n in adapter_targets(net) if n == site or n.startswith(site + ".")]
    if not found:
        names = sorted({n.rsplit(".", 1)[0] for n in adapter_targets(net)})[:8]
        raise ValueError(f"site {site!r} holds no Linear/Conv2d layer of {type(net).__name__}; e.g. {names}")
    return found


@dataclass
class MemControlResult:
    """``trials``: dicts (mask, lr, memorization, quality, trainable); ``pareto``: the non-dominated trials;
    ``chosen``: the selected trial; ``sites``: the mask positions' module names (mask[j] switches sites[j])."""

    sites: list[str]
    trials: list[dict] = field(default_factory=list)
    pareto: list[dict] = field(default_factory=list)
    chosen: dict | None = None


def _pareto(trials: list[dict]) -> list[dict]:
    def dominated(a, b):  # b dominates a
        return (b["memorization"] <= a["memorization"] and b["quality"] <= a["quality"]) and (
            b["memorization"] < a["memorization"] or b["quality"] < a["quality"]
        )

    return [a for a in trials if not any(dominated(a, b) for b in trials)]


def _choose(front: list[dict], max_memorization: float | None) -> dict:
    if max_memorization is not None:
        ok = [t for t in front if t["memorization"] <= max_memorization]
        if ok:
            return min(ok, key=lambda t: t["quality"])
    lo = {k: min(t[k] for t in front) for k in ("memorization", "quality")}
    hi = {k: max(t[k] for t in front) for k in ("memorization", "quality")}
    span = {k: (hi[k] - lo[k]) or 1.0 for k in lo}
    return min(front, key=lambda t: sum(((t[k] - lo[k]) / span[k]) ** 2 for k in lo))


def memcontrol_search(
    model: Model,
    sites: list[str],
    data,
    evaluate: Callable[[Model], tuple[float, float]],
    *,
    n_trials: int = 16,
    steps: int = 200,
    method: str = "lora",
    rank: int = 4,
    lr_range: tuple[float, float] = (1e-4, 1e-2),
    batch_size: int = 128,
    label_dropout: float = 0.1,
    max_memorization: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> MemControlResult:
    """Search masks over ``sites`` (module names of ``model.net``) with optuna; see the module docstring.

    ``data``: the fine-tuning source (``sample(n, generator)``); ``evaluate(adapted) -> (memorization, quality)``,
    both lower-is-better. The all-zero mask is the base model (no fine-tuning), evaluated as such.
    """
    try:
        import optuna
    except ImportError as e:
        raise ImportError("MemControl's search needs optuna: pip install 'diffusio[finetune]'") from e

    if not sites:
        raise ValueError("sites must name at least one module of the network")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    lo, hi = lr_range
    if not 0 < lo <= hi:
        raise ValueError(f"lr_range must be (low, high) with 0 < low <= high, got {lr_range}")
    targets = {s: site_targets(model.net, s) for s in sites}  # validates every site up front
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(8, n_trials))
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    result = MemControlResult(list(sites))
    for _ in tqdm(range(n_trials), desc="memcontrol", disable=not progress):
        trial = study.ask()
        mask = tuple(int(trial.suggest_categorical(f"site{j}", [0, 1])) for j in range(len(sites)))
        lr = trial.suggest_float("lr", lo, hi, log=True)
        chosen = [t for s, m in zip(sites, mask) if m for t in targets[s]]
        if chosen:
            adapted = adapt(model, method, target_modules=chosen, rank=rank)
            finetune(adapted, data, steps, lr=lr, batch_size=batch_size, label_dropout=label_dropout, seed=seed,
                     progress=False)  # fmt: skip
            trainable = adapted.trainable_parameters()
        else:
            adapted, trainable = model, 0
        mem, quality = (float(v) for v in evaluate(adapted))
        study.tell(trial, [mem, quality])
        result.trials.append({"mask": list(mask), "lr": lr, "memorization": mem, "quality": quality,
                              "trainable": trainable})  # fmt: skip
    result.pareto = _pareto(result.trials)
    result.chosen = _choose(result.pareto, max_memorization)
    return result
