"""Post-training quantization: calibration sets (NDTC statistics, time pairing), the int8 model as a Model (every
solver), error vs bits, save/load, and the errors for bad calibration sets and missing backends."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from diffusio.compress import (
    CalibrationSet,
    calibration_set,
    choose_keep_float,
    eps_error_per_t,
    layer_sensitivity,
    load_quantized,
    ndtc_indices,
    quantize,
    save_quantized,
)
from diffusio.compress import int8 as qmod
from diffusio.core.paths import LinearVP
from diffusio.core.timesteps import get_timesteps
from diffusio.data.gmm import GaussianMixture
from diffusio.models import ExactModel, Model, ModelBase
from diffusio.nets import MLP
from diffusio.samplers import SOLVERS, sample
from diffusio.samplers.dpm_v3 import Statistics

pytestmark = pytest.mark.xdist_group("compress")


def _mlp_model(seed=0, hidden=64) -> Model:
    torch.manual_seed(seed)
    net = MLP(2, hidden=hidden, depth=2, time_dim=16).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.15)
    return Model(net, LinearVP())


@pytest.fixture(scope="module")
def model():
    return _mlp_model()


def _inputs(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g), 0.05 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def q8(model):
    """W8A8 calibrated on the inputs it is evaluated on (the quantizer's error, not the calibration's)."""
    return quantize(model, CalibrationSet(*_inputs(256, 0)), backend="pt2e", compile=False, progress=False)


def _rel_err(a: ModelBase, b: ModelBase, n=256) -> float:
    x, t = _inputs(n, 1)
    with torch.no_grad():
        ea, eb = a.eps(x, t), b.eps(x, t)
    return float((ea - eb).norm() / ea.norm())


def test_ndtc_indices_match_the_clipped_rounded_normal():
    steps, mu, sigma = 50, 0.4, 0.4
    i = ndtc_indices(100_000, steps, mu, sigma, torch.Generator().manual_seed(0)).double()
    assert int(i.min()) >= 0 and int(i.max()) <= steps - 1
    # exact distribution of clamp(round(steps * N(mu, sigma^2)), 0, steps - 1)
    k = torch.arange(steps, dtype=torch.float64)
    cdf = lambda v: 0.5 * (1 + torch.erf((v / steps - mu) / (sigma * math.sqrt(2))))  # noqa: E731
    lo = torch.where(k == 0, torch.tensor(0.0, dtype=torch.float64), cdf(k - 0.5))
    hi = torch.where(k == steps - 1, torch.tensor(1.0, dtype=torch.float64), cdf(k + 0.5))
    p = hi - lo
    mean = float((p * k).sum())
    std = math.sqrt(float((p * (k - mean) ** 2).sum()))
    assert abs(float(i.mean()) - mean) / steps < 0.01
    assert abs(float(i.std()) - std) / steps < 0.01


@pytest.mark.parametrize("method", ["uniform", "ptq4dm"])
def test_calibration_inputs_carry_their_true_time(method):
    """For N(0, s^2) data the exact denoiser is linear, so DDIM maps x_k to m_k x_k and the state entering the network
    at grid time t_k has std sd_k = sd_{k-1} m_{k-1} (exactly). The recorded inputs must have that spread at their
    recorded t; a state paired with another step's time would not (brief: timestep pairing)."""
    s, path, steps = 0.3, LinearVP(), 8
    exact = ExactModel(GaussianMixture(torch.zeros(1, 1), s), path)
    cal = calibration_set(exact, (1,), 6000, method, steps=steps, generator=torch.Generator().manual_seed(0))
    assert len(cal) == 6000 and cal.x.shape == (6000, 1)
    ts = get_timesteps(path, steps, SOLVERS["ddim"].default_grid)
    a, sg = path.alpha(ts), path.sigma(ts)
    sd = [float(sg[0])]
    for k in range(steps - 1):
        c = a[k] * s**2 / (a[k] ** 2 * s**2 + sg[k] ** 2)  # x0_hat = c x
        sd.append(sd[-1] * abs(float(a[k + 1] * c + sg[k + 1] * (1 - a[k] * c) / sg[k])))
    checked = 0
    for k in range(steps):
        x = cal.x[torch.isclose(cal.t, ts[k])]
        if len(x) < 300:
            continue
        checked += 1
        assert abs(float(x.std()) / sd[k] - 1) < 0.08, (k, float(ts[k]), float(x.std()), sd[k])
    assert checked >= 4 and set(torch.unique(cal.t).tolist()) <= set(ts[:-1].tolist())


def test_ptq4dm_calibration_concentrates_at_low_noise(model):
    g = torch.Generator().manual_seed(0)
    nd = calibration_set(model, (2,), 2000, "ptq4dm", steps=10, generator=g)
    un = calibration_set(model, (2,), 2000, "uniform", steps=10, generator=g)
    na = calibration_set(model, (2,), 100, "naive", generator=g)
    assert float(nd.t.mean()) < float(un.t.mean())
    assert torch.all(na.t == model.path.t_max)


