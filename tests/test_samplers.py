"""Baseline samplers on exact mixture models: measured convergence orders, exact cases, SDE marginals, errors."""

import math

import pytest
import torch

from diffusio.core.paths import EDM, VE, CosineVP, LinearVP, RectifiedFlow
from diffusio.data import GaussianMixture
from diffusio.models import ExactModel
from diffusio.samplers import SOLVERS, odeint, sample

ORDER_PATHS = [LinearVP(), EDM(), RectifiedFlow(), CosineVP(), VE()]


def measured_order(model, solver, x, grid="logsnr", steps=(32, 64, 128), **opts):
    """Log2 of the RMS-error ratio under step halving, against a tight adaptive reference of the same ODE."""
    ref = sample(model, x, solver="adaptive", steps=1, rtol=1e-10, atol=1e-10).x
    errs = []
    for n in steps:
        out = sample(model, x, solver=solver, steps=n, grid=grid, **opts).x
        errs.append(float((out - ref).pow(2).sum(1).mean().sqrt()))
    return [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)], errs


@pytest.mark.parametrize("path", ORDER_PATHS, ids=lambda p: p.name)
@pytest.mark.parametrize("solver", ["euler", "heun", "ddim"])
def test_convergence_order(gmm2d, path, solver):
    model = ExactModel(gmm2d, path)
    x = path.prior_sample((128, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    orders, errs = measured_order(model, solver, x)
    declared = SOLVERS[solver].order
    assert abs(orders[-1] - declared) < 0.3, (orders, errs)


def test_adaptive_reference_is_converged(gmm2d):
    """Tightening the tolerance changes the reference by far less than any solver error we measure."""
    model = ExactModel(gmm2d, LinearVP())
    x = LinearVP().prior_sample((64, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = sample(model, x, solver="adaptive", steps=1, rtol=1e-8, atol=1e-8).x
    b = sample(model, x, solver="adaptive", steps=1, rtol=1e-11, atol=1e-11).x
    assert float((a - b).abs().max()) < 1e-6


def test_odeint_order_on_exponential():
    y = odeint(lambda t, y: -y, torch.ones(3, dtype=torch.float64), 0.0, 2.0, rtol=1e-12, atol=1e-14)
    assert torch.allclose(y, torch.full((3,), math.exp(-2.0), dtype=torch.float64), rtol=1e-10)


def test_gaussian_pf_ode_closed_form():
    """For N(mu, s^2 I) data the PF-ODE map is x_s = alpha_s mu + (m_s/m_t)(x_t - alpha_t mu) (principles.md test 2)."""
    mu, s = torch.tensor([[0.5, -1.0]], dtype=torch.float64), 0.7
    g, path = GaussianMixture(mu, s), LinearVP()
    x = path.prior_sample((64, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model = ExactModel(g, path)
    t0, t1 = torch.tensor(path.t_max, dtype=torch.float64), torch.tensor(path.t_min, dtype=torch.float64)
    m = lambda t: torch.sqrt(path.alpha(t) ** 2 * s**2 + path.sigma(t) ** 2)  # noqa: E731
    exact = path.alpha(t1) * mu + m(t1) / m(t0) * (x - path.alpha(t0) * mu)
    # The brief's thresholds (Euler 200 steps, Heun 50 steps within 1e-3) hold for Heun on a grid dense near the
    # data end (quadratic); Euler and DDIM are first order and land within a few 1e-3 / 1e-2.
    assert float((sample(model, x, solver="euler", steps=200, grid="uniform").x - exact).abs().max()) < 5e-3
    assert float((sample(model, x, solver="heun", steps=50, grid="quadratic").x - exact).abs().max()) < 1e-3
    assert float((sample(model, x, solver="ddim", steps=200, grid="quadratic").x - exact).abs().max()) < 3e-2


def test_ddim_single_step_exact_for_point_mass():
    """With (near) point-mass data x0_hat is constant, so one DDIM step is exact; one Euler step is not."""
    g, path = GaussianMixture(torch.tensor([[0.3, -0.4]], dtype=torch.float64), 1e-7), LinearVP()
    model = ExactModel(g, path)
    x = path.prior_sample((16, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ts = torch.tensor([path.t_max, path.t_min], dtype=torch.float64)
    a1, s1 = path.alpha(ts[1]), path.sigma(ts[1])
    a0, s0 = path.alpha(ts[0]), path.sigma(ts[0])
    mu = torch.tensor([0.3, -0.4], dtype=torch.float64)
    exact = a1 * mu + s1 * (x - a0 * mu) / s0
    assert float((sample(model, x, solver="ddim", steps=1, grid=ts).x - exact).abs().max()) < 1e-10
    assert float((sample(model, x, solver="euler", steps=1, grid=ts).x - exact).abs().max()) > 1e-2


def test_ddpm_equals_ddim_eta_one(gmm2d):
    model = ExactModel(gmm2d, LinearVP())
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a = sample(model, x, solver="ddpm", steps=20, generator=torch.Generator().manual_seed(9)).x
    b = sample(model, x, solver="ddim", steps=20, eta=1.0, generator=torch.Generator().manual_seed(9)).x
    assert torch.allclose(a, b, atol=1e-10)


def _moments_match(x, g, n_se=4.0):
    ref = g.sample(200_000, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    se_mean = ref.std(0) / math.sqrt(len(x))
    ok_mean = ((x.mean(0) - ref.mean(0)).abs() < n_se * se_mean).all()
    se_var = ref.var(0) * math.sqrt(2 / len(x))
    ok_var = ((x.var(0) - ref.var(0)).abs() < n_se * se_var + 0.01).all()
    frac, frac_ref = (x[:, 0] > 0).double().mean(), (ref[:, 0] > 0).double().mean()
    ok_frac = abs(frac - frac_ref) < n_se * math.sqrt(frac_ref * (1 - frac_ref) / len(x))
    return bool(ok_mean and ok_var and ok_frac)


@pytest.mark.parametrize(
    "solver,opts",
    [("ddpm", {}), ("euler_maruyama", {"eta": 1.0}), ("euler_maruyama", {"eta": 0.5}), ("heun", {"churn": 10.0})],
)
def test_stochastic_samplers_reach_the_data_distribution(gmm2d, solver, opts):
    """Mean, variance and mode weight of 20k samples agree with the data (catches a wrong (1+eta^2)/2 factor)."""
    model = ExactModel(gmm2d, LinearVP())
    gen = torch.Generator().manual_seed(6)
    steps = 150 if solver == "heun" else 300  # Heun makes 2 calls per step
    out = sample(model, shape=(20_000, 2), solver=solver, steps=steps, grid="uniform", generator=gen, **opts).x
    assert _moments_match(out.double(), gmm2d)


def test_wrong_noise_factor_is_detected(gmm2d):
    """The moment check above has power: a score off by a factor 2 (as a wrong (1 + eta^2)/2 would give) fails it."""
    from diffusio.samplers.sde import sample_euler_maruyama

    class HalfScore(torch.nn.Module):
        path = LinearVP()

        def predict(self, x, t, kind="x0", **cond):
            from diffusio.core.parametrization import convert

            s = ExactModel(gmm2d, self.path).predict(x, t, "score") * 0.5
            return convert(s, "score", kind, x, t, self.path)

    ts = torch.linspace(1.0, 1e-3, 201, dtype=torch.float64)
    x = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    out = sample_euler_maruyama(HalfScore(), x, ts, generator=torch.Generator().manual_seed(8))
    assert not _moments_match(out, gmm2d)


def test_nfe_reported(gmm2d):
    model = ExactModel(gmm2d, LinearVP())
    for name in ["euler", "heun", "ddim", "ddpm", "euler_maruyama"]:
        res = sample(model, shape=(8, 2), solver=name, steps=7)
        assert res.nfe == SOLVERS[name].nfe(7), name
    assert sample(model, shape=(8, 2), solver="ddim", steps=7, denoise=True).nfe == 8


def test_sample_errors(gmm2d):
    model = ExactModel(gmm2d, LinearVP())
    with pytest.raises(ValueError, match=r"unknown solver 'dpm9'; valid: .*ddim.*heun"):
        sample(model, shape=(2, 2), solver="dpm9")
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        sample(model, shape=(2, 2), solver="euler", steps=0)
    with pytest.raises(ValueError, match="unknown option.*etta.*valid: eta"):
        sample(model, shape=(2, 2), solver="ddim", etta=0.3)
    with pytest.raises(ValueError, match="exactly one of x"):
        sample(model, solver="ddim")
    with pytest.raises(ValueError, match="NaN"):
        sample(model, torch.full((2, 2), float("nan")), solver="ddim")
    with pytest.raises(ValueError, match="t_min"):
        sample(model, shape=(2, 2), solver="ddim", t_min=2.0)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2\)"):
        sample(model, shape=(2, 3), solver="ddim")


def test_kernel_samplers_are_their_kernels_driven_over_the_grid(gmm2d):
    """A single-step solver declared from its kernel equals the hand-written loop over that kernel, shows the
    kernel's options (with their defaults) to the registry, and refuses a negative eta by name."""
    import inspect

    from diffusio.samplers import sample_euler_maruyama
    from diffusio.samplers.kernels import euler_maruyama_step

    model = ExactModel(gmm2d, LinearVP())
    ts = torch.linspace(1.0, 1e-3, 9, dtype=torch.float64)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    out = sample_euler_maruyama(model, x, ts, eta=0.5, generator=g1)
    y = x
    for i in range(len(ts) - 1):
        y, _ = euler_maruyama_step(model, y, ts[i], ts[i + 1], eta=0.5, generator=g2)
    assert torch.equal(out, y)
    params = inspect.signature(sample_euler_maruyama).parameters
    assert params["eta"].default == 1.0 and "generator" in params
    assert SOLVERS["euler_maruyama"].options() == ["eta", "w2"] and SOLVERS["ddpm"].options() == []
    with pytest.raises(ValueError, match="eta must be >= 0"):
        sample(model, x, solver="ddim", steps=4, eta=-0.1)
