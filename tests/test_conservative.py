"""Conservative (energy) models, intrinsic dimension, decomposition and Fokker–Planck residuals on exact mixtures."""

import pytest
import torch
from torch import nn

from diffusio.analysis.decomposition import fit_conservative_part, gauge_residual, jacobian_asymmetry
from diffusio.analysis.fokker_planck import divergence, log_density_residual, ode_sde_gap, score_fp_residual
from diffusio.analysis.intrinsic import denoiser_spectrum, flow_map_spectrum, intrinsic_dimension
from diffusio.core.parametrization import convert
from diffusio.core.paths import LinearVP, RectifiedFlow
from diffusio.data import GaussianMixture
from diffusio.metrics import sliced_wasserstein
from diffusio.models import ExactModel, Model, ModelWrapper
from diffusio.nets import MLP
from diffusio.nets.energy import EnergyMLP, GradientNet
from diffusio.samplers import sample
from diffusio.training import NetFit
from diffusio.training.losses import DiffusionLoss

F64 = torch.float64


def _low_rank_mixture(k: int, d: int, seed: int = 0, null_std: float = 1e-3) -> GaussianMixture:
    """Two components in R^d, each with covariance of rank k (variance 1 on k random directions, null_std^2 else)."""
    g = torch.Generator().manual_seed(seed)
    covs = []
    for _ in range(2):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
        ev = torch.cat([torch.ones(k, dtype=F64), torch.full((d - k,), null_std**2, dtype=F64)])
        covs.append(q @ torch.diag(ev) @ q.T)
    covs = torch.stack(covs)
    means = torch.zeros(2, d, dtype=F64)
    means[1, 0] = 12.0
    return GaussianMixture(means, 0.5 * (covs + covs.mT))


class _LogDensity(nn.Module):
    """The exact log p_t of a mixture as a scalar network ``(x, t) -> (B,)``."""

    def __init__(self, mixture, path):
        super().__init__()
        self.mixture, self.path = mixture, path

    def forward(self, x, t, y=None):
        return self.mixture.log_prob(x, t, self.path)


class _ScaledScore(ModelWrapper):
    """The inner score times ``factor`` for t in [lo, hi] (a field that is no family's score)."""

    def __init__(self, inner, factor, lo=0.0, hi=1.0):
        super().__init__(inner)
        self.factor, self.lo, self.hi = factor, lo, hi

    def predict(self, x, t, kind="x0", **cond):
        s = self.inner.predict(x, t, "score", **cond)
        mask = ((t >= self.lo) & (t <= self.hi)).to(s.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        s = s * (1 + (self.factor - 1) * mask)
        return convert(s, "score", kind, x, t, self.path)


@pytest.mark.parametrize(("k", "d"), [(1, 3), (2, 5), (3, 6), (5, 8)])
@pytest.mark.parametrize("rule", ["threshold", "gap"])
def test_intrinsic_dimension_of_low_rank_mixture(k, d, rule):
    mix = _low_rank_mixture(k, d, seed=k * 10 + d)
    model = ExactModel(mix, LinearVP())
    x = mix.sample(16, generator=torch.Generator().manual_seed(1)).to(F64)
    ids = intrinsic_dimension(model, x, rule=rule)
    assert ids.tolist() == [k] * 16


def test_intrinsic_dimension_needs_a_small_noise_level():
    """At a noise level far above the data's spread every direction is 'normal': the estimate drops to 0."""
    mix = _low_rank_mixture(2, 4)
    model = ExactModel(mix, LinearVP())
    x = mix.sample(8, generator=torch.Generator().manual_seed(2)).to(F64)
    lam = denoiser_spectrum(model, x, noise_level=0.05)
    assert (lam[:, :2] > 0.99).all() and (lam[:, 2:] < 1e-2).all()
    assert (intrinsic_dimension(model, x, noise_level=30.0) == 0).all()
    with pytest.raises(ValueError, match="rule"):
        intrinsic_dimension(model, x, rule="largest")


def test_flow_map_spectrum_of_a_linear_manifold_is_analytic_and_converges():
    """One Gaussian N(0, U U^T + e^2 I): the PF-ODE flow map is linear with singular values
    sqrt(alpha^2 c + sigma^2) at t_min over the same at t_max, c = 1 (tangent) or e^2 (normal); Heun's error
    falls about 4x when the steps double."""
    d, k, e = 5, 2, 1e-3
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0), dtype=F64))
    cov = q @ torch.diag(torch.tensor([1.0] * k + [e**2] * (d - k), dtype=F64)) @ q.T
    model = ExactModel(GaussianMixture(torch.zeros(1, d, dtype=F64), (0.5 * (cov + cov.T))[None]), LinearVP())
    x_t = model.path.prior_sample((4, d), generator=torch.Generator().manual_seed(1)).to(F64)
    path = model.path
    t_min, t_max = path.t_of_noise_level(torch.tensor(0.01, dtype=F64)), torch.tensor(path.t_max, dtype=F64)
    ratio = lambda c: float((path.alpha(t_min) ** 2 * c + path.sigma(t_min) ** 2).sqrt()  # noqa: E731
                            / (path.alpha(t_max) ** 2 * c + path.sigma(t_max) ** 2).sqrt())  # fmt: skip
    want = torch.tensor([ratio(1.0)] * k + [ratio(e**2)] * (d - k), dtype=F64).expand(4, d)
    errs = []
    for steps in (20, 40):
        sv, end = flow_map_spectrum(model, x_t, noise_level=0.01, steps=steps)
        errs.append(float(((sv - want) / want).abs().max()))
    assert errs[1] < 0.05 and errs[1] < 0.35 * errs[0], errs
    assert (sv[:, :k] > 0.5).all() and (sv[:, k:] < 0.05).all() and end.shape == x_t.shape
    for rule in ("gap", "threshold"):
        assert intrinsic_dimension(model, x_t, method="flow", prior=True, rule=rule, steps=20).tolist() == [k] * 4


