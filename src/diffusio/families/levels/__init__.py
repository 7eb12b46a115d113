"""Noise-level classifiers for Denoising MCMC (Kim & Ye 2023, "Denoising MCMC for Accelerating Diffusion-Based
Generative Models", Sec. 4): a network c_phi(x) -> logits over a grid of noise levels t_0 > ... > t_{L-1} of a path,
trained by cross-entropy on pairs (x_t, i) with i ~ U{0, ..., L-1} and x_t = alpha(t_i) x_0 + sigma(t_i) z. At the
optimum softmax(c_phi(x)) is the level posterior pi(i | x) proportional to p_{t_i}(x) (uniform prior), which
Denoising Langevin Gibbs (``diffusio.samplers.dmcmc``) samples the level from.

Trained by ``diffusio train`` like any model (``family: levels``; bundled: ``gaussians_levels.yaml``,
``digits_levels.yaml``); the grid is ``samplers.dmcmc.level_grid(path, model.levels, model.u_min)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusio.core.time import broadcast
from diffusio.samplers.dmcmc import level_grid

__all__ = ["LevelClassifier", "LevelLoss"]


class LevelClassifier:
    """``net(x) -> (B, L)`` logits over ``levels = level_grid(path, num_levels, u_min)`` (index 0: t_max).

    Calling it returns float64 logits on ``x``'s device without gradients (the ``classifier`` argument of
    :func:`diffusio.samplers.dmcmc.langevin_gibbs`); :meth:`posterior` gives softmax probabilities."""

    def __init__(self, net: nn.Module, path, num_levels: int = 200, u_min: float = 1e-3):
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
            raise ValueError(f"model.levels (the number of noise levels) must be an integer >= 2, got {num_levels!r}")
        self.net, self.path, self.num_levels, self.u_min = net, path, num_levels, float(u_min)
        self.levels = level_grid(path, num_levels, float(u_min))

    def __call__(self, x: Tensor) -> Tensor:
        p = next(self.net.parameters())
        with torch.no_grad():
            logits = self.net(x.to(p.device, p.dtype))
        return logits.to(x.device, torch.float64)

    def posterior(self, x: Tensor) -> Tensor:
        """pi(i | x) as probabilities ``(B, L)`` (float64)."""
        return torch.softmax(self(x), 1)

    def parameters(self):
        return self.net.parameters()

    def with_net(self, net: nn.Module) -> LevelClassifier:
        """The same classifier around another network object (the trainer's DistributedDataParallel wrapper)."""
        out = LevelClassifier.__new__(LevelClassifier)
        out.__dict__.update(self.__dict__, net=net)
        return out


class LevelLoss:
    """Cross-entropy of the level classifier (Kim & Ye 2023, Sec. 4): ``draw`` gives level indices i ~ U{0..L-1} and
    noise z; the loss per sample is CE(net(alpha(t_i) x_0 + sigma(t_i) z), i). ``label_smoothing`` as in
    ``torch.nn.functional.cross_entropy`` (0: the maximum-likelihood objective whose optimum is the posterior)."""

    def __init__(self, num_levels: int, label_smoothing: float = 0.0):
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
            raise ValueError(f"num_levels must be an integer >= 2, got {num_levels!r}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"loss.label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.num_levels, self.label_smoothing = num_levels, float(label_smoothing)

    def draw(self, x0: Tensor, path, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        idx = torch.randint(self.num_levels, (x0.shape[0],), generator=generator)
        return idx, torch.randn(x0.shape, generator=generator, dtype=x0.dtype)

    def __call__(self, model: LevelClassifier, x0: Tensor, idx: Tensor, noise: Tensor, cond: dict | None = None):
        if len(model.levels) != self.num_levels:
            raise ValueError(f"the classifier has {len(model.levels)} levels, the loss {self.num_levels}")
        t = model.levels.to(x0.device)[idx.long()]
        x = broadcast(model.path.alpha(t), x0) * x0 + broadcast(model.path.sigma(t), x0) * noise
        return F.cross_entropy(model.net(x), idx.long(), reduction="none", label_smoothing=self.label_smoothing)
