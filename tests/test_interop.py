"""Interop: diffusers models and schedulers, k-diffusion denoisers, on the same tiny random network."""

import pytest
import torch
from bench.peers import load_diffusers

from diffusio.core.paths import EDM, DiscreteDDPM, LinearVP, RectifiedFlow
from diffusio.core.timesteps import get_timesteps
from diffusio.models import ExactModel
from diffusio.models.adapters import (
    alphas_cumprod_from_config,
    from_diffusers,
    reschedule,
    to_diffusers,
    to_k_diffusion,
)
from diffusio.models.base import Model
from diffusio.models.wrappers import Rescheduled
from diffusio.samplers import sample

diffusers = load_diffusers()
if diffusers is None:
    pytest.skip("diffusers is not installed (the bench extra)", allow_module_level=True)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    return net.eval()


def _grid(path, timesteps, last):
    return torch.cat([(torch.as_tensor(timesteps, dtype=torch.float64) + 1) / path.num_steps, torch.tensor([last])])


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_ddim_matches_diffusers(unet, prediction):
    sched = diffusers.DDIMScheduler(
        prediction_type=prediction, clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing"
    )
    sched.set_timesteps(10)
    model = from_diffusers(unet, sched)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            y = sched.step(unet(y, t).sample, t, y).prev_sample
        ts = _grid(model.path, sched.timesteps, model.path.t_min)
        out = sample(model, x, solver="ddim", grid=ts).x
    assert out.dtype == torch.float32
    assert torch.allclose(out, y, atol=2e-5, rtol=1e-5), float((out - y).abs().max())


@pytest.mark.parametrize("order", [2, 3])
def test_dpmpp_multistep_matches_diffusers(unet, order):
    sched = diffusers.DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=order, final_sigmas_type="sigma_min", lower_order_final=True
    )
    sched.set_timesteps(10)
    model = from_diffusers(unet, sched)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            y = sched.step(unet(y, t).sample, t, y).prev_sample
        ts = _grid(model.path, sched.timesteps, model.path.t_min)
        # diffusers lowers the final orders below 15 steps (diffusio's 3M default: below 8)
        solver, opts = ("dpmpp_2m", {}) if order == 2 else ("dpmpp_3m_official", {"lower_order_final": 15})
        out = sample(model, x, solver=solver, grid=ts, **opts).x
    assert torch.allclose(out, y, atol=2e-5, rtol=1e-5), float((out - y).abs().max())


@pytest.mark.parametrize("steps", [10, 16])
def test_unipc_matches_diffusers(unet, steps):
    """diffusers' UniPC lowers the final orders at every step count: diffusio's lower_order_final="always"."""
    sched = diffusers.UniPCMultistepScheduler(solver_order=2, final_sigmas_type="sigma_min", lower_order_final=True)
    sched.set_timesteps(steps)
    model = from_diffusers(unet, sched)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            y = sched.step(unet(y, t).sample, t, y).prev_sample
        ts = _grid(model.path, sched.timesteps, model.path.t_min)
        out = sample(model, x, solver="unipc", grid=ts, lower_order_final="always").x
    assert torch.allclose(out, y, atol=2e-5, rtol=1e-5), float((out - y).abs().max())


def test_config_tables_match_diffusers():
    for kind in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        sched = diffusers.DDPMScheduler(beta_schedule=kind)
        ours = alphas_cumprod_from_config(sched.config)
        assert torch.allclose(ours.float(), sched.alphas_cumprod, atol=1e-6), kind
    with pytest.raises(ValueError, match="unsupported prediction_type"):
        from_diffusers(lambda x, t: x, {"prediction_type": "flow"})


def test_reverse_adapters(gmm2d):
    path = DiscreteDDPM()
    model = ExactModel(gmm2d, path)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    t = torch.full((5,), (499 + 1) / 1000, dtype=torch.float64)
    # k-diffusion: D(x/alpha, sigma/alpha) is the x0 prediction at (x, t)
    a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
    denoiser = to_k_diffusion(model)
    assert torch.allclose(denoiser(x / a, (s / a)[:, 0]), model(x, t), atol=1e-10)
    # and back: Model.from_k_diffusion(to_k_diffusion(m)) is m on any path
    back = Model.from_k_diffusion(to_k_diffusion(ExactModel(gmm2d, LinearVP())), LinearVP())
    tl = torch.full((5,), 0.3, dtype=torch.float64)
    assert torch.allclose(back(x, tl), ExactModel(gmm2d, LinearVP())(x, tl), atol=1e-10)
    # diffusers style: integer label 499 is t = 0.5
    eps = to_diffusers(model, "epsilon")(x, 499)
    assert torch.allclose(eps, model.eps(x, t), atol=1e-10)
    with pytest.raises(ValueError, match="DiscreteDDPM"):
        to_diffusers(ExactModel(gmm2d, LinearVP()))


