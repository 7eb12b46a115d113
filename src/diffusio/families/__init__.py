"""Model families beyond the plain Gaussian diffusion model, one subpackage (or module) each, each exporting one
:class:`~diffusio.families.base.Family` record; ``FAMILIES`` maps a run config's ``family`` to it. Adding a family
is its own folder plus one line here.

Importing this package registers every family's solvers (``flowmap``, ``mrs``, ``mrs_sde``) with the sampler
registry; ``import diffusio`` does so.
"""

from diffusio.families import flow_matching, flowmap, interpolants, mean_reverting, pfgmpp
from diffusio.families.base import DIFFUSION, Builders, Family
from diffusio.families.levels.family import FAMILY as LEVELS
from diffusio.families.multitask.family import FAMILY as MULTITASK

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        DIFFUSION,
        flow_matching.FAMILY,
        pfgmpp.FAMILY,
        interpolants.FAMILY,
        mean_reverting.FAMILY,
        flowmap.FAMILY,
        MULTITASK,
        LEVELS,
    )
}

__all__ = ["FAMILIES", "Builders", "Family", "flow_matching", "flowmap", "interpolants", "mean_reverting", "pfgmpp"]