@pytest.mark.parametrize(("k", "d", "rule"), [(1, 3, "gap"), (2, 5, "threshold"), (3, 6, "gap"), (5, 8, "threshold")])
def test_flow_map_intrinsic_dimension_of_low_rank_mixture(k, d, rule):
    """Prior probes through the PF-ODE of the exact mixture score: k singular values stay O(1), d - k collapse."""
    mix = _low_rank_mixture(k, d, seed=k * 10 + d)
    model = ExactModel(mix, LinearVP())
    x_t = model.path.prior_sample((8, d), generator=torch.Generator().manual_seed(0)).to(F64)
    sv, _ = flow_map_spectrum(model, x_t, steps=24)
    assert (sv[:, k - 1] > 0.5).all() and (sv[:, k] < 0.2).all()
    assert (sv[:, k + 1 :] < 0.02).all()  # the normal floor sigma(t_min)/sigma(t_max) = 0.01 off the means' axis
    assert intrinsic_dimension(model, x_t, method="flow", prior=True, rule=rule, steps=24).tolist() == [k] * 8


def test_flow_map_intrinsic_dimension_at_data_points_and_validation():
    """Local estimates at data points (encoded to t_max by the same ODE) agree with the score-Jacobian estimator."""
    mix = _low_rank_mixture(2, 4)
    model = ExactModel(mix, LinearVP())
    x = mix.sample(6, generator=torch.Generator().manual_seed(3)).to(F64)
    assert intrinsic_dimension(model, x, method="flow", rule="gap", steps=24).tolist() == [2] * 6
    assert intrinsic_dimension(model, x, method="score").tolist() == [2] * 6
    bads = [({"method": "hessian"}, "method"), ({"method": "flow", "t": 0.1}, "no t"), ({"prior": True}, "prior"),
            ({"method": "flow", "threshold": 1.5}, "threshold"), ({"method": "flow", "steps": 0}, "steps"),
            ({"method": "flow", "noise_level": -1.0}, "noise_level")]  # fmt: skip
    for bad, match in bads:
        with pytest.raises(ValueError, match=match):
            intrinsic_dimension(model, x, **bad)


def test_energy_model_of_exact_log_density_is_the_exact_score_with_symmetric_jacobian():
    torch.manual_seed(0)
    path = LinearVP()
    mix = GaussianMixture(torch.randn(3, 2, dtype=F64) * 2, torch.tensor([[0.5, 0.2], [0.3, 0.9], [0.6, 0.4]]))
    energy = Model(GradientNet(_LogDensity(mix, path)), path, prediction="score")
    x, t = torch.randn(64, 2, dtype=F64) * 2, torch.rand(64, dtype=F64) * 0.9 + 0.05
    torch.testing.assert_close(energy.score(x, t), mix.score(x, t, path), rtol=1e-9, atol=1e-9)
    assert jacobian_asymmetry(energy, x, t).max() < 1e-10


