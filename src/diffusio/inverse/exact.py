"""Closed-form posteriors of Gaussian-mixture priors under linear Gaussian measurements: the ground truth that
every inverse-problem solver is measured against (tests and ``diffusio bench inverse``).

For p(x) = sum_k w_k N(mu_k, C_k) and y = A x + n, n ~ N(0, s^2 I):
p(x | y) = sum_k w'_k N(m_k, P_k), P_k = (C_k^{-1} + A^T A / s^2)^{-1}, m_k = mu_k + C_k A^T S_k^{-1} (y - A mu_k),
S_k = A C_k A^T + s^2 I, w'_k proportional to w_k N(y; A mu_k, S_k). Everything in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusio.data.gmm import GaussianMixture
from diffusio.models.base import ModelBase

__all__ = ["component_covariances", "gmm_posterior", "prior_moments"]


def component_covariances(mixture: GaussianMixture) -> Tensor:
    """The mixture's component covariances ``(K, D, D)`` in float64."""
    if mixture.U is None:
        return torch.diag_embed(mixture.evals)
    return mixture.U @ torch.diag_embed(mixture.evals) @ mixture.U.mT


def gmm_posterior(mixture: GaussianMixture, A: Tensor, y: Tensor, noise_std: float) -> GaussianMixture:
    """The exact posterior p(x | y) of ``mixture`` given ``y = A x + noise_std * z`` as a GaussianMixture.

    ``A``: ``(m, D)`` with D the mixture's flattened dimension; ``y``: ``(m,)``; ``noise_std`` > 0.
    """
    if not noise_std > 0:
        raise ValueError(f"noise_std must be > 0 for a proper Gaussian likelihood; got {noise_std}")
    A = torch.as_tensor(A, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64).flatten()
    if A.ndim != 2 or A.shape[1] != mixture.D or y.shape != (A.shape[0],):
        raise ValueError(f"need A (m, {mixture.D}) and y (m,); got A {tuple(A.shape)} and y {tuple(y.shape)}")
    C, mu = component_covariances(mixture), mixture.means
    S = A @ C @ A.T + noise_std**2 * torch.eye(A.shape[0], dtype=torch.float64)  # (K, m, m)
    gain = C @ A.T @ torch.linalg.inv(S)  # (K, D, m)
    resid = y[None] - mu @ A.T  # (K, m)
    means = mu + (gain @ resid[..., None]).squeeze(-1)
    covs = C - gain @ A @ C
    covs = 0.5 * (covs + covs.mT)
    log_ev = -0.5 * (
        torch.logdet(2 * math.pi * S) + (resid[:, None, :] @ torch.linalg.solve(S, resid[..., None]))[:, 0, 0]
    )
    logw = mixture.log_weights + log_ev
    weights = torch.softmax(logw, 0).clamp(min=1e-300)
    return GaussianMixture(means.reshape(mixture.K, *mixture.event_shape), covs, weights)


def prior_moments(
    model: ModelBase, data_var: float | None = None, data_mean: float | None = None
) -> tuple[float, float]:
    """Per-pixel prior variance and mean for methods that use a Gaussian approximation of the prior (PiGDM, SMC,
    moment matching): the values given, else the exact ones of an :class:`~diffusio.models.ExactModel` (found
    through wrappers: mean of the mixture's per-coordinate variances, mean of its mean), else 1 and 0."""
    inner = model
    while not hasattr(inner, "mixture") and hasattr(inner, "inner"):
        inner = inner.inner
    mixture = getattr(inner, "mixture", None)
    if data_var is None:
        data_var = float(mixture.covariance().diagonal().mean()) if mixture is not None else 1.0
    if data_mean is None:
        data_mean = float(mixture.mean().mean()) if mixture is not None else 0.0
    if not (math.isfinite(data_var) and data_var > 0):
        raise ValueError(f"data_var must be a finite number > 0 (per-pixel variance of the data); got {data_var}")
    if not math.isfinite(data_mean):
        raise ValueError(f"data_mean must be finite; got {data_mean}")
    return float(data_var), float(data_mean)
