"""Optimization via conditional diffusion: reward-directed generation from a small labelled and a large unlabelled
set (Yuan et al. 2023, "Reward-directed conditional diffusion", Alg. 1).

1. fit a reward model f_hat on the labelled pairs (ridge regression);
2. pseudo-label the unlabelled data, y_hat = f_hat(x) + nu z (nu > 0 keeps p(x | y) well defined);
3. train a reward-conditioned diffusion model on (x, y_hat), dropping the label (NaN = null) with prob p_uncond;
4. sample conditioned on a target reward a, optionally with classifier-free guidance.
The method itself only sees f_hat; the true reward appears only in diagnostics the caller computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffusio.core.paths import LinearVP, Path
from diffusio.guidance.wrappers import ClassifierFreeGuidance
from diffusio.models.base import Model
from diffusio.nets import MLP
from diffusio.nets.layers import FourierTimeEmbedding
from diffusio.samplers import sample
from diffusio.training import TrainConfig, Trainer
from diffusio.training.losses import DiffusionLoss

__all__ = [
    "LinearReward",
    "PseudoLabelSource",
    "ScalarConditionMLP",
    "fit_reward_model",
    "reward_conditioned_model",
    "sample_at_reward",
]


@dataclass
class LinearReward:
    """f_hat(x) = theta^T x + b for vectors ``x`` ``(B, D)`` -> ``(B,)``."""

    theta: Tensor
    bias: float

    def __call__(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1) @ self.theta.to(x) + self.bias


def fit_reward_model(x: Tensor, y: Tensor, ridge: float = 1e-3) -> LinearReward:
    """Ridge regression of ``y`` ``(n,)`` on ``x`` ``(n, D)`` (step 1), with an unpenalised intercept."""
    if x.shape[0] != y.shape[0] or y.ndim != 1:
        raise ValueError(f"need x (n, D) and y (n,) with the same n; got {tuple(x.shape)} and {tuple(y.shape)}")
    xf = x.reshape(x.shape[0], -1).double()
    xm, ym = xf.mean(0), y.double().mean()
    xc = xf - xm
    theta = torch.linalg.solve(
        xc.T @ xc + ridge * torch.eye(xf.shape[1], dtype=torch.float64), xc.T @ (y.double() - ym)
    )
    return LinearReward(theta.to(x.dtype), float(ym - xm @ theta))


class _ScalarConditionEmbedding(nn.Module):
    """Time embedding plus an embedding of a scalar condition ``y`` ``(B,)``; NaN (or ``y=None``) selects a learned
    null vector, the "no condition" of classifier-free guidance."""

    def __init__(self, dim: int):
        super().__init__()
        self.time = FourierTimeEmbedding(dim)
        self.value = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.zeros(dim))

    def forward(self, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.time(t)
        if y is None:
            return emb + self.null
        y = y.to(emb.dtype).reshape(-1, 1)
        missing = torch.isnan(y)
        return emb + torch.where(missing, self.null, self.value(torch.where(missing, 0.0, y)))


class ScalarConditionMLP(MLP):
    """The residual MLP conditioned on a real value ``y`` ``(B,)`` (NaN = null): ``(x (B, dim), t, y) -> (B, dim)``."""

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, time_dim: int = 64):
        super().__init__(dim, hidden=hidden, depth=depth, time_dim=time_dim)
        self.cond = _ScalarConditionEmbedding(time_dim)


class PseudoLabelSource:
    """Training data for step 3: draws from ``x`` ``(N, D)`` with pseudo-labels f_hat(x) + nu z, each label replaced
    by NaN (null) with probability ``p_uncond``; every draw from the passed generator."""

    def __init__(self, x: Tensor, reward: LinearReward, nu: float, p_uncond: float = 0.1):
        if not nu > 0:
            raise ValueError(f"nu must be > 0 (pseudo-label noise; nu = 0 makes p(x | y) singular); got {nu}")
        if not 0 <= p_uncond < 1:
            raise ValueError(f"p_uncond must be in [0, 1); got {p_uncond}")
        self.x, self.labels, self.nu, self.p_uncond = x, reward(x).detach(), nu, p_uncond
        self.shape, self.num_classes = tuple(x.shape[1:]), None

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        idx = torch.randint(0, self.x.shape[0], (n,), generator=generator)
        y = self.labels[idx] + self.nu * torch.randn(n, generator=generator, dtype=self.labels.dtype)
        drop = torch.rand(n, generator=generator) < self.p_uncond
        return self.x[idx], {"y": torch.where(drop, torch.full_like(y, float("nan")), y)}


def reward_conditioned_model(
    x_unlabeled: Tensor,
    reward: LinearReward,
    *,
    nu: float = 0.3,
    p_uncond: float = 0.1,
    path: Path | None = None,
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 1e-3,
    hidden: int = 256,
    depth: int = 4,
    seed: int = 0,
) -> Model:
    """Steps 2-3: train a reward-conditioned eps-model on pseudo-labelled ``x_unlabeled`` ``(N, D)``."""
    path = path or LinearVP()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ScalarConditionMLP(x_unlabeled.shape[1], hidden=hidden, depth=depth)
    model = Model(net, path, "eps")
    data = PseudoLabelSource(x_unlabeled, reward, nu, p_uncond)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=False, ema_decay=0.995)
    trainer = Trainer(model, DiffusionLoss("eps"), data, cfg)
    trainer.fit()
    net.load_state_dict(trainer.ema.state_dict())
    return model.eval()


def sample_at_reward(
    model: Model,
    target: float,
    n: int,
    *,
    scale: float = 1.0,
    solver: str = "heun",
    steps: int = 50,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Step 4: ``n`` samples of p(x | y_hat = ``target``) with CFG weight ``scale`` (1 = plain conditional),
    ending with the Tweedie denoised estimate."""
    guided = ClassifierFreeGuidance(model, scale, null_label=float("nan"))
    y = torch.full((n,), float(target))
    dim = model.net.dim
    return sample(
        guided, shape=(n, dim), solver=solver, steps=steps, cond={"y": y}, generator=generator, denoise=True
    ).x
