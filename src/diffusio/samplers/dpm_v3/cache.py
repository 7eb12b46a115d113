"""DPM-Solver-v3 statistics on disk: model fingerprints and the cache (safetensors, atomic, never pickle).

Statistics belong to one model on one path and time range. The fingerprint hashes the model's class, path and
every parameter and buffer of every submodule, plus its plain attributes (prediction head, tensors held by
objects such as an exact mixture's means). A model that holds code the hash cannot see (a plain function, a
lambda, a bound method of something that is not a module) has no fingerprint: its statistics are cached only
under an explicit ``cache_key=``, else estimated afresh. The fingerprint is stored in the file and checked on load.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import warnings
from pathlib import Path as FsPath

import torch
from torch import Tensor, nn

from diffusio.core.paths import Path
from diffusio.io import cache_dir as _io_cache_dir
from diffusio.io import load_safetensors, save_safetensors
from diffusio.models.base import ModelBase, ModelWrapper
from diffusio.samplers.dpm_v3.estimate import estimate_statistics
from diffusio.samplers.dpm_v3.statistics import Statistics, _ends

__all__ = [
    "ESTIMATOR_VERSION",
    "cache_dir",
    "load_statistics",
    "model_fingerprint",
    "save_statistics",
    "statistics_for",
]

# Bumped whenever the estimator or the file layout changes, so older statistics are never picked up from the cache.
ESTIMATOR_VERSION = 3


def cache_dir() -> FsPath:
    """Where statistics are cached: ``diffusio.io.cache_dir("dpm_v3")`` ($DIFFUSIO_CACHE/dpm_v3 if set)."""
    return _io_cache_dir("dpm_v3")


class _Opaque(Exception):
    """The model holds code the fingerprint cannot see."""


def _hash_tensor(h, name: str, v: Tensor) -> None:
    v = v.detach().cpu().contiguous()
    h.update(f"{name}:{v.dtype}:{tuple(v.shape)}".encode())
    h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")


def _hash_value(h, name: str, v, depth: int = 0) -> None:
    """Hash one attribute; raise _Opaque for code the hash cannot see."""
    if v is None or isinstance(v, bool | int | float | str | complex):
        h.update(f"{name}={v!r}".encode())
    elif torch.is_tensor(v):
        _hash_tensor(h, name, v)
    elif isinstance(v, nn.Module):
        _hash_module(h, name, v)
    elif inspect.ismethod(v) and isinstance(v.__self__, nn.Module):  # a module's bound method: its weights + name
        h.update(f"{name}=method:{v.__func__.__qualname__}".encode())
        _hash_module(h, name + ".__self__", v.__self__)
    elif isinstance(v, list | tuple):
        for i, u in enumerate(v):
            _hash_value(h, f"{name}[{i}]", u, depth)
    elif isinstance(v, dict):
        for k in sorted(v, key=str):
            _hash_value(h, f"{name}[{k!r}]", v[k], depth)
    elif inspect.isfunction(v) or inspect.ismethod(v) or inspect.isbuiltin(v) or isinstance(v, functools.partial):
        raise _Opaque(f"{name} is a plain function ({getattr(v, '__qualname__', type(v).__name__)})")
    elif isinstance(v, torch.dtype | torch.device):
        h.update(f"{name}={v}".encode())
    elif hasattr(v, "__dict__") and depth < 3:  # a plain object (a mixture, a preconditioner): its attributes
        h.update(f"{name}:{type(v).__qualname__}".encode())
        for k in sorted(vars(v)):
            _hash_value(h, f"{name}.{k}", vars(v)[k], depth + 1)
    elif callable(v):
        raise _Opaque(f"{name} is a callable {type(v).__name__} without inspectable state")
    else:
        h.update(f"{name}:{type(v).__qualname__}={v!r}".encode())


def _hash_module(h, prefix: str, module: nn.Module) -> None:
    h.update(f"{prefix}:{type(module).__qualname__}".encode())
    for k, v in module.named_parameters(prefix, remove_duplicate=False):
        _hash_tensor(h, k, v)
    for k, v in module.named_buffers(prefix, remove_duplicate=False):
        _hash_tensor(h, k, v)
    for name, sub in module.named_modules(prefix=prefix):
        h.update(f"{name}:{type(sub).__qualname__}".encode())
        for k, v in vars(sub).items():
            if k.startswith("_") or k == "training" or isinstance(v, nn.Module):
                continue
            _hash_value(h, f"{name}.{k}", v)


def model_fingerprint(model: ModelBase) -> str | None:
    """A SHA-256 identifying ``model`` (class, path, every parameter and buffer of every submodule, plain
    attributes), or ``None`` when the model holds a plain function or other code the hash cannot see. Wrappers
    (guidance, call counters) are looked through: statistics belong to the base model and are reused under
    guidance (Zheng et al. 2023 estimate them on the unconditional model)."""
    while isinstance(model, ModelWrapper):
        model = model.inner
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    h.update(repr(model.path).encode())
    try:
        _hash_module(h, "model", model)
    except _Opaque:
        return None
    return h.hexdigest()


def _opaque_reason(model: ModelBase) -> str:
    while isinstance(model, ModelWrapper):
        model = model.inner
    try:
        _hash_module(hashlib.sha256(), "model", model)
    except _Opaque as e:
        return str(e)
    return ""


def _key_fingerprint(cache_key: str, path: Path) -> str:
    return hashlib.sha256(f"cache_key:{cache_key}:{path!r}".encode()).hexdigest()


def _cache_file(fp: str, t_start: float, t_end: float, n_grid: int) -> FsPath:
    return cache_dir() / f"ems{ESTIMATOR_VERSION}-{fp[:20]}-{t_start:.8g}-{t_end:.8g}-{n_grid}.safetensors"


def _resolve_fingerprint(model: ModelBase, cache_key: str | None) -> str | None:
    if cache_key is not None:
        if not isinstance(cache_key, str) or not cache_key:
            raise ValueError(f"cache_key must be a non-empty string naming the model, got {cache_key!r}")
        return _key_fingerprint(cache_key, model.path)
    return model_fingerprint(model)


def save_statistics(stats: Statistics, model: ModelBase, *, cache_key: str | None = None) -> FsPath:
    """Write ``stats`` atomically to the cache for ``model`` (or under ``cache_key`` for a model without a
    fingerprint), with the fingerprint, path and grid in the file's metadata."""
    fp = _resolve_fingerprint(model, cache_key)
    if fp is None:
        raise ValueError(
            f"this model has no fingerprint ({_opaque_reason(model)}), so its statistics cannot be cached safely: "
            "pass cache_key='a name unique to this model' or keep the Statistics object"
        )
    stats.meta.update(fingerprint=fp, path=repr(model.path))
    meta = {
        "fingerprint": fp,
        "estimator_version": ESTIMATOR_VERSION,
        "path": repr(model.path),
        "t_start": stats.t_start,
        "t_end": stats.t_end,
        "event_shape": list(stats.event_shape),
    }
    meta.update({k: v for k, v in stats.meta.items() if k not in meta})
    return save_safetensors(stats.tensors(), _cache_file(fp, stats.t_start, stats.t_end, stats.n), meta)


