"""Sampling a trained model in batches and judging samples against their data set (used by the CLI and demo)."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusio.models.base import ModelBase
from diffusio.samplers import sample

__all__ = ["evaluate", "generate", "generate_family", "reference_data"]


def generate(
    model: ModelBase,
    shape: tuple[int, ...],
    n: int,
    *,
    solver: str = "heun",
    steps: int = 18,
    grid: str | None = None,
    seed: int = 0,
    batch_size: int = 1000,
    labels: Tensor | None = None,
    progress: bool = False,
    **options,
) -> tuple[Tensor, int]:
    """``n`` samples in batches from one seeded generator; returns (samples, model calls per sample).

    ``labels`` ``(n,)`` condition a class-conditional model (pass ``None`` for unconditional sampling).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    g = torch.Generator(device=device).manual_seed(seed)
    out, nfe = [], 0
    for i in tqdm(range(0, n, batch_size), disable=not progress, desc=f"sample {solver}"):
        b = min(batch_size, n - i)
        cond = None if labels is None else {"y": labels[i : i + b].to(device)}
        res = sample(model, shape=(b, *shape), solver=solver, steps=steps, grid=grid, cond=cond, generator=g, **options)
        out.append(res.x.cpu())
        nfe = res.nfe
    return torch.cat(out), nfe


def reference_data(data_cfg: dict, n: int, seed: int = 12345, split: str = "test") -> Tensor:
    """Held-out data to compare samples with: fresh draws for toys, the digits test split (or all) otherwise."""
    name = data_cfg.get("name")
    if name == "toy":
        from diffusio.data.toy import sample_toy

        return sample_toy(data_cfg.get("dataset", "moons"), n, generator=torch.Generator().manual_seed(seed))
    if name == "digits":
        from diffusio.data.digits import load_digits

        args = {k: v for k, v in data_cfg.items() if k in ("size", "mode")}
        return load_digits(split=split, **args)[0][:n]
    from diffusio.app.config import build_data

    src = build_data(data_cfg)
    return src.sample(n, torch.Generator().manual_seed(seed))[0]


def evaluate(samples: Tensor, data_cfg: dict, n_ref: int = 5000, seed: int = 12345) -> dict:
    """Metrics of ``samples`` against the data: sliced W2 and MMD always; for digits also the Fréchet distance
    on the metric classifier's features and its confidence."""
    from diffusio.metrics import mmd, sliced_wasserstein

    if not torch.isfinite(samples).all():
        raise ValueError("the samples contain NaN or inf")
    ref = reference_data(data_cfg, n_ref, seed)
    g = torch.Generator().manual_seed(seed)
    m = min(len(samples), 2000)
    out = {
        "n": len(samples),
        "sliced_w2": sliced_wasserstein(samples, ref, generator=g),
        "mmd": mmd(samples[:m].flatten(1), ref[:m].flatten(1)),
    }
    if data_cfg.get("name") == "digits":
        from diffusio.metrics import classifier_confidence, digits_frechet_distance, get_digits_classifier

        clf = get_digits_classifier(size=data_cfg.get("size", 8), mode=data_cfg.get("mode", "pad"))
        out["frechet_distance"] = digits_frechet_distance(samples, ref, clf)
        conf = classifier_confidence(samples, clf)
        out["classifier_confidence"] = conf["mean_max_prob"]
        out["class_histogram"] = [int(c) for c in conf["class_histogram"]]
    return out


def generate_family(model, cfg: dict, n: int, *, solver: str, steps: int, seed: int = 0, **options) -> tuple:
    """Samples of a model of any family; returns (samples, calls per sample, extra metrics).

    The family's own ``generate`` when it has one (``diffusio.families.FAMILIES``: interpolants carry base draws
    by their ODE/SDE, mean-reverting models restore degraded test images and report PSNR), else :func:`generate`.
    """
    from diffusio.app.config import _family, builders

    family = _family(cfg)
    if family.generate is not None:
        return family.generate(model, cfg, n, solver=solver, steps=steps, seed=seed, build=builders(), **options)
    x, nfe = generate(model, tuple(cfg["data_shape"]), n, solver=solver, steps=steps, seed=seed, **options)
    return x, nfe, {}
