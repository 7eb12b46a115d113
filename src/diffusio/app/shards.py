"""Sampling across processes (``torchrun --nproc_per_node=N -m diffusio sample ...``): the batches of a run are
dealt to the ranks, each rank writes its share, rank 0 merges them in batch order.

Every batch draws from its own generator, seeded from the run's seed and the batch index (batch 0 from the seed
itself), so a batch's samples do not depend on which process makes it: the merged file equals a one-process run
with the same seed and batch size, bit for bit (on the same device, with the same number of threads per process).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusio.models.base import ModelBase
from diffusio.samplers import sample

__all__ = ["batch_seed", "merge_shards", "sample_batches", "shard_file"]


def batch_seed(seed: int, index: int) -> int:
    """The generator seed of batch ``index``: ``seed`` for batch 0, else a hash of (seed, index) in [0, 2^63)."""
    if index == 0:
        return seed
    digest = hashlib.sha256(f"diffusio-batch:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_batches(
    model: ModelBase,
    shape: tuple[int, ...],
    n: int,
    *,
    solver: str,
    steps: int,
    grid: str | None = None,
    seed: int = 0,
    batch_size: int = 1000,
    labels: Tensor | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    **options,
) -> tuple[dict[int, Tensor], int]:
    """The batches ``rank, rank + world_size, ...`` of an ``n``-sample run; returns ({batch index: samples}, model
    calls per sample). ``labels`` ``(n,)`` condition a class-conditional model."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size); got rank {rank} of {world_size}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    starts = list(range(0, n, batch_size))
    mine = list(range(rank, len(starts), world_size))
    out, nfe = {}, 0
    for k in tqdm(mine, disable=not progress, desc=f"sample {solver} (rank {rank}/{world_size})"):
        i = starts[k]
        b = min(batch_size, n - i)
        g = torch.Generator(device=device).manual_seed(batch_seed(seed, k))
        cond = None if labels is None else {"y": labels[i : i + b].to(device)}
        res = sample(model, shape=(b, *shape), solver=solver, steps=steps, grid=grid, cond=cond, generator=g, **options)
        out[k] = res.x.cpu()
        nfe = res.nfe
    return out, nfe


def shard_file(out: str | Path, rank: int) -> Path:
    """Where rank ``rank`` writes its share of ``out``: ``OUT.rankK.npz``."""
    out = Path(out)
    return out.with_name(f"{out.with_suffix('').name}.rank{rank}.npz")


def write_shard(batches: dict[int, Tensor], out: str | Path, rank: int, nfe: int) -> Path:
    """Write one rank's batches (atomically) for :func:`merge_shards`."""
    from diffusio.io import _atomic_write

    f = shard_file(out, rank)
    f.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted(batches)
    arrays = {f"batch{k}": batches[k].numpy() for k in keys}

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, index=np.array(keys, dtype=np.int64), nfe=np.array(nfe), **arrays)

    return _atomic_write(f, write)


def merge_shards(out: str | Path, world_size: int, n_batches: int) -> tuple[Tensor, int]:
    """Read the ranks' files of ``out`` and concatenate their batches in batch order; checks every batch is there
    exactly once. Returns (samples, model calls per sample)."""
    got: dict[int, Tensor] = {}
    nfe = 0
    for r in range(world_size):
        f = shard_file(out, r)
        if not f.is_file():
            raise FileNotFoundError(f"rank {r} wrote no shard at {f}")
        with np.load(f, allow_pickle=False) as z:
            nfe = max(nfe, int(z["nfe"]))
            for k in z["index"].tolist():
                if k in got:
                    raise ValueError(f"batch {k} appears in more than one shard of {out}")
                got[k] = torch.from_numpy(z[f"batch{k}"])
    missing = sorted(set(range(n_batches)) - set(got))
    if missing:
        raise ValueError(f"the shards of {out} miss batches {missing}")
    return torch.cat([got[k] for k in range(n_batches)]), nfe
