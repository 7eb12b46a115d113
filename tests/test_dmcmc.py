"""Denoising Langevin Gibbs on exact Gaussian data: the joint p(i) p_{t_i}(x) is left invariant."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from diffusio.core.paths import EDM, LinearVP
from diffusio.core.timesteps import get_timesteps
from diffusio.data import GaussianMixture
from diffusio.models import ExactModel
from diffusio.samplers import sample
from diffusio.samplers.dmcmc import ChainState, ExactLevelPosterior, langevin_gibbs, level_grid, sample_dmcmc

F64 = torch.float64


def gauss(path):
    mix = GaussianMixture(torch.zeros(1, 1), 1.0)
    return mix, ExactModel(mix, path)


@pytest.mark.parametrize("path", [EDM(), LinearVP()], ids=lambda p: p.name)
def test_level_grid(path):
    ts = level_grid(path, 1000)
    assert (ts[1:] < ts[:-1]).all() and float(ts[0]) == path.t_max
    s = path.noise_level(ts)
    s_hi, s_lo = path.noise_level(torch.tensor([path.t_max, path.t_min], dtype=F64)).tolist()
    assert torch.allclose(s[-1], torch.tensor(s_lo * (s_hi / s_lo) ** 1e-3, dtype=F64))
    assert torch.allclose(torch.log(s[1:] / s[:-1]), torch.log(s[1:] / s[:-1])[0].expand(999), rtol=1e-6)


def joint_draw(path, levels, n, gen):
    """Exact draws of the joint: i uniform, x | i ~ N(0, alpha^2 + sigma^2) for N(0, 1) data."""
    idx = torch.randint(len(levels), (n,), generator=gen)
    t = levels[idx]
    std = (path.alpha(t) ** 2 + path.sigma(t) ** 2).sqrt()
    return ChainState((std * torch.randn(n, generator=gen, dtype=F64)).unsqueeze(1), idx)


@pytest.mark.parametrize("path", [EDM(), LinearVP()], ids=lambda p: p.name)
def test_chain_leaves_the_joint_invariant(path):
    mix, model = gauss(path)
    levels = level_grid(path, 40)
    gen = torch.Generator().manual_seed(0)
    n = 20000
    state = joint_draw(path, levels, n, gen)
    out = langevin_gibbs(model, state, levels, ExactLevelPosterior(mix, path, levels), eta=0.005, sweeps=15,
                         generator=gen)  # fmt: skip
    idx, x = out.state.idx, out.state.x[:, 0]
    # the level marginal stays uniform (8 bins of 5 levels)
    counts = torch.bincount(idx // 5, minlength=8).numpy()
    assert chisquare(counts).pvalue > 1e-3, counts
    # x | i keeps the variance alpha^2 + sigma^2: z = x^2 / var has mean 1 (SE sqrt(2/n) overall)
    t = levels[idx]
    z = x**2 / (path.alpha(t) ** 2 + path.sigma(t) ** 2)
    assert abs(float(z.mean()) - 1) < 4 * (2 / n) ** 0.5
    for b in range(4):  # and per block of levels (10 each)
        zb = z[(idx // 10) == b]
        assert abs(float(zb.mean()) - 1) < 4 * (2 / len(zb)) ** 0.5, (b, float(zb.mean()))
    assert out.calls == 15 and out.classifier_calls == 15


def test_argmax_level_update_is_biased():
    path = EDM()
    mix, model = gauss(path)
    levels = level_grid(path, 40)
    gen = torch.Generator().manual_seed(1)
    state = joint_draw(path, levels, 5000, gen)
    out = langevin_gibbs(model, state, levels, ExactLevelPosterior(mix, path, levels), eta=0.005, sweeps=3,
                         level="argmax", generator=gen)  # fmt: skip
    counts = torch.bincount(out.state.idx // 5, minlength=8).numpy()
    assert chisquare(counts).pvalue < 1e-3


def test_langevin_at_a_fixed_level_reaches_the_marginal_variance():
    path = EDM()
    _, model = gauss(path)
    levels = level_grid(path, 40)
    j = int(torch.argmin((levels - 0.5).abs()))
    var = 1 + float(levels[j]) ** 2
    gen = torch.Generator().manual_seed(2)
    n = 4000
    state = ChainState(torch.zeros(n, 1, dtype=F64), torch.full((n,), j))
    out = langevin_gibbs(model, state, levels, None, eta=0.02 * var, sweeps=600, level="fixed", generator=gen)
    assert (out.state.idx == j).all() and out.classifier_calls == 0
    got = float(out.state.x.var())
    assert abs(got / var - 1) < 0.03 + 4 * (2 / n) ** 0.5  # ULA's O(eta) bias is 0.5% here


def test_handoff_uses_each_chains_lowest_level():
    path = EDM()
    mix, model = gauss(path)
    levels = level_grid(path, 40)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, generator=gen, dtype=F64) * 3
    state = ChainState(x, torch.tensor([10, 30]))
    out, win, calls = sample_dmcmc(model, state, levels, None, eta=0.01, sweeps=0, solver="heun", steps=2,
                                   level="fixed", generator=gen)  # fmt: skip
    assert calls == 4 and torch.equal(win.idx_min, torch.tensor([10, 30]))
    for r, j in enumerate((10, 30)):
        ts = get_timesteps(path, 2, "karras", t_max=float(levels[j]))
        want = sample(model, x[r : r + 1], solver="heun", grid=ts).x
        assert torch.allclose(out[r : r + 1], want)
    # within a window the kept level per chain is the lowest noise visited (the largest index), monotone
    state = joint_draw(path, levels, 200, gen)
    w = langevin_gibbs(model, state, levels, ExactLevelPosterior(mix, path, levels), eta=0.05, sweeps=6, generator=gen)
    best = torch.maximum(state.idx, w.trace.max(0).values)
    assert torch.equal(w.idx_min, best)


def test_errors():
    path = EDM()
    _, model = gauss(path)
    levels = level_grid(path, 10)
    state = ChainState(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="eta"):
        langevin_gibbs(model, state, levels, None, eta=-1.0, sweeps=1, level="fixed")
    with pytest.raises(ValueError, match="classifier"):
        langevin_gibbs(model, state, levels, None, eta=0.1, sweeps=1)
    with pytest.raises(ValueError, match="strictly decreasing"):
        langevin_gibbs(model, state, levels.flip(0), None, eta=0.1, sweeps=1, level="fixed")
    with pytest.raises(ValueError, match="adaptive"):
        sample_dmcmc(model, state, levels, None, eta=0.1, sweeps=1, level="fixed", solver="adaptive")
