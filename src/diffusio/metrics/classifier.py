"""A small CNN for the bundled digits, trained once (deterministically, in seconds) and cached as safetensors.

Its penultimate features define the Fréchet distance of digit samples (the analogue of FID's Inception
features) and its softmax the class-confidence metrics; it is trained with small shifts and Gaussian noise
so that slightly imperfect samples are still read as the digits they resemble.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor, nn

from diffusio.data.digits import DIGIT_MODES, DIGIT_SIZES, load_digits
from diffusio.io import load_safetensors, save_safetensors

__all__ = ["DigitsClassifier", "default_cache_dir", "get_digits_classifier", "train_digits_classifier"]

CLASSIFIER_VERSION = "v1"
_SEED = 0
_EPOCHS = 30
_BATCH = 64
_LR = 3e-3
_MAX_NOISE = 0.3  # per-sample Gaussian noise std drawn uniformly in [0, _MAX_NOISE]


class DigitsClassifier(nn.Module):
    """CNN for digit images ``(B, 1, size, size)`` in [-1, 1]: ``forward -> (B, 10)`` logits, ``features -> (B, 64)``.

    A 3x3 stem at full resolution, stride-2 3x3 convolutions (doubling the width up to 64) down to 4x4, a 3x3
    convolution, a linear layer to the ``feature_dim`` penultimate features and a linear head.
    """

    def __init__(self, size: int = 8, mode: str = "pad", feature_dim: int = 64):
        super().__init__()
        if size not in DIGIT_SIZES:
            raise ValueError(f"size must be one of {DIGIT_SIZES}; got size={size!r}")
        self.size, self.mode, self.feature_dim = size, mode, feature_dim
        n_down = int(math.log2(size // 4))
        ch = max(16, 64 >> n_down)  # narrow at high resolution, 64 channels at 4x4: cheap to train on a CPU
        layers: list[nn.Module] = [nn.Conv2d(1, ch, 3, padding=1), nn.SiLU()]
        for _ in range(n_down):
            layers += [nn.Conv2d(ch, min(2 * ch, 64), 3, stride=2, padding=1), nn.SiLU()]
            ch = min(2 * ch, 64)
        layers += [nn.Conv2d(ch, 64, 3, padding=1), nn.SiLU(), nn.Flatten()]
        self.body = nn.Sequential(*layers, nn.Linear(64 * 16, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, 10)

    def _check(self, x: Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, self.size, self.size):
            raise ValueError(
                f"x must have shape (B, 1, {self.size}, {self.size}) for this classifier (size={self.size}); "
                f"got {tuple(x.shape)}"
            )

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, feature_dim)`` of images ``x`` ``(B, 1, size, size)``."""
        self._check(x)
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, 10)`` of images ``x`` ``(B, 1, size, size)``."""
        return self.head(self.features(x))


def default_cache_dir() -> Path:
    """``$DIFFUSIO_CACHE`` if set, else ``~/.cache/diffusio``."""
    return Path(os.environ.get("DIFFUSIO_CACHE") or Path.home() / ".cache" / "diffusio")


def _cache_path(cache_dir: Path, size: int, mode: str) -> Path:
    return cache_dir / f"digits_classifier_{mode}{size}_{CLASSIFIER_VERSION}.safetensors"


def _init_(model: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise weights from ``generator`` (PyTorch's default uniform fan-in scheme, global RNG untouched)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                bound = 1.0 / math.sqrt(m.weight[0].numel())
                m.weight.uniform_(-bound, bound, generator=generator)
                m.bias.uniform_(-bound, bound, generator=generator)


def _augment(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Shift each image ``(B, 1, S, S)`` by up to ``max_shift`` pixels (background fill) and add Gaussian noise."""
    b, _, s, _ = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)
    ar = torch.arange(s)
    rows = (dy[:, None] + ar)[:, :, None]
    cols = (dx[:, None] + ar)[:, None, :]
    shifted = padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)
    noise_std = _MAX_NOISE * torch.rand(b, 1, 1, 1, generator=generator)
    return shifted + noise_std * torch.randn(shifted.shape, generator=generator)


def train_digits_classifier(size: int = 8, mode: str = "pad", progress: bool = True) -> DigitsClassifier:
    """Train a ``DigitsClassifier`` on the "train" split, deterministically from a fixed seed (CPU, seconds)."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(_SEED)
    model = DigitsClassifier(size, mode)
    _init_(model, g)
    images, labels = load_digits(size, mode, "train")
    max_shift = max(1, size // 8) if mode == "upscale" else 1  # one pixel of the original 8x8 digit
    steps_per_epoch = math.ceil(len(labels) / _BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=_LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, _LR, total_steps=_EPOCHS * steps_per_epoch)
    model.train()
    for _ in tqdm(range(_EPOCHS), desc=f"training digits classifier ({mode}{size})", disable=not progress):
        for idx in torch.randperm(len(labels), generator=g).split(_BATCH):
            loss = F.cross_entropy(model(_augment(images[idx], max_shift, g)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def _try_load(model: DigitsClassifier, path: Path) -> bool:
    """Load cached weights into ``model``; False (retrain and overwrite) if the file is unreadable or stale."""
    try:
        tensors, meta = load_safetensors(path)
        if (meta.get("size"), meta.get("mode"), meta.get("version")) != (model.size, model.mode, CLASSIFIER_VERSION):
            return False
        model.load_state_dict(tensors)
    except (OSError, RuntimeError, ValueError, KeyError, SafetensorError) as err:
        warnings.warn(f"ignoring unreadable digits-classifier cache {path}: {err}", stacklevel=3)
        return False
    return True


def get_digits_classifier(
    size: int = 8, mode: str = "pad", cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> DigitsClassifier:
    """The digits classifier for ``(size, mode)`` in eval mode: loaded from the cache, or trained once and cached.

    Cache: ``cache_dir``, else ``$DIFFUSIO_CACHE``, else ``~/.cache/diffusio``; the file name holds size, mode
    and a version string, so a new version never loads stale weights.
    """
    if mode not in DIGIT_MODES:
        raise ValueError(f"mode must be one of {DIGIT_MODES}; got mode={mode!r}")
    model = DigitsClassifier(size, mode)
    path = _cache_path(Path(cache_dir) if cache_dir is not None else default_cache_dir(), size, mode)
    if not (path.is_file() and _try_load(model, path)):
        model = train_digits_classifier(size, mode)
        meta = {"size": size, "mode": mode, "version": CLASSIFIER_VERSION, "seed": _SEED}
        save_safetensors(model.state_dict(), path, metadata=meta)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval()
