"""A noise-conditional classifier p_phi(y | x_t, t) trained by diffusio, for classifier guidance (Dhariwal & Nichol
2021, Sec. 4: a classifier trained on noisy x_t, cross-entropy over t).

The classifier sees the VE-scaled, variance-normalised input x / (alpha sqrt(s^2 + sd^2)) and the noise feature
ln(s)/4, s = sigma/alpha (EDM's c_in and c_noise), so one network serves every path. Training draws t uniformly in
log-SNR over the path's sampling interval, the levels a sampler visits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusio.core.paths import Path
from diffusio.core.time import broadcast
from diffusio.nets import MLP
from diffusio.training.fit import NetFit

__all__ = ["NoisyClassifier", "train_noisy_classifier"]


class NoisyClassifier(nn.Module):
    """``NoisyClassifier(num_classes, shape, path)(x (B, *shape), t (B,)) -> logits (B, num_classes)``.

    A residual MLP on the flattened, preconditioned input (small data: 2-D toys, 8x8 digits).
    """

    def __init__(
        self, num_classes: int, shape: tuple[int, ...], path: Path, hidden: int = 256, depth: int = 3, sigma_data=0.5
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2; got {num_classes}")
        self.shape, self.path, self.sigma_data = tuple(shape), path, float(sigma_data)
        dim = int(torch.tensor(self.shape).prod())
        self.net = MLP(dim, hidden=hidden, depth=depth, out_dim=num_classes)
        nn.init.normal_(self.net.out[-1].weight, std=1e-3)  # MLP starts at zero output; break the symmetry

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)`` of noisy inputs ``x`` ``(B, *shape)`` at times ``t`` ``(B,)``."""
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x must have shape (batch, {', '.join(map(str, self.shape))}); got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device).to(torch.float64).expand(x.shape[0])
        s = self.path.noise_level(t)
        scale = 1 / (self.path.alpha(t) * torch.sqrt(s**2 + self.sigma_data**2))
        dtype = self.net.inp.weight.dtype
        xin = (broadcast(scale, x) * x).reshape(x.shape[0], -1).to(dtype)
        return self.net(xin, (torch.log(s) / 4).to(dtype))


def _log_snr_times(path: Path, n: int, generator: torch.Generator | None) -> Tensor:
    lo, hi = path.log_snr(torch.tensor([path.t_max, path.t_min], dtype=torch.float64))
    return path.t_of_log_snr(lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64))


# the classifier's fitting settings by default (``fit=``)
CLASSIFIER_FIT = NetFit(steps=2000, batch_size=256, lr=1e-3, hidden=256, depth=3)


def train_noisy_classifier(
    x: Tensor,
    labels: Tensor,
    path: Path,
    *,
    fit: NetFit = CLASSIFIER_FIT,
    sigma_data: float = 0.5,
    generator: torch.Generator | None = None,
) -> NoisyClassifier:
    """Train a :class:`NoisyClassifier` on clean data ``x`` ``(N, ...)`` with integer ``labels`` ``(N,)`` by
    cross-entropy on x_t = alpha x + sigma eps, t uniform in log-SNR; all randomness from ``generator``. ``fit``: the
    optimiser steps, minibatch, AdamW learning rate and the MLP's size (default ``CLASSIFIER_FIT``: 2000 steps of
    256 at 1e-3, 256 wide, 3 deep)."""
    if not isinstance(fit, NetFit):
        raise TypeError(f"fit must be a diffusio.training.NetFit, got {type(fit).__name__}")
    steps, batch_size = fit.steps, fit.batch_size
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},); got {tuple(labels.shape)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if generator is None else int(torch.randint(2**31, (1,), generator=generator)))
        clf = NoisyClassifier(int(labels.max()) + 1, x.shape[1:], path, fit.hidden, fit.depth, sigma_data)
    opt = torch.optim.AdamW(clf.parameters(), lr=fit.lr, weight_decay=1e-4)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=generator)
        t = _log_snr_times(path, batch_size, generator)
        eps = torch.randn((batch_size, *x.shape[1:]), generator=generator, dtype=x.dtype)
        xt = path.perturb(x[idx], eps, t.to(x.dtype))
        loss = F.cross_entropy(clf(xt, t), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clf.eval()
