"""Flow matching: exact linear-interpolant velocity, minibatch OT and reflow couplings, straightness, re-scheduling."""

import itertools
import math

import pytest
import torch

from diffusio.core.paths import EDM, VE, CosineVP, LinearVP, RectifiedFlow, Trigonometric
from diffusio.data import GaussianMixture
from diffusio.data.sources import FunctionSource
from diffusio.families.flow_matching import (
    MinibatchOT,
    ReflowCoupling,
    exact_assignment,
    reflow_pairs,
    sinkhorn_assignment,
    straightness,
    transport_cost,
)
from diffusio.families.interpolants import GaussianMixtureFields, Interpolant, ZeroGamma
from diffusio.metrics import sliced_wasserstein
from diffusio.models import ExactModel
from diffusio.models.base import Model
from diffusio.models.wrappers import Rescheduled
from diffusio.nets import MLP
from diffusio.samplers import sample
from diffusio.training import TrainConfig, Trainer
from diffusio.training.losses import DiffusionLoss, UniformTime, target_value

F64 = torch.float64


def _sw(a, b):
    return sliced_wasserstein(a, b, 256, generator=torch.Generator().manual_seed(0))


def test_linear_velocity_closed_form_matches_interpolant_fields(gmm2d):
    """The exact PF-ODE velocity of the linear path equals E[eps - x0 | x_t], computed independently as the
    one-sided linear interpolant's velocity (flipped time: t_lib = 1 - t, dt_lib = -dt)."""
    path = RectifiedFlow()
    fields = GaussianMixtureFields(Interpolant(gamma=ZeroGamma()), GaussianMixture(torch.zeros(1, 2), 1.0), gmm2d)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 1.5
    t = torch.linspace(0.02, 0.98, 64, dtype=F64)
    u_lib = ExactModel(gmm2d, path).predict(x, t, "velocity")
    assert torch.allclose(u_lib, -fields.velocity(x, 1 - t), atol=1e-10)


