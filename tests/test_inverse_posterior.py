"""Exact-posterior checks for the SMC sampler, DDRM and the InverseResult contract (issue 10)."""

from __future__ import annotations

import math

import pytest
import torch

from diffusio.core.paths import EDM, CosineVP, LinearVP, RectifiedFlow
from diffusio.data import GaussianMixture
from diffusio.inverse import (
    METHODS,
    GaussianBlur,
    Inpainting,
    MatrixOperator,
    SuperResolution,
    gmm_posterior,
    operator_svd,
    solve,
)
from diffusio.models.base import ModelBase
from diffusio.models.exact import ExactModel

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _gaussian_case(sigma_y: float, seed: int = 0):
    """d = 16 anisotropic Gaussian prior, 8x16 Gaussian matrix: (prior, operator, y, exact posterior)."""
    g = _gen(seed)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=F64))
    cov = q @ torch.diag(torch.linspace(0.2, 1.5, 16, dtype=F64)) @ q.T
    prior = GaussianMixture(0.2 * torch.ones(1, 16, dtype=F64), cov[None])
    A = 2 * torch.randn(8, 16, generator=g, dtype=F64) / 4
    x = prior.sample(1, generator=g).to(F64)
    y = x @ A.T + sigma_y * torch.randn(1, 8, generator=g, dtype=F64)
    return prior, MatrixOperator(A, noise_std=sigma_y), y, gmm_posterior(prior, A, y[0], sigma_y)


def _weighted_moments(xs, log_w):
    w = torch.softmax(log_w.to(F64), 0)
    xs = xs.to(F64).flatten(1)
    mu = (w[:, None] * xs).sum(0)
    return mu, ((xs - mu).T * w) @ (xs - mu)


def _floor(post, n, draws=15):
    g = _gen(99)
    errs = []
    for _ in range(draws):
        z = post.sample(n, generator=g).to(F64)
        errs.append(((z.mean(0) - post.mean()).norm(), (torch.cov(z.T) - post.covariance()).norm()))
    e = torch.tensor(errs, dtype=F64)
    return e[:, 0].median(), e[:, 1].median()


@pytest.mark.parametrize("path", [LinearVP(), EDM()], ids=["vp", "edm"])
def test_smc_16d_gaussian_at_the_monte_carlo_floor(path):
    """sigma_y = 0.1, 1000 particles, 40 steps: the weighted ensemble's mean and covariance errors are within 2.5x
    the median error of 1000 exact draws (the floor); dropping the weights (negative control) is far off."""
    prior, op, y, post = _gaussian_case(0.1)
    model = ExactModel(prior, path)
    fm, fc = _floor(post, 1000)
    r = solve(model, op, y, "smc", particles=1000, steps=40, generator=_gen(1))
    mu, cov = _weighted_moments(r.particles[0], r.log_weights[0])
    assert (mu - post.mean()).norm() < 2.5 * fm
    assert (cov - post.covariance()).norm() < 2.5 * fc
    assert r.samples.shape == (1, 1000, 16) and torch.allclose(r.x[0].double(), mu, atol=1e-10)
    acc = r.info["acceptance"]
    assert 0 < min(r.info["ess"]) <= 1 and acc and sum(acc) / len(acc) > 0.2


def test_smc_without_weights_misses_the_posterior():
    prior, op, y, post = _gaussian_case(0.1)
    fm, _ = _floor(post, 1000)
    r = solve(ExactModel(prior, LinearVP()), op, y, "smc", particles=1000, steps=40, weights=False,
              final_mcmc=0, rejuvenate="resample", twist="likelihood", generator=_gen(1))  # fmt: skip
    mu = r.particles[0].double().mean(0)
    assert (mu - post.mean()).norm() > 4 * fm


@pytest.mark.parametrize("path", [LinearVP(), CosineVP(), EDM(), RectifiedFlow()], ids=["vp", "cosine", "edm", "flow"])
@pytest.mark.parametrize("twist", ["gaussian", "likelihood"])
def test_smc_float32_stiff_likelihood_is_finite_and_on_target(path, twist):
    """sigma_y = 0.01 in float32 on every path: no NaN, the mean within 5 Monte-Carlo standard errors of the exact
    posterior mean, and the residual at the measurement's noise level (sqrt(8) 0.01 for the exact mean)."""
    prior, op, y, post = _gaussian_case(0.01)
    op32 = MatrixOperator(op.A.float(), noise_std=0.01)
    r = solve(ExactModel(prior, path), op32, y.float(), "smc", particles=128, steps=20, twist=twist, generator=_gen(2))
    assert r.x.dtype == torch.float32 and torch.isfinite(r.particles).all() and torch.isfinite(r.log_weights).all()
    assert (r.x[0].double() - post.mean()).norm() < 5 * (post.covariance().trace() / 128).sqrt()
    assert (op(r.x.double()) - y).norm() < 3 * (op(post.mean()[None]) - y).norm() + 0.05


def test_smc_ode_corrector_variant_runs_and_rejuvenates():
    prior, op, y, post = _gaussian_case(0.1)
    r = solve(ExactModel(prior, EDM()), op, y, "smc", particles=500, steps=30, eta=0.0, twist="likelihood",
              generator=_gen(3))  # fmt: skip
    fm, _ = _floor(post, 500)
    assert (r.x[0].double() - post.mean()).norm() < 3 * fm
    assert len(set(r.samples[0, :, 0].tolist())) > 400  # copies were separated by the corrector


