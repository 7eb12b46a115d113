"""Guidance wrappers against exact Gaussian-mixture answers, plus the trained pieces (classifier, reward model)."""

import itertools
import math

import pytest
import torch

from diffusio.core.paths import EDM, LinearVP
from diffusio.data import GaussianMixture
from diffusio.guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    PseudoLabelSource,
    RewardGuidance,
    ScalarConditionMLP,
    fit_reward_model,
    reward_conditioned_model,
    sample_at_reward,
    train_noisy_classifier,
)
from diffusio.models import ExactModel
from diffusio.models.base import CountingModel, Model
from diffusio.nets import MLP
from diffusio.samplers import sample
from diffusio.training import NetFit

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _three_classes():
    """1-D, three classes at -3, 0, 3 (std 0.7), one component each."""
    return GaussianMixture(torch.tensor([[-3.0], [0.0], [3.0]]), 0.7, labels=[0, 1, 2])


def _exact_classifier(mixture, path):
    """The exact time-t classifier: logits_k = log p_t(x | k) + log p(k)."""

    def logits(x, t):
        cols = [
            mixture.log_prob(x, t, path, y=torch.full((len(x),), k)) + mixture.log_weights[k] for k in range(mixture.K)
        ]
        return torch.stack(cols, 1)

    return logits


def _random_conditional_mlp():
    torch.manual_seed(0)
    net = MLP(2, hidden=32, depth=1, num_classes=3).double()
    torch.nn.init.normal_(net.out[-1].weight, std=0.5)
    return Model(net, LinearVP(), "eps")


# --- classifier-free guidance -------------------------------------------------------------------------------------
def test_cfg_scale_one_is_conditional_and_zero_unconditional():
    g, path = _three_classes(), LinearVP()
    model = ExactModel(g, path)
    x, t, y = torch.randn(6, 1, dtype=F64), torch.full((6,), 0.4, dtype=F64), torch.tensor([0, 1, 2, 0, 1, 2])
    cond, uncond = model.predict(x, t, "eps", y=y), model.predict(x, t, "eps")
    assert torch.allclose(ClassifierFreeGuidance(model, 1.0).predict(x, t, "eps", y=y), cond, atol=1e-12)
    assert torch.allclose(ClassifierFreeGuidance(model, 0.0).predict(x, t, "eps", y=y), uncond, atol=1e-12)
    w3 = ClassifierFreeGuidance(model, 3.0).predict(x, t, "score", y=y)
    s_c, s_u = model.predict(x, t, "score", y=y), model.predict(x, t, "score")
    assert torch.allclose(w3, s_u + 3 * (s_c - s_u), atol=1e-9)  # same combination on the score head


def test_cfg_batches_the_two_calls():
    model = _random_conditional_mlp()
    x, t, y = torch.randn(5, 2, dtype=F64), torch.full((5,), 0.3, dtype=F64), torch.tensor([0, 1, 2, 1, 0])
    counted = CountingModel(model)
    batched = ClassifierFreeGuidance(counted, 2.5, null_label=3).predict(x, t, "x0", y=y)
    assert counted.calls == 1
    c, u = model.predict(x, t, "x0", y=y), model.predict(x, t, "x0", y=torch.full_like(y, 3))
    assert torch.allclose(batched, u + 2.5 * (c - u), atol=1e-12)
    inferred = ClassifierFreeGuidance(Model(model.net, model.path, "eps"), 2.5)
    assert inferred.null_label == 3  # read from the net's num_classes


def test_cfg_interval_switches_guidance_off_outside():
    g, path = _three_classes(), EDM()
    model = ExactModel(g, path)
    guided = ClassifierFreeGuidance(model, 4.0, interval=(0.5, 5.0))
    x, y = torch.randn(4, 1, dtype=F64), torch.tensor([0, 1, 2, 1])
    for sigma, inside in [(0.1, False), (1.0, True), (20.0, False)]:
        t = torch.full((4,), sigma, dtype=F64)
        out, cond = guided.predict(x, t, y=y), model.predict(x, t, y=y)
        assert torch.allclose(out, cond) != inside
    with pytest.raises(ValueError, match="interval must be"):
        ClassifierFreeGuidance(model, 2.0, interval=(3.0, 1.0))


