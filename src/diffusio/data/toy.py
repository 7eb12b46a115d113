"""2-D toy distributions with sharp structure, each scaled to roughly zero mean and unit per-coordinate std.

Every sampler draws all its randomness from the passed ``torch.Generator`` (in float64, then casts), so a
generator state reproduces the same points whatever the requested ``dtype``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["TOY_DATASETS", "sample_toy"]

_F64 = torch.float64


def _rand(n: int, g: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=g, dtype=_F64)


def _randn(shape: tuple[int, ...], g: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=g, dtype=_F64)


def _moons(n: int, g: torch.Generator | None) -> Tensor:
    """Two interleaving half circles (radius 1, noise 0.05), centred and divided by 0.7: std ~(1.2, 0.7)."""
    theta = math.pi * _rand(n, g)
    upper = _rand(n, g) < 0.5
    x = torch.where(upper, torch.cos(theta), 1.0 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) + 0.05 * _randn((n, 2), g)
    return pts / 0.7


def _checkerboard(n: int, g: torch.Generator | None) -> Tensor:
    """Uniform on the 8 'black' unit squares of a 4x4 board covering [-2, 2]^2: std ~1.15 per coordinate."""
    cell = torch.randint(0, 8, (n,), generator=g)
    row = cell // 2
    col = 2 * (cell % 2) + (row % 2)  # squares with (row + col) even
    offset = torch.rand((n, 2), generator=g, dtype=_F64)
    return torch.stack([col, row], dim=1).to(_F64) + offset - 2.0


def _rings(n: int, g: torch.Generator | None) -> Tensor:
    """Four concentric circles of radii 0.5, 1, 1.5, 2 (equal mass, radial noise 0.03): std ~0.97."""
    radius = 0.5 * (torch.randint(0, 4, (n,), generator=g) + 1).to(_F64)
    radius = radius + 0.03 * _randn((n,), g)
    theta = 2 * math.pi * _rand(n, g)
    return torch.stack([radius * torch.cos(theta), radius * torch.sin(theta)], dim=1)


def _swiss_roll(n: int, g: torch.Generator | None) -> Tensor:
    """2-D Swiss roll r = t, t in [1.5 pi, 4.5 pi] (noise 0.25), centred and divided by 6.8: std ~1."""
    t = 1.5 * math.pi * (1 + 2 * _rand(n, g))
    pts = torch.stack([t * torch.cos(t) - 2.0, t * torch.sin(t) - 0.2], dim=1)
    return (pts + 0.25 * _randn((n, 2), g)) / 6.8


def _gaussians(n: int, g: torch.Generator | None) -> Tensor:
    """Eight Gaussians (std 0.08) evenly spaced on a circle of radius sqrt(2): std ~1 per coordinate."""
    angle = 2 * math.pi / 8 * torch.randint(0, 8, (n,), generator=g).to(_F64)
    centres = math.sqrt(2) * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + 0.08 * _randn((n, 2), g)


def _spirals(n: int, g: torch.Generator | None) -> Tensor:
    """Two interleaved Archimedean spiral arms r = theta <= 3 pi (noise 0.15), divided by 4.7: std ~1."""
    theta = 3 * math.pi * torch.sqrt(_rand(n, g))  # sqrt: roughly uniform density along the arc
    arm = (_rand(n, g) < 0.5).to(_F64)
    angle = theta + math.pi * arm
    pts = torch.stack([theta * torch.cos(angle), theta * torch.sin(angle)], dim=1)
    return (pts + 0.15 * _randn((n, 2), g)) / 4.7


_SAMPLERS: dict[str, Callable[[int, torch.Generator | None], Tensor]] = {
    "moons": _moons,
    "checkerboard": _checkerboard,
    "rings": _rings,
    "swiss_roll": _swiss_roll,
    "gaussians": _gaussians,
    "spirals": _spirals,
}

TOY_DATASETS: tuple[str, ...] = tuple(_SAMPLERS)


def sample_toy(
    name: str, n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Draw ``n`` points ``(n, 2)`` from the 2-D toy distribution ``name`` (one of ``TOY_DATASETS``)."""
    if name not in _SAMPLERS:
        raise ValueError(f"unknown toy dataset name={name!r}; valid names are {', '.join(TOY_DATASETS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer (number of points); got n={n!r}")
    return _SAMPLERS[name](n, generator).to(dtype)