def test_energy_mlp_is_conservative_for_every_head_and_a_plain_mlp_is_not():
    torch.manual_seed(0)
    x, t = torch.randn(16, 3, dtype=F64), torch.rand(16, dtype=F64) * 0.8 + 0.1
    for kind in ("eps", "x0", "v", "score"):
        net = EnergyMLP(3, hidden=32, depth=2).double()
        nn.init.normal_(net.scalar.out[-1].weight)  # leave the zero map of the initialisation
        assert jacobian_asymmetry(Model(net, LinearVP(), kind), x, t).max() < 1e-6
    plain = MLP(3, hidden=32, depth=2).double()
    nn.init.normal_(plain.out[-1].weight)
    assert jacobian_asymmetry(Model(plain, LinearVP(), "eps"), x, t).min() > 0.1


def test_energy_model_trains_with_the_usual_loss_and_samples_under_no_grad():
    torch.manual_seed(0)
    model = Model(EnergyMLP(2, hidden=32, depth=1), RectifiedFlow(), "velocity")
    loss_fn = DiffusionLoss("velocity")
    x0 = torch.randn(64, 2) * 0.5 + 1.0
    opt = torch.optim.Adam(model.net.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        t, noise = loss_fn.draw(x0, model.path)
        loss = loss_fn(model, x0, t, noise).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    out = sample(model, shape=(32, 2), solver="heun", steps=8, generator=torch.Generator().manual_seed(0)).x
    assert torch.isfinite(out).all() and not out.requires_grad


def test_log_density_fp_residual_vanishes_for_the_exact_mixture_and_not_for_a_wrong_one():
    torch.manual_seed(0)
    path = LinearVP()
    mix = GaussianMixture(torch.randn(3, 2, dtype=F64) * 2, torch.tensor([[0.5, 0.2], [0.3, 0.9], [0.6, 0.4]]))
    x, t = torch.randn(500, 2, dtype=F64) * 2, torch.rand(500, dtype=F64) * 0.95 + 0.02
    exact = log_density_residual(lambda xx, tt: mix.log_prob(xx, tt, path), path, x, t)
    assert exact.abs().max() < 1e-8
    wide = GaussianMixture(mix.means * 1.0, torch.tensor([[0.5, 0.2], [0.3, 0.9], [0.6, 0.4]]) * 1.5)
    wrong = log_density_residual(lambda xx, tt: wide.log_prob(xx, tt * 0.7, path), path, x, t)
    assert wrong.abs().mean() > 1e-2


def test_score_fp_residual_exact_is_zero_grows_with_perturbation_and_is_grad_of_log_residual():
    torch.manual_seed(0)
    path = LinearVP()
    mix = GaussianMixture(torch.randn(3, 2, dtype=F64) * 2, torch.tensor([[0.5, 0.2], [0.3, 0.9], [0.6, 0.4]]))
    model = ExactModel(mix, path)
    x, t = torch.randn(200, 2, dtype=F64) * 2, torch.rand(200, dtype=F64) * 0.9 + 0.05
    assert score_fp_residual(model, x, t).abs().max() < 1e-8
    sizes = [score_fp_residual(_ScaledScore(model, c), x, t).abs().mean() for c in (1.05, 1.2, 1.5)]
    assert 1e-3 < sizes[0] < sizes[1] < sizes[2]
    # for s = grad u the score residual is grad_x of the log-density residual (both for a wrong u)
    wrong = Model(GradientNet(_LogDensity(mix, path)), path, "score")
    scaled = _ScaledScore(wrong, 1.3)
    xg = x.clone().requires_grad_(True)
    r_log = log_density_residual(lambda xx, tt: 1.3 * mix.log_prob(xx, tt, path), path, xg, t)
    (grad_r,) = torch.autograd.grad(r_log.sum(), xg)
    torch.testing.assert_close(score_fp_residual(scaled, x, t), grad_r, rtol=1e-7, atol=1e-7)


def test_hutchinson_fp_residual_above_exact_below():
    """One Gaussian in 20-D: the score's Jacobian is constant, so the Hutchinson residual is exact (zero) for the
    true score and non-zero for a perturbed one."""
    torch.manual_seed(0)
    d, path = 20, LinearVP()
    mix = GaussianMixture(torch.randn(1, d, dtype=F64), torch.rand(1, d, dtype=F64) + 0.3)
    model = ExactModel(mix, path)
    x, t = torch.randn(32, d, dtype=F64), torch.rand(32, dtype=F64) * 0.9 + 0.05
    g = torch.Generator().manual_seed(0)
    assert score_fp_residual(model, x, t, exact_below=4, probes=2, generator=g).abs().max() < 1e-8
    assert score_fp_residual(_ScaledScore(model, 1.3), x, t, exact_below=4, generator=g).abs().mean() > 1e-2


def test_hutchinson_divergence_is_unbiased():
    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=1, out_dim=2).double()
    nn.init.normal_(net.out[-1].weight)
    x, t = torch.randn(4, 2, dtype=F64, requires_grad=True), torch.full((4,), 0.3, dtype=F64)
    u = net(x, t)
    exact = divergence(u, x)
    g = torch.Generator().manual_seed(0)
    ests = torch.stack([divergence(u, x, probes=1, generator=g) for _ in range(1500)])
    se = ests.std(0) / 1500**0.5
    assert ((ests.mean(0) - exact).abs() < 4 * se + 1e-12).all()