def test_cfg_strength_raises_confidence_and_lowers_spread():
    """Brief test 3: for the middle class, the Bayes posterior p(y | x) of samples rises and their spread falls
    monotonically in w; w = 1 samples the true class-conditional law."""
    g, path = _three_classes(), LinearVP()
    model, n = ExactModel(g, path), 4000
    y = torch.full((n,), 1)
    conf, spread = [], []
    for w in (1.0, 2.0, 3.0, 4.0):
        guided = ClassifierFreeGuidance(model, w)
        x = sample(guided, shape=(n, 1), solver="heun", steps=40, cond={"y": y}, generator=_gen()).x.double()
        post = torch.softmax(_exact_classifier(g, path)(x, torch.zeros(n, dtype=F64) + path.t_min), 1)[:, 1]
        conf.append(float(post.mean()))
        spread.append(float(x.std()))
        if w == 1.0:
            assert abs(float(x.mean())) < 0.05 and abs(spread[-1] - 0.7) < 0.04
    assert all(a < b for a, b in itertools.pairwise(conf)), conf
    assert all(a > b for a, b in itertools.pairwise(spread)), spread


# --- classifier guidance -------------------------------------------------------------------------------------------
def test_classifier_guidance_equals_cfg_with_the_exact_classifier():
    """s + w grad log c_t(y | x) = s_null + w (s_y - s_null) when c_t is the mixture's own time-t classifier."""
    g, path = _three_classes(), LinearVP()
    model = ExactModel(g, path)
    clf = ClassifierGuidance(model, _exact_classifier(g, path), 2.5)
    cfg = ClassifierFreeGuidance(model, 2.5)
    x, t, y = torch.randn(8, 1, dtype=F64) * 3, torch.rand(8, dtype=F64) * 0.9 + 0.05, torch.randint(0, 3, (8,))
    assert torch.allclose(clf.predict(x, t, "score", y=y), cfg.predict(x, t, "score", y=y), atol=1e-8)
    cond, start = {"y": torch.tensor([1, 2, 0, 1])}, torch.randn(4, 1, dtype=F64)
    a = sample(clf, start, solver="heun", steps=20, cond=cond).x
    b = sample(cfg, start, solver="heun", steps=20, cond=cond).x
    assert (a - b).abs().max() < 1e-8


def test_trained_noisy_classifier_guides_toward_its_class():
    g = GaussianMixture(torch.tensor([[-1.5, 0.0], [1.5, 0.0]]), 0.6, labels=[0, 1])
    path = LinearVP()
    x = g.sample(4000, generator=_gen(), y=torch.arange(4000) % 2, dtype=F64)
    fit = NetFit(steps=300, hidden=64, depth=2)
    clf = train_noisy_classifier(x, torch.arange(4000) % 2, path, fit=fit, generator=_gen())
    clf = clf.double()
    low = torch.full((4000,), path.t_min, dtype=F64)
    acc = float((clf(x, low).argmax(1) == torch.arange(4000) % 2).double().mean())
    assert acc > 0.9
    model = ExactModel(g, path)
    y = torch.ones(1000, dtype=torch.long)
    plain = sample(model, shape=(1000, 2), solver="heun", steps=30, generator=_gen()).x
    guided = sample(ClassifierGuidance(model, clf, 3.0), shape=(1000, 2), solver="heun", steps=30, cond={"y": y},
                    generator=_gen()).x  # fmt: skip
    assert float((guided[:, 0] > 0).double().mean()) > 0.95 > float((plain[:, 0] > 0).double().mean())


# --- reward guidance -------------------------------------------------------------------------------------------
def _ring():
    ang = torch.arange(8) * 2 * math.pi / 8
    return GaussianMixture(torch.stack([2 * ang.cos(), 2 * ang.sin()], 1), 0.3)


def test_reward_guidance_zero_scale_is_exactly_unguided():
    model = ExactModel(_ring(), LinearVP())
    target = torch.tensor([2.0, 0.0], dtype=F64)
    guided = RewardGuidance(model, lambda x0: -((x0 - target) ** 2).sum(1), 0.0)
    a = sample(model, shape=(64, 2), solver="heun", steps=20, generator=_gen()).x
    b = sample(guided, shape=(64, 2), solver="heun", steps=20, generator=_gen()).x
    assert torch.equal(a, b)


