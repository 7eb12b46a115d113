"""Inverse-problem tasks on the bundled data, shared by ``diffusio inverse`` and ``diffusio bench inverse``.

A task builds the operator for an image shape, draws held-out ground truth for a trained prior (digits test split,
fresh photograph patches, fresh phantoms), and shows a measurement as an image. Defaults per method are tuned on
the bundled priors (EDM path, images in [-1, 1]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffusio.inverse.operators import (
    MRI,
    GaussianBlur,
    Inpainting,
    LinearOperator,
    Radon,
    SuperResolution,
    cartesian_mask,
    random_mask,
    sparse_view_ct,
)

__all__ = [
    "METHOD_DEFAULTS",
    "TASKS",
    "TASK_OVERRIDES",
    "baseline",
    "ground_truth",
    "make_operator",
    "measurement_image",
    "method_options",
]

TASKS: tuple[str, ...] = ("inpaint", "sr", "deblur", "mri", "ct", "ct3d")

METHOD_DEFAULTS: dict[str, dict] = {
    "dps": {"steps": 200, "scale": 2.0, "grid": "karras", "clip": (-1.0, 1.0)},
    "pigdm": {"steps": 50, "grid": "karras", "data_var": 0.36, "eta": 0.5},
    "reddiff": {"steps": 100, "lr": 0.1, "grid": "logsnr"},
    "smc": {"particles": 16, "steps": 200, "grid": "karras", "data_var": 0.36},
    "mbir": {"steps": 50, "tv_weight": 0.04, "rho": 1.0, "cg_iters": 5, "grid": "karras"},
    "pinv": {},
}

# DPS's step is scale * grad ||y - A x0_hat||, which grows with the operator's norm (the official configs also set
# the scale per task); these were picked from {0.1, 0.3, 0.5, 1, 2} on images that are not the benchmark's.
TASK_OVERRIDES: dict[tuple[str, str], dict] = {("dps", "deblur"): {"scale": 1.0}, ("dps", "ct"): {"scale": 0.2}}


def method_options(method: str, task: str) -> dict:
    """Default options of ``method`` on ``task``."""
    return {**METHOD_DEFAULTS.get(method, {}), **TASK_OVERRIDES.get((method, task), {})}


def make_operator(
    task: str, shape: tuple[int, int, int], noise_std: float = 0.05, *, generator: torch.Generator | None = None
) -> LinearOperator:
    """The operator of ``task`` for images ``(C, H, W)``: 50% random-pixel inpainting, 2x block-average SR,
    Gaussian blur (std 1 px; A^+ drops |h| < 0.1), 4x Cartesian MRI (8% centre), sparse-view CT (H/4 views;
    per slice for ct3d)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    c, h, w = shape
    if task == "inpaint":
        return Inpainting(random_mask((h, w), 0.5, generator=generator), shape, noise_std)
    if task == "sr":
        return SuperResolution(2, shape, noise_std)
    if task == "deblur":
        return GaussianBlur(1.0, shape, noise_std, eps=0.1)  # truncated inverse filter: no noise blow-up
    if task == "mri":
        return MRI(cartesian_mask(h, 4.0, 0.08, generator=generator), shape, noise_std)
    return sparse_view_ct(h, max(4, h // 4), c, noise_std)


def ground_truth(data_cfg: dict, n: int, *, seed: int = 1234, task: str = "inpaint", slices: int = 8) -> Tensor:
    """Held-out images ``(n, C, H, W)`` for a prior trained on ``data_cfg`` (for ``ct3d``: one volume
    ``(slices, C, H, W)``)."""
    name, g = data_cfg.get("name"), torch.Generator().manual_seed(seed)
    if task == "ct3d":
        if name != "phantoms":
            raise ValueError("task ct3d needs a prior trained on phantoms (data: {name: phantoms})")
        from diffusio.data.phantoms import phantom_volume

        return phantom_volume(data_cfg.get("size", 32), slices, generator=g)
    if name == "digits":
        from diffusio.data.digits import load_digits

        x, _ = load_digits(data_cfg.get("size", 8), data_cfg.get("mode", "pad"), "test")
        return x[torch.randperm(len(x), generator=g)[:n]]
    if name == "patches":
        from diffusio.data.images import image_patches

        # held-out region of every photograph (the patches config trains on split "train", left of it)
        return image_patches(data_cfg.get("image", "all"), data_cfg.get("size", 16), n, generator=g, split="test")
    if name == "phantoms":
        from diffusio.data.phantoms import random_phantoms

        return random_phantoms(n, data_cfg.get("size", 32), generator=g)
    raise ValueError(f"no held-out images for data {name!r}; the inverse tasks support digits, patches, phantoms")


def baseline(op: LinearOperator, y: Tensor) -> Tensor:
    """The prior-free reconstruction: filtered back-projection for CT (on attenuation (x + 1)/2, where the
    background is zero), A^+ y otherwise."""
    if isinstance(op, Radon):
        ones = torch.ones((1, *op.in_shape), dtype=y.dtype, device=y.device)
        return 2 * op.fbp((y + op(ones)) / 2) - 1
    return op.pinv(y)


def measurement_image(op: LinearOperator, y: Tensor) -> Tensor:
    """``y`` as images ``(B, C, H, W)`` in [-1, 1] for display: itself, nearest-upsampled (SR), centred log |k|
    (MRI), or the sinogram resized to the image size (CT)."""
    shape = op.in_shape
    if isinstance(op, SuperResolution):
        return op.pinv(y)
    if isinstance(op, MRI):
        mag = torch.fft.fftshift(torch.view_as_complex(y.float().contiguous()).abs(), dim=(-2, -1))
        return _normalise(torch.log1p(mag))
    if isinstance(op, Radon):
        return _normalise(F.interpolate(y.float(), size=shape[1:], mode="bilinear", align_corners=False))
    return y.clamp(-1, 1)


def _normalise(z: Tensor) -> Tensor:
    lo, hi = z.amin(dim=(1, 2, 3), keepdim=True), z.amax(dim=(1, 2, 3), keepdim=True)
    return 2 * (z - lo) / (hi - lo).clamp(min=1e-12) - 1
