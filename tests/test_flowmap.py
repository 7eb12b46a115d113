"""Flow maps: the MeanFlow identity in the distillation target, jumps, the flowmap solver, and a tiny distillation
from an exact Gaussian teacher sampled in one step (MeanFlow, Geng et al. 2025, Eq. 6-8)."""

import math

import pytest
import torch

from diffusio.core.paths import RectifiedFlow
from diffusio.data import GaussianMixture
from diffusio.data.sources import FunctionSource
from diffusio.families.flowmap import FlowMapDistillation, FlowMapModel, LagrangianTarget
from diffusio.models import ExactModel
from diffusio.nets import FlowMapMLP
from diffusio.samplers import sample
from diffusio.training import TrainConfig, Trainer
from diffusio.training.losses import UniformTime

F64 = torch.float64
MU, S = 0.7, 0.4
PATH = RectifiedFlow()


def _psi(x, t, s, mu=MU, sd=S):
    """Exact PF-ODE flow map of N(mu, sd^2) data on the linear path: alpha_s mu + (m_s/m_t)(x - alpha_t mu)."""
    m = lambda t: torch.sqrt((1 - t) ** 2 * sd**2 + t**2)  # noqa: E731
    t, s = t[:, None], s[:, None]
    return (1 - s) * mu + m(s) / m(t) * (x - (1 - t) * mu)


class AnalyticAverageVelocity(torch.nn.Module):
    """U(x, t, s) = (Psi_{t->s}(x) - x)/(s - t) of Gaussian data with mean ``mu`` (exact for mu = MU)."""

    def __init__(self, mu=MU):
        super().__init__()
        self.mu = mu

    def forward(self, x, t, s):
        return (_psi(x, t, s, self.mu) - x) / (s - t)[:, None]


def _points(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g, dtype=F64)
    t = torch.rand(n, generator=g, dtype=F64) * 0.9 + 0.05
    s = t * torch.rand(n, generator=g, dtype=F64) * 0.9
    return x, t, s


def test_meanflow_identity_holds_for_the_exact_flow_map():
    """u + (s - t) dU/dt (JVP with tangent (u, 1, 0)) reproduces the exact average velocity (brief test 7)."""
    teacher = ExactModel(GaussianMixture(torch.tensor([[MU]], dtype=F64), S), PATH)
    loss = FlowMapDistillation(teacher)
    x, t, s = _points()
    u = teacher.predict(x, t, "velocity")
    exact = FlowMapModel(AnalyticAverageVelocity(), PATH)
    assert torch.allclose(loss.target(loss, exact, x, t, s, u), exact.average_velocity(x, t, s), atol=1e-10)
    wrong = FlowMapModel(AnalyticAverageVelocity(mu=MU + 0.3), PATH)  # a wrong map violates the identity
    assert (loss.target(loss, wrong, x, t, s, u) - wrong.average_velocity(x, t, s)).abs().max() > 1e-2


def test_jumps_and_the_flowmap_solver():
    exact = FlowMapModel(AnalyticAverageVelocity(), PATH)
    x, t, s = _points()
    assert torch.allclose(exact.jump(x, t, s), _psi(x, t, s), atol=1e-12)
    z = torch.randn(256, 1, generator=torch.Generator().manual_seed(1), dtype=F64)
    ts = torch.tensor([PATH.t_max, 0.5, PATH.t_min], dtype=F64)
    res = sample(exact, z, solver="flowmap", steps=2, grid=ts)
    want = _psi(z, torch.full((256,), PATH.t_max, dtype=F64), torch.full((256,), PATH.t_min, dtype=F64))
    assert res.nfe == 2 and torch.allclose(res.x, want, atol=1e-10)
    teacher = ExactModel(GaussianMixture(torch.tensor([[MU]], dtype=F64), S), PATH)
    with pytest.raises(ValueError, match="flowmap solver needs a FlowMapModel"):
        sample(teacher, z, solver="flowmap", steps=2)


def test_diagonal_is_a_flow_matching_model():
    net = FlowMapMLP(2, hidden=16, depth=1, time_dim=8).double()
    with torch.no_grad():
        net.out[-1].bias.fill_(0.3)
    model = FlowMapModel(net, PATH)
    x, t = torch.randn(8, 2, dtype=F64), torch.rand(8, dtype=F64)
    assert torch.allclose(model.jump(x, t, t), x)
    assert torch.allclose(model.predict(x, t, "velocity"), net(x, t, t))


