"""Bundled and generated data: Gaussian mixtures with exact answers, 2-D toys, digits, images."""

from .digits import load_digits
from .gmm import ExactModel, GaussianMixture
from .images import image_patches, load_image_folder
from .sources import FunctionSource, TensorSource
from .toy import TOY_DATASETS, sample_toy

__all__ = [
    "TOY_DATASETS",
    "ExactModel",
    "FunctionSource",
    "GaussianMixture",
    "TensorSource",
    "image_patches",
    "load_digits",
    "load_image_folder",
    "sample_toy",
]
