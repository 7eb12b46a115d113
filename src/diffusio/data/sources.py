"""Training data sources: ``sample(n, generator) -> (x0, cond)`` drawn only from the passed generator.

Drawing a batch from a generator (instead of iterating a loader) makes training exactly resumable: the
generator state is the whole data-order state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["FunctionSource", "TensorSource"]


class TensorSource:
    """Uniform random minibatches (with replacement) from an in-memory tensor ``x`` ``(N, ...)`` and labels ``y``."""

    def __init__(self, x: Tensor, y: Tensor | None = None):
        if x.ndim < 2 or x.shape[0] < 1:
            raise ValueError(f"x must have shape (N, ...) with N >= 1; got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
            raise ValueError(f"the training data contain NaN or inf in {bad} of {x.shape[0]} examples")
        if y is not None and y.shape != (x.shape[0],):
            raise ValueError(f"labels y must have shape ({x.shape[0]},); got {tuple(y.shape)}")
        self.x, self.y = x, y
        self.shape = tuple(x.shape[1:])
        self.num_classes = None if y is None else int(y.max()) + 1

    def __len__(self) -> int:
        return self.x.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        idx = torch.randint(0, self.x.shape[0], (n,), generator=generator)
        return self.x[idx], ({} if self.y is None else {"y": self.y[idx]})


class FunctionSource:
    """Fresh draws from ``fn(n, generator) -> x`` (2-D toys, Gaussian mixtures): an infinite data set."""

    def __init__(self, fn: Callable[[int, torch.Generator | None], Tensor], shape: tuple[int, ...]):
        self.fn, self.shape, self.num_classes = fn, tuple(shape), None

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        x = self.fn(n, generator)
        if not torch.isfinite(x).all():
            raise ValueError("the data source produced NaN or inf")
        return x, {}
