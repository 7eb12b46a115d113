"""Fast samplers (issue 3): measured orders, equivalences, SDE variants, DPM-Solver-v3 statistics, EVODiff, errors."""

import math

import pytest
import torch
from bench import sde_order

from diffusio.core.paths import EDM, DiscreteDDPM, LinearVP
from diffusio.core.timesteps import get_timesteps
from diffusio.data import GaussianMixture
from diffusio.models import ExactModel
from diffusio.models.base import CountingModel
from diffusio.samplers import SOLVERS, sample
from diffusio.samplers.dpm import fast_orders, sample_dpm_solver, sample_dpmpp_2m, sample_dpmpp_3m
from diffusio.samplers.dpm_v3 import (
    Statistics,
    estimate_statistics,
    keep_n,
    load_statistics,
    sample_dpm_v3,
    save_statistics,
    statistics_for,
)
from diffusio.samplers.evodiff import sample_evodiff
from diffusio.samplers.kernels import phi
from diffusio.samplers.ode import sample_ddim
from diffusio.samplers.unipc import sample_unipc

# (solver, options, step counts in the asymptotic regime); declared order from the registry.
ORDER_CASES = [
    ("dpm_solver_1", {}, (32, 64, 128)),
    ("dpm_solver_2", {}, (16, 32, 64)),
    ("dpm_solver_3", {}, (16, 32, 64)),
    ("dpm_solver_fast", {}, (48, 96, 192)),
    ("dpmpp_2s", {}, (32, 64, 128)),
    ("dpmpp_2m", {}, (32, 64, 128)),
    ("dpmpp_3m", {}, (64, 128, 256)),
    ("dpmpp_3m_official", {}, (64, 128, 256)),
    ("unipc", {}, (32, 64, 128)),
    ("unipc3", {}, (64, 128, 256)),
    ("ipndm", {}, (128, 256, 512)),
    ("evodiff", {}, (64, 128, 256)),
]


def measured_order(model, solver, x, ref, steps, **opts):
    errs = []
    for n in steps:
        out = sample(model, x, solver=solver, steps=n, grid="logsnr", **opts).x
        errs.append(float((out - ref).pow(2).sum(1).mean().sqrt()))
    return [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)], errs