def test_quantized_model_is_a_model_for_every_solver(q8):
    assert isinstance(q8, ModelBase) and q8.backend == "pt2e"
    stats = Statistics.trivial(q8.path, (2,), n_grid=60)
    for name, spec in SOLVERS.items():
        if name == "flowmap":  # needs a flow-map model (tests/test_flowmap.py)
            continue
        opts = {"statistics": stats} if "statistics" in spec.needs else {}
        steps = max(spec.min_steps, 4)
        out = sample(q8, shape=(8, 2), solver=name, steps=steps, generator=torch.Generator().manual_seed(0), **opts)
        assert out.x.shape == (8, 2) and torch.isfinite(out.x).all(), name


def test_int8_weights_and_error_shrink_with_bits(model, q8):
    ints = [v for k, v in qmod._module_tensors(q8)[0].items() if v.dtype == torch.int8]
    assert ints and all(int(v.min()) >= -128 and int(v.max()) <= 127 for v in ints)
    scales = [v for v in qmod._module_tensors(q8)[0].values() if v.dtype != torch.int8 and v.ndim == 1 and len(v) > 8]
    assert any(float(s.std()) > 0 for s in scales)  # per-channel scales differ across channels
    q4 = quantize(model, CalibrationSet(*_inputs(256, 0)), backend="pt2e", weight_bits=4, compile=False, progress=False)
    ints4 = [v for v in qmod._module_tensors(q4)[0].values() if v.dtype == torch.int8]
    assert all(int(v.min()) >= -8 and int(v.max()) <= 7 for v in ints4)
    e8, e4 = _rel_err(model, q8), _rel_err(model, q4)
    assert e8 < 0.05 and e8 < e4, (e8, e4)


def test_save_load_round_trip(tmp_path, model, q8):
    f = save_quantized(q8, tmp_path / "q.safetensors")
    back = load_quantized(f, _mlp_model(seed=5), compile=False)  # architecture only: other weights
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(32, 2, generator=g), torch.rand(32, generator=g)
    with torch.no_grad():
        assert torch.equal(back.eps(x, t), q8.eps(x, t))
    assert back.size_bytes() == q8.size_bytes() < sum(p.numel() * 4 for p in model.net.parameters())
    with pytest.raises(ValueError, match="does not match"):
        load_quantized(f, _mlp_model(hidden=32), compile=False)


def test_torchao_backend_round_trip(tmp_path, model):
    q = quantize(model, 16, backend="torchao", shape=(2,), compile=False, progress=False)
    assert q.backend == "torchao" and _rel_err(model, q) < 0.05
    back = load_quantized(save_quantized(q, tmp_path / "ao.safetensors"), _mlp_model(seed=3), compile=False)
    x, t = torch.randn(16, 2), torch.rand(16)
    with torch.no_grad():
        assert torch.equal(back.eps(x, t), q.eps(x, t))


