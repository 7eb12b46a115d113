"""Importing benchmark peers (bench/test harness only; the library never imports them).

deepinv imports torchvision at module level for features the inverse benchmark does not use (datasets,
transforms, image grids). PyPI's torchvision wheels are built against PyPI's torch and may fail to import beside
a local CPU build; :func:`import_deepinv` then registers a stand-in ``torchvision`` whose attributes are inert
placeholders, only for this process, and imports deepinv against it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

__all__ = ["import_deepinv"]


class _Placeholder:
    """Stands for any torchvision object; using it raises."""

    def __init__(self, *args, **kwargs):
        raise ImportError("torchvision is not importable here; this deepinv feature needs a working torchvision")


class _PlaceholderMeta(type):
    def __getattr__(cls, name):
        return cls


class _Inert(_Placeholder, metaclass=_PlaceholderMeta):
    pass


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``torchvision`` and all its submodules as :class:`_StubModule` objects."""

    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        module.__version__ = "0.0+diffusio-stand-in"
        return module

    def exec_module(self, module):
        pass


def _purge(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


def import_deepinv():
    """deepinv, or None if it is not installed; with the torchvision stand-in when the real one fails to import."""
    if importlib.util.find_spec("deepinv") is None:
        return None
    try:
        import torchvision  # noqa: F401
    except Exception:
        _purge("torchvision")
        if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _StubFinder())
    try:
        return importlib.import_module("deepinv")
    except ImportError:
        _purge("deepinv")
        return None
