"""Tuning fast samplers: searched time grids (AutoDiffusion's evolutionary search, teacher-trajectory dynamic
programming, a continuous log-SNR optimiser), saved and loaded by name, and :func:`autotune`, which picks a
solver, grid and options for a budget of model calls."""

from diffusio.samplers.tuning.autotune import CANDIDATES, NAMED_GRIDS, Plan, autotune, steps_for
from diffusio.samplers.tuning.search import (
    Fitness,
    SearchResult,
    dp_search,
    evolutionary_search,
    grid_of_lambdas,
    lambdas_of_grid,
    optimise_logsnr,
    rms_error,
    sliced_w2,
    teacher,
)
from diffusio.samplers.tuning.store import SearchedGrid, list_grids, load_grid, model_fingerprint, save_grid

__all__ = [
    "CANDIDATES",
    "NAMED_GRIDS",
    "Fitness",
    "Plan",
    "SearchResult",
    "SearchedGrid",
    "autotune",
    "dp_search",
    "evolutionary_search",
    "grid_of_lambdas",
    "lambdas_of_grid",
    "list_grids",
    "load_grid",
    "model_fingerprint",
    "optimise_logsnr",
    "rms_error",
    "save_grid",
    "sliced_w2",
    "steps_for",
    "teacher",
]
