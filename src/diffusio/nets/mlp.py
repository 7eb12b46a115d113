"""A residual MLP for vector data (2-D toys, flattened features) with FiLM time/class conditioning.

``MLP(..., mup=True)`` is muP (Yang et al. 2021, "Tensor Programs V", Table 3 for Adam) in width ``hidden``: the
input layer and the FiLM layers (fixed fan-in: data and time features) are input weights, the residual blocks'
``hidden x hidden`` matrices hidden weights (``lr / width_mult`` under ``mup.MuAdamW``), the readout a ``MuReadout``
(zero init, forward multiplier ``output_mult / width_mult``); see :mod:`diffusio.nets.muparam`.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from diffusio.nets.layers import ConditionEmbedding, FourierTimeEmbedding, check_batch, zero_module
from diffusio.nets.muparam import MuPMixin, mup_readout, set_mup_base_shapes

__all__ = ["MLP", "FlattenNet", "FlowMapMLP"]


class _ResidualBlock(nn.Module):
    """LayerNorm -> FiLM(cond) -> SiLU -> Linear -> SiLU -> Linear, added to the input ``(B, hidden)``."""

    def __init__(self, hidden: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.film = nn.Linear(cond_dim, 2 * hidden)
        self.net = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.film(cond).chunk(2, dim=1)
        return h + self.net(self.norm(h) * (1 + scale) + shift)


class MLP(MuPMixin, nn.Module):
    """``MLP(dim, ...)(x (B, dim), t (B,), y (B,) | None) -> (B, out_dim or dim)``; zero output at init.

    With ``num_classes`` set, label ``num_classes`` (or ``y=None``) is the null class for classifier-free
    guidance. ``hidden`` is the width; with ``mup`` the learning rate and ``output_mult`` tuned at ``base_hidden``
    carry over to every width (:meth:`make_optimizer` returns ``mup.MuAdamW``). At ``hidden == base_hidden`` the
    muP network is the standard one.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 4,
        time_dim: int = 64,
        num_classes: int | None = None,
        out_dim: int | None = None,
        mup: bool = False,
        base_hidden: int = 64,
        output_mult: float = 1.0,
        _shapes_only: bool = False,
    ):
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 0:
            raise ValueError(f"need dim >= 1, hidden >= 1, depth >= 0; got dim={dim}, hidden={hidden}, depth={depth}")
        if isinstance(base_hidden, bool) or not isinstance(base_hidden, int) or base_hidden < 1:
            raise ValueError(
                f"MLP base_hidden must be an integer >= 1 (the width muP is tuned at); got {base_hidden!r}"
            )
        if not (math.isfinite(output_mult) and output_mult > 0):
            raise ValueError(f"MLP output_mult must be finite and > 0; got {output_mult!r}")
        self.dim, self.out_dim, self.num_classes = dim, out_dim or dim, num_classes
        self.mup, self.base_hidden = bool(mup), base_hidden
        self.cond = ConditionEmbedding(time_dim, num_classes)
        self.cond_act = nn.SiLU()
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden, time_dim) for _ in range(depth))
        readout = (
            mup_readout(hidden, self.out_dim, output_mult) if mup else zero_module(nn.Linear(hidden, self.out_dim))
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), zero_module(readout))
        if mup and not _shapes_only:
            args = dict(dim=dim, depth=depth, time_dim=time_dim, num_classes=num_classes, out_dim=out_dim, mup=True,
                        base_hidden=base_hidden, output_mult=output_mult, _shapes_only=True)  # fmt: skip
            set_mup_base_shapes(self, lambda w: MLP(hidden=w, **args), base_hidden)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Output ``(B, out_dim)`` for inputs ``x`` ``(B, dim)``, times ``t`` ``(B,)``, labels ``y`` ``(B,)``."""
        check_batch(x, t, (self.dim,))
        cond = self.cond_act(self.cond(t, y)).to(x.dtype)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, cond)
        return self.out(h)


class FlowMapMLP(nn.Module):
    """``FlowMapMLP(dim, ...)(x (B, dim), t (B,), s (B,)) -> (B, dim)``: a residual MLP conditioned on two times, the
    start t and the gap t - s of a flow-map jump (MeanFlow's (t, t - r) conditioning, Geng et al. 2025); zero output
    at init."""

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, time_dim: int = 64, max_freq: float = 30.0):
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 0:
            raise ValueError(f"need dim >= 1, hidden >= 1, depth >= 0; got dim={dim}, hidden={hidden}, depth={depth}")
        self.dim = dim
        # moderate frequencies: the training target contains d/dt of the output (a JVP), which a 1000 rad/unit
        # embedding would amplify a thousandfold
        self.t_emb = FourierTimeEmbedding(time_dim, max_freq=max_freq)
        self.gap_emb = FourierTimeEmbedding(time_dim, max_freq=max_freq)
        self.cond_act = nn.SiLU()
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden, time_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), zero_module(nn.Linear(hidden, dim)))

    def forward(self, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """Output ``(B, dim)`` for ``x`` ``(B, dim)`` and times ``t``, ``s`` ``(B,)``."""
        check_batch(x, t, (self.dim,))
        check_batch(x, s, (self.dim,), "x")
        cond = self.cond_act(self.t_emb(t) + self.gap_emb(t - s)).to(x.dtype)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, cond)
        return self.out(h)


class FlattenNet(nn.Module):
    """A vector network on image-shaped data: ``(B, ...) -> net(x.flatten(1), t) -> (B, *out_shape)``."""

    def __init__(self, net: nn.Module, out_shape: tuple[int, ...]):
        super().__init__()
        self.net, self.out_shape = net, tuple(out_shape)

    def forward(self, x: Tensor, t: Tensor, *args, **kwargs) -> Tensor:
        return self.net(x.flatten(1), t, *args, **kwargs).reshape(x.shape[0], *self.out_shape)
