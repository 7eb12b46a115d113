"""Atomic, pickle-free file writing: safetensors and JSON written to a temp file, fsynced, then renamed."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then fsync and rename onto ``path``: a crash leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(dir_fd)
    return path


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``tensors`` atomically; ``metadata`` values that are not strings are stored as JSON."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return _atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=meta))


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """Read a safetensors file: ``(tensors, metadata)`` with JSON metadata values decoded where possible."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            meta[k] = v
    return load_file(str(path), device=str(device)), meta


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically (indented, keys in insertion order)."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")

    return _atomic_write(path, write)


def cache_dir(*parts: str) -> Path:
    """diffusio's cache directory (models trained for benchmarks, solver statistics), created on first use.

    ``$DIFFUSIO_CACHE`` if set, else ``$XDG_CACHE_HOME/diffusio`` (default ``~/.cache/diffusio``); never the
    working directory unless that is what the variable says. ``parts`` name a subdirectory.
    """
    root = os.environ.get("DIFFUSIO_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "diffusio")
    out = Path(root, *parts)
    out.mkdir(parents=True, exist_ok=True)
    return out
