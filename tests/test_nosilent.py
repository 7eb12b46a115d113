"""No silent failure (issue 9): singular domain ends, option validation, the finite-output guard, output shapes and
DPM-Solver-v3 statistics that cannot be confused between models."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from diffusio.core.paths import EDM, VE, CosineVP, DiscreteDDPM, LinearVP, RectifiedFlow, Trigonometric
from diffusio.core.timesteps import get_timesteps
from diffusio.data import GaussianMixture
from diffusio.models import ExactModel
from diffusio.models.base import KDiffusionModel, Model, ModelBase, NonFiniteError
from diffusio.samplers import SOLVERS, sample
from diffusio.samplers.dpm_v3 import Statistics, estimate_statistics, model_fingerprint, statistics_for

PATHS = [LinearVP(), CosineVP(), VE(), EDM(), RectifiedFlow(), Trigonometric(), DiscreteDDPM()]
GMM = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), 0.3)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSIO_CACHE", str(tmp_path / "cache"))


# --- singular domain ends ----------------------------------------------------------------------------------------


def test_singular_ends_are_declared():
    ends = {p.name: p.singular_ends() for p in PATHS}
    assert ends["vp_linear"] == (True, False) and ends["vp_cosine"] == (True, False)
    assert ends["flow"] == (True, True) and ends["ve"] == (False, False) and ends["edm"] == (False, False)
    for p in PATHS:  # the declared flag is exactly "lambda is infinite there"
        lam = p.log_snr(torch.tensor([p.t_lo, min(p.t_hi, 1e300)], dtype=torch.float64))
        assert ends[p.name][0] == (not math.isfinite(float(lam[0])))


@pytest.mark.parametrize("path", [p for p in PATHS if p.singular_ends()[0]], ids=lambda p: p.name)
def test_grids_never_reach_a_singular_data_end(path):
    model = ExactModel(GMM, path)
    with pytest.raises(ValueError, match="singular data end.*t_min"):
        sample(model, shape=(4, 2), solver="heun", t_min=path.t_lo)
    with pytest.raises(ValueError, match="singular data end"):
        sample(model, shape=(4, 2), solver="euler", grid=torch.tensor([0.5, 0.2, path.t_lo], dtype=torch.float64))
    for grid in ("uniform", "logsnr", "karras", "quadratic"):
        ts = get_timesteps(path, 7, grid)
        assert float(ts[-1]) > path.t_lo and torch.isfinite(path.log_snr(ts)).all()
    # the documented alternative: the default t_min with denoise=True, finite
    assert torch.isfinite(sample(model, shape=(4, 2), solver="heun", steps=6, denoise=True).x).all()


def test_singular_noise_end_refused_for_log_snr_solvers_only():
    path = RectifiedFlow()
    model = ExactModel(GMM, path)
    with pytest.raises(ValueError, match="log-SNR.*singular noise end"):
        sample(model, shape=(4, 2), solver="dpm_solver_2", grid="uniform", t_max=1.0)
    with pytest.raises(ValueError, match="karras.*infinite"):
        sample(model, shape=(4, 2), solver="heun", t_max=1.0)
    x = sample(model, shape=(64, 2), solver="heun", grid="uniform", t_max=1.0, steps=40).x  # flow matching's start
    assert torch.isfinite(x).all()
    ref = sample(model, x=None, shape=(64, 2), solver="adaptive", generator=torch.Generator().manual_seed(0)).x
    assert ref.shape == x.shape


# --- options -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"solver": "ddim", "eta": float("nan")}, "eta=nan"),
        ({"solver": "euler_maruyama", "eta": float("inf")}, "eta=inf"),
        ({"solver": "dpmpp_2m_sde", "eta": float("nan")}, "eta=nan"),
        ({"solver": "adaptive", "rtol": float("nan")}, "rtol=nan"),
        ({"t_min": float("nan")}, "t_min"),
        ({"t_max": float("inf")}, "t_max"),
        ({"shape": (-1, 2)}, "shape"),
        ({"shape": (4,)}, "shape"),
        ({"shape": 4}, "shape"),
        ({"generator": 0}, "generator"),
        ({"steps": 2.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"solver": 3}, "solver"),
        ({"denoise": "yes"}, "denoise"),
        ({"cond": [1]}, "cond"),
    ],
)
def test_bad_options_are_refused_by_name(kw, match):
    model = ExactModel(GMM, LinearVP())
    kw = {"shape": (4, 2), **kw}
    with pytest.raises((ValueError, TypeError), match=match):
        sample(model, **kw)


def test_x_dtypes_and_integer_types():
    model = ExactModel(GMM, LinearVP())
    with pytest.raises(TypeError, match="floating"):
        sample(model, torch.ones(4, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="floating"):
        sample(model, torch.ones(4, 2, dtype=torch.int64))
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    ref = sample(model, x, solver="adaptive").x
    for dtype in (torch.float16, torch.bfloat16):  # computed in float32, returned in the caller's dtype
        out = sample(model, x.to(dtype), solver="adaptive")
        assert out.x.dtype == dtype and torch.isfinite(out.x).all()
        assert float((out.x.float() - ref).abs().max()) < 0.05
    # numpy integers are integers
    r = sample(model, x, solver="dpmpp_2m", steps=np.int64(6))
    assert r.nfe == 6 and torch.isfinite(r.x).all()


# --- the finite-output guard and output shapes -----------------------------------------------------------------


class _Blows(ModelBase):
    """Exact x0 except at times below ``t_bad``, where it returns inf (a stiff/broken model)."""

    def __init__(self, path, t_bad):
        super().__init__()
        self.inner, self.path, self.t_bad = ExactModel(GMM, path), path, t_bad

    def predict(self, x, t, kind="x0", **cond):
        out = self.inner.predict(x, t, kind, **cond)
        return torch.where((t < self.t_bad).reshape(-1, 1), torch.full_like(out, float("inf")), out)


@pytest.mark.parametrize("solver", ["euler", "heun", "ddim", "ddpm", "dpmpp_2m", "unipc", "adaptive"])
def test_guard_names_solver_call_and_time(solver):
    model = _Blows(LinearVP(), 0.3)
    with pytest.raises(NonFiniteError, match=rf"solver '{solver}' produced NaN/inf.*model call \d+.*t = 0\.\d+"):
        sample(model, shape=(4, 2), solver=solver, steps=8, generator=torch.Generator().manual_seed(0))


def test_guard_in_inverse_solve():
    from diffusio.inverse import solve
    from diffusio.inverse.operators import MatrixOperator

    model = _Blows(EDM(), 20.0)  # the uniform grid of 10 steps calls the model down to t = 8
    op = MatrixOperator(torch.tensor([[1.0, 0.0]]))
    y = torch.zeros(3, *op.out_shape)
    with pytest.raises(NonFiniteError, match="inverse method 'dps'"):
        solve(model, op, y, "dps", steps=10)


def test_wrong_output_shape_is_refused():
    for model in (
        Model(lambda x, t: x[:, :1], LinearVP(), "eps"),
        KDiffusionModel(lambda x, s: x.sum(1, keepdim=True), EDM()),
        Model(lambda x, t: x[:1], LinearVP(), "eps"),
    ):
        with pytest.raises(ValueError, match=r"returned shape \(\d+, 1\)|returned shape \(1, 2\)"):
            sample(model, shape=(4, 2), solver="ddim", steps=3)


# --- DPM-Solver-v3 statistics ----------------------------------------------------------------------------------------


def _est():
    return {"n_grid": 12, "progress": False, "generator": torch.Generator().manual_seed(1)}


def _data(n=128, seed=0):
    return GMM.sample(n, generator=torch.Generator().manual_seed(seed))


def test_function_wrapped_models_never_share_statistics():
    mix_b = GaussianMixture(torch.tensor([[3.0, 3.0], [-3.0, 1.0]]), 0.2)
    ma, mb = ExactModel(GMM, EDM()), ExactModel(mix_b, EDM())
    fa = KDiffusionModel(lambda x, s: ma.predict(x, s), EDM())
    fb = KDiffusionModel(lambda x, s: mb.predict(x, s), EDM())
    assert model_fingerprint(fa) is None and model_fingerprint(fb) is None
    assert model_fingerprint(ma) != model_fingerprint(mb)
    # bound methods of modules are fingerprinted through their module's state
    ka, kb = KDiffusionModel(ma.forward, EDM()), KDiffusionModel(mb.forward, EDM())
    assert None not in (model_fingerprint(ka), model_fingerprint(kb)) and model_fingerprint(ka) != model_fingerprint(kb)
    with pytest.warns(UserWarning, match="not cached"):
        sa = statistics_for(fa, _data(), **_est())
    with pytest.raises(ValueError, match="no fingerprint"):
        sample(fb, shape=(4, 2), solver="dpm_v3", steps=6)  # nothing is looked up for a plain function
    sa_key = statistics_for(fa, _data(), **_est(), cache_key="model-a")
    sb_key = statistics_for(
        fb,
        mix_b.sample(128, generator=torch.Generator().manual_seed(0)),
        **_est(),
        cache_key="model-b",
    )
    assert not torch.allclose(sa_key.b, sb_key.b)
    assert torch.allclose(sa.l, sa_key.l)
    # statistics of another model are refused when both are fingerprinted
    sa_m = statistics_for(ma, _data(), **_est())
    with pytest.raises(ValueError, match="belong to another model"):
        sample(mb, shape=(4, 2), solver="dpm_v3", steps=6, statistics=sa_m)
    with pytest.raises(ValueError, match="estimated on path"):
        sample(ExactModel(GMM, LinearVP()), shape=(4, 2), solver="dpm_v3", steps=6, statistics=sa_m)
    # and the cached file is found again for the right model only
    again = statistics_for(ma, _data(), **_est())
    assert torch.equal(again.s, sa_m.s) and again.meta["fingerprint"] == model_fingerprint(ma)


def test_fingerprint_sees_every_submodule_and_buffer():
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Sequential(torch.nn.Tanh(), torch.nn.Linear(8, 2)))
    m1 = Model(_TimeNet(net), LinearVP())
    fp1 = model_fingerprint(m1)
    with torch.no_grad():
        net[1][1].bias[0] += 1e-6
    assert model_fingerprint(m1) != fp1
    m1.net.register_buffer("scale", torch.ones(1), persistent=False)
    fp2 = model_fingerprint(m1)
    m1.net.scale += 1
    assert model_fingerprint(m1) != fp2
    assert model_fingerprint(Model(m1.net, LinearVP(), "x0")) != model_fingerprint(m1)  # the head counts


class _TimeNet(torch.nn.Module):
    def __init__(self, body, cast=False):
        super().__init__()
        self.body, self.cast = body, cast

    def forward(self, x, t):
        if self.cast:  # a network that reads its time as a Python float: no derivative through t
            tt = torch.full_like(x[:, :1], float(t[0]))
        else:
            tt = t[:, None].to(x.dtype)
        return self.body(x) * (2 + torch.sin(20 * tt))


class _SqDist(torch.autograd.Function):
    """Squared distances with a backward but no forward-mode rule (like many custom kernels)."""

    @staticmethod
    def forward(ctx, x, m):
        ctx.save_for_backward(x, m)
        return ((x[:, None, :] - m[:, None, :].transpose(0, 1)) ** 2).sum(-1)

    @staticmethod
    def backward(ctx, g):
        x, m = ctx.saved_tensors
        d = x[:, None, :] - m[:, None, :].transpose(0, 1)
        return 2 * (g[..., None] * d).sum(1), -2 * (g[..., None] * d).sum(0)


class _Cdist(ModelBase):
    """Exact x0 of a mixture, written with an op that has no forward-mode AD."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def predict(self, x, t, kind="x0", **cond):
        from diffusio.core.parametrization import convert

        a, s = self.path.alpha(t)[:, None], self.path.sigma(t)[:, None]
        means = GMM.means.to(x)
        v = a**2 * 0.09 + s**2
        logits = -_SqDist.apply(x / a, means) * a**2 / (2 * v)
        w = torch.softmax(logits, 1)
        mu = w @ means
        x0 = mu + a * 0.09 / v * (x - a * mu)
        return convert(x0, "x0", kind, x, t, self.path)


