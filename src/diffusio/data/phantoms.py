"""Procedural tomography phantoms (no download): the modified Shepp-Logan head, random 2-D ellipse phantoms and
3-D ellipsoid volumes whose axial slices are the 2-D phantoms' distribution (Shepp & Logan 1974; the 3-D phantoms of
Chung et al. 2023, DiffusionMBIR).

Images are ``(N, 1, size, size)`` float32 in [-1, 1] (attenuation 0..1 mapped affinely), volumes
``(slices, 1, size, size)`` - the slice axis first, so a volume is a batch of slices for a 2-D prior.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["phantom_volume", "random_phantoms", "shepp_logan"]

# Modified Shepp-Logan (Toft 1996): intensity, semi-axes a, b, centre x, y, rotation (degrees).
_SHEPP_LOGAN = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18.0),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0.0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0.0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0.0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0.0),
)


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 4:
        raise ValueError(f"size must be an integer >= 4 (pixels per side); got size={size!r}")


def _grid(size: int, supersample: int) -> tuple[Tensor, Tensor]:
    """Sub-pixel sample coordinates in [-1, 1]: x (columns, left to right), y (rows, top = +1)."""
    m = size * supersample
    c = (2 * torch.arange(m, dtype=torch.float32) + 1) / m - 1
    return c[None, :].expand(m, m).contiguous(), -c[:, None].expand(m, m).contiguous()


def _render(ellipses: Tensor, size: int, supersample: int = 2) -> Tensor:
    """Sum of filled ellipses ``(..., E, 6)`` rows (value, a, b, x0, y0, phi rad) -> images ``(..., size, size)``."""
    gx, gy = _grid(size, supersample)
    v, a, b, x0, y0, phi = (ellipses[..., i, None, None].float() for i in range(6))
    cos, sin = torch.cos(phi), torch.sin(phi)
    # rotated, scaled coordinates: u = R(phi) (g - c) / (a, b), computed as affine maps of the grid
    u = gx * (cos / a) + gy * (sin / a) - (x0 * cos + y0 * sin) / a
    w = gy * (cos / b) - gx * (sin / b) - (y0 * cos - x0 * sin) / b
    img = torch.where(u.square_() + w.square_() <= 1, v, 0.0).sum(-3)
    return torch.nn.functional.avg_pool2d(img.reshape(-1, 1, *img.shape[-2:]), supersample).reshape(
        *img.shape[:-2], size, size
    )


def shepp_logan(size: int = 64) -> Tensor:
    """The modified Shepp-Logan phantom ``(1, 1, size, size)`` in [-1, 1] (intensities 0..1)."""
    _check_size(size)
    e = torch.tensor(_SHEPP_LOGAN, dtype=torch.float64)
    e[:, 5] = torch.deg2rad(e[:, 5])
    return (_render(e, size).clamp(0, 1) * 2 - 1).float()[None, None]


def _ellipsoids(n: int, k: int, generator: torch.Generator | None) -> Tensor:
    """Random phantom ellipsoids ``(n, 1 + k, 8)``: (value, a, b, c, x0, y0, z0, phi) - a body plus k inserts."""

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=generator, dtype=torch.float64)

    body = torch.stack(
        [u(0.45, 0.6, n), u(0.7, 0.9, n), u(0.55, 0.85, n), u(1.5, 3.0, n), u(-0.05, 0.05, n), u(-0.05, 0.05, n),
         torch.zeros(n, dtype=torch.float64), u(-0.3, 0.3, n)], -1
    )  # fmt: skip
    sign = torch.where(torch.rand(n, k, generator=generator) < 0.7, 1.0, -1.0).double()
    r, ang = u(0, 0.45, n, k), u(0, 2 * math.pi, n, k)
    inserts = torch.stack(
        [sign * u(0.15, 0.45, n, k), u(0.06, 0.3, n, k), u(0.06, 0.3, n, k), u(0.3, 1.0, n, k),
         r * torch.cos(ang), r * torch.sin(ang), u(-0.6, 0.6, n, k), u(0, math.pi, n, k)], -1
    )  # fmt: skip
    return torch.cat([body[:, None], inserts], 1)


def _slice(ellipsoids: Tensor, z: Tensor) -> Tensor:
    """Axial cross-sections at heights ``z`` ``(n, S)`` of axis-aligned-in-z ellipsoids ``(n, E, 8)`` -> 2-D
    ellipses ``(n, S, E, 6)``; an ellipsoid the plane misses gets value 0."""
    v, a, b, c, x0, y0, z0, phi = (ellipsoids[:, None, :, i] for i in range(8))
    h = 1 - ((z[:, :, None] - z0) / c) ** 2
    scale = h.clamp(min=1e-12).sqrt()
    return torch.stack([v * (h > 0), a * scale, b * scale, x0.expand_as(h), y0.expand_as(h), phi.expand_as(h)], -1)


def _volumes(n: int, size: int, z: Tensor, inserts: int, generator, chunk: int = 256) -> Tensor:
    e = _ellipsoids(n, inserts, generator)
    out = [_render(_slice(e[i : i + chunk], z[i : i + chunk]), size) for i in range(0, n, chunk)]
    return (torch.cat(out).clamp(0, 1) * 2 - 1).float()


def random_phantoms(n: int, size: int = 32, *, inserts: int = 5, generator: torch.Generator | None = None) -> Tensor:
    """``n`` random 2-D phantoms ``(n, 1, size, size)`` in [-1, 1]: axial slices, at a random height in
    [-0.5, 0.5], of random 3-D ellipsoid phantoms (a body plus ``inserts`` denser or lighter inserts)."""
    _check_size(size)
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    z = -0.5 + torch.rand(n, 1, generator=generator, dtype=torch.float64)
    return _volumes(n, size, z, inserts, generator)


def phantom_volume(
    size: int = 32, slices: int = 8, *, inserts: int = 5, generator: torch.Generator | None = None
) -> Tensor:
    """One random 3-D ellipsoid phantom as ``(slices, 1, size, size)`` in [-1, 1], slices evenly spaced over
    heights [-0.5, 0.5]; every slice is a draw of :func:`random_phantoms`' distribution at its height."""
    _check_size(size)
    if slices < 1:
        raise ValueError(f"slices must be >= 1; got {slices}")
    z = torch.linspace(-0.5, 0.5, slices, dtype=torch.float64)[None]
    return _volumes(1, size, z, inserts, generator)[0][:, None]
