"""The Model contract (``model(x, t, **cond) -> x0``), its wrappers, exact models and the peers' adapters."""

from diffusio.models.adapters import from_diffusers, to_diffusers, to_k_diffusion
from diffusio.models.base import CountingModel, EDMPrecond, KDiffusionModel, Model, ModelBase, ModelWrapper
from diffusio.models.exact import ExactModel
from diffusio.models.wrappers import Rescheduled

__all__ = [
    "CountingModel",
    "EDMPrecond",
    "ExactModel",
    "KDiffusionModel",
    "Model",
    "ModelBase",
    "ModelWrapper",
    "Rescheduled",
    "from_diffusers",
    "to_diffusers",
    "to_k_diffusion",
]