def test_reward_guidance_raises_the_reward_monotonically():
    model = ExactModel(_ring(), LinearVP())
    target = torch.tensor([2.0, 0.0], dtype=F64)

    def reward(x0):
        return -((x0 - target) ** 2).sum(1)

    means = []
    for eta in (0.0, 0.25, 0.5, 1.0):  # at eta = 2, 30 Heun steps overshoot (reward falls back: -0.42)
        guided = RewardGuidance(model, reward, eta)
        x = sample(guided, shape=(2000, 2), solver="heun", steps=30, generator=_gen()).x.double()
        means.append(float(reward(x).mean()))
    assert all(a < b for a, b in itertools.pairwise(means)), means


def test_reward_gradient_matches_finite_differences():
    model = ExactModel(_ring(), LinearVP())
    target = torch.tensor([2.0, 0.0], dtype=F64)

    def reward(x0):
        return -((x0 - target) ** 2).sum(1)

    guided = RewardGuidance(model, reward, 1.0)
    x, t = torch.tensor([[0.3, -0.7]], dtype=F64), torch.tensor([0.5], dtype=F64)
    _, grad = guided.reward_grad(x, t, {})
    h, fd = 1e-6, torch.zeros(2, dtype=F64)
    for i in range(2):
        e = torch.zeros(1, 2, dtype=F64)
        e[0, i] = h
        fd[i] = (reward(model.predict(x + e, t)) - reward(model.predict(x - e, t))) / (2 * h)
    assert float((grad[0] - fd).norm() / fd.norm()) < 1e-4


def test_reward_guidance_time_dependent_scale():
    model = ExactModel(_ring(), LinearVP())
    guided = RewardGuidance(model, lambda x0: x0[:, 0], lambda t: model.path.sigma(t) ** 2)
    x, t = torch.randn(3, 2, dtype=F64), torch.full((3,), 0.3, dtype=F64)
    x0, g = guided.reward_grad(x, t, {})
    s2 = model.path.sigma(t)[:, None] ** 2
    expected = x0 + s2 / model.path.alpha(t)[:, None] * s2 * g
    assert torch.allclose(guided.predict(x, t), expected, atol=1e-12)


# --- optimization via conditional diffusion ----------------------------------------------------------------------
def test_reward_model_and_pseudo_labels():
    theta = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    x = torch.randn(500, 3, generator=_gen(), dtype=F64)
    f = fit_reward_model(x, x @ theta + 0.3 + 0.01 * torch.randn(500, generator=_gen(1), dtype=F64))
    assert torch.allclose(f.theta, theta, atol=0.01) and abs(f.bias - 0.3) < 0.01
    src = PseudoLabelSource(x, f, nu=0.2, p_uncond=0.25)
    _, cond = src.sample(20000, _gen())
    assert abs(float(torch.isnan(cond["y"]).double().mean()) - 0.25) < 0.01
    with pytest.raises(ValueError, match="nu must be > 0"):
        PseudoLabelSource(x, f, nu=0.0)


def test_scalar_condition_net_null_is_nan():
    net = ScalarConditionMLP(3, hidden=16, depth=1)
    torch.nn.init.normal_(net.out[-1].weight)
    x, t = torch.randn(2, 3), torch.rand(2)
    assert torch.allclose(net(x, t, torch.full((2,), float("nan"))), net(x, t, None))
    assert not torch.allclose(net(x, t, torch.tensor([0.5, 0.5])), net(x, t, None))


def test_reward_conditioned_samples_follow_the_target():
    """A short run of the whole pipeline on data in a 2-D subspace of R^6: higher targets give higher true reward."""
    d, D = 2, 6
    basis = torch.linalg.qr(torch.randn(D, d, generator=_gen(), dtype=F64))[0]
    x_u = torch.randn(4000, d, generator=_gen(1), dtype=F64) @ basis.T
    theta = basis @ torch.tensor([1.0, 0.5], dtype=F64)
    x_l = x_u[:200]
    f = fit_reward_model(x_l, x_l @ theta + 0.1 * torch.randn(200, generator=_gen(2), dtype=F64))
    model = reward_conditioned_model(x_u.float(), f, nu=0.3, steps=600, batch_size=128, hidden=64, depth=2)
    means = [float((sample_at_reward(model, a, 400, steps=30, generator=_gen(3)).double() @ theta).mean())
             for a in (-1.0, 1.0)]  # fmt: skip
    assert means[1] - means[0] > 1.0, means