class _NaNModel(ModelBase):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def predict(self, x, t, kind="x0", **cond):
        return torch.full_like(x, float("nan"))


def test_smc_fails_loudly_on_non_finite_predictions():
    """The front door's finite-output guard names the method and the call; SMC never returns NaN."""
    from diffusio.models.base import NonFiniteError

    _, op, y, _ = _gaussian_case(0.1)
    with pytest.raises(NonFiniteError, match="inverse method 'smc'.*not finite"):
        solve(_NaNModel(LinearVP()), op, y, "smc", particles=8, steps=3)


def test_smc_rejects_bad_options():
    prior, op, y, _ = _gaussian_case(0.1)
    model = ExactModel(prior, LinearVP())
    for bad in ({"eta": 1.5}, {"twist": "nope"}, {"particles": 0}, {"data_var": -1.0}, {"eta": 0.0, "mcmc_steps": 0}):
        with pytest.raises(ValueError):
            solve(model, op, y, "smc", steps=2, **bad)


def test_result_kinds():
    prior, op, y, _ = _gaussian_case(0.1)
    model = ExactModel(prior, LinearVP())
    r = solve(model, op, y.expand(3, 8).contiguous(), "pinv")
    assert r.kind == "point" and r.samples is None
    assert METHODS["reddiff"].kind == "point"  # an optimiser: a point estimate, never posterior samples
    r = solve(model, op, y.expand(3, 8).contiguous(), "ddrm", steps=5, generator=_gen())
    assert r.kind == "sampler" and r.samples.shape == (3, 1, 16)


# --- DDRM ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "op",
    [
        MatrixOperator(torch.randn(5, 16, generator=_gen(4), dtype=F64), in_shape=(1, 4, 4)),
        Inpainting((torch.rand(4, 4, generator=_gen(5)) > 0.5).float(), shape=(2, 4, 4)),
        SuperResolution(2, (2, 4, 4)),
        GaussianBlur(0.8, (1, 4, 4)),
    ],
    ids=["matrix", "inpainting", "sr", "blur"],
)
def test_operator_svd_identities(op):
    """U^T A x = S V^T x and V V^T = I for every operator with a closed-form SVD."""
    svd = operator_svd(op)
    x = torch.randn(3, *op.in_shape, generator=_gen(6), dtype=F64)
    assert torch.allclose(svd.ut(op(x)), svd.s.to(F64) * svd.vt(x), atol=1e-6)
    assert torch.allclose(svd.v(svd.vt(x)).real.to(F64), x, atol=1e-10)


def test_ddrm_noiseless_inpainting_keeps_observed_pixels():
    mask = (torch.rand(4, 4, generator=_gen(7)) > 0.5).float()
    op = Inpainting(mask, shape=(1, 4, 4))
    prior = GaussianMixture(torch.zeros(1, 1, 4, 4, dtype=F64), 0.7)
    y = op(torch.randn(2, 1, 4, 4, generator=_gen(8), dtype=F64))
    r = solve(ExactModel(prior, LinearVP()), op, y, "ddrm", steps=10, generator=_gen(9))
    assert torch.allclose(op(r.x), y, atol=1e-5)


def test_ddrm_isotropic_gaussian_prior_posterior_mean():
    """On an isotropic Gaussian prior every spectral component is independent; at sigma_y = 0.1 the mean of 4000
    DDRM samples (eta 0.85, 20 steps) is within 2 Monte-Carlo standard errors of the exact posterior mean."""
    g = _gen(10)
    prior = GaussianMixture(torch.zeros(1, 16, dtype=F64), 0.7)
    A = torch.randn(8, 16, generator=g, dtype=F64) / 2
    y = torch.randn(1, 8, generator=g, dtype=F64)
    post = gmm_posterior(prior, A, y[0], 0.1)
    r = solve(ExactModel(prior, EDM()), MatrixOperator(A, 0.1), y.expand(4000, 8).contiguous(), "ddrm", generator=g)
    se = math.sqrt(float(post.covariance().trace()) / 4000)
    assert (r.x.mean(0) - post.mean()).norm() < 2 * se


@pytest.mark.parametrize("twist", ["gaussian", "likelihood"])
def test_smc_uninformative_likelihood_keeps_uniform_weights(twist):
    """A = 0: mu_y is constant, so the weights stay uniform and the samples follow the prior."""
    prior, _, _, _ = _gaussian_case(0.1)
    op = MatrixOperator(torch.zeros(8, 16, dtype=F64), noise_std=0.1)
    y = torch.randn(1, 8, generator=_gen(11), dtype=F64)
    r = solve(ExactModel(prior, EDM()), op, y, "smc", particles=2000, steps=30, twist=twist, generator=_gen(12))
    assert float(r.log_weights.max() - r.log_weights.min()) < 1e-9
    assert r.info["resamples"] == 1  # only the final resample-move
    se = math.sqrt(float(prior.covariance().trace()) / 2000)
    assert (r.x[0].double() - prior.mean()).norm() < 4 * se
