"""Analysis of trained models: PF-ODE likelihoods."""

from diffusio.analysis.likelihood import bits_per_dim, log_likelihood

__all__ = ["bits_per_dim", "log_likelihood"]
