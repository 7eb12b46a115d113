"""``--opt NAME=VALUE``: the one parser of free-form options for every sub-command (sample, inverse, search)."""

from __future__ import annotations

__all__ = ["opt_value", "parse_opts"]


def opt_value(v: str):
    """An --opt value as YAML reads it: ints stay ints (lower_order_final=2), floats are floats, true/false are
    booleans, anything else stays a string."""
    low = v.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def parse_opts(items: list[str] | None) -> list[tuple[str, bool | int | float | str]]:
    """``["eta=0.5", ...]`` -> ``[("eta", 0.5), ...]``; an item without ``=`` exits with a message naming it."""
    out = []
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--opt takes NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out.append((k, opt_value(v)))
    return out
