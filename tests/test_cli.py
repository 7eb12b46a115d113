"""The command line end to end on a tiny config: train, resume, sample, eval, solvers; and its errors."""

import json

import numpy as np
import pytest
import yaml

from diffusio.app.cli import main

TINY = {
    "data": {"name": "toy", "dataset": "rings"},
    "path": {"name": "flow"},
    "net": {"name": "mlp", "hidden": 32, "depth": 2, "time_dim": 16},
    "model": {"prediction": "velocity"},
    "loss": {"target": "velocity"},
    "train": {"steps": 10, "batch_size": 32, "log_every": 5, "ckpt_every": 5, "progress": False},
}


@pytest.fixture
def cfg_file(tmp_path):
    f = tmp_path / "tiny.yaml"
    f.write_text(yaml.safe_dump(TINY))
    return f


def test_train_sample_eval(tmp_path, cfg_file, capsys):
    out = tmp_path / "run"
    assert main(["train", str(cfg_file), "--out", str(out)]) == 0
    assert main(["train", str(cfg_file), "--out", str(out), "--steps", "15", "--resume"]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [5, 10, 15]
    samples = tmp_path / "s" / "heun.npz"
    assert (
        main(
            [
                "sample",
                str(out / "model.safetensors"),
                "--solver",
                "heun",
                "--steps",
                "4",
                "--n",
                "300",
                "--out",
                str(samples),
            ]
        )
        == 0
    )
    with np.load(samples) as z:
        assert z["samples"].shape == (300, 2)
        assert json.loads(str(z["meta"]))["nfe"] == 8
    assert (tmp_path / "s" / "heun.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["eval", str(samples), "--json", str(tmp_path / "m.json")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 300 and metrics["sliced_w2"] > 0
    assert json.loads((tmp_path / "m.json").read_text())["metrics"]["mmd"] == metrics["mmd"]
    assert (
        main(
            [
                "sample",
                str(out / "model.safetensors"),
                "--solver",
                "ddim",
                "--steps",
                "3",
                "--n",
                "10",
                "--opt",
                "eta=0.5",
                "--out",
                str(tmp_path / "x.safetensors"),
            ]
        )
        == 0
    )
    assert (tmp_path / "x.safetensors").is_file()


def test_cli_errors(tmp_path, cfg_file, capsys):
    out = tmp_path / "run"
    assert main(["train", str(cfg_file), "--out", str(out), "--steps", "5"]) == 0
    capsys.readouterr()
    assert (
        main(
            ["sample", str(out / "model.safetensors"), "--solver", "rk9", "--n", "4", "--out", str(tmp_path / "a.npz")]
        )
        == 2
    )
    assert "unknown solver 'rk9'; valid:" in capsys.readouterr().err
    assert (
        main(["sample", str(out / "model.safetensors"), "--steps", "0", "--n", "4", "--out", str(tmp_path / "a.npz")])
        == 2
    )
    assert "steps must be an integer >= 1" in capsys.readouterr().err
    assert main(["train", "no_such_config"]) == 2
    assert "no bundled config 'no_such_config'; bundled:" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "missing.safetensors")]) == 2
    with pytest.raises(SystemExit):
        main(["bench", "nonsense"])


def test_solvers_listing(capsys):
    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    for name in ["euler", "heun", "ddim", "ddpm", "euler_maruyama", "adaptive"]:
        assert name in out


