"""Flow maps: models of the probability-flow ODE's solution map Psi_{t->s}, distilled from a trained teacher and
sampled in 1-4 jumps (Boffi et al. 2025, flow-map matching; MeanFlow, Geng et al. 2025, arXiv 2505.13447).

A :class:`FlowMapModel` predicts the average velocity U(x, t, s) = (1/(s - t)) int_t^s u(x_tau, tau) dtau of the
teacher's ODE along its trajectory through (x, t), so the jump is Psi_{t->s}(x) = x + (s - t) U(x, t, s); then
Psi_{t->t} = id by construction and U(x, t, t) = u(x, t) is the instantaneous velocity: the diagonal is a
flow-matching model, so a FlowMapModel is also an ordinary Model (``predict`` uses it) that every sampler accepts.

Differentiating (s - t) U(x_t, t, s) = int_t^s u dtau along the trajectory in t gives the MeanFlow identity

    U(x_t, t, s) = u(x_t, t) + (s - t) dU/dt,   dU/dt = (grad_x U) u + d_t U,                 (MeanFlow Eq. 6-8)

a JVP with tangent (u, 1, 0) in (x, t, s). :class:`FlowMapDistillation` regresses U onto the stop-gradient
right-hand side with the *teacher's* velocity u (Eulerian distillation: one teacher call and one JVP per batch,
no ODE solves); with ``teacher=None`` it uses the conditional velocity alpha' x0 + sigma' eps (MeanFlow training).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from diffusio.core.parametrization import convert
from diffusio.core.paths import Path
from diffusio.core.time import as_time, broadcast, time_batch
from diffusio.models.base import CountingModel, ModelBase, ModelWrapper, _net_dtype
from diffusio.models.wrappers import Rescheduled
from diffusio.samplers import Solver, register_solver
from diffusio.samplers.base import Callback, run_grid
from diffusio.samplers.kernels import heun_update
from diffusio.training.losses import LogitNormal, UniformTime


class FlowMapModel(ModelBase):
    """``FlowMapModel(net, path)``: ``net(x, t, s)`` (network times ``path.net_time``) is the average velocity U."""

    def __init__(self, net: nn.Module, path: Path):
        super().__init__()
        if not isinstance(path, Path):
            raise TypeError(f"path must be a diffusio.paths.Path, got {type(path).__name__}")
        self.net, self.path, self.prediction, self.precond = net, path, "velocity", None

    def with_net(self, net: nn.Module) -> FlowMapModel:
        return FlowMapModel(net, self.path)

    def average_velocity(self, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """U(x, t, s) for ``x`` ``(B, ...)``, ``t``, ``s`` ``(B,)`` (output in ``x``'s dtype)."""
        dtype = _net_dtype(self.net, x)
        nt, ns = self.path.net_time(t).to(dtype), self.path.net_time(s).to(dtype)
        return self.net(x.to(dtype), nt, ns).to(x.dtype)

    def jump(self, x: Tensor, t: Tensor | float, s: Tensor | float) -> Tensor:
        """Psi_{t->s}(x) = x + (s - t) U(x, t, s)."""
        t, s = as_time(t, x), as_time(s, x)
        return x + broadcast(s - t, x) * self.average_velocity(x, t, s)

    def predict(self, x: Tensor, t: Tensor, kind: str = "x0", **cond) -> Tensor:
        u = self.average_velocity(x, t, t)
        return convert(u, "velocity", kind, x, t, self.path)


def sample_flowmap(
    model: ModelBase, x: Tensor, ts: Tensor, *, cond: dict | None = None, callback: Callback | None = None
) -> Tensor:
    """Jump along the grid with a learned flow map: x <- Psi_{ts[i] -> ts[i+1]}(x) (1-4 jumps are the point).

    ``model`` is a :class:`FlowMapModel` or wrappers around one, and the jump honours them (:func:`flow_jump`):
    :class:`~diffusio.models.wrappers.Rescheduled` maps the jump to the flow map's own time axis exactly, and a
    wrapper that changes the prediction (guidance, corrections) adds its change of the velocity over the jump.
    1 flow-map call per jump, plus 2 velocity calls per prediction-changing wrapper.
    """
    flow_map_of(model)

    def jump(i: int, x: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, None]:
        return flow_jump(model, x, time_batch(t, x), time_batch(s, x), cond or {}), None

    return run_grid(jump, x, ts, callback)


def flow_map_of(model: ModelBase) -> FlowMapModel:
    """The :class:`FlowMapModel` inside ``model``'s wrappers (a clear error when there is none)."""
    inner = model
    while not isinstance(inner, FlowMapModel):
        inner = getattr(inner, "inner", None)
        if inner is None:
            raise ValueError("the flowmap solver needs a FlowMapModel (a model with jump(x, t, s)); use euler/heun")
    return inner


def flow_jump(
    model: ModelBase, x: Tensor, t: Tensor, s: Tensor, cond: dict, counter: CountingModel | None = None
) -> Tensor:
    """Psi_{t->s}(x) of ``model`` in its own time (``t``, ``s``: float64 ``(B,)``), through its wrappers.

    * :class:`FlowMapModel`: the learned jump x + (s - t) U(x, t, s).
    * :class:`~diffusio.models.wrappers.Rescheduled` to a new path: two Gaussian paths with the same log-SNR carry
      the same PF-ODE trajectories up to the scale alpha (Kingma et al. 2021, Sec. 4; Karras et al. 2022, Sec. 3),
      so the jump is x' alpha_old(t_o)/alpha_new(t) -> Psi_{t_o->s_o} -> times alpha_new(s)/alpha_old(s_o), with
      t_o, s_o the old times of the same log-SNR. Exact, not an approximation.
    * :class:`~diffusio.models.base.CountingModel`: counts every call made below it (the jump and the velocities).
    * any other wrapper that overrides ``predict`` (guidance, inverse-problem corrections): its change of the
      PF-ODE velocity at (x, t), delta = u_wrapper - u_inner, is added over the jump, (s - t) delta — the first-order
      (Euler) flow map of the perturbation, exact as s -> t. A wrapper that only forwards adds nothing.
    """
    if isinstance(model, FlowMapModel):
        if counter is not None:
            counter.calls += 1
        return model.jump(x, t.to(x.dtype), s.to(x.dtype))
    if isinstance(model, Rescheduled):
        old, new = model.inner.path, model.path
        t_o, s_o = model.old_time(t), model.old_time(s)
        x_o = x * broadcast(old.alpha(t_o) / new.alpha(t), x)
        y = flow_jump(model.inner, x_o, t_o, s_o, cond, counter)
        return y * broadcast(new.alpha(s) / old.alpha(s_o), x)
    if not isinstance(model, ModelWrapper):
        raise ValueError(f"the flowmap solver cannot jump through {type(model).__name__}; it needs a FlowMapModel")
    if isinstance(model, CountingModel):
        return flow_jump(model.inner, x, t, s, cond, model)
    y = flow_jump(model.inner, x, t, s, cond, counter)
    if type(model).predict is not ModelWrapper.predict:
        tt = t.to(x.dtype)
        if counter is not None:
            counter.calls += 2
        delta = model.predict(x, tt, "velocity", **cond) - model.inner.predict(x, tt, "velocity", **cond)
        y = y + broadcast(s - t, x) * delta.to(x.dtype)
    return y


@dataclass(frozen=True)
class EulerianTarget:
    """sg(u + (s - t) dU/dt), dU/dt by a forward-mode JVP with tangent (u, 1, 0) in (x, t, s) (MeanFlow identity;
    Geng et al. 2025, Eq. 8-10). One teacher call and one JVP per batch; the target bootstraps on the student."""

    def __call__(self, loss: FlowMapDistillation, model: FlowMapModel, xt: Tensor, t: Tensor, s: Tensor, u: Tensor):
        def fn(x, tt):
            return model.average_velocity(x, tt, s)

        with torch.no_grad():
            _, dudt = torch.func.jvp(fn, (xt, t.to(xt.dtype)), (u, torch.ones_like(t, dtype=xt.dtype)))
        return (u + broadcast(s - t, xt) * dudt).detach()


@dataclass(frozen=True)
class LagrangianTarget:
    """(Phi(x_t) - x_t)/(s - t) with Phi the teacher's ODE solution from t to s by ``steps`` Heun steps (per-sample
    grids): direct regression on teacher trajectories (flow-map matching; Boffi et al. 2025, "Lagrangian"
    distillation). 2 * ``steps`` teacher calls per batch, no bootstrapping; s = t gives the teacher's u."""

    steps: int = 8

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"LagrangianTarget: steps must be an integer >= 1; got {self.steps!r}")

    @torch.no_grad()
    def __call__(self, loss: FlowMapDistillation, model: FlowMapModel, xt: Tensor, t: Tensor, s: Tensor, u: Tensor):
        if loss.teacher is None:
            raise ValueError("LagrangianTarget needs a teacher model (FlowMapDistillation(teacher=...))")

        def f(y: Tensor, tau: Tensor) -> Tensor:
            return loss.teacher.predict(y, tau, "velocity").to(y.dtype)

        h = (s - t) / self.steps
        x, tau, d = xt, t, u
        for k in range(self.steps):
            x, _ = heun_update(f, x, d, h, tau + h)
            tau = tau + h
            if k + 1 < self.steps:
                d = f(x, tau)
        gap = (s - t).to(x.dtype)
        jump = (x - xt) / broadcast(torch.where(gap == 0, torch.ones_like(gap), gap), x)
        return torch.where((gap == 0).reshape(-1, *[1] * (x.ndim - 1)), u, jump)


