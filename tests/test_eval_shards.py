"""Evaluation across processes: the units of ``evaluate`` (sliced-W2 projection chunks, MMD kernel-row chunks,
classifier batches) dealt to ranks and combined equal one process, bit for bit — in process (three ranks) and
through ``torchrun --nproc_per_node=2 -m diffusio eval`` with two gloo processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import diffusio.metrics.distances as distances
from diffusio.app.cli import main
from diffusio.app.evaluation import combine_evaluation, evaluate, evaluation_parts
from diffusio.data.digits import load_digits
from diffusio.metrics import (
    classifier_confidence,
    digits_frechet_distance,
    get_digits_classifier,
    mmd,
    sliced_wasserstein,
)
from diffusio.metrics.distances import mmd_parts, mmd_reduce, sliced_wasserstein_parts, sliced_wasserstein_reduce

DIGITS = {"name": "digits"}


def noisy_digits(n: int, seed: int = 0) -> torch.Tensor:
    """Digit images with noise: samples whose metrics are far from zero (a wrong merge changes them)."""
    x = load_digits()[0]
    g = torch.Generator().manual_seed(seed)
    return x[torch.randint(len(x), (n,), generator=g)] + 0.3 * torch.randn(n, *x.shape[1:], generator=g)


def test_three_ranks_combined_equal_one_process(monkeypatch):
    monkeypatch.setattr(distances, "_CHUNK_ELEMENTS", 1 << 16)  # many projection and kernel chunks for 1200 samples
    x = noisy_digits(1200)
    parts = [evaluation_parts(x, DIGITS, rank=r, world_size=3) for r in range(3)]
    for p in parts:  # every rank got a share of every kind of unit
        assert p["sliced_w2"]["sums"] and p["mmd"]["sums"] and p["samples"]["batches"]
    assert parts[0]["sliced_w2"]["n_chunks"] >= 6 and sum(parts[0]["mmd"]["terms"]) >= 6
    one = evaluate(x, DIGITS)
    assert combine_evaluation(*parts) == one  # exact equality of every float
    # and the one-process path is the metrics' own functions, unchanged
    ref = load_digits(split="test")[0][:5000]
    clf = get_digits_classifier()
    assert one["sliced_w2"] == sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(12345))
    assert one["mmd"] == mmd(x.flatten(1), ref.flatten(1))
    assert one["frechet_distance"] == digits_frechet_distance(x, ref, clf)
    conf = classifier_confidence(x, clf)
    assert one["classifier_confidence"] == conf["mean_max_prob"] and one["class_histogram"] == conf["class_histogram"]
    with pytest.raises(ValueError, match="miss units"):
        combine_evaluation(*parts[:2])
    with pytest.raises(ValueError, match="more than one rank"):
        combine_evaluation(parts[0], *parts)
    with pytest.raises(ValueError, match="got none"):
        combine_evaluation()


def test_sliced_w2_and_mmd_parts_merge_for_unequal_sizes(monkeypatch):
    monkeypatch.setattr(distances, "_CHUNK_ELEMENTS", 1 << 12)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(300, 3, generator=g), torch.randn(170, 3, generator=g) + 0.5

    def gen():
        return torch.Generator().manual_seed(2)

    for world in (1, 2, 5):
        sw = [sliced_wasserstein_parts(x, y, 64, generator=gen(), rank=r, world_size=world) for r in range(world)]
        assert sliced_wasserstein_reduce(*sw) == sliced_wasserstein(x, y, 64, generator=gen())
        assert mmd_reduce(*(mmd_parts(x, y, rank=r, world_size=world) for r in range(world))) == mmd(x, y)
    with pytest.raises(ValueError, match="rank must be in"):
        mmd_parts(x, y, rank=2, world_size=2)


def test_torchrun_two_gloo_processes_equal_one_process(tmp_path):
    """``torchrun --nproc_per_node=2 -m diffusio eval`` writes the same metrics as one process."""
    get_digits_classifier()  # cached before the ranks start
    x = noisy_digits(9000)  # > 8192 samples: two sliced-W2 projection chunks, 3 MMD chunks per term, 18 batches
    f = tmp_path / "s.npz"
    np.savez_compressed(f, samples=x.numpy(), meta=json.dumps({"data": DIGITS}))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "diffusio"]
    subprocess.run([*run, "eval", str(f), "--json", str(tmp_path / "two.json")], env=env, check=True, timeout=240)
    assert main(["eval", str(f), "--json", str(tmp_path / "one.json")]) == 0  # one process (1 thread as each rank)
    two, one = (json.loads((tmp_path / n).read_text()) for n in ("two.json", "one.json"))
    assert two == one and one["metrics"]["n"] == 9000 and one["metrics"]["frechet_distance"] > 1
