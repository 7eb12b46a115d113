"""Exponential integrators in half log-SNR time: DPM-Solver, DPM-Solver++ (ODE and SDE) and iPNDM.

The probability-flow ODE in lambda = log(alpha/sigma) has an exactly integrable linear part (Lu et al. 2022a,
Eq. 3.4; Lu et al. 2022b, Eq. 8):

* noise form  x_t = (alpha_t/alpha_s) x_s - sigma_t sum_k h phi_{k+1}(h) d_k,    d_k ~ h^k eps^(k)(lambda_s),
* data form   x_t = (sigma_t/sigma_s) x_s + alpha_t sum_k h phi_{k+1}(-h) d_k,  d_k ~ h^k x0^(k)(lambda_s),

with h = lambda_t - lambda_s > 0 and phi_k the exponential-integrator functions (``phi``). Every solver below
only differs in how it estimates the scaled derivatives d_k (intermediate stages or past model outputs).
Coefficients are float64 Python scalars; tensor arithmetic stays in ``x``'s dtype.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusio.core.time import Coeffs, coeffs, time_batch
from diffusio.core.timesteps import check_grid
from diffusio.models.base import ModelBase
from diffusio.samplers.base import Callback, Step, model_x0, run_grid
from diffusio.samplers.kernels import data_sde_update, data_update, noise_update, phi

__all__ = [
    "LOWER_ORDER_FINAL_BELOW",
    "LOWER_ORDER_FINAL_BELOW_3M",
    "fast_orders",
    "phi",
    "sample_dpm_solver",
    "sample_dpm_solver_fast",
    "sample_dpmpp_2m",
    "sample_dpmpp_2s",
    "sample_dpmpp_3m",
    "sample_dpmpp_sde",
    "sample_ipndm",
]

# Multistep solvers lower the order of their last steps only on short runs, as diffusers' DPM-Solver++ does
# (< 15 steps): the lower-order final steps stabilise few-step sampling, but would cap the convergence order as
# h -> 0. Third-order multistep DPM-Solver++ uses a shorter threshold, measured on the three bench models
# (``diffusio bench solvers``): lowering the last orders helps at 4-6 steps and costs 1.5-5x in error at 8-10 steps.
LOWER_ORDER_FINAL_BELOW = 15
LOWER_ORDER_FINAL_BELOW_3M = 8


def point_at_lambda(path, lam: Tensor | float) -> Coeffs:
    """The path's coefficients (as floats) where the half log-SNR is ``lam`` (for intermediate stages)."""
    return coeffs(path, path.t_of_log_snr(torch.as_tensor(lam, dtype=torch.float64))).floats()


def grid_points(model: ModelBase, ts: Tensor) -> list[Coeffs]:
    """Validate the grid (strictly decreasing, inside the path's domain) and evaluate it (float coefficients)."""
    ts = check_grid(ts, model.path)
    return [coeffs(model.path, t).floats() for t in ts]


def check_steps(ts: Tensor, need: int, solver: str, fix: str) -> None:
    """Raise if the grid has fewer than ``need`` steps."""
    steps = len(ts) - 1
    if steps < need:
        raise ValueError(f"steps must be >= {need} for {solver} (got steps={steps}); {fix}")


def eps_call(model: ModelBase, x: Tensor, p: Coeffs, cond: dict | None) -> Tensor:
    """One model call: the noise prediction at ``p``."""
    return model.predict(x, time_batch(p.t, x), "eps", **(cond or {})).to(x.dtype)


# --- singlestep DPM-Solver (noise form) and DPM-Solver++ 2S (data form) -------------------------------------------


def _dpm_single(model, x, s: Coeffs, t: Coeffs, order: int, cond) -> tuple[Tensor, Tensor]:
    """One DPM-Solver-k step (Lu et al. 2022a, Alg. 1 for k = 2 with r1 = 1/2, Alg. 2 with r1 = 1/3, r2 = 2/3)."""
    path, h = model.path, t.lam - s.lam
    e_s = eps_call(model, x, s, cond)
    if order == 1:
        return noise_update(x, s, t, [e_s]), e_s
    if order == 2:
        s1 = point_at_lambda(path, s.lam + 0.5 * h)
        e1 = eps_call(model, noise_update(x, s, s1, [e_s]), s1, cond)
        return noise_update(x, s, t, [e_s + (e1 - e_s)]), e_s  # midpoint: d0 = e_s + (e1 - e_s) / (2 r1)
    r1, r2 = 1 / 3, 2 / 3
    s1, s2 = point_at_lambda(path, s.lam + r1 * h), point_at_lambda(path, s.lam + r2 * h)
    e1 = eps_call(model, noise_update(x, s, s1, [e_s]), s1, cond)
    u2 = noise_update(x, s, s2, [e_s, (r2 / r1) * (e1 - e_s)])
    e2 = eps_call(model, u2, s2, cond)
    return noise_update(x, s, t, [e_s, (e2 - e_s) / r2]), e_s