def test_exact_linear_velocity_transports_noise_to_data(gmm2d):
    """Heun on the exact velocity from N(0, I) at t = 1 reaches the mixture (sliced W2 at the sampling floor)."""
    model = ExactModel(gmm2d, RectifiedFlow())
    z = torch.randn(8000, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    x = sample(model, z, solver="heun", steps=60, grid="uniform", t_max=1.0).x
    ref = gmm2d.sample(8000, generator=torch.Generator().manual_seed(2), dtype=F64)
    ref2 = gmm2d.sample(8000, generator=torch.Generator().manual_seed(3), dtype=F64)
    floor = _sw(ref, ref2)
    assert _sw(x, ref) < 2 * floor + 0.01
    assert _sw(z, ref) > 10 * floor  # the test has power: the noise itself is far


def test_velocity_loss_target_and_minimiser(gmm2d):
    """DiffusionLoss('velocity') on the linear path regresses eps - x0; the exact velocity is its minimiser."""
    path = RectifiedFlow()
    x0 = gmm2d.sample(20000, generator=torch.Generator().manual_seed(4), dtype=F64)
    loss = DiffusionLoss("velocity", UniformTime(0.05, 0.95))
    t, noise = loss.draw(x0, path, torch.Generator().manual_seed(5))
    assert torch.allclose(target_value("velocity", x0, noise, t, path), noise - x0)

    class Scaled(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c, self.path = c, path

        def predict(self, x, t, kind="x0", **cond):
            return ExactModel(gmm2d, path).predict(x, t, "velocity") * self.c

    values = {c: float(loss(Scaled(c), x0, t, noise).mean()) for c in (0.9, 1.0, 1.1)}
    assert values[1.0] < values[0.9] and values[1.0] < values[1.1], values


def test_exact_assignment_is_optimal_and_matches_pot():
    g = torch.Generator().manual_seed(6)
    x0, z = torch.randn(7, 3, generator=g, dtype=F64), torch.randn(7, 3, generator=g, dtype=F64)
    _, zp = MinibatchOT()(x0, z)
    best = min(transport_cost(x0, z[list(p)]) for p in itertools.permutations(range(7)))
    assert math.isclose(transport_cost(x0, zp), best, rel_tol=1e-12)
    ot = pytest.importorskip("ot")
    cost = torch.cdist(x0, z).pow(2).numpy()
    plan = torch.from_numpy(ot.emd([1 / 7] * 7, [1 / 7] * 7, cost))
    perm = exact_assignment(cost)
    assert torch.allclose(plan, torch.eye(7, dtype=F64)[perm] / 7)


def test_minibatch_ot_keeps_data_and_labels_and_shortens_pairs():
    g = torch.Generator().manual_seed(7)
    x0, z = 2 * torch.randn(256, 2, generator=g), torch.randn(256, 2, generator=g)
    xo, zo = MinibatchOT()(x0, z)
    assert xo is x0  # only the noise moves, so labels stay with their data
    assert sorted(zo[:, 0].tolist()) == sorted(z[:, 0].tolist())  # a permutation of the same draws
    assert transport_cost(xo, zo) < 0.5 * transport_cost(x0, z)
    _, zs = MinibatchOT(sinkhorn_assignment(0.05))(x0, z, torch.Generator().manual_seed(0))
    assert transport_cost(x0, zs) < 0.6 * transport_cost(x0, z)
    with pytest.raises(ValueError, match="reg must be > 0"):
        sinkhorn_assignment(0.0)
    with pytest.raises(ValueError, match="same shape"):
        MinibatchOT()(x0, z[:10])


def test_trainer_applies_the_coupling_to_the_global_batch():
    data = FunctionSource(lambda n, g: torch.randn(n, 2, generator=g) * 2.0, (2,))
    costs = {}
    for name, coupling in (("independent", None), ("ot", MinibatchOT())):
        model = Model(MLP(2, hidden=16, depth=1, time_dim=8), RectifiedFlow(), "velocity")
        loss = DiffusionLoss("velocity", coupling=coupling)
        tr = Trainer(model, loss, data, TrainConfig(steps=1, batch_size=128, progress=False))
        x0, _, noise, _ = tr._batch()
        costs[name] = transport_cost(x0, noise)
    assert costs["ot"] < 0.5 * costs["independent"], costs


def test_reflow_pairs_are_ode_couplings(gmm2d):
    """Pairs (x, z): z drawn at t = 1 (pure noise), x its ODE solution; the coupling draws pairs, not halves."""
    model = ExactModel(gmm2d, RectifiedFlow())
    x, z = reflow_pairs(model, 64, (2,), steps=40, generator=torch.Generator().manual_seed(8), dtype=F64)
    again = sample(model, z.clone(), solver="heun", steps=40, grid="uniform", t_max=1.0).x
    assert torch.allclose(x, again, atol=1e-12)
    coupling = ReflowCoupling(x, z)
    bx, bz = coupling(torch.zeros(16, 2, dtype=F64), torch.zeros(16, 2, dtype=F64), torch.Generator().manual_seed(9))
    idx = [int(torch.nonzero((x == row).all(1))[0]) for row in bx]
    assert torch.equal(bz, z[idx])
    with pytest.raises(ValueError, match="one shape"):
        ReflowCoupling(x, z[:3])


def test_straightness_is_zero_for_a_point_mass_and_positive_for_a_mixture(gmm2d):
    ts = torch.linspace(1.0, 1e-3, 41, dtype=F64)
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(10), dtype=F64)
    point = ExactModel(GaussianMixture(torch.tensor([[0.5, -0.2]]), 1e-6), RectifiedFlow())
    s_point, _ = straightness(point, z, ts)
    s_mix, _ = straightness(ExactModel(gmm2d, RectifiedFlow()), z, ts)
    assert s_point < 1e-8 and s_mix > 1e-2


RESCHEDULE = [LinearVP(), CosineVP(), RectifiedFlow(), Trigonometric(), EDM()]


@pytest.mark.parametrize("new", RESCHEDULE, ids=lambda p: p.name)
@pytest.mark.parametrize("old", [CosineVP(), RectifiedFlow(), EDM()], ids=lambda p: p.name)
def test_rescheduled_exact_model_equals_exact_model_on_the_new_path(gmm2d, old, new):
    """Exact GMM model on path A, rescheduled to path B == exact GMM model on B, for every head (float64)."""
    model = Rescheduled(ExactModel(gmm2d, old), new)
    t = torch.linspace(new.t_min, new.t_max, 16, dtype=F64)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(11), dtype=F64) * float(new.sigma(t).max())
    for kind in ("x0", "eps", "v", "velocity", "score"):
        want = ExactModel(gmm2d, new).predict(x, t, kind)
        assert torch.allclose(model.predict(x, t, kind), want, rtol=1e-10, atol=1e-10), kind


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "unipc"])
def test_flow_model_sampled_with_dpm_solver_on_a_vp_schedule_and_back(gmm2d, solver):
    """A velocity model on the linear path sampled by DDIM / DPM-Solver++ / UniPC on cosine VP equals the same solver
    on the exact VP model; and a VP model sampled by Euler on the linear path equals Euler on the exact flow model."""
    vp, flow = CosineVP(), RectifiedFlow()
    flow_model = Model(lambda x, t: ExactModel(gmm2d, flow).predict(x, t, "velocity"), flow, "velocity")
    x = vp.prior_sample((256, 2), generator=torch.Generator().manual_seed(12), dtype=F64)
    a = sample(Rescheduled(flow_model, vp), x, solver=solver, steps=10).x
    b = sample(ExactModel(gmm2d, vp), x, solver=solver, steps=10).x
    assert torch.allclose(a, b, atol=1e-9)
    back = Rescheduled(ExactModel(gmm2d, vp), flow)  # and a VP model with Euler on the linear path
    xf = flow.prior_sample((64, 2), generator=torch.Generator().manual_seed(13), dtype=F64)
    assert torch.allclose(
        sample(back, xf, solver="euler", steps=8).x,
        sample(ExactModel(gmm2d, flow), xf, solver="euler", steps=8).x,
        atol=1e-9,
    )


def test_reschedule_out_of_range_is_a_clear_error(gmm2d):
    model = Rescheduled(ExactModel(gmm2d, VE()), RectifiedFlow())
    with pytest.raises(ValueError, match="outside what 've' covers.*narrower interval"):
        model.predict(torch.zeros(2, 2, dtype=F64), torch.tensor([0.001, 0.999], dtype=F64))
    with pytest.raises(TypeError, match="path must be"):
        Rescheduled(ExactModel(gmm2d, VE()), "flow")
