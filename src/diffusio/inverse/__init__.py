"""Inverse problems with diffusion priors: measurement operators, solvers and one front door.

``solve(model, operator, y, method="dps", steps=..., generator=..., **options)`` runs a registered method on a
measurement ``y`` ``(B, *operator.out_shape)`` and returns an :class:`InverseResult` (posterior mean or sample,
posterior samples, model calls, method diagnostics). Methods: ``smc`` (twisted SMC with weighted particles, exact as
the particle count grows; AFDPS's variants as options), ``dps``, ``pigdm``, ``ddrm``, ``reddiff`` (a point
estimate), ``mbir`` (DiffusionMBIR, one volume as a batch of slices), and the prior-free baseline ``pinv``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffusio.inverse.ddrm import operator_svd, solve_ddrm
from diffusio.inverse.exact import gmm_posterior, prior_moments
from diffusio.inverse.guided import DPSGuidance, PiGDMGuidance, solve_dps, solve_pigdm
from diffusio.inverse.mbir import admm_tv_step, diff_z, diff_z_adjoint, solve_mbir
from diffusio.inverse.operators import (
    MRI,
    GaussianBlur,
    Inpainting,
    LinearOperator,
    MatrixOperator,
    Operator,
    Radon,
    SuperResolution,
    box_mask,
    cartesian_mask,
    conjugate_gradient,
    limited_angle_ct,
    random_mask,
    sparse_view_ct,
)
from diffusio.inverse.reddiff import SNRWeight, solve_reddiff
from diffusio.inverse.smc import solve_smc
from diffusio.models.base import CheckedModel, ModelBase, NonFiniteError

__all__ = [
    "METHODS",
    "MRI",
    "DPSGuidance",
    "GaussianBlur",
    "Inpainting",
    "InverseResult",
    "LinearOperator",
    "MatrixOperator",
    "Method",
    "Operator",
    "PiGDMGuidance",
    "Radon",
    "SNRWeight",
    "SuperResolution",
    "admm_tv_step",
    "box_mask",
    "cartesian_mask",
    "conjugate_gradient",
    "diff_z",
    "diff_z_adjoint",
    "gmm_posterior",
    "limited_angle_ct",
    "operator_svd",
    "prior_moments",
    "random_mask",
    "solve",
    "solve_ddrm",
    "solve_dps",
    "solve_mbir",
    "solve_pigdm",
    "solve_reddiff",
    "solve_smc",
    "sparse_view_ct",
]


def solve_pinv(
    model: ModelBase, operator: LinearOperator, y: Tensor, *, generator: torch.Generator | None = None
) -> tuple[Tensor, dict]:
    """The prior-free baseline A^+ y (zero-fill for masks and MRI, CG least squares otherwise); no model calls and
    no randomness (``generator`` is accepted for a uniform call signature)."""
    return operator.pinv(y), {}


@dataclass(frozen=True)
class Method:
    """A registered inverse-problem method: its function, whether it needs a linear operator, and a summary."""

    name: str
    fn: Callable[..., tuple[Tensor, dict]]
    linear_only: bool
    summary: str
    kind: str = "sampler"

    def options(self) -> list[str]:
        skip = {"model", "operator", "y"}
        return [p for p in inspect.signature(self.fn).parameters if p not in skip]


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("smc", solve_smc, True, "twisted SMC, exact as particles grow (AFDPS family as an option)", "weighted"),
        Method("dps", solve_dps, False, "diffusion posterior sampling (Chung et al. 2023)"),
        Method("pigdm", solve_pigdm, True, "pseudoinverse-guided DDIM (Song et al. 2023)"),
        Method("ddrm", solve_ddrm, True, "denoising diffusion restoration in the SVD basis (Kawar et al. 2022)"),
        Method("reddiff", solve_reddiff, False, "RED-Diff variational optimisation (Mardani et al. 2023)", "point"),
        Method("mbir", solve_mbir, True, "DiffusionMBIR: 2-D prior per slice + TV along z (Chung et al. 2023)"),
        Method("pinv", solve_pinv, True, "pseudo-inverse A^+ y, no prior", "point"),
    )
}


@dataclass
class InverseResult:
    """Output of :func:`solve`.

    - ``x`` ``(B, *in_shape)``: the posterior mean for weighted methods (``smc``), one posterior sample per
      measurement for samplers (``dps``, ``pigdm``, ``ddrm``, ``mbir``), the point estimate for optimisers
      (``reddiff``: a MAP-like estimate, not a sample) and ``pinv``;
    - ``samples`` ``(B, N, *in_shape)``: equally weighted posterior samples (N = particles after a final
      systematic resampling for ``smc``; N = 1, the sample itself, for the other samplers; None for point
      estimates); ``particles`` ``(B, N, ...)`` and normalised ``log_weights`` ``(B, N)`` for weighted methods;
    - ``kind``: ``"weighted"``, ``"sampler"`` or ``"point"``; ``nfe``: batched model calls; ``info``: diagnostics.
    """

    x: Tensor
    nfe: int
    method: str
    options: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    samples: Tensor | None = None
    particles: Tensor | None = None
    log_weights: Tensor | None = None
    kind: str = "sampler"


def solve(model: ModelBase, operator: Operator, y: Tensor, method: str = "dps", **options) -> InverseResult:
    """Reconstruct from ``y`` ``(B, *operator.out_shape)`` with a registered ``method``: the front door.

    ``options`` are checked against the method's signature (e.g. ``steps``, ``scale``, ``generator``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    spec = METHODS[method]
    unknown = sorted(set(options) - set(spec.options()))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for method {method!r}; valid: {', '.join(spec.options())}"
        )
    if not isinstance(model, ModelBase):
        raise TypeError(f"model must be a diffusio Model (ModelBase), got {type(model).__name__}")
    if not isinstance(operator, Operator):
        raise TypeError(f"operator must be a diffusio.inverse Operator; got {type(operator).__name__}")
    if spec.linear_only and not operator.linear:
        raise ValueError(f"method {method!r} needs a linear operator; use 'dps' or 'reddiff' for {operator!r}")
    if not torch.is_tensor(y) or not y.is_floating_point():
        raise TypeError(f"y must be a floating-point tensor of measurements, got {getattr(y, 'dtype', type(y))}")
    operator.check_y(y)
    # the finite-output guard: NaN/inf in a state handed to the model, the model's answer or the result is an error
    counted = CheckedModel(model, f"inverse method {method!r}", None, options)
    x, info = spec.fn(counted, operator, y, **options)
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(counted.describe("the reconstruction", None, final=True))
    shown = {k: v for k, v in options.items() if not isinstance(v, torch.Generator | Tensor)}
    x = x.detach()
    samples = particles = log_weights = None
    if spec.kind == "weighted":
        samples, particles, log_weights = info.pop("samples"), info.pop("particles"), info.pop("log_weights")
    elif spec.kind == "sampler":
        samples = x[:, None]
    return InverseResult(x, counted.calls, method, shown, info, samples, particles, log_weights, spec.kind)
