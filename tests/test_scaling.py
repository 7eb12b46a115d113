"""Inference-time scaling against exact answers: Gaussian-mixture verifiers, budget formulas, neighbour geometry,
the marginal-preserving flow SDE, SMC's convergence to the exactly computable tilted density, RBF's invariants."""

from __future__ import annotations

import math

import pytest
import torch

from diffusio.core.paths import EDM, LinearVP, RectifiedFlow
from diffusio.data.gmm import GaussianMixture
from diffusio.metrics import sliced_wasserstein
from diffusio.models.exact import ExactModel
from diffusio.models.wrappers import Rescheduled
from diffusio.samplers import sample
from diffusio.scaling import (
    CallableVerifier,
    ClassifierVerifier,
    MixtureLogDensity,
    RankEnsemble,
    SelfConsistency,
    neighbours,
    rank_average,
    search,
    smc,
)


def ring(k: int = 8, radius: float = 2.0, std: float = 0.25) -> GaussianMixture:
    ang = torch.arange(k) * 2 * math.pi / k
    return GaussianMixture(torch.stack([radius * ang.cos(), radius * ang.sin()], 1), std, labels=torch.arange(k))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


GMM = ring()


# --- verifiers ------------------------------------------------------------------------------------------------------


def test_mixture_verifier_is_the_exact_log_density():
    x = torch.randn(50, 2, generator=gen())
    y = torch.randint(0, 8, (50,), generator=gen(1))
    v = MixtureLogDensity(GMM)
    torch.testing.assert_close(v(x), GMM.log_prob(x))
    torch.testing.assert_close(v(x, {"y": y}), GMM.log_prob(x, y=y))


def test_classifier_verifier_is_the_softmax_probability_of_the_class():
    w = torch.randn(2, 3, generator=gen())
    x = torch.randn(20, 2, generator=gen(1))
    y = torch.randint(0, 3, (20,), generator=gen(2))
    p = torch.softmax((x @ w).double(), 1)[torch.arange(20), y]
    torch.testing.assert_close(ClassifierVerifier(lambda z: z @ w)(x, {"y": y}), p)
    torch.testing.assert_close(ClassifierVerifier(lambda z: z @ w, kind="logprob")(x, {"y": y}), p.log())
    with pytest.raises(ValueError, match="class"):
        ClassifierVerifier(lambda z: z @ w)(x)


def test_self_consistency_is_the_round_trip_agreement_with_the_exact_denoiser():
    path = RectifiedFlow()
    model = ExactModel(GMM, path)
    v = SelfConsistency(model, t=0.3, metric="mse", seed=3)
    x = GMM.sample(40, generator=gen(), dtype=torch.float64)
    eps = torch.randn(x.shape[1:], generator=gen(3), dtype=x.dtype).expand_as(x)
    t = torch.full((40,), 0.3, dtype=torch.float64)
    x0 = GMM.denoise(path.perturb(x, eps, t), t, path)
    torch.testing.assert_close(v(x), -((x0 - x) ** 2).mean(1))
    far = x + 3.0  # off the data: the denoiser pulls it back, so agreement drops
    assert v(far).mean() < v(x).mean()


def test_rank_average_and_the_reference_ensemble():
    a, b = torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0, 0.0])
    torch.testing.assert_close(rank_average([a, a]), torch.tensor([0, 1, 2, 3], dtype=torch.float64) / 3)
    torch.testing.assert_close(rank_average([a, b]), torch.full((4,), 0.5, dtype=torch.float64))
    ref = torch.randn(200, 2, generator=gen())
    f = CallableVerifier(lambda x: x[:, 0])
    ens = RankEnsemble([f], ref)
    x = torch.randn(30, 2, generator=gen(1))
    s = ens(x)
    # one verifier: the ensemble score is the empirical CDF of the reference scores (a monotone map)
    cdf = (ref[:, 0][None] < x[:, 0][:, None]).double().mean(1)
    torch.testing.assert_close(s, cdf, atol=1e-4, rtol=0)
    assert torch.equal(s.argsort(), x[:, 0].argsort())
    with pytest.raises(ValueError, match="reference"):
        RankEnsemble([f])(x)


