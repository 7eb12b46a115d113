"""Atomic, pickle-free file writing: safetensors and JSON written to a temp file, fsynced, then renamed.

Test hook: ``DIFFUSIO_SLOW_WRITE_SECONDS`` (unset by default) makes every atomic write sleep that many seconds
between writing the temp file and renaming it, so a crash test (``diffusio bench crash``) can kill a process
reliably inside a write. It changes no file's content; leave it unset in normal use.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

SLOW_WRITE_ENV = "DIFFUSIO_SLOW_WRITE_SECONDS"


def _slow_write_seconds() -> float:
    """The test-only pause before an atomic rename (``$DIFFUSIO_SLOW_WRITE_SECONDS``, default 0: no pause)."""
    raw = os.environ.get(SLOW_WRITE_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or not 0 <= v <= 60:
        raise ValueError(f"{SLOW_WRITE_ENV} must be a number of seconds in [0, 60] (test hook), got {raw!r}; unset it")
    return v


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
        pause = _slow_write_seconds()
        if pause:  # test hook: a window in which a crash test can kill the writer mid-write
            time.sleep(pause)
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


def remove_stale_temp(directory: str | os.PathLike) -> list[Path]:
    """Delete temporary files left in ``directory`` by an atomic write that was killed (``.NAME.*.tmp``).

    Call it when a writer starts (not while another process may be writing to the same directory)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


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
    read_safetensors_header(path)  # size-limited, checked header before the library touches the file
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            meta[k] = v
    return load_file(str(path), device=str(device)), meta


MAX_HEADER_BYTES = 16 << 20  # a header (tensor table + metadata) larger than this is refused


def read_safetensors_header(path: str | os.PathLike, max_bytes: int = MAX_HEADER_BYTES) -> dict:
    """Parse a safetensors header with a size limit and check every tensor's byte range lies inside the file.

    Returns ``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``; raises ``ValueError`` naming
    the problem (empty, truncated, garbage, oversized header, tensors outside the file)."""
    import struct

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(max_bytes, size - 8):
            raise ValueError(
                f"{path} is not a valid safetensors file: its header claims {n} bytes "
                f"(file {size} bytes, limit {max_bytes}); the file is truncated or not a safetensors file"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a valid safetensors file (unreadable header: {e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a valid safetensors file (the header is not a table)")
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise ValueError(f"{path}: the safetensors metadata must map names to strings")
            continue
        offs = info.get("data_offsets") if isinstance(info, dict) else None
        shape = info.get("shape") if isinstance(info, dict) else None
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) and 0 <= o <= data for o in offs)
            or offs[0] > offs[1]
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and d >= 0 for d in shape)
        ):
            raise ValueError(f"{path}: tensor {name!r} has an invalid entry in the header (truncated or crafted file)")
    return header


def save_text(text: str, path: str | os.PathLike) -> Path:
    """Write text atomically."""

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    return _atomic_write(path, write)


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
