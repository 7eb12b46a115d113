"""One hub for the five network heads: eps, x0, v, score, velocity (Tweedie: Efron 2011;
v: Salimans & Ho 2022, Sec. 4; velocity: Lipman et al. 2023).

Each kind defines ``to_x0`` and ``from_x0``; any pair converts through x0 (2N formulas, not N(N-1)). All
conversions are affine in the head with coefficients that depend only on ``(x, t)`` and the path.

Shapes: ``out`` and ``x`` are ``(batch, ...)``; ``t`` is ``(batch,)`` (or a scalar tensor).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from diffusio.core.paths import Path
from diffusio.core.time import batch_coeffs

__all__ = ["KINDS", "check_kind", "convert", "from_x0", "to_x0"]

KINDS: tuple[str, ...] = ("eps", "x0", "v", "score", "velocity")


def _as(path: Path, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    c = batch_coeffs(path, t, x)
    return c.alpha, c.sigma


def _as_d(path: Path, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    c = batch_coeffs(path, t, x, derivatives=True)
    return c.alpha, c.sigma, c.d_alpha, c.d_sigma


def _eps_to_x0(eps, x, t, path):
    a, s = _as(path, t, x)
    return (x - s * eps) / a


def _x0_to_eps(x0, x, t, path):
    a, s = _as(path, t, x)
    return (x - a * x0) / s


def _v_to_x0(v, x, t, path):
    # Salimans & Ho: v = alpha eps - sigma x0
    a, s = _as(path, t, x)
    return (a * x - s * v) / (a * a + s * s)


def _x0_to_v(x0, x, t, path):
    a, s = _as(path, t, x)
    eps = (x - a * x0) / s
    return a * eps - s * x0


def _score_to_x0(score, x, t, path):
    a, s = _as(path, t, x)
    return (x + s * s * score) / a


def _x0_to_score(x0, x, t, path):
    a, s = _as(path, t, x)
    return (a * x0 - x) / (s * s)


def _velocity_to_x0(u, x, t, path):
    # u = alpha' x0 + sigma' eps; Delta = alpha sigma' - sigma alpha' = -alpha sigma lambda' > 0
    a, s, da, ds = _as_d(path, t, x)
    return (ds * x - s * u) / (a * ds - s * da)


def _x0_to_velocity(x0, x, t, path):
    a, s, da, ds = _as_d(path, t, x)
    return da * x0 + ds * (x - a * x0) / s


def _same(y, x, t, path):
    return y


# each head's pair of conversions: (head -> x0, x0 -> head)
_HEADS: dict[str, tuple[Callable, Callable]] = {
    "eps": (_eps_to_x0, _x0_to_eps),
    "x0": (_same, _same),
    "v": (_v_to_x0, _x0_to_v),
    "score": (_score_to_x0, _x0_to_score),
    "velocity": (_velocity_to_x0, _x0_to_velocity),
}


def check_kind(kind: str, name: str = "prediction") -> str:
    """Return ``kind`` if it is a known head, else raise a ValueError listing the valid ones."""
    if kind not in KINDS:
        raise ValueError(f"unknown {name} {kind!r}; valid: {', '.join(KINDS)}")
    return kind


def to_x0(kind: str, out: Tensor, x: Tensor, t: Tensor, path: Path) -> Tensor:
    """Convert a head ``out`` of type ``kind`` at ``(x, t)`` to the x0 prediction."""
    return _HEADS[check_kind(kind)][0](out, x, t, path)


def from_x0(kind: str, x0: Tensor, x: Tensor, t: Tensor, path: Path) -> Tensor:
    """Convert an x0 prediction at ``(x, t)`` to a head of type ``kind``."""
    return _HEADS[check_kind(kind)][1](x0, x, t, path)


def convert(out: Tensor, src: str, dst: str, x: Tensor, t: Tensor, path: Path) -> Tensor:
    """Convert head ``out`` of type ``src`` to type ``dst`` (identity when they agree, so no round-off)."""
    if check_kind(src) == check_kind(dst):
        return out
    return from_x0(dst, to_x0(src, out, x, t, path), x, t, path)
