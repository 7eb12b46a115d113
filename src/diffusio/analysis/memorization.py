"""Memorization metrics: does a model regurgitate its training images?

- :func:`nn_distance_ratio`: the distance of each sample to its nearest training image, divided by the typical
  nearest-neighbour distance *within* the (de-duplicated) training set (the median over training images of the
  distance to their nearest other image). A copy of a training image scores 0, a fresh sample about 1 (the
  generated-to-train against train-to-train comparison of Somepalli et al. 2023, "Diffusion Art or Digital
  Forgery?", and Carlini et al. 2023, "Extracting Training Data from Diffusion Models", in pixel space).
- :func:`fraction_memorized`: the share of samples whose ratio is below a threshold (default 1/3).
- :func:`noise_difference`: Wen et al. 2024 ("Detecting, Explaining, and Mitigating Memorization in Diffusion
  Models", Sec. 3) — ``d(x_t, c) = || eps(x_t, t, c) - eps(x_t, t, null) ||`` on the *same* ``x_t`` and ``t`` for
  the conditional and the null pass; a memorized condition pulls the prediction far from the unconditional one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusio.models.base import ModelBase

__all__ = ["fraction_memorized", "nn_distance_ratio", "noise_difference"]


def _flat(x: Tensor, name: str) -> Tensor:
    if not torch.is_tensor(x) or x.ndim < 2 or len(x) < 1:
        raise ValueError(f"{name} must be a tensor (N, ...) with N >= 1; got {getattr(x, 'shape', x)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x.reshape(len(x), -1).double()


def _nearest(a: Tensor, b: Tensor, batch: int = 1024) -> Tensor:
    """Distance from each row of ``a`` to its nearest row of ``b``."""
    return torch.cat([torch.cdist(chunk, b).min(1).values for chunk in a.split(batch)])


def nn_distance_ratio(samples: Tensor, train: Tensor) -> Tensor:
    """Per-sample ratio ``(N,)``: distance to the nearest training image / median train-to-train NN distance.

    ``samples`` ``(N, ...)`` and ``train`` ``(M, ...)`` share the per-item shape; duplicates in ``train`` are merged
    first (so duplicated training images do not make the yardstick zero).
    """
    s, tr = _flat(samples, "samples"), _flat(train, "train")
    if s.shape[1] != tr.shape[1]:
        raise ValueError(
            f"samples and train must have the same item shape; got {samples.shape[1:]} and {train.shape[1:]}"
        )
    tr = torch.unique(tr, dim=0)
    if len(tr) < 2:
        raise ValueError("train needs at least two distinct items to define a nearest-neighbour scale")
    d = torch.cdist(tr, tr)
    d.fill_diagonal_(float("inf"))
    scale = d.min(1).values.median()
    return (_nearest(s, tr) / scale).float()


def fraction_memorized(samples: Tensor, train: Tensor, threshold: float = 1 / 3) -> float:
    """Share of ``samples`` whose :func:`nn_distance_ratio` is below ``threshold`` (near-copies of training items)."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    return float((nn_distance_ratio(samples, train) < threshold).float().mean())


@torch.no_grad()
def noise_difference(
    model: ModelBase,
    x0: Tensor,
    cond: dict,
    null_cond: dict,
    times: Tensor | None = None,
    *,
    reduce: str = "mean",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-item ``d = || eps(x_t, t, cond) - eps(x_t, t, null_cond) ||`` ``(N,)`` reduced over ``times``.

    ``x0`` ``(N, ...)`` are the items (training images) whose conditions ``cond`` are tested; each time draws one
    noise, and both passes see the same ``x_t`` and ``t``. ``times`` default: 5 times evenly in [0.2, 0.8] of the
    path's interval; ``reduce``: ``mean`` or ``max`` over times.
    """
    x = _flat(x0, "x0")  # validates
    del x
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    path = model.path
    if times is None:
        times = path.t_min + (path.t_max - path.t_min) * torch.linspace(0.2, 0.8, 5, dtype=torch.float64)
    out = []
    for t in times.reshape(-1):
        tt = t.to(torch.float64).expand(len(x0))
        xt = path.perturb(x0.double(), torch.randn(x0.shape, generator=generator, dtype=torch.float64), tt).to(x0.dtype)
        tq = tt.to(x0.dtype)
        diff = model.eps(xt, tq, **cond) - model.eps(xt, tq, **null_cond)
        out.append(diff.reshape(len(x0), -1).norm(dim=1))
    d = torch.stack(out)
    return d.mean(0) if reduce == "mean" else d.max(0).values
