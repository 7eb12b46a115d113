"""Sampling across processes: the batches dealt to ranks and merged equal one process, bit for bit — in process
(sample_batches with two ranks) and through torchrun with two gloo processes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffusio.app.cli import main
from diffusio.app.shards import batch_seed, merge_shards, sample_batches, shard_file, write_shard

TINY = {
    "data": {"name": "toy", "dataset": "rings"},
    "path": {"name": "flow"},
    "net": {"name": "mlp", "hidden": 32, "depth": 2, "time_dim": 16},
    "model": {"prediction": "velocity"},
    "loss": {"target": "velocity"},
    "train": {"steps": 5, "batch_size": 32, "log_every": 5, "ckpt_every": 5, "progress": False},
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    (root / "t.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["train", str(root / "t.yaml"), "--out", str(root / "run")]) == 0
    return root / "run" / "model.safetensors"


def test_batch_seeds_are_distinct_and_batch_zero_keeps_the_seed():
    assert batch_seed(7, 0) == 7
    seeds = {batch_seed(s, k) for s in range(20) for k in range(1, 50)}
    assert len(seeds) == 20 * 49 and all(0 <= v < 2**63 for v in seeds)


def test_two_ranks_merged_equal_one_process(ckpt, tmp_path):
    from diffusio.app.config import load_model

    model, _ = load_model(ckpt)
    kw = dict(solver="ddpm", steps=4, seed=3, batch_size=7)  # stochastic: noise drawn inside every step
    one, nfe = sample_batches(model, (2,), 30, **kw)
    assert sorted(one) == [0, 1, 2, 3, 4] and nfe == 4
    for r in range(3):
        part, _ = sample_batches(model, (2,), 30, rank=r, world_size=3, **kw)
        assert sorted(part) == list(range(r, 5, 3))
        write_shard(part, tmp_path / "s.npz", r, nfe)
    merged, _ = merge_shards(tmp_path / "s.npz", 3, 5)
    assert torch.equal(merged, torch.cat([one[k] for k in range(5)]))
    shard_file(tmp_path / "s.npz", 2).unlink()
    with pytest.raises(FileNotFoundError, match="rank 2 wrote no shard"):
        merge_shards(tmp_path / "s.npz", 3, 5)
    with pytest.raises(ValueError, match="miss batches"):
        merge_shards(tmp_path / "s.npz", 2, 5)


def test_torchrun_two_gloo_processes_equal_one_process(ckpt, tmp_path):
    """``torchrun --nproc_per_node=2 -m diffusio sample`` writes the same file as one process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    args = ["sample", str(ckpt), "--solver", "euler_maruyama", "--steps", "3", "--num-samples", "50",
            "--batch-size", "8", "--seed", "11"]  # fmt: skip
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "diffusio"]
    subprocess.run([*run, *args, "--out", str(tmp_path / "two.npz")], env=env, check=True, timeout=240)
    assert main([*args, "--out", str(tmp_path / "one.npz")]) == 0  # one process (this one; 1 thread as in each rank)
    with np.load(tmp_path / "two.npz") as a, np.load(tmp_path / "one.npz") as b:
        assert a["samples"].shape == (50, 2)
        assert np.array_equal(a["samples"], b["samples"])
    assert not list(tmp_path.glob("*.rank*.npz"))  # the shards were merged and removed
