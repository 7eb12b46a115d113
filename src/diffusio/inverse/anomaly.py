"""Reconstruction-based anomaly detection with a diffusion prior trained on healthy images only.

An image is noised to an intermediate time ``t0`` and brought back to the data end with a deterministic solver
(DDIM / the probability-flow ODE); the prior, having seen only healthy anatomy, "heals" what it does not know, so
the residual ``|x - x_hat|`` (averaged over several noise draws, optionally smoothed) is a pixel-wise anomaly map.
This is the partial-diffusion scheme of AnoDDPM (Wyatt, Leach, Schmon & Willcocks, CVPR-W 2022, Sec. 3: noise to
``t_L``, reconstruct, score ``|x_0 - x_hat_0|``), listed as the anomaly-detection task in Kazerouni et al. (2023,
Medical Image Analysis 88:102846, Sec. 4.4). ``t0`` trades sensitivity (large: big lesions get removed) against
false alarms (large: healthy detail is not reproduced either); :func:`select_t0` picks it on a validation set.

:func:`insert_lesions` writes synthetic lesions (smooth elliptical blobs of altered intensity) into healthy images
and returns the exact ground-truth pixel mask; :func:`auroc` is the area under the ROC curve
(scikit-learn's ``roc_auc_score``) of scores against binary labels.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor
from torch.nn import functional as F

from diffusio.models.base import ModelBase
from diffusio.samplers import sample

__all__ = ["anomaly_map", "anomaly_score", "auroc", "gaussian_smooth", "insert_lesions", "select_t0"]


def _int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}")
    return int(v)


def _real(name: str, v, lo: float, hi: float = math.inf, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number; got {v!r}")
    if v < lo or v > hi or (lo_open and v == lo):
        side = "(" if lo_open else "["
        raise ValueError(f"{name} must be in {side}{lo:g}, {hi:g}]; got {v!r}")
    return float(v)


def _range(name: str, v, lo: float, hi: float) -> tuple[float, float]:
    if not isinstance(v, tuple | list) or len(v) != 2:
        raise ValueError(f"{name} must be a pair (low, high); got {v!r}")
    a, b = (_real(f"{name}[{i}]", u, lo, hi) for i, u in enumerate(v))
    if a > b:
        raise ValueError(f"{name} must satisfy low <= high; got {v!r}")
    return a, b


def _images(x: Tensor, name: str = "x") -> None:
    if not torch.is_tensor(x) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor of images (batch, channels, height, width); got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")  # fmt: skip
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")


def gaussian_smooth(m: Tensor, std: float) -> Tensor:
    """Maps ``(B, H, W)`` convolved with an isotropic Gaussian of ``std`` pixels (reflect padding, 3 std wide);
    ``std = 0`` returns ``m``."""
    if not torch.is_tensor(m) or m.ndim != 3 or not m.is_floating_point():
        raise ValueError(f"m must be a float tensor of maps (batch, height, width); got {getattr(m, 'shape', m)!r}")
    std = _real("std", std, 0.0)
    if std == 0:
        return m
    r = max(1, math.ceil(3 * std))
    r = min(r, m.shape[-1] - 1, m.shape[-2] - 1)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=m.dtype, device=m.device) / std) ** 2)
    k = k / k.sum()
    y = F.pad(m[:, None], (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.reshape(1, 1, 1, -1))
    return F.conv2d(y, k.reshape(1, 1, -1, 1))[:, 0]


def insert_lesions(
    x: Tensor,
    *,
    count: tuple[int, int] = (1, 2),
    radius: tuple[float, float] = (0.12, 0.25),
    contrast: tuple[float, float] = (0.5, 0.9),
    min_change: float = 0.1,
    body_level: float = -0.9,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Synthetic lesions in images ``x`` ``(B, C, H, W)`` in [-1, 1]: returns ``(lesioned images, mask)`` with the
    boolean ground-truth mask ``(B, H, W)`` of the pixels whose intensity changed by more than ``min_change``.

    Each image gets ``count`` = (low, high) lesions: elliptical blobs with a smooth profile ``exp(-2 r^2)`` (``r`` the
    elliptical radius, semi-axes drawn from ``radius`` in units of the half-width, random orientation), intensity
    ``contrast`` (drawn in the range) brighter or darker - darker on bright tissue, brighter on dark tissue - and
    centred on a body pixel (value above ``body_level``; the image centre if there is none). Smooth, graded blobs
    do not occur in piecewise-constant phantoms, so they are out of the healthy distribution. Values are clipped to
    [-1, 1]; the mask leaves out pixels the clipping (or the profile's tail) changed by ``min_change`` or less."""
    _images(x)
    lo, hi = count
    if isinstance(lo, bool) or isinstance(hi, bool) or not all(isinstance(v, numbers.Integral) for v in count):
        raise ValueError(f"count must be a pair of integers (low, high); got {count!r}")
    if not 1 <= lo <= hi:
        raise ValueError(f"count must satisfy 1 <= low <= high; got {count!r}")
    r_lo, r_hi = _range("radius", radius, 0.0, 2.0)
    if r_lo <= 0:
        raise ValueError(f"radius must be > 0; got {radius!r}")
    c_lo, c_hi = _range("contrast", contrast, 0.0, 2.0)
    min_change = _real("min_change", min_change, 0.0, 2.0)
    body_level = _real("body_level", body_level, -1.0, 1.0)
    b, _, h, w = x.shape
    gy, gx = torch.meshgrid(
        (2 * torch.arange(h, dtype=torch.float64) + 1) / h - 1,
        (2 * torch.arange(w, dtype=torch.float64) + 1) / w - 1,
        indexing="ij",
    )
    delta = torch.zeros(b, h, w, dtype=torch.float64)

    def u(a, c):
        return a + (c - a) * float(torch.rand((), generator=generator, dtype=torch.float64))

    ref = x.mean(1).double()
    for i in range(b):
        for _ in range(int(torch.randint(lo, hi + 1, (), generator=generator))):
            body = (ref[i] > body_level).flatten().nonzero()[:, 0]
            j = int(body[torch.randint(0, len(body), (), generator=generator)]) if len(body) else (h // 2) * w + w // 2
            cy, cx = gy.flatten()[j], gx.flatten()[j]
            a, c, phi = u(r_lo, r_hi), u(r_lo, r_hi), u(0, math.pi)
            du, dv, co, si = gx - cx, gy - cy, math.cos(phi), math.sin(phi)
            r2 = ((du * co + dv * si) / a) ** 2 + ((dv * co - du * si) / c) ** 2
            sign = -1.0 if float(ref[i].flatten()[j]) > 0 else 1.0
            delta[i] += sign * u(c_lo, c_hi) * torch.exp(-2 * r2)
    out = (x.double() + delta[:, None]).clamp(-1, 1)
    mask = (out - x.double()).abs().amax(1) > min_change
    return out.to(x.dtype), mask


def anomaly_map(
    model: ModelBase,
    x: Tensor,
    *,
    t0: float,
    n: int = 4,
    steps: int = 10,
    solver: str = "ddim",
    smooth: float = 1.0,
    cond: dict | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pixel-wise anomaly scores ``(B, H, W)`` of images ``x`` ``(B, C, H, W)`` under a healthy prior ``model``.

    For each of ``n`` noise draws: ``x_t0 = alpha(t0) x + sigma(t0) eps`` (``t0`` a time of ``model.path``), then
    ``steps`` steps of the deterministic ``solver`` from ``t0`` to the data end and the final x0 prediction give a
    reconstruction ``x_hat``; the map is ``|x - x_hat|`` averaged over channels and draws, then smoothed by a Gaussian
    of ``smooth`` pixels (0: none). The draws run as one batch of ``n * B`` images through ``steps + 1`` model calls
    (one-call-per-step solvers)."""
    if not isinstance(model, ModelBase):
        raise TypeError(f"model must be a diffusio Model (ModelBase); got {type(model).__name__}")
    _images(x)
    path = model.path
    t0 = _real("t0", t0, path.t_min, path.t_max, lo_open=True)
    n = _int("n", n, 1)
    steps = _int("steps", steps, 1)
    smooth = _real("smooth", smooth, 0.0, float(min(x.shape[-2:])))
    if not isinstance(solver, str):
        raise TypeError(f"solver must be a solver name (str); got {type(solver).__name__}")
    b = x.shape[0]
    xs = x.repeat(n, 1, 1, 1)  # all draws in one batch: draw k of image i is row k * B + i
    noise = torch.randn(xs.shape, generator=generator, dtype=x.dtype).to(x.device)
    tt = torch.full((xs.shape[0],), t0, dtype=torch.float64, device=x.device)
    xt = path.perturb(xs, noise, tt).to(x.dtype)
    batch_cond = None if cond is None else {k: _repeat(v, n) for k, v in cond.items()}
    rec = sample(model, xt, solver=solver, steps=steps, t_max=t0, cond=batch_cond, denoise=True).x
    res = (xs - rec).abs().mean(1).reshape(n, b, *x.shape[-2:]).mean(0)
    return gaussian_smooth(res, smooth)


def _repeat(v, n: int):
    return v.repeat(n, *([1] * (v.ndim - 1))) if torch.is_tensor(v) and v.ndim > 0 else v


def anomaly_score(maps: Tensor, quantile: float = 0.99) -> Tensor:
    """Image-level scores ``(B,)``: the ``quantile`` of each pixel map ``(B, H, W)`` (1: the maximum)."""
    if not torch.is_tensor(maps) or maps.ndim != 3:
        raise ValueError(f"maps must be a tensor (batch, height, width); got {getattr(maps, 'shape', maps)!r}")
    q = _real("quantile", quantile, 0.0, 1.0)
    return torch.quantile(maps.flatten(1).double(), q, dim=1).to(maps.dtype)


def auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve of ``scores`` against boolean ``labels`` (same number of elements; flattened):
    the probability that a random positive outscores a random negative, ties counting one half."""
    from sklearn.metrics import roc_auc_score

    s, y = torch.as_tensor(scores).flatten(), torch.as_tensor(labels).flatten()
    if s.numel() != y.numel():
        raise ValueError(f"scores and labels must have as many elements; got {s.numel()} and {y.numel()}")
    if not bool(torch.isfinite(s.double()).all()):
        raise ValueError("scores contain NaN or inf")
    y = y.bool()
    if bool(y.all()) or not bool(y.any()):
        raise ValueError("labels must contain both positives and negatives for an AUROC")
    return float(roc_auc_score(y.cpu().numpy(), s.double().cpu().numpy()))


def select_t0(
    model: ModelBase,
    x: Tensor,
    mask: Tensor,
    candidates,
    *,
    generator: torch.Generator | None = None,
    **options,
) -> tuple[float, dict[float, float]]:
    """The ``t0`` among ``candidates`` with the highest pixel-level AUROC on validation images ``x`` with lesion
    masks ``mask`` ``(B, H, W)``; returns ``(best t0, {t0: AUROC})``. ``options`` go to :func:`anomaly_map`."""
    cands = [float(c) for c in candidates]
    if not cands:
        raise ValueError("candidates must hold at least one t0")
    if not torch.is_tensor(mask) or mask.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(f"mask must have shape {(x.shape[0], *x.shape[-2:])}; got {getattr(mask, 'shape', mask)}")
    table = {c: auroc(anomaly_map(model, x, t0=c, generator=generator, **options), mask) for c in cands}
    return max(table, key=table.get), table
