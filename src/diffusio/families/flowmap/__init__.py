"""Flow maps: models of the probability-flow ODE's solution map Psi_{t->s}, distilled from a teacher and sampled in
1-4 jumps (MeanFlow, Geng et al. 2025; flow-map matching, Boffi et al. 2025). ``maps``: the model, the ``flowmap``
solver and the distillation loss; ``family``: the :class:`~diffusio.families.base.Family` record."""

from diffusio.families.flowmap.family import FAMILY
from diffusio.families.flowmap.maps import (
    EulerianTarget,
    FlowMapDistillation,
    FlowMapModel,
    LagrangianTarget,
    flow_jump,
    flow_map_of,
    sample_flowmap,
)

__all__ = [
    "FAMILY",
    "EulerianTarget",
    "FlowMapDistillation",
    "FlowMapModel",
    "LagrangianTarget",
    "flow_jump",
    "flow_map_of",
    "sample_flowmap",
]