def test_statistics_without_forward_ad_fall_back_to_finite_differences():
    path = LinearVP()
    exact = ExactModel(GMM, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = estimate_statistics(exact, _data(), **_est(), derivative="fd")
        jvp = estimate_statistics(exact, _data(), **_est())
    assert jvp.meta["derivative"] == "jvp"
    assert float((ref.s - jvp.s).abs().max()) < 1e-4 * (1 + float(jvp.s.abs().max()))
    with pytest.warns(UserWarning, match="finite difference"):
        cd = estimate_statistics(_Cdist(path), _data(), **_est())
    assert cd.meta["derivative"] == "fd"
    assert float((cd.s - ref.s).abs().max()) < 1e-3 * (1 + float(ref.s.abs().max()))
    # a time input cast to a Python float: the JVP silently misses d/dt; the check catches it
    net = _TimeNet(torch.nn.Linear(2, 2).double(), cast=True)
    with pytest.warns(UserWarning, match="disagrees"):
        st = estimate_statistics(Model(net, path), _data(), **_est())
    assert st.meta["derivative"] == "fd"


def test_dpm_v3_statistics_types():
    model = ExactModel(GMM, LinearVP())
    with pytest.raises(TypeError, match="Statistics"):
        sample(model, shape=(4, 2), solver="dpm_v3", steps=6, statistics={"l": 1})
    st = Statistics.trivial(LinearVP(), (3,))
    with pytest.raises(ValueError, match="dimensions"):
        sample(model, shape=(4, 2), solver="dpm_v3", steps=6, statistics=st)


def test_every_solver_default_finite_float32():
    """Every registered solver on every built-in path at its defaults in float32: finite or a clear refusal."""
    for path in PATHS:
        model = ExactModel(GMM, path)
        for name, spec in SOLVERS.items():
            if name in ("adaptive",):
                continue
            opts = {"statistics": Statistics.trivial(path, (2,), n_grid=200)} if "statistics" in spec.needs else {}
            x = path.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float32)
            try:
                out = sample(model, x, solver=name, steps=max(5, spec.min_steps), **opts).x
            except (ValueError, TypeError) as e:
                assert len(str(e)) > 20 and "\n" not in str(e).strip()
                continue
            assert torch.isfinite(out).all(), (path.name, name)


