"""A small U-Net (ADM-style ResBlocks, one skip per level) for 8x8 to 32x32 images, sized for CPUs."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusio.nets.layers import ConditionEmbedding, check_batch, group_norm, zero_module

__all__ = ["UNet"]


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding as scale-shift of the second norm; ``(B, C, H, W)``."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2, self.drop = group_norm(out_ch), nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x), inplace=True))  # in place: fresh tensors, saves CPU allocations
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm2(h), 1 + scale), inplace=True)
        return self.skip(x) + self.conv2(self.drop(h))


class Attention(nn.Module):
    """Multi-head self-attention over the ``H * W`` positions of ``(B, C, H, W)``, residual, zero-initialised."""

    def __init__(self, channels: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution: ``(B, C_in, H, W) -> (B, C_out, H/2, W/2)``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """2x2 stride-2 transposed convolution ``(B, C_in, H, W) -> (B, C_out, 2H, 2W)`` (4x cheaper than resize+3x3)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _Stage(nn.Module):
    """``num_res_blocks`` ResBlocks at one resolution, each followed by attention if asked; ``(B, C, H, W)``."""

    def __init__(self, in_ch: int, out_ch: int, n: int, emb_dim: int, attention: bool, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(in_ch if i == 0 else out_ch, out_ch, emb_dim, dropout) for i in range(n))
        self.attns = nn.ModuleList(Attention(out_ch) if attention else nn.Identity() for _ in range(n))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        for block, attn in zip(self.blocks, self.attns):
            h = attn(block(h, emb))
        return h


class UNet(nn.Module):
    """``UNet(...)(x (B, C, H, W), t (B,), y (B,) | None) -> (B, out_channels, H, W)``; zero output at init.

    ``channels[i]`` is the width at resolution ``H / 2**i``. Each level has ``num_res_blocks`` ResBlocks on the
    way down and up (one skip per level, concatenated), levels in ``attention_levels`` add self-attention,
    and the bottleneck has ResBlock-attention-ResBlock. Label ``num_classes`` (or ``y=None``) is the null class.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        channels: tuple[int, ...] = (32, 64, 64),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (),
        time_dim: int = 128,
        num_classes: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self._check_config(in_channels, channels, num_res_blocks, attention_levels)
        self.in_channels, self.out_channels = in_channels, out_channels or in_channels
        self.channels, self.num_classes = tuple(channels), num_classes
        ch, n, levels = self.channels, num_res_blocks, range(len(channels))
        self.cond = ConditionEmbedding(time_dim, num_classes)
        self.conv_in = nn.Conv2d(in_channels, ch[0], 3, padding=1)
        self.enc = nn.ModuleList(_Stage(c, c, n, time_dim, i in attention_levels, dropout) for i, c in zip(levels, ch))
        self.downs = nn.ModuleList(Downsample(a, b) for a, b in itertools.pairwise(ch))
        self.mid_block1 = ResBlock(ch[-1], ch[-1], time_dim, dropout)
        self.mid_attn = Attention(ch[-1])
        self.mid_block2 = ResBlock(ch[-1], ch[-1], time_dim, dropout)
        self.ups = nn.ModuleList(Upsample(b, a) for a, b in itertools.pairwise(ch))
        self.dec = nn.ModuleList(
            _Stage(2 * c, c, n, time_dim, i in attention_levels, dropout) for i, c in zip(levels, ch)
        )
        self.out = nn.Sequential(
            group_norm(ch[0]), nn.SiLU(), zero_module(nn.Conv2d(ch[0], self.out_channels, 3, padding=1))
        )

    @staticmethod
    def _check_config(in_channels, channels, num_res_blocks, attention_levels) -> None:
        if in_channels < 1 or len(channels) < 1 or min(channels) < 1:
            raise ValueError(f"need in_channels >= 1 and a non-empty channels tuple; got {in_channels}, {channels}")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1; got {num_res_blocks}")
        bad = [a for a in attention_levels if not 0 <= a < len(channels)]
        if bad:
            raise ValueError(f"attention_levels must be in [0, {len(channels) - 1}] (levels of channels); got {bad}")

    def _check_input(self, x: Tensor, t: Tensor) -> None:
        check_batch(x, t, (self.in_channels, "H", "W"))
        factor = 2 ** (len(self.channels) - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} must be divisible by {factor} = 2**(len(channels) - 1) "
                f"for channels={self.channels}; use fewer levels in channels or pad the input"
            )

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Output ``(B, out_channels, H, W)`` for ``x`` ``(B, in_channels, H, W)``, ``t`` ``(B,)``, ``y`` ``(B,)``."""
        self._check_input(x, t)
        emb = F.silu(self.cond(t, y)).to(x.dtype)
        h, skips = self.conv_in(x), []
        for level, stage in enumerate(self.enc):
            h = stage(h, emb)
            skips.append(h)
            if level < len(self.downs):
                h = self.downs[level](h)
        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb)), emb)
        for level in reversed(range(len(self.dec))):
            if level < len(self.ups):
                h = self.ups[level](h)
            h = self.dec[level](torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
