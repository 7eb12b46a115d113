"""Exact-posterior checks for the SMC sampler, DDRM and the InverseResult contract (issue 10)."""

from __future__ import annotations

import itertools
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


def _ddrm_spectral_case(sigma_y: float, diagonal: bool = True, seed: int = 10, shift: float = 0.0):
    """d = 6 Gaussian prior, 3x6 matrix (3 unobserved spectral components). ``diagonal``: the prior covariance is
    diagonal in the operator's right-singular basis V. Returns (prior, operator, y, posterior mean, posterior cov,
    prior variances in the V basis, singular values, V^T)."""
    g = _gen(seed)
    A = torch.randn(3, 6, generator=g, dtype=F64)
    _, sv, vh = torch.linalg.svd(A, full_matrices=True)
    lam = torch.linspace(0.3, 1.5, 6, dtype=F64)
    basis = vh.T if diagonal else torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=F64))[0]
    cov, mu = basis @ torch.diag(lam) @ basis.T, 0.2 * torch.ones(6, dtype=F64)
    prior = GaussianMixture(mu[None], cov[None])
    y = prior.sample(1, generator=g).to(F64) @ A.T + sigma_y * torch.randn(1, 3, generator=g, dtype=F64) + shift
    gain = cov @ A.T @ torch.linalg.inv(A @ cov @ A.T + sigma_y**2 * torch.eye(3, dtype=F64))
    pm, pc = mu + gain @ (y[0] - A @ mu), cov - gain @ A @ cov
    s = torch.zeros(6, dtype=F64)
    s[:3] = sv
    return prior, MatrixOperator(A, noise_std=sigma_y), y, pm, pc, vh @ cov @ vh.T, s, vh


def _ddrm_closed_form(path, steps, eta, eta_b, lam, s, sigma_y):
    """What DDRM computes with the exact denoiser of a Gaussian prior whose covariance is diagonal in V (variances
    ``lam``): every spectral component is independent and every update is affine, so component i of the output is
    N(mu_i + c_i (ybar_i - mu_i), v_i). Returns (c, v), propagated through the three cases of the module docstring."""
    from diffusio.core.time import coeffs
    from diffusio.inverse.ddrm import ddrm_times

    levels = [float(coeffs(path, t).sigma / coeffs(path, t).alpha) for t in ddrm_times(path, steps)] + [0.0]
    cs, vs = [], []
    for li, si in zip(lam.tolist(), s.tolist(), strict=True):
        rho = sigma_y / si if si > 0 else math.inf
        strong0 = si > 0 and si * levels[0] >= sigma_y
        c, v = (1.0, levels[0] ** 2 - rho**2) if strong0 else (0.0, levels[0] ** 2)
        for lvl, nxt in itertools.pairwise(levels):
            w = li / (li + lvl**2)  # x0bar - mu = w (xbar - mu)
            if si == 0:
                a = w + math.sqrt(1 - eta**2) * nxt * (1 - w) / lvl
                c, v = a * c, a**2 * v + (eta * nxt) ** 2
            elif si * nxt >= sigma_y:
                c, v = (1 - eta_b) * w * c + eta_b, ((1 - eta_b) * w) ** 2 * v + max(nxt**2 - (eta_b * rho) ** 2, 0)
            else:
                b = math.sqrt(1 - eta**2) * nxt / rho
                c, v = (1 - b) * w * c + b, ((1 - b) * w) ** 2 * v + (eta * nxt) ** 2
        cs.append(c)
        vs.append(v)
    return torch.tensor(cs, dtype=F64), torch.tensor(vs, dtype=F64)


