"""Measurement operators y = A(x) + n with forward, adjoint and a Gaussian noise model (the
operators of DPS, Chung et al. 2023; DiffusionMBIR, Chung et al. 2023; the medical-imaging survey of Kazerouni et
al. 2023).

Every operator maps a batch ``x`` ``(B, *in_shape)`` to ``(B, *out_shape)``; ``noise_std`` is the standard
deviation of i.i.d. Gaussian measurement noise in the units of ``y`` (images live in [-1, 1]). Linear operators
give the exact adjoint (tested by <A x, y> = <x, A^T y>), a pseudo-inverse and a solver for
``(r2 A A^T + s2 I) v = b`` (PiGDM); the defaults use conjugate gradients and subclasses override them with closed
forms where the operator is diagonal in a known basis.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MRI",
    "GaussianBlur",
    "Inpainting",
    "LinearOperator",
    "MatrixOperator",
    "Operator",
    "Radon",
    "SuperResolution",
    "box_mask",
    "cartesian_mask",
    "conjugate_gradient",
    "limited_angle_ct",
    "random_mask",
    "sparse_view_ct",
]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product ``(B,)`` of two ``(B, ...)`` tensors."""
    return (a * b).flatten(1).sum(1)


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def conjugate_gradient(
    apply: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor | None = None, iters: int = 50, tol: float = 1e-10
) -> Tensor:
    """Solve ``apply(x) = b`` for a symmetric positive (semi-)definite linear map, one system per sample.

    ``b``: ``(B, ...)``; inner products reduce over all dimensions but the first. Stops early when every
    residual norm falls below ``tol`` times the norm of ``b``.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply(x)
    p, rr = r.clone(), _dot(r, r)
    stop = tol**2 * _dot(b, b).clamp(min=1e-300)
    for _ in range(iters):
        if bool((rr <= stop).all()):
            break
        ap = apply(p)
        step = rr / _dot(p, ap).clamp(min=1e-300)
        x = x + _bcast(step, x) * p
        r = r - _bcast(step, r) * ap
        rr_new = _dot(r, r)
        p = r + _bcast(rr_new / rr.clamp(min=1e-300), p) * p
        rr = rr_new
    return x


class Operator:
    """A measurement operator ``x (B, *in_shape) -> y (B, *out_shape)`` with Gaussian noise of std ``noise_std``.

    Subclasses implement ``_forward``; nonlinear operators stop here (DPS and RED-Diff need only a
    differentiable forward), linear ones derive from :class:`LinearOperator`.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    linear: bool = False

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], noise_std: float = 0.0):
        noise_std = float(noise_std)
        if not noise_std >= 0 or math.isinf(noise_std):
            raise ValueError(f"noise_std must be a finite number >= 0 (measurement noise std); got {noise_std}")
        self.in_shape, self.out_shape, self.noise_std = tuple(in_shape), tuple(out_shape), noise_std

    def _forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """A(x) ``(B, *out_shape)`` (noise-free) for ``x`` ``(B, *in_shape)``."""
        self.check_x(x)
        return self._forward(x)

    __call__ = forward

    def measure(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """A noisy measurement y = A(x) + noise_std * z, z ~ N(0, I) drawn from ``generator``."""
        y = self.forward(x)
        if self.noise_std == 0:
            return y
        z = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return y + self.noise_std * z

    def nll(self, x: Tensor, y: Tensor) -> Tensor:
        """-log p(y | x) up to a constant: ||y - A x||^2 / (2 noise_std^2), per sample ``(B,)``."""
        if self.noise_std == 0:
            raise ValueError("the likelihood needs noise_std > 0; build the operator with noise_std=... > 0")
        r = y - self.forward(x)
        return _dot(r, r) / (2 * self.noise_std**2)

    def check_x(self, x: Tensor, name: str = "x") -> None:
        _check_batch(x, self.in_shape, name, f"for {type(self).__name__}")

    def check_y(self, y: Tensor, name: str = "y") -> None:
        _check_batch(y, self.out_shape, f"measurement {name}", f"to match {type(self).__name__} (its out_shape)")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(in_shape={self.in_shape}, out_shape={self.out_shape}, noise_std={self.noise_std})"
        )


