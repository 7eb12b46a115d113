import os

import pytest
import torch

from diffusio.core.paths import EDM, VE, CosineVP, DiscreteDDPM, LinearVP, RectifiedFlow, Trigonometric
from diffusio.data import GaussianMixture

os.environ.setdefault("DIFFUSIO_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "test"))
torch.set_num_threads(1)

ALL_PATHS = [LinearVP(), CosineVP(), DiscreteDDPM(), VE(), EDM(), RectifiedFlow(), Trigonometric()]
SMOOTH_PATHS = [p for p in ALL_PATHS if not isinstance(p, DiscreteDDPM)]


def path_id(p):
    return p.name


@pytest.fixture(params=ALL_PATHS, ids=path_id)
def path(request):
    return request.param


@pytest.fixture
def gmm2d():
    """A smooth 2-D three-component mixture (components overlap, so the ODE flow is smooth)."""
    return GaussianMixture(
        torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]]), torch.tensor([0.5, 0.6, 0.4]), [0.3, 0.3, 0.4]
    )
