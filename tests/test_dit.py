"""DiT with muP: shapes, every path/head, muP per-parameter learning rates and readout, coordinate check, resume."""

import math

import pytest
import torch

from diffusio.app.config import load_model, run_training
from diffusio.core.paths import EDM, CosineVP, LinearVP, RectifiedFlow
from diffusio.models import EDMPrecond, Model
from diffusio.nets.dit import DiT
from diffusio.samplers import sample
from diffusio.training.losses import DiffusionLoss


def _nonzero_readout(net: DiT) -> DiT:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net


def test_dit_shapes_zero_init_patchify_roundtrip_and_validation():
    net = DiT(in_channels=2, image_size=8, patch=2, width=32, head_dim=8, num_classes=3)
    x, t = torch.randn(5, 2, 8, 8), torch.rand(5)
    out = net(x, t, torch.tensor([0, 1, 2, 3, 0]))
    assert out.shape == (5, 2, 8, 8) and out.abs().max() == 0
    assert torch.equal(net.unpatchify(net.patchify(x)), x)
    assert net.patchify(x).shape == (5, 16, 8)
    with pytest.raises(ValueError, match="head_dim"):
        DiT(width=30, head_dim=8)
    with pytest.raises(ValueError, match="patch"):
        DiT(image_size=9, patch=2)
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(5, 2, 16, 16), t)


@pytest.mark.parametrize(
    ("path", "kind", "precond"),
    [
        (LinearVP(), "eps", None),
        (CosineVP(), "v", None),
        (RectifiedFlow(), "velocity", None),
        (EDM(), "x0", EDMPrecond()),
    ],
)
def test_dit_trains_and_samples_on_every_path_and_head(path, kind, precond):
    torch.manual_seed(0)
    model = Model(DiT(width=32, head_dim=8, num_classes=10, mup=False), path, kind, precond)
    loss_fn = DiffusionLoss(kind)
    x0, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    t, noise = loss_fn.draw(x0, path)
    loss = loss_fn(model, x0, t, noise, {"y": y}).mean()
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in model.net.parameters() if p.grad is not None) > 0
    out = sample(model, shape=(4, 1, 8, 8), solver="heun", steps=3, cond={"y": y[:4]}).x
    assert out.shape == (4, 1, 8, 8) and torch.isfinite(out).all()


def _kind(name: str) -> str:
    """The muP class a DiT parameter should have (Zheng et al. 2025, Table of parameter types)."""
    if name.endswith("bias") or name.startswith(("embed.", "cond.label", "cond.time.mlp.0", "readout")):
        return "vector"
    return "hidden"


@pytest.mark.parametrize("width", [32, 64, 128])
def test_mup_learning_rates_per_parameter(width):
    net = DiT(width=width, head_dim=16, base_width=32, num_classes=10)
    opt = net.make_optimizer(lr=1e-2)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    hidden = 0
    for name, p in net.named_parameters():
        want = 1e-2 * 32 / width if _kind(name) == "hidden" else 1e-2
        assert lr_of[id(p)] == pytest.approx(want), name
        hidden += _kind(name) == "hidden"
    assert hidden >= 10
    sp = DiT(width=width, head_dim=16, mup=False).make_optimizer(lr=1e-2)
    assert {g["lr"] for g in sp.param_groups} == {1e-2}


def test_mup_readout_multiplier():
    torch.manual_seed(0)
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    a = _nonzero_readout(DiT(width=64, head_dim=16, base_width=32))
    torch.nn.init.zeros_(a.readout.bias)  # the multiplier scales the readout's input, not its bias
    b = DiT(width=64, head_dim=16, base_width=32, output_mult=2.0)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x, t), 2 * a(x, t))
    sp = DiT(width=64, head_dim=16, mup=False)
    sp.load_state_dict(a.state_dict())
    torch.testing.assert_close(sp(x, t), 2 * a(x, t))  # width_mult = 64 / 32 = 2 divides the muP readout's input


def _block_scales(mup: bool, width: int, steps: int = 3, lr: float = 2**-6) -> list[float]:
    """mean |h| of each block output and of the net output after ``steps`` Adam steps (coordinate check)."""
    torch.manual_seed(0)
    net = DiT(width=width, head_dim=8, base_width=16, mup=mup)
    model, loss_fn = Model(net, LinearVP(), "eps"), DiffusionLoss("eps")
    opt = net.make_optimizer(lr=lr)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(64, 1, 8, 8, generator=g)
    for _ in range(steps):
        t, noise = loss_fn.draw(x0, model.path, g)
        loss = loss_fn(model, x0, t, noise).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    scales, hooks = (
        [],
        [b.register_forward_hook(lambda m, i, o: scales.append(float(o.abs().mean()))) for b in net.blocks],
    )
    with torch.no_grad():
        out = net(x0, torch.full((64,), 0.5))
    for h in hooks:
        h.remove()
    return [*scales, float(out.abs().mean())]


def test_coordinate_check_flat_under_mup_growing_under_sp():
    widths = [16, 32, 64, 128]
    logw = torch.log2(torch.tensor(widths, dtype=torch.float64))

    def slopes(mup):
        s = torch.log2(torch.tensor([_block_scales(mup, w) for w in widths], dtype=torch.float64))
        a = torch.stack([logw, torch.ones_like(logw)], 1)
        return torch.linalg.lstsq(a, s).solution[0]

    mup_slopes, sp_slopes = slopes(True), slopes(False)
    assert mup_slopes.abs().max() < 0.25, mup_slopes
    assert sp_slopes.max() > 0.5, sp_slopes


def test_dit_checkpoint_roundtrip_and_resume_keep_mup(tmp_path):
    cfg = {
        "data": {"name": "digits"},
        "path": "vp_linear",
        "net": {"name": "dit", "width": 64, "head_dim": 16, "base_width": 32, "depth": 1},
        "train": {"steps": 3, "batch_size": 16, "warmup": 2, "lr": 1e-3, "progress": False, "ckpt_every": 2},
    }
    tr = run_training(cfg, tmp_path, progress=False)
    lrs = sorted({g["lr"] for g in tr.optimizer.param_groups})
    assert lrs == pytest.approx([5e-4, 1e-3])  # hidden matrices at lr / width_mult after warm-up
    model, _ = load_model(tmp_path / "model.safetensors")
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    tr.model.net.load_state_dict(tr.ema.state_dict())
    torch.testing.assert_close(model.net(x, t), tr.model.net(x, t), rtol=0, atol=0)
    assert hasattr(next(model.net.parameters()), "infshape")
    tr2 = run_training({**cfg, "train": {**cfg["train"], "steps": 4}}, tmp_path, resume=True, progress=False)
    assert tr2.step == 4 and math.isclose(min(g["lr"] for g in tr2.optimizer.param_groups), 5e-4)
