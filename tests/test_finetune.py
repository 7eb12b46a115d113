"""Adapters through peft (merge = same outputs, save/load, clear errors) and SaRA (selection, frozen entries,
sparse gradients and optimizer state, nuclear-norm gradient, progressive re-selection, save/load)."""

from __future__ import annotations

import pytest
import torch

from diffusio.core.paths import LinearVP
from diffusio.data.sources import TensorSource
from diffusio.finetune import ADAPTERS, adapt, finetune, load_adapter, load_sara, sara, save_adapter, save_sara
from diffusio.models import Model
from diffusio.nets import MLP, UNet


def _unet_model(seed=0) -> Model:
    torch.manual_seed(seed)
    net = UNet(1, channels=(8, 16), time_dim=16, num_classes=3).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    return Model(net, LinearVP())


def _mlp_model(seed=0) -> Model:
    torch.manual_seed(seed)
    net = MLP(4, hidden=32, depth=1, time_dim=16).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return Model(net, LinearVP())


def _inputs(model, n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 1, 8, 8) if isinstance(model.net, UNet) else (n, 4)
    cond = {"y": torch.arange(n) % 3} if isinstance(model.net, UNet) else {}
    return torch.randn(shape, generator=g), 0.1 + 0.8 * torch.rand(n, generator=g), cond


@pytest.mark.parametrize("method", ADAPTERS)
@pytest.mark.parametrize("make", [_mlp_model, _unet_model])
def test_adapters_start_at_the_base_and_merge_to_the_same_outputs(method, make, tmp_path):
    base = make()
    x, t, cond = _inputs(base)
    ad = adapt(base, method, rank=2)
    with torch.no_grad():
        ref = base.eps(x, t, **cond)
        assert torch.allclose(ad.eps(x, t, **cond), ref, atol=1e-5)  # identity at initialisation
        g = torch.Generator().manual_seed(0)
        for p in ad.net.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        out = ad.eps(x, t, **cond)
        assert (out - ref).abs().max() > 1e-4
        assert torch.allclose(ad.merge().eps(x, t, **cond), out, atol=1e-4) and ad.merged
        assert torch.allclose(ad.unmerge().eps(x, t, **cond), out, atol=1e-4)
    assert 0 < ad.trainable_parameters() < sum(p.numel() for p in base.net.parameters())
    back = load_adapter(save_adapter(ad, tmp_path / "a.safetensors"), make())
    with torch.no_grad():
        assert torch.allclose(back.eps(x, t, **cond), out, atol=1e-6)


def test_adapter_errors():
    m = _unet_model()
    with pytest.raises(ValueError, match="matches no Linear/Conv2d layer"):
        adapt(m, "lora", target_modules=["attention_qkv_typo"])
    with pytest.raises(ValueError, match="unknown adapter"):
        adapt(m, "dora")
    ad = adapt(m, "lora", target_modules=["conv1"])
    assert ad.targets and all(n.endswith("conv1") for n in ad.targets)


@pytest.mark.parametrize("factor", [2, 4])
def test_lokr_decompose_factor_sets_the_small_kronecker_factor(factor, tmp_path):
    base = _mlp_model()
    layer, r = "blocks.0.net.1", 2  # a 32 x 32 Linear
    ad = adapt(base, "lokr", target_modules=[layer], rank=r, decompose_factor=factor)
    shapes = {n.rsplit(".", 2)[1]: tuple(p.shape) for n, p in ad.net.named_parameters()
              if p.requires_grad}  # fmt: skip
    assert shapes["lokr_w1"] == (factor, factor)
    big = 32 // factor  # the large factor is (32/f) x (32/f), low-rank when r < its side / 2
    expected = factor**2 + (r * 2 * big if r < big / 2 else big * big)
    assert ad.trainable_parameters() == expected
    x, t, cond = _inputs(base)
    with torch.no_grad():
        for p in ad.net.parameters():
            if p.requires_grad:
                p.add_(0.1)
        delta = ad.merged_state_dict()[f"{layer}.weight"] - base.net.get_submodule(layer).weight
        # a Kronecker product kron(A (f x f), B): every (32/f)-block of the update is a multiple of one matrix
        blocks = delta.reshape(factor, big, factor, big).permute(0, 2, 1, 3).reshape(factor * factor, big * big)
        assert torch.linalg.matrix_rank(blocks, rtol=1e-4) == 1
        out = ad.eps(x, t, **cond)
    back = load_adapter(save_adapter(ad, tmp_path / "k.safetensors"), _mlp_model())
    assert back.trainable_parameters() == expected
    with torch.no_grad():
        assert torch.allclose(back.eps(x, t, **cond), out, atol=1e-6)
    for bad in (0, -2, True, 2.0):
        with pytest.raises(ValueError, match="decompose_factor"):
            adapt(base, "lokr", decompose_factor=bad)


def test_sara_selection_and_identity():
    base = _unet_model()
    tau = 0.03
    s = sara(base, tau)
    n_masked = sum(
        int((p.abs() < tau).sum()) for n, p in base.net.named_parameters() if n.endswith("weight") and p.ndim >= 2
    )
    assert s.trainable_parameters() == n_masked > 0
    for name, m, pz in s.sparse_layers():
        w0 = base.net.get_submodule(name).weight
        assert torch.equal(pz.mask, w0.abs() < tau)
    x, t, cond = _inputs(base)
    with torch.no_grad():
        assert torch.allclose(s.eps(x, t, **cond), base.eps(x, t, **cond), atol=1e-7, rtol=0)


