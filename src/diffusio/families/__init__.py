"""Model families beyond the Gaussian ``alpha x0 + sigma eps`` path, one subpackage each.

Importing this package registers every family's solvers (``flowmap``, ``mrs``, ``mrs_sde``) with the sampler
registry; ``import diffusio`` does so.
"""

from diffusio.families import flow_matching, flowmap, interpolants, mean_reverting, pfgmpp

__all__ = ["flow_matching", "flowmap", "interpolants", "mean_reverting", "pfgmpp"]
