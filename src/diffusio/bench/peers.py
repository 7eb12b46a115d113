"""Loading the peers a user would pick instead (benchmark harness only; the library never imports this).

k-diffusion's package ``__init__`` imports its training and evaluation stack (torchvision, clean-fid, CLIP, ...),
and PyPI's torchvision does not import beside a local CPU torch build. Only ``k_diffusion.sampling`` is needed,
so it is loaded on its own: a bare package module stands in for ``k_diffusion`` and, if torchvision cannot be
imported, a stub ``torchvision.transforms.functional`` satisfies the one module-level import in
``k_diffusion/utils.py`` (the sampling path never calls it). The stub is registered only inside this harness.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def _torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401

        return True
    except Exception:  # ImportError, or the operator-registration RuntimeError of a mismatched build
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False


def _stub_torchvision() -> None:
    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    tv.transforms, transforms.functional = transforms, functional
    tv.__diffusio_stub__ = True
    sys.modules.update(
        {"torchvision": tv, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}
    )


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
    if not _torchvision_importable():
        _stub_torchvision()
    return importlib.import_module("k_diffusion.sampling")


def load_diffusers():
    """The diffusers module, or None if it is not installed."""
    try:
        return importlib.import_module("diffusers")
    except ImportError:
        return None
