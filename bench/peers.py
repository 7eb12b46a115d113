"""Importing benchmark peers (bench/test harness only; the library never imports them).

deepinv and k-diffusion import torchvision at module level for features the benchmarks do not use (datasets,
transforms, image grids). PyPI's torchvision wheels are built against PyPI's torch and may fail to import beside
a local CPU build; :func:`ensure_torchvision` then registers a stand-in ``torchvision`` whose attributes are inert
placeholders, only for this process. k-diffusion's package ``__init__`` also imports its training stack
(clean-fid, CLIP, ...), so only ``k_diffusion.sampling`` is loaded, under a bare package module.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

import torch

__all__ = ["ensure_torchvision", "import_deepinv", "load_diffusers", "load_k_diffusion_sampling"]


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


def ensure_torchvision() -> None:
    """Make ``import torchvision`` succeed: the real package if it loads, else the inert stand-in."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or the operator-registration error of a mismatched build
        _purge("torchvision")
        if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _StubFinder())


def import_deepinv():
    """deepinv, or None if it is not installed; with the torchvision stand-in when the real one fails to import."""
    if importlib.util.find_spec("deepinv") is None:
        return None
    ensure_torchvision()
    try:
        return importlib.import_module("deepinv")
    except ImportError:
        _purge("deepinv")
        return None


def load_k_diffusion_sampling():
    """``k_diffusion.sampling`` as a module, or None if k-diffusion (or torchsde) is not installed."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or importlib.util.find_spec("torchsde") is None:
        return None
    if "k_diffusion" not in sys.modules:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
    ensure_torchvision()
    return importlib.import_module("k_diffusion.sampling")


def load_diffusers():
    """The diffusers module, or None if it is not installed; with the torchvision stand-in when needed."""
    if importlib.util.find_spec("diffusers") is None:
        return None
    ensure_torchvision()
    try:
        return importlib.import_module("diffusers")
    except ImportError:
        return None


class DeepinvDenoiser(torch.nn.Module):
    """A diffusio model as deepinv's denoiser ``D(x, sigma)`` on [0, 1] images: x_ours = 2 x - 1 has noise level
    2 sigma. ``clamp="sampling"`` keeps t in the path's sampling range ``[t_min, t_max]``, ``"domain"`` in its whole
    domain ``[t_lo, t_hi]``. ``calls`` counts the calls."""

    def __init__(self, model, clamp: str = "domain"):
        super().__init__()
        if clamp not in ("sampling", "domain"):
            raise ValueError(f"clamp must be 'sampling' or 'domain', got {clamp!r}")
        self.model, self.clamp, self.calls = model, clamp, 0

    def forward(self, x, sigma, *args, **kwargs):
        self.calls += 1
        path = self.model.path
        lo, hi = (path.t_min, path.t_max) if self.clamp == "sampling" else (path.t_lo, path.t_hi)
        s = (2 * torch.as_tensor(sigma, dtype=torch.float64, device=x.device)).flatten().clamp(min=1e-4)
        t = path.t_of_noise_level(s.expand(x.shape[0]) if s.numel() == 1 else s).clamp(lo, hi)
        a = path.alpha(t).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (self.model.predict((2 * x - 1) * a, t, "x0") + 1) / 2
