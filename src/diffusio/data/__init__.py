"""Bundled and generated data: Gaussian mixtures with exact answers, 2-D toys, digits, images."""

from .gmm import ExactModel, GaussianMixture

__all__ = ["ExactModel", "GaussianMixture"]
