"""PFGM++: the heavy-tailed kernel (moments, radial law, directions), its Gaussian limit, the oracle denoiser,
oracle sampling from the PFGM++ prior, the loss's noise, and the D < 1 error (pfgmpp.md)."""

import math

import pytest
import torch
from scipy import stats

from diffusio.core.paths import EDM
from diffusio.families.pfgmpp import PFGMPP, PointSetModel, sample_chi2, sample_kernel
from diffusio.models.base import EDMPrecond, Model
from diffusio.samplers import sample
from diffusio.training.losses import DiffusionLoss, EDMLogNormal, EDMWeight

F64 = torch.float64


def _g(seed):
    return torch.Generator().manual_seed(seed)


def test_kernel_second_moment():
    """E||n||^2 = sigma^2 N D/(D - 2); the Gaussian limit E||n||^2/N = sigma^2 (pfgmpp.md test 1)."""
    n = sample_kernel((200_000, 2), 8.0, 1.0, generator=_g(0), dtype=F64)
    assert abs(float(n.pow(2).sum(1).mean()) / (2 * 8 / 6) - 1) < 0.02
    n = sample_kernel((20_000, 64), 1e6, 1.0, generator=_g(1), dtype=F64)
    assert abs(float(n.pow(2).sum(1).mean()) / 64 - 1) < 0.01


@pytest.mark.parametrize("N,D", [(2, 1.0), (2, 3.0), (2, 8.0), (64, 16.0), (64, 2048.0)])
def test_radius_follows_the_beta_prime_law(N, D):
    """R^2/r^2 ~ BetaPrime(N/2, D/2), r = sigma sqrt(D): KS p > 1e-3 at n = 1e5 (pfgmpp.md test 2; the tests below
    show a wrong law gives p < 1e-6)."""
    sigma = 0.7
    n = sample_kernel((100_000, N), D, sigma, generator=_g(0), dtype=F64)
    q = n.pow(2).sum(1) / (sigma**2 * D)
    assert stats.kstest(q.numpy(), stats.betaprime(N / 2, D / 2).cdf).pvalue > 1e-3


def test_radius_test_has_power_and_directions_are_uniform():
    n = sample_kernel((100_000, 2), 8.0, 1.0, generator=_g(3), dtype=F64)
    q = n.pow(2).sum(1) / 8
    assert stats.kstest(q.numpy(), stats.betaprime(1.0, 2.0).cdf).pvalue < 1e-6  # a wrong D is detected
    g = torch.randn(100_000, 2, generator=_g(4), dtype=F64).pow(2).sum(1) / 8  # a Gaussian radius is detected
    assert stats.kstest(g.numpy(), stats.betaprime(1.0, 4.0).cdf).pvalue < 1e-6
    n = sample_kernel((50_000, 3), 5.0, 1.0, generator=_g(5), dtype=F64)
    u = n / n.norm(dim=1, keepdim=True)
    se = 1 / math.sqrt(3 * 50_000)
    assert u.mean(0).abs().max() < 4 * se
    assert (torch.cov(u.T) - torch.eye(3, dtype=F64) / 3).abs().max() < 4 * math.sqrt(2) * se + 1e-3


def test_chi2_sampler_matches_scipy():
    for dof in (1.0, 2.5, 40.0):
        x = sample_chi2(dof, 50_000, _g(6))
        assert stats.kstest(x.numpy(), stats.chi2(dof).cdf).pvalue > 0.01


def test_large_D_kernel_matches_edm_perturbation():
    """At D = 1e7 the radius law is the Gaussian chi law: KS against ||N(0, sigma^2 I_N)||^2 / sigma^2 ~ chi2_N."""
    n = sample_kernel((50_000, 16), 1e7, 2.0, generator=_g(7), dtype=F64)
    assert stats.kstest((n.pow(2).sum(1) / 4).numpy(), stats.chi2(16).cdf).pvalue > 0.01
    small = sample_kernel((50_000, 16), 8.0, 2.0, generator=_g(7), dtype=F64)
    assert stats.kstest((small.pow(2).sum(1) / 4).numpy(), stats.chi2(16).cdf).pvalue < 1e-6


ATOMS = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=F64)
WEIGHTS = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)


def test_oracle_posterior_mean_agrees_with_monte_carlo():
    """Draw (atom, kernel noise) pairs, keep those landing near a probe, average the atoms (pfgmpp.md test 3)."""
    atoms, w = ATOMS[:3], torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    D, r = 8.0, 2.0
    sigma = r / math.sqrt(D)
    n = 2_000_000
    g = _g(8)
    idx = torch.multinomial(w, n, replacement=True, generator=g)
    x = atoms[idx] + sample_kernel((n, 2), D, sigma, generator=g, dtype=F64)
    probe = torch.tensor([0.3, 0.2], dtype=F64)
    keep = (x - probe).norm(dim=1) < 0.05
    mc = atoms[idx[keep]]
    model = PointSetModel(atoms, w, PFGMPP(D=D))
    exact = model(probe[None], torch.tensor([sigma], dtype=F64))[0]
    se = mc.std(0) / math.sqrt(int(keep.sum()))
    assert ((mc.mean(0) - exact).abs() < 3.5 * se + 1e-3).all(), (mc.mean(0), exact, se)


