"""Guided generation as ModelWrappers that are again Models (Ho & Salimans 2022; Dhariwal & Nichol
2021, Alg. 1; Bansal et al. 2023).

Every guidance here adds a term to the score, s_w = s + Delta, and is returned through Tweedie's formula as the x0
prediction x0_w = x0 + (sigma^2 / alpha) Delta, so any sampler uses it unchanged. Because all heads are affine in
the score with (x, t)-only coefficients, combining x0 predictions equals combining scores, eps or velocities.

Convention for the strength: the weight ``scale`` w multiplies the class-dependent part,
s_w = s(x, null) + w (s(x, y) - s(x, null)); w = 1 is plain conditional sampling and w = 0 unconditional
(the overview's eta is w - 1; Ho & Salimans' (1 + w) is this scale).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from diffusio.core.parametrization import convert
from diffusio.core.paths import Path
from diffusio.core.time import broadcast
from diffusio.models.base import ModelBase, ModelWrapper

__all__ = ["ClassifierFreeGuidance", "ClassifierGuidance", "RewardGuidance", "score_shift"]


def score_shift(path: Path, x0: Tensor, delta: Tensor, t: Tensor) -> Tensor:
    """The x0 prediction of the score s + ``delta``: x0 + (sigma^2 / alpha) delta (Tweedie); shapes of ``x0``."""
    return x0 + broadcast(path.sigma(t) ** 2 / path.alpha(t), x0) * delta


def _null_of(inner: ModelBase) -> int | None:
    """The null label of a class-conditional diffusio net (its ``num_classes``), else None."""
    net = getattr(inner, "net", None)
    k = getattr(net, "num_classes", None)
    return k if isinstance(k, int) else None


def _double(cond: dict, batch: int) -> dict:
    """Repeat every per-sample conditioning tensor twice along the batch."""
    return {
        k: torch.cat([v, v]) if torch.is_tensor(v) and v.ndim and v.shape[0] == batch else v for k, v in cond.items()
    }


class ClassifierFreeGuidance(ModelWrapper):
    """Classifier-free guidance (Ho & Salimans 2022): x0_w = x0(x, null) + w (x0(x, y) - x0(x, null)).

    ``scale`` is w (1 = conditional, 0 = unconditional; see the module docstring). ``null_label`` is the label
    that means "no condition": by default the ``num_classes`` of a diffusio net (its null class); then the
    conditional and unconditional predictions are one batched call of 2B samples. With ``null_label=None`` and
    no such net the two predictions are two calls, the unconditional one with ``y=None``.
    ``interval`` = (lo, hi) applies the guidance only at noise levels sigma/alpha in [lo, hi] and plain
    conditional prediction (w = 1) elsewhere (Kynkaanniemi et al. 2024). Without ``y`` the wrapper is the
    unconditional model.
    """

    def __init__(
        self,
        inner: ModelBase,
        scale: float,
        *,
        null_label: int | float | None = None,
        interval: tuple[float, float] | None = None,
    ):
        super().__init__(inner)
        if interval is not None and not (len(interval) == 2 and 0 <= interval[0] <= interval[1]):
            raise ValueError(f"interval must be (lo, hi) noise levels with 0 <= lo <= hi; got {interval}")
        self.scale, self.interval = float(scale), interval
        self.null_label = _null_of(inner) if null_label is None else null_label

    def weight(self, t: Tensor) -> Tensor:
        """Per-sample guidance weight ``(B,)``: ``scale`` inside the interval, 1 outside."""
        w = torch.full_like(t, self.scale, dtype=torch.float64)
        if self.interval is None:
            return w
        s = self.path.noise_level(t.double())
        inside = (s >= self.interval[0]) & (s <= self.interval[1])
        return torch.where(inside, w, torch.ones_like(w))

    def _pair(self, x: Tensor, t: Tensor, y: Tensor, cond: dict) -> tuple[Tensor, Tensor]:
        """(conditional, unconditional) x0 predictions."""
        if self.null_label is None:
            return self.inner.predict(x, t, "x0", y=y, **cond), self.inner.predict(x, t, "x0", y=None, **cond)
        null = torch.full_like(y, self.null_label)
        out = self.inner.predict(
            torch.cat([x, x]), torch.cat([t, t]), "x0", y=torch.cat([y, null]), **_double(cond, len(x))
        )
        return out.chunk(2)

    def predict(self, x: Tensor, t: Tensor, kind: str = "x0", y: Tensor | None = None, **cond) -> Tensor:
        if y is None:
            return self.inner.predict(x, t, kind, **cond)
        c, u = self._pair(x, t, y, cond)
        x0 = u + broadcast(self.weight(t), c).to(c.dtype) * (c - u)
        return convert(x0, "x0", kind, x, t, self.path)


class ClassifierGuidance(ModelWrapper):
    """Classifier guidance (Dhariwal & Nichol 2021): s_w = s(x, t) + w grad_x log p_phi(y | x_t, t).

    ``classifier(x, t) -> logits (B, K)`` is any differentiable noise-conditional classifier (e.g.
    :class:`diffusio.guidance.NoisyClassifier`, or a Gaussian mixture's exact time-t posterior). The inner model
    is called without ``y`` (unconditional); ``scale`` is w.
    """

    def __init__(self, inner: ModelBase, classifier: Callable[[Tensor, Tensor], Tensor], scale: float = 1.0):
        super().__init__(inner)
        self.classifier, self.scale = classifier, float(scale)

    def log_prob_grad(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """grad_x log p_phi(y | x, t), shaped like ``x``."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logp = F.log_softmax(self.classifier(xg, t), dim=-1)
            (g,) = torch.autograd.grad(logp.gather(1, y.reshape(-1, 1).long()).sum(), xg)
        return g

    def predict(self, x: Tensor, t: Tensor, kind: str = "x0", y: Tensor | None = None, **cond) -> Tensor:
        x0 = self.inner.predict(x, t, "x0", **cond)
        if y is not None and self.scale != 0:
            x0 = score_shift(self.path, x0, self.scale * self.log_prob_grad(x, t, y).to(x0.dtype), t)
        return convert(x0, "x0", kind, x, t, self.path)


class RewardGuidance(ModelWrapper):
    """Reward-gradient ("universal") guidance: s_w = s + eta_t grad_{x_t} r(x0_hat(x_t)), back-propagated through the
    denoiser (Bansal et al. 2023, "Universal guidance", Eq. 5).

    ``reward(x0) -> (B,)`` is any differentiable reward on clean samples; ``scale`` eta_t is a float or a function
    of ``t`` ``(B,)`` returning ``(B,)`` (e.g. proportional to sigma_t^2). ``scale = 0`` is the inner model exactly.
    """

    def __init__(self, inner: ModelBase, reward: Callable[[Tensor], Tensor], scale: float | Callable = 1.0):
        super().__init__(inner)
        self.reward, self.scale = reward, scale

    def reward_grad(self, x: Tensor, t: Tensor, cond: dict) -> tuple[Tensor, Tensor]:
        """(x0_hat, grad_{x_t} r(x0_hat(x_t)))."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = self.inner.predict(xg, t, "x0", **cond)
            (g,) = torch.autograd.grad(self.reward(x0).sum(), xg)
        return x0.detach(), g

    def predict(self, x: Tensor, t: Tensor, kind: str = "x0", **cond) -> Tensor:
        eta = self.scale(t) if callable(self.scale) else torch.full_like(t, float(self.scale))
        if not bool((eta != 0).any()):
            return self.inner.predict(x, t, kind, **cond)
        x0, g = self.reward_grad(x, t, cond)
        x0 = score_shift(self.path, x0, broadcast(eta, g).to(g.dtype) * g, t)
        return convert(x0, "x0", kind, x, t, self.path)