# --- strict configs and the CLI boundary ---------------------------------------------------------------------------


def _moons():
    from diffusio.app.resources import packaged_config

    return packaged_config("moons")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c: c.update(trainn=c.pop("train")), r"unknown config section 'trainn'; did you mean 'train'"),
        (lambda c: c["train"].update(lr="abc"), r"train.lr must be float, got 'abc'"),
        (lambda c: c["train"].update(seed=1.5), r"train.seed must be int, got 1.5"),
        (lambda c: c.update(train=None), r"section train must be a mapping"),
        (lambda c: c["train"].update(lr=float("inf")), r"train.lr must be a finite number"),
        (lambda c: c["train"].update(grad_clip=float("nan")), r"train.grad_clip must be a finite number"),
        (lambda c: c["data"].update(datset="moons"), r"unknown data \(toy\) option 'datset'; did you mean 'dataset'"),
        (lambda c: c["net"].update(hiden=3), r"unknown net \(mlp\) option 'hiden'; did you mean 'hidden'"),
        (lambda c: c["path"].update(name="flw"), r"unknown path 'flw'; valid: .*did you mean 'flow'"),
        (lambda c: c["sample"].update(steps=0), r"sample.steps must be >= 1"),
    ],
)
def test_config_schema_refuses_one_wrong_field(edit, match):
    from diffusio.app.config import check_config
    from diffusio.app.schema import ConfigError

    cfg = _moons()
    edit(cfg)
    with pytest.raises(ConfigError, match=match):
        check_config(cfg)


