"""``diffusio inverse`` end to end on a barely trained digits prior (wiring, files, errors; not quality)."""

import json

import pytest
import torch

from diffusio.app.cli import main
from diffusio.app.config import run_training
from diffusio.app.resources import packaged_config
from diffusio.inverse.tasks import TASKS, make_operator, measurement_image


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    cfg = packaged_config("digits")
    cfg["train"].update(steps=2, batch_size=8, log_every=1, ckpt_every=2)
    run_training(cfg, out, progress=False)
    return out / "model.safetensors"


@pytest.mark.parametrize("method", ["pinv", "pigdm", "dps"])
def test_inverse_command_writes_png_and_metrics(ckpt, tmp_path, method):
    args = ["inverse", "--task", "inpaint", "--method", method, "--ckpt", str(ckpt), "--n", "2", "--out", str(tmp_path)]
    assert main(args + ["--opt", "steps=2"] if method != "pinv" else args) == 0
    report = json.loads((tmp_path / f"inpaint_{method}.json").read_text())
    assert report["n"] == 2 and report["psnr"] > 0 and (tmp_path / f"inpaint_{method}.png").is_file()


def test_inverse_command_rejects_bad_options(ckpt, tmp_path, capsys):
    code = main(["inverse", "--task", "sr", "--method", "dps", "--ckpt", str(ckpt), "--opt", "stpes=2"])
    assert code == 2 and "unknown option(s) stpes" in capsys.readouterr().err
    code = main(["inverse", "--task", "ct3d", "--method", "dps", "--ckpt", str(ckpt)])
    assert code == 2 and "ct3d needs a prior trained on phantoms" in capsys.readouterr().err


@pytest.mark.parametrize("task", [t for t in TASKS if t != "ct3d"])
def test_measurement_images_have_the_image_shape(task):
    op = make_operator(task, (1, 16, 16), 0.05, generator=torch.Generator().manual_seed(0))
    y = op.measure(torch.zeros(2, 1, 16, 16), generator=torch.Generator().manual_seed(1))
    img = measurement_image(op, y)
    assert img.shape == (2, 1, 16, 16) and img.min() >= -1 and img.max() <= 1
