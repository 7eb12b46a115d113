"""Diffusion with forward models (Tewari et al., NeurIPS 2023): learn p(signal | observation)
when signals are never observed directly, only through a known differentiable forward model O = forward(S, phi).

The diffusion runs in observation space on a *target* observation O_t; the denoiser outputs a signal
S_hat = gen(x_tau, t, O_c, phi_c, phi_t) and its x0 prediction is the rendered target forward(S_hat, phi_t). So the
loss compares rendered and observed target views only (the data carry no signal field), and sampling O_t given a
context (O_c, phi_c) also yields a signal sample S. A :class:`ForwardModelDiffusion` is a diffusio Model: every
sampler, the standard x0 loss and the Trainer apply unchanged; the conditioning keywords are
``obs_c``, ``phi_c``, ``phi_t``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffusio.core.parametrization import convert
from diffusio.core.paths import Path
from diffusio.models.base import ModelBase
from diffusio.nets import MLP
from diffusio.samplers import sample
from diffusio.training import TrainConfig, Trainer
from diffusio.training.losses import DiffusionLoss, UniformWeight

__all__ = [
    "ContextProjectionGen",
    "ForwardModelDiffusion",
    "LinearPoses",
    "ObservationPairs",
    "sample_signals",
    "train_forward_model_diffusion",
]


class LinearPoses:
    """Linear forward models indexed by a pose: forward(S, phi) = P[phi] S, ``P`` ``(K, m, d)``, ``S`` ``(B, d)``,
    ``phi`` ``(B,)`` integer -> ``(B, m)`` (masks, projections, random sensing matrices)."""

    def __init__(self, matrices: Tensor):
        if matrices.ndim != 3:
            raise ValueError(f"matrices must have shape (poses, m, d); got {tuple(matrices.shape)}")
        self.P = matrices

    def __call__(self, S: Tensor, phi: Tensor) -> Tensor:
        return torch.einsum("bmd,bd->bm", self.P.to(S)[phi.long()], S)


class ContextProjectionGen(nn.Module):
    """A denoiser that respects the context by construction: S_hat = P_c^+ O_c + N_c h(O_c, vec P_c, x, vec P_t, t),
    with N_c an orthonormal basis of null(P_c) and h a residual MLP (the structured, "3-D-aware" generator of Tewari et
    al. 2023, Sec. 3: the loss only sees P_t S_hat, so an unstructured generator is not identifiable).

    ``poses_c`` ``(Kc, mc, d)`` and ``poses_t`` ``(Kt, mt, d)`` are the context and target forward matrices.
    """

    def __init__(self, poses_c: Tensor, poses_t: Tensor, hidden: int = 128, depth: int = 3):
        super().__init__()
        kc, mc, d = poses_c.shape
        rank = int(torch.linalg.matrix_rank(poses_c[0].double()))
        if rank != mc:
            raise ValueError("context matrices must have full row rank")
        _, _, vh = torch.linalg.svd(poses_c.double(), full_matrices=True)
        self.register_buffer("pinv_c", torch.linalg.pinv(poses_c.double()).float())
        self.register_buffer("null_c", vh[:, mc:, :].transpose(1, 2).float())  # (Kc, d, d - mc)
        self.register_buffer("vec_c", poses_c.reshape(kc, -1).float())
        self.register_buffer("vec_t", poses_t.reshape(poses_t.shape[0], -1).float())
        width = mc + poses_t.shape[1] + self.vec_c.shape[1] + self.vec_t.shape[1]
        self.h = MLP(width, hidden=hidden, depth=depth, out_dim=d - mc)

    def forward(self, x: Tensor, t: Tensor, obs_c: Tensor, phi_c: Tensor, phi_t: Tensor) -> Tensor:
        """Signal ``(B, d)`` from the noisy target ``x`` ``(B, mt)``, net time ``t`` ``(B,)`` and the context."""
        pc, pt = phi_c.long(), phi_t.long()
        feats = torch.cat([obs_c, x, self.vec_c[pc].to(x), self.vec_t[pt].to(x)], 1)
        base = torch.einsum("bdm,bm->bd", self.pinv_c[pc].to(x), obs_c)
        return base + torch.einsum("bdk,bk->bd", self.null_c[pc].to(x), self.h(feats, t))


class ForwardModelDiffusion(ModelBase):
    """The DFM Model: x0 prediction = forward(gen(x, net_time(t), **cond), phi_t) on observation-space states ``x``.

    ``gen`` (an nn.Module, trained) maps ``(x, t, obs_c, phi_c, phi_t)`` to a signal; ``forward(S, phi)`` renders.
    ``net`` is ``gen``, so the Trainer trains it.
    """

    def __init__(self, gen: nn.Module, forward: Callable[[Tensor, Tensor], Tensor], path: Path):
        super().__init__()
        self.net, self.render, self.path = gen, forward, path
        self.prediction, self.precond = "x0", None

    def signal(self, x: Tensor, t: Tensor, obs_c: Tensor, phi_c: Tensor, phi_t: Tensor) -> Tensor:
        """The denoiser's signal S_hat at ``(x, t)``."""
        dtype = next(self.net.parameters()).dtype
        s = self.net(x.to(dtype), self.path.net_time(t).to(dtype), obs_c.to(dtype), phi_c, phi_t)
        return s.to(x.dtype)

    def predict(self, x: Tensor, t: Tensor, kind: str = "x0", **cond) -> Tensor:
        x0 = self.render(self.signal(x, t, **cond), cond["phi_t"])
        return convert(x0, "x0", kind, x, t, self.path)


