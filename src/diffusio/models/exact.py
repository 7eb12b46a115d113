"""Exact models: the posterior mean of a Gaussian mixture on any Gaussian path, as a Model (the ground truth)."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusio.core.parametrization import convert
from diffusio.core.paths import Path
from diffusio.core.time import as_time
from diffusio.data.gmm import GaussianMixture
from diffusio.models.base import ModelBase

__all__ = ["ExactModel"]

_F64 = torch.float64


class ExactModel(ModelBase):
    """A Model whose x0 prediction is the exact posterior mean of a Gaussian mixture (computed in float64)."""

    def __init__(self, mixture: GaussianMixture, path: Path):
        super().__init__()
        self.mixture = mixture
        self.path = path

    def predict(self, x: Tensor, t: Tensor, kind: str = "x0", y=None) -> Tensor:
        x64, t64 = x.to(_F64), as_time(t, x).to(_F64)
        x0 = self.mixture.denoise(x64, t64, self.path, y)
        return convert(x0, "x0", kind, x64, t64, self.path).to(x.dtype)