def _read(file: FsPath, fp: str, path: Path, hi: float, lo: float) -> Statistics:
    """Load a cache file and check it belongs to this model, path and range."""
    try:
        t, meta = load_safetensors(file)
    except (OSError, ValueError, RuntimeError) as e:  # a torn or foreign file
        raise ValueError(f"statistics file {file} is unreadable ({e}); delete it and recompute") from e
    if meta.get("fingerprint") != fp or meta.get("path") != repr(path):
        raise ValueError(f"statistics file {file} belongs to another model or path; delete it and recompute")
    if set(t) != {"lams", "l", "s", "b"} or not all(torch.isfinite(v).all() for v in t.values()):
        raise ValueError(f"statistics file {file} is damaged (missing or non-finite tensors); delete it and recompute")
    shape = tuple(meta.get("event_shape", ()))
    if t["l"].ndim != 2 or math.prod(shape) != t["l"].shape[1]:
        raise ValueError(f"statistics file {file} is damaged (shapes disagree); delete it and recompute")
    keep = {k: meta[k] for k in ("fingerprint", "path", "n_samples", "derivative") if k in meta}
    return Statistics(t["lams"], t["l"], t["s"], t["b"], hi, lo, shape, keep)


def load_statistics(
    model: ModelBase, t_start: float | None = None, t_end: float | None = None, *, cache_key: str | None = None
) -> Statistics:
    """Load cached statistics of ``model`` for the range [t_end, t_start] (the finest grid if several)."""
    path = model.path
    hi, lo = _ends(path, t_start, t_end)
    fp = _resolve_fingerprint(model, cache_key)
    if fp is None:
        raise ValueError(
            f"no DPM-Solver-v3 statistics for this model: it has no fingerprint ({_opaque_reason(model)}), so "
            "nothing is looked up in the cache; compute them with diffusio.samplers.dpm_v3.statistics_for(model, "
            "data, cache_key='a unique name') and pass statistics=... to the sampler"
        )
    files = sorted(
        cache_dir().glob(f"ems{ESTIMATOR_VERSION}-{fp[:20]}-{hi:.8g}-{lo:.8g}-*.safetensors"),
        key=lambda p: int(p.stem.split("-")[-1]),
    )
    if not files:
        raise ValueError(
            f"no DPM-Solver-v3 statistics for this model (fingerprint {fp[:12]}) on t in [{lo:g}, {hi:g}] in "
            f"{cache_dir()}; compute them once with diffusio.samplers.dpm_v3.statistics_for(model, data) "
            "(data: samples from the training set) or pass statistics=... to the sampler"
        )
    return _read(files[-1], fp, path, hi, lo)


def statistics_for(
    model: ModelBase,
    data: Tensor,
    *,
    t_start=None,
    t_end=None,
    n_grid: int = 120,
    recompute: bool = False,
    cache_key: str | None = None,
    **opts,
) -> Statistics:
    """Cached statistics of ``model`` on ``n_grid`` lambda intervals; estimated (and saved) if absent.

    A model without a fingerprint (it holds a plain function) is never looked up or saved unless ``cache_key``
    names it; its statistics are then estimated on every call (a warning says so)."""
    hi, lo = _ends(model.path, t_start, t_end)
    fp = _resolve_fingerprint(model, cache_key)
    if fp is None:
        warnings.warn(
            f"DPM-Solver-v3 statistics are not cached for this model ({_opaque_reason(model)}); pass "
            "cache_key='a name unique to this model' to cache them",
            stacklevel=2,
        )
        stats = estimate_statistics(model, data, t_start=hi, t_end=lo, n_grid=n_grid, **opts)
        return stats
    f = _cache_file(fp, hi, lo, n_grid)
    if f.is_file() and not recompute:
        try:
            return _read(f, fp, model.path, hi, lo)
        except ValueError as e:
            warnings.warn(f"{e}: recomputing", stacklevel=2)
    stats = estimate_statistics(model, data, t_start=hi, t_end=lo, n_grid=n_grid, **opts)
    save_statistics(stats, model, cache_key=cache_key)
    return stats
