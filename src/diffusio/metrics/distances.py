"""Sample-based distances between distributions: sliced Wasserstein-2 and kernel MMD, computed in float64."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["check_samples", "mmd", "sliced_wasserstein"]

_F64 = torch.float64
_CHUNK_ELEMENTS = 1 << 22  # ~32 MB of float64 per chunk of projections or kernel rows


def check_samples(x: Tensor, y: Tensor, min_count: int = 1) -> tuple[Tensor, Tensor]:
    """Flatten ``x`` ``(N, ...)`` and ``y`` ``(M, ...)`` to float64 ``(N, D)``, ``(M, D)`` after validating them."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    for name, s in (("x", x), ("y", y)):
        if s.ndim == 0 or s.shape[0] < min_count:
            raise ValueError(f"{name} must have shape (N, ...) with N >= {min_count} samples; got {tuple(s.shape)}")
        bad = int((~torch.isfinite(s)).sum())
        if bad:
            raise ValueError(f"{name} has {bad} non-finite values (NaN or inf) out of {s.numel()}")
    x, y = x.reshape(x.shape[0], -1).to(_F64), y.reshape(y.shape[0], -1).to(_F64)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same number of features; got {x.shape[1]} and {y.shape[1]}")
    return x, y.to(x.device)


def _quantile_grid(n: int, m: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Exact merge of two empirical quantile functions: cell widths ``(K,)`` and the index into each sample."""
    edges = torch.cat([torch.arange(1, n + 1, dtype=_F64) / n, torch.arange(1, m + 1, dtype=_F64) / m])
    edges = torch.unique(edges)  # sorted, ends at 1
    widths = torch.diff(edges, prepend=edges.new_zeros(1))
    mid = edges - widths / 2
    ix = (mid * n).floor().long().clamp_(max=n - 1)
    iy = (mid * m).floor().long().clamp_(max=m - 1)
    return widths.to(device), ix.to(device), iy.to(device)


def _random_directions(d: int, n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` unit directions ``(d, n)``, in blocks of up to ``d`` orthonormal ones (random frames).

    Each direction is uniform on the sphere (unbiased), and orthogonality within a block cuts the Monte
    Carlo variance: a pure mean shift m is integrated exactly, sum over a frame of (theta.m)^2 = |m|^2.
    """
    blocks, left = [], n
    while left > 0:
        k = min(d, left)
        q, r = torch.linalg.qr(torch.randn(d, k, generator=generator, dtype=_F64))
        blocks.append(q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, 1.0))  # Haar frame
        left -= k
    return torch.cat(blocks, dim=1)


def sliced_wasserstein(
    x: Tensor, y: Tensor, n_projections: int = 512, *, generator: torch.Generator | None = None
) -> float:
    """Sliced Wasserstein-2 distance between samples ``x`` ``(N, ...)`` and ``y`` ``(M, ...)`` (flattened to D).

    SW2 = sqrt(E_theta W2^2(theta.x, theta.y)) over ``n_projections`` random directions from ``generator``;
    each 1-D W2^2 integrates the squared gap of the two empirical quantile functions exactly, so N != M is fine.
    """
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1; got {n_projections}")
    x, y = check_samples(x, y)
    theta = _random_directions(x.shape[1], n_projections, generator).to(x.device)
    n, m = x.shape[0], y.shape[0]
    widths, ix, iy = _quantile_grid(n, m, x.device)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, m))
    total = x.new_zeros(())
    for th in theta.split(chunk, dim=1):
        px = torch.sort(th.T @ x.T, dim=1).values  # (chunk, N) sorted projections: empirical quantiles
        py = torch.sort(th.T @ y.T, dim=1).values
        sq = (px - py) ** 2 / n if n == m else widths * (px[:, ix] - py[:, iy]) ** 2
        total += sq.sum()
    return float(torch.sqrt(total / n_projections))


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances ``(N, M)`` between rows of ``a`` ``(N, D)`` and ``b`` ``(M, D)``."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return d.clamp_(min=0)


def _median_bandwidth(x: Tensor, y: Tensor, max_points: int = 2000) -> float:
    """Median pairwise distance of the pooled sample (an evenly strided subset of at most ``max_points``)."""
    z = torch.cat([x, y])
    z = z[torch.linspace(0, len(z) - 1, min(len(z), max_points)).long()]
    d = _sq_dists(z, z)
    off = d[~torch.eye(len(z), dtype=torch.bool, device=z.device)]
    med = float(off.median().sqrt()) if off.numel() else 0.0
    return med if med > 0 else 1.0


def _kernel_sum(a: Tensor, b: Tensor, inv_two_h2: Tensor, same: bool) -> float:
    """Sum of k(a_i, b_j) = sum_h exp(-|a_i - b_j|^2 / (2 h^2)) over all pairs (i != j when ``same``)."""
    rows = max(1, _CHUNK_ELEMENTS // max(1, len(b) * len(inv_two_h2)))
    total = 0.0
    for start in range(0, len(a), rows):
        d = _sq_dists(a[start : start + rows], b)
        k = torch.exp(-d[..., None] * inv_two_h2).sum(-1)
        if same:
            k.diagonal(offset=start).zero_()
        total += float(k.sum())
    return total


def mmd(x: Tensor, y: Tensor, bandwidths: Sequence[float] | None = None) -> float:
    """Unbiased squared MMD between ``x`` ``(N, ...)`` and ``y`` ``(M, ...)`` with a sum of RBF kernels.

    Default ``bandwidths``: the pooled median pairwise distance times (0.5, 1, 2). The unbiased estimate can
    be slightly negative when the distributions agree.
    """
    x, y = check_samples(x, y, min_count=2)
    if bandwidths is None:
        med = _median_bandwidth(x, y)
        bandwidths = (0.5 * med, med, 2.0 * med)
    h = torch.as_tensor(list(bandwidths), dtype=_F64, device=x.device)
    if h.ndim != 1 or h.numel() == 0 or not (h > 0).all():
        raise ValueError(f"bandwidths must be a non-empty sequence of positive numbers; got {list(bandwidths)}")
    inv = 1.0 / (2 * h**2)
    n, m = len(x), len(y)
    kxx = _kernel_sum(x, x, inv, same=True) / (n * (n - 1))
    kyy = _kernel_sum(y, y, inv, same=True) / (m * (m - 1))
    kxy = _kernel_sum(x, y, inv, same=False) / (n * m)
    return kxx + kyy - 2 * kxy
