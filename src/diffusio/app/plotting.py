"""Pictures people would rather look at: sample grids, 2-D scatters, quality-versus-calls curves (PNG)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["image_grid", "plot_curves", "save_image_grid", "save_scatter"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(x: Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images ``(N, C, H, W)`` in [-1, 1] into one uint8 array ``(H', W', C)``."""
    if x.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W); got {tuple(x.shape)}")
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    img = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    canvas = torch.full((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        canvas[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = (
            img[i]
        )
    return canvas.permute(1, 2, 0).numpy()


def save_image_grid(x: Tensor, file: str | os.PathLike, nrow: int | None = None, scale: int = 4) -> None:
    """Write a PNG grid of images in [-1, 1], upscaled by ``scale`` (nearest) so small images stay visible."""
    from PIL import Image

    arr = image_grid(x, nrow)
    im = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
    im.save(file)


def save_scatter(
    x: Tensor, file: str | os.PathLike, reference: Tensor | None = None, title: str = "", lim: float | None = None
) -> None:
    """Scatter plot of 2-D samples (optionally beside reference data)."""
    plt = _plt()
    panels = [("samples", x)] + ([("data", reference)] if reference is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    lim = lim or float(max(p.abs().quantile(0.995) for _, p in panels)) * 1.1
    for ax, (name, pts) in zip(axes[0], panels):
        p = pts.detach().cpu().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=1.5, alpha=0.5, linewidths=0)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(f"{title} {name}".strip() if name == "samples" else "data")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def plot_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    file: str | os.PathLike,
    xlabel: str = "model calls (NFE)",
    ylabel: str = "error",
    title: str = "",
    logy: bool = True,
    hline: tuple[float, str] | None = None,
) -> None:
    """Line plot of ``{label: (xs, ys)}`` (log-log by default)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", ms=3, label=label)
    if hline is not None:
        ax.axhline(hline[0], color="gray", ls="--", lw=1, label=hline[1])
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)