def test_bundled_configs_pass_the_schema():
    from diffusio.app.config import check_config
    from diffusio.app.resources import packaged_config, packaged_configs

    for name in packaged_configs():
        check_config(packaged_config(name))


TINY = {
    "data": {"name": "toy", "dataset": "rings"},
    "path": {"name": "vp_linear"},
    "net": {"name": "mlp", "hidden": 16, "depth": 1, "time_dim": 8},
    "model": {"prediction": "eps"},
    "loss": {"target": "eps"},
    "train": {"steps": 4, "batch_size": 16, "log_every": 3, "ckpt_every": 2, "progress": False},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import yaml

    from diffusio.app.cli import main

    root = tmp_path_factory.mktemp("run")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["train", str(root / "tiny.yaml"), "--out", str(root / "run")]) == 0
    return root


def test_cli_errors_are_one_line(tiny_run, capsys, monkeypatch):
    import json as _json

    from diffusio.app.cli import main
    from diffusio.io import load_safetensors, save_safetensors

    model = str(tiny_run / "run" / "model.safetensors")
    out = str(tiny_run / "s.npz")
    cases = [
        (["sample", model, "--device", "bogus"], "is not a device"),
        (["sample", model, "--out", str(tiny_run / "tiny.yaml" / "x.npz")], "is a file, not a directory"),
        (["sample", model, "--opt", "eta=nan", "--solver", "ddim", "--out", out, "--n", "4"], "eta=nan"),
        (["eval", str(tiny_run / "tiny.yaml")], "sample files are .npz"),
    ]
    if not torch.cuda.is_available():
        cases.append((["sample", model, "--device", "cuda"], "CUDA is not available"))
    bad = tiny_run / "trunc.safetensors"
    bad.write_bytes(open(model, "rb").read()[:100])
    cases.append((["sample", str(bad)], "truncated or not a safetensors file"))
    t, meta = load_safetensors(model)
    meta["config"]["net"]["hidden"] = 300000  # a crafted config: refused before anything is allocated
    big = tiny_run / "big.safetensors"
    save_safetensors(t, big, meta)
    cases.append((["sample", str(big)], "has shape .* but the config's architecture needs"))
    yml = tiny_run / "tag.yaml"
    yml.write_text('x: !!python/object/apply:os.system ["echo hi"]\n')
    cases.append((["train", str(yml)], "not valid YAML"))
    yml2 = tiny_run / "alias.yaml"
    yml2.write_text("a: &a [1, 2]\nb: *a\n")
    cases.append((["train", str(yml2)], "aliases"))
    npz = tiny_run / "bad.npz"
    np.savez(npz, samples=np.zeros((4, 2)), meta=np.array(_json.dumps({"data": {"name": "toy", "datset": "m"}})))
    cases.append((["eval", str(npz)], "option 'datset'"))
    for argv, match in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        line = err.split("\n")[-1].split("\r")[-1]  # after any progress bar: exactly one error line
        assert "Traceback" not in err and err.count("error:") == 1 and line.startswith(f"diffusio {argv[0]}: error:")
        err = line
        import re

        assert re.search(match, err), (match, err)
    with pytest.raises(ValueError, match="is not a device"):
        main(["--debug", "sample", model, "--device", "bogus"])


