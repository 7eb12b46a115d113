"""Building blocks shared by the networks: time embedding, conditioning, normalisation, shape checks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ConditionEmbedding", "FourierTimeEmbedding", "check_batch", "group_norm", "zero_module"]


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero and return it (diffusion nets start as the zero map)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def group_norm(channels: int, max_groups: int = 32, min_channels_per_group: int = 4) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``max_groups`` dividing ``channels`` (>= 4 channels each)."""
    limit = max(1, min(max_groups, channels // min_channels_per_group))
    groups = max(g for g in range(1, limit + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def check_batch(x: Tensor, t: Tensor, feature_shape: tuple[int | str, ...], x_name: str = "x") -> None:
    """Raise ValueError unless ``x`` is ``(B, *feature_shape)`` and ``t`` is ``(B,)`` (a str entry matches any size)."""
    ok = x.ndim == 1 + len(feature_shape) and all(
        isinstance(e, str) or e == s for e, s in zip(feature_shape, x.shape[1:])
    )
    if not ok:
        want = ", ".join(["B", *map(str, feature_shape)])
        raise ValueError(f"{x_name} must have shape ({want}); got {tuple(x.shape)}")
    if t.shape != (x.shape[0],):
        raise ValueError(
            f"t must have shape (batch,) = ({x.shape[0]},), one time per sample; got {tuple(t.shape)}"
            " (broadcast a scalar time with t.expand(batch))"
        )


class FourierTimeEmbedding(nn.Module):
    """Sinusoidal features of a float time ``t`` ``(B,)`` at geometric frequencies, then an MLP: ``(B, dim)``.

    Angular frequencies span ``[min_freq, max_freq]``: 1000 rad per unit resolves time differences of 1e-3
    and 0.1 keeps the slowest feature monotone (non-aliased) for ``t`` anywhere in [-5, 5] and beyond.
    """

    def __init__(self, dim: int, max_freq: float = 1000.0, min_freq: float = 0.1, num_freqs: int | None = None):
        super().__init__()
        if dim < 2:
            raise ValueError(f"dim must be >= 2; got dim={dim}")
        if not 0 < min_freq < max_freq:
            raise ValueError(f"need 0 < min_freq < max_freq; got min_freq={min_freq}, max_freq={max_freq}")
        num_freqs = num_freqs or max(dim // 2, 2)
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), num_freqs))
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(2 * num_freqs, dim), nn.SiLU(), nn.Linear(dim, dim))

    def features(self, t: Tensor) -> Tensor:
        """Raw features ``[sin(f t), cos(f t)]`` ``(B, 2 * num_freqs)`` for ``t`` ``(B,)``, computed in float32+."""
        if t.ndim != 1:
            raise ValueError(f"t must have shape (batch,); got {tuple(t.shape)}")
        angle = t.to(torch.promote_types(t.dtype, torch.float32))[:, None] * self.freqs.to(t.device)[None, :]
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)

    def forward(self, t: Tensor) -> Tensor:
        """Embedding ``(B, dim)`` of times ``t`` ``(B,)``."""
        feats = self.features(t).to(self.mlp[0].weight.dtype)
        return self.mlp(feats)


class ConditionEmbedding(nn.Module):
    """Time embedding plus an optional class embedding with a null class; ``(B,)`` inputs -> ``(B, dim)``.

    With ``num_classes`` set, the table has ``num_classes + 1`` rows; row ``num_classes`` is the null class
    (classifier-free guidance), which ``y=None`` selects.
    """

    def __init__(self, dim: int, num_classes: int | None = None):
        super().__init__()
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1; got num_classes={num_classes}")
        self.num_classes = num_classes
        self.time = FourierTimeEmbedding(dim)
        self.label = None if num_classes is None else nn.Embedding(num_classes + 1, dim)

    def forward(self, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Sum of the time and class embeddings ``(B, dim)`` for ``t`` ``(B,)`` and labels ``y`` ``(B,)``."""
        emb = self.time(t)
        if self.label is None:
            if y is not None:
                raise ValueError("y was given but the network was built without num_classes; pass num_classes=K")
            return emb
        if y is None:
            y = torch.full(t.shape, self.num_classes, dtype=torch.long, device=t.device)
        if not torch.compiler.is_compiling():  # a data-dependent check: skipped under torch.export / torch.compile
            self._check_labels(y, t.shape[0])
        return emb + self.label(y)

    def _check_labels(self, y: Tensor, batch: int) -> None:
        if y.shape != (batch,) or y.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"y must be an integer tensor of shape ({batch},); got {y.dtype} {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > self.num_classes):
            raise ValueError(
                f"y must hold class indices in [0, {self.num_classes}] ({self.num_classes} = null class); "
                f"got values in [{int(y.min())}, {int(y.max())}]"
            )