@pytest.mark.parametrize(
    "bad, msg",
    [(lambda x: x.sum(1, keepdim=True), "one score per sample"), (lambda x: x[:, 0] * math.nan, "non-finite")],
)
def test_bad_verifier_output_is_a_clear_error(bad, msg):
    model = ExactModel(GMM, EDM())
    with pytest.raises(ValueError, match=msg):
        search(model, CallableVerifier(bad), shape=(4, 2), strategy="best_of_n", budget=40, steps=5)


# --- search over noise ----------------------------------------------------------------------------------------------


def test_neighbour_geometry():
    p = torch.randn(5, 3, 4, generator=gen(), dtype=torch.float64)
    m = neighbours(p, 7, 0.9, gen(1))
    pf, mf = p.flatten(1)[:, None], m.flatten(2)
    torch.testing.assert_close(mf.norm(dim=-1), pf.norm(dim=-1).expand(5, 7), rtol=1e-6, atol=0)
    torch.testing.assert_close(torch.cosine_similarity(mf, pf, dim=-1), torch.full((5, 7), 0.9, dtype=torch.float64))
    torch.testing.assert_close(neighbours(p, 2, 1.0, gen(2)), p[:, None].expand(5, 2, 3, 4))


@pytest.mark.parametrize("n", [1, 3, 8])
def test_best_of_n_budget_accounting_and_too_small_budget(n):
    model = ExactModel(GMM, EDM())
    res = search(model, MixtureLogDensity(GMM), shape=(6, 2), budget=n * 10 + 3, steps=5, solver="heun")
    assert res.extra["candidates"] == n and (res.nfe == n * 10).all() and (res.verifier_calls == n).all()
    assert res.model_calls == 10  # all candidates of all outputs share each batched call
    with pytest.raises(ValueError, match="budget=9 .*smaller than one sample's cost"):
        search(model, MixtureLogDensity(GMM), shape=(6, 2), budget=9, steps=5, solver="heun")


def test_best_of_n_scales_monotonically_with_an_oracle_verifier():
    """Fraction of outputs in the target mode c rises with N and exceeds 0.95 at N = 64 (theory 1 - (7/8)^N)."""
    model = ExactModel(GMM, EDM())
    c = torch.arange(8).repeat(25)
    oracle = CallableVerifier(lambda x, cond: -((x - GMM.means[cond["y"]]) ** 2).sum(1) / 0.02, takes_cond=True)
    fracs = []
    for n in (1, 4, 16, 64):
        res = search(model, oracle, shape=(200, 2), budget=n * 12, steps=6, solver="heun", verifier_cond={"y": c},
                     generator=gen(n))  # fmt: skip
        mode = torch.cdist(res.x.double(), GMM.means).argmin(1)
        fracs.append(float((mode == c).double().mean()))
    assert fracs == sorted(fracs) and fracs[-1] > 0.95, fracs
    assert abs(fracs[0] - 1 / 8) < 0.08, fracs


def test_zero_order_best_score_never_decreases_and_counts_every_candidate():
    model = ExactModel(GMM, EDM())
    v = MixtureLogDensity(GMM)
    res = search(model, v, shape=(8, 2), strategy="zero_order", budget=300, steps=5, solver="heun",
                 cond={"y": torch.zeros(8, dtype=torch.long)}, generator=gen(), cos_sim=0.9)  # fmt: skip
    best = [h[1] for h in res.history]
    assert best == sorted(best) and len(best) >= 3
    assert torch.equal(res.nfe, res.verifier_calls * 10) and (res.nfe <= 300).all()
    torch.testing.assert_close(res.scores, v(res.x, {"y": torch.zeros(8, dtype=torch.long)}))


def test_paths_without_renoising_reduce_to_plain_sampling_of_the_same_noises():
    model = ExactModel(GMM, EDM())
    v = MixtureLogDensity(GMM)
    res = search(model, v, shape=(3, 2), strategy="paths", budget=10_000, steps=8, solver="heun", width=4,
                 branches=1, renoise=0, advance=2, start=2, generator=gen(7))  # fmt: skip
    x = sample(model, shape=(12, 2), solver="heun", steps=8, generator=gen(7)).x.reshape(3, 4, 2)
    s = v(x.reshape(12, 2)).reshape(3, 4)
    torch.testing.assert_close(res.x, x[torch.arange(3), s.argmax(1)], rtol=0, atol=1e-6)
    # cost: 4 beams x (2 steps to the start + 3 rounds of 2 steps + 2 Tweedie calls) x 2 calls per Heun step
    assert (res.nfe == 4 * (2 * 2 + 3 * 2 * 2 + 2)).all()


