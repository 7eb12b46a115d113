"""A diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers") with muP.

Patchify (a linear map of p x p patches plus fixed 2-D sin-cos positions), ``depth`` adaLN-Zero blocks (the time
+ class embedding regresses shift/scale/gate of both sub-layers, gates zero at init), a final adaLN layer and a
linear readout that unpatchifies. Width = ``heads * head_dim`` with ``head_dim`` fixed, the width axis of DiT-muP
(Zheng et al. 2025, "Scaling Diffusion Transformers Efficiently via muP"), so the attention scale is a constant.

muP (Yang et al. 2021, Tensor Programs V, Table 3 for Adam) goes through Microsoft's ``mup`` package: the readout
is a ``MuReadout`` (forward multiplier ``output_mult / width_mult``), ``mup.set_base_shapes`` is called at
construction against shape-only base (``base_width``) and delta (``2 * base_width``) models built on the meta
device, and :meth:`DiT.make_optimizer` returns ``mup.MuAdamW`` (hidden matrices at lr / width_mult). The
initialisation is PyTorch's fan-in default, which has the muP scaling for input and hidden weights (DiT's Xavier
init does not: it shrinks input weights with width). Everything muP needs to resume is in the constructor
arguments (``width``, ``base_width``), i.e. in the run config stored with a checkpoint; no shape file is written.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusio.nets.layers import ConditionEmbedding, FourierTimeEmbedding, check_batch
from diffusio.nets.muparam import MuPMixin, mup_readout, set_mup_base_shapes

__all__ = ["DiT"]


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def _sincos_2d(grid: int, dim: int) -> Tensor:
    """Fixed 2-D sin-cos position features ``(grid * grid, dim)`` (half the channels per axis)."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / max(quarter, 1))
    pos = torch.arange(grid, dtype=torch.float64)
    yy, xx = torch.meshgrid(pos, pos, indexing="ij")
    feats = []
    for coord in (yy.reshape(-1), xx.reshape(-1)):
        ang = coord[:, None] * omega[None]
        feats += [torch.sin(ang), torch.cos(ang)]
    out = torch.cat(feats, 1)
    return F.pad(out, (0, dim - out.shape[1])).float()


class Block(nn.Module):
    """adaLN-Zero Transformer block on tokens ``(B, N, width)`` conditioned on ``c`` ``(B, width)``."""

    def __init__(self, width: int, head_dim: int, mlp_ratio: float):
        super().__init__()
        self.heads, hidden = width // head_dim, int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=1)
        b, n, w = x.shape
        q, k, v = self.qkv(_modulate(self.norm1(x), sh1, sc1)).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, w)
        x = x + g1[:, None] * self.proj(att)
        return x + g2[:, None] * self.fc2(F.gelu(self.fc1(_modulate(self.norm2(x), sh2, sc2)), approximate="tanh"))


class DiT(MuPMixin, nn.Module):
    """``DiT(...)(x (B, C, H, W), t (B,), y (B,) | None) -> (B, out_channels, H, W)``; zero output at init.

    ``width`` must be a multiple of ``head_dim``; ``image_size`` a multiple of ``patch``. With ``mup`` the base shapes
    come from ``base_width`` (the width whose learning rate and multipliers are the tuned ones). Label
    ``num_classes`` (or ``y=None``) is the null class for classifier-free guidance.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        patch: int = 2,
        width: int = 64,
        depth: int = 2,
        head_dim: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        out_channels: int | None = None,
        mup: bool = True,
        base_width: int = 32,
        output_mult: float = 1.0,
        _shapes_only: bool = False,
    ):
        super().__init__()
        self._check(in_channels, image_size, patch, width, depth, head_dim, mlp_ratio, base_width, output_mult)
        self.in_channels, self.out_channels = in_channels, out_channels or in_channels
        self.image_size, self.patch, self.width, self.num_classes = image_size, patch, width, num_classes
        self.mup, self.base_width = mup, base_width
        self._args = dict(in_channels=in_channels, image_size=image_size, patch=patch, depth=depth,
                          head_dim=head_dim, mlp_ratio=mlp_ratio, num_classes=num_classes, out_channels=out_channels,
                          mup=mup, base_width=base_width, output_mult=output_mult)  # fmt: skip
        self.grid = image_size // patch
        self.embed = nn.Linear(in_channels * patch * patch, width)
        self.register_buffer("pos", _sincos_2d(self.grid, width), persistent=False)
        self.cond = ConditionEmbedding(width, num_classes)
        self.cond.time = FourierTimeEmbedding(width, num_freqs=64)  # fixed feature count: an input-type first layer
        self.blocks = nn.ModuleList(Block(width, head_dim, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(width, 2 * width)
        nn.init.zeros_(self.ada_out.weight)
        nn.init.zeros_(self.ada_out.bias)
        n_out = patch * patch * self.out_channels
        if mup:
            self.readout = mup_readout(width, n_out, output_mult)
        else:
            self.readout = nn.Linear(width, n_out)
            nn.init.zeros_(self.readout.weight)
            nn.init.zeros_(self.readout.bias)
        if mup and not _shapes_only:
            set_mup_base_shapes(self, lambda w: DiT(width=w, _shapes_only=True, **self._args), base_width)

    @staticmethod
    def _check(in_channels, image_size, patch, width, depth, head_dim, mlp_ratio, base_width, output_mult) -> None:
        for name, v in (("in_channels", in_channels), ("patch", patch), ("width", width), ("depth", depth),
                        ("head_dim", head_dim), ("base_width", base_width)):  # fmt: skip
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DiT {name} must be an integer >= 1; got {v!r}")
        if width % head_dim or base_width % head_dim:
            raise ValueError(
                f"DiT width ({width}) and base_width ({base_width}) must be multiples of head_dim ({head_dim})"
            )
        if image_size % patch:
            raise ValueError(f"DiT image_size ({image_size}) must be a multiple of patch ({patch})")
        if not (mlp_ratio > 0 and math.isfinite(output_mult) and output_mult > 0):
            raise ValueError(f"DiT mlp_ratio and output_mult must be > 0; got {mlp_ratio}, {output_mult}")

    def patchify(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, N, C p p)`` with N = (H/p)(W/p), row-major patches."""
        b, c, _, _ = x.shape
        p, g = self.patch, self.grid
        return x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """``(B, N, C p p) -> (B, C, H, W)``, the inverse of :meth:`patchify`."""
        b = tokens.shape[0]
        p, g, c = self.patch, self.grid, tokens.shape[-1] // self.patch**2
        return tokens.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, g * p, g * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Output ``(B, out_channels, H, W)`` for ``x`` ``(B, in_channels, H, W)``, ``t`` ``(B,)``, ``y`` ``(B,)``."""
        check_batch(x, t, (self.in_channels, self.image_size, self.image_size))
        c = self.cond(t, y).to(x.dtype)
        h = self.embed(self.patchify(x)) + self.pos.to(x.dtype)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada_out(F.silu(c)).chunk(2, dim=1)
        return self.unpatchify(self.readout(_modulate(self.norm_out(h), shift, scale)))
