"""Configs shipped inside the package (``src/diffusio/app/configs/*.yaml``; the repo's ``configs/`` links there)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

__all__ = ["packaged_config", "packaged_configs", "resolve_config"]


def packaged_configs() -> list[str]:
    """Names of the bundled run configs."""
    return sorted(p.name[:-5] for p in resources.files("diffusio.app.configs").iterdir() if p.name.endswith(".yaml"))


def packaged_config(name: str) -> dict:
    """A bundled run config by name (e.g. ``moons``, ``digits``)."""
    f = resources.files("diffusio.app.configs") / f"{name}.yaml"
    if not f.is_file():
        raise ValueError(f"no bundled config {name!r}; bundled: {', '.join(packaged_configs())}")
    return yaml.safe_load(f.read_text())


def resolve_config(arg: str) -> dict:
    """A YAML file path, or the name of a bundled config."""
    from diffusio.app.config import load_config

    if Path(arg).is_file():
        return load_config(arg)
    if arg.endswith((".yaml", ".yml")):
        raise FileNotFoundError(f"no config file at {arg}; bundled configs: {', '.join(packaged_configs())}")
    return packaged_config(arg)
