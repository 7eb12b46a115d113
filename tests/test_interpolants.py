"""Stochastic interpolants: exact fields, ODE transport, marginal-preserving SDE family, VP/RF equivalences,
objectives, data-to-data bridges and boundary-condition errors (stochastic-interpolants.md)."""

import functools
import math

import pytest
import torch

from diffusio.core.paths import RectifiedFlow, Trigonometric
from diffusio.data import GaussianMixture
from diffusio.families.interpolants import (
    BrownianGamma,
    ConstantEpsilon,
    CosineDown,
    FunctionCoefficient,
    GaussianMixtureFields,
    Interpolant,
    InterpolantLoss,
    InterpolantModel,
    LinearDown,
    LinearUp,
    ScaledGamma,
    SineUp,
    TapEpsilon,
    ZeroGamma,
    sample_ode,
    sample_sde,
)
from diffusio.metrics import sliced_wasserstein
from diffusio.models import ExactModel
from diffusio.nets import MLP
from diffusio.training import TrainConfig, Trainer

F64 = torch.float64
M, S = torch.tensor([3.0, -1.0], dtype=F64), 0.5


def _gauss_fields(it=None):
    it = it or Interpolant()
    return GaussianMixtureFields(it, GaussianMixture(torch.zeros(1, 2, dtype=F64), 1.0), GaussianMixture(M[None], S))


def _analytic(t, x):
    """Two-sided linear interpolant, gamma = sqrt(t(1-t)), rho_0 = N(0, I), rho_1 = N(m, s^2 I) (brief, tests)."""
    c = (1 - t) ** 2 + t**2 * S**2 + t * (1 - t)
    dc = -2 * (1 - t) + 2 * t * S**2 + 1 - 2 * t
    r = x - t[:, None] * M
    return M + (dc / (2 * c))[:, None] * r, -r / c[:, None], c


def _sw(a, b):
    return sliced_wasserstein(a, b, 128, generator=torch.Generator().manual_seed(0))


def test_exact_fields_match_the_analytic_gaussian_case():
    f = _gauss_fields()
    g = torch.Generator().manual_seed(0)
    t, x = torch.rand(64, generator=g, dtype=F64) * 0.98 + 0.01, 2 * torch.randn(64, 2, generator=g, dtype=F64)
    v, s, c = _analytic(t, x)
    assert torch.allclose(f.velocity(x, t), v, atol=1e-10)
    assert torch.allclose(f.score(x, t), s, atol=1e-10)
    # v = u - gamma gamma' s with u = E[dI | x] = m + Cov(dI, x_t)/C (x - t m), Cov(dI, x_t) = -(1 - t) + t s^2
    u = M + ((-(1 - t) + t * S**2) / c)[:, None] * (x - t[:, None] * M)
    assert torch.allclose(u - BrownianGamma().gg_dot(t)[:, None] * s, v, atol=1e-10)
    assert torch.allclose(f.eta(x, t), -BrownianGamma().value(t)[:, None] * s, atol=1e-10)