@pytest.fixture(scope="module")
def kd():
    """k-diffusion's sampling module (the bench extra), or a skip."""
    from bench.peers import load_k_diffusion_sampling

    module = load_k_diffusion_sampling()
    if module is None:
        pytest.skip("k-diffusion is not installed")
    return module


def test_k_diffusion_dpmpp_2m_matches(gmm2d, kd):
    """k-diffusion's DPM-Solver++(2M) on the same denoiser and sigmas equals ours (if k-diffusion is importable)."""
    path = LinearVP()
    model = ExactModel(gmm2d, path)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    ts = sample(model, x, solver="dpmpp_2m", steps=20).ts
    sig = path.noise_level(ts)
    a0 = float(path.alpha(ts[0]))
    out_kd = kd.sample_dpmpp_2m(to_k_diffusion(model), x / a0, sig, disable=True) * float(path.alpha(ts[-1]))
    out = sample(model, x, solver="dpmpp_2m", steps=20, lower_order_final=False).x
    assert torch.allclose(out, out_kd, atol=1e-10)


def test_k_diffusion_dpmpp_3m_matches(gmm2d, kd):
    """k-diffusion's 3M (eta = 0) is dpmpp_3m_official with the Taylor warm-up step and no lowered final steps."""
    path = LinearVP()
    model = ExactModel(gmm2d, path)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    ts = get_timesteps(path, 7, "logsnr")
    sig, a0, a1 = path.noise_level(ts), float(path.alpha(ts[0])), float(path.alpha(ts[-1]))
    out_kd = kd.sample_dpmpp_3m_sde(to_k_diffusion(model), x / a0, sig, eta=0.0, disable=True) * a1
    opts = {"lower_order_final": False, "second_order": "taylor"}
    out = sample(model, x, solver="dpmpp_3m_official", grid=ts, **opts).x
    assert torch.allclose(out, out_kd, atol=1e-10)


def test_reschedule_keeps_the_ode(gmm2d):
    """An EDM model re-scheduled onto a DDPM table predicts the same x0 at the same noise level."""
    edm, vp = EDM(), DiscreteDDPM()
    model = reschedule(ExactModel(gmm2d, edm), vp)
    assert model.path is vp
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    t = torch.full((5,), 0.4, dtype=torch.float64)
    a, s = vp.alpha(t)[:, None], vp.noise_level(t)
    assert torch.allclose(model(x, t), ExactModel(gmm2d, edm)(x / a, s), atol=1e-10)


def test_reschedule_clamps_levels_beyond_the_model_path_like_k_diffusion(gmm2d):
    """interop.reschedule is Rescheduled(clamp=True): equal to the k-diffusion round trip, including levels outside
    the model path (a VP model asked at flow-path noise levels above its own top level is clamped, not an error)."""
    vp, flow = LinearVP(), RectifiedFlow()
    inner = ExactModel(gmm2d, vp)
    via_kd = Model.from_k_diffusion(to_k_diffusion(inner), flow)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8)) * 3
    t = torch.tensor([1e-3, 0.2, 0.5, 0.9, 0.995, 0.999], dtype=torch.float64)
    assert float(flow.noise_level(t[-2:]).min()) > float(vp.noise_level(torch.tensor(vp.t_hi, dtype=torch.float64)))
    for kind in ("x0", "eps", "velocity"):
        assert torch.allclose(reschedule(inner, flow).predict(x, t, kind), via_kd.predict(x, t, kind), atol=1e-10)
    with pytest.raises(ValueError, match="outside what"):
        Rescheduled(inner, flow).predict(x, t)


def test_gaussian_mixture_on_discrete_path_is_a_model(gmm2d):
    out = sample(ExactModel(gmm2d, DiscreteDDPM()), shape=(4, 2), solver="dpmpp_2m", steps=10)
    assert torch.isfinite(out.x).all()