def test_self_supervised_verifier_is_charged_to_the_budget():
    model = ExactModel(GMM, EDM())
    res = search(model, SelfConsistency(model), shape=(2, 2), budget=54, steps=5, solver="heun")
    assert res.extra["candidates"] == 4 and (res.nfe == 4 * 11).all()
    ens = RankEnsemble([MixtureLogDensity(GMM), SelfConsistency(model)], GMM.sample(32, generator=gen()))
    for strategy, opts in (("steps", {}), ("zero_order", {}), ("paths", {"branches": 2})):
        res = search(model, ens, shape=(2, 2), strategy=strategy, budget=120, steps=5, solver="heun", **opts)
        assert (res.nfe <= 120).all() and (res.nfe > 0).all()
    with pytest.raises(ValueError, match="strategy 'zero_order' takes neighbours"):
        search(model, ens, shape=(2, 2), strategy="zero_order", budget=120, steps=5, branches=2)


# --- particle methods -----------------------------------------------------------------------------------------------


def _const(x, cond=None):
    return torch.zeros(x.shape[0], dtype=torch.float64)


@pytest.mark.parametrize(
    "diffusion, scale, interpolant",
    [("square", 3.0, None), ("linear", 1.0, None), ("constant", 0.7, None), ("path", 1.0, "vp")],
)
def test_flow_sde_conversion_preserves_the_data_distribution(diffusion, scale, interpolant):
    """Exact flow model + velocity-to-score reverse SDE (any diffusion schedule) samples the data: sliced W2 to fresh
    data within 1.3x the data-vs-data floor (same sample sizes), component weights within 0.03 and the spread
    around the modes within 0.008 of the data's (a 20% error in the noise variance moves it by >= 0.01)."""
    n = 3000
    model = ExactModel(GMM, RectifiedFlow())
    res = smc(model, _const, shape=(1, 2), particles=n, steps=200, solver="euler_maruyama", diffusion=diffusion,
              diffusion_scale=scale, grid="uniform", interpolant=interpolant, generator=gen(1))  # fmt: skip
    x = res.x[0].double()
    assert int(res.resamples.sum()) == 0
    d1, d2 = GMM.sample(n, generator=gen(2), dtype=torch.float64), GMM.sample(n, generator=gen(3), dtype=torch.float64)
    floor = sliced_wasserstein(d1, d2, generator=gen(4))
    assert sliced_wasserstein(x, d1, generator=gen(4)) < 1.3 * floor + 0.01, floor

    def spread(z):
        k = torch.cdist(z, GMM.means).argmin(1)
        return float((z - GMM.means[k]).pow(2).mean().sqrt()), torch.bincount(k, minlength=8) / len(z)

    (rs, ws), (rd, _) = spread(x), spread(d1)
    assert abs(rs - rd) < 0.008 and float((ws - 1 / 8).abs().max()) < 0.03, (rs, rd, ws)


