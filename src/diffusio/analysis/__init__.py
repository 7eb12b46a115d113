"""Analysis of trained models: PF-ODE likelihoods."""

from diffusio.analysis.likelihood import bits_per_dim, log_likelihood
from diffusio.analysis.memorization import fraction_memorized, nn_distance_ratio, noise_difference

__all__ = ["bits_per_dim", "log_likelihood"]
__all__ += ["fraction_memorized", "nn_distance_ratio", "noise_difference"]
