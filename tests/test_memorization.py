"""Memorization metrics (an exact training copy is flagged, a fresh sample is not; the noise difference uses one
x_t for both passes) and MemControl's search (Pareto front, determinism, site mapping)."""

from __future__ import annotations

import pytest
import torch

from diffusio.analysis import fraction_memorized, nn_distance_ratio, noise_difference
from diffusio.core.paths import LinearVP
from diffusio.data.digits import load_digits
from diffusio.data.gmm import GaussianMixture
from diffusio.data.sources import TensorSource
from diffusio.finetune import memcontrol_search, site_targets
from diffusio.models import ExactModel, Model
from diffusio.nets import MLP


def test_training_copies_are_flagged_and_fresh_samples_are_not():
    train, _ = load_digits(8, "pad", "train")
    test, _ = load_digits(8, "pad", "test")
    duplicated = torch.cat([train, train[:20].repeat(5, 1, 1, 1)])  # duplicates must not zero the yardstick
    copies, fresh = train[:50], test[:50]
    r_copy, r_fresh = nn_distance_ratio(copies, duplicated), nn_distance_ratio(fresh, duplicated)
    assert torch.all(r_copy == 0)
    assert float(r_fresh.min()) > 1 / 3 and 0.5 < float(r_fresh.median()) < 3
    mixed = torch.cat([copies[:10], fresh[:30]])
    assert fraction_memorized(mixed, duplicated) == pytest.approx(10 / 40)
    with pytest.raises(ValueError, match="same item shape"):
        nn_distance_ratio(torch.randn(3, 5), train)


def test_noise_difference_uses_the_same_noisy_input():
    """For an exact class-conditional mixture, d equals ||eps(x_t, c) - eps(x_t, null)|| computed by hand on the
    x_t drawn from the same generator; it is zero when the condition is the null one."""
    path = LinearVP()
    gmm = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), 0.3, labels=[0, 1])
    model = ExactModel(gmm, path)
    x0, y = gmm.sample(64, generator=torch.Generator().manual_seed(0)), torch.zeros(64, dtype=torch.long)
    times = torch.tensor([0.3, 0.6], dtype=torch.float64)
    d = noise_difference(model, x0, {"y": y}, {}, times, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    want = []
    for t in times:
        tt = t.expand(64)
        xt = path.perturb(x0.double(), torch.randn(x0.shape, generator=g, dtype=torch.float64), tt).to(x0.dtype)
        want.append((model.eps(xt, tt.to(x0.dtype), y=y) - model.eps(xt, tt.to(x0.dtype))).norm(dim=1))
    assert torch.allclose(d, torch.stack(want).mean(0))
    assert float(d.mean()) > 0.1
    assert float(noise_difference(model, x0, {}, {}, times).abs().max()) == 0.0


def test_memcontrol_search_is_deterministic_and_returns_the_pareto_front():
    torch.manual_seed(0)
    model = Model(MLP(2, hidden=16, depth=2, time_dim=8), LinearVP())
    sites = ["blocks.0", "blocks.1", "inp"]
    assert site_targets(model.net, "blocks.0") == ["blocks.0.film", "blocks.0.net.1", "blocks.0.net.3"]
    data = TensorSource(torch.randn(64, 2))
    probe = torch.randn(32, 2), torch.full((32,), 0.5)

    def evaluate(m):
        with torch.no_grad():
            change = float((m.eps(*probe) - model.eps(*probe)).norm())
        return change, -change + 0.01 * sum(p.numel() for p in m.net.parameters() if p.requires_grad)

    runs = [memcontrol_search(model, sites, data, evaluate, n_trials=6, steps=2, batch_size=16, progress=False)
            for _ in range(2)]  # fmt: skip
    a, b = runs
    assert [(t["mask"], t["memorization"], t["quality"]) for t in a.trials] == [
        (t["mask"], t["memorization"], t["quality"]) for t in b.trials
    ]
    for p in a.pareto:  # nobody dominates a front point
        assert not any(
            t["memorization"] <= p["memorization"] and t["quality"] <= p["quality"] and t != p
            and (t["memorization"] < p["memorization"] or t["quality"] < p["quality"])
            for t in a.trials
        )  # fmt: skip
    assert a.chosen in a.pareto and len(a.chosen["mask"]) == 3
    with pytest.raises(ValueError, match="holds no Linear/Conv2d"):
        memcontrol_search(model, ["nonexistent"], data, evaluate, n_trials=1, progress=False)
