"""The run-config schema: every section, key, type and range checked before any work starts.

A config is a mapping of known sections. Fixed sections (``train``, ``sample``, ``model``, ``loss``,
``interpolant``) have declared keys; named sections (``data``, ``base``, ``path``, ``net``) take the keys of the
constructor their ``name`` selects, read from its signature (so the schema follows the code). Types come from
the annotations (``seed: 1.5`` is not an int, ``lr: abc`` not a float); every number anywhere must be finite
(``lr: .inf``, ``grad_clip: .nan`` are refused); unknown sections and keys are errors that name the key and
suggest the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping

__all__ = ["ConfigError", "check_keys", "check_value", "validate_config"]


class ConfigError(ValueError):
    """A config that does not match the schema (the message names the key and the fix)."""


def suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_keys(where: str, section: Mapping, valid, what: str = "option") -> None:
    """Refuse keys outside ``valid`` with the closest valid one."""
    valid = sorted(valid)
    for key in section:
        if key not in valid:
            raise ConfigError(
                f"unknown {where} {what} {key!r}{suggest(key, valid)} (valid: {', '.join(valid) or 'none'})"
            )


def _finite_walk(where: str, value) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value}")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _finite_walk(f"{where}.{k}", v)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _finite_walk(f"{where}[{i}]", v)


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _matches(value, hint) -> bool:
    """Whether ``value`` (from YAML) fits the annotation ``hint``; unknown annotations accept anything."""
    if hint is typing.Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return len(args) != 1 or all(_matches(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, Mapping)
    return True  # a class or protocol the YAML cannot express directly: checked by the constructor


def check_value(where: str, value, hint) -> None:
    """Raise :class:`ConfigError` naming ``where`` unless ``value`` (from YAML) fits the annotation ``hint``."""
    if not _matches(value, hint):
        raise ConfigError(f"{where} must be {_type_name(hint)}, got {value!r} ({type(value).__name__})")


def _hints(fn: Callable) -> dict:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:  # annotations that do not resolve: keys are still checked, types by the constructor
        return {}


def signature_keys(fn: Callable, skip=("self",)) -> tuple[set[str], dict, bool]:
    """(keyword names, type hints, accepts **kwargs) of a constructor or function."""
    params = inspect.signature(fn).parameters
    names = {p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)} - set(skip)
    var_kw = any(v.kind == v.VAR_KEYWORD for v in params.values())
    if dataclasses.is_dataclass(fn):
        names = {f.name for f in dataclasses.fields(fn) if f.init} - set(skip)
    return names, _hints(fn), var_kw


def check_call(where: str, fn: Callable, spec: Mapping, *, extra: Mapping[str, object] | None = None, skip=()) -> None:
    """Check ``spec``'s keys and value types against ``fn``'s signature (plus ``extra`` keys with their types)."""
    names, hints, var_kw = signature_keys(fn, ("self", *skip))
    extra = dict(extra or {})
    if not var_kw:
        check_keys(where, spec, names | set(extra))
    for k, v in spec.items():
        hint = extra.get(k, hints.get(k, typing.Any))
        check_value(f"{where}.{k}", v, hint)


def _named(where: str, section, registry: Mapping | typing.Sequence, *, default: str | None = None) -> tuple[str, dict]:
    """(name, other keys) of a named section (a mapping with ``name``, or just the name)."""
    if isinstance(section, str):
        section = {"name": section}
    if not isinstance(section, Mapping):
        raise ConfigError(f"section {where} must be a mapping with a name (e.g. {{name: ...}}), got {section!r}")
    spec = dict(section)
    name = spec.pop("name", default)
    if name not in registry:
        valid = list(registry)
        raise ConfigError(f"unknown {where} {name!r}; valid: {', '.join(map(str, valid))}{suggest(name, valid)}")
    return name, spec


def validate_config(cfg, schema: Mapping[str, Callable[[str, object, dict], None]], *, where: str = "config") -> dict:
    """Check a whole run config against ``schema`` (section -> checker); returns it unchanged."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"the {where} must be a mapping of sections ({', '.join(schema)}), got {cfg!r}")
    check_keys(where, cfg, schema, "section")
    for key, value in cfg.items():
        _finite_walk(key, value)
    for key, value in cfg.items():
        schema[key](key, value, cfg)
    return dict(cfg)
