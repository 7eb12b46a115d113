"""muP (Yang et al. 2021, "Tensor Programs V", Table 3 for Adam) for the library's nets through Microsoft's ``mup``.

A muP network builds itself twice more on the meta device, at ``base_width`` and ``2 * base_width`` (shapes only,
no memory), so ``mup.set_base_shapes`` learns which dimensions scale with width; the base width is the one whose
learning rate and multipliers are the tuned ones. ``set_base_shapes`` attaches ``infshape`` to every parameter and
rescales the initialisation (biases of width-fan-in layers and the ``MuReadout``) to muP's; the constructor does
this once, so a checkpoint loaded into a freshly built network is never rescaled twice. ``mup.MuAdamW`` then puts
every matrix with two width dimensions at ``lr / width_mult``. Nothing but the constructor arguments (``width``,
``base_width``) is needed to rebuild a network, so checkpoints store no shape file.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["MuPMixin", "mup_readout", "set_mup_base_shapes"]


def _mup():
    try:
        import mup
    except ImportError as err:  # installed by the Makefile (with --no-deps: its metadata pulls torchvision)
        raise ImportError("muP needs the `mup` package: pip install --no-deps mup==1.0.0 (or `make`)") from err
    return mup


def mup_readout(width: int, out: int, output_mult: float = 1.0) -> nn.Linear:
    """``mup.MuReadout(width, out)``, zero-initialised; its forward multiplies the input by
    ``output_mult / width_mult``."""
    return _mup().MuReadout(width, out, readout_zero_init=True, output_mult=output_mult)


def set_mup_base_shapes(net: nn.Module, build: Callable[[int], nn.Module], base_width: int) -> None:
    """``mup.set_base_shapes(net, build(base_width), delta=build(2 * base_width))`` with both built on the meta
    device; rescales ``net``'s initialisation to muP's (call once, at construction)."""
    with torch.device("meta"):
        base, delta = build(base_width), build(2 * base_width)
    _mup().set_base_shapes(net, base, delta=delta)


class MuPMixin:
    """``make_optimizer`` for a network with a ``mup`` flag: ``mup.MuAdamW`` under muP, else ``torch.optim.AdamW``
    (the Trainer calls it instead of building AdamW itself)."""

    mup: bool

    def make_optimizer(self, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
        """``mup.MuAdamW`` under muP (matrices with two width dimensions at ``lr / width_mult``), else AdamW."""
        if self.mup:
            return _mup().MuAdamW(self.parameters(), lr=lr, weight_decay=weight_decay)
        return torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)