class ObservationPairs:
    """Training tuples (O_c, phi_c, O_t, phi_t) of the same unknown signals - and nothing else (no signal field).

    ``sample(n, generator)`` returns the target observations as x0 and the context as conditioning; with
    probability ``p_drop`` the context observation is zeroed (classifier-free guidance, as in the official code).
    """

    def __init__(self, obs_c: Tensor, phi_c: Tensor, obs_t: Tensor, phi_t: Tensor, p_drop: float = 0.0):
        n = obs_c.shape[0]
        if not all(v.shape[0] == n for v in (phi_c, obs_t, phi_t)):
            raise ValueError("obs_c, phi_c, obs_t and phi_t must have the same number of rows")
        if not 0 <= p_drop < 1:
            raise ValueError(f"p_drop must be in [0, 1); got {p_drop}")
        self.obs_c, self.phi_c, self.obs_t, self.phi_t, self.p_drop = obs_c, phi_c, obs_t, phi_t, p_drop
        self.shape, self.num_classes = tuple(obs_t.shape[1:]), None

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        idx = torch.randint(0, self.obs_c.shape[0], (n,), generator=generator)
        obs_c = self.obs_c[idx]
        if self.p_drop > 0:
            keep = (torch.rand(n, generator=generator) >= self.p_drop).to(obs_c.dtype)
            obs_c = obs_c * keep.reshape(-1, *([1] * (obs_c.ndim - 1)))
        return self.obs_t[idx], {"obs_c": obs_c, "phi_c": self.phi_c[idx], "phi_t": self.phi_t[idx]}


def train_forward_model_diffusion(
    model: ForwardModelDiffusion, data: ObservationPairs, *, steps: int = 5000, batch_size: int = 256, lr=1e-3, seed=0
) -> ForwardModelDiffusion:
    """Minimise E ||forward(gen(O_c, phi_c, x_tau, phi_t, tau), phi_t) - O_t||^2 (the official per-pixel x0 MSE,
    uniform in t) with the diffusio Trainer; loads the EMA weights at the end."""
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=False, ema_decay=0.995)
    trainer = Trainer(model, DiffusionLoss("x0", weighting=UniformWeight()), data, cfg)
    trainer.fit()
    model.net.load_state_dict(trainer.ema.state_dict())
    return model.eval()


def sample_signals(
    model: ForwardModelDiffusion,
    obs_c: Tensor,
    phi_c: Tensor,
    phi_t: Tensor,
    *,
    solver: str = "ddim",
    steps: int = 50,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample target observations given contexts ``obs_c`` ``(B, mc)`` (poses ``phi_c``, ``phi_t`` ``(B,)``) and
    return ``(signals (B, d), target observations (B, mt))``: the signal is the denoiser's output at the last step."""
    cond = {"obs_c": obs_c, "phi_c": phi_c, "phi_t": phi_t}
    mt = model.render(torch.zeros(1, model.net.null_c.shape[1]), phi_t[:1]).shape[1]
    res = sample(model, shape=(obs_c.shape[0], mt), solver=solver, steps=steps, cond=cond, generator=generator)
    t_end = torch.full((obs_c.shape[0],), float(res.ts[-1]), dtype=torch.float64)
    with torch.no_grad():
        signal = model.signal(res.x, t_end, **cond)
    return signal, res.x