class LinearOperator(Operator):
    """A linear operator: ``adjoint`` (exact A^T), ``pinv`` (A^+), ``solve_aat`` for ``(r2 A A^T + s2 I)^{-1}``.

    The default adjoint is the vector-Jacobian product of ``_forward`` (exact for a linear map); the default
    pseudo-inverse and ``solve_aat`` use conjugate gradients.
    """

    linear = True
    cg_iters: int = 100

    def _adjoint(self, y: Tensor) -> Tensor:
        with torch.enable_grad():
            x = torch.zeros((y.shape[0], *self.in_shape), dtype=y.dtype, device=y.device, requires_grad=True)
            (g,) = torch.autograd.grad(self._forward(x), x, grad_outputs=y, create_graph=y.requires_grad)
        return g

    def adjoint(self, y: Tensor) -> Tensor:
        """A^T y ``(B, *in_shape)`` for ``y`` ``(B, *out_shape)``."""
        self.check_y(y)
        return self._adjoint(y)

    def normal(self, x: Tensor) -> Tensor:
        """A^T A x."""
        return self._adjoint(self._forward(x))

    def pinv(self, y: Tensor) -> Tensor:
        """Minimum-norm least-squares A^+ y (CG on the normal equations started at 0)."""
        self.check_y(y)
        return conjugate_gradient(self.normal, self._adjoint(y), iters=self.cg_iters)

    def solve_aat(self, b: Tensor, r2: Tensor | float, s2: float) -> Tensor:
        """(r2 A A^T + s2 I)^{-1} b for ``b`` ``(B, *out_shape)``; ``r2`` a float or per-sample ``(B,)``."""
        r2 = _bcast(torch.as_tensor(r2, dtype=b.dtype, device=b.device).expand(b.shape[0]), b)
        return conjugate_gradient(lambda v: r2 * self._forward(self._adjoint(v)) + s2 * v, b, iters=self.cg_iters)


class MatrixOperator(LinearOperator):
    """y = A x for vectors: ``A`` ``(m, d)``, ``x`` ``(B, d)`` -> ``(B, m)``. The test bed for exact posteriors.

    ``in_shape``: the shape of one x when it is not a vector (e.g. ``(1, 4, 4)``; A acts on the flattened x).
    """

    def __init__(self, A: Tensor, noise_std: float = 0.0, in_shape: tuple[int, ...] | None = None):
        A = torch.as_tensor(A)
        if A.ndim != 2:
            raise ValueError(f"A must be a matrix (m, d); got shape {tuple(A.shape)}")
        in_shape = (A.shape[1],) if in_shape is None else tuple(int(s) for s in in_shape)
        if math.prod(in_shape) != A.shape[1]:
            raise ValueError(f"in_shape {in_shape} must hold A's {A.shape[1]} columns")
        super().__init__(in_shape, (A.shape[0],), noise_std)
        self.A = A

    def _forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.A.to(x).T

    def _adjoint(self, y: Tensor) -> Tensor:
        return (y @ self.A.to(y)).reshape(y.shape[0], *self.in_shape)

    def pinv(self, y: Tensor) -> Tensor:
        self.check_y(y)
        return (y @ torch.linalg.pinv(self.A.double()).to(y).T).reshape(y.shape[0], *self.in_shape)

    def solve_aat(self, b: Tensor, r2, s2: float) -> Tensor:
        A = self.A.double().to(b.device)
        r2 = torch.as_tensor(r2, dtype=torch.float64, device=b.device)
        if r2.ndim == 0:  # one system for the whole batch
            M = r2 * (A @ A.T) + s2 * torch.eye(A.shape[0], dtype=torch.float64, device=b.device)
            return torch.linalg.solve(M, b.double().T).T.to(b.dtype)
        r2 = r2.expand(b.shape[0])
        M = r2[:, None, None] * (A @ A.T) + s2 * torch.eye(A.shape[0], dtype=torch.float64, device=b.device)
        return torch.linalg.solve(M, b.double()).to(b.dtype)


# --- image operators ------------------------------------------------------------------------------------------------
def _image_shape(shape, name: str = "shape") -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name} must be (C, H, W) or (H, W) with positive sizes; got {shape}")
    return shape