def test_oracle_denoiser_gaussian_limit():
    g = _g(9)
    x = torch.randn(256, 2, generator=g, dtype=F64) * 1.5
    sigma = torch.rand(256, generator=g, dtype=F64) + 0.3
    big = PointSetModel(ATOMS, WEIGHTS, PFGMPP(D=1e6))(x, sigma)
    gauss = PointSetModel(ATOMS, WEIGHTS, EDM())(x, sigma)
    assert ((big - gauss).abs() / gauss.abs().clamp(min=1e-3)).max() < 1e-3
    small = PointSetModel(ATOMS, WEIGHTS, PFGMPP(D=8))(x, sigma)
    assert (small - gauss).abs().max() > 1e-2


def _oracle_samples(D, prior_path, n=10_000, steps=40, t_min=None, seed=10):
    model = PointSetModel(ATOMS, WEIGHTS, PFGMPP(D=D))
    x = prior_path.prior_sample((n, 2), generator=_g(seed), dtype=F64)
    return sample(model, x, solver="heun", steps=steps, grid="karras", t_min=t_min).x


def test_oracle_sampling_from_the_pfgmpp_prior_reaches_the_atoms():
    """Heun with the oracle denoiser from the D = 8 prior snaps to the atoms with the right frequencies."""
    x = _oracle_samples(8.0, PFGMPP(D=8.0))
    d = torch.cdist(x, ATOMS)
    near, which = d.min(1)
    assert float((near < 0.05).double().mean()) >= 0.99
    freq = torch.bincount(which, minlength=4).double() / len(x)
    se = torch.sqrt(WEIGHTS * (1 - WEIGHTS) / len(x))
    assert ((freq - WEIGHTS).abs() < 3 * se).all(), freq


def test_prior_must_be_the_heavy_tailed_kernel():
    """Integrate sigma 80 -> 5 only and KS-compare ||x|| with forward-perturbed data at sigma = 5: the PFGM++ prior
    passes, the Gaussian prior 80 N(0, I) fails (end-point snapping cannot tell them apart; pfgmpp.md test 5)."""
    D, n = 8.0, 4000
    g = _g(11)
    idx = torch.multinomial(WEIGHTS, n, replacement=True, generator=g)
    ref = (ATOMS[idx] + sample_kernel((n, 2), D, 5.0, generator=g, dtype=F64)).norm(dim=1)
    good = _oracle_samples(D, PFGMPP(D=D), n=n, steps=30, t_min=5.0).norm(dim=1)
    bad = _oracle_samples(D, EDM(), n=n, steps=30, t_min=5.0).norm(dim=1)
    assert stats.ks_2samp(good.numpy(), ref.numpy()).pvalue > 0.01
    assert stats.ks_2samp(bad.numpy(), ref.numpy()).pvalue < 1e-6


def test_large_D_samples_match_edm_samples():
    """With D = 1e7 the PFGM++ oracle sampler and the EDM oracle sampler give the same distribution."""
    a = _oracle_samples(1e7, PFGMPP(D=1e7), n=4000, steps=18)
    b = _oracle_samples(1e7, EDM(), n=4000, steps=18, seed=10)
    # same seed: the same Gaussian draws, scaled by sqrt(chi2_D / D) = 1 +- 5e-4, then the same ODE
    assert float(((a - b).norm(dim=1) < 0.05).double().mean()) > 0.98


def test_training_loss_draws_the_kernel_noise():
    """DiffusionLoss on the PFGMPP path perturbs with the heavy-tailed kernel at the drawn sigma (EDM recipe)."""
    path = PFGMPP(D=4.0)
    lin = torch.nn.Linear(2, 2).double()
    model = Model(lambda x, c_noise: lin(x), path, "x0", EDMPrecond(0.5))
    loss = DiffusionLoss("x0", EDMLogNormal(), EDMWeight(0.5))
    x0 = torch.zeros(100_000, 2, dtype=F64)
    t, noise = loss.draw(x0, path, _g(12))
    assert stats.kstest((noise.pow(2).sum(1) / 4).numpy(), stats.betaprime(1.0, 2.0).cdf).pvalue > 0.01
    per = loss(model, x0[:8], t[:8], noise[:8])
    assert per.shape == (8,) and torch.isfinite(per).all()
    assert torch.allclose(path.perturb(x0[:8], noise[:8], t[:8]), t[:8, None] * noise[:8])


def test_D_below_one_is_a_clear_error():
    for bad in (0.5, 0, -3, float("nan")):
        with pytest.raises(ValueError, match=r"D \(the number of augmented dimensions\) must be a number >= 1"):
            PFGMPP(D=bad)
    with pytest.raises(ValueError, match="must be a number >= 1"):
        sample_kernel((4, 2), 0.9)
    assert PFGMPP(D=math.inf).prior_sample((3, 2), generator=_g(0)).shape == (3, 2)
