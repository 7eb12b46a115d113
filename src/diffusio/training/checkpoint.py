"""Checkpoints in safetensors, never pickle, written atomically.

``checkpoint.safetensors`` holds everything needed to resume exactly: weights (``model/``), EMA weights
(``ema/``), optimizer state (``optim/``), generator states (``rng/``), with the run config, step and the
optimizer's hyper-parameters in the metadata. ``model.safetensors`` holds just the EMA weights and the config,
for sampling and sharing. One file per checkpoint means a crash mid-write leaves the previous one intact.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from diffusio.io import load_safetensors, save_safetensors

__all__ = ["load_checkpoint", "save_checkpoint", "save_model_file"]

FORMAT = "diffusio-checkpoint-1"


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v for k, v in state.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def _optimizer_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}/{k}"] = v
            else:
                scalars[f"{pid}/{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, k = key.split("/", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    ema_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    step: int,
    config: dict,
    log_window: list[float] | None = None,
) -> Path:
    """Write a resumable checkpoint atomically (temp file, fsync, rename). ``log_window``: the losses since the
    last metrics line, so a resumed run logs the same averages as an uninterrupted one."""
    optim_tensors, optim_meta = _optimizer_flat(optimizer)
    tensors = {
        **_prefixed("model", model.state_dict()),
        **_prefixed("ema", ema_state),
        **_prefixed("optim", optim_tensors),
        **{f"rng/{k}": g.get_state() for k, g in generators.items()},
        "rng/torch_global": torch.get_rng_state(),
        "log/window": torch.tensor(list(log_window or []), dtype=torch.float64),
    }
    meta = {"format": FORMAT, "step": step, "config": config, "optimizer": optim_meta}
    return save_safetensors(tensors, path, meta)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint: ``{"model", "ema", "optimizer", "rng", "step", "config"}``."""
    tensors, meta = load_safetensors(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a diffusio training checkpoint (format {meta.get('format')!r})")
    return {
        "model": _unprefixed("model", tensors),
        "ema": _unprefixed("ema", tensors),
        "optimizer": _optimizer_state(_unprefixed("optim", tensors), meta["optimizer"]),
        "rng": _unprefixed("rng", tensors),
        "step": int(meta["step"]),
        "config": meta["config"],
        "log_window": tensors["log/window"].tolist() if "log/window" in tensors else [],
    }


def save_model_file(path: str | os.PathLike, state: dict[str, torch.Tensor], config: dict, step: int) -> Path:
    """Write sampling weights (the EMA) with the run config in the metadata."""
    return save_safetensors(state, path, {"format": "diffusio-model-1", "config": config, "step": step})
