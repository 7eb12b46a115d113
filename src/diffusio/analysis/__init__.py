"""Analysis of trained models: PF-ODE likelihoods."""

from diffusio.analysis.decomposition import fit_conservative_part, gauge_residual, jacobian_asymmetry
from diffusio.analysis.fokker_planck import log_density_residual, ode_sde_gap, score_fp_residual
from diffusio.analysis.intrinsic import (
    denoiser_spectrum,
    flow_map_spectrum,
    intrinsic_dimension,
    pf_ode_encode,
    score_jacobian,
)
from diffusio.analysis.likelihood import bits_per_dim, log_likelihood
from diffusio.analysis.memorization import fraction_memorized, nn_distance_ratio, noise_difference

__all__ = ["bits_per_dim", "log_likelihood"]
__all__ += ["fraction_memorized", "nn_distance_ratio", "noise_difference"]
__all__ += [
    "denoiser_spectrum",
    "fit_conservative_part",
    "flow_map_spectrum",
    "gauge_residual",
    "intrinsic_dimension",
    "jacobian_asymmetry",
    "log_density_residual",
    "ode_sde_gap",
    "pf_ode_encode",
    "score_fp_residual",
    "score_jacobian",
]
