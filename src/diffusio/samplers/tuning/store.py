"""Searched grids as first-class objects: saved as JSON with their metadata (model fingerprint, solver, steps,
fitness, method), loaded by name, and checked against the model they are used with."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path as FsPath

import torch
from torch import Tensor

from diffusio.core.timesteps import check_grid
from diffusio.io import cache_dir, save_json
from diffusio.models.base import ModelBase, ModelWrapper

__all__ = ["SearchedGrid", "grid_dir", "list_grids", "load_grid", "model_fingerprint", "save_grid"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def model_fingerprint(model: ModelBase) -> str:
    """SHA-256 of the model's class, path and tensors (parameters, buffers and tensors held by attributes, e.g. an
    exact mixture's means), looking through wrappers (call counters, guidance): a grid tuned for one model is
    recognised as foreign on another."""
    while isinstance(model, ModelWrapper):
        model = model.inner
    h = hashlib.sha256()
    h.update(type(model).__name__.encode())
    h.update(repr(model.path).encode())
    tensors = dict(model.state_dict()) if isinstance(model, torch.nn.Module) else {}
    owners = [("", model)] + [(k, v) for k, v in vars(model).items() if hasattr(v, "__dict__")]
    for owner_name, owner in owners:
        for k, v in vars(owner).items():
            if torch.is_tensor(v):
                tensors[f"{owner_name}.{k}"] = v
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().cpu().contiguous().to(torch.float64).numpy().tobytes())
    return h.hexdigest()


@dataclass
class SearchedGrid:
    """A grid ``ts`` (strictly decreasing times) searched for ``solver`` at ``steps`` steps on the model with
    ``fingerprint``; ``fitness`` is its score (``metric``), ``method`` the search, ``calls`` its cost in model calls."""

    ts: Tensor
    solver: str
    steps: int
    fitness: float
    fingerprint: str
    method: str = ""
    metric: str = "trajectory_rms"
    calls: int = 0
    path: str = ""
    meta: dict = field(default_factory=dict)

    def check(self, model: ModelBase) -> Tensor:
        """The grid, after checking that it belongs to ``model`` and lies in its path's domain."""
        fp = model_fingerprint(model)
        if fp != self.fingerprint:
            raise ValueError(
                f"this grid was searched on another model (fingerprint {self.fingerprint[:12]}, this model "
                f"{fp[:12]}); search a grid for this model (diffusio tune, or samplers.tuning.evolutionary_search)"
            )
        return check_grid(self.ts, model.path)

    def to_json(self) -> dict:
        d = asdict(self)
        d["ts"] = [float(v) for v in self.ts]
        return d

    @classmethod
    def from_json(cls, d: dict) -> SearchedGrid:
        d = dict(d)
        d["ts"] = check_grid(torch.tensor(d["ts"], dtype=torch.float64))
        return cls(**d)


def grid_dir() -> FsPath:
    """Where named grids live: ``diffusio.io.cache_dir('grids')``."""
    return cache_dir("grids")


def _file(name: str) -> FsPath:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"grid name must be 1-100 characters of letters, digits, '_', '-', '.'; got {name!r}")
    return grid_dir() / f"{name}.json"


def save_grid(grid: SearchedGrid, name: str) -> FsPath:
    """Save ``grid`` under ``name`` (atomic JSON in :func:`grid_dir`); returns the file."""
    return save_json(grid.to_json(), _file(name))


def load_grid(name: str, model: ModelBase | None = None) -> SearchedGrid:
    """Load the grid saved as ``name``; with ``model``, check that it was searched on that model."""
    f = _file(name)
    if not f.is_file():
        have = ", ".join(list_grids()) or "none"
        raise ValueError(f"no saved grid named {name!r} in {grid_dir()} (saved: {have})")
    g = SearchedGrid.from_json(json.loads(f.read_text()))
    if model is not None:
        g.check(model)
    return g


def list_grids() -> list[str]:
    """Names of the searched grids saved in the cache (``cache_dir("grids")``), loadable by name."""
    return sorted(p.stem for p in grid_dir().glob("*.json"))
