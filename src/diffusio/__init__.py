"""diffusio: diffusion and flow generative models as one time-dependent velocity field."""

__version__ = "0.1.0"
