"""Tests for the networks: time embedding resolution, shapes, zero init, conditioning, shape errors, fitting."""

from __future__ import annotations

import pytest
import torch

from diffusio.nets import MLP, FourierTimeEmbedding, UNet


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _seeded():
    """Module initialisation uses the global RNG; fork it so tests are reproducible and leave no trace."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


def small_unet(**kw) -> UNet:
    return UNet(channels=(16, 32), time_dim=32, **kw)


# --- time embedding -------------------------------------------------------------------------------------
def test_time_embedding_resolves_small_differences_everywhere_in_range():
    emb = FourierTimeEmbedding(64)
    t = torch.linspace(-5, 5, 201)
    d = (emb.features(t + 1e-3) - emb.features(t)).norm(dim=1)
    assert d.min() > 0.5
    grid = torch.linspace(-5, 5, 101)  # step 0.1
    f = emb.features(grid)
    dist = torch.cdist(f, f) + 1e3 * torch.eye(len(grid))
    assert dist.min() > 0.5  # no two times in [-5, 5] share features (no aliasing)
    assert emb(t).shape == (201, 64)


def test_time_embedding_rejects_bad_t():
    with pytest.raises(ValueError, match=r"t must have shape \(batch,\)"):
        FourierTimeEmbedding(16)(torch.zeros(3, 1))


# --- MLP ------------------------------------------------------------------------------------------------
def test_mlp_shape_and_zero_init():
    net = MLP(3, hidden=32, depth=2, out_dim=5)
    out = net(torch.randn(7, 3, generator=gen()), torch.rand(7, generator=gen()))
    assert out.shape == (7, 5) and torch.equal(out, torch.zeros(7, 5))
    assert MLP(2)(torch.randn(4, 2), torch.rand(4)).shape == (4, 2)


def _train_steps(net, x, t, y, steps=3, lr=1e-2):
    """A few SGD steps: with zero-initialised last layers, class information reaches the output after two."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    target = torch.randn(net(x, t, y).shape, generator=gen(9))
    for _ in range(steps):
        opt.zero_grad()
        (net(x, t, y) - target).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_class_conditioning_and_null_class(kind):
    if kind == "mlp":
        net, x = MLP(2, hidden=32, depth=2, num_classes=3), torch.randn(6, 2, generator=gen())
    else:
        net, x = small_unet(num_classes=3), torch.randn(6, 1, 8, 8, generator=gen())
    t = torch.rand(6, generator=gen(1))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    _train_steps(net, x, t, y)
    with torch.no_grad():
        outs = [net(x, t, torch.full((6,), k)) for k in range(4)]
        assert all(not torch.allclose(outs[0], o) for o in outs[1:])
        assert torch.equal(net(x, t), outs[3])  # y=None is the null class num_classes


def test_unconditional_net_rejects_labels():
    with pytest.raises(ValueError, match="num_classes"):
        MLP(2)(torch.randn(2, 2), torch.rand(2), torch.tensor([0, 1]))


def test_label_range_checked():
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\]"):
        MLP(2, num_classes=3)(torch.randn(2, 2), torch.rand(2), torch.tensor([0, 4]))


def test_mlp_shape_errors():
    net = MLP(2, hidden=16, depth=1)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        net(torch.randn(4, 3), torch.rand(4))
    with pytest.raises(ValueError, match=r"t must have shape \(batch,\)"):
        net(torch.randn(4, 2), torch.rand(4, 1))
    with pytest.raises(ValueError, match=r"t must have shape \(batch,\)"):
        net(torch.randn(4, 2), torch.rand(3))


def test_mlp_overfits_a_tiny_batch():
    x, t = torch.randn(16, 2, generator=gen(1)), torch.rand(16, generator=gen(2))
    target = torch.randn(16, 2, generator=gen(3))
    net = MLP(2, hidden=64, depth=2, time_dim=32)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    start = (net(x, t) - target).square().mean().item()
    for _ in range(300):
        loss = (net(x, t) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < start / 10


# --- U-Net ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [8, 16, 32])
def test_unet_shapes_and_zero_init(size):
    net = UNet(in_channels=2, out_channels=3, channels=(16, 32, 32), attention_levels=(1,), num_res_blocks=2)
    out = net(torch.randn(2, 2, size, size), torch.rand(2))
    assert out.shape == (2, 3, size, size) and torch.equal(out, torch.zeros_like(out))


def test_unet_default_config_runs():
    net = UNet()
    out = net(torch.randn(3, 1, 16, 16), torch.rand(3) * 3 - 2)
    assert out.shape == (3, 1, 16, 16)


def test_unet_shape_errors():
    net = UNet()
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\)"):
        net(torch.randn(2, 3, 16, 16), torch.rand(2))
    with pytest.raises(ValueError, match=r"t must have shape \(batch,\)"):
        net(torch.randn(2, 1, 16, 16), torch.rand(()))
    with pytest.raises(ValueError, match=r"divisible by 4 .*channels"):
        net(torch.randn(2, 1, 10, 10), torch.rand(2))
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(attention_levels=(3,))


def test_unet_overfits_a_tiny_batch():
    x, t = torch.randn(4, 1, 8, 8, generator=gen(1)), torch.rand(4, generator=gen(2))
    target = torch.randn(4, 1, 8, 8, generator=gen(3))
    net = small_unet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    start = (net(x, t) - target).square().mean().item()
    for _ in range(200):
        loss = (net(x, t) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < start / 10
