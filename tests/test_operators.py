"""Measurement operators: exact adjoints, pseudo-inverses, closed-form solves, agreement with deepinv, bad input."""

import warnings

import pytest
import torch

from diffusio.data.phantoms import phantom_volume, random_phantoms, shepp_logan
from diffusio.inverse import (
    MRI,
    GaussianBlur,
    Inpainting,
    LinearOperator,
    MatrixOperator,
    Radon,
    SuperResolution,
    box_mask,
    cartesian_mask,
    diff_z,
    diff_z_adjoint,
    limited_angle_ct,
    random_mask,
    sparse_view_ct,
)
from diffusio.metrics import psnr


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _operators():
    g = _gen()
    return {
        "matrix": MatrixOperator(torch.randn(3, 5, generator=g, dtype=torch.float64)),
        "inpaint": Inpainting(random_mask((8, 8), 0.5, generator=g), (2, 8, 8)),
        "inpaint_box": Inpainting(box_mask((8, 8), (2, 2, 4, 3))),
        "sr": SuperResolution(2, (1, 8, 8)),
        "blur": GaussianBlur(1.2, (1, 8, 10)),
        "mri": MRI(cartesian_mask(16, 4, generator=g), (1, 16, 16)),
        "ct_sparse": sparse_view_ct(16, 8),
        "ct_limited": limited_angle_ct(16, 90, 30),
    }


OPS = _operators()


@pytest.mark.parametrize("name", list(OPS))
def test_adjoint(name):
    op = OPS[name]
    g = _gen(1)
    x = torch.randn(3, *op.in_shape, generator=g, dtype=torch.float64)
    y = torch.randn(3, *op.out_shape, generator=g, dtype=torch.float64)
    lhs, rhs = (op(x) * y).sum(), (x * op.adjoint(y)).sum()
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs) + 1e-12


def test_diff_z_adjoint():
    g = _gen(2)
    for periodic in (True, False):
        x = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
        u = torch.randn(*diff_z(x, periodic).shape, generator=g, dtype=torch.float64)
        assert torch.allclose((diff_z(x, periodic) * u).sum(), (x * diff_z_adjoint(u, periodic)).sum())


@pytest.mark.parametrize("name", ["matrix", "inpaint", "sr", "blur", "ct_sparse"])
def test_pinv_is_generalised_inverse(name):
    """A A^+ A = A (blur: truncated inverse filter, exact up to the dropped frequencies |h| < eps)."""
    op = OPS[name]
    x = torch.randn(2, *op.in_shape, generator=_gen(3), dtype=torch.float64)
    tol = {"blur": 2 * op.eps if name == "blur" else 0, "ct_sparse": 1e-4}.get(name, 1e-10)
    assert float((op(op.pinv(op(x))) - op(x)).norm() / op(x).norm()) <= tol + 1e-10


@pytest.mark.parametrize("name", ["matrix", "inpaint", "sr", "blur"])
def test_closed_form_solve_matches_cg(name):
    """(r2 A A^T + s2 I)^{-1} b in closed form equals the conjugate-gradient default."""
    op = OPS[name]
    b = op(torch.randn(2, *op.in_shape, generator=_gen(4), dtype=torch.float64))  # in the range of A
    r2 = torch.tensor([0.3, 2.0], dtype=torch.float64)
    fast, slow = op.solve_aat(b, r2, 0.05), LinearOperator.solve_aat(op, b, r2, 0.05)
    assert torch.allclose(fast, slow, atol=1e-7)


def test_mri_full_mask_is_unitary():
    op = MRI(torch.ones(8, 8))
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(op.pinv(op(x)), x, atol=1e-12)
    assert torch.allclose(op(x).square().sum(), x.square().sum())


def test_cartesian_mask_acceleration():
    m = cartesian_mask(32, 4, 0.08, generator=_gen())
    assert m[:, 0].all() and int(m[0].sum()) == 8  # DC line kept, 32/4 lines
    assert (m == m[:1]).all()  # whole phase-encode columns


def test_fbp_reconstructs_shepp_logan():
    x = (shepp_logan(64).double() + 1) / 2  # attenuation: zero outside the object
    op = sparse_view_ct(64, 180)
    assert float(psnr(op.fbp(op(x)).clamp(0, 1), x, data_range=1.0)) > 25
    few = sparse_view_ct(64, 8)
    assert float(psnr(few.fbp(few(x)).clamp(0, 1), x, data_range=1.0)) < 20  # sparse views: streaks


def test_measure_noise_level():
    op = Inpainting(torch.ones(16, 16), noise_std=0.1)
    x = torch.zeros(64, 1, 16, 16)
    y = op.measure(x, generator=_gen())
    assert abs(float(y.std()) - 0.1) < 0.005
    assert torch.equal(op.measure(x, generator=_gen()), y)  # randomness only from the generator


