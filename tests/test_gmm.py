"""The exact Gaussian-mixture model: density, denoiser, score, sampling."""

import math

import pytest
import torch

from diffusio.core.paths import EDM, LinearVP, RectifiedFlow
from diffusio.data import GaussianMixture
from diffusio.models import ExactModel
from diffusio.models.base import Model


def _full_cov_mixture():
    covs = torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.1], [-0.1, 0.4]]], dtype=torch.float64)
    return GaussianMixture(torch.tensor([[1.0, -0.5], [-1.0, 0.5]]), covs, [0.4, 0.6])


def test_log_prob_matches_scipy():
    from scipy.stats import multivariate_normal

    g = _full_cov_mixture()
    x = torch.randn(50, 2, dtype=torch.float64)
    ref = 0.4 * multivariate_normal([1, -0.5], [[0.5, 0.2], [0.2, 0.3]]).pdf(x.numpy()) + 0.6 * multivariate_normal(
        [-1, 0.5], [[0.2, -0.1], [-0.1, 0.4]]
    ).pdf(x.numpy())
    assert torch.allclose(g.log_prob(x), torch.log(torch.from_numpy(ref)), rtol=1e-10)


def test_marginal_log_prob_along_path():
    """p_t of a single Gaussian N(mu, s^2) is N(alpha mu, alpha^2 s^2 + sigma^2)."""
    g = GaussianMixture(torch.tensor([[0.7, -0.2]], dtype=torch.float64), 0.3)
    path, t = LinearVP(), torch.tensor(0.4, dtype=torch.float64)
    a, s = path.alpha(t), path.sigma(t)
    x = torch.randn(10, 2, dtype=torch.float64)
    var = a**2 * 0.09 + s**2
    ref = -0.5 * (
        ((x - a * torch.tensor([0.7, -0.2], dtype=torch.float64)) ** 2).sum(1) / var + 2 * torch.log(2 * math.pi * var)
    )
    assert torch.allclose(g.log_prob(x, t, path), ref, rtol=1e-12)


@pytest.mark.parametrize("path", [LinearVP(), EDM(), RectifiedFlow()], ids=lambda p: p.name)
def test_denoiser_matches_monte_carlo_posterior_mean(path):
    """E[x0 | x_t] by self-normalised importance sampling from the prior agrees with the closed form."""
    g = _full_cov_mixture()
    gen = torch.Generator().manual_seed(0)
    x0 = g.sample(400_000, generator=gen, dtype=torch.float64)
    t = torch.tensor(0.5 if path.name != "edm" else 0.8, dtype=torch.float64)
    a, s = path.alpha(t), path.sigma(t)
    xt = path.perturb(
        g.sample(4, generator=gen, dtype=torch.float64),
        torch.randn(4, 2, generator=gen, dtype=torch.float64),
        t.expand(4),
    )
    exact = g.denoise(xt, t, path)
    for i in range(4):
        logw = -0.5 * ((xt[i] - a * x0) ** 2).sum(1) / s**2
        w = torch.softmax(logw, 0)
        mc = (w[:, None] * x0).sum(0)
        ess = 1 / (w**2).sum()
        se = torch.sqrt((w[:, None] * (x0 - mc) ** 2).sum(0) / ess)
        assert ((mc - exact[i]).abs() < 5 * se + 1e-3).all(), (mc, exact[i], se)


def test_score_is_gradient_of_log_prob():
    g = _full_cov_mixture()
    path, t = LinearVP(), torch.tensor(0.3, dtype=torch.float64)
    x = torch.randn(8, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(g.log_prob(x, t, path).sum(), x)
    assert torch.allclose(g.score(x.detach(), t, path), grad, rtol=1e-9, atol=1e-12)


def test_sampling_moments():
    g = _full_cov_mixture()
    x = g.sample(200_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(x.mean(0), g.mean(), atol=0.01)
    assert torch.allclose(torch.cov(x.T), g.covariance(), atol=0.01)


def test_class_conditional_mixture():
    g = GaussianMixture(torch.tensor([[2.0, 0.0], [-2.0, 0.0]]), 0.3, labels=[0, 1])
    x = g.sample(1000, y=torch.ones(1000, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    assert (x[:, 0] < 0).float().mean() > 0.99
    path = LinearVP()
    xt = torch.zeros(3, 2, dtype=torch.float64)
    only0 = GaussianMixture(torch.tensor([[2.0, 0.0]]), 0.3)
    assert torch.allclose(g.denoise(xt, 0.5, path, y=torch.zeros(3)), only0.denoise(xt, 0.5, path))


def test_image_shaped_mixture_and_model_contract():
    g = GaussianMixture(torch.randn(3, 1, 4, 4), 0.5)
    path = LinearVP()
    model = ExactModel(g, path)
    x = torch.randn(5, 1, 4, 4)
    out = model(x, 0.5)
    assert out.shape == x.shape and out.dtype == torch.float32
    eps = model.eps(x, 0.5)
    assert torch.allclose(x, path.alpha(torch.tensor(0.5)) * out + path.sigma(torch.tensor(0.5)) * eps, atol=1e-5)


def test_k_diffusion_adapter_matches_exact_model():
    """A D(x, sigma) denoiser seen through a VP path equals the exact VP denoiser."""
    g = _full_cov_mixture()
    edm_exact = ExactModel(g, EDM())
    kd = Model.from_k_diffusion(lambda x, s: edm_exact(x, s), LinearVP())
    vp_exact = ExactModel(g, LinearVP())
    x, t = torch.randn(6, 2, dtype=torch.float64), torch.full((6,), 0.37, dtype=torch.float64)
    assert torch.allclose(kd(x, t), vp_exact(x, t), rtol=1e-9, atol=1e-10)


def test_gmm_errors():
    with pytest.raises(ValueError, match="weights must be 2 positive"):
        GaussianMixture(torch.zeros(2, 2), 1.0, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="stds_or_covs must be"):
        GaussianMixture(torch.zeros(2, 2), torch.ones(3))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2\)"):
        GaussianMixture(torch.zeros(2, 2), 1.0).log_prob(torch.zeros(4, 3))


def test_model_call_checks_time_range():
    model = ExactModel(GaussianMixture(torch.zeros(1, 2), 1.0), LinearVP())
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        model(torch.zeros(3, 2), 1.5)
    with pytest.raises(ValueError, match=r"t must have shape \(batch,\) = \(3,\)"):
        model(torch.zeros(3, 2), torch.ones(2))