def test_ode_transport_reaches_rho1():
    x0 = torch.randn(20000, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    out = sample_ode(_gauss_fields(), x0, torch.linspace(0, 1, 201, dtype=F64))
    assert (out.mean(0) - M).abs().max() < 0.01 and (out.std(0) - S).abs().max() < 0.01


def _exact_xt(rho1, t, n, seed, interpolant=None, rho0=None):
    """Exact draws of x_t = a x_0 + b x_1 + gamma z (x_0 ~ rho0, default N(0, I))."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 2, generator=g, dtype=F64) if rho0 is None else rho0.sample(n, generator=g, dtype=F64)
    x1 = rho1.sample(n, generator=g, dtype=F64)
    z = torch.randn(n, 2, generator=g, dtype=F64)
    return (interpolant or Interpolant()).interpolate(x0, x1, z, torch.full((n,), t, dtype=F64))


RHO1 = GaussianMixture(
    torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]]), torch.tensor([0.5, 0.6, 0.4]), [0.3, 0.3, 0.4]
)
N_SDE, N_REF, TS = 4000, 20_000, torch.linspace(0.0, 1 - 1e-3, 201, dtype=F64)


@functools.cache
def _reference(t: float):
    """N_REF exact draws of x_t and the largest sliced W2 of three independent exact sets of N_SDE draws to them."""
    big = _exact_xt(RHO1, t, N_REF, 4)
    return big, max(_sw(_exact_xt(RHO1, t, N_SDE, s), big) for s in (5, 6, 7))


def _run_sde(epsilon, fields=None):
    fields = fields or GaussianMixtureFields(Interpolant(), GaussianMixture(torch.zeros(1, 2, dtype=F64), 1.0), RHO1)
    x, seen = torch.randn(N_SDE, 2, generator=torch.Generator().manual_seed(2), dtype=F64), {}
    g = torch.Generator().manual_seed(3)
    sample_sde(fields, x, TS, epsilon, generator=g, callback=lambda i, t, y: seen.update({i: y}))
    return {float(TS[i + 1]): seen[i] for i in (99, 199)}


@pytest.mark.parametrize("epsilon", [0.0, 0.3, 1.5, TapEpsilon(2.0)], ids=["ode", "eps0.3", "eps1.5", "tap"])
def test_sde_family_keeps_the_marginals(epsilon):
    """Forward SDEs with several epsilon(t) from rho_0 = N(0, I) have the exact law of x_t at t = 0.5 and
    t = 1 - 1e-3: sliced W2 to 20k exact draws within 1.5x what exact sets of the same size reach."""
    for t, x in _run_sde(epsilon).items():
        big, floor = _reference(t)
        assert _sw(x, big) < 1.5 * floor, (t, _sw(x, big), floor)


def test_sde_marginal_check_has_power():
    """The same check fails by far when the sign of the eps s term is wrong (drift v - eps s run forward)."""
    f = GaussianMixtureFields(Interpolant(), GaussianMixture(torch.zeros(1, 2, dtype=F64), 1.0), RHO1)

    class Flipped:
        velocity = f.velocity

        def velocity_and_score(self, x, t):
            return f.velocity(x, t), -f.score(x, t)

    for t, x in _run_sde(1.5, Flipped()).items():
        big, floor = _reference(t)
        assert _sw(x, big) > 10 * floor


def test_backward_sde_carries_rho1_to_rho0():
    """Backward SDE dX = (v - eps s) dt + sqrt(2 eps) dW_bar from rho_1 at t = 1 reaches N(0, I) at t = 0."""
    x1 = M + S * torch.randn(10000, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    out = sample_sde(
        _gauss_fields(), x1, torch.linspace(1.0, 0.0, 301, dtype=F64), 0.5, generator=torch.Generator().manual_seed(7)
    )
    se = 1 / math.sqrt(10000)
    assert out.mean(0).abs().max() < 4 * se and (out.std(0) - 1).abs().max() < 4 * se * math.sqrt(2) + 0.01


def test_vp_equivalence_and_rectified_flow():
    """One-sided trig SI with eps(t) = g^2(t_lib)/2: forward SDE drift v + eps s = minus the library reverse-SDE
    drift f x - g^2 s at t_lib = 1 - t. One-sided linear: v = minus the rectified-flow velocity."""
    data = GaussianMixture(torch.tensor([[1.0, 0.0], [-1.0, 0.5]]), torch.tensor([0.5, 0.3]))
    base = GaussianMixture(torch.zeros(1, 2, dtype=F64), 1.0)
    g = torch.Generator().manual_seed(8)
    t, x = torch.rand(32, generator=g, dtype=F64) * 0.9 + 0.05, torch.randn(32, 2, generator=g, dtype=F64)
    trig, path = GaussianMixtureFields(Interpolant(CosineDown(), SineUp(), ZeroGamma()), base, data), Trigonometric()
    tl = 1 - t
    eps = path.diffusion2(tl) / 2
    si_drift = trig.velocity(x, t) + eps[:, None] * trig.score(x, t)
    lib_drift = path.drift(tl)[:, None] * x - path.diffusion2(tl)[:, None] * data.score(x, tl, path)
    assert torch.allclose(si_drift, -lib_drift, atol=1e-8)
    lin = GaussianMixtureFields(Interpolant(gamma=ZeroGamma()), base, data)
    assert torch.allclose(lin.velocity(x, t), -ExactModel(data, RectifiedFlow()).predict(x, tl, "velocity"), atol=1e-8)


def test_one_sided_interpolant_as_a_library_path():
    p = Interpolant(gamma=ZeroGamma()).as_path()
    rf, t = RectifiedFlow(), torch.linspace(0.01, 0.99, 9, dtype=F64)
    for name in ("alpha", "sigma", "d_alpha", "d_sigma", "log_snr"):
        assert torch.allclose(getattr(p, name)(t), getattr(rf, name)(t), atol=1e-12), name
    assert torch.allclose(p.t_of_log_snr(p.log_snr(t)), t, atol=1e-12)
    with pytest.raises(ValueError, match="one-sided"):
        Interpolant().as_path()


class _ExactHeads(torch.nn.Module):
    """Exact fields dressed as an InterpolantModel (for the loss), optionally scaled by (1 + theta)."""

    def __init__(self, fields, heads=("velocity", "eta")):
        super().__init__()
        self.f, self.interpolant, self.heads, self.gaussian_base = fields, fields.interpolant, heads, True
        self.theta = torch.nn.Parameter(torch.zeros((), dtype=F64))

    def fields(self, x, t):
        return {h: getattr(self.f, h)(x, t) * (1 + self.theta) for h in self.heads}


def test_objectives_are_minimised_by_the_exact_fields():
    f = _gauss_fields()
    x1 = M + S * torch.randn(40000, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
    loss = InterpolantLoss(t_lo=0.05, t_hi=0.95)
    t, noise = loss.draw(x1, f.interpolant, torch.Generator().manual_seed(10))
    model = _ExactHeads(f)
    values = []
    for theta in (-0.05, 0.0, 0.05):
        model.theta.data.fill_(theta)
        values.append(float(loss(model, x1, t, noise).mean().detach()))
    assert values[1] < values[0] and values[1] < values[2], values


def test_antithetic_sampling_cuts_the_velocity_gradient_variance_near_the_ends():
    f = _gauss_fields()
    x1 = M + S * torch.randn(4000, 2, generator=torch.Generator().manual_seed(11), dtype=F64)
    variances = {}
    for anti in (True, False):
        loss = InterpolantLoss(t_lo=0.02, t_hi=0.02 + 1e-12, antithetic=anti)
        t, noise = loss.draw(x1, f.interpolant, torch.Generator().manual_seed(12))
        model = _ExactHeads(f, ("velocity",))
        per = loss(model, x1, t, noise)
        grads = torch.stack([torch.autograd.grad(p, model.theta, retain_graph=True)[0] for p in per[:400]])
        variances[anti] = float(grads.var())
    assert variances[True] < 0.1 * variances[False], variances


def test_data_to_data_bridge_with_exact_fields():
    """rho_0 and rho_1 both mixtures: the ODE and the SDE carry samples of one to the law of x_t near t = 1."""
    rho0, it = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), 0.3), Interpolant(gamma=BrownianGamma(0.5))
    f = GaussianMixtureFields(it, rho0, RHO1)
    t_end = float(TS[-1])
    big = _exact_xt(RHO1, t_end, N_REF, 4, it, rho0)
    floor = max(_sw(_exact_xt(RHO1, t_end, N_SDE, s, it, rho0), big) for s in (5, 6, 7))
    x0 = rho0.sample(N_SDE, generator=torch.Generator().manual_seed(13), dtype=F64)
    ode = sample_ode(f, x0, torch.linspace(0, t_end, 51, dtype=F64))
    sde = sample_sde(f, x0, TS, 0.3, generator=torch.Generator().manual_seed(16))
    assert _sw(ode, big) < 1.5 * floor and _sw(sde, big) < 1.5 * floor, (_sw(ode, big), _sw(sde, big), floor)
    assert _sw(x0, big) > 20 * floor


def test_training_a_bridge_runs_through_the_trainer():
    """The loss plugs into the Trainer (base draws from a data source; velocity + eta heads of one net)."""
    from diffusio.data.sources import FunctionSource

    src0 = FunctionSource(lambda n, g: torch.randn(n, 2, generator=g) * 0.3 - 2, (2,))
    src1 = FunctionSource(lambda n, g: torch.randn(n, 2, generator=g) * 0.3 + 2, (2,))
    model = InterpolantModel(MLP(2, hidden=32, depth=1, time_dim=8, out_dim=4), Interpolant(), gaussian_base=False)
    tr = Trainer(
        model,
        InterpolantLoss(base=src0),
        src1,
        TrainConfig(steps=60, batch_size=128, lr=3e-3, warmup=5, progress=False),
    )
    first = float(tr.loss(model, *tr._batch()[:3]).mean().detach())
    tr.fit()
    assert float(tr.loss(model, *tr._batch()[:3]).mean().detach()) < first
    v, s = model.paper_fields().velocity_and_score(torch.zeros(4, 2), torch.full((4,), 0.5))
    assert v.shape == s.shape == (4, 2)


def test_bad_coefficients_and_epsilon_are_clear_errors():
    with pytest.raises(ValueError, match=r"coefficient a must satisfy a\(0\) = 1"):
        Interpolant(FunctionCoefficient(lambda t: 0.9 - 0.9 * t, lambda t: -0.9 * torch.ones_like(t)))
    with pytest.raises(ValueError, match=r"coefficient b must satisfy .*b\(1\) = 1"):
        Interpolant(b=FunctionCoefficient(lambda t: 0.5 * t, lambda t: 0.5 * torch.ones_like(t)))
    with pytest.raises(ValueError, match=r"coefficient gamma must satisfy gamma\(0\) = 0"):
        Interpolant(gamma=FunctionCoefficient(lambda t: 1 - t, lambda t: -torch.ones_like(t)))
    with pytest.raises(ValueError, match="gamma must be > 0 on"):
        Interpolant(gamma=FunctionCoefficient(lambda t: -t * (1 - t), lambda t: 2 * t - 1))
    with pytest.raises(ValueError, match="deriv.*does not match"):
        Interpolant(a=FunctionCoefficient(lambda t: 1 - t, lambda t: torch.ones_like(t)))
    with pytest.raises(ValueError, match="k must be > 0"):
        BrownianGamma(-1.0)
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        ConstantEpsilon(-0.1)
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        TapEpsilon(-1.0)
    with pytest.raises(ValueError, match=r"epsilon\(t\) must be >= 0 at every step; got epsilon\(0\.5"):
        sample_sde(
            _gauss_fields(), torch.zeros(4, 2, dtype=F64), torch.linspace(0.5, 0.9, 3, dtype=F64), lambda t: t - 1
        )
    with pytest.raises(ValueError, match="heads must be"):
        InterpolantModel(MLP(2), Interpolant(), heads=("score",))
    assert Interpolant(LinearDown(), LinearUp(), ScaledGamma(2.0)).stochastic


class _ExactNet(torch.nn.Module):
    """A 'network' returning the exact (velocity, eta) of an interpolant to N(M, S^2 I) data, in paper time."""

    def __init__(self, fields):
        super().__init__()
        self.f, self.w = fields, torch.nn.Parameter(torch.zeros((), dtype=F64))

    def forward(self, x, t):
        return torch.cat([self.f.velocity(x, t), self.f.eta(x, t)], 1)


def test_interpolant_model_is_a_library_model_and_its_solvers_match_the_paper_time_integrators():
    """InterpolantModel in library time (data at t = 0): u(x, t) = -v(x, 1 - t); the registered si_ode equals the
    paper-time Heun integrator, and si_sde reaches the data's mean and spread (two-sided, gamma > 0)."""
    from diffusio.samplers import sample

    it = Interpolant()
    model = InterpolantModel(_ExactNet(_gauss_fields(it)), it)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.full((8,), 0.3, dtype=F64)
    assert torch.allclose(model.predict(x, t, "velocity"), -model.paper_fields().velocity(x, 1 - t), atol=1e-12)
    with pytest.raises(ValueError, match="two-sided interpolant .* no 'x0' head"):
        model(x, t)
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    grid = torch.linspace(1.0, 0.0, 41, dtype=F64)
    lib = sample(model, z, solver="si_ode", steps=40, grid=grid)
    from diffusio.families.interpolants import generate

    paper, _ = generate(model, z, 40)
    assert lib.nfe == 80 and torch.allclose(lib.x, paper, atol=1e-10)
    g = torch.Generator().manual_seed(2)
    sde = sample(model, z, solver="si_sde", steps=200, grid="uniform", t_min=1e-3, t_max=1 - 1e-3, generator=g).x
    se = S / math.sqrt(len(z))
    assert (sde.mean(0) - M).abs().max() < 5 * se and (sde.std(0) - S).abs().max() < 0.05, (sde.mean(0), sde.std(0))
