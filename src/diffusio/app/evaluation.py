"""Sampling a trained model in batches and judging samples against their data set (used by the CLI and demo)."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusio.models.base import ModelBase
from diffusio.samplers import sample

__all__ = ["combine_evaluation", "evaluate", "evaluation_parts", "generate", "generate_family", "reference_data"]


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
    return combine_evaluation(evaluation_parts(samples, data_cfg, n_ref, seed))


def evaluation_parts(
    samples: Tensor, data_cfg: dict, n_ref: int = 5000, seed: int = 12345, *, rank: int = 0, world_size: int = 1
) -> dict:
    """Rank ``rank``'s share of :func:`evaluate` under ``torchrun`` (``diffusio eval``): the work of one process
    cut into units (chunks of sliced-W2 projections, row chunks of the MMD kernel sums, batches of the metric
    classifier's features and probabilities for the samples and the reference), units dealt round-robin to the
    ranks. :func:`combine_evaluation` of all ranks' parts equals :func:`evaluate` of one process bit for bit."""
    from diffusio.metrics.distances import mmd_parts, sliced_wasserstein_parts

    if not torch.isfinite(samples).all():
        raise ValueError("the samples contain NaN or inf")
    ref = reference_data(data_cfg, n_ref, seed)
    g = torch.Generator().manual_seed(seed)
    m = min(len(samples), 2000)
    dealt = {"rank": rank, "world_size": world_size}
    out = {
        "n": len(samples),
        "sliced_w2": sliced_wasserstein_parts(samples, ref, generator=g, **dealt),
        "mmd": mmd_parts(samples[:m].flatten(1), ref[:m].flatten(1), **dealt),
    }
    if data_cfg.get("name") == "digits":
        from diffusio.metrics import get_digits_classifier
        from diffusio.metrics.fid import classifier_batches

        clf = get_digits_classifier(size=data_cfg.get("size", 8), mode=data_cfg.get("mode", "pad"))
        if samples.ndim != 4 or len(samples) == 0:
            raise ValueError(f"samples must have shape (N, 1, S, S) with N >= 1; got {tuple(samples.shape)}")
        for name, x in (("samples", samples), ("reference", ref)):
            out[name] = {"n_batches": -(-len(x) // 512), "batches": classifier_batches(x, clf, 512, **dealt)}
    return out


def combine_evaluation(*parts: dict) -> dict:
    """The metrics of :func:`evaluate` from the :func:`evaluation_parts` of all ranks (on rank 0)."""
    from diffusio.metrics.distances import merge_units, mmd_reduce, sliced_wasserstein_reduce

    if not parts:
        raise ValueError("combine_evaluation needs the evaluation_parts of every rank; got none")
    first = parts[0]
    out = {
        "n": first["n"],
        "sliced_w2": sliced_wasserstein_reduce(*(p["sliced_w2"] for p in parts)),
        "mmd": mmd_reduce(*(p["mmd"] for p in parts)),
    }
    if "samples" in first:
        from diffusio.metrics.fid import confidence_from_probs, frechet_distance

        cat = {}
        for name in ("samples", "reference"):
            got = merge_units([p[name]["batches"] for p in parts], first[name]["n_batches"], name)
            cat[name] = [torch.cat([got[k][i] for k in range(len(got))]) for i in (0, 1)]  # features, probs
        out["frechet_distance"] = frechet_distance(cat["samples"][0], cat["reference"][0])
        conf = confidence_from_probs(cat["samples"][1])
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
