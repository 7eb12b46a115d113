"""Noise-level classifiers: ``net(x) -> logits (B, num_levels)`` over a grid of noise levels (Kim & Ye 2023,
"Denoising MCMC", Sec. 4: the noise classifier c_phi(x) of Denoising Langevin Gibbs).

The input's scale spans the whole path (|x| of order 1 near the data, of order sigma_max = 80 at the top of an EDM
path), so both networks see the scale-free direction x / r and the log scale log r, with r the RMS of x over its
dimensions (the pair determines x exactly)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LevelCNN", "LevelMLP"]


def _split_scale(x: Tensor) -> tuple[Tensor, Tensor]:
    """(x / r, log r) with r = RMS of each sample over its dimensions (floored at 1e-6)."""
    r = x.flatten(1).pow(2).mean(1, keepdim=True).clamp_min(1e-12).sqrt()
    return x / r.reshape(-1, *([1] * (x.ndim - 1))), r.log()


def _check(name: str, **values: int) -> None:
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: {k} must be an integer >= 1, got {v!r}")


class LevelMLP(nn.Module):
    """``LevelMLP(dim, num_levels)(x (B, dim)) -> (B, num_levels)``: an MLP (SiLU) on (x / r, log r)."""

    def __init__(self, dim: int, num_levels: int, hidden: int = 128, depth: int = 3):
        super().__init__()
        _check("LevelMLP", dim=dim, num_levels=num_levels, hidden=hidden, depth=depth)
        self.dim, self.num_levels = dim, num_levels
        layers: list[nn.Module] = [nn.Linear(dim + 1, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, num_levels))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"LevelMLP expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        u, logr = _split_scale(x)
        return self.net(torch.cat([u, logr], 1))


class LevelCNN(nn.Module):
    """``LevelCNN(in_channels, num_levels, image_size)(x (B, C, S, S)) -> (B, num_levels)``: 3x3 convolutions (the
    later ones with stride 2) on x / r, flattened and joined by log r, then a two-layer head."""

    def __init__(
        self,
        in_channels: int,
        num_levels: int,
        image_size: int = 8,
        channels: tuple[int, ...] | list[int] = (32, 64),
        hidden: int = 128,
    ):
        super().__init__()
        _check("LevelCNN", in_channels=in_channels, num_levels=num_levels, image_size=image_size, hidden=hidden)
        if not channels:
            raise ValueError("LevelCNN: channels must list at least one width, e.g. [32, 64]")
        _check("LevelCNN", **{f"channels[{i}]": c for i, c in enumerate(channels)})
        size = image_size // 2 ** (len(channels) - 1)
        if size < 1 or size * 2 ** (len(channels) - 1) != image_size:
            raise ValueError(f"LevelCNN: image_size {image_size} is not divisible by 2^{len(channels) - 1}")
        self.in_channels, self.image_size, self.num_levels = in_channels, image_size, num_levels
        convs: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(channels):
            convs += [nn.Conv2d(c_in, c, 3, 1 if i == 0 else 2, 1), nn.SiLU()]
            c_in = c
        self.convs = nn.Sequential(*convs)
        self.head = nn.Sequential(nn.Linear(c_in * size * size + 1, hidden), nn.SiLU(), nn.Linear(hidden, num_levels))

    def forward(self, x: Tensor) -> Tensor:
        want = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"LevelCNN expects x of shape (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")
        u, logr = _split_scale(x)
        return self.head(torch.cat([self.convs(u).flatten(1), logr], 1))
