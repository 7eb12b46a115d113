"""Conservative networks: the output is the input gradient of a scalar network (Horvat & Pfister 2024, Sec. 3).

``GradientNet(scalar)(x, t, y) = grad_x scalar(x, t, y).sum()``. Wrapped as ``Model(GradientNet(...), path,
prediction=kind)`` it is conservative for every kind: eps, x0, v and the score are affine in ``x`` with an
identity-times-scalar ``x`` term (e.g. score = -eps/sigma_t, x0 = (x - sigma eps)/alpha), so the score of the
model is the gradient of a scalar (a log-density up to a time-dependent constant) whatever the head. It trains
with the usual losses (double backpropagation through the input gradient) and samples under ``torch.no_grad``:
the gradient is taken under a local ``torch.enable_grad``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffusio.nets.layers import check_batch
from diffusio.nets.mlp import MLP

__all__ = ["EnergyMLP", "GradientNet"]


class GradientNet(nn.Module):
    """``GradientNet(scalar)(x (B, ...), t (B,), **cond) -> grad_x sum_b scalar(x, t, **cond)_b``, shape of ``x``.

    ``scalar`` maps ``(x, t, **cond)`` to ``(B,)`` or ``(B, 1)``. The graph is kept (``create_graph``) whenever
    gradients are enabled at the call (training, Jacobians of the field); under ``no_grad`` the result is detached.
    Use smooth activations in ``scalar`` (SiLU, Softplus): with ReLU the field is piecewise constant.
    """

    def __init__(self, scalar: nn.Module):
        super().__init__()
        self.scalar = scalar
        self.num_classes = getattr(scalar, "num_classes", None)

    def energy(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        """The scalar potential ``(B,)`` at ``x`` ``(B, ...)`` and ``t`` ``(B,)``."""
        out = self.scalar(x, t, **cond)
        if out.shape not in ((x.shape[0],), (x.shape[0], 1)):
            raise ValueError(f"the scalar network must return (B,) or (B, 1); got {tuple(out.shape)}")
        return out.reshape(x.shape[0])

    def forward(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        """grad_x of the potential, shape of ``x``."""
        keep = torch.is_grad_enabled()
        with torch.enable_grad():
            xin = x if x.requires_grad else x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.energy(xin, t, **cond).sum(), xin, create_graph=keep)
        return g if keep else g.detach()


class EnergyMLP(GradientNet):
    """``EnergyMLP(dim, ...)``: a :class:`GradientNet` around a residual SiLU MLP with a scalar output ``(B, 1)``.

    Arguments are the :class:`~diffusio.nets.mlp.MLP`'s; the field is zero at initialisation.
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, time_dim: int = 64, num_classes: int | None = None):
        super().__init__(MLP(dim, hidden, depth, time_dim, num_classes, out_dim=1))
        self.dim = dim

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        check_batch(x, t, (self.dim,))
        return super().forward(x, t, y=y)
