"""scikit-learn's bundled 8x8 handwritten digits (1797 images, no network), padded or upscaled to 16/32."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DIGIT_MODES", "DIGIT_SIZES", "DIGIT_SPLITS", "load_digits"]

DIGIT_SIZES: tuple[int, ...] = (8, 16, 32)
DIGIT_MODES: tuple[str, ...] = ("pad", "upscale")
DIGIT_SPLITS: tuple[str, ...] = ("all", "train", "test")
_TRAIN_FRACTION = 0.85
_SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[Tensor, Tensor]:
    """All 1797 digits as ``(N, 1, 8, 8)`` float32 in [-1, 1] and labels ``(N,)`` int64 (cached)."""
    from sklearn.datasets import load_digits as sk_load_digits

    x, y = sk_load_digits(return_X_y=True)
    images = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 8.0 - 1.0  # 0..16 -> -1..1
    return images, torch.as_tensor(y, dtype=torch.int64)


def _split_index(n: int, split: str) -> Tensor:
    """Indices of ``split`` after a fixed-seed permutation: first 85% train, the rest test."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_SPLIT_SEED))
    n_train = round(_TRAIN_FRACTION * n)
    return {"all": torch.arange(n), "train": perm[:n_train], "test": perm[n_train:]}[split]


def _resize(images: Tensor, size: int, mode: str) -> Tensor:
    """Bring ``(N, 1, 8, 8)`` images to ``(N, 1, size, size)``: pad with background -1, or bilinear upscale."""
    if size == 8:
        return images
    if mode == "upscale":
        return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    p = (size - 8) // 2
    return F.pad(images, (p, p, p, p), value=-1.0)


def load_digits(size: int = 8, mode: str = "pad", split: str = "all") -> tuple[Tensor, Tensor]:
    """Digits as images ``(N, 1, size, size)`` float32 in [-1, 1] (background -1) and labels ``(N,)`` int64.

    ``mode="pad"`` centres the 8x8 digit on a background canvas (a size U-Nets can downsample);
    ``mode="upscale"`` resizes it bilinearly. ``split`` is "all", "train" (a fixed 85%) or "test" (the rest).
    """
    if size not in DIGIT_SIZES:
        raise ValueError(f"size must be one of {DIGIT_SIZES}; got size={size!r}")
    if mode not in DIGIT_MODES:
        raise ValueError(f"mode must be one of {DIGIT_MODES}; got mode={mode!r}")
    if split not in DIGIT_SPLITS:
        raise ValueError(f"split must be one of {DIGIT_SPLITS}; got split={split!r}")
    images, labels = _raw_digits()
    idx = _split_index(len(labels), split)
    return _resize(images[idx], size, mode).contiguous(), labels[idx].clone()
