"""A shared trunk with modality-specific heads (Chen et al. 2024, MT-Diffusion, Sec. 3.3: one denoising backbone,
one decoder head per modality), and the label encoder that maps a class (or class probabilities) to image shape."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusio.nets.layers import group_norm, zero_module
from diffusio.nets.unet import UNet

__all__ = ["ImageHead", "LabelEncoder", "LabelHead", "MultiHeadNet", "image_label_net"]


class ImageHead(nn.Module):
    """GroupNorm-SiLU-conv3x3 on trunk features ``(B, F, H, W) -> (B, C, H, W)``; zero at initialisation."""

    def __init__(self, features: int, out_channels: int):
        super().__init__()
        self.net = nn.Sequential(
            group_norm(features), nn.SiLU(), zero_module(nn.Conv2d(features, out_channels, 3, 1, 1))
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class LabelHead(nn.Module):
    """MLP on the flattened trunk features ``(B, F, H, W) -> (B, num_classes)`` logits (``size`` = H = W)."""

    def __init__(self, features: int, size: int, num_classes: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            group_norm(features),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(features * size * size, hidden),
            nn.SiLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class LabelEncoder(nn.Module):
    """E(y): a learned embedding of each class, shaped like the image ``(B, *shape)``; class probabilities
    ``(B, K)`` give the expected embedding (the sampler's estimate of an unknown label).

    Each class's embedding is normalised to root-mean-square 1 per element, so the aggregation weight w alone sets
    the size of the drift b_t = alpha_t c(t) E(y): a free scale would let the label loss inflate E (a larger drift
    makes the label easier to read off z_t) at the expense of the image.
    """

    def __init__(self, num_classes: int, shape: tuple[int, ...]):
        super().__init__()
        self.shape, self.num_classes = tuple(shape), num_classes
        self.table = nn.Parameter(torch.randn(num_classes, int(torch.tensor(shape).prod())) * 0.5)

    def forward(self, y: Tensor) -> Tensor:
        if y.ndim == 1:
            bad = y.dtype not in (torch.int64, torch.int32) or (
                y.numel() and (y.min() < 0 or y.max() >= self.num_classes)
            )
            if bad:
                raise ValueError(
                    f"labels must be integers in [0, {self.num_classes - 1}]; got {y.dtype} {y[:8].tolist()}"
                )
            y = F.one_hot(y.long(), self.num_classes).to(self.table.dtype)
        if y.shape[-1] != self.num_classes:
            raise ValueError(f"class probabilities must have shape (B, {self.num_classes}); got {tuple(y.shape)}")
        return (y.to(self.table.dtype) @ self.embeddings()).reshape(y.shape[0], *self.shape)

    def embeddings(self) -> Tensor:
        """The normalised class embeddings ``(K, prod(shape))`` (RMS 1 per row)."""
        return self.table * torch.rsqrt(self.table.pow(2).mean(1, keepdim=True) + 1e-12)


class MultiHeadNet(nn.Module):
    """``trunk(x, t) -> features``, then every head: ``forward(x (B, ...), t (B,)) -> {name: head(features)}``.

    ``encoders`` holds the modality encoders E_i (trained with the heads); they are not used by ``forward``.
    """

    def __init__(self, trunk: nn.Module, heads: dict[str, nn.Module], encoders: dict[str, nn.Module] | None = None):
        super().__init__()
        if not heads:
            raise ValueError("MultiHeadNet needs at least one head")
        self.trunk, self.heads = trunk, nn.ModuleDict(heads)
        self.encoders = nn.ModuleDict(encoders or {})

    def forward(self, x: Tensor, t: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x, t)
        return {name: head(h) for name, head in self.heads.items()}


def image_label_net(
    in_channels: int = 1,
    image_size: int = 8,
    num_classes: int = 10,
    channels: tuple[int, ...] = (32, 64),
    features: int = 32,
    time_dim: int = 64,
    label_hidden: int = 128,
) -> MultiHeadNet:
    """U-Net trunk (output ``features`` channels) + image head (eps) + label head (logits) + label encoder."""
    trunk = UNet(in_channels, features, tuple(channels), time_dim=time_dim)
    nn.init.normal_(trunk.out[-1].weight, std=0.02)  # the trunk must pass features at init (U-Nets start at zero)
    heads = {
        "image": ImageHead(features, in_channels),
        "label": LabelHead(features, image_size, num_classes, label_hidden),
    }
    net = MultiHeadNet(trunk, heads, {"label": LabelEncoder(num_classes, (in_channels, image_size, image_size))})
    net.num_classes = num_classes
    return net
