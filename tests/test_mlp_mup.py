"""muP for the residual MLP: per-parameter learning rates and inits against mup's rules, readout multiplier,
coordinate check (flat under muP, growing under SP), checkpoint round trip and resume."""

import math

import pytest
import torch

from diffusio.app.config import load_model, run_training
from diffusio.core.paths import LinearVP
from diffusio.data.toy import sample_toy
from diffusio.models import Model
from diffusio.nets import MLP
from diffusio.training.losses import DiffusionLoss

BASE = 32


def _hidden(name: str) -> bool:
    """Tensor Programs V, Table 3: only the residual blocks' hidden x hidden matrices have two width dimensions."""
    return name.startswith("blocks.") and ".net." in name and name.endswith("weight")


@pytest.mark.parametrize("width", [32, 64, 256])
def test_mup_mlp_learning_rate_per_parameter(width):
    net = MLP(2, hidden=width, depth=2, num_classes=3, mup=True, base_hidden=BASE)
    lr_of = {id(p): g["lr"] for g in net.make_optimizer(lr=1e-2).param_groups for p in g["params"]}
    for name, p in net.named_parameters():
        assert lr_of[id(p)] == pytest.approx(1e-2 * BASE / width if _hidden(name) else 1e-2), name
    assert sum(_hidden(n) for n, _ in net.named_parameters()) == 4
    sp = MLP(2, hidden=width, depth=2).make_optimizer(lr=1e-2)
    assert {g["lr"] for g in sp.param_groups} == {1e-2}


def test_mup_mlp_init_follows_mup_rules():
    """PyTorch's fan-in init (bound 1/sqrt(fan_in)) is muP's for input and hidden weights; mup.set_base_shapes
    rescales the biases of width-fan-in layers to their base-width bound 1/sqrt(base) and the readout is zero."""
    torch.manual_seed(0)
    width = 512
    net = MLP(2, hidden=width, depth=2, time_dim=16, mup=True, base_hidden=BASE)
    sp = MLP(2, hidden=width, depth=2, time_dim=16)
    bounds = {"inp.weight": 1 / math.sqrt(2), "blocks.0.film.weight": 1 / math.sqrt(16),
              "blocks.0.net.1.weight": 1 / math.sqrt(width), "blocks.1.net.3.bias": 1 / math.sqrt(BASE)}  # fmt: skip
    params = dict(net.named_parameters())
    for name, bound in bounds.items():
        amax = float(params[name].detach().abs().max())
        assert 0.9 * bound <= amax <= bound, (name, amax, bound)
        assert params[name].infshape is not None
    sp_bias = float(dict(sp.named_parameters())["blocks.1.net.3.bias"].detach().abs().max())
    assert sp_bias <= 1 / math.sqrt(width)  # the standard init shrinks it with width; muP keeps it constant
    assert params["out.2.weight"].abs().max() == 0 and params["out.2.bias"].abs().max() == 0


def test_mup_mlp_readout_multiplier_and_base_width_is_sp():
    torch.manual_seed(0)
    x, t = torch.randn(5, 2), torch.rand(5)
    a = MLP(2, hidden=64, depth=1, mup=True, base_hidden=BASE)
    with torch.no_grad():
        a.out[2].weight.normal_()
    b = MLP(2, hidden=64, depth=1, mup=True, base_hidden=BASE, output_mult=2.0)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x, t), 2 * a(x, t))
    sp = MLP(2, hidden=64, depth=1)
    sp.load_state_dict(a.state_dict())
    torch.testing.assert_close(sp(x, t), 2 * a(x, t))  # width_mult = 64 / 32 divides the readout's input
    same = MLP(2, hidden=BASE, depth=1, mup=True, base_hidden=BASE)
    sp_base = MLP(2, hidden=BASE, depth=1)
    sp_base.load_state_dict(same.state_dict())
    torch.testing.assert_close(same(x, t), sp_base(x, t), rtol=0, atol=0)
    with pytest.raises(ValueError, match="base_hidden"):
        MLP(2, mup=True, base_hidden=0)
    with pytest.raises(ValueError, match="output_mult"):
        MLP(2, mup=True, output_mult=float("nan"))


def _scales(mup: bool, width: int, steps: int = 3, lr: float = 2**-5) -> list[float]:
    """mean |h| of each block output and of the output after ``steps`` Adam steps on moons (coordinate check)."""
    torch.manual_seed(0)
    net = MLP(2, hidden=width, depth=2, mup=mup, base_hidden=BASE)
    model, loss_fn = Model(net, LinearVP(), "eps"), DiffusionLoss("eps")
    opt = net.make_optimizer(lr=lr)
    g = torch.Generator().manual_seed(1)
    x0 = sample_toy("moons", 256, generator=g)
    for _ in range(steps):
        t, noise = loss_fn.draw(x0, model.path, g)
        opt.zero_grad()
        loss_fn(model, x0, t, noise).mean().backward()
        opt.step()
    scales = []
    hooks = [b.register_forward_hook(lambda m, i, o: scales.append(float(o.abs().mean()))) for b in net.blocks]
    with torch.no_grad():
        out = net(x0, torch.full((256,), 0.5))
    for h in hooks:
        h.remove()
    return [*scales, float(out.abs().mean())]


def test_mup_mlp_coordinate_check():
    widths = [32, 64, 128, 256]
    logw = torch.log2(torch.tensor(widths, dtype=torch.float64))

    def slopes(mup):
        s = torch.log2(torch.tensor([_scales(mup, w) for w in widths], dtype=torch.float64))
        return torch.linalg.lstsq(torch.stack([logw, torch.ones_like(logw)], 1), s).solution[0]

    mup_slopes, sp_slopes = slopes(True), slopes(False)
    assert mup_slopes.abs().max() < 0.25, mup_slopes
    assert sp_slopes.max() > 0.5, sp_slopes


def test_mup_mlp_checkpoint_roundtrip_and_resume(tmp_path):
    cfg = {
        "data": {"name": "toy", "dataset": "moons"},
        "path": "vp_linear",
        "net": {"name": "mlp", "hidden": 64, "depth": 1, "mup": True, "base_hidden": BASE},
        "train": {"steps": 3, "batch_size": 32, "warmup": 2, "lr": 1e-3, "progress": False, "ckpt_every": 2},
    }
    tr = run_training(cfg, tmp_path, progress=False)
    assert sorted({g["lr"] for g in tr.optimizer.param_groups}) == pytest.approx([5e-4, 1e-3])
    model, _ = load_model(tmp_path / "model.safetensors")
    assert hasattr(next(model.net.parameters()), "infshape")
    tr.model.net.load_state_dict(tr.ema.state_dict())
    x, t = torch.randn(4, 2), torch.rand(4)
    torch.testing.assert_close(model.net(x, t), tr.model.net(x, t), rtol=0, atol=0)
    tr2 = run_training({**cfg, "train": {**cfg["train"], "steps": 4}}, tmp_path, resume=True, progress=False)
    assert tr2.step == 4 and math.isclose(min(g["lr"] for g in tr2.optimizer.param_groups), 5e-4)
