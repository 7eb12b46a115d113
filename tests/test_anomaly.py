"""Reconstruction-based anomaly detection against exact answers: a Gaussian prior's probability-flow reconstruction
is linear, so the expected residual map is a folded-normal mean in closed form; an out-of-distribution patch
outscores in-distribution pixels; the AUROC equals the pairwise (Mann-Whitney) definition."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusio.core.paths import CosineVP, LinearVP
from diffusio.data import GaussianMixture
from diffusio.data.phantoms import random_phantoms
from diffusio.inverse.anomaly import anomaly_map, anomaly_score, auroc, gaussian_smooth, insert_lesions, select_t0
from diffusio.models import ExactModel

M, S = 0.2, 0.15  # prior N(M, S^2 I) on 1x6x6 images


def _gauss_model(path=None):
    return ExactModel(GaussianMixture(torch.full((1, 1, 6, 6), M), S), path or LinearVP())


def test_expected_map_is_the_folded_normal_mean_of_the_exact_reconstruction():
    """For x0 ~ N(m, s^2 I) the probability-flow ODE maps x_t0 to m + s (x_t0 - alpha m) / nu, nu^2 = alpha^2 s^2 +
    sigma^2, so x_hat - x ~ N((x - m)(s alpha / nu - 1), (s sigma / nu)^2) per pixel and E|x_hat - x| is the
    folded-normal mean mu (1 - 2 Phi(-mu/tau)) + tau sqrt(2/pi) exp(-mu^2 / 2 tau^2)."""
    model, t0, n = _gauss_model(), 0.4, 4000
    g = torch.Generator().manual_seed(0)
    x = (M + torch.linspace(-3, 3, 36).reshape(1, 1, 6, 6) * S).double()
    got = anomaly_map(model, x, t0=t0, n=n, steps=60, smooth=0.0, generator=g)[0]
    tt = torch.tensor(t0, dtype=torch.float64)
    a, s = model.path.alpha(tt), model.path.sigma(tt)
    nu = (a**2 * S**2 + s**2).sqrt()
    mu, tau = (x[0, 0] - M) * (S * a / nu - 1), S * s / nu
    phi = 0.5 * (1 + torch.erf(-mu / tau / math.sqrt(2)))
    want = mu * (1 - 2 * phi) + tau * math.sqrt(2 / math.pi) * torch.exp(-(mu**2) / (2 * tau**2))
    se = (mu**2 + tau**2 - want**2).sqrt() / math.sqrt(n)  # Monte-Carlo standard error per pixel
    assert float(((got - want).abs() / se).max()) < 4.5
    assert float(((got - want).abs() / want).mean()) < 0.02


def test_an_out_of_distribution_patch_outscores_every_healthy_pixel():
    model = _gauss_model(CosineVP())
    g = torch.Generator().manual_seed(1)
    x = M + S * torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64)
    mask = torch.zeros(3, 6, 6, dtype=torch.bool)
    mask[:, 1:3, 2:5] = True
    x[:, 0][mask] = M + 8 * S
    maps = anomaly_map(model, x, t0=0.5, n=8, steps=8, smooth=0.0, generator=g)
    assert float(maps[mask].min()) > float(maps[~mask].max())
    assert auroc(maps, mask) == 1.0
    healthy = anomaly_map(model, M + S * torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64), t0=0.5, n=8,
                          steps=8, smooth=0.0, generator=g)  # fmt: skip
    assert float(anomaly_score(maps).min()) > float(anomaly_score(healthy).max())


def test_auroc_known_value_and_ties():
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auroc(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([False, True, True])) == pytest.approx(0.75)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=30))
def test_auroc_is_the_mann_whitney_probability(pairs):
    scores = torch.tensor([float(s) for s, _ in pairs])
    labels = torch.tensor([y for _, y in pairs])
    if bool(labels.all()) or not bool(labels.any()):
        with pytest.raises(ValueError, match="both positives and negatives"):
            auroc(scores, labels)
        return
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]
    want = float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())
    assert auroc(scores, labels) == pytest.approx(want, abs=1e-12)


def test_lesions_mask_exactly_the_changed_pixels():
    g = torch.Generator().manual_seed(2)
    x = random_phantoms(6, 32, generator=g)
    y, mask = insert_lesions(x, count=(1, 2), generator=torch.Generator().manual_seed(3))
    assert y.shape == x.shape and mask.shape == (6, 32, 32) and mask.dtype == torch.bool
    change = (y - x).abs()[:, 0]
    assert bool((change[mask] > 0.1).all()) and bool((change[~mask] <= 0.1).all())
    assert bool(mask.flatten(1).any(1).all()) and float(y.abs().max()) <= 1
    y2, mask2 = insert_lesions(x, count=(1, 2), generator=torch.Generator().manual_seed(3))
    assert torch.equal(y, y2) and torch.equal(mask, mask2)


def test_smoothing_keeps_constants_and_a_zero_width_is_the_identity():
    m = torch.rand(2, 9, 9, generator=torch.Generator().manual_seed(4))
    assert torch.equal(gaussian_smooth(m, 0.0), m)
    assert torch.allclose(gaussian_smooth(torch.full((1, 9, 9), 0.3), 1.5), torch.full((1, 9, 9), 0.3))
    sm = gaussian_smooth(m, 1.0)
    assert float(sm.std()) < float(m.std()) and abs(float(sm.mean() - m.mean())) < 0.02
    with pytest.raises(ValueError, match="maps"):
        gaussian_smooth(m[0], 1.0)
    with pytest.raises(ValueError, match="std"):
        gaussian_smooth(m, float("inf"))


def test_select_t0_returns_the_best_of_its_table():
    model = _gauss_model()
    g = torch.Generator().manual_seed(5)
    x = M + S * torch.randn(2, 1, 6, 6, generator=g, dtype=torch.float64)
    mask = torch.zeros(2, 6, 6, dtype=torch.bool)
    mask[:, :2, :2] = True
    x[:, 0][mask] -= 5 * S
    best, table = select_t0(model, x, mask, (0.05, 0.3, 0.6), n=2, steps=4, smooth=0.0, generator=g)
    assert set(table) == {0.05, 0.3, 0.6} and table[best] == max(table.values())


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"t0": 2.0}, "t0"), ({"t0": 0.0}, "t0"), ({"t0": 0.3, "n": 0}, "n must"), ({"t0": 0.3, "steps": 1.5}, "steps"),
     ({"t0": 0.3, "smooth": -1.0}, "smooth"), ({"t0": float("nan")}, "t0")],
)  # fmt: skip
def test_options_are_validated(kw, match):
    with pytest.raises(ValueError, match=match):
        anomaly_map(_gauss_model(), torch.zeros(1, 1, 6, 6), **kw)
    with pytest.raises(ValueError, match="images"):
        anomaly_map(_gauss_model(), torch.zeros(1, 36), t0=0.3)
    with pytest.raises(ValueError, match="count"):
        insert_lesions(torch.zeros(1, 1, 6, 6), count=(0, 1))
