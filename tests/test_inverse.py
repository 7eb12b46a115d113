"""Inverse-problem solvers against exact answers: Gaussian-mixture posteriors, Gaussian priors, KKT conditions."""

import math

import pytest
import torch

from diffusio.core.paths import EDM, LinearVP
from diffusio.data import GaussianMixture
from diffusio.data.phantoms import phantom_volume, random_phantoms
from diffusio.inverse import (
    METHODS,
    DPSGuidance,
    MatrixOperator,
    PiGDMGuidance,
    admm_tv_step,
    diff_z,
    diff_z_adjoint,
    gmm_posterior,
    solve,
    sparse_view_ct,
)
from diffusio.inverse.smc import stage_one
from diffusio.metrics import psnr
from diffusio.models import ExactModel
from diffusio.samplers import sample

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _mixture():
    return GaussianMixture(
        torch.tensor([[1.5, 0.0], [-1.0, 1.0], [0.0, -1.5]]), torch.tensor([0.5, 0.6, 0.4]), [0.3, 0.3, 0.4]
    )


def _moments(particles, log_weights):
    w = torch.softmax(log_weights, 0)
    mu = (w[:, None] * particles).sum(0)
    return mu, ((particles - mu).T * w) @ (particles - mu)


# --- the closed-form posterior ---------------------------------------------------------------------------------------
def test_gmm_posterior_gaussian_case():
    """One component: the textbook posterior N(C A^T S^-1 (y - A mu) + mu, C - C A^T S^-1 A C)."""
    C = torch.tensor([[0.8, 0.3], [0.3, 0.5]], dtype=F64)
    g = GaussianMixture(torch.tensor([[0.5, -0.3]]), C[None])
    A, y, s = torch.tensor([[1.0, 0.5]], dtype=F64), torch.tensor([0.4], dtype=F64), 0.7
    post = gmm_posterior(g, A, y, s)
    P = torch.linalg.inv(torch.linalg.inv(C) + A.T @ A / s**2)
    m = P @ (torch.linalg.solve(C, torch.tensor([0.5, -0.3], dtype=F64)) + A.T[:, 0] * y / s**2)
    assert torch.allclose(post.mean(), m, atol=1e-12) and torch.allclose(post.covariance(), P, atol=1e-12)


def test_gmm_posterior_matches_importance_sampling():
    g, A, y, s = _mixture(), torch.tensor([[1.0, 0.5]], dtype=F64), torch.tensor([0.4], dtype=F64), 0.7
    post = gmm_posterior(g, A, y, s)
    x = g.sample(400_000, generator=_gen(), dtype=F64)
    mu, cov = _moments(x, -0.5 * ((x @ A.T - y) ** 2).sum(1) / s**2)
    assert torch.allclose(post.mean(), mu, atol=0.01) and torch.allclose(post.covariance(), cov, atol=0.02)


# --- SMC (AFDPS) -----------------------------------------------------------------------------------------------------
def test_smc_converges_to_gmm_posterior():
    """Weighted-particle mean and covariance approach the exact posterior as particles grow; without the weight
    update (negative control) the drift alone misses it."""
    g, A, s = _mixture(), torch.tensor([[1.0, 0.0]], dtype=F64), 0.7
    y = torch.tensor([[0.4]], dtype=F64)
    post = gmm_posterior(g, A, y[0], s)
    model, op = ExactModel(g, LinearVP()), MatrixOperator(A, noise_std=s)

    def errors(n, weights=True):
        out = []
        for seed in range(3):
            # pure SMC (no MALA rejuvenation): the estimator whose error must vanish as particles grow
            control = {"final_mcmc": 0, "rejuvenate": "resample", "mcmc_steps": 0}
            if not weights:
                control["twist"] = "likelihood"
            r = solve(model, op, y, "smc", particles=n, steps=100, weights=weights, generator=_gen(seed), **control)
            mu, cov = _moments(r.particles[0], r.log_weights[0])
            out.append([(mu - post.mean()).norm(), (cov - post.covariance()).norm() / post.covariance().norm()])
        return torch.tensor(out).mean(0)

    few, many, unweighted = errors(64), errors(4096), errors(4096, weights=False)
    assert (many < 0.6 * few).all(), (few, many)
    assert many[0] < 0.12 and many[1] < 0.1, many
    assert unweighted[0] > 2 * many[0], (unweighted, many)


def test_smc_gaussian_prior_one_dimension():
    """Brief test 1 on a VP path: prior N(0, 0.5), A = 1, y = 0.8, sigma_y = 1 -> posterior N(0.8/3, 1/3)."""
    g = GaussianMixture(torch.zeros(1, 1), 0.5**0.5)
    op, y = MatrixOperator(torch.ones(1, 1, dtype=F64), noise_std=1.0), torch.tensor([[0.8]], dtype=F64)
    r = solve(ExactModel(g, LinearVP()), op, y, "smc", particles=8192, steps=100, data_var=0.5, generator=_gen(1))
    mu, var = _moments(r.particles[0], r.log_weights[0])
    assert abs(float(mu) - 0.8 / 3) < 0.03 and abs(float(var) * 3 - 1) < 0.1


