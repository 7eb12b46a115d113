"""DiffusionMBIR: 3-D reconstruction with a 2-D diffusion prior per slice plus total variation along the slice
axis, enforced by ADMM with a conjugate-gradient x-update (Chung, Ryu, McCann, Klasky, Ye, CVPR 2023,
Alg. 1).

A volume is a batch of slices ``(S, C, H, W)`` and the 2-D operator acts slice by slice. After every
predictor (ancestral) and corrector (Langevin) update of all slices, one ADMM iteration on
min_v 1/2 ||A v - y||^2 + lambda ||D_z v||_1 runs on the VE-scaled iterate v = x / alpha (alpha = 1 on VE/EDM
paths, the paper's setting); z, u persist across diffusion steps (warm start), as in the official
``get_pc_radon_ADMM_TV_vol``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusio.core.time import coeffs, time_batch
from diffusio.core.timesteps import get_timesteps
from diffusio.inverse.operators import LinearOperator, conjugate_gradient
from diffusio.models.base import ModelBase
from diffusio.samplers.kernels import ancestral_update

__all__ = ["admm_tv_step", "diff_z", "diff_z_adjoint", "soft_threshold", "solve_mbir"]


def diff_z(x: Tensor, periodic: bool = True) -> Tensor:
    """Forward difference along the slice axis 0: (D x)_s = x_{s+1} - x_s (periodic: x_S = x_0; open: S-1 rows)."""
    return torch.roll(x, -1, 0) - x if periodic else x[1:] - x[:-1]


def diff_z_adjoint(u: Tensor, periodic: bool = True) -> Tensor:
    """Exact adjoint of :func:`diff_z`: (D^T u)_s = u_{s-1} - u_s."""
    if periodic:
        return torch.roll(u, 1, 0) - u
    zero = torch.zeros_like(u[:1])
    return torch.cat([zero, u]) - torch.cat([u, zero])


def soft_threshold(v: Tensor, k: float) -> Tensor:
    """S_k(v) = sign(v) max(|v| - k, 0)."""
    return torch.sign(v) * (v.abs() - k).clamp(min=0)


def _volume_dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum().reshape(1)


def admm_tv_step(
    operator: LinearOperator,
    y: Tensor,
    v: Tensor,
    z: Tensor,
    u: Tensor,
    *,
    tv_weight: float,
    rho: float,
    cg_iters: int = 1,
    periodic: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """One scaled-form ADMM iteration for 1/2 ||A v - y||^2 + tv_weight ||D_z v||_1 on a volume ``v`` ``(S, ...)``:
    CG (warm-started at ``v``) on (A^T A + rho D^T D) v = A^T y + rho D^T (z - u); z = S_{lambda/rho}(D v + u);
    u = u + D v - z. Returns (v, z, u)."""
    b = operator.adjoint(y) + rho * diff_z_adjoint(z - u, periodic)

    def system(w: Tensor) -> Tensor:
        return operator.normal(w) + rho * diff_z_adjoint(diff_z(w, periodic), periodic)

    # one linear system couples all slices: solve it as a single "sample"
    v = conjugate_gradient(lambda w: system(w[0])[None], b[None], v[None], iters=cg_iters, tol=0.0)[0]
    dv = diff_z(v, periodic)
    z = soft_threshold(dv + u, tv_weight / rho)
    return v, z, u + dv - z


def solve_mbir(
    model: ModelBase,
    operator: LinearOperator,
    y: Tensor,
    *,
    steps: int = 200,
    tv_weight: float = 0.04,
    rho: float = 10.0,
    cg_iters: int = 1,
    admm_iters: int = 1,
    snr: float = 0.16,
    corrector: bool = True,
    periodic: bool = True,
    grid: str = "logsnr",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict]:
    """DiffusionMBIR (Chung et al. 2023, Alg. 1) for one volume: ``y`` ``(S, *out_shape)`` holds the
    measurement of each of the S slices; returns the volume ``(S, *in_shape)``.

    Per step: ancestral predictor to the next time, a Langevin corrector there (step 2 (snr ||z|| / ||s||)^2,
    Song et al. 2021), then ``admm_iters`` ADMM iterations with ``cg_iters`` CG iterations each.
    ``tv_weight = 0`` gives slice-independent 2-D reconstruction with the same sampler (the paper's baseline).
    Model calls per step: 2 with the corrector (none after the last step), else 1.
    """
    if not operator.linear:
        raise ValueError("DiffusionMBIR needs a linear operator with an adjoint")
    if tv_weight < 0 or rho <= 0:
        raise ValueError(f"need tv_weight >= 0 and rho > 0; got tv_weight={tv_weight}, rho={rho}")
    operator.check_y(y)
    path = model.path
    ts = get_timesteps(path, steps, grid)
    x = path.prior_sample((y.shape[0], *operator.in_shape), generator=generator, device=y.device, dtype=y.dtype)
    z = u = torch.zeros_like(diff_z(x, periodic))
    for i in range(steps):
        cs = coeffs(path, ts[i + 1])
        with torch.no_grad():
            x0 = model.predict(x, time_batch(ts[i], x), "x0").to(x.dtype)
            z_noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = ancestral_update(path, x, x0, ts[i], ts[i + 1], z_noise)
            if corrector and i < steps - 1:
                x = _langevin(model, x, ts[i + 1], snr, generator)
        a = float(cs.alpha)
        v = x / a
        for _ in range(admm_iters):
            v, z, u = admm_tv_step(
                operator, y, v, z, u, tv_weight=tv_weight, rho=rho, cg_iters=cg_iters, periodic=periodic
            )
        x = a * v
    return x, {"tv_z": float(diff_z(x, periodic).abs().sum())}


def _langevin(model: ModelBase, x: Tensor, t: Tensor, snr: float, generator) -> Tensor:
    """One Langevin corrector step at time ``t`` with the signal-to-noise step rule of Song et al. (2021)."""
    score = model.predict(x, time_batch(t, x), "score").to(x.dtype)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    step = 2 * (snr * z.norm() / score.norm().clamp(min=1e-12)) ** 2
    return x + step * score + torch.sqrt(2 * step) * z
