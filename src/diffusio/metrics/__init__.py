"""Metrics: sample distances (sliced Wasserstein, MMD), Fréchet distance on digit-classifier features, PSNR/SSIM."""

from diffusio.metrics.classifier import DigitsClassifier, get_digits_classifier
from diffusio.metrics.distances import mmd, sliced_wasserstein
from diffusio.metrics.fid import classifier_confidence, classifier_features, digits_frechet_distance, frechet_distance
from diffusio.metrics.image import psnr, ssim

__all__ = [
    "DigitsClassifier",
    "classifier_confidence",
    "classifier_features",
    "digits_frechet_distance",
    "frechet_distance",
    "get_digits_classifier",
    "mmd",
    "psnr",
    "sliced_wasserstein",
    "ssim",
]