def test_clear_errors(model, monkeypatch):
    bad = CalibrationSet(torch.randn(8, 3), torch.rand(8))
    with pytest.raises(ValueError, match="calibration set does not fit"):
        quantize(model, bad, backend="pt2e", compile=False, progress=False)
    with pytest.raises(ValueError, match="one time per input"):
        CalibrationSet(torch.randn(8, 2), torch.rand(7))
    with pytest.raises(ValueError, match="shape="):
        quantize(model, 16, backend="pt2e", compile=False)
    with pytest.raises(ValueError, match="bits"):
        quantize(model, 16, bits=9, shape=(2,), compile=False)
    with pytest.raises(ValueError, match="unknown calibration method"):
        quantize(model, 16, method="random", shape=(2,), compile=False)
    gone = {"fp32": None, "torchao": "torchao is not installed (pip install torchao)", "pt2e": "no compiler"}
    monkeypatch.setattr(qmod, "backend_status", lambda: gone)
    with pytest.raises(RuntimeError, match="pip install torchao"):
        quantize(model, 16, backend="torchao", shape=(2,), compile=False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        q = quantize(model, 16, backend="auto", shape=(2,), compile=False, progress=False)
    assert q.backend == "fp32" and any("stays float32" in str(x.message) for x in w)
    assert _rel_err(model, q) == 0.0


def test_data_calibration_noises_training_images_at_grid_times(model):
    """``data``: x = alpha(t) x0 + sigma(t) eps at the sampler's grid times; with x0 = 0 the spread at each t is
    exactly sigma(t)."""
    steps, n = 5, 20_000
    cal = calibration_set(model, (2,), n, "data", steps=steps, data=torch.zeros(7, 2),
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    grid = get_timesteps(model.path, steps, SOLVERS["ddim"].default_grid)[:-1]
    assert set(torch.unique(cal.t).tolist()) == set(grid.tolist()) and cal.method == "data"
    for t in grid:
        x = cal.x[cal.t == t]
        assert abs(float(x.std()) / float(model.path.sigma(t)) - 1) < 0.05
    with pytest.raises(ValueError, match="data=training images"):
        calibration_set(model, (2,), 16, "data", data=torch.zeros(7, 3))


def _small_unet_model(seed=0) -> Model:
    from diffusio.core.paths import EDM
    from diffusio.models import EDMPrecond
    from diffusio.nets.unet import UNet

    torch.manual_seed(seed)
    net = UNet(channels=(8, 16), num_res_blocks=1, time_dim=16, num_classes=3).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim > 1 and not name.startswith("cond.label"):
                p.normal_(0, 1.5 / math.sqrt(p[0].numel()))  # weights of unit gain (zero-initialised layers too)
    return Model(net, EDM(), "x0", precond=EDMPrecond(0.6))


def test_unet_mixed_precision_error_bound_and_kept_layers_stay_float():
    """A U-Net with the stem kept float32: the eps error against fp32 is below 5% (rel. MSE) at every t of its own
    sampler states (calibrated on other draws of them), the kept layer's weights stay float and every other
    convolution is int8."""
    m = _small_unet_model()
    y = {"y": torch.arange(48) % 3}
    cal = calibration_set(m, (1, 8, 8), 48, "uniform", steps=4, cond=y, generator=torch.Generator().manual_seed(0))
    ev = calibration_set(m, (1, 8, 8), 48, "uniform", steps=4, cond=y, generator=torch.Generator().manual_seed(1))
    q = quantize(m, cal, backend="pt2e", keep_float=["conv_in"], compile=False, progress=False)
    err = eps_error_per_t(m, q, ev)
    assert len(err) == 4 and max(err.values()) < 0.05, err
    tensors = qmod._module_tensors(q)[0]
    assert not any("conv_in" in k and v.dtype == torch.int8 for k, v in tensors.items())
    assert sum(v.dtype == torch.int8 and v.ndim == 4 for v in tensors.values()) >= 8  # the other convolutions
    with pytest.raises(ValueError, match="keep_float entry 'conv_inn'"):
        quantize(m, cal, backend="pt2e", keep_float=["conv_inn"], compile=False, progress=False)
    with pytest.raises(ValueError, match="observer"):
        quantize(m, cal, backend="pt2e", observer="percentile", compile=False, progress=False)


def test_keep_float_and_observer_survive_save_load(tmp_path, model):
    first = next(n for n, mod in model.net.named_modules() if isinstance(mod, torch.nn.Linear))
    q = quantize(model, CalibrationSet(*_inputs(64, 0)), backend="pt2e", keep_float=[first], observer="minmax",
                 compile=False, progress=False)  # fmt: skip
    back = load_quantized(save_quantized(q, tmp_path / "k.safetensors"), _mlp_model(seed=4), compile=False)
    assert back.keep_float == (first,) and back.observer == "minmax"
    x, t = _inputs(32, 7)
    with torch.no_grad():
        assert torch.equal(back.eps(x, t), q.eps(x, t))


def test_layer_sensitivity_isolates_one_layer(model):
    """Quantizing one layer alone: only the named layer changes the output (a float layer gives exactly zero
    error); the ranking picks the fewest layers that fit the budget."""
    cal, ev = CalibrationSet(*_inputs(128, 0)), CalibrationSet(*_inputs(64, 5))
    names = [n for n, mod in model.net.named_modules() if isinstance(mod, torch.nn.Linear)][-3:]
    sens = layer_sensitivity(model, cal, ev, layers=[*names, "out.0"], progress=False)  # out.0: a LayerNorm
    assert all(v == 0.0 for v in sens.pop("out.0").values())  # nothing quantized: the float network exactly
    assert list(sens) == names and all(len(e) == 64 for e in sens.values())
    assert all(0 < v < 0.05 for e in sens.values() for v in e.values())
    worst = sorted(sens, key=lambda n: -max(sens[n].values()))
    total = sum(max(e.values()) for e in sens.values())
    assert choose_keep_float(sens, total * 1.01) == []
    assert choose_keep_float(sens, total - max(sens[worst[0]].values()) + 1e-12) == [worst[0]]
    with pytest.raises(ValueError, match="not module names"):
        layer_sensitivity(model, cal, ev, layers=["nope"], progress=False)


def test_torchao_keep_float_leaves_the_layer_in_float(model):
    first = next(n for n, mod in model.net.named_modules() if isinstance(mod, torch.nn.Linear))
    q = quantize(model, 16, backend="torchao", shape=(2,), keep_float=[first], compile=False, progress=False)
    assert type(q.module.get_submodule(first).weight) in (torch.Tensor, torch.nn.Parameter)
    others = [mod for n, mod in q.module.named_modules() if isinstance(mod, torch.nn.Linear) and n != first]
    assert others and all(type(mod.weight) not in (torch.Tensor, torch.nn.Parameter) for mod in others)
