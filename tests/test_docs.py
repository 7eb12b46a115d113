"""The API reference (docs/api.md, mkdocstrings) renders a docstring for every public function and class: each name
in a module's ``__all__`` defined in that module has one."""

import importlib
import inspect
import pkgutil

import diffusio


def test_every_public_function_and_class_has_a_docstring():
    missing = []
    for info in pkgutil.walk_packages(diffusio.__path__, "diffusio."):
        if info.name.endswith("__main__"):
            continue
        mod = importlib.import_module(info.name)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name, None)
            own = getattr(obj, "__module__", None) == mod.__name__
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and own and not (obj.__doc__ or "").strip():
                missing.append(f"{mod.__name__}.{name}")
    assert not missing, f"public names without a docstring: {missing}"