def test_sara_trains_only_masked_entries_with_sparse_state():
    base = _unet_model()
    s = sara(base, fraction=0.2, lambda_rank=1e-3, min_rank_dim=4)
    x, t, cond = _inputs(base, 8)
    opt = torch.optim.AdamW(s.parameters_to_train(), lr=1e-2)
    for _ in range(5):
        loss = s.eps(x, t, **cond).square().mean() + s.rank_penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, m, pz in s.sparse_layers():
        assert m.parametrizations.weight.original.grad is None  # no full-size gradient kept
        w0, w1 = base.net.get_submodule(name).weight, m.weight.detach()
        assert torch.equal(w1[~pz.mask], w0[~pz.mask])  # frozen entries bit-identical
    changed = sum(int((m.weight.detach() != base.net.get_submodule(n).weight).sum()) for n, m, _ in s.sparse_layers())
    assert changed > 0
    state = sum(v.numel() for st in opt.state.values() for k, v in st.items() if k in ("exp_avg", "exp_avg_sq"))
    assert state == 2 * s.trainable_parameters()


def test_nuclear_norm_gradient_is_uv_on_the_mask():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(80, 96, generator=g)
    mask = torch.rand(80, 96, generator=g) < 0.3
    p = w[mask].clone().requires_grad_(True)
    sparse = torch.zeros(80, 96).masked_scatter(mask, p)
    torch.linalg.matrix_norm(sparse, ord="nuc").backward()
    u, _, vh = torch.linalg.svd(sparse.detach(), full_matrices=False)
    assert torch.allclose(p.grad, (u @ vh)[mask], atol=1e-5)


def test_sara_progressive_reselection_and_save_load(tmp_path):
    base = _mlp_model()
    x = torch.randn(256, 4)
    s = sara(base, fraction=0.3)
    out = finetune(s, TensorSource(x), steps=12, lr=5e-2, batch_size=32, reselect_at=6, progress=False)
    assert out["steps"] == 12 and out["loss"] > 0
    for _, m, pz in s.sparse_layers():
        # after re-selection at step 6 the mask is |W| < tau on the weights of that moment; entries that grew
        # past tau are frozen since, so every current masked entry was small at re-selection
        original = m.parametrizations.weight.original
        assert torch.equal(pz.mask, original.abs() < s.tau)
        assert torch.equal(m.weight.detach()[~pz.mask], original[~pz.mask])
    back = load_sara(save_sara(s, tmp_path / "s.safetensors"), base)
    xx, t, _ = _inputs(base)
    with torch.no_grad():
        assert torch.allclose(back.eps(xx, t), s.eps(xx, t), atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "sara"])
def test_train_finetune_from_a_checkpoint(tmp_path, method):
    """``diffusio train CONFIG --finetune CKPT``: adapter/SaRA file + a merged model.safetensors that loads."""
    from diffusio.app.cli import main
    from diffusio.app.config import build_model, load_model
    from diffusio.training.checkpoint import save_model_file

    cfg = {"data": {"name": "toy", "dataset": "moons"}, "path": {"name": "vp_linear"},
           "net": {"name": "mlp", "hidden": 16, "depth": 1, "time_dim": 8}}  # fmt: skip
    model = build_model(cfg, (2,))
    save_model_file(tmp_path / "base.safetensors", model.net.state_dict(), {**cfg, "data_shape": [2]}, 1)
    section = {"method": "lora", "rank": 2} if method == "lora" else {"method": "sara", "fraction": 0.2}
    import yaml

    (tmp_path / "ft.yaml").write_text(yaml.safe_dump({**cfg, "finetune": section, "train": {"batch_size": 16}}))
    out = tmp_path / "out"
    args = ["train", str(tmp_path / "ft.yaml"), "--finetune", str(tmp_path / "base.safetensors"), "--steps", "3"]
    assert main([*args, "--out", str(out)]) == 0
    assert (out / ("adapter.safetensors" if method == "lora" else "sara.safetensors")).is_file()
    _, tcfg = load_model(out / "model.safetensors")
    assert tcfg["finetune"]["method"] == method
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**cfg, "finetune": {"method": "lora", "target_modules": ["nope"]}}))
    assert main(["train", str(bad), "--finetune", str(tmp_path / "base.safetensors"), "--steps", "1"]) == 2


def test_finetune_label_dropout_on_a_wrapped_class_conditional_net():
    from diffusio.nets import FlattenNet

    torch.manual_seed(0)
    model = Model(FlattenNet(MLP(4, hidden=16, depth=1, time_dim=8, num_classes=3), (1, 2, 2)), LinearVP())
    data = TensorSource(torch.randn(32, 1, 2, 2), torch.arange(32) % 3)
    ad = adapt(model, "lora", rank=2)
    assert finetune(ad, data, 2, batch_size=8, label_dropout=0.5, progress=False)["steps"] == 2
    with pytest.raises(ValueError, match="class-conditional"):
        finetune(_mlp_model(), TensorSource(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), 1, label_dropout=0.5)
