"""Per-image fidelity metrics for reconstructions: PSNR and SSIM (Wang et al. 2004, Gaussian window)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim"]


def _check_pair(x: Tensor, y: Tensor, data_range: float) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"x and y must both have shape (B, C, H, W); got {tuple(x.shape)} and {tuple(y.shape)}")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0 (max - min of the pixel scale, 2 for [-1, 1]); got {data_range}")


def psnr(x: Tensor, y: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio in dB ``(B,)`` between images ``x`` and ``y`` ``(B, C, H, W)`` (inf if equal)."""
    _check_pair(x, y, data_range)
    mse = (x.double() - y.double()).square().flatten(1).mean(1)
    return (10 * torch.log10(data_range**2 / mse)).to(torch.promote_types(x.dtype, torch.float32))


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device) -> Tensor:
    """Depthwise 2-D Gaussian window ``(C, 1, size, size)`` summing to 1, in float64."""
    r = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(
    x: Tensor,
    y: Tensor,
    data_range: float = 2.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Structural similarity ``(B,)`` of images ``x`` and ``y`` ``(B, C, H, W)``: mean SSIM map over C, H, W.

    Gaussian-weighted local statistics (window 11, sigma 1.5, population covariances) over 'valid' positions
    only, which matches ``skimage.metrics.structural_similarity(gaussian_weights=True,
    use_sample_covariance=False)``.
    """
    _check_pair(x, y, data_range)
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"images must be at least win_size={win_size} pixels per side; got {tuple(x.shape[-2:])}")
    c, dtype = x.shape[1], torch.promote_types(x.dtype, torch.float32)
    w = _gaussian_window(win_size, sigma, c, x.device)
    x, y = x.double(), y.double()

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(z, w, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).to(dtype)
