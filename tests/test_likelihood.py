"""PF-ODE likelihood against the exact mixture density."""

import math

import pytest
import torch

from diffusio.analysis.likelihood import bits_per_dim, log_likelihood
from diffusio.core.paths import EDM, LinearVP
from diffusio.data import GaussianMixture
from diffusio.models import ExactModel


@pytest.mark.parametrize("path", [LinearVP(), EDM()], ids=lambda p: p.name)
def test_exact_divergence_matches_mixture_log_prob(gmm2d, path):
    model = ExactModel(gmm2d, path)
    x = gmm2d.sample(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t_min = torch.tensor(path.t_min, dtype=torch.float64)
    truth = gmm2d.log_prob(x, t_min, path)
    exact_prior = lambda z: gmm2d.log_prob(z, torch.tensor(path.t_max, dtype=torch.float64), path)  # noqa: E731
    ll = log_likelihood(model, x, prior_log_prob=exact_prior, rtol=1e-8, atol=1e-8)
    assert float((ll - truth).abs().max()) < 1e-5
    # with the path's Gaussian prior the only error is the prior's mismatch at t_max
    ll_default = log_likelihood(model, x, rtol=1e-6, atol=1e-6)
    assert float((ll_default - truth).abs().max()) < 1e-2


def test_hutchinson_is_unbiased_in_higher_dimension():
    d = 20
    gen = torch.Generator().manual_seed(1)
    means = torch.randn(3, d, generator=gen, dtype=torch.float64)
    g = GaussianMixture(means, torch.tensor([0.6, 0.8, 1.0]))
    path = LinearVP()
    model = ExactModel(g, path)
    x = g.sample(8, generator=gen, dtype=torch.float64)
    truth = g.log_prob(x, torch.tensor(path.t_min, dtype=torch.float64), path)
    prior = lambda z: g.log_prob(z, torch.tensor(path.t_max, dtype=torch.float64), path)  # noqa: E731
    exact = log_likelihood(model, x, prior_log_prob=prior, exact_below=64, rtol=1e-6, atol=1e-6)
    assert float((exact - truth).abs().max()) < 1e-3
    for noise in ("rademacher", "gaussian"):
        est = log_likelihood(
            model, x, prior_log_prob=prior, probes=16, noise=noise, generator=torch.Generator().manual_seed(2)
        )
        err = est - truth
        assert float(err.abs().mean()) < 1.5 and float(err.mean().abs()) < 0.6, (noise, err)


def test_bits_per_dim_convention():
    # a uniform density on [-1, 1]^D has log p = -D log 2: on 256 integer levels that is exactly 8 bits per dim
    d = 12
    assert torch.allclose(bits_per_dim(torch.tensor([-d * math.log(2.0)]), d), torch.tensor([8.0]))


def test_likelihood_errors(gmm2d):
    model = ExactModel(gmm2d, LinearVP())
    with pytest.raises(ValueError, match="noise must be"):
        log_likelihood(model, torch.zeros(2, 2, dtype=torch.float64), noise="cauchy")
    with pytest.raises(ValueError, match=r"\(t_min, t_max\) must lie"):
        log_likelihood(model, torch.zeros(2, 2, dtype=torch.float64), t_max=3.0)
