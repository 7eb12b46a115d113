"""Fréchet distance between feature sets (FID's formula) and digit-classifier metrics for generated samples."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffusio.metrics.distances import check_samples

__all__ = [
    "classifier_batches",
    "classifier_confidence",
    "classifier_features",
    "confidence_from_probs",
    "digits_frechet_distance",
    "frechet_distance",
]

_F64 = torch.float64


def _mean_cov(f: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(F,)`` and unbiased covariance ``(F, F)`` of float64 features ``(N, F)``."""
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (len(f) - 1)


def _sqrt_psd(a: Tensor) -> Tensor:
    """Symmetric PSD square root ``(F, F)`` by eigendecomposition (negative round-off eigenvalues clipped)."""
    evals, evecs = torch.linalg.eigh((a + a.T) / 2)
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to ``feats_a`` ``(N, F)`` and ``feats_b`` ``(M, F)`` (float64).

    |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2): the symmetric form of tr((C_a C_b)^1/2),
    so only symmetric eigendecompositions are needed and no imaginary parts arise.
    """
    a, b = check_samples(feats_a, feats_b, min_count=2)
    mu_a, cov_a = _mean_cov(a)
    mu_b, cov_b = _mean_cov(b)
    root_a = _sqrt_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    fd = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return max(float(fd), 0.0)  # exact value is >= 0; clip round-off


@torch.no_grad()
def classifier_features(images: Tensor, classifier: nn.Module, batch_size: int = 512) -> Tensor:
    """Penultimate features ``(N, F)`` of ``images`` ``(N, 1, S, S)``, batched on the classifier's device."""
    device = next(classifier.parameters()).device
    feats = [classifier.features(x.to(device, torch.float32)) for x in images.split(batch_size)]
    return torch.cat(feats).cpu()


@torch.no_grad()
def _probs(images: Tensor, classifier: nn.Module, batch_size: int = 512) -> Tensor:
    device = next(classifier.parameters()).device
    return torch.cat([classifier(x.to(device, torch.float32)).softmax(-1).cpu() for x in images.split(batch_size)])


@torch.no_grad()
def classifier_batches(
    images: Tensor, classifier: nn.Module, batch_size: int = 512, *, rank: int = 0, world_size: int = 1
) -> dict[int, tuple[Tensor, Tensor]]:
    """Features and softmax probabilities of the batches ``rank, rank + world_size, ...`` of ``images``
    ``(N, 1, S, S)`` split as :func:`classifier_features` splits them: ``{batch index: (features (B, F), probs
    (B, 10))}``. The same batches go through the same layers, so the concatenated batches of all ranks equal
    :func:`classifier_features` and the probabilities of one process bit for bit."""
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank must be in [0, world_size) with world_size >= 1; got rank {rank} of {world_size}")
    device = next(classifier.parameters()).device
    batches = images.split(batch_size)
    out = {}
    for k in range(rank, len(batches), world_size):
        f = classifier.features(batches[k].to(device, torch.float32))
        out[k] = (f.cpu(), classifier.head(f).softmax(-1).cpu())  # forward = head(features(x))
    return out


def digits_frechet_distance(samples: Tensor, reference: Tensor, classifier: nn.Module) -> float:
    """Fréchet distance between classifier features of ``samples`` ``(N, 1, S, S)`` and ``reference`` ``(M, ...)``."""
    return frechet_distance(classifier_features(samples, classifier), classifier_features(reference, classifier))


def classifier_confidence(samples: Tensor, classifier: nn.Module) -> dict:
    """How confidently and evenly ``samples`` ``(N, 1, S, S)`` are classified as digits.

    Returns ``mean_max_prob`` (mean top softmax probability), ``class_histogram`` (10 counts of argmax
    classes) and ``entropy_of_class_histogram`` (nats; ln 10 ~ 2.303 when all classes are equally frequent).
    """
    if samples.ndim != 4 or len(samples) == 0:
        raise ValueError(f"samples must have shape (N, 1, S, S) with N >= 1; got {tuple(samples.shape)}")
    return confidence_from_probs(_probs(samples, classifier))


def confidence_from_probs(probs: Tensor) -> dict:
    """:func:`classifier_confidence` from the classifier's softmax probabilities ``(N, 10)``."""
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError(f"probs must have shape (N, 10) with N >= 1; got {tuple(probs.shape)}")
    if not torch.isfinite(probs).all():
        raise ValueError("samples gave non-finite classifier outputs; check them for NaN or inf values")
    hist = torch.bincount(probs.argmax(-1), minlength=10)
    p = hist.double() / hist.sum()
    p = p[p > 0]
    entropy = -float((p * p.log()).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0
    return {
        "mean_max_prob": float(probs.max(-1).values.mean()),
        "class_histogram": hist.tolist(),
        "entropy_of_class_histogram": entropy,
    }
