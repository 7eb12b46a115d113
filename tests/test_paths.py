"""Paths: derivatives, log-SNR inverse, SDE coefficients, boundary values, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusio.core.paths import EDM, CosineVP, DiscreteDDPM, LinearVP, RectifiedFlow
from diffusio.core.time import broadcast
from diffusio.core.timesteps import get_timesteps

from .conftest import ALL_PATHS, SMOOTH_PATHS, path_id


def _interior(path, n=64):
    u = torch.linspace(0.02, 0.98, n, dtype=torch.float64)
    return path.t_min + (path.t_max - path.t_min) * u


@pytest.mark.parametrize("path", SMOOTH_PATHS, ids=path_id)
def test_derivatives_match_finite_differences(path):
    t = _interior(path)
    h = 1e-6 * (path.t_max - path.t_min)
    for f, df in [(path.alpha, path.d_alpha), (path.sigma, path.d_sigma), (path.log_snr, path.d_log_snr)]:
        fd = (f(t + h) - f(t - h)) / (2 * h)
        assert torch.allclose(df(t), fd, rtol=1e-5, atol=1e-7), f.__name__


@pytest.mark.parametrize("path", SMOOTH_PATHS, ids=path_id)
def test_sde_coefficients(path):
    """f = alpha'/alpha and g^2 = d(sigma^2)/dt - 2 f sigma^2 (principles.md)."""
    t = _interior(path)
    g2 = 2 * path.sigma(t) * path.d_sigma(t) - 2 * path.drift(t) * path.sigma(t) ** 2
    assert torch.allclose(path.diffusion2(t), g2, rtol=1e-9)
    assert (path.diffusion2(t) > 0).all()


@pytest.mark.parametrize("path", ALL_PATHS, ids=path_id)
def test_log_snr_inverse_and_monotone(path):
    t = _interior(path)
    lam = path.log_snr(t)
    assert (lam[1:] < lam[:-1]).all()
    assert torch.allclose(path.t_of_log_snr(lam), t, rtol=1e-9, atol=1e-10)
    assert torch.allclose(path.log_snr(t), torch.log(path.alpha(t) / path.sigma(t)), atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(i=st.integers(0, len(ALL_PATHS) - 1), u=st.floats(0.0, 1.0))
def test_log_snr_inverse_property(i, u):
    path = ALL_PATHS[i]
    t = torch.tensor(path.t_min + u * (path.t_max - path.t_min), dtype=torch.float64)
    assert abs(float(path.t_of_log_snr(path.log_snr(t)) - t)) < 1e-8 * max(1.0, float(t))


def test_vp_paths_preserve_variance():
    for path in [LinearVP(), CosineVP(), DiscreteDDPM()]:
        t = _interior(path)
        assert torch.allclose(path.alpha(t) ** 2 + path.sigma(t) ** 2, torch.ones_like(t), atol=1e-12)


def test_linear_vp_closed_form():
    path = LinearVP()
    t = _interior(path)
    log_alpha = -(20 - 0.1) * t**2 / 4 - 0.1 * t / 2
    assert torch.allclose(path.alpha(t), log_alpha.exp(), rtol=1e-12)


def test_discrete_ddpm_matches_its_table():
    path = DiscreteDDPM()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    assert torch.allclose(path.alpha(t) ** 2, abar, rtol=1e-10)
    assert torch.allclose(path.timestep(t), torch.arange(1000, dtype=torch.float64))


def test_edge_values():
    flow = RectifiedFlow()
    assert float(flow.alpha(torch.tensor(0.0))) == 1 and float(flow.sigma(torch.tensor(1.0))) == 1
    assert float(EDM().sigma(torch.tensor(3.0))) == 3.0


def test_perturb_and_prior(path):
    x0, eps = torch.randn(5, 3), torch.randn(5, 3)
    t = torch.full((5,), 0.5 * (path.t_min + path.t_max))
    xt = path.perturb(x0, eps, t)
    assert torch.allclose(xt, broadcast(path.alpha(t), x0) * x0 + broadcast(path.sigma(t), x0) * eps)
    z = path.prior_sample((20000, 2), generator=torch.Generator().manual_seed(0))
    sd = float(path.sigma(torch.tensor(path.t_max, dtype=torch.float64)))
    assert abs(float(z.std()) / sd - 1) < 0.02


def test_path_errors():
    with pytest.raises(ValueError, match="beta0"):
        LinearVP(beta0=-1.0)
    with pytest.raises(ValueError, match="t_min"):
        RectifiedFlow(t_min=0.5, t_max=0.2)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        LinearVP().check_t(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="sigma_max"):
        EDM(sigma_min=1.0, sigma_max=0.5)


def test_grids(path):
    for grid in ["uniform", "logsnr", "karras", "quadratic"]:
        ts = get_timesteps(path, 10, grid)
        assert ts.shape == (11,) and ts.dtype == torch.float64
        assert math.isclose(float(ts[0]), path.t_max) and math.isclose(float(ts[-1]), path.t_min)
        assert (ts[1:] < ts[:-1]).all()
    lam = path.log_snr(get_timesteps(path, 10, "logsnr"))
    assert torch.allclose(torch.diff(lam), torch.diff(lam)[0].expand(10), rtol=1e-6)


def test_karras_grid_matches_edm_formula():
    ts = get_timesteps(EDM(), 18, "karras")
    i = torch.arange(19, dtype=torch.float64)
    ref = (80 ** (1 / 7) + i / 18 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert torch.allclose(ts, ref, rtol=1e-10)


def test_grid_errors():
    with pytest.raises(ValueError, match="unknown grid 'fancy'; valid: uniform, logsnr, karras"):
        get_timesteps(LinearVP(), 10, "fancy")
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        get_timesteps(LinearVP(), 0, "uniform")
    with pytest.raises(ValueError, match="strictly decreasing"):
        get_timesteps(LinearVP(), 3, torch.tensor([1.0, 0.5, 0.7, 0.1]))
    with pytest.raises(ValueError, match="must lie in"):
        get_timesteps(LinearVP(), 2, torch.tensor([1.5, 0.5, 0.1]))