def test_distilled_flow_map_samples_in_one_step():
    """Distil the exact 1-D Gaussian teacher (Lagrangian target, 600 steps); one jump from t = 1 gives mean and
    variance close to the data (brief test 8 for the flow-map objective). One Euler step of the teacher collapses
    to the mean (variance 0); the variance ratio reaches 0.77 here and 0.89 after 1500 steps (measured)."""
    torch.manual_seed(0)  # only the network initialisation; all training draws come from the Trainer's generator
    teacher = ExactModel(GaussianMixture(torch.tensor([[MU]], dtype=F64), S), PATH)
    model = FlowMapModel(FlowMapMLP(1, hidden=64, depth=2, time_dim=16), PATH)
    data = FunctionSource(lambda n, g: MU + S * torch.randn(n, 1, generator=g), (1,))
    loss = FlowMapDistillation(teacher, UniformTime(0.0, 1.0), p_jump=0.75, target=LagrangianTarget(2), adaptive_p=0.0)
    cfg = TrainConfig(steps=600, batch_size=256, lr=5e-3, warmup=20, ema_decay=0.95, progress=False)
    tr = Trainer(model, loss, data, cfg)
    tr.fit()
    model.net.load_state_dict(tr.ema.state_dict())
    z = torch.randn(20000, 1, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        x = sample(model, z, solver="flowmap", steps=1, grid=torch.tensor([1.0, 0.0], dtype=F64)).x
    assert abs(float(x.mean()) - MU) < 0.15 * S, float(x.mean())
    assert abs(float(x.var()) / S**2 - 1) < 0.3, float(x.var())
    noise_var = float(z.var())
    assert abs(float(x.var()) - noise_var) > 0.5  # it moved: the noise has variance 1, the data 0.16


def test_bad_options():
    with pytest.raises(ValueError, match="p_jump must be in"):
        FlowMapDistillation(p_jump=1.5)
    with pytest.raises(ValueError, match="adaptive_c > 0"):
        FlowMapDistillation(adaptive_c=0.0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        LagrangianTarget(0)
    with pytest.raises(ValueError, match="LagrangianTarget needs a teacher"):
        loss = FlowMapDistillation(target=LagrangianTarget(2))
        x, t, s = _points(8)
        loss.target(loss, FlowMapModel(AnalyticAverageVelocity(), PATH), x, t, s, x)
    with pytest.raises(TypeError, match="path must be"):
        FlowMapModel(FlowMapMLP(2), "flow")
    assert math.isfinite(float(FlowMapDistillation().adaptive_p))


class DiagonalAverageVelocity(AnalyticAverageVelocity):
    """The analytic U with its diagonal U(x, t, t) = u(x, t) = -mu + m'(t)/m(t) (x - (1 - t) mu) filled in."""

    def forward(self, x, t, s):
        m2 = (1 - t) ** 2 * S**2 + t**2
        u = -self.mu + ((t - 1) * S**2 + t)[:, None] / m2[:, None] * (x - (1 - t)[:, None] * self.mu)
        same = (s == t)[:, None]
        return torch.where(same, u, super().forward(x, t, torch.where(s == t, s - 1, s)))


def test_flowmap_solver_honours_guidance():
    """A guided flow-map model samples differently, and its jumps converge to the guided PF-ODE as they shorten."""
    from diffusio.guidance.wrappers import RewardGuidance

    flow = FlowMapModel(DiagonalAverageVelocity(), PATH)
    guided = RewardGuidance(flow, lambda x0: -((x0 - 2.0) ** 2).sum(1), scale=0.2)
    z = torch.randn(128, 1, generator=torch.Generator().manual_seed(3), dtype=F64)
    plain = sample(flow, z, solver="flowmap", steps=64, grid="uniform").x
    res = sample(guided, z, solver="flowmap", steps=64, grid="uniform")
    ode = sample(guided, z, solver="heun", steps=200, grid="uniform").x
    gap, err = (res.x - plain).abs().mean(), (res.x - ode).abs().mean()
    assert gap > 0.05 and err < gap / 20, (float(gap), float(err))
    assert res.nfe == 64 * 3  # the jump and the two velocities of the guidance correction


def test_flowmap_solver_on_a_rescheduled_flow_map_uses_the_right_time_axis():
    """Rescheduled(flow map, LinearVP()) jumps along the new path's PF-ODE (the exact teacher's, by Heun), not the
    old map evaluated at the new path's times."""
    from diffusio.core.paths import LinearVP
    from diffusio.models.wrappers import Rescheduled

    flow = FlowMapModel(DiagonalAverageVelocity(), PATH)
    teacher = ExactModel(GaussianMixture(torch.tensor([[MU]], dtype=F64), S), PATH)
    new = LinearVP()
    z = torch.randn(256, 1, generator=torch.Generator().manual_seed(4), dtype=F64)
    ts = torch.tensor([0.9, 0.5, new.t_min], dtype=F64)
    res = sample(Rescheduled(flow, new), z, solver="flowmap", steps=2, grid=ts)
    ref = sample(Rescheduled(teacher, new), z, solver="heun", steps=400, grid="uniform", t_max=0.9).x
    assert res.nfe == 2 and torch.allclose(res.x, ref, atol=1e-4)  # Heun: 3e-5 at 400 steps, order 2
    wrong = flow.jump(flow.jump(z, ts[0], ts[1]), ts[1], ts[2])  # the old map on the new path's times
    assert (wrong - ref).abs().mean() > 0.02  # 400x the tolerance above