def test_constant_reward_smc_is_the_unguided_sampler():
    model = ExactModel(GMM, LinearVP())
    res = smc(model, _const, shape=(1, 2), particles=64, steps=20, solver="ddpm", generator=gen(5))
    ref = sample(model, shape=(64, 2), solver="ddpm", steps=20, generator=gen(5)).x
    torch.testing.assert_close(res.x[0], ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(res.log_weights.exp(), torch.full((1, 64), 1 / 64, dtype=torch.float64))


def _tv_to_tilted(x: torch.Tensor, log_w: torch.Tensor, lam: float, bins: int = 14, lim: float = 3.5) -> float:
    edges = torch.linspace(-lim, lim, bins + 1, dtype=torch.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    gx, gy = torch.meshgrid(centres, centres, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    fine = 4  # integrate the tilted density over each cell with a 4x4 midpoint rule
    off = (torch.arange(fine, dtype=torch.float64) + 0.5) / fine - 0.5
    h = float(edges[1] - edges[0])
    sub = (pts[:, None, None] + h * torch.stack(torch.meshgrid(off, off, indexing="ij"), -1)[None]).reshape(-1, 2)
    logp = GMM.log_prob(sub) + lam * sub[:, 0]
    p = torch.softmax(logp, 0).reshape(-1, fine * fine).sum(1)
    w = torch.softmax(log_w.double(), 0)
    ix = torch.bucketize(x[:, 0].double().clamp(-lim, lim - 1e-9), edges[1:-1])
    iy = torch.bucketize(x[:, 1].double().clamp(-lim, lim - 1e-9), edges[1:-1])
    q = torch.zeros(bins * bins, dtype=torch.float64).index_add_(0, ix * bins + iy, w)
    return 0.5 * float((p - q).abs().sum())


def test_smc_weighted_particles_converge_to_the_tilted_density():
    """Reward r(x) = x_1, temperature 1: the target p(x) exp(r(x)) / Z is computed on a grid; the total variation of
    the weighted particle histogram shrinks with the number of particles (averaged over 4 populations)."""
    model = ExactModel(GMM, LinearVP())
    reward = CallableVerifier(lambda x: x[:, 0].double())
    tvs = {}
    for P in (100, 3200):
        res = smc(model, reward, shape=(4, 2), particles=P, steps=60, solver="ddpm", generator=gen(P))
        tvs[P] = sum(_tv_to_tilted(res.x[b], res.log_weights[b], 1.0) for b in range(4)) / 4
        assert int(res.resamples.min()) > 0
    plain = sample(model, shape=(3200, 2), solver="ddpm", steps=60, generator=gen(0)).x
    tv_plain = _tv_to_tilted(plain, torch.zeros(3200), 1.0)
    assert tvs[3200] < 0.6 * tvs[100] and tvs[3200] < 0.12 and tv_plain > 2 * tvs[3200], (tvs, tv_plain)


@pytest.mark.parametrize("strategy", ["smc", "rbf"])
@pytest.mark.parametrize("solver, opts", [("heun", {}), ("ddim", {"eta": 0.0}), ("euler_maruyama", {"eta": 0.0})])
def test_particle_methods_refuse_a_deterministic_sampler(strategy, solver, opts):
    model = ExactModel(GMM, RectifiedFlow())
    with pytest.raises(ValueError, match="needs a stochastic solver"):
        search(model, _const, shape=(2, 2), strategy=strategy, budget=100, steps=5, solver=solver, **opts)


def test_particle_budget_too_small():
    model = ExactModel(GMM, RectifiedFlow())
    for strategy in ("smc", "rbf"):
        with pytest.raises(ValueError, match="smaller than one sample's cost"):
            search(model, _const, shape=(2, 2), strategy=strategy, budget=5, steps=10, diffusion="square")


class Increasing:
    """A reward that strictly increases with every call (each proposal beats everything before it)."""

    def __init__(self):
        self.k = 0

    def __call__(self, x, cond=None):
        self.k += 1
        return torch.full((x.shape[0],), float(self.k), dtype=torch.float64) + torch.arange(x.shape[0]) * 1e-9


def test_rbf_rollover_invariants():
    model = ExactModel(GMM, RectifiedFlow())
    kw = dict(shape=(3, 2), strategy="rbf", budget=64, steps=6, diffusion="square", grid="uniform", init=4)
    q = (64 - 4) // 6
    up = search(model, Increasing(), generator=gen(), **kw)
    use = up.extra["proposals_per_step"]
    assert use[:-1] == [1.0] * 5  # every proposal improves: accepted at once, the quota rolls over
    assert use[-1] == 64 - 4 - 5  # the last step spends all that rolled over
    flat = search(model, _const, generator=gen(), **kw)
    assert flat.extra["proposals_per_step"] == [float(q)] * 6  # nothing improves: each step spends its quota
    for r in (up, flat):
        assert (r.nfe <= 64).all() and (r.nfe == r.verifier_calls).all()


def test_rbf_and_smc_beat_a_single_sample_on_the_flow_model():
    model = ExactModel(GMM, RectifiedFlow())
    v = MixtureLogDensity(GMM)
    cond = {"y": torch.arange(8).repeat(4)}
    kw = dict(shape=(32, 2), budget=200, steps=10, cond=cond, diffusion="square", grid="uniform")
    base = search(model, v, strategy="steps", budget=20, shape=(32, 2), steps=10, solver="euler", cond=cond,
                  generator=gen())  # fmt: skip
    for strategy in ("smc", "rbf"):
        res = search(model, v, strategy=strategy, generator=gen(1), **kw)
        assert res.scores.mean() > base.scores.mean() + 0.5
        torch.testing.assert_close(res.scores, v(res.x.double(), cond), atol=1e-5, rtol=0)


def test_vp_conversion_is_the_rescheduled_model():
    model = ExactModel(GMM, RectifiedFlow())
    vp = Rescheduled(model, LinearVP(beta0=0.1, beta1=20.0))
    exact = ExactModel(GMM, LinearVP(beta0=0.1, beta1=20.0))
    x = torch.randn(64, 2, generator=gen(), dtype=torch.float64)
    t = torch.rand(64, generator=gen(1), dtype=torch.float64) * 0.98 + 0.01
    torch.testing.assert_close(vp.predict(x, t, "velocity"), exact.predict(x, t, "velocity"), rtol=1e-5, atol=1e-8)


# --- command line and the digits classifier verifier ---------------------------------------------------------------


def radius_verifier(x, cond=None):
    """A user verifier for the CLI test: prefer samples near the unit circle."""
    return -(x.norm(dim=1) - 1.0).abs().double()


def test_cli_search_writes_pictures_and_record(tmp_path, capsys):
    import json

    import yaml

    from diffusio.app.cli import main

    cfg = {"data": {"name": "toy", "dataset": "rings"}, "path": {"name": "flow"},
           "net": {"name": "mlp", "hidden": 32, "depth": 2, "time_dim": 16}, "model": {"prediction": "velocity"},
           "loss": {"target": "velocity"}, "train": {"steps": 10, "batch_size": 32, "progress": False}}  # fmt: skip
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run")]) == 0
    ckpt = str(tmp_path / "run" / "model.safetensors")
    out = tmp_path / "search"
    args = ["search", ckpt, "--verifier", "tests.test_scaling:radius_verifier", "--strategy", "zero_order",
            "--budget", "60", "--steps", "3", "--n", "5", "--out", str(out), "--opt", "cos_sim=0.8"]  # fmt: skip
    assert main(args) == 0
    rec = json.loads((out / "search.json").read_text())
    assert rec["strategy"] == "zero_order" and max(rec["nfe"]) <= 60 and len(rec["scores"]) == 5
    assert (out / "samples.png").stat().st_size > 1000 and (out / "curve.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["search", ckpt, "--verifier", "classifier", "--class", "3", "--out", str(out)]) == 2
    assert "digits" in capsys.readouterr().err
    assert main(["search", ckpt, "--verifier", "self", "--budget", "2", "--out", str(out)]) == 2
    assert "smaller than one sample's cost" in capsys.readouterr().err


def test_digits_classifier_verifier_reads_real_digits():
    from diffusio.app.scaling_cli import digits_verifier
    from diffusio.data.digits import load_digits

    x, y = load_digits(8, "pad", "test")
    v = digits_verifier()
    p = v(x[:200], {"y": y[:200]})
    wrong = v(x[:200], {"y": (y[:200] + 1) % 10})
    assert p.shape == (200,) and float(p.mean()) > 0.8 and float(wrong.mean()) < 0.1


def test_bench_claims_follow_from_the_numbers():
    from bench import scaling as bench

    def rows(*scores):
        return [{"budget": b, "score_mean": s} for b, s in zip((32, 128, 512), scores)]

    curves = {"more steps": rows(0.1, 0.2, 0.2), "best-of-N": rows(0.1, 0.3, 0.5), "SMC": rows(0.2, 0.4, 0.6),
              "RBF": rows(0.3, 0.35, 0.7)}  # fmt: skip
    cl = bench._claims(curves, [32, 128, 512])
    assert cl["search_beats_steps_gain"] and abs(cl["gain_mid_to_max"]["RBF"] - 0.35) < 1e-12
    assert [(o["rbf_ge_smc"], o["smc_ge_bon"]) for o in cl["order"]] == [(True, True), (False, True), (True, True)]
    assert "RBF 0.3500 < SMC 0.4000 >= best-of-N 0.3000" in bench._claims_md(cl)
