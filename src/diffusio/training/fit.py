"""The settings shared by the small auxiliary networks the library fits itself (a noise-conditional classifier,
a potential whose gradient matches a score): optimiser steps, minibatch, learning rate and the MLP's size."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

__all__ = ["NetFit"]


@dataclass(frozen=True)
class NetFit:
    """How to fit a small MLP: ``steps`` optimiser steps on minibatches of ``batch_size`` at learning rate ``lr``,
    for a network ``hidden`` wide and ``depth`` blocks deep. Each user picks its own defaults
    (``NetFit(steps=300, hidden=64)`` overrides some of them)."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    hidden: int = 256
    depth: int = 3

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "hidden", "depth"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"NetFit.{name} must be an integer >= 1; got {v!r}")
        lr = self.lr
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"NetFit.lr must be a finite number > 0; got {self.lr!r}")