@pytest.mark.parametrize("sigma_y,eta", [(0.0, 0.85), (0.5, 0.85), (0.5, 0.3)])
def test_ddrm_matches_its_closed_form_on_a_gaussian_prior_diagonal_in_v(sigma_y, eta):
    """DDRM with the exact denoiser, on a Gaussian prior diagonal in V: the mean and variance of 4000 samples of
    every spectral component match the closed-form propagation (within 4.5 standard errors on the mean, 15% on
    the variance) -- the implementation computes exactly the updates of Kawar et al. (2022, Eq. 7-8)."""
    prior, op, y, _, _, lam_v, s, vh = _ddrm_spectral_case(sigma_y)
    n, path = 4000, EDM()
    r = solve(ExactModel(prior, path), op, y.expand(n, 3).contiguous(), "ddrm", eta=eta, generator=_gen(11))
    assert r.nfe == 20  # steps = model calls
    c, v = _ddrm_closed_form(path, 20, eta, 1.0, lam_v.diagonal(), s, sigma_y)
    zb = r.x.double() @ vh.T  # spectral coefficients of the samples
    mu_v = vh @ (0.2 * torch.ones(6, dtype=F64))
    ybar = torch.zeros(6, dtype=F64)
    ybar[:3] = (torch.linalg.svd(op.A.double())[0].T @ y[0]) / s[:3]
    expect = mu_v + c * (ybar - mu_v)
    assert ((zb.mean(0) - expect).abs() <= 4.5 * (v / n).sqrt() + 1e-9).all()
    observed_exactly = v < 1e-12
    assert torch.allclose(zb.var(0)[observed_exactly], v[observed_exactly], atol=1e-9)
    assert ((zb.var(0)[~observed_exactly] / v[~observed_exactly] - 1).abs() < 0.15).all()


def test_ddrm_posterior_mean_exact_for_noiseless_measurement_and_prior_diagonal_in_v():
    """sigma_y = 0, Gaussian prior diagonal in V: observed components equal ybar and unobserved ones keep the prior
    mean, so the DDRM sample mean is the exact posterior mean (within 4.5 Monte-Carlo standard errors)."""
    prior, op, y, pm, pc, *_ = _ddrm_spectral_case(0.0)
    n = 4000
    r = solve(ExactModel(prior, EDM()), op, y.expand(n, 3).contiguous(), "ddrm", generator=_gen(12))
    assert torch.allclose(op(r.x), y.expand(n, 3), atol=1e-6)
    se = (pc.diagonal().clamp(min=0) / n).sqrt()
    assert ((r.x.double().mean(0) - pm).abs() <= 4.5 * se + 1e-9).all()


def test_ddrm_noisy_mean_does_not_converge_to_the_posterior_mean():
    """sigma_y > 0, prior diagonal in V: the weight c_i of ybar_i in the DDRM mean is set by the step grid, not by
    the posterior gain k_i = lam_i / (lam_i + sigma_y^2 / s_i^2); more steps do not help (eta < 1: c_i -> 1, the
    measurement noise is fitted; eta = 1: c_i -> 0). At 200 steps the sample mean misses the posterior mean by far
    more than Monte-Carlo error (docs/posterior.md, "When DDRM is exact")."""
    prior, op, y, pm, pc, lam_v, s, _ = _ddrm_spectral_case(1.0, shift=2.0)
    k = lam_v.diagonal()[:3] / (lam_v.diagonal()[:3] + 1 / s[:3] ** 2)
    for eta, limit in ((0.85, 1.0), (1.0, 0.0)):
        c = _ddrm_closed_form(EDM(), 400, eta, 1.0, lam_v.diagonal(), s, 1.0)[0][:3]
        assert ((c - limit).abs() < (k - limit).abs() / 2).all()
    n = 4000
    r = solve(ExactModel(prior, EDM()), op, y.expand(n, 3).contiguous(), "ddrm", steps=200, generator=_gen(13))
    z = (r.x.double().mean(0) - pm).abs() / (pc.diagonal() / n).sqrt()
    assert z.max() > 10


def test_ddrm_is_not_the_posterior_mean_for_a_prior_not_diagonal_in_v():
    """sigma_y = 0 but a prior covariance that V does not diagonalise: the unobserved components are denoised from
    a state whose observed part is noisy (as in replacement methods), so the mean is biased although every sample
    meets A x = y exactly."""
    prior, op, y, pm, pc, *_ = _ddrm_spectral_case(0.0, diagonal=False, seed=11, shift=2.0)
    n = 4000
    r = solve(ExactModel(prior, EDM()), op, y.expand(n, 3).contiguous(), "ddrm", generator=_gen(13))
    assert torch.allclose(op(r.x), y.expand(n, 3), atol=1e-6)
    z = (r.x.double().mean(0) - pm).abs() / (pc.diagonal().clamp(min=1e-12) / n).sqrt()
    assert z.max() > 10


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
