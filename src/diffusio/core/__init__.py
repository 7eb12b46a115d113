"""The mathematical core: forward paths, the parametrization hub, time grids and per-time coefficients."""

from diffusio.core import parametrization, paths, time, timesteps

__all__ = ["parametrization", "paths", "time", "timesteps"]