def _check_order(order: int, allowed: tuple[int, ...], solver: str) -> None:
    if order not in allowed:
        raise ValueError(f"order must be one of {allowed} for {solver}, got {order!r}")


def _x0_from_eps(x: Tensor, p: Coeffs, e: Tensor) -> Tensor:
    return (x - p.sigma * e) / p.alpha


def sample_dpm_solver(
    model: ModelBase,
    x: Tensor,
    ts: Tensor,
    *,
    cond: dict | None = None,
    callback: Callback | None = None,
    order: int = 3,
) -> Tensor:
    """Singlestep DPM-Solver-k, noise form (Lu et al. 2022a, Eq. 3.7, Alg. 1-2): ``order`` calls per interval of ``ts``.

    Order 1 is DDIM; 2 and 3 place intermediate stages at lambda_s + r h (r = 1/2; r = 1/3, 2/3).
    """
    _check_order(order, (1, 2, 3), "dpm_solver")
    return run_grid(_singlestep(model, cond, lambda i: order), x, grid_points(model, ts), callback)


def _singlestep(model: ModelBase, cond: dict | None, order_of) -> Callable:
    """The step of singlestep DPM-Solver: step ``i`` of order ``order_of(i)``, reporting the x0 of its first call."""

    def step(i: int, x: Tensor, s: Coeffs, t: Coeffs) -> tuple[Tensor, Tensor]:
        x_new, e_s = _dpm_single(model, x, s, t, order_of(i), cond)
        return x_new, _x0_from_eps(x, s, e_s)

    return step


def fast_orders(nfe: int, order: int = 3) -> list[int]:
    """DPM-Solver-fast's order schedule for a budget of ``nfe`` model calls (Lu et al. 2022a, Sec. 3.4 / App. D.1)."""
    _check_order(order, (1, 2, 3), "dpm_solver_fast")
    if nfe < order:
        raise ValueError(f"steps (model calls) must be >= order={order} for dpm_solver_fast, got {nfe}")
    if order == 1:
        return [1] * nfe
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    k = nfe // 3 + 1
    if nfe % 3 == 0:
        return [3] * (k - 2) + [2, 1]
    return [3] * (k - 1) + [nfe % 3]


def sample_dpm_solver_fast(
    model: ModelBase,
    x: Tensor,
    ts: Tensor,
    *,
    cond: dict | None = None,
    callback: Callback | None = None,
    order: int = 3,
) -> Tensor:
    """DPM-Solver-fast: singlestep orders [3, ..., 3, 2, 1] spending exactly len(ts) - 1 model calls.

    ``ts`` is the call grid; the outer step ends are ts[cumsum(orders)] and stages sit at lambda_s + r h. (The
    official code uses a fresh lambda-uniform outer grid for its "logSNR" schedule; on a lambda-uniform ``ts``
    the two differ only in where the short last steps fall.) The trailing order-2/1 steps are one call-grid
    step long and sit where x0(lambda) varies slowly, so the measured order stays 3 (tests); meant for 6-20 calls.
    """
    orders = fast_orders(len(ts) - 1, order)
    pts = grid_points(model, ts)
    ends = [pts[j] for j in itertools.accumulate(orders, initial=0)]  # the outer steps' end points
    return run_grid(_singlestep(model, cond, orders.__getitem__), x, ends, callback)


