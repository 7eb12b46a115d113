"""Inference-time scaling: verifiers, search over noises and paths, particle methods (SMC, Rollover Budget Forcing).

One front door, :func:`search`, runs every strategy on any Model and solver under a budget of model evaluations
per output; :func:`smc` returns the weighted particle populations themselves. Verifiers are plain callables
``verifier(x, cond=None) -> (B,)`` (higher is better).
"""

from diffusio.scaling.particles import DIFFUSIONS, ParticleResult, diffusion_schedule, systematic_resample
from diffusio.scaling.search import STRATEGIES, SearchResult, neighbours, paths_schedule, search, smc
from diffusio.scaling.verifiers import (
    CallableVerifier,
    ClassifierVerifier,
    CountingVerifier,
    MixtureLogDensity,
    RankEnsemble,
    SelfConsistency,
    Verifier,
    check_scores,
    rank_average,
)

__all__ = [
    "DIFFUSIONS",
    "STRATEGIES",
    "CallableVerifier",
    "ClassifierVerifier",
    "CountingVerifier",
    "MixtureLogDensity",
    "ParticleResult",
    "RankEnsemble",
    "SearchResult",
    "SelfConsistency",
    "Verifier",
    "check_scores",
    "diffusion_schedule",
    "neighbours",
    "paths_schedule",
    "rank_average",
    "search",
    "smc",
    "systematic_resample",
]
