"""Mean-reverting SDEs (MR-SDE / IR-SDE) and the MRS multistep solvers, registered as ``mrs`` and ``mrs_sde``."""

from diffusio.families.mean_reverting.family import FAMILY
from diffusio.families.mean_reverting.sampler import sample_mrs, sample_mrs_sde
from diffusio.samplers import Solver, register_solver

__all__ = ["FAMILY", "sample_mrs", "sample_mrs_sde"]

register_solver(
    Solver("mrs", sample_mrs, 2, 1, summary="MRS-ODE multistep (order 1-3, data or noise form; = DPM-Solver++)")
)
register_solver(
    Solver("mrs_sde", sample_mrs_sde, 2, 1, stochastic=True, summary="MRS-SDE (order 1-2, data or noise form)")
)