def test_bundled_configs_build(tiny_teacher):
    """Every bundled config names known objects (the model builds; training itself is covered elsewhere). Configs
    that distil or rectify a trained model (flowmap, reflow) get a tiny teacher instead of runs/moons."""
    from diffusio.app.config import build_data, build_loss, build_model
    from diffusio.app.resources import packaged_config, packaged_configs

    assert {"moons", "digits"} <= set(packaged_configs())
    for name in packaged_configs():
        cfg = packaged_config(name)
        if cfg["data"]["name"] == "images":
            continue  # needs a user folder
        if "teacher" in cfg:
            cfg["teacher"] = str(tiny_teacher)
        if isinstance(cfg["loss"].get("coupling"), dict):
            cfg["loss"]["coupling"] = {**cfg["loss"]["coupling"], "teacher": str(tiny_teacher), "pairs": 16, "steps": 2}
        data = build_data(cfg["data"])
        model = build_model(cfg, data.shape, data.num_classes)
        build_loss(cfg, model)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A 4-step flow-matching model on moons: the teacher of the reflow and flow-map configs."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = {**TINY, "data": {"name": "toy", "dataset": "moons"}, "train": {**TINY["train"], "steps": 4}}
    (out / "t.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(out / "t.yaml"), "--out", str(out)]) == 0
    return out / "model.safetensors"


FAMILY_RUNS = {  # bundled config -> (sample arguments, what the sample file must hold)
    "flow_ot": (["--solver", "euler", "--steps", "2"], (50, 2)),
    "reflow": (["--solver", "euler", "--steps", "2"], (50, 2)),
    "pfgmpp": (["--solver", "heun", "--steps", "3"], (50, 2)),
    "interpolant": (["--steps", "3", "--opt", "epsilon=0.5"], (50, 2)),
    "bridge": (["--steps", "3"], (50, 2)),
    "flowmap": (["--steps", "2"], (50, 2)),
    "mr_digits": (["--solver", "mrs", "--steps", "3"], (50, 1, 8, 8)),
}


@pytest.mark.parametrize("name", sorted(FAMILY_RUNS))
def test_family_configs_train_and_sample(name, tmp_path, tiny_teacher, capsys):
    """Every family's bundled config trains (a few steps of a small net) and samples through the CLI."""
    from diffusio.app.resources import packaged_config

    cfg = packaged_config(name)
    cfg["net"] = {**cfg["net"], "hidden": 16, "depth": 1, "time_dim": 8}
    cfg["train"] = {**cfg["train"], "steps": 3, "batch_size": 32, "log_every": 3, "ckpt_every": 3, "progress": False}
    if "teacher" in cfg:
        cfg["teacher"] = str(tiny_teacher)
    if isinstance(cfg["loss"].get("coupling"), dict):
        cfg["loss"]["coupling"] = {**cfg["loss"]["coupling"], "teacher": str(tiny_teacher), "pairs": 64, "steps": 3}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 0
    args, shape = FAMILY_RUNS[name]
    out = tmp_path / "s.npz"
    assert main(["sample", str(tmp_path / "run" / "model.safetensors"), "--n", "50", "--out", str(out), *args]) == 0
    with np.load(out) as z:
        assert z["samples"].shape == shape and np.isfinite(z["samples"]).all()
    assert "model calls each" in capsys.readouterr().out


def test_fast_demo_writes_the_families_page(tmp_path):
    """The demo's families page (fast mode): six families on moons, a table of sliced W2 and calls, a picture."""
    from diffusio.app.demo import run_demo

    res = run_demo(tmp_path, fast=True, log=lambda *a: None, parts=("families",))
    report = (tmp_path / "report.md").read_text()
    assert "## Families on the same data (two moons)" in report and "| flow map | flowmap 1 | 1 |" in report
    assert (tmp_path / "families.png").stat().st_size > 10_000
    rows = res["families"]["rows"]
    assert len({r["family"] for r in rows}) == 6 and all(r["sliced_w2"] > 0 for r in rows)
    with pytest.raises(ValueError, match="unknown demo part"):
        run_demo(tmp_path, parts=("nope",))


def test_bench_outside_a_checkout_names_the_fix(tmp_path, monkeypatch, capsys):
    """Benchmarks are not installed: without a checkout's bench/ the CLI says where to run them."""
    import diffusio.app.cli as cli

    fake = tmp_path / "site" / "diffusio" / "app" / "cli.py"
    fake.parent.mkdir(parents=True)
    monkeypatch.setattr(cli, "__file__", str(fake))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "overhead"]) == 2
    assert "clone of the diffusio repository" in capsys.readouterr().err


def test_bench_root_is_the_checkout():
    import diffusio.app.cli as cli

    assert (cli.find_bench_root() / "bench" / "results").is_dir()
