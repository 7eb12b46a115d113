"""Estimating DPM-Solver-v3's empirical model statistics (Zheng, Lu, Chen & Zhu 2023, Eq. 10-12 and App. C.1).

The derivative of eps along the probability-flow ODE is one forward-mode JVP; models whose time input has no
forward-mode AD (an op without a forward derivative such as ``torch.cdist``, a net that casts time to a Python
float) get a central finite difference along the ODE instead (``derivative="auto"`` checks the JVP against it
once and falls back when it fails or disagrees).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from diffusio.models.base import ModelBase
from diffusio.samplers.dpm_v3.statistics import Statistics, _ends, _lambda_grid

__all__ = ["DERIVATIVES", "estimate_statistics"]

_F64 = torch.float64
DERIVATIVES = ("auto", "jvp", "fd")


def _ode_derivative(fn, x: Tensor, lam: Tensor, dx: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """(eps, d eps/d lambda along the ODE with tangent (dx, 1)): a JVP or a central finite difference whose step
    balances truncation (h^2) against rounding in the model's dtype (h ~ eps_mach^(1/3) max(1, |lambda|))."""
    if mode == "jvp":
        eps, deps = torch.func.jvp(fn, (x, lam), (dx, torch.ones_like(lam)))
        return eps.detach(), deps.detach()
    with torch.no_grad():
        eps = fn(x, lam)
        dtype = eps.dtype if eps.is_floating_point() else _F64
        h = torch.finfo(dtype).eps ** (1 / 3) * max(1.0, float(lam.abs().max()))
        deps = (fn(x + h * dx, lam + h).to(_F64) - fn(x - h * dx, lam - h).to(_F64)) / (2 * h)
    return eps, deps


def _pick_derivative(fn, x: Tensor, lam: Tensor, dx: Tensor) -> tuple[str, str]:
    """``("jvp" | "fd", reason)``: the JVP if it runs and agrees with the finite difference, else the FD."""
    try:
        _, d_jvp = _ode_derivative(fn, x, lam, dx, "jvp")
    except (RuntimeError, NotImplementedError, TypeError) as e:
        return "fd", f"forward-mode AD failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    eps, d_fd = _ode_derivative(fn, x, lam, dx, "fd")
    d_jvp = d_jvp.to(_F64)
    # the finite difference is accurate to ~h^2 (relative) plus rounding ~eps_mach^(2/3) of eps's size
    rounding = torch.finfo(eps.dtype).eps ** (2 / 3) * float(eps.to(_F64).norm())
    err = float((d_jvp - d_fd).norm() / (d_fd.norm() + 1e3 * rounding + 1e-300))
    if not math.isfinite(err) or err > 0.05:
        return "fd", f"the JVP disagrees with a finite difference by {err:.2g} (time input not differentiable?)"
    return "jvp", ""


def _eps_fn(model: ModelBase, cond: dict):
    path = model.path

    def fn(x: Tensor, lam: Tensor) -> Tensor:
        return model.predict(x, path.t_of_log_snr(lam), "eps", **cond)

    return fn


def _batch_cond(cond: dict | None, K: int, i0: int, i1: int) -> dict:
    """Per-sample conditioning (tensors with K rows) sliced with the data; anything else passed as is."""
    return {k: v[i0:i1] if torch.is_tensor(v) and v.ndim and v.shape[0] == K else v for k, v in (cond or {}).items()}


def _jacobian_diag(fn, x: Tensor, lam: Tensor, probes: Tensor | None) -> Tensor:
    """diag(d eps/dx) per sample: exact (one backward per dimension) if ``probes`` is None, else Hutchinson,
    E_v[(J v) * v] over the Rademacher ``probes`` ``(P, batch, D)`` (Bekas et al. 2007)."""
    xf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(xf, lam).reshape(x.shape[0], -1)
        if probes is None:
            cols = [
                torch.autograd.grad(out[:, j].sum(), xf, retain_graph=True)[0].reshape(x.shape[0], -1)[:, j]
                for j in range(out.shape[1])
            ]
            return torch.stack(cols, 1).detach()
        acc = torch.zeros_like(out)
        for v in probes.to(out):
            (vjp,) = torch.autograd.grad(out, xf, v, retain_graph=True)
            acc = acc + vjp.reshape(x.shape[0], -1) * v
        return (acc / len(probes)).detach()