@pytest.fixture(scope="module")
def setup2d():
    g = GaussianMixture(
        torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]]), torch.tensor([0.5, 0.6, 0.4]), [0.3, 0.3, 0.4]
    )
    path = LinearVP()
    model = ExactModel(g, path)
    x = path.prior_sample((64, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = sample(model, x, solver="adaptive", steps=1, rtol=1e-10, atol=1e-10).x
    return g, path, model, x, ref


@pytest.mark.parametrize("solver,opts,steps", ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
def test_measured_order(setup2d, solver, opts, steps):
    _, _, model, x, ref = setup2d
    orders, errs = measured_order(model, solver, x, ref, steps, **opts)
    assert abs(orders[-1] - SOLVERS[solver].order) < 0.3, (orders, errs)


def test_official_3m_coefficient_is_second_order(setup2d):
    """The peers' 3M coefficient (phi_3 on the second divided difference) is exact only for linear x0(lambda)."""
    _, _, model, x, ref = setup2d
    orders, errs = measured_order(model, "dpmpp_3m", x, ref, (64, 128, 256), variant="official")
    assert abs(orders[-1] - 2) < 0.3, (orders, errs)


def test_dpm_v3_order(setup2d, tmp_path):
    g, path, model, x, ref = setup2d
    data = g.sample(512, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stats = estimate_statistics(model, data, n_grid=160, progress=False)
    errs = []
    for n in (10, 20, 40):
        ts = get_timesteps(path, n, "logsnr")
        errs.append(float((sample_dpm_v3(model, x, ts, statistics=stats) - ref).pow(2).sum(1).mean().sqrt()))
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert abs(orders[-1] - SOLVERS["dpm_v3"].order) < 0.3, (orders, errs)
    # first-order v3 with the statistics beats DDIM clearly (brief: ratio ~0.37)
    ts = get_timesteps(path, 10, "logsnr")
    e1 = float((sample_dpm_v3(model, x, ts, statistics=stats, order=1, use_corrector=False) - ref).abs().mean())
    e_ddim = float((sample_ddim(model, x, ts) - ref).abs().mean())
    assert e1 < 0.6 * e_ddim
    # l lies in (0, 1], ~1 in the Gaussian regime, ~0 near the data
    assert (stats.l > 0).all() and (stats.l <= 1 + 1e-6).all()
    assert float(stats.l[0].min()) > 0.99 and float(stats.l[-1].max()) < 0.01


def test_lower_order_final_policies(setup2d):
    """True lowers the last orders only on short runs (3M: < 8 steps, others: < 15), "always" on every run."""
    _, path, model, x, _ = setup2d
    for solver, below in (("dpmpp_3m", 8), ("dpmpp_2m", 15), ("unipc", 15)):
        for steps in (below - 1, below):
            ts = get_timesteps(path, steps, "logsnr")
            run = lambda lof: sample(model, x, solver=solver, grid=ts, lower_order_final=lof).x  # noqa: E731
            assert torch.equal(run("always"), run(True)) == (steps < below), (solver, steps)
            assert torch.equal(run(False), run(True)) == (steps >= below), (solver, steps)


def test_phi_functions():
    for k in (1, 2, 3, 4):
        for z in (-3.0, -0.7, -0.3, -1e-4, 1e-4, 0.3, 0.7, 3.0):
            exact = sum(z**n / math.factorial(n + k) for n in range(60))  # the defining series, summed far out
            assert abs(phi(k, z) - exact) < 1e-12 * max(1.0, abs(exact))


# --- equivalences ---------------------------------------------------------------------------------------------------


def test_dpm_solver_1_equals_ddim(setup2d):
    _, path, model, x, _ = setup2d
    ts = get_timesteps(path, 10, "logsnr")
    assert torch.allclose(sample_dpm_solver(model, x, ts, order=1), sample_ddim(model, x, ts), atol=1e-12)


def test_dpmpp_2m_first_step_is_first_order(setup2d):
    _, path, model, x, _ = setup2d
    ts = get_timesteps(path, 10, "logsnr")
    steps = []
    sample_dpmpp_2m(model, x, ts, callback=steps.append)
    assert torch.allclose(steps[0].x, sample_ddim(model, x, ts[:2]), atol=1e-12)
    # and the second step is not (the history is used)
    assert not torch.allclose(steps[1].x, sample_ddim(model, steps[0].x, ts[1:3]), atol=1e-6)


def test_unipc_without_corrector_is_its_predictor(setup2d):
    """UniP-1 is DDIM and UniP-2 (bh2) is DPM-Solver++(2M); the corrector changes the result."""
    _, path, model, x, _ = setup2d
    ts = get_timesteps(path, 12, "logsnr")
    unip = lambda o: sample_unipc(model, x, ts, order=o, use_corrector=False)  # noqa: E731
    assert torch.allclose(unip(1), sample_ddim(model, x, ts), atol=1e-12)
    assert torch.allclose(unip(2), sample_dpmpp_2m(model, x, ts), atol=1e-12)
    assert not torch.allclose(sample_unipc(model, x, ts, order=2), unip(2), atol=1e-4)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_v3_trivial_statistics_is_taylor_data_form(setup2d, order):
    _, path, model, x, _ = setup2d
    stats = Statistics.trivial(path, (2,), n_grid=240)
    ts = get_timesteps(path, 12, "logsnr")
    out = sample_dpm_v3(model, x, ts, statistics=stats, order=order, use_corrector=False, lower_order_final=False)
    ref = {
        1: lambda: sample_ddim(model, x, ts),
        2: lambda: sample_dpmpp_2m(model, x, ts, variant="taylor", lower_order_final=False),
        3: lambda: sample_dpmpp_3m(model, x, ts, variant="taylor3", lower_order_final=False),
    }[order]()
    assert float((out - ref).abs().max()) < 1e-9


def test_sde_variants_reduce_to_ode_and_reach_the_data(setup2d):
    g, path, model, x, _ = setup2d
    ts = get_timesteps(path, 12, "logsnr")
    for sde, ode in (("dpmpp_2m_sde", "dpmpp_2m"), ("dpmpp_3m_sde", "dpmpp_3m")):
        a = sample(model, x, solver=sde, grid=ts, eta=0.0, generator=torch.Generator().manual_seed(0)).x
        assert torch.allclose(a, sample(model, x, solver=ode, grid=ts).x, atol=1e-12)
    gen = torch.Generator().manual_seed(3)
    out = sample(model, shape=(20_000, 2), solver="dpmpp_2m_sde", steps=100, generator=gen).x.double()
    ref = g.sample(200_000, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert ((out.mean(0) - ref.mean(0)).abs() < 4 * ref.std(0) / math.sqrt(len(out))).all()
    assert ((out.var(0) - ref.var(0)).abs() < 4 * ref.var(0) * math.sqrt(2 / len(out)) + 0.01).all()
    # seeded: same generator seed, same samples; different seed, different samples
    run = lambda s: sample(model, x, solver="dpmpp_3m_sde", steps=8, generator=torch.Generator().manual_seed(s)).x  # noqa: E731
    assert torch.equal(run(1), run(1)) and not torch.allclose(run(1), run(2))


@pytest.mark.parametrize("solver", ["euler_maruyama", "ddpm", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_sde_weak_order_on_gaussian_data(solver):
    """Exact weak order (moments from the sampler's affine map, no Monte Carlo) matches the declared order."""
    rows = sde_order.gaussian_weak_errors(solver, (64, 128, 256), **sde_order.OPTIONS[solver])
    order = sde_order.measured_order(rows)
    assert order is not None and abs(order - SOLVERS[solver].order) < 0.3, [r["err_m2"] for r in rows]


def test_sde_weak_order_on_a_mixture():
    """Monte Carlo weak errors on the 1-D two-mode mixture (nonlinear denoiser): DDPM first, 2M-SDE second order."""
    for solver, steps in (("ddpm", (32, 64)), ("dpmpp_2m_sde", (16, 32))):
        rows = sde_order.weak_errors(solver, steps, 100_000, **sde_order.OPTIONS[solver])
        order = sde_order.measured_order(rows)
        assert order is not None and abs(order - SOLVERS[solver].order) < 0.3, (solver, rows)


def test_nfe_accounting(setup2d):
    _, _, model, _, _ = setup2d
    stats = Statistics.trivial(model.path, (2,), n_grid=120)
    for name, spec in SOLVERS.items():
        if spec.calls_per_step is None or (spec.stochastic and name in ("ddpm", "euler_maruyama")):
            continue
        if name == "flowmap":  # needs a FlowMapModel; its call count is tested in tests/test_flowmap.py
            continue
        opts = {"statistics": stats} if "statistics" in spec.needs else {}
        res = sample(model, shape=(4, 2), solver=name, steps=6, generator=torch.Generator().manual_seed(0), **opts)
        assert res.nfe == spec.nfe(6), name
    assert fast_orders(10) == [3, 3, 3, 1] and fast_orders(9) == [3, 3, 2, 1] and fast_orders(8) == [3, 3, 2]


# --- DPM-Solver-v3 statistics ---------------------------------------------------------------------------------------


def test_ems_recovers_gaussian_l():
    """For N(mu, s^2) data, l = sigma^2 / (alpha^2 s^2 + sigma^2) exactly (brief test 5)."""
    mu, s = torch.tensor([[0.3, -0.2]], dtype=torch.float64), 0.7
    path = LinearVP()
    model = ExactModel(GaussianMixture(mu, s), path)
    data = GaussianMixture(mu, s).sample(256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stats = estimate_statistics(model, data, n_grid=20, progress=False)
    t = path.t_of_log_snr(stats.lams)
    a2, s2 = path.alpha(t) ** 2, path.sigma(t) ** 2
    exact = s2 / (a2 * s**2 + s2)
    assert torch.allclose(stats.l, exact[:, None].expand_as(stats.l), rtol=1e-8, atol=1e-10)


def test_ems_hutchinson_matches_exact_diagonal(setup2d):
    g, _, model, _, _ = setup2d
    data = g.sample(2048, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = estimate_statistics(model, data, n_grid=8, progress=False)
    hutch = estimate_statistics(
        model, data, n_grid=8, probes=8, exact_below=0, generator=torch.Generator().manual_seed(1), progress=False
    )
    assert float((exact.l - hutch.l).abs().max()) < 0.03


def test_dpm_v3_on_a_ring_of_narrow_components():
    """Regression: on 8 narrow components on a ring (the bench's ring2d) f = e^{-lambda} eps - l x/alpha is a small
    difference of large terms near the prior (E f = 0 by symmetry), and the old raw-moment estimator of Var(f)
    divided cancellation noise by ~0: s ~ 1e10, inf samples at every step count."""
    ang = torch.arange(8, dtype=torch.float64) * math.pi / 4
    g = GaussianMixture(1.5 * torch.stack([ang.cos(), ang.sin()], 1), 0.2)
    path = DiscreteDDPM()
    model = ExactModel(g, path)
    data = g.sample(256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stats = estimate_statistics(model, data, n_grid=60, generator=torch.Generator().manual_seed(1), progress=False)
    for name in ("l", "s", "b", "L", "S", "B", "I", "C"):
        assert torch.isfinite(getattr(stats, name)).all(), name
    assert float(stats.s.abs().max()) < 10
    x = path.prior_sample((128, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = sample(model, x, solver="adaptive", steps=1, rtol=1e-8, atol=1e-8).x
    for n in (4, 5, 6, 8, 10):
        ts = get_timesteps(path, n, "logsnr")
        out = sample_dpm_v3(model, x, ts, statistics=stats)
        assert torch.isfinite(out).all(), n
    # at 10 steps the statistics pay off clearly (measured ~0.03 vs 0.08); at 4-6 steps v3 is sensitive to the
    # Monte Carlo error of 256 samples (bench/results/solvers.md uses 1024)
    err = float((out - ref).pow(2).sum(1).mean().sqrt())
    err_2m = float((sample_dpmpp_2m(model, x, ts) - ref).pow(2).sum(1).mean().sqrt())
    assert err < 0.6 * err_2m, (err, err_2m)


def test_v3_statistics_cache_and_missing_error(setup2d):
    g, path, model, x, _ = setup2d
    with pytest.raises(ValueError, match=r"no DPM-Solver-v3 statistics for this model.*statistics_for"):
        sample(ExactModel(GaussianMixture(torch.zeros(1, 2), 0.9), path), x, solver="dpm_v3", steps=5)
    data = g.sample(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stats = statistics_for(model, data, n_grid=24, progress=False, recompute=True)
    loaded = load_statistics(model)
    assert torch.equal(loaded.l, stats.l) and torch.equal(loaded.b, stats.b)
    save_statistics(stats, model)
    out = sample(model, x, solver="dpm_v3", steps=6)  # found in the cache
    assert torch.isfinite(out.x).all() and out.nfe == 6
    with pytest.raises(ValueError, match="statistics cover"):
        sample(model, x, solver="dpm_v3", steps=6, t_min=0.01, statistics=stats)
    with pytest.raises(ValueError, match="too many for a statistics grid"):
        sample(model, x, solver="dpm_v3", steps=30, statistics=stats)


def test_v3_corrector_keeps_n(setup2d):
    """The cached eps after a correction satisfies sigma eps_new - l x_c == sigma eps_old - l x_old (brief test 4),
    and the corrector changes the result without extra calls."""
    g, path, model, x, _ = setup2d
    x_c = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    e, l, sigma = torch.randn_like(x), torch.tensor([0.3, 0.8], dtype=x.dtype), 0.4
    assert torch.allclose(sigma * keep_n(e, x, x_c, l, sigma) - l * x_c, sigma * e - l * x, atol=1e-12)
    stats = estimate_statistics(model, g.sample(256, generator=torch.Generator().manual_seed(0)), n_grid=24)
    ts = get_timesteps(path, 6, "logsnr")
    counted = CountingModel(model)
    on = sample_dpm_v3(counted, x, ts, statistics=stats)
    off = sample_dpm_v3(model, x, ts, statistics=stats, use_corrector=False)
    assert counted.calls == 6 and not torch.allclose(on, off, atol=1e-6)


# --- EVODiff --------------------------------------------------------------------------------------------------------


def test_evodiff_beats_ddim_and_counts_calls():
    """EDM schedule, 1-D two-mode mixture, batch-level projections (evodiff.md tests 1, 3-5)."""
    path = EDM()
    g = GaussianMixture(torch.tensor([[-1.0], [1.0]]), torch.tensor([0.3, 0.4]), [0.4, 0.6])
    model = ExactModel(g, path)
    x = path.prior_sample((400, 1), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = sample(model, x, solver="adaptive", steps=1, rtol=1e-10, atol=1e-10).x
    errs = {}
    for n in (8, 10, 15, 20, 40):
        ts = get_timesteps(path, n, "logsnr")
        counted = CountingModel(model)
        out = sample_evodiff(counted, x, ts)
        assert counted.calls == n and torch.isfinite(out).all()
        errs[n] = float((out - ref).abs().mean())
        if n <= 20:
            assert errs[n] < 0.7 * float((sample_ddim(model, x, ts) - ref).abs().mean()), n
    assert errs[40] < errs[10]
    ts = get_timesteps(path, 10, "logsnr")
    assert torch.allclose(sample_evodiff(model, x, ts, order=1), sample_ddim(model, x, ts), atol=1e-12)
    with pytest.raises(ValueError, match="order must be 1 or 2 for evodiff"):
        sample_evodiff(model, x, ts, order=3)


# --- errors -----------------------------------------------------------------------------------------------------------


def test_bad_input_errors(setup2d):
    _, path, model, x, _ = setup2d
    for name in ("dpmpp_3m", "unipc3", "ipndm", "dpm_solver_fast", "dpm_v3"):
        need = SOLVERS[name].min_steps
        with pytest.raises(ValueError, match=rf"steps must be an integer >= {need} for solver '{name}'.*lower-order"):
            sample(model, x, solver=name, steps=need - 1)
    ts = get_timesteps(path, 2, "logsnr")
    with pytest.raises(ValueError, match=r"steps must be >= 3 for dpmpp_3m \(got steps=2\)"):
        sample_dpmpp_3m(model, x, ts)
    with pytest.raises(ValueError, match=r"steps must be >= 3 for unipc"):
        sample_unipc(model, x, ts, order=3)
    bad = torch.tensor([1.0, 0.3, 0.5, 0.001], dtype=torch.float64)
    for fn in (sample_dpmpp_2m, sample_unipc, sample_dpm_solver, sample_evodiff):
        with pytest.raises(ValueError, match="strictly decreasing"):
            fn(model, x, bad)
    with pytest.raises(ValueError, match=r"strictly decreasing.*ts\[1\]=0.3 is not above ts\[2\]=0.5; pass distinct"):
        sample(model, x, solver="dpmpp_2m", grid=bad)
    with pytest.raises(ValueError, match="variant must be one of"):
        sample(model, x, solver="dpmpp_3m", steps=5, variant="midpoint")
    with pytest.raises(ValueError, match="unknown option.*order"):
        sample(model, x, solver="dpm_solver_2", steps=5, order=3)
    with pytest.raises(ValueError, match="second_order must be one of"):
        sample(model, x, solver="dpmpp_3m", steps=5, second_order="heun")
    with pytest.raises(ValueError, match="lower_order_final must be True, False, 'always' or a step count"):
        sample(model, x, solver="unipc", steps=5, lower_order_final="sometimes")
    # DPM-Solver-v3: statistics for another shape, a non-monotone grid, a bad estimator option
    stats = Statistics.trivial(path, (3,), n_grid=60)
    with pytest.raises(ValueError, match=r"statistics are for 3 dimensions, x has shape \(64, 2\)"):
        sample(model, x, solver="dpm_v3", steps=5, statistics=stats)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_dpm_v3(model, x, bad, statistics=stats)
    with pytest.raises(ValueError, match="var_floor must be >= 0"):
        estimate_statistics(model, torch.zeros(4, 2), var_floor=-1.0)