def test_phantoms_shapes_and_range():
    x = random_phantoms(4, 16, generator=_gen())
    v = phantom_volume(16, 5, generator=_gen())
    assert x.shape == (4, 1, 16, 16) and v.shape == (5, 1, 16, 16)
    assert x.min() >= -1 and x.max() <= 1 and (x > -1).any()
    assert (v[1:] - v[:-1]).abs().mean() < (v - v.flip(0)).abs().mean() + 1  # defined, finite
    assert torch.equal(random_phantoms(2, 16, generator=_gen(5)), random_phantoms(2, 16, generator=_gen(5)))


# --- agreement with deepinv (optional peer) --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dinv():
    from bench.peers import import_deepinv

    mod = import_deepinv()
    if mod is None:
        pytest.skip("deepinv is not installed (pip install -e .[bench])")
    return mod


def test_inpainting_matches_deepinv(dinv):
    m = random_mask((16, 16), 0.4, generator=_gen())
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    ref = dinv.physics.Inpainting(img_size=(1, 16, 16), mask=m)
    assert torch.allclose(ref.A(x), Inpainting(m, (1, 16, 16))(x))


def test_blur_matches_deepinv(dinv):
    op = GaussianBlur(1.0, (1, 16, 16))
    ref = dinv.physics.BlurFFT(img_size=(1, 16, 16), filter=torch.fft.fftshift(op.kernel())[None, None])
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    assert torch.allclose(ref.A(x).double(), op(x), atol=1e-6)
    assert torch.allclose(ref.A_adjoint(x).double(), op.adjoint(x), atol=1e-6)


def test_mri_matches_deepinv(dinv):
    """deepinv uses the centred FFT and a centred mask: y_deepinv = fftshift(A(ifftshift(x)))."""
    mask = cartesian_mask(16, 4, generator=_gen())
    shift, ishift = (lambda z: torch.fft.fftshift(z, dim=(-2, -1))), (lambda z: torch.fft.ifftshift(z, dim=(-2, -1)))
    ref = dinv.physics.MRI(mask=shift(mask), img_size=(2, 16, 16))
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    ours = MRI(mask, (1, 16, 16))(ishift(x))[:, 0].permute(0, 3, 1, 2)  # (B, 2, H, W): real, imaginary
    assert torch.allclose(ref.A(torch.cat([x, torch.zeros_like(x)], 1)), shift(ours), atol=1e-10)


def test_radon_matches_deepinv(dinv):
    """deepinv's Tomography (rotate-and-sum, circle=True) is our Radon with angles negated, sinogram transposed."""
    op = sparse_view_ct(32, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = dinv.physics.Tomography(angles=-op.angles.float(), img_width=32, circle=True, normalize=False)
    x = (shepp_logan(32) + 1) / 2
    ours = op(x.double())
    assert float((ref.A(x).double().transpose(-1, -2) - ours).norm() / ours.norm()) < 1e-5


# --- bad input -------------------------------------------------------------------------------------------------------
def test_measurement_shape_mismatch():
    op = SuperResolution(2, (1, 8, 8))
    with pytest.raises(ValueError, match=r"measurement y must have shape \(batch, 1, 4, 4\)"):
        op.adjoint(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 1, 8, 8\)"):
        op(torch.zeros(2, 8, 8))


def test_mask_of_wrong_size():
    with pytest.raises(ValueError, match="mask of shape .* does not fit images of shape"):
        Inpainting(torch.ones(8, 8), shape=(1, 16, 16))
    with pytest.raises(ValueError, match="mask must hold only 0/1"):
        Inpainting(torch.full((8, 8), 0.5))
    with pytest.raises(ValueError, match="does not match image size"):
        MRI(torch.ones(8, 8), (1, 16, 16))


def test_negative_noise_level():
    with pytest.raises(ValueError, match="noise_std must be a finite number >= 0"):
        GaussianBlur(1.0, (1, 8, 8), noise_std=-0.1)
    with pytest.raises(ValueError, match="noise_std must be a finite number >= 0"):
        Radon(torch.tensor([0.0, 45.0]), (1, 8, 8), noise_std=-1)


def test_bad_operator_parameters():
    with pytest.raises(ValueError, match="factor must be a positive integer dividing"):
        SuperResolution(3, (1, 8, 8))
    with pytest.raises(ValueError, match="sigma must be > 0"):
        GaussianBlur(0.0, (1, 8, 8))
    with pytest.raises(ValueError, match="fraction must be in"):
        random_mask((8, 8), 1.5)
    with pytest.raises(ValueError, match="square images"):
        Radon(torch.tensor([0.0]), (1, 8, 10))
