"""diffusio: diffusion and flow generative models as one time-dependent velocity field.

``diffusio.sample(model, shape=..., solver=..., steps=...)`` is the front door; ``Model(net, path, prediction)``
wraps a network; ``diffusio.paths`` holds the forward processes; ``diffusio.data.GaussianMixture`` gives exact
ground truth.
"""

from . import parametrization, paths, timesteps
from .model import EDMPrecond, Model, ModelBase, ModelWrapper
from .samplers import SOLVERS, SampleResult, sample

__version__ = "0.1.0"

__all__ = [
    "SOLVERS",
    "EDMPrecond",
    "Model",
    "ModelBase",
    "ModelWrapper",
    "SampleResult",
    "parametrization",
    "paths",
    "sample",
    "timesteps",
]
