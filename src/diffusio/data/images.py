"""The user's own image folders, and random grayscale patches from scikit-image's bundled photographs."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["IMAGE_EXTENSIONS", "PATCH_SOURCES", "PATCH_SPLITS", "image_patches", "load_image_folder"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
PATCH_SOURCES: tuple[str, ...] = ("camera", "astronaut", "coins", "moon", "all")
PATCH_SPLITS: tuple[str, ...] = ("all", "train", "test")
_PIL_MODES = {1: "L", 3: "RGB"}


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer (output side in pixels); got size={size!r}")


def _find_images(root: Path) -> list[Path]:
    """All image files under ``root`` (recursive, case-insensitive extensions), sorted by relative path."""
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _load_one(path: Path, size: int, pil_mode: str) -> np.ndarray:
    """One image as ``(size, size, C)`` uint8: converted, centre-cropped to a square, LANCZOS-resized."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert(pil_mode)
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.LANCZOS)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def load_image_folder(root: str | os.PathLike, size: int, channels: int = 3, max_images: int | None = None) -> Tensor:
    """Every image under ``root`` as ``(N, channels, size, size)`` float32 in [-1, 1], in sorted path order."""
    _check_size(size)
    if channels not in _PIL_MODES:
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB); got channels={channels!r}")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"max_images must be None or a positive integer; got max_images={max_images!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = _find_images(root)[:max_images]
    if not files:
        raise ValueError(f"no images found under {root} (searched extensions {', '.join(IMAGE_EXTENSIONS)})")
    arr = np.stack([_load_one(p, size, _PIL_MODES[channels]) for p in files])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


@functools.cache
def _gray_source(name: str) -> Tensor:
    """scikit-image's bundled photograph ``name`` as a grayscale ``(H, W)`` float32 tensor in [-1, 1]."""
    import skimage.color
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 3:
        img = skimage.color.rgb2gray(img)  # float in [0, 1]
    else:
        img = img.astype(np.float64) / 255.0
    return torch.from_numpy(np.ascontiguousarray(img)).float().mul(2.0).sub(1.0)


def _crops(img: Tensor, size: int, n: int, generator: torch.Generator | None, cols: tuple[int, int]) -> Tensor:
    """``n`` random ``(size, size)`` crops of ``img`` ``(H, W)`` lying inside columns ``cols = (lo, hi)``."""
    h = img.shape[0]
    top = torch.randint(0, h - size + 1, (n,), generator=generator)
    left = torch.randint(cols[0], cols[1] - size + 1, (n,), generator=generator)
    ar = torch.arange(size)
    return img[(top[:, None] + ar)[:, :, None], (left[:, None] + ar)[:, None, :]]


def _columns(width: int, split: str, holdout: float) -> tuple[int, int]:
    """The column range of ``split``: "test" is the right ``holdout`` fraction of the photograph, "train" the rest."""
    cut = round(width * (1 - holdout))
    return {"all": (0, width), "train": (0, cut), "test": (cut, width)}[split]


def image_patches(
    name: str,
    size: int,
    n: int,
    *,
    generator: torch.Generator | None = None,
    split: str = "all",
    holdout: float = 0.25,
) -> Tensor:
    """``n`` random grayscale patches ``(n, 1, size, size)`` in [-1, 1] from scikit-image photograph ``name``.

    ``name`` is "camera", "astronaut" (grayscaled), "coins", "moon", or "all" (each patch picks one of the
    four photographs uniformly). Crop positions come from ``generator``. ``split`` holds out a region: "test"
    patches lie entirely in the right ``holdout`` fraction of the columns of each photograph, "train" patches
    entirely left of it (so no test pixel is ever seen in training), "all" anywhere.
    """
    if name not in PATCH_SOURCES:
        raise ValueError(f"unknown patch source name={name!r}; valid names are {', '.join(PATCH_SOURCES)}")
    if split not in PATCH_SPLITS:
        raise ValueError(f"unknown split={split!r}; valid: {', '.join(PATCH_SPLITS)}")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1) (fraction of columns held out for testing); got {holdout}")
    _check_size(size)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer (number of patches); got n={n!r}")
    names = PATCH_SOURCES[:-1] if name == "all" else (name,)
    sources = [_gray_source(s) for s in names]
    cols = [_columns(img.shape[1], split, holdout) for img in sources]
    smallest = min(min(img.shape[0], hi - lo) for img, (lo, hi) in zip(sources, cols, strict=True))
    if size > smallest:
        raise ValueError(
            f"size must be at most {smallest} for name={name!r}, split={split!r} (smallest side of the region); "
            f"got {size}"
        )
    which = torch.randint(0, len(sources), (n,), generator=generator)
    out = torch.empty(n, size, size)
    for k, img in enumerate(sources):
        idx = (which == k).nonzero().squeeze(1)
        if len(idx):
            out[idx] = _crops(img, size, len(idx), generator, cols[k])
    return out.unsqueeze(1)