def test_stage_one_is_exact():
    """Perturb-and-solve draws have mean Lambda^-1 A^T y / s^2 and covariance Lambda^-1."""
    A = torch.tensor([[1.0, 0.5, 0.0], [0.2, -1.0, 0.3]], dtype=F64)
    op, y, rho2 = MatrixOperator(A, noise_std=0.5), torch.tensor([0.3, -0.2], dtype=F64), 2.0
    x = stage_one(op, y.expand(20000, 2), rho2, generator=_gen())
    lam = A.T @ A / 0.25 + torch.eye(3, dtype=F64) / rho2
    cov = torch.linalg.inv(lam)
    assert torch.allclose(x.mean(0), cov @ A.T @ y / 0.25, atol=0.02)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.02)


# --- PiGDM, DPS ------------------------------------------------------------------------------------------------------
def _normal_problem():
    g = GaussianMixture(torch.zeros(1, 4), 1.0)
    H = torch.randn(2, 4, generator=_gen(3), dtype=F64)
    op = MatrixOperator(H, noise_std=0.3)
    y = torch.tensor([0.7, -0.4], dtype=F64)
    post_cov = torch.eye(4, dtype=F64) - H.T @ torch.linalg.solve(H @ H.T + 0.09 * torch.eye(2, dtype=F64), H)
    post_mean = H.T @ torch.linalg.solve(H @ H.T + 0.09 * torch.eye(2, dtype=F64), y)
    return ExactModel(g, LinearVP()), op, y, post_mean, post_cov


def test_pigdm_exact_on_standard_normal_prior():
    """For x0 ~ N(0, I), p(x0 | x_t) is Gaussian, so PiGDM's guidance is the exact grad log p(y | x_t)."""
    model, op, y, mean, cov = _normal_problem()
    n = 8000
    r = solve(model, op, y.expand(n, 2), "pigdm", steps=200, generator=_gen())
    assert (r.x.mean(0) - mean).abs().max() < 0.05
    assert float((torch.cov(r.x.T) - cov).norm() / cov.norm()) < 0.08
    prior = solve(model, op, y.expand(n, 2), "pigdm", steps=200, weight=0.0, generator=_gen())
    assert float((torch.cov(prior.x.T) - torch.eye(4, dtype=F64)).norm() / 2) < 0.08  # w = 0: the prior
    assert r.nfe == 200


def test_pigdm_wrapper_works_with_any_sampler():
    model, op, y, mean, _ = _normal_problem()
    guided = PiGDMGuidance(model, op, y.expand(4000, 2))
    x = sample(guided, shape=(4000, 4), solver="euler_maruyama", steps=300, grid="uniform", generator=_gen()).x
    assert (x.mean(0) - mean).abs().max() < 0.06


def test_dps_reduces_the_residual():
    """DPS is not an exact posterior sampler; its outputs must fit y far better than prior samples."""
    model, op, y, _, _ = _normal_problem()
    n = 500
    r = solve(model, op, y.expand(n, 2), "dps", steps=200, scale=0.5, generator=_gen())
    prior = sample(model, shape=(n, 4), solver="ddpm", steps=200, grid="uniform", generator=_gen()).x
    res_dps = (op(r.x) - y).norm(dim=1).mean()
    res_prior = (op(prior) - y).norm(dim=1).mean()
    expected = math.sqrt(2) * 0.3 * 1.3  # posterior residual ~ noise level
    assert res_dps < 2 * expected and res_prior > 2 * res_dps, (res_dps, res_prior)


def test_dps_wrapper_is_score_shift_of_residual_norm_gradient():
    model, op, y, _, _ = _normal_problem()
    x = torch.randn(3, 4, generator=_gen(), dtype=F64)
    t = torch.full((3,), 0.5, dtype=F64)
    wrapped = DPSGuidance(model, op, y.expand(3, 2), scale=0.7)
    xg = x.clone().requires_grad_(True)
    norm = (y - op(model.predict(xg, t, "x0"))).norm(dim=1).sum()
    (grad,) = torch.autograd.grad(norm, xg)
    score = model.predict(x, t, "score") - 0.7 * grad
    assert torch.allclose(wrapped.predict(x, t, "score"), score, atol=1e-10)