class Inpainting(LinearOperator):
    """Pixel masking y = m * x (A = diag(m), so A A^T = diag(m) and A^+ = A^T = A).

    ``mask``: ``(H, W)`` or ``(C, H, W)`` of 0/1 (True = observed); ``shape``: the image shape ``(C, H, W)``
    (default: the mask's). Unobserved entries of ``y`` are zero.
    """

    def __init__(self, mask: Tensor, shape: tuple[int, ...] | None = None, noise_std: float = 0.0):
        mask = torch.as_tensor(mask)
        if mask.ndim not in (2, 3):
            raise ValueError(f"mask must have shape (H, W) or (C, H, W); got {tuple(mask.shape)}")
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must hold only 0/1 (or False/True) values")
        shape = _image_shape(shape if shape is not None else mask.shape)
        m = mask if mask.ndim == 3 else mask[None]
        if m.shape[-2:] != shape[-2:] or m.shape[0] not in (1, shape[0]):
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not fit images of shape {shape}: pass a mask of shape "
                f"{shape[-2:]} or {shape}"
            )
        super().__init__(shape, shape, noise_std)
        self.mask = m.expand(shape).float()

    def _forward(self, x: Tensor) -> Tensor:
        return x * self.mask.to(x)

    _adjoint = _forward

    def pinv(self, y: Tensor) -> Tensor:
        self.check_y(y)
        return y * self.mask.to(y)

    def solve_aat(self, b: Tensor, r2, s2: float) -> Tensor:
        r2 = _bcast(torch.as_tensor(r2, dtype=b.dtype, device=b.device).expand(b.shape[0]), b)
        return b / (r2 * self.mask.to(b) + s2).clamp(min=1e-12) * (self.mask.to(b) if s2 == 0 else 1)


