"""The conversion hub: every pair of heads round-trips on every path; loss-weight identities hold."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusio.core.parametrization import KINDS, convert, from_x0, to_x0
from diffusio.core.time import broadcast

from .conftest import ALL_PATHS


@settings(max_examples=200, deadline=None)
@given(
    i=st.integers(0, len(ALL_PATHS) - 1),
    u=st.floats(0.01, 0.99),
    src=st.sampled_from(KINDS),
    dst=st.sampled_from(KINDS),
    seed=st.integers(0, 2**16),
)
def test_round_trip(i, u, src, dst, seed):
    path = ALL_PATHS[i]
    g = torch.Generator().manual_seed(seed)
    t = torch.full((4,), path.t_min + u * (path.t_max - path.t_min), dtype=torch.float64)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    out = torch.randn(4, 3, generator=g, dtype=torch.float64)
    back = convert(convert(out, src, dst, x, t, path), dst, src, x, t, path)
    scale = 1 + out.abs().max()
    assert float((back - out).abs().max()) < 1e-9 * scale * (
        1 + float(path.noise_level(t[0])) + 1 / float(path.noise_level(t[0]))
    )


@settings(max_examples=50, deadline=None)
@given(i=st.integers(0, len(ALL_PATHS) - 1), u=st.floats(0.01, 0.99), seed=st.integers(0, 2**16))
def test_heads_agree_with_definitions(i, u, seed):
    """Given the true (x0, eps) of a point x_t, each head equals its definition in principles.md."""
    path = ALL_PATHS[i]
    g = torch.Generator().manual_seed(seed)
    t = torch.full((4,), path.t_min + u * (path.t_max - path.t_min), dtype=torch.float64)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    x = path.perturb(x0, eps, t)
    a, s = broadcast(path.alpha(t), x), broadcast(path.sigma(t), x)
    da, ds = broadcast(path.d_alpha(t), x), broadcast(path.d_sigma(t), x)
    want = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": -eps / s, "velocity": da * x0 + ds * eps}
    for kind, w in want.items():
        got = from_x0(kind, x0, x, t, path)
        assert torch.allclose(got, w, rtol=1e-7, atol=1e-7 * (1 + w.abs().max())), kind
        assert torch.allclose(to_x0(kind, w, x, t, path), x0, rtol=1e-6, atol=1e-6 * (1 + x0.abs().max())), kind


def test_loss_weight_identities():
    """The loss-weight identities of principles.md: x0, velocity, v and score errors vs the eps error."""
    for path in ALL_PATHS:
        t = torch.full((6,), 0.5 * (path.t_min + path.t_max), dtype=torch.float64)
        x = torch.randn(6, 5, dtype=torch.float64)
        e1, e2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
        d_eps = ((e1 - e2) ** 2).sum(1)
        a, s, lam, dlam = path.alpha(t), path.sigma(t), path.log_snr(t), path.d_log_snr(t)
        for kind, factor in [
            ("x0", torch.exp(-2 * lam)),
            ("velocity", (s * dlam) ** 2),
            ("v", ((a**2 + s**2) / a) ** 2),
            ("score", 1 / s**2),
        ]:
            d = ((convert(e1, "eps", kind, x, t, path) - convert(e2, "eps", kind, x, t, path)) ** 2).sum(1)
            assert torch.allclose(d, factor * d_eps, rtol=1e-10), (path.name, kind)


def test_unknown_kind():
    import pytest

    with pytest.raises(ValueError, match="unknown prediction 'noise'; valid: eps, x0, v, score, velocity"):
        to_x0("noise", torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), ALL_PATHS[0])