def estimate_statistics(
    model: ModelBase,
    data: Tensor,
    *,
    t_start: float | None = None,
    t_end: float | None = None,
    n_grid: int = 120,
    cond: dict | None = None,
    batch_size: int = 1024,
    probes: int = 4,
    exact_below: int = 64,
    var_floor: float = 1e-12,
    generator: torch.Generator | None = None,
    progress: bool = True,
    derivative: str = "auto",
) -> Statistics:
    """Estimate the EMS l, s, b of ``model`` from data samples ``data`` ``(K, *event_shape)`` (Zheng et al. 2023,
    Eq. 10-12 and App. C.1) on ``n_grid + 1`` points uniform in lambda. Runs in float64, in two passes.

    Pass 1: l = E[diag(sigma d eps/dx)] (exact diagonal up to ``exact_below`` dimensions, else Hutchinson with
    ``probes`` Rademacher vectors), then l' by second-order finite differences over the grid. Pass 2, per sample:
    f = e^{-lambda} eps - l x/alpha and f' = e^{-lambda}((l - 1) eps + eps') - l' x/alpha, with eps' = d eps/dlambda
    along the ODE (one JVP with tangent (dx/dlambda, 1)); then s = Cov(f, f')/(Var(f) + floor), b = E f' - s E f.

    Why per sample and centred: near the prior f is a small difference of two large terms (for a symmetric mixture
    such as a ring, E f = 0 and f -> 0 as the data looks Gaussian), so Var(f) from raw moments cancels
    catastrophically and s = Cov/Var explodes (the old estimator gave s ~ 1e10 and inf samples on the 2-D ring).
    ``var_floor`` is a ridge penalty relative to the terms' mean square, floor = var_floor E[(e^{-lambda} eps)^2 +
    (l x/alpha)^2]: where f varies by less than ~sqrt(var_floor) of its terms its slope is below the accuracy of the
    finite-difference l' (and of float32 networks) and s shrinks to 0, the data-form split. The same (x0, noise)
    pairs (and probes) are used at every lambda, which keeps l' smooth. ``cond``: conditioning for the model;
    tensors with K rows are per-sample (e.g. the data's class labels) and are batched with ``data``.

    ``derivative``: how eps' is formed: ``"jvp"`` (forward-mode AD), ``"fd"`` (central finite difference along
    the ODE, two more calls) or ``"auto"`` (the JVP, checked once against the finite difference; the finite
    difference when the JVP fails or disagrees, with a warning). The result is checked to be finite.
    """
    from tqdm.auto import tqdm

    path = model.path
    lams = _lambda_grid(path, t_start, t_end, n_grid)
    data = torch.as_tensor(data).to(_F64)
    if data.ndim < 2 or data.shape[0] < 2:
        raise ValueError(f"data must have shape (K >= 2, *event_shape); got {tuple(data.shape)}")
    if not (isinstance(var_floor, int | float) and math.isfinite(var_floor) and var_floor >= 0):
        raise ValueError(f"var_floor must be >= 0 and finite, got {var_floor!r}")
    if derivative not in DERIVATIVES:
        raise ValueError(f"derivative must be one of {', '.join(DERIVATIVES)}; got {derivative!r}")
    for name, v in (("batch_size", batch_size), ("probes", probes), ("exact_below", exact_below)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "exact_below" else 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not torch.isfinite(data).all():
        raise ValueError("data contains NaN or inf")
    noise = torch.randn(data.shape, generator=generator, dtype=_F64, device=data.device)
    K, D = data.shape[0], math.prod(data.shape[1:])
    # Hutchinson probes are the same at every grid point, like (x0, noise): l stays smooth in lambda, so its
    # finite-difference derivative l' is not dominated by fresh probe noise (regenerated per batch from one seed).
    probe_seed = int(torch.randint(0, 2**62, (1,), generator=generator))

    def probe(i0: int, i1: int) -> Tensor | None:
        if D <= exact_below:
            return None
        g = torch.Generator().manual_seed(probe_seed + i0)
        return torch.randint(0, 2, (probes, i1 - i0, D), generator=g).to(_F64) * 2 - 1

    batches = [(i, min(i + batch_size, K)) for i in range(0, K, batch_size)]
    bar = tqdm(total=2 * (n_grid + 1), desc="DPM-Solver-v3 statistics", disable=not progress)

    def state(j: int):
        t = path.t_of_log_snr(lams[j])
        return float(lams[j]), float(path.alpha(t)), float(path.sigma(t)), float(path.drift(t) / path.d_log_snr(t))

    l = torch.zeros(n_grid + 1, D, dtype=_F64)
    for j in range(n_grid + 1):
        lam, alpha, sigma, _ = state(j)
        for i0, i1 in batches:
            x = alpha * data[i0:i1] + sigma * noise[i0:i1]
            lam_b = torch.full((i1 - i0,), lam, dtype=_F64, device=x.device)
            fn, v = _eps_fn(model, _batch_cond(cond, K, i0, i1)), probe(i0, i1)
            l[j] += sigma * _jacobian_diag(fn, x, lam_b, None if v is None else v.to(x.device)).sum(0).cpu()
        bar.update()
    l /= K
    l_dot = torch.gradient(l, spacing=(lams,), dim=0, edge_order=2)[0]
    s, b = torch.zeros_like(l), torch.zeros_like(l)
    for j in range(n_grid + 1):
        lam, alpha, sigma, dloga = state(j)
        mom = _Moments()
        for i0, i1 in batches:
            x = alpha * data[i0:i1] + sigma * noise[i0:i1]
            lam_b = torch.full((i1 - i0,), lam, dtype=_F64, device=x.device)
            fn = _eps_fn(model, _batch_cond(cond, K, i0, i1))
            with torch.no_grad():
                dx = dloga * x - sigma * fn(x, lam_b)
            if derivative == "auto":
                derivative, why = _pick_derivative(fn, x, lam_b, dx)
                if why:
                    warnings.warn(f"DPM-Solver-v3 statistics: {why}; using a central finite difference", stacklevel=2)
            eps, deps = _ode_derivative(fn, x, lam_b, dx, derivative)
            # detach: a network's parameters require grad, and the statistics must not keep its graph alive
            eps, deps = (math.exp(-lam) * u.detach().reshape(i1 - i0, D).to(_F64).cpu() for u in (eps, deps))
            y = (x / alpha).reshape(i1 - i0, D).cpu()
            f = eps - l[j] * y
            mom.add(f, (l[j] - 1) * eps + deps - l_dot[j] * y, (eps**2 + (l[j] * y) ** 2).sum(0))
        s[j], b[j] = mom.slope(var_floor)
        bar.update()
    bar.close()
    for name, v in (("l", l), ("s", s), ("b", b)):
        if not torch.isfinite(v).all():
            raise ValueError(
                f"the DPM-Solver-v3 statistic {name} is not finite (the model returned NaN/inf or has no usable "
                "derivative on this range); check the model on [t_end, t_start] or use another solver"
            )
    hi, lo = _ends(path, t_start, t_end)
    meta = {"n_samples": K, "probes": probes, "var_floor": var_floor, "derivative": derivative, "path": repr(path)}
    return Statistics(lams, l, s, b, hi, lo, tuple(data.shape[1:]), meta)


class _Moments:
    """Running centred moments of (f, f') per dimension over batches (Chan et al. 1979 pairwise update), so the
    variance of a nearly constant f never comes from a difference of large raw moments."""

    def __init__(self):
        self.n, self.mf, self.mg, self.vf, self.cfg, self.scale = 0, 0.0, 0.0, 0.0, 0.0, 0.0

    def add(self, f: Tensor, g: Tensor, scale: Tensor) -> None:
        k = f.shape[0]
        mf, mg = f.mean(0), g.mean(0)
        vf, cfg = ((f - mf) ** 2).sum(0), ((f - mf) * (g - mg)).sum(0)
        n = self.n + k
        df, dg = mf - self.mf, mg - self.mg
        self.vf = self.vf + vf + df**2 * self.n * k / n
        self.cfg = self.cfg + cfg + df * dg * self.n * k / n
        self.mf, self.mg = self.mf + df * k / n, self.mg + dg * k / n
        self.scale, self.n = self.scale + scale, n

    def slope(self, var_floor: float) -> tuple[Tensor, Tensor]:
        """(s, b) of the ridge fit f' ~ s f + b."""
        var, cov = self.vf / self.n, self.cfg / self.n
        s = cov / (var + var_floor * self.scale / self.n + torch.finfo(_F64).tiny)
        return s, self.mg - s * self.mf
