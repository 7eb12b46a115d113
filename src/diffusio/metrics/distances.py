"""Sample-based distances between distributions: sliced Wasserstein-2 and kernel MMD, computed in float64."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "check_samples",
    "merge_units",
    "mmd",
    "mmd_parts",
    "mmd_reduce",
    "sliced_wasserstein",
    "sliced_wasserstein_parts",
    "sliced_wasserstein_reduce",
]

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
    return sliced_wasserstein_reduce(sliced_wasserstein_parts(x, y, n_projections, generator=generator))


def sliced_wasserstein_parts(
    x: Tensor,
    y: Tensor,
    n_projections: int = 512,
    *,
    generator: torch.Generator | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """One process's share of :func:`sliced_wasserstein`: the projections are drawn in full (same ``generator``
    on every rank), split into chunks as one process does, and rank ``rank`` sorts and sums the chunks
    ``rank, rank + world_size, ...``. :func:`sliced_wasserstein_reduce` of the merged parts of all ranks equals
    the one-process value bit for bit (every chunk is the same arithmetic, added in the same order)."""
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1; got {n_projections}")
    _check_rank(rank, world_size)
    x, y = check_samples(x, y)
    theta = _random_directions(x.shape[1], n_projections, generator).to(x.device)
    n, m = x.shape[0], y.shape[0]
    widths, ix, iy = _quantile_grid(n, m, x.device)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, m))
    chunks = theta.split(chunk, dim=1)
    sums = {}
    for k in range(rank, len(chunks), world_size):
        th = chunks[k]
        px = torch.sort(th.T @ x.T, dim=1).values  # (chunk, N) sorted projections: empirical quantiles
        py = torch.sort(th.T @ y.T, dim=1).values
        sq = (px - py) ** 2 / n if n == m else widths * (px[:, ix] - py[:, iy]) ** 2
        sums[k] = sq.sum()
    return {"n_projections": n_projections, "n_chunks": len(chunks), "sums": sums}


def sliced_wasserstein_reduce(*parts: dict) -> float:
    """Sliced W2 from the :func:`sliced_wasserstein_parts` of all ranks (chunk sums added in chunk order)."""
    sums = merge_units([p["sums"] for p in parts], parts[0]["n_chunks"], "sliced_wasserstein")
    total = torch.zeros((), dtype=_F64, device=sums[0].device)
    for k in range(len(sums)):
        total += sums[k]
    return float(torch.sqrt(total / parts[0]["n_projections"]))


def _check_rank(rank: int, world_size: int) -> None:
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank must be in [0, world_size) with world_size >= 1; got rank {rank} of {world_size}")


def merge_units(shares: list[dict], count: int, what: str) -> dict:
    """The union of the ranks' ``{unit: value}`` shares; checks every unit ``0..count-1`` is there exactly once."""
    out: dict = {}
    for share in shares:
        for k, v in share.items():
            if k in out:
                raise ValueError(f"{what}: unit {k} appears in more than one rank's share")
            out[k] = v
    missing = sorted(set(range(count)) - set(out))
    if missing:
        raise ValueError(f"{what}: the ranks' shares miss units {missing}; pass the parts of every rank")
    return out


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


def _kernel_rows(a: Tensor, b: Tensor, inv_two_h2: Tensor) -> int:
    """Rows of ``a`` per chunk of :func:`_kernel_chunk` (bounded memory)."""
    return max(1, _CHUNK_ELEMENTS // max(1, len(b) * len(inv_two_h2)))


def _kernel_chunk(a: Tensor, b: Tensor, inv_two_h2: Tensor, same: bool, start: int, rows: int) -> float:
    """Sum of k(a_i, b_j) = sum_h exp(-|a_i - b_j|^2 / (2 h^2)) over rows ``start:start + rows`` of ``a``."""
    d = _sq_dists(a[start : start + rows], b)
    k = torch.exp(-d[..., None] * inv_two_h2).sum(-1)
    if same:
        k.diagonal(offset=start).zero_()
    return float(k.sum())


def _mmd_setup(x: Tensor, y: Tensor, bandwidths: Sequence[float] | None) -> tuple[Tensor, Tensor, Tensor]:
    x, y = check_samples(x, y, min_count=2)
    if bandwidths is None:
        med = _median_bandwidth(x, y)
        bandwidths = (0.5 * med, med, 2.0 * med)
    h = torch.as_tensor(list(bandwidths), dtype=_F64, device=x.device)
    if h.ndim != 1 or h.numel() == 0 or not (h > 0).all():
        raise ValueError(f"bandwidths must be a non-empty sequence of positive numbers; got {list(bandwidths)}")
    return x, y, 1.0 / (2 * h**2)


def mmd(x: Tensor, y: Tensor, bandwidths: Sequence[float] | None = None) -> float:
    """Unbiased squared MMD between ``x`` ``(N, ...)`` and ``y`` ``(M, ...)`` with a sum of RBF kernels.

    Default ``bandwidths``: the pooled median pairwise distance times (0.5, 1, 2). The unbiased estimate can
    be slightly negative when the distributions agree.
    """
    return mmd_reduce(mmd_parts(x, y, bandwidths))


def mmd_parts(
    x: Tensor, y: Tensor, bandwidths: Sequence[float] | None = None, *, rank: int = 0, world_size: int = 1
) -> dict:
    """One process's share of :func:`mmd`: the row chunks of the three kernel sums (xx, yy, xy), numbered in
    one process's order, are dealt to the ranks (chunk ``j`` to rank ``j % world_size``); every rank computes
    the bandwidths itself. :func:`mmd_reduce` of all ranks' parts equals the one-process value bit for bit."""
    _check_rank(rank, world_size)
    x, y, inv = _mmd_setup(x, y, bandwidths)
    units = []
    for a, b, same in ((x, x, True), (y, y, True), (x, y, False)):
        rows = _kernel_rows(a, b, inv)
        units.append([(a, b, same, start, rows) for start in range(0, len(a), rows)])
    flat = [u for term in units for u in term]
    sums = {j: _kernel_chunk(a, b, inv, same, start, rows) for j, (a, b, same, start, rows) in enumerate(flat)
            if j % world_size == rank}  # fmt: skip
    return {"n": len(x), "m": len(y), "terms": [len(t) for t in units], "sums": sums}


def mmd_reduce(*parts: dict) -> float:
    """Squared MMD from the :func:`mmd_parts` of all ranks (chunk sums added in one process's order)."""
    terms = parts[0]["terms"]
    sums = merge_units([p["sums"] for p in parts], sum(terms), "mmd")
    totals, j = [], 0
    for count in terms:
        total = 0.0
        for _ in range(count):
            total += sums[j]
            j += 1
        totals.append(total)
    n, m = parts[0]["n"], parts[0]["m"]
    kxx = totals[0] / (n * (n - 1))
    kyy = totals[1] / (m * (m - 1))
    kxy = totals[2] / (n * m)
    return kxx + kyy - 2 * kxy
