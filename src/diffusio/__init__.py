"""diffusio: diffusion and flow generative models as one time-dependent velocity field.

``diffusio.sample(model, shape=..., solver=..., steps=...)`` is the front door; ``Model(net, path, prediction)``
wraps a network; ``diffusio.paths`` holds the forward processes; ``diffusio.data.GaussianMixture`` gives exact
ground truth.
"""

from diffusio import families  # noqa: F401  (registers the families' solvers)
from diffusio.core import parametrization, paths, timesteps
from diffusio.models.base import EDMPrecond, Model, ModelBase, ModelWrapper
from diffusio.samplers import SOLVERS, SampleResult, sample
from diffusio.samplers.tuning import Plan, autotune

__version__ = "0.1.0"

__all__ = [
    "SOLVERS",
    "EDMPrecond",
    "Model",
    "ModelBase",
    "ModelWrapper",
    "Plan",
    "SampleResult",
    "autotune",
    "parametrization",
    "paths",
    "sample",
    "timesteps",
]