# --- RED-Diff --------------------------------------------------------------------------------------------------------
def test_reddiff_zero_regulariser_stays_at_pseudo_inverse():
    """lambda = 0 on noiseless inpainting: the data-fit gradient vanishes at A^+ y, so mu does not move."""
    model = ExactModel(_mixture(), LinearVP())
    op = MatrixOperator(torch.tensor([[1.0, 0.0]], dtype=F64))  # observe coordinate 1 of 2
    y = torch.tensor([[0.3], [-0.8]], dtype=F64)
    r = solve(model, op, y, "reddiff", steps=30, reg_weight=0.0, generator=_gen())
    assert torch.allclose(r.x, op.pinv(y), atol=1e-12)
    moved = solve(model, op, y, "reddiff", steps=30, generator=_gen())
    assert (moved.x - op.pinv(y)).abs().max() > 0.05  # the regulariser does move it


def test_reddiff_gmm_inpainting_lands_on_a_posterior_mode():
    """Brief test 4: observe coordinate 1; mu_1 matches y, mu_2 sits near a likelihood-reweighted mode."""
    g = GaussianMixture(torch.tensor([[0.0, 1.5], [0.0, -1.5]]), 0.4)
    op = MatrixOperator(torch.tensor([[1.0, 0.0]], dtype=F64))
    y = torch.tensor([[0.2]], dtype=F64).expand(16, 1)
    r = solve(ExactModel(g, LinearVP()), op, y, "reddiff", steps=1000, lr=0.05, reg_weight=1.0, generator=_gen())
    assert (r.x[:, 0] - 0.2).abs().max() < 0.05
    at_mode = (r.x[:, 1].abs() - 1.5).abs() < 0.3
    assert at_mode.float().mean() >= 0.8, r.x[:, 1]  # the start A^+ y = (0.2, 0) is the gap's saddle


# --- DiffusionMBIR ---------------------------------------------------------------------------------------------------
def test_admm_tv_satisfies_kkt():
    """ADMM-TV alone converges to a minimiser of 1/2 ||A x - y||^2 + lam ||D_z x||_1 (KKT certificate from u).

    Six "slices" that are vectors of 8 pixels, each seen through the same random 5x8 matrix."""
    op = MatrixOperator(torch.randn(5, 8, generator=_gen(), dtype=F64))
    vol = torch.randn(6, 8, generator=_gen(1), dtype=F64).cumsum(0)
    y = op(vol)
    lam, rho = 0.5, 2.0
    v = torch.zeros_like(vol)
    z = u = torch.zeros_like(diff_z(v))
    for _ in range(1000):
        v, z, u = admm_tv_step(op, y, v, z, u, tv_weight=lam, rho=rho, cg_iters=20)
    s = (u * rho / lam).clamp(-1, 1)
    dv = diff_z(v)
    active = dv.abs() > 1e-4
    assert active.any() and (~active).any()  # both kinds of KKT condition are exercised
    assert (s[active] * dv[active].sign() > 0.99).all()
    kkt = op.adjoint(op(v) - y) + lam * diff_z_adjoint(s)
    assert float(kkt.norm() / op.adjoint(y).norm()) < 1e-6


def _gaussian_slice_prior(size):
    """A Gaussian fitted to random phantom slices: an exact 2-D prior (no training)."""
    x = random_phantoms(3000, size, generator=_gen(7)).double().reshape(3000, -1)
    cov = torch.cov(x.T) + 1e-3 * torch.eye(size * size, dtype=F64)
    return GaussianMixture(x.mean(0).reshape(1, 1, size, size), cov[None])


def test_mbir_beats_slice_wise_reconstruction_with_exact_prior():
    size = 12
    model = ExactModel(_gaussian_slice_prior(size), EDM(sigma_max=20.0))
    vol = phantom_volume(size, 8, generator=_gen(11)).double()
    op = sparse_view_ct(size, 4, noise_std=0.01)
    y = op.measure(vol, generator=_gen())
    opts = dict(steps=60, rho=1.0, cg_iters=5, generator=_gen(1))
    mbir = solve(model, op, y, "mbir", tv_weight=0.05, **opts)
    flat = solve(model, op, y, "mbir", tv_weight=0.0, **opts)
    p_mbir, p_flat = float(psnr(mbir.x, vol).mean()), float(psnr(flat.x, vol).mean())
    assert p_mbir > p_flat + 0.5, (p_mbir, p_flat)
    assert mbir.nfe == 2 * 60 - 1


# --- the front door --------------------------------------------------------------------------------------------------
def test_solve_rejects_bad_input():
    model = ExactModel(_mixture(), LinearVP())
    op = MatrixOperator(torch.tensor([[1.0, 0.5]], dtype=F64), noise_std=0.1)
    y = torch.zeros(2, 1, dtype=F64)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        solve(model, op, y, "nope")
    with pytest.raises(ValueError, match="unknown option.*stpes.*for method 'dps'"):
        solve(model, op, y, "dps", stpes=3)
    with pytest.raises(ValueError, match=r"measurement y must have shape \(batch, 1\)"):
        solve(model, op, torch.zeros(2, 3, dtype=F64), "dps")


def test_methods_registry_lists_every_solver():
    assert {"dps", "pigdm", "reddiff", "smc", "mbir", "pinv"} <= set(METHODS)