def random_mask(shape: tuple[int, ...], fraction: float, *, generator: torch.Generator | None = None) -> Tensor:
    """A 0/1 mask of ``shape`` ``(H, W)`` observing a random ``fraction`` of pixels (exactly round(fraction * H W))."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1] (share of observed pixels); got {fraction}")
    n = math.prod(shape)
    idx = torch.randperm(n, generator=generator)[: round(fraction * n)]
    m = torch.zeros(n)
    m[idx] = 1
    return m.reshape(shape)


def box_mask(shape: tuple[int, int], box: tuple[int, int, int, int]) -> Tensor:
    """A 0/1 mask of ``shape`` ``(H, W)`` hiding the box ``(top, left, height, width)``."""
    m = torch.ones(shape)
    top, left, h, w = box
    m[top : top + h, left : left + w] = 0
    return m


class SuperResolution(LinearOperator):
    """Block averaging by an integer ``factor`` (Kawar et al. 2022's SR): ``(C, H, W) -> (C, H/f, W/f)``.

    A A^T = I / f^2, so A^+ = f^2 A^T (nearest-neighbour upsampling).
    """

    def __init__(self, factor: int, shape: tuple[int, ...], noise_std: float = 0.0):
        shape = _image_shape(shape)
        if not isinstance(factor, int) or factor < 1 or shape[1] % factor or shape[2] % factor:
            raise ValueError(f"factor must be a positive integer dividing the image size {shape[1:]}; got {factor}")
        super().__init__(shape, (shape[0], shape[1] // factor, shape[2] // factor), noise_std)
        self.factor = factor

    def _forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.factor)

    def _adjoint(self, y: Tensor) -> Tensor:
        f = self.factor
        return y.repeat_interleave(f, -2).repeat_interleave(f, -1) / f**2

    def pinv(self, y: Tensor) -> Tensor:
        self.check_y(y)
        return self._adjoint(y) * self.factor**2

    def solve_aat(self, b: Tensor, r2, s2: float) -> Tensor:
        r2 = _bcast(torch.as_tensor(r2, dtype=b.dtype, device=b.device).expand(b.shape[0]), b)
        return b / (r2 / self.factor**2 + s2)


class GaussianBlur(LinearOperator):
    """Circular convolution with a Gaussian kernel of std ``sigma`` pixels (periodic boundary, so A is diagonal
    in the Fourier basis with a real, even transfer function: A = A^T)."""

    def __init__(self, sigma: float, shape: tuple[int, ...], noise_std: float = 0.0, eps: float = 1e-3):
        shape = _image_shape(shape)
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0 (kernel std in pixels); got {sigma}")
        super().__init__(shape, shape, noise_std)
        self.sigma, self.eps = float(sigma), eps
        self.transfer = self._transfer(shape[1:], self.sigma)

    @staticmethod
    def _transfer(size: tuple[int, int], sigma: float) -> Tensor:
        """Real transfer function ``(H, W)``: the FFT of the wrapped, normalised Gaussian kernel."""
        axes = []
        for n in size:
            d = torch.arange(n, dtype=torch.float64)
            d = torch.minimum(d, n - d)  # circular distance to pixel 0
            axes.append(torch.exp(-(d**2) / (2 * sigma**2)))
        k = axes[0][:, None] * axes[1][None, :]
        return torch.fft.fft2(k / k.sum()).real

    def kernel(self) -> Tensor:
        """The blur kernel ``(H, W)`` centred at pixel (0, 0) with circular wrap."""
        return torch.fft.ifft2(self.transfer).real

    def _apply(self, x: Tensor, h: Tensor) -> Tensor:
        return torch.fft.ifft2(torch.fft.fft2(x.double()) * h.to(x.device)).real.to(x.dtype)

    def _forward(self, x: Tensor) -> Tensor:
        return self._apply(x, self.transfer)

    _adjoint = _forward

    def pinv(self, y: Tensor) -> Tensor:
        """Truncated inverse filter: frequencies with |h| < eps are dropped."""
        self.check_y(y)
        h = self.transfer
        return self._apply(y, torch.where(h.abs() > self.eps, 1 / h, torch.zeros_like(h)))

    def solve_aat(self, b: Tensor, r2, s2: float) -> Tensor:
        r2 = torch.as_tensor(r2, dtype=torch.float64, device=b.device).expand(b.shape[0])
        spec = _bcast(r2, b) * self.transfer.to(b.device) ** 2 + s2
        return torch.fft.ifft2(torch.fft.fft2(b.double()) / spec.clamp(min=1e-12)).real.to(b.dtype)


class MRI(LinearOperator):
    """Single-coil Cartesian MRI: A x = M F x with the orthonormal 2-D FFT F and a k-space mask M.

    ``mask``: ``(H, W)`` 0/1 in unshifted FFT order (DC at (0, 0)); use :func:`cartesian_mask`. Real images
    ``(C, H, W)`` map to k-space ``(C, H, W, 2)`` (real, imaginary); A^T k = Re(F^H M k). A A^T is diagonal in
    k-space only for masks symmetric under k -> -k, so ``solve_aat`` keeps the CG default.
    """

    def __init__(self, mask: Tensor, shape: tuple[int, ...] | None = None, noise_std: float = 0.0):
        mask = torch.as_tensor(mask).float()
        if mask.ndim != 2:
            raise ValueError(f"mask must be a 2-D k-space mask (H, W); got shape {tuple(mask.shape)}")
        shape = _image_shape(shape if shape is not None else mask.shape)
        if tuple(mask.shape) != shape[1:]:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not match image size {shape[1:]}")
        super().__init__(shape, (*shape, 2), noise_std)
        self.mask = mask

    def _forward(self, x: Tensor) -> Tensor:
        k = torch.fft.fft2(x, norm="ortho") * self.mask.to(x.device)
        return torch.view_as_real(k).to(x.dtype)

    def _adjoint(self, y: Tensor) -> Tensor:
        k = torch.view_as_complex(y.contiguous()) * self.mask.to(y.device)
        return torch.fft.ifft2(k, norm="ortho").real.to(y.dtype)

    def pinv(self, y: Tensor) -> Tensor:
        """Zero-filled inverse FFT (the usual MRI baseline; least squares for conjugate-symmetric masks)."""
        self.check_y(y)
        return self._adjoint(y)


def cartesian_mask(
    size: int, acceleration: float = 4.0, center_fraction: float = 0.08, *, generator: torch.Generator | None = None
) -> Tensor:
    """Random Cartesian line mask ``(size, size)``: a fully sampled centre band plus random phase-encode columns,
    about ``size / acceleration`` columns in all, in unshifted FFT order."""
    if not acceleration >= 1:
        raise ValueError(f"acceleration must be >= 1; got {acceleration}")
    if not 0 <= center_fraction <= 1:
        raise ValueError(f"center_fraction must be in [0, 1]; got {center_fraction}")
    n_total = max(1, round(size / acceleration))
    n_center = min(n_total, max(1, round(size * center_fraction)))
    freqs = torch.fft.fftfreq(size) * size  # signed column frequency in FFT order
    center = freqs.abs().argsort()[:n_center]
    rest = torch.tensor([i for i in range(size) if i not in set(center.tolist())])
    extra = rest[torch.randperm(len(rest), generator=generator)[: n_total - n_center]]
    cols = torch.zeros(size)
    cols[center] = 1
    cols[extra] = 1
    return cols[None, :].expand(size, size).clone()


class Radon(LinearOperator):
    """Parallel-beam Radon transform by rotate-and-sum in torch (bilinear sampling, zero outside the image).

    ``angles``: projection angles in degrees ``(A,)``; ``shape``: ``(C, H, W)`` with H = W = n. For each angle
    theta the n detector bins u and n ray samples s (pixel spacing, inscribed circle) are summed:
    (R x)(theta, u) = sum_s x(u cos theta - s sin theta, u sin theta + s cos theta). Output ``(C, A, n)``.
    A^T (unfiltered back-projection) is the exact adjoint of the sampling (its vector-Jacobian product).
    """

    def __init__(self, angles: Tensor, shape: tuple[int, ...], noise_std: float = 0.0):
        shape = _image_shape(shape)
        if shape[1] != shape[2]:
            raise ValueError(f"Radon needs square images; got shape {shape}")
        angles = torch.as_tensor(angles, dtype=torch.float64).flatten()
        if angles.numel() < 1:
            raise ValueError("angles must hold at least one projection angle (degrees)")
        n = shape[1]
        super().__init__(shape, (shape[0], angles.numel(), n), noise_std)
        self.angles, self.grid = angles, self._grid(angles, n)

    @staticmethod
    def _grid(angles: Tensor, n: int) -> Tensor:
        """Sampling points ``(1, A * n, n, 2)`` in grid_sample coordinates (x = column, y = row)."""
        c = (2 * torch.arange(n, dtype=torch.float64) + 1) / n - 1  # pixel centres in [-1, 1]
        th = torch.deg2rad(angles)[:, None, None]
        u, s = c[None, :, None], c[None, None, :]
        gx = u * torch.cos(th) - s * torch.sin(th)
        gy = u * torch.sin(th) + s * torch.cos(th)
        return torch.stack([gx, gy], -1).reshape(1, -1, n, 2).float()

    def _forward(self, x: Tensor) -> Tensor:
        b, c, n, _ = x.shape
        grid = self.grid.to(device=x.device, dtype=x.dtype).expand(b * c, -1, -1, -1)
        out = F.grid_sample(x.reshape(b * c, 1, n, n), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.sum(-1).reshape(b, c, self.angles.numel(), n)

    def fbp(self, y: Tensor) -> Tensor:
        """Filtered back-projection: Ram-Lak filter along the detector, then (pi / (2 A)) A^T."""
        self.check_y(y)
        n = y.shape[-1]
        size = 2 ** math.ceil(math.log2(2 * n))
        k = torch.arange(size, dtype=torch.float64)
        k = torch.where(k < size / 2, k, k - size)
        h = torch.zeros(size, dtype=torch.float64)
        h[k == 0] = 0.25
        odd = k.remainder(2) == 1
        h[odd] = -1 / (math.pi * k[odd]) ** 2
        filt = 2 * torch.fft.fft(h).real  # spatial-domain Ram-Lak, avoids the DC bias of a sampled |f|
        proj = torch.fft.ifft(torch.fft.fft(y.double(), n=size, dim=-1) * filt.to(y.device), dim=-1).real[..., :n]
        return self._adjoint(proj.to(y.dtype)) * (math.pi / (2 * self.angles.numel()))


def sparse_view_ct(size: int, views: int, channels: int = 1, noise_std: float = 0.0) -> Radon:
    """Sparse-view CT: ``views`` angles uniform in [0, 180) degrees."""
    if views < 1:
        raise ValueError(f"views must be >= 1; got {views}")
    return Radon(torch.arange(views) * 180.0 / views, (channels, size, size), noise_std)


def limited_angle_ct(size: int, max_angle: float = 90.0, views: int = 90, channels: int = 1, noise_std: float = 0.0):
    """Limited-angle CT: ``views`` angles uniform in [0, max_angle) degrees (DiffusionMBIR: 0..89 degrees)."""
    if not 0 < max_angle <= 180:
        raise ValueError(f"max_angle must be in (0, 180] degrees; got {max_angle}")
    return Radon(torch.arange(views) * max_angle / views, (channels, size, size), noise_std)


def _check_batch(v, shape: tuple[int, ...], what: str, where: str) -> None:
    """Raise unless ``v`` is a tensor of shape ``(batch, *shape)``, naming ``what`` it is and ``where`` it goes."""
    if not torch.is_tensor(v) or tuple(v.shape[1:]) != shape:
        got = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
        raise ValueError(f"{what} must have shape (batch, {', '.join(map(str, shape))}) {where}; got {got}")
