"""Conservative / remainder decomposition of a learned field (Horvat & Pfister 2024, Sec. 3, "gauge freedom").

Any field s in L2(p_t) splits uniquely as s = grad phi + r with div(p_t r) = 0; the two parts are L2(p_t)-orthogonal,
so grad phi is the L2(p_t) projection of s onto gradients. We compute it as the paper's numerical recipe does: fit a
scalar network phi_psi by minimising E_{x ~ p_t} ||s(x, t) - grad phi_psi(x)||^2 on forward-process samples x_t
(the true p_t is unknown), then r = s - grad phi_psi. The gauge condition is checked weakly: E_{p_t}[grad psi . r] = 0
for test functions psi. :func:`jacobian_asymmetry` measures local non-conservativity, ||J - J^T||_F / ||J||_F.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusio.analysis.intrinsic import score_jacobian
from diffusio.core.time import as_time, broadcast
from diffusio.models.base import ModelBase
from diffusio.nets.energy import GradientNet
from diffusio.nets.mlp import MLP
from diffusio.training.fit import NetFit

__all__ = ["Decomposition", "fit_conservative_part", "gauge_residual", "jacobian_asymmetry"]


def jacobian_asymmetry(model: ModelBase, x: Tensor, t: Tensor | float, cond: dict | None = None) -> Tensor:
    """||J - J^T||_F / ||J||_F ``(B,)`` of J = d score/dx at ``x`` ``(B, ...)``: zero iff locally conservative."""
    jac = score_jacobian(model, x, t, cond)
    return torch.linalg.matrix_norm(jac - jac.mT) / torch.linalg.matrix_norm(jac).clamp_min(1e-300)


@dataclass
class Decomposition:
    """s = grad phi + r at one time ``t``: ``potential`` is the fitted gradient network (input ``(B, D)``)."""

    model: ModelBase
    potential: GradientNet
    t: float
    relative_remainder: float  # E||r||^2 / E||s||^2 on held-out forward samples
    relative_error: float  # final training loss E||s - grad phi||^2 / E||s||^2

    def parts(self, x: Tensor, cond: dict | None = None) -> tuple[Tensor, Tensor]:
        """(grad phi, r) at ``x`` ``(B, ...)``, both in ``x``'s shape."""
        t = as_time(self.t, x)
        s = self.model.predict(x, t, "score", **(cond or {})).detach()
        with torch.no_grad():
            grad = self.potential(x.reshape(x.shape[0], -1).to(_dtype(self.potential)), t.to(_dtype(self.potential)))
        grad = grad.reshape(x.shape).to(x.dtype)
        return grad, s - grad


def _dtype(net) -> torch.dtype:
    return next(net.parameters()).dtype


# the potential's fitting settings by default (``fit=``)
POTENTIAL_FIT = NetFit(steps=2000, batch_size=512, lr=3e-3, hidden=128, depth=3)


def fit_conservative_part(
    model: ModelBase,
    x0: Tensor,
    t: float,
    *,
    fit: NetFit = POTENTIAL_FIT,
    cond: dict | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Decomposition:
    """Fit grad phi to the model's score at time ``t`` on x_t = alpha x0 + sigma eps, ``x0`` ``(N, ...)`` data.
    ``fit``: Adam steps (cosine-annealed), minibatch, learning rate and the potential MLP's size (default
    ``POTENTIAL_FIT``: 2000 steps of 512 at 3e-3, 128 wide, 3 deep)."""
    if not isinstance(fit, NetFit):
        raise TypeError(f"fit must be a diffusio.training.NetFit, got {type(fit).__name__}")
    steps, batch_size = fit.steps, fit.batch_size
    model.path.check_t(torch.tensor(float(t)))
    d = x0[0].numel()
    with torch.random.fork_rng(devices=[]):
        if generator is not None:
            torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
        potential = GradientNet(MLP(d, fit.hidden, fit.depth, out_dim=1))
    opt = torch.optim.Adam(potential.parameters(), lr=fit.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    norm = 1.0
    for _ in tqdm(range(steps), desc="potential", disable=not progress):
        xt, s = _forward_batch(model, x0, t, batch_size, cond, generator)
        err = ((potential(xt.float(), as_time(t, xt).float()) - s.float()) ** 2).sum(1).mean()
        norm = float((s.float() ** 2).sum(1).mean())
        opt.zero_grad(set_to_none=True)
        err.backward()
        opt.step()
        sched.step()
    rel_err = float(err.detach()) / max(norm, 1e-300)
    dec = Decomposition(model, potential.eval(), float(t), float("nan"), rel_err)
    xt, s = _forward_batch(model, x0, t, 4 * batch_size, cond, generator)
    _, r = dec.parts(xt.to(s.dtype))
    dec.relative_remainder = float((r**2).sum(1).mean() / (s**2).sum(1).mean().clamp_min(1e-300))
    return dec


def _forward_batch(model, x0, t, n, cond, generator) -> tuple[Tensor, Tensor]:
    """Flattened forward samples x_t ``(n, D)`` and the model's score there."""
    idx = torch.randint(0, x0.shape[0], (n,), generator=generator)
    xb = x0[idx]
    tt = as_time(torch.tensor(float(t), dtype=torch.float64), xb)
    noise = torch.randn(xb.shape, generator=generator, dtype=xb.dtype)
    a, s = broadcast(model.path.alpha(tt), xb).to(xb.dtype), broadcast(model.path.sigma(tt), xb).to(xb.dtype)
    xt = a * xb + s * noise
    c = {k: v[idx] for k, v in (cond or {}).items()}
    with torch.no_grad():
        s = model.predict(xt, tt.to(xt.dtype), "score", **c)
    return xt.reshape(n, -1), s.reshape(n, -1)


def gauge_residual(
    decomposition: Decomposition, x: Tensor, test_functions: Sequence[Callable[[Tensor], Tensor]]
) -> list[tuple[float, float]]:
    """(mean, standard error) of grad psi . r over ``x`` ``(B, D)`` ~ p_t for each test function psi(x) -> (B,);
    the weak gauge condition E_{p_t}[grad psi . r] = 0 holds where every mean is within a few standard errors."""
    _, r = decomposition.parts(x)
    out = []
    for psi in test_functions:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(psi(xg).sum(), xg)
        v = (grad * r).reshape(x.shape[0], -1).sum(1)
        out.append((float(v.mean()), float(v.std() / v.shape[0] ** 0.5)))
    return out
