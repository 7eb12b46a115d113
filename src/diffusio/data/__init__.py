"""Bundled and generated data: Gaussian mixtures with exact answers, 2-D toys, digits, images."""

from diffusio.data.digits import load_digits
from diffusio.data.gmm import GaussianMixture
from diffusio.data.images import image_patches, load_image_folder
from diffusio.data.sources import FunctionSource, TensorSource
from diffusio.data.toy import TOY_DATASETS, sample_toy

__all__ = [
    "TOY_DATASETS",
    "FunctionSource",
    "GaussianMixture",
    "TensorSource",
    "image_patches",
    "load_digits",
    "load_image_folder",
    "sample_toy",
]
