"""Searched grids and autotune, checked against closed forms on Gaussian data.

For 1-D data N(0, s^2) on a path (alpha, sigma), the exact denoiser is linear, D(x, t) = k(t) x with
k = alpha s^2 / (alpha^2 s^2 + sigma^2), so one DDIM step t -> t' multiplies x by
c(t, t') = alpha' k + sigma' (1 - alpha k) / sigma, while the exact flow multiplies it by
r(t, t') = sqrt((alpha'^2 s^2 + sigma'^2) / (alpha^2 s^2 + sigma^2)). The final RMS error of a grid is therefore
|prod_i c(t_i, t_{i+1}) - r(t_max, t_min)| * rms(x_T), and a teacher state at t is r(t_max, t) x_T: both the
global optimum of a 2-step grid and the dynamic programme's optimum can be found by brute force on the closed form.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from diffusio.core.paths import EDM, DiscreteDDPM, LinearVP
from diffusio.data import GaussianMixture
from diffusio.models import ExactModel
from diffusio.models.base import CountingModel
from diffusio.samplers import sample
from diffusio.samplers.tuning import (
    Fitness,
    Plan,
    SearchedGrid,
    autotune,
    dp_search,
    evolutionary_search,
    lambdas_of_grid,
    load_grid,
    model_fingerprint,
    optimise_logsnr,
    save_grid,
    teacher,
)

F64 = torch.float64
S = 0.5  # data std


def gauss_model(path, s=S):
    return ExactModel(GaussianMixture(torch.zeros(1, 1), s), path)


def c_ddim(path, ta, tb, s=S):
    a, sg, a2, s2 = path.alpha(ta), path.sigma(ta), path.alpha(tb), path.sigma(tb)
    k = a * s**2 / (a**2 * s**2 + sg**2)
    return a2 * k + s2 * (1 - a * k) / sg


def r_exact(path, ta, tb, s=S):
    var_a = path.alpha(ta) ** 2 * s**2 + path.sigma(ta) ** 2
    return ((path.alpha(tb) ** 2 * s**2 + path.sigma(tb) ** 2) / var_a).sqrt()


def ends(path):
    return torch.tensor(path.t_max, dtype=F64), torch.tensor(path.t_min, dtype=F64)


def two_step_optimum(path):
    """argmin over the middle lambda of the closed-form 2-step DDIM error (dense scan)."""
    hi, lo = ends(path)
    lam = torch.linspace(float(path.log_snr(hi)), float(path.log_snr(lo)), 40001, dtype=F64)[1:-1]
    tm = path.t_of_log_snr(lam)
    err = (c_ddim(path, hi, tm) * c_ddim(path, tm, lo) - r_exact(path, hi, lo)).abs()
    i = int(err.argmin())
    assert 50 < i < len(lam) - 50, "the closed-form optimum must be interior for the test to mean anything"
    return float(lam[i]), float(err[i])


def setup(path, n=64, seed=0):
    model = gauss_model(path)
    x = path.prior_sample((n, 1), generator=torch.Generator().manual_seed(seed))
    ref, _ = teacher(model, x, rtol=1e-9, atol=1e-9)
    return model, x, ref


def assert_valid_grid(ts, path, steps):
    assert ts.dtype == F64 and ts.shape == (steps + 1,)
    assert (ts[1:] < ts[:-1]).all(), "a searched grid must be strictly decreasing"
    assert float(ts[0]) == path.t_max and float(ts[-1]) == path.t_min
    assert (ts >= path.t_min).all() and (ts <= path.t_max).all()


@pytest.mark.parametrize("path", [LinearVP(), EDM()], ids=lambda p: p.name)
def test_fitness_is_the_closed_form_error(path):
    model, x, ref = setup(path)
    hi, lo = ends(path)
    tm = path.t_of_log_snr(torch.tensor(0.3, dtype=F64))
    fit = Fitness(model, "ddim", x, ref=ref)
    got = fit(torch.stack([hi, tm, lo]))
    want = float((c_ddim(path, hi, tm) * c_ddim(path, tm, lo) - r_exact(path, hi, lo)).abs()) * float(
        x.double().pow(2).mean().sqrt()
    )
    assert got == pytest.approx(want, rel=1e-4)
    assert fit.calls == 2 and fit.evaluations == 1


@pytest.mark.parametrize("path", [LinearVP(), EDM()], ids=lambda p: p.name)
def test_logsnr_optimiser_recovers_the_closed_form_optimum(path):
    lam_star, err_star = two_step_optimum(path)
    model, x, ref = setup(path)
    fit = Fitness(model, "ddim", x, ref=ref)
    res = optimise_logsnr(fit, 2, init="logsnr", max_evals=80, progress=False)
    assert_valid_grid(res.ts, path, 2)
    lam_mid = float(lambdas_of_grid(path, res.ts)[1])
    assert abs(lam_mid - lam_star) < 0.02, (lam_mid, lam_star)
    rms_x = float(x.double().pow(2).mean().sqrt())
    assert res.fitness == pytest.approx(err_star * rms_x, rel=1e-3)
    assert res.calls == fit.calls and res.calls <= 2 * 80


def test_evolutionary_search_finds_the_optimum_and_memoises():
    path = LinearVP()
    lam_star, _ = two_step_optimum(path)
    model, x, ref = setup(path)
    fit = Fitness(model, "ddim", x, ref=ref)
    res = evolutionary_search(fit, 2, lattice=200, population=12, epochs=5, generator=torch.Generator().manual_seed(0),
                              progress=False)  # fmt: skip
    assert_valid_grid(res.ts, path, 2)
    spacing = (float(path.log_snr(torch.tensor(path.t_min))) - float(path.log_snr(torch.tensor(path.t_max)))) / 200
    assert abs(float(lambdas_of_grid(path, res.ts)[1]) - lam_star) <= 1.5 * spacing
    assert fit.calls == 2 * fit.evaluations  # the memo: each distinct grid costs exactly one run
    assert fit.evaluations <= 12 * 5
    assert res.history == sorted(res.history, reverse=True)  # elitist: the best never gets worse


class _Synthetic:
    """A fitness with a hidden optimum and no diffusion: sum_i |lambda_i - lambda*_i| (AutoDiffusion test 2)."""

    def __init__(self, path, target):
        self.model = gauss_model(path)
        self.solver, self.calls, self.target, self.evaluations = "ddim", 0, target, 0

    def __call__(self, ts):
        self.evaluations += 1
        return float((lambdas_of_grid(self.model.path, ts)[1:-1] - self.target).abs().sum())


def test_evolutionary_search_on_a_synthetic_fitness_beats_uniform_and_random():
    path = LinearVP()
    lo, hi = (float(path.log_snr(torch.tensor(t, dtype=F64))) for t in (path.t_max, path.t_min))
    gen = torch.Generator().manual_seed(3)
    target = torch.sort(lo + (hi - lo) * torch.rand(5, generator=gen, dtype=F64)).values
    fit = _Synthetic(path, target)
    uniform = fit(path.t_of_log_snr(torch.linspace(lo, hi, 7, dtype=F64)))
    res = evolutionary_search(fit, 6, lattice=1000, epochs=8, seeds=("logsnr",), generator=gen, progress=False)
    assert_valid_grid(res.ts, path, 6)
    assert res.fitness < 0.25 * uniform
    # random search with the same number of evaluations does worse
    rand_best = math.inf
    for _ in range(fit.evaluations):
        lam = torch.sort(lo + (hi - lo) * torch.rand(5, generator=gen, dtype=F64)).values
        rand_best = min(rand_best, float((lam - target).abs().sum()))
    assert res.fitness < rand_best


@pytest.mark.parametrize("path", [LinearVP(), EDM()], ids=lambda p: p.name)
def test_dp_search_is_the_exact_optimum_of_the_closed_form_costs(path):
    model, x, _ = setup(path, n=16)
    steps, m = 3, 16
    res = dp_search(model, x, steps, lattice=m, rtol=1e-9, progress=False)
    assert_valid_grid(res.ts, path, steps)
    hi, lo = ends(path)
    lat = torch.linspace(float(path.log_snr(hi)), float(path.log_snr(lo)), m + 1, dtype=F64)
    ts = path.t_of_log_snr(lat)
    ts[0], ts[-1] = hi, lo
    rms_x = float(x.double().pow(2).mean().sqrt())

    def cost(i, j):
        return float((c_ddim(path, ts[i], ts[j]) * r_exact(path, hi, ts[i]) - r_exact(path, hi, ts[j])).abs()) * rms_x

    best = min(
        (sum(cost(a, b) for a, b in zip((0, *mid), (*mid, m))), mid) for mid in itertools.combinations(range(1, m), 2)
    )
    want = torch.stack([hi, ts[best[1][0]], ts[best[1][1]], lo])
    assert torch.allclose(res.ts, want, rtol=1e-9)
    assert res.fitness == pytest.approx(best[0], rel=1e-5)


def test_searched_grid_round_trip_and_foreign_model(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSIO_CACHE", str(tmp_path))
    path = LinearVP()
    model, x, ref = setup(path, n=16)
    res = optimise_logsnr(Fitness(model, "ddim", x, ref=ref), 3, max_evals=10, progress=False)
    g = SearchedGrid(res.ts, "ddim", 3, res.fitness, model_fingerprint(model), method=res.method, calls=res.calls)
    save_grid(g, "gauss-ddim-3")
    back = load_grid("gauss-ddim-3", model)
    assert torch.equal(back.ts, res.ts) and back.fitness == res.fitness and back.solver == "ddim"
    out = sample(model, x, solver="dpmpp_2m", grid=back.check(model))  # every solver takes it through grid=
    assert out.nfe == 3
    other = gauss_model(path, s=0.7)
    with pytest.raises(ValueError, match="another model"):
        load_grid("gauss-ddim-3", other)
    with pytest.raises(ValueError, match="no saved grid named"):
        load_grid("missing", model)
    with pytest.raises(ValueError, match="grid name"):
        save_grid(g, "../escape")


def ring():
    ang = torch.arange(6, dtype=F64) * 2 * math.pi / 6
    return GaussianMixture(torch.stack([ang.cos(), ang.sin()], 1), 0.3)


FAST = dict(solvers=("ddim", "heun", "dpmpp_2m", "unipc"), n=32, refine=1, max_evals=8, dp_lattice=12, progress=False)


def test_autotune_never_exceeds_its_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSIO_CACHE", str(tmp_path))
    model = ExactModel(ring(), DiscreteDDPM())
    data = ring().sample(64, generator=torch.Generator().manual_seed(1), dtype=F64)
    x = model.path.prior_sample((32, 2), generator=torch.Generator().manual_seed(9))
    for nfe in (1, 3, 4, 7):
        plan = autotune(model, nfe, data=data, generator=torch.Generator().manual_seed(0), **FAST)
        assert plan.nfe <= nfe and plan.budget == nfe
        assert_valid_grid(plan.grid, model.path, plan.steps)
        counted = CountingModel(model)
        res = sample(counted, x, plan=plan)
        assert counted.calls <= nfe and res.nfe <= nfe
        assert all(r["nfe"] <= nfe for r in plan.table)
        # the plan is the finalist with the lowest error on the validation noise
        finalists = [r for r in plan.table if "validation" in r]
        assert plan.error == min(r["validation"] for r in finalists)
    again = autotune(model, 7, data=data, generator=torch.Generator().manual_seed(0), **FAST)
    assert again.to_json() == plan.to_json()  # from the cache
    assert len(list((tmp_path / "autotune").glob("*.json"))) == 4
    assert "chosen:" in plan.format_table()


def test_autotune_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSIO_CACHE", str(tmp_path))
    model = ExactModel(ring(), DiscreteDDPM())
    data = ring().sample(64, generator=torch.Generator().manual_seed(1), dtype=F64)
    with pytest.raises(ValueError, match="below the cheapest"):
        autotune(model, 0, data=data, **FAST)
    with pytest.raises(ValueError, match="below the cheapest"):
        autotune(model, 2, data=data, **{**FAST, "solvers": ("unipc3",)})
    with pytest.raises(ValueError, match="sample shape"):
        autotune(model, 4, data=torch.randn(64, 3), **FAST)
    with pytest.raises(ValueError, match="needs data"):
        autotune(model, 4, **FAST)
    plan = autotune(model, 3, data=data, **FAST)
    other = ExactModel(GaussianMixture(torch.zeros(1, 2), 0.5), DiscreteDDPM())
    with pytest.raises(ValueError, match="another model"):
        sample(other, torch.randn(4, 2), plan=plan)
    assert isinstance(Plan.from_json(plan.to_json()), Plan)


def test_cli_tune_and_sample_auto(tmp_path, monkeypatch, capsys):
    import yaml

    from diffusio.app.cli import main

    monkeypatch.setenv("DIFFUSIO_CACHE", str(tmp_path / "cache"))
    cfg = {
        "data": {"name": "toy", "dataset": "rings"},
        "path": {"name": "vp_linear"},
        "net": {"name": "mlp", "hidden": 32, "depth": 2, "time_dim": 16},
        "model": {"prediction": "eps"},
        "loss": {"target": "eps"},
        "train": {"steps": 4, "batch_size": 32, "log_every": 2, "ckpt_every": 4, "progress": False},
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "t.yaml"), "--out", str(tmp_path / "run")]) == 0
    ckpt = str(tmp_path / "run" / "model.safetensors")
    args = ["tune", ckpt, "--nfe", "3,4", "--n", "16", "--solvers", "ddim,dpmpp_2m", "--save", "rings"]
    args += ["--max-evals", "4", "--dp-lattice", "6"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "== nfe = 3 ==" in out and "chosen:" in out and "dpmpp_2m" in out
    assert load_grid("rings-nfe4").steps <= 4
    assert main(["tune", ckpt, "--nfe", "0", "--solvers", "ddim"]) == 2
    assert "below the cheapest" in capsys.readouterr().err
    assert main(["sample", ckpt, "--solver", "auto", "--n", "8", "--out", str(tmp_path / "s.npz")]) == 2
    assert "--nfe" in capsys.readouterr().err
    # sample --solver auto reuses the plan tune cached for this model and budget
    assert main(["sample", ckpt, "--solver", "auto", "--nfe", "3", "--n", "8", "--out", str(tmp_path / "s.npz")]) == 0
    out = capsys.readouterr().out
    assert "model calls each" in out and (tmp_path / "s.npz").is_file()
    assert int(out.split("model calls each")[0].split(",")[-1]) <= 3
