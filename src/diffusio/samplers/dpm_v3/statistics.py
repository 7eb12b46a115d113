"""DPM-Solver-v3 empirical model statistics (Zheng, Lu, Chen & Zhu 2023, Eq. 9-14): the record and its integrals."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffusio.core.paths import Path
from diffusio.samplers.dpm import _gauss_legendre

__all__ = ["Statistics"]

_F64 = torch.float64


# --- statistics and their integrals -----------------------------------------------------------------------------


def _gauss01(n: int = 4) -> tuple[Tensor, Tensor]:
    x, w = _gauss_legendre(n)
    return (torch.tensor(x, dtype=_F64) + 1) / 2, torch.tensor(w, dtype=_F64) / 2


def _cumtrapz(r: Tensor, lams: Tensor) -> Tensor:
    """Cumulative integral of a piecewise-linear rate (exact), zero at the first node."""
    d = torch.diff(lams).reshape(-1, *([1] * (r.ndim - 1)))
    return torch.cat([torch.zeros_like(r[:1]), torch.cumsum(0.5 * d * (r[1:] + r[:-1]), 0)])


def _inside(rate: Tensor, integral: Tensor, lams: Tensor, u: Tensor) -> Tensor:
    """Integral of a piecewise-linear ``rate`` at fractions ``u`` of every segment: (n, G, D)."""
    d = torch.diff(lams)[:, None, None]
    r0, r1 = rate[:-1, None], rate[1:, None]
    uu = u[None, :, None]
    return integral[:-1, None] + d * (r0 * uu + (r1 - r0) * uu**2 / 2)


@dataclass
class Statistics:
    """EMS on a grid uniform in lambda from lambda(t_start) (index 0) to lambda(t_end) (index N).

    ``l``, ``s``, ``b``: ``(N + 1, D)`` float64 with D = prod(event_shape). ``prepare`` fills L, S, B, I, C, using
    piecewise-linear l, s, b (so L, S are exact) and 4-point Gauss quadrature inside every grid segment.
    """

    lams: Tensor
    l: Tensor
    s: Tensor
    b: Tensor
    t_start: float
    t_end: float
    event_shape: tuple[int, ...]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        n = self.lams.numel()
        for name in ("l", "s", "b"):
            v = getattr(self, name)
            if v.ndim != 2 or v.shape[0] != n:
                raise ValueError(f"statistics {name} must have shape ({n}, D); got {tuple(v.shape)}")
        lams, l, s, b = self.lams, self.l, self.s, self.b
        self.L, self.S = _cumtrapz(l, lams), _cumtrapz(s, lams)
        u, w = _gauss01()
        d = torch.diff(lams)[:, None]
        ls_in = _inside(l, self.L, lams, u) + _inside(s, self.S, lams, u)  # (n, G, D)
        self._ls_in, self._u, self._w = ls_in, u, w
        self.I = _cumseg(d * (w[None, :, None] * torch.exp(ls_in)).sum(1))
        s_in = _inside(s, self.S, lams, u)
        b_in = b[:-1, None] + (b[1:] - b[:-1])[:, None] * u[None, :, None]
        self.B = _cumseg(d * (w[None, :, None] * torch.exp(-s_in) * b_in).sum(1))
        B_in = self.B[:-1, None] + (self.B[1:] - self.B[:-1])[:, None] * u[None, :, None]
        self.C = _cumseg(d * (w[None, :, None] * torch.exp(ls_in) * B_in).sum(1))
        self._E: dict[tuple[int, int, int], Tensor] = {}
        bad = [k for k in ("l", "s", "b", "L", "S", "B", "I", "C") if not torch.isfinite(getattr(self, k)).all()]
        if bad:
            raise ValueError(
                f"DPM-Solver-v3 statistics overflow ({', '.join(bad)} not finite; max |s| = "
                f"{float(self.s.abs().max()):.3g}): the estimate is unusable for sampling; re-estimate with more data "
                "samples or a larger var_floor, or use another solver (e.g. 'unipc')"
            )

    @property
    def n(self) -> int:
        return self.lams.numel() - 1

    def E(self, js: int, jt: int, k: int) -> Tensor:
        """E_k = int_{lambda_js}^{lambda_jt} e^{(L+S) - (L+S)_js} (lambda - lambda_js)^k / k! dlambda, cached."""
        key = (js, jt, k)
        if key not in self._E:
            lams = self.lams
            lam_in = lams[js:jt, None] + torch.diff(lams)[js:jt, None] * self._u[None]  # (m, G)
            ex = torch.exp(self._ls_in[js:jt] - (self.L[js] + self.S[js]))
            poly = ((lam_in - lams[js]) ** k / math.factorial(k))[..., None]
            self._E[key] = (torch.diff(lams)[js:jt, None] * (self._w[None, :, None] * ex * poly).sum(1)).sum(0)
        return self._E[key]

    @classmethod
    def trivial(cls, path: Path, event_shape, t_start=None, t_end=None, n_grid: int = 1200) -> Statistics:
        """l = 1, s = b = 0: the data-form Taylor solver (Zheng et al. 2023, Sec. 3.2)."""
        lams = _lambda_grid(path, t_start, t_end, n_grid)
        d = math.prod(event_shape)
        one, zero = torch.ones(n_grid + 1, d, dtype=_F64), torch.zeros(n_grid + 1, d, dtype=_F64)
        return cls(lams, one, zero, zero.clone(), *_ends(path, t_start, t_end), tuple(event_shape))

    def check_for(self, path: Path, x_shape: tuple[int, ...], fingerprint: str | None) -> None:
        """Refuse statistics estimated for another path, data shape or model (when both fingerprints are known)."""
        want = self.meta.get("path")
        if want is not None and want != repr(path):
            raise ValueError(
                f"these DPM-Solver-v3 statistics were estimated on path {want}, not on the model's {path!r}; "
                "estimate them for this model with diffusio.samplers.dpm_v3.statistics_for(model, data)"
            )
        if math.prod(x_shape[1:]) != self.l.shape[1]:
            raise ValueError(
                f"these DPM-Solver-v3 statistics are for {self.l.shape[1]} dimensions, x has shape {tuple(x_shape)} "
                f"(statistics estimated on data of shape {self.event_shape})"
            )
        have = self.meta.get("fingerprint")
        if have is not None and fingerprint is not None and have != fingerprint:
            raise ValueError(
                f"these DPM-Solver-v3 statistics belong to another model (fingerprint {have[:12]}, this model "
                f"{fingerprint[:12]}); statistics are per model: estimate them with "
                "diffusio.samplers.dpm_v3.statistics_for(model, data)"
            )

    def tensors(self) -> dict[str, Tensor]:
        return {"lams": self.lams, "l": self.l, "s": self.s, "b": self.b}


def _cumseg(seg: Tensor) -> Tensor:
    return torch.cat([torch.zeros_like(seg[:1]), torch.cumsum(seg, 0)])


def _ends(path: Path, t_start, t_end) -> tuple[float, float]:
    return float(path.t_max if t_start is None else t_start), float(path.t_min if t_end is None else t_end)


def _lambda_grid(path: Path, t_start, t_end, n_grid: int) -> Tensor:
    if not isinstance(n_grid, int) or n_grid < 2:
        raise ValueError(f"n_grid must be an integer >= 2, got {n_grid!r}")
    hi, lo = _ends(path, t_start, t_end)
    ends = torch.tensor([hi, lo], dtype=_F64)
    path.check_t(ends, "statistics range (t_start, t_end)")
    lam = path.log_snr(ends)
    return torch.linspace(float(lam[0]), float(lam[1]), n_grid + 1, dtype=_F64)