def test_cli_opt_types_and_dpm_v3(tiny_run, capsys):
    from diffusio.app.cli import main
    from diffusio.app.options import opt_value as _opt_value

    assert _opt_value("2") == 2 and isinstance(_opt_value("2"), int) and _opt_value("0.5") == 0.5
    assert _opt_value("true") is True and _opt_value("always") == "always"
    model = str(tiny_run / "run" / "model.safetensors")
    out = tiny_run / "v3.npz"
    argv = ["sample", model, "--solver", "dpm_v3", "--steps", "5", "--n", "20", "--out", str(out)]
    assert main([*argv, "--opt", "lower_order_final=2"]) == 0
    with np.load(out) as z:
        assert z["samples"].shape == (20, 2) and np.isfinite(z["samples"]).all()
    assert main(argv) == 0  # the second run loads the cached statistics


# --- housekeeping ----------------------------------------------------------------------------------------------------


def test_resume_housekeeping(tmp_path, monkeypatch):
    import json as _json

    from diffusio.app.config import load_model, run_training
    from diffusio.io import read_safetensors_header
    from diffusio.training.checkpoint import save_model_file

    cfg = {**TINY, "train": {**TINY["train"], "steps": 8, "log_every": 3, "ckpt_every": 4}}
    full = tmp_path / "full"
    run_training(cfg, full, progress=False)
    part = tmp_path / "part"
    from diffusio.training import Trainer

    real_step = Trainer.train_step

    def dying_step(self):  # killed during step 6, after the checkpoint at 4 (not a multiple of log_every = 3)
        if self.step == 5:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, part, progress=False)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    (part / ".checkpoint.safetensors.abc.tmp").write_bytes(b"x" * 100)  # a killed save's leftover
    with open(part / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss": 0.')  # a torn last line
    ck = _json.loads(read_safetensors_header(part / "checkpoint.safetensors")["__metadata__"]["config"])
    save_model_file(part / "model.safetensors", {}, ck, 0)  # a model file lagging the checkpoint
    m_lag, _ = load_model(part / "model.safetensors")  # the reader takes the checkpoint's EMA instead
    m_ck, _ = load_model(part / "checkpoint.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(m_lag.state_dict().values(), m_ck.state_dict().values()))
    run_training(cfg, part, resume=True, progress=False)
    assert not list(part.glob(".*.tmp"))

    def log(d):
        return [{k: v for k, v in _json.loads(ln).items() if k != "time"} for ln in (d / "metrics.jsonl").open()]

    assert log(part) == log(full) and [r["step"] for r in log(full)] == [3, 6, 8]
    a, _ = load_model(full / "model.safetensors")
    b, _ = load_model(part / "model.safetensors")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