def test_decomposition_recovers_the_score_from_a_rotated_field():
    """s* + c A s* (A antisymmetric) has conservative part s* (Horvat & Pfister 2024, the gauge example)."""
    torch.manual_seed(0)
    path = LinearVP()
    mix = GaussianMixture(torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]]), torch.tensor([0.4, 0.5, 0.3]))
    exact = ExactModel(mix, path)

    class Rotated(ModelWrapper):
        def predict(self, x, t, kind="x0", **cond):
            s = self.inner.predict(x, t, "score")
            return convert(s + 2.0 * torch.stack([s[:, 1], -s[:, 0]], 1), "score", kind, x, t, self.path)

    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(4000, generator=g).to(F64)
    fit = NetFit(steps=400, batch_size=512, lr=3e-3, hidden=64, depth=2)
    dec = fit_conservative_part(Rotated(exact), x0, 0.3, fit=fit, generator=g)
    xt = path.perturb(x0[:1000], torch.randn(1000, 2, generator=g, dtype=F64), torch.full((1000,), 0.3, dtype=F64))
    grad, r = dec.parts(xt)
    s_true = exact.score(xt, 0.3)
    rel = ((grad - s_true) ** 2).sum(1).mean() / (s_true**2).sum(1).mean()
    assert rel < 0.05
    assert 0.75 < dec.relative_remainder < 0.85  # |r|^2 / |s|^2 = 4 / 5
    psis = [lambda z, w=w: torch.sin(z @ w) for w in torch.randn(5, 2, generator=g, dtype=F64)]
    for mean, se in gauge_residual(dec, xt, psis):
        assert abs(mean) < 3 * se + 0.05 * float((r**2).sum(1).mean().sqrt())


def test_ode_sde_gap_small_for_the_exact_score_large_for_a_perturbed_one():
    path = LinearVP()
    mix = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]]), 0.3)
    exact = ExactModel(mix, path)
    g = torch.Generator().manual_seed(0)
    swd = lambda a, b: sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(0))  # noqa: E731
    gap, _, _ = ode_sde_gap(exact, (2000, 2), swd, steps=100, generator=g)
    floor = swd(mix.sample(2000, generator=g), mix.sample(2000, generator=g))
    bad, _, _ = ode_sde_gap(_ScaledScore(exact, 1.5, 0.2, 0.8), (2000, 2), swd, steps=100, generator=g)
    assert gap < 3 * floor
    assert bad > 3 * max(gap, floor), (gap, floor, bad)


def test_fokker_planck_loss_penalty_zero_on_exact_score_and_trains_down():
    from diffusio.training.regularizers import FokkerPlanckLoss

    path = LinearVP()
    mix = GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.5]]), 0.4)
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(64, generator=g).to(F64)
    loss = FokkerPlanckLoss(DiffusionLoss("eps"), weight=1.0, points=32)
    t, noise = loss.draw(x0, path, g)
    assert loss.penalty(ExactModel(mix, path), x0, t, noise) < 1e-12
    assert loss.penalty(_ScaledScore(ExactModel(mix, path), 1.3), x0, t, noise) > 1e-3
    torch.manual_seed(0)
    model = Model(MLP(2, hidden=16, depth=1), path, "eps")
    nn.init.normal_(model.net.out[-1].weight, std=0.3)
    x0 = x0.float()
    opt = torch.optim.Adam(model.net.parameters(), lr=3e-3)
    pen = []
    for _ in range(30):
        p = loss.penalty(model, x0, t.float(), noise.float())
        opt.zero_grad()
        p.backward()
        opt.step()
        pen.append(float(p.detach()))
    assert pen[-1] < 0.5 * pen[0]
    assert torch.equal(
        FokkerPlanckLoss(DiffusionLoss("eps"), 0.0)(model, x0, t, noise), DiffusionLoss("eps")(model, x0, t, noise)
    )
    for bad in ({"weight": -1.0}, {"weight": float("nan")}, {"points": 0}):
        with pytest.raises(ValueError, match="fokker_planck"):
            FokkerPlanckLoss(DiffusionLoss("eps"), **bad)
