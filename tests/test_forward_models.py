"""Diffusion with forward models: loss wiring and context consistency (the trained linear-Gaussian check of
forward-models.md, test 1, runs in ``diffusio bench inverse``)."""

import torch
from torch import nn

from diffusio.core.paths import CosineVP
from diffusio.inverse.forward_models import ContextProjectionGen, ForwardModelDiffusion, LinearPoses, ObservationPairs
from diffusio.training.losses import DiffusionLoss, UniformWeight

D = 6


def _problem(n=20000, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(D, D, generator=g, dtype=torch.float64)
    sigma = a @ a.T / D + 0.1 * torch.eye(D, dtype=torch.float64)
    pc = torch.randn(8, 2, D, generator=g, dtype=torch.float64)
    pt = torch.randn(8, 4, D, generator=g, dtype=torch.float64)
    s = torch.randn(n, D, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(sigma).T
    ic, it = torch.randint(0, 8, (n,), generator=g), torch.randint(0, 8, (n,), generator=g)
    oc, ot = LinearPoses(pc)(s, ic), LinearPoses(pt)(s, it)
    return sigma, pc, pt, s, ObservationPairs(oc.float(), ic, ot.float(), it)


class _Oracle(nn.Module):
    """A 'generator' that returns the true signals (looked up by the context observation)."""

    def __init__(self, signals, obs_c):
        super().__init__()
        self.signals, self.obs_c, self.w = signals.float(), obs_c, nn.Parameter(torch.zeros(1))

    def forward(self, x, t, obs_c, phi_c, phi_t):
        idx = (obs_c[:, None, :] - self.obs_c[None]).abs().sum(-1).argmin(1)
        return self.signals[idx] + 0 * self.w


def test_loss_is_zero_for_the_true_signal_at_every_time():
    """The loss compares rendered and observed targets only: an oracle generator has zero loss for any tau."""
    _, _, pt, s, data = _problem(n=64)
    model = ForwardModelDiffusion(_Oracle(s, data.obs_c), LinearPoses(pt), CosineVP())
    x0, cond = data.sample(16, torch.Generator().manual_seed(1))
    loss = DiffusionLoss("x0", weighting=UniformWeight())
    for tau in (0.05, 0.5, 0.95):
        t = torch.full((16,), tau, dtype=torch.float64)
        noise = torch.randn_like(x0)
        assert float(loss(model, x0, t, noise, cond).detach().abs().max()) < 1e-5


def test_context_generator_respects_the_context_by_construction():
    _, pc, pt, _, data = _problem(n=64)
    gen = ContextProjectionGen(pc, pt, hidden=16, depth=1)
    torch.nn.init.normal_(gen.h.out[-1].weight)
    _, cond = data.sample(8, torch.Generator().manual_seed(2))
    s_hat = gen(torch.randn(8, 4), torch.rand(8), cond["obs_c"], cond["phi_c"], cond["phi_t"])
    back = LinearPoses(pc)(s_hat.double(), cond["phi_c"])
    assert torch.allclose(back.float(), cond["obs_c"], atol=1e-4)
