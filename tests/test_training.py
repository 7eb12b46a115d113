"""Training: exact resume, crash-safe checkpoints, DDP equivalence, loss targets and weightings, errors."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from diffusio.app.config import build_data, build_loss, build_model, load_model, run_training
from diffusio.core.paths import EDM, LinearVP, RectifiedFlow
from diffusio.models import ExactModel
from diffusio.models.base import EDMPrecond, Model
from diffusio.training import TrainConfig, Trainer, load_checkpoint
from diffusio.training.losses import DiffusionLoss, EDMWeight, MinSNR, UniformTime, UniformWeight, x0_error_factor

TINY = {
    "data": {"name": "toy", "dataset": "moons"},
    "path": {"name": "vp_linear"},
    "net": {"name": "mlp", "hidden": 32, "depth": 2, "time_dim": 16},
    "model": {"prediction": "eps"},
    "loss": {"density": "uniform", "weighting": "uniform"},
    "train": {
        "steps": 20,
        "batch_size": 64,
        "lr": 1e-3,
        "warmup": 5,
        "log_every": 5,
        "ckpt_every": 10,
        "ema_decay": 0.9,
        "progress": False,
    },
}


def _weights(file):
    model, _ = load_model(file, ema=False)
    return {k: v.clone() for k, v in model.net.state_dict().items()}


def test_exact_resume(tmp_path):
    run_training(TINY, tmp_path / "a", steps=20)
    run_training(TINY, tmp_path / "b", steps=10)
    run_training(TINY, tmp_path / "b", steps=20, resume=True)
    a = load_checkpoint(tmp_path / "a" / "checkpoint.safetensors")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.safetensors")
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for pid, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][pid][k]))
    assert torch.equal(a["rng"]["train"], b["rng"]["train"])
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]


def test_resume_needs_checkpoint_and_same_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="run without --resume first"):
        run_training(TINY, tmp_path / "none", steps=5, resume=True)
    run_training(TINY, tmp_path / "c", steps=5)
    other = {**TINY, "net": {**TINY["net"], "hidden": 48}}
    with pytest.raises(ValueError, match="different config"):
        run_training(other, tmp_path / "c", steps=10, resume=True)


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    run_training(TINY, tmp_path, steps=10)
    before = _weights(tmp_path / "checkpoint.safetensors")
    import safetensors.torch as st

    real = st.save_file

    def crash(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # half-written file, then the process "dies"
            f.truncate(os.path.getsize(filename) // 2)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr("diffusio.io.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        run_training(TINY, tmp_path, steps=20, resume=True)
    monkeypatch.setattr("diffusio.io.save_file", real)
    after = _weights(tmp_path / "checkpoint.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    load_model(tmp_path / "model.safetensors")  # still loadable


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out, cfg):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from diffusio.training import cleanup, setup

    info = setup("cpu")
    run_training(cfg, out, steps=8, dist_info=info)
    cleanup()


def test_ddp_two_processes_match_one_process_with_double_batch(tmp_path):
    """Two gloo ranks with batch B each == one process with batch 2B (the global batch is drawn then split)."""
    cfg = {**TINY, "train": {**TINY["train"], "batch_size": 128}}
    mp.spawn(_ddp_worker, args=(2, _free_port(), tmp_path / "ddp", cfg), nprocs=2, join=True)
    tr = run_training(cfg, tmp_path / "one", steps=8)
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoint.safetensors")["model"]
    one = tr.net.state_dict()
    assert ddp.keys() == one.keys()
    for k in one:
        assert torch.allclose(ddp[k], one[k], rtol=1e-5, atol=1e-6), k
    # and the test has power: a different batch gives different weights
    other = run_training(TINY, tmp_path / "other", steps=8).net.state_dict()
    assert not all(torch.allclose(other[k], one[k], atol=1e-6) for k in one)


@pytest.mark.parametrize("target", ["eps", "x0", "v", "velocity", "score"])
def test_min_snr_loss_is_one_objective_for_every_target(target, gmm2d):
    """Min-SNR on any target equals Min-SNR on x0, sample by sample (the weights carry the exact conversion)."""
    path = LinearVP()
    exact = ExactModel(gmm2d, path)
    x0 = gmm2d.sample(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = DiffusionLoss(target, UniformTime(0.2, 0.8), MinSNR(5.0))
    t, noise = loss.draw(x0, path, torch.Generator().manual_seed(1))
    per = loss(exact, x0, t, noise)
    x0_loss = DiffusionLoss("x0", UniformTime(0.2, 0.8), MinSNR(5.0))(exact, x0, t, noise)
    assert torch.allclose(per, x0_loss, rtol=1e-6, atol=1e-10)


def test_weightings_are_x0_space_definitions():
    path, t = RectifiedFlow(), torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    snr = torch.exp(2 * path.log_snr(t))
    assert torch.allclose(MinSNR(5.0)(path, t, "eps"), snr.clamp(max=5) / snr)
    assert torch.allclose(MinSNR(5.0)(path, t, "x0"), snr.clamp(max=5))
    w = EDMWeight(0.5)(EDM(), t, "x0")
    assert torch.allclose(w, (t**2 + 0.25) / (t * 0.5) ** 2)
    assert torch.allclose(UniformWeight()(path, t, "v"), torch.ones_like(t))
    assert torch.allclose(x0_error_factor(path, t, "velocity"), (path.alpha(t) * path.d_log_snr(t)) ** 2)


def test_edm_precond_is_shared_by_loss_and_sampler():
    """EDM training = x0 target on the preconditioned model with EDM weight; loss and sampler see one x0."""
    net = torch.nn.Linear(2, 2)
    calls = []

    def f(x, c_noise):
        calls.append(c_noise)
        return net(x)

    model = Model(f, EDM(), "x0", EDMPrecond(0.5))
    x, t = torch.randn(4, 2), torch.tensor([0.1, 1.0, 10.0, 80.0])
    s = t[:, None]
    want = 0.25 / (s**2 + 0.25) * x + s * 0.5 / torch.sqrt(s**2 + 0.25) * net(x / torch.sqrt(s**2 + 0.25))
    assert torch.allclose(model(x, t), want, atol=1e-6)
    assert torch.allclose(calls[-1], torch.log(t) / 4)
    with pytest.raises(ValueError, match="prediction='x0'"):
        Model(f, EDM(), "eps", EDMPrecond())


def test_nan_in_loss_names_the_step(tmp_path):
    cfg = {**TINY, "train": {**TINY["train"], "lr": 1e30, "grad_clip": None, "warmup": 0}}
    with pytest.raises(FloatingPointError, match=r"at step \d+"):
        run_training(cfg, None, steps=50)


def test_nan_in_data_is_rejected():
    from diffusio.data.sources import TensorSource

    x = torch.randn(10, 2)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf in 1 of 10"):
        TensorSource(x)


def test_config_errors():
    with pytest.raises(ValueError, match="unknown path 'vp_lin'; valid: vp_linear"):
        run_training({**TINY, "path": {"name": "vp_lin"}}, None, steps=1)
    with pytest.raises(ValueError, match="unknown train option.*stepz"):
        run_training({**TINY, "train": {"stepz": 3}}, None)
    with pytest.raises(ValueError, match="train.steps must be an integer >= 1"):
        run_training(TINY, None, steps=0)
    with pytest.raises(ValueError, match="unknown net 'transformer'; valid: mlp, unet"):
        run_training({**TINY, "net": {"name": "transformer"}}, None, steps=1)
    with pytest.raises(ValueError, match="unknown weighting"):
        build_loss({"loss": {"weighting": "snr"}}, build_model(TINY, (2,)))
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        from diffusio.training import DistInfo

        m = build_model(TINY, (2,))
        Trainer(m, build_loss(TINY, m), build_data(TINY["data"]), TrainConfig(batch_size=5), dist_info=DistInfo(0, 2))


def test_net_fit_settings_are_validated():
    """The shared small-network fitting record refuses a non-positive size or learning rate by name."""
    from diffusio.training import NetFit

    assert NetFit(steps=3, hidden=8).batch_size == 256
    for bad, name in (({"steps": 0}, "steps"), ({"depth": 1.5}, "depth"), ({"lr": float("nan")}, "lr")):
        with pytest.raises(ValueError, match=f"NetFit.{name}"):
            NetFit(**bad)