@dataclass
class FlowMapDistillation:
    """Flow-map distillation loss: || U(x_t, t, s) - sg(target) ||^2 with ``target`` :class:`EulerianTarget`
    (MeanFlow identity with the teacher's u; default) or :class:`LagrangianTarget` (teacher ODE solves).

    x_t = path.perturb(x0, eps, t) with t, s drawn from ``density`` (two draws sorted so s <= t); a fraction
    ``1 - p_jump`` of the pairs has s = t (plain velocity matching). ``teacher`` is a trained Model on the same path
    (``None``: the conditional velocity, i.e. MeanFlow from data; Eulerian only). ``draw``/``__call__`` follow
    DiffusionLoss; ``t`` is ``(B, 2)`` holding (t, s). Per-sample losses ``(B,)``, weighted by sg(1/(err + c)^p)
    (MeanFlow's adaptive weight; p = 0 is the plain squared error).
    """

    teacher: ModelBase | None = None
    density: UniformTime | LogitNormal = field(default_factory=UniformTime)
    p_jump: float = 0.5
    target: EulerianTarget | LagrangianTarget = field(default_factory=EulerianTarget)
    adaptive_p: float = 1.0
    adaptive_c: float = 1e-3

    def __post_init__(self):
        if not 0 <= self.p_jump <= 1:
            raise ValueError(f"p_jump must be in [0, 1]; got {self.p_jump}")
        if self.adaptive_p < 0 or not self.adaptive_c > 0:
            raise ValueError(f"need adaptive_p >= 0 and adaptive_c > 0; got {self.adaptive_p}, {self.adaptive_c}")
        if self.teacher is not None:
            self.teacher.requires_grad_(False)

    def draw(self, x0: Tensor, path: Path, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        n = x0.shape[0]
        a, b = self.density.sample(n, path, generator, x0.device), self.density.sample(n, path, generator, x0.device)
        t, s = torch.maximum(a, b), torch.minimum(a, b)
        same = torch.rand(n, generator=generator, dtype=torch.float64).to(x0.device) >= self.p_jump
        s = torch.where(same, t, s)
        noise = path.noise_sample(tuple(x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
        return torch.stack([t, s], 1), noise

    def velocity(self, path: Path, x0: Tensor, noise: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """The velocity at (x_t, t): the teacher's u, or alpha' x0 + sigma' eps without a teacher."""
        if self.teacher is None:
            return broadcast(path.d_alpha(t), x0) * x0 + broadcast(path.d_sigma(t), x0) * noise
        with torch.no_grad():
            return self.teacher.predict(xt, t, "velocity").to(xt.dtype)

    def __call__(self, model: FlowMapModel, x0: Tensor, ts: Tensor, noise: Tensor, cond: dict | None = None):
        path = model.path
        t, s = ts[:, 0], ts[:, 1]
        xt = path.perturb(x0, noise, t)
        u = self.velocity(path, x0, noise, xt, t)
        tgt = self.target(self, model, xt, t, s, u)
        pred = model.average_velocity(xt, t.to(xt.dtype), s.to(xt.dtype))
        err = (pred - tgt).pow(2).flatten(1).mean(1)
        # MeanFlow's adaptive weight 1/(err + c)^p (stop-gradient): a robust loss that tames the bootstrapped target
        return err / (err.detach() + self.adaptive_c) ** self.adaptive_p


register_solver(
    Solver("flowmap", sample_flowmap, 1, 1, default_grid="uniform", summary="jumps of a learned flow map (1-4 steps)")
)