def sample_dpmpp_2s(
    model: ModelBase,
    x: Tensor,
    ts: Tensor,
    *,
    cond: dict | None = None,
    callback: Callback | None = None,
    r1: float = 0.5,
) -> Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1): data-form singlestep, stage at lambda_s + r1 h, 2 calls per step."""
    if not 0 < r1 < 1:
        raise ValueError(f"r1 must lie in (0, 1), got {r1}")

    def step(i: int, x: Tensor, s: Coeffs, t: Coeffs) -> tuple[Tensor, Tensor]:
        m_s = model_x0(model, x, s.t, cond)
        s1 = point_at_lambda(model.path, s.lam + r1 * (t.lam - s.lam))
        m_1 = model_x0(model, data_update(x, s, s1, [m_s]), s1.t, cond)
        return data_update(x, s, t, [m_s + (m_1 - m_s) / (2 * r1)]), m_s

    return run_grid(step, x, grid_points(model, ts), callback)


# --- multistep DPM-Solver++ (ODE and SDE) --------------------------------------------------------------------------


def final_order(order: int, i: int, steps: int, lower_order_final, below: int = LOWER_ORDER_FINAL_BELOW) -> int:
    """Order of step ``i`` (0-based): warm-up min(order, i + 1); with ``lower_order_final`` also min(., steps - i)
    at the end: ``True`` on runs shorter than ``below`` steps (the solver's default), an integer n on runs shorter
    than n steps (diffusers' DPM-Solver++: 15; LuChengTHU/dpm-solver: 10), ``"always"`` on every run (the official
    UniPC and DPM-Solver-v3 code, diffusers' UniPC), ``False`` never (k-diffusion)."""
    if lower_order_final is True:
        limit = below
    elif lower_order_final is False:
        limit = 0
    elif lower_order_final == "always":
        limit = steps + 1
    elif isinstance(lower_order_final, int) and lower_order_final >= 0:
        limit = lower_order_final
    else:
        raise ValueError(f"lower_order_final must be True, False, 'always' or a step count, got {lower_order_final!r}")
    p = min(order, i + 1)
    return min(p, steps - i) if steps < limit else p


def _dpmpp_derivs(hist: list[tuple[float, Tensor]], h: float, variant: str, second_order: str) -> list[Tensor]:
    """Scaled derivative estimates d_k from the newest-first history [(lambda, x0), ...] (Lu et al. 2022b, Alg. 2;
    official third-order update of LuChengTHU/dpm-solver). ``second_order`` is the two-point formula
    ("midpoint": D = m0 + d1/2 with the phi_1 weight; "taylor": the phi_2 term), ``variant`` the three-point one."""
    (l0, m0), p = hist[0], len(hist)
    if p == 1:
        return [m0]
    l1, m1 = hist[1]
    r0 = (l0 - l1) / h
    d1_0 = (m0 - m1) / r0
    if p == 2:
        return [m0 + 0.5 * d1_0] if second_order == "midpoint" else [m0, d1_0]
    l2, m2 = hist[2]
    r1 = (l1 - l2) / h
    d1_1 = (m1 - m2) / r1
    d2 = (d1_0 - d1_1) / (r0 + r1)  # ~ h^2 x0''/2
    d1 = d1_0 + r0 * d2  # ~ h x0'
    # The official coefficient of D2 is phi_3 where the Taylor term needs 2 phi_3 (see sample_dpmpp_3m).
    return [m0, d1, (1.0 if variant == "official" else 2.0) * d2]


_VARIANTS = {2: ("midpoint", "taylor"), 3: ("taylor3", "official")}
_SECOND = ("midpoint", "taylor")


@dataclass(frozen=True)
class Multistep:
    """The options of one multistep DPM-Solver++ run: ``order`` (2 or 3), the ``variant`` of the derivative
    estimate, ``lower_order_final`` (see :func:`final_order`), the SDE's ``eta`` (0: the ODE) and the two-point
    formula ``second`` (None: the variant's own)."""

    order: int
    variant: str
    lower_order_final: bool | int | str = True
    eta: float = 0.0
    second: str | None = None


def _dpmpp_multistep(model, x, ts, cond, callback, generator, opts: Multistep) -> Tensor:
    order, variant, eta, second = opts.order, opts.variant, opts.eta, opts.second
    if variant not in _VARIANTS[order]:
        raise ValueError(f"variant must be one of {_VARIANTS[order]} for order {order}, got {variant!r}")
    if second is None:  # 3M's own two-point formula: the official code's midpoint, or Taylor with taylor3
        second = variant if order == 2 else ("midpoint" if variant == "official" else "taylor")
    if second not in _SECOND:
        raise ValueError(f"second_order must be one of {_SECOND} or None, got {second!r}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    name = f"dpmpp_{order}m" + ("_sde" if eta > 0 else "")
    check_steps(ts, order, name, f"pass more steps or use a lower-order solver (e.g. dpmpp_{order - 1}m or ddim)")

    def update(x: Tensor, s: Coeffs, t: Coeffs, ds: list[Tensor]) -> Tensor:
        if eta > 0:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return data_sde_update(x, s, t, ds, eta, z)
        return data_update(x, s, t, ds)

    below = LOWER_ORDER_FINAL_BELOW_3M if order == 3 else LOWER_ORDER_FINAL_BELOW
    plan = MultistepPlan(order, "x0", variant, second, opts.lower_order_final, below)
    return run_multistep(model, x, ts, cond, callback, plan, update)


@dataclass(frozen=True)
class MultistepPlan:
    """How a multistep exponential integrator estimates its derivatives: ``order`` past outputs of the model's
    ``head`` ("x0": data form, "eps": noise form), the three-point ``variant`` and two-point ``second`` formulas of
    :func:`_dpmpp_derivs`, and the lowering of the final orders (``lower_order_final`` below ``below`` steps, see
    :func:`final_order`)."""

    order: int
    head: str
    variant: str
    second: str
    lower_order_final: bool | int | str
    below: int


def run_multistep(model: ModelBase, x: Tensor, ts: Tensor, cond, callback, plan: MultistepPlan, update) -> Tensor:
    """The multistep driver of DPM-Solver++(2M/3M), its SDE forms and MRS: one model call per step, the newest
    ``plan.order`` outputs kept, and ``update(x, s, t, ds) -> x_t`` applied to the scaled derivatives ds."""
    pts = grid_points(model, ts)
    steps, hist = len(pts) - 1, []

    def step(i: int, x: Tensor, s: Coeffs, t: Coeffs) -> tuple[Tensor, Tensor | None]:
        nonlocal hist
        q = model.predict(x, time_batch(s.t, x), plan.head, **(cond or {})).to(x.dtype)
        hist = [(s.lam, q)] + hist[: plan.order - 1]
        p = final_order(plan.order, i, steps, plan.lower_order_final, plan.below)
        x = update(x, s, t, _dpmpp_derivs(hist[:p], t.lam - s.lam, plan.variant, plan.second))
        return x, q if plan.head == "x0" else None

    return run_grid(step, x, pts, callback)


def sample_dpmpp_2m(
    model: ModelBase,
    x: Tensor,
    ts: Tensor,
    *,
    cond: dict | None = None,
    callback: Callback | None = None,
    variant: str = "midpoint",
    lower_order_final: bool | int | str = True,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): D = x0_0 + (x0_0 - x0_1)/(2 r0), x_t = (sigma_t/sigma_s) x_s -
    alpha_t expm1(-h) D; ``variant="taylor"`` uses the phi_2 term instead (same order). ``lower_order_final``: the
    last step is first order on runs of fewer than 15 steps (True, diffusers' rule), on every run ("always"), or
    never (False, k-diffusion). 1 call per step."""
    return _dpmpp_multistep(model, x, ts, cond, callback, None, Multistep(2, variant, lower_order_final))


def sample_dpmpp_3m(
    model: ModelBase,
    x: Tensor,
    ts: Tensor,
    *,
    cond: dict | None = None,
    callback: Callback | None = None,
    variant: str = "taylor3",
    lower_order_final: bool | int | str = True,
    second_order: str | None = None,
) -> Tensor:
    """DPM-Solver++(3M): third-order multistep in data form (Lu et al. 2022b, App. B; third-order Taylor update).

    ``variant="taylor3"`` weights the second divided difference by 2 phi_3, the exact Taylor term (global order 3).
    ``variant="official"`` is the coefficient of LuChengTHU/dpm-solver, diffusers and k-diffusion (phi_3), which is
    exact only for linear x0(lambda): measured global order 2 (tests/test_fast_samplers.py), but at few steps
    (h ~ 1) its half-weight second difference overshoots less, and it is the more accurate of the two on all three
    bench models from 8 to 20 calls (``diffusio bench solvers``); registered as ``dpmpp_3m_official``.
    ``second_order`` is the two-point formula of the warm-up and lowered final steps: "midpoint" (LuChengTHU and
    diffusers' default) or "taylor" (k-diffusion); None picks midpoint for "official", taylor for "taylor3".
    ``lower_order_final=True`` lowers the last two steps' orders (to 1 and 2) on runs of fewer than 8 steps
    (``LOWER_ORDER_FINAL_BELOW_3M``; measured), "always" on every run, False never (k-diffusion). 1 call per step.
    """
    opts = Multistep(3, variant, lower_order_final, second=second_order)
    return _dpmpp_multistep(model, x, ts, cond, callback, None, opts)


def sample_dpmpp_sde(
    model: ModelBase,
    x: Tensor,
    ts: Tensor,
    *,
    cond: dict | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    order: int = 2,
    eta: float = 1.0,
    variant: str | None = None,
    lower_order_final: bool | int | str = True,
) -> Tensor:
    """Multistep SDE-DPM-Solver++ (Lu et al. 2022b, Sec. 5), registered as ``dpmpp_2m_sde`` (order 2) and
    ``dpmpp_3m_sde`` (order 3):
    x_t = (sigma_t/sigma_s) e^{-eta h} x_s + alpha_t (1 - e^{-(1+eta)h}) D + sigma_t sqrt(1 - e^{-2 eta h}) z,
    with D the 2M estimate (order 2) or the 3M extrapolation of ``sample_dpmpp_3m`` (order 3). ``eta = 1`` is the
    reverse SDE, ``eta = 0`` the 2M / 3M ODE solver. ``variant`` (None: "midpoint" for order 2, "taylor3" for
    order 3) as in ``sample_dpmpp_2m`` / ``sample_dpmpp_3m``."""
    _check_order(order, (2, 3), "dpmpp_sde")
    variant = _VARIANTS[order][0] if variant is None else variant
    return _dpmpp_multistep(model, x, ts, cond, callback, generator, Multistep(order, variant, lower_order_final, eta))


# --- iPNDM: the classic linear-multistep reference -----------------------------------------------------------------


def adams_weights(nodes: list[float], a: float, b: float) -> list[float]:
    """Weights w_j with int_a^b p(s) ds = sum_j w_j f(nodes[j]) for the interpolating polynomial p of degree
    len(nodes) - 1 (variable-step Adams-Bashforth); exact Gauss-Legendre quadrature of the Lagrange basis."""
    n = len(nodes)
    gx, gw = _gauss_legendre((n + 1) // 2)
    mid, half = (a + b) / 2, (b - a) / 2
    weights = []
    for j in range(n):
        total = 0.0
        for xi, wi in zip(gx, gw):
            s = mid + half * xi
            basis = math.prod((s - nodes[k]) / (nodes[j] - nodes[k]) for k in range(n) if k != j)
            total += wi * basis
        weights.append(half * total)
    return weights


def _gauss_legendre(n: int) -> tuple[list[float], list[float]]:
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(max(n, 1))
    return [float(v) for v in x], [float(v) for v in w]


def sample_ipndm(
    model: ModelBase,
    x: Tensor,
    ts: Tensor,
    *,
    cond: dict | None = None,
    callback: Callback | None = None,
    order: int = 4,
) -> Tensor:
    """iPNDM (Zhang & Chen 2023, DEIS paper, Sec. 4 / App. on iPNDM): Adams-Bashforth on d(x/alpha)/ds = eps in the
    noise level s = sigma/alpha, with lower-order warm-up. Variable-step weights (exact for the local polynomial),
    so any grid keeps the order; on a uniform-in-s grid they are the classic 1, (3,-1)/2, (23,-16,5)/12, ...
    1 call per step.
    """
    _check_order(order, (1, 2, 3, 4), "ipndm")
    check_steps(ts, order, "ipndm", "pass more steps or a lower order")
    pts = grid_points(model, ts)
    hist: list[tuple[float, Tensor]] = []
    y = x / pts[0].alpha
    for i in range(len(pts) - 1):
        s, t = pts[i], pts[i + 1]
        e = eps_call(model, y * s.alpha, s, cond)
        hist = [(s.sigma / s.alpha, e)] + hist[: order - 1]
        w = adams_weights([n for n, _ in hist], s.sigma / s.alpha, t.sigma / t.alpha)
        x0 = y - (s.sigma / s.alpha) * e
        y = y + sum(wj * ej for wj, (_, ej) in zip(w, hist))
        if callback is not None:
            callback(Step(i, float(t.t), y * t.alpha, x0))
    return y * pts[-1].alpha
