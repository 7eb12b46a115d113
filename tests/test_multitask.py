"""Multi-task diffusion: the aggregated forward process, the N = 1 reduction, sampling and classification."""

import pytest
import torch
from torch import nn

from diffusio.app.config import load_model, run_training
from diffusio.core.paths import LinearVP, RectifiedFlow
from diffusio.families.multitask import MultiTaskLoss, MultiTaskModel, classify, sample_multitask
from diffusio.models import Model
from diffusio.nets.heads import image_label_net
from diffusio.training.losses import DiffusionLoss


def _model(weight=1.0):
    torch.manual_seed(0)
    return MultiTaskModel(image_label_net(1, 8, 10, channels=(8, 16), features=8, time_dim=16), LinearVP(), weight)


def test_continuous_shift_is_the_limit_of_the_discrete_recursion():
    """b_t = sqrt(alpha_t)(b_{t-1} + a_t), a_t = w beta_t sqrt(abar_{t-1}) E (Chen et al. 2024's kernel with our w_t)
    tends to alpha(t) * (-2 w log alpha(t)) * E on the linear VP path."""
    path, w, n = LinearVP(), 0.7, 4000
    t = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    abar = path.alpha(t) ** 2
    b = torch.zeros((), dtype=torch.float64)
    for i in range(1, n + 1):
        beta = 1 - abar[i] / abar[i - 1]
        b = torch.sqrt(1 - beta) * (b + w * beta * torch.sqrt(abar[i - 1]))
        if i in (n // 4, n // 2, n):
            model = _model(w)
            e = torch.ones(1, 10, dtype=torch.float64) / 10
            with torch.no_grad():
                want = float(model.shift(t[i : i + 1], e, torch.zeros(1, 1, 8, 8, dtype=torch.float64)).flatten()[0])
                emb = float(model.net.encoders["label"](e.float()).flatten()[0])
            assert b * emb == pytest.approx(want, rel=3e-3)
    assert float(path.alpha(torch.tensor(1.0)) * -2 * torch.log(path.alpha(torch.tensor(1.0)))) < 0.07  # b_T small


def test_no_aggregation_and_no_label_term_is_the_ddpm_loss():
    model = _model(weight=0.0)

    class ImageOnly(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, t):
            return self.net(x, t)["image"]

    nn.init.normal_(model.net.heads["image"].net[-1].weight, std=0.1)
    g = torch.Generator().manual_seed(0)
    x0, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    loss = MultiTaskLoss(label_weight=0.0)
    t, noise = loss.draw(x0, model.path, g)
    ref = DiffusionLoss("eps")(Model(ImageOnly(model.net), model.path, "eps"), x0, t, noise)
    assert torch.equal(loss(model, x0, t, noise, {"y": y}), ref)
    with_label = MultiTaskLoss(2.0)(model, x0, t, noise, {"y": y})
    logits = model.heads(
        x0 * model.path.alpha(t)[:, None, None, None].float()
        + noise * model.path.sigma(t)[:, None, None, None].float(),
        t,
    )[1]
    ce = nn.functional.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(with_label, ref + 2.0 * ce / 64)  # the paper's ||.||^2 + lambda CE, over D = 64


def test_label_encoder_rows_have_unit_rms_and_probabilities_average_them():
    enc = _model().net.encoders["label"]
    with torch.no_grad():
        enc.table.mul_(7.0)
    e = enc(torch.arange(10))
    torch.testing.assert_close(e.pow(2).flatten(1).mean(1), torch.ones(10))
    p = torch.softmax(torch.randn(3, 10), 1)
    torch.testing.assert_close(enc(p), torch.einsum("bk,k...->b...", p, e))


def test_sampling_classify_and_validation():
    model = _model().eval()
    g = torch.Generator().manual_seed(0)
    x, y = sample_multitask(model, 6, steps=4, generator=g)
    assert x.shape == (6, 1, 8, 8) and y.shape == (6,) and torch.isfinite(x).all()
    labels = torch.arange(6)
    _, y2 = sample_multitask(model, 6, steps=4, labels=labels, eta=1.0, generator=g)
    assert torch.equal(y2, labels)
    p = classify(model, x, generator=g)
    assert p.shape == (6, 10) and torch.allclose(p.sum(1), torch.ones(6))
    with pytest.raises(ValueError, match="VP path"):
        MultiTaskModel(model.net, RectifiedFlow())
    with pytest.raises(ValueError, match="labels"):
        model.shift(torch.rand(2), torch.tensor([0, 10]), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="eta"):
        sample_multitask(model, 2, eta=2.0)


def test_multitask_family_trains_from_config_and_reloads(tmp_path):
    cfg = {
        "family": "multitask",
        "data": {"name": "digits", "size": 8, "mode": "pad", "split": "train"},
        "net": {"name": "image_label", "channels": [8, 16], "features": 8, "time_dim": 16},
        "train": {"steps": 2, "batch_size": 8, "progress": False},
    }
    tr = run_training(cfg, tmp_path, progress=False)
    model, stored = load_model(tmp_path / "model.safetensors")
    assert isinstance(model, MultiTaskModel) and stored["family"] == "multitask"
    tr.model.net.load_state_dict(tr.ema.state_dict())
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3, dtype=torch.float64)
    a, b = model.heads(x, t), tr.model.heads(x, t)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="label_weight"):
        run_training({**cfg, "loss": {"label_weight": -1}}, None, progress=False)
