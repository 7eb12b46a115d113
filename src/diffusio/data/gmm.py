"""Gaussian mixtures with exact densities, denoisers and scores along any Gaussian path: the ground truth.

For p_data = sum_k w_k N(mu_k, C_k) and x_t = alpha x0 + sigma eps, the marginal is
p_t = sum_k w_k N(alpha mu_k, alpha^2 C_k + sigma^2 I) and the posterior mean (Tweedie) is
E[x0 | x_t] = sum_k r_k(x) (mu_k + alpha C_k (alpha^2 C_k + sigma^2 I)^{-1} (x - alpha mu_k)),
with responsibilities r_k from the marginal. Everything runs in float64 with logsumexp; C_k = U diag(e) U^T.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["GaussianMixture"]

_F64 = torch.float64


class Path(Protocol):
    """What the mixture needs of a forward path ``x_t = alpha(t) x0 + sigma(t) eps`` (any ``diffusio`` path)."""

    def alpha(self, t: Tensor) -> Tensor: ...

    def sigma(self, t: Tensor) -> Tensor: ...


class GaussianMixture:
    """``GaussianMixture(means, stds_or_covs, weights=None, labels=None)``.

    ``means``: ``(K, *event_shape)``. ``stds_or_covs``: a float, ``(K,)`` isotropic stds, ``(K, D)`` diagonal stds,
    or ``(K, D, D)`` covariance matrices (D = prod(event_shape)). ``weights``: ``(K,)`` positive (normalised).
    ``labels``: optional ``(K,)`` class of each component, enabling class-conditional densities via ``y``.
    """

    def __init__(
        self,
        means: Tensor | Sequence,
        stds_or_covs: Tensor | Sequence | float,
        weights: Tensor | Sequence | None = None,
        labels: Tensor | Sequence | None = None,
    ):
        means = torch.as_tensor(means, dtype=_F64)
        if means.ndim < 2:
            raise ValueError(f"means must have shape (K, *event_shape); got {tuple(means.shape)}")
        self.event_shape = tuple(means.shape[1:])
        self.K, self.D = means.shape[0], math.prod(self.event_shape)
        self.means = means.reshape(self.K, self.D)
        self.U, self.evals = self._spectrum(torch.as_tensor(stds_or_covs, dtype=_F64))
        w = torch.full((self.K,), 1.0 / self.K, dtype=_F64) if weights is None else torch.as_tensor(weights, dtype=_F64)
        if w.shape != (self.K,) or not (w > 0).all():
            raise ValueError(f"weights must be {self.K} positive numbers; got {w.tolist()}")
        self.log_weights = torch.log(w / w.sum())
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        if self.labels is not None and self.labels.shape != (self.K,):
            raise ValueError(f"labels must have shape ({self.K},); got {tuple(self.labels.shape)}")

    def _spectrum(self, s: Tensor) -> tuple[Tensor | None, Tensor]:
        K, D = self.K, self.D
        if s.ndim == 0:
            s = s.expand(K)
        if s.shape == (K,):
            evals, U = (s**2)[:, None].expand(K, D).clone(), None
        elif s.shape == (K, D):
            evals, U = s**2, None
        elif s.shape == (K, D, D):
            if not torch.allclose(s, s.transpose(1, 2)):
                raise ValueError("covariance matrices must be symmetric")
            evals, U = torch.linalg.eigh(s)
        else:
            raise ValueError(
                f"stds_or_covs must be a float, ({K},), ({K}, {D}) or ({K}, {D}, {D}); got {tuple(s.shape)}"
            )
        if not (evals > 0).all():
            raise ValueError("stds must be > 0 and covariances positive definite")
        return U, evals

    # --- helpers -------------------------------------------------------------------------------------------
    def _flat(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"x must have shape (batch, {', '.join(map(str, self.event_shape))}); got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], self.D).to(_F64)

    def _rotate(self, v: Tensor) -> Tensor:
        """v (B, K, D) in the standard basis -> eigenbasis of each component."""
        return v if self.U is None else torch.einsum("kdi,bkd->bki", self.U.to(v.device), v)

    def _unrotate(self, v: Tensor) -> Tensor:
        return v if self.U is None else torch.einsum("kdi,bki->bkd", self.U.to(v.device), v)

    def _log_weights(self, batch: int, device, y: Tensor | None) -> Tensor:
        lw = self.log_weights.to(device).expand(batch, self.K)
        if y is None:
            return lw
        if self.labels is None:
            raise ValueError("this mixture has no labels; pass labels=... to condition on y")
        mask = self.labels.to(device)[None, :] == torch.as_tensor(y, device=device).reshape(-1, 1)
        if not mask.any(1).all():
            raise ValueError(f"some y values match no component label; labels are {self.labels.unique().tolist()}")
        lw = torch.where(mask, lw, torch.tensor(-math.inf, dtype=_F64, device=device))
        return lw - torch.logsumexp(lw, 1, keepdim=True)

    def _terms(self, x: Tensor, a: Tensor, s: Tensor, y: Tensor | None):
        """log w_k N(x; a mu_k, a^2 C_k + s^2 I) (B, K); eigen-coordinates of x - a mu_k (B, K, D); variances."""
        mu = self.means.to(x.device)
        var = a[:, None, None] ** 2 * self.evals.to(x.device)[None] + (s**2)[:, None, None]
        proj = self._rotate(x[:, None, :] - a[:, None, None] * mu[None])
        log_n = -0.5 * (torch.log(2 * math.pi * var).sum(-1) + (proj**2 / var).sum(-1))
        return log_n + self._log_weights(x.shape[0], x.device, y), proj, var

    def _coeffs(self, t: Tensor | None, path: Path | None, x: Tensor) -> tuple[Tensor, Tensor]:
        if t is None:
            return torch.ones(x.shape[0], dtype=_F64, device=x.device), torch.zeros(
                x.shape[0], dtype=_F64, device=x.device
            )
        if path is None:
            raise ValueError("pass path=... together with t")
        t = torch.as_tensor(t, dtype=_F64, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        return path.alpha(t), path.sigma(t)

    # --- public --------------------------------------------------------------------------------------------
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, y: Tensor | None = None, dtype=torch.float32
    ) -> Tensor:
        """``n`` draws, shape ``(n, *event_shape)``; with ``y`` ``(n,)`` each draw comes from its class."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        device = generator.device if generator is not None else "cpu"
        probs = self._log_weights(n, device, y).exp()
        k = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        z = torch.randn(n, self.D, generator=generator, dtype=_F64, device=device)
        z = z * self.evals.to(device)[k].sqrt()
        if self.U is not None:
            z = torch.einsum("bdi,bi->bd", self.U.to(device)[k], z)
        return (self.means.to(device)[k] + z).to(dtype).reshape(n, *self.event_shape)

    def log_prob(self, x: Tensor, t: Tensor | float | None = None, path: Path | None = None, y=None) -> Tensor:
        """log p_t(x) ``(batch,)`` in float64; ``t=None`` is the data density."""
        xf = self._flat(x)
        a, s = self._coeffs(t, path, xf)
        terms, _, _ = self._terms(xf, a, s, y)
        return torch.logsumexp(terms, 1)

    def denoise(self, x: Tensor, t: Tensor | float, path: Path, y=None) -> Tensor:
        """Exact E[x0 | x_t = x] in float64, shape of ``x``."""
        xf = self._flat(x)
        a, s = self._coeffs(t, path, xf)
        terms, proj, var = self._terms(xf, a, s, y)
        r = torch.softmax(terms, 1)
        gain = self.evals.to(xf.device)[None] * a[:, None, None] / var
        means = self.means.to(xf.device)[None] + self._unrotate(gain * proj)
        return (r[:, :, None] * means).sum(1).reshape(x.shape)

    def score(self, x: Tensor, t: Tensor | float, path: Path, y=None) -> Tensor:
        """Exact grad_x log p_t(x) in float64."""
        x0 = self.denoise(x, t, path, y)
        a, s = self._coeffs(t, path, self._flat(x))
        shape = (-1,) + (1,) * (x.ndim - 1)
        return (a.reshape(shape) * x0 - x.to(_F64)) / s.reshape(shape) ** 2

    def mean(self) -> Tensor:
        return (self.log_weights.exp()[:, None] * self.means).sum(0).reshape(self.event_shape)

    def covariance(self) -> Tensor:
        """Total covariance ``(D, D)``."""
        w = self.log_weights.exp()
        covs = torch.diag_embed(self.evals) if self.U is None else self.U @ torch.diag_embed(self.evals) @ self.U.mT
        m = self.means - self.mean().reshape(-1)
        return (w[:, None, None] * (covs + m[:, :, None] * m[:, None, :])).sum(0)
