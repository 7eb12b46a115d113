"""Inverse problems with diffusion priors: measurement operators, solvers and one front door.

``solve(model, operator, y, method="dps", steps=..., generator=..., **options)`` runs a registered method on a
measurement ``y`` ``(B, *operator.out_shape)`` and returns an :class:`InverseResult` (reconstruction, model calls,
method diagnostics). Methods: ``dps``, ``pigdm``, ``reddiff``, ``smc`` (AFDPS weighted particles), ``mbir``
(DiffusionMBIR, one volume as a batch of slices), and the prior-free baseline ``pinv``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffusio.inverse.exact import gmm_posterior
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
    "random_mask",
    "solve",
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

    def options(self) -> list[str]:
        skip = {"model", "operator", "y"}
        return [p for p in inspect.signature(self.fn).parameters if p not in skip]


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("dps", solve_dps, False, "diffusion posterior sampling (Chung et al. 2023)"),
        Method("pigdm", solve_pigdm, True, "pseudoinverse-guided DDIM (Song et al. 2023)"),
        Method("reddiff", solve_reddiff, False, "RED-Diff variational optimisation (Mardani et al. 2023)"),
        Method("smc", solve_smc, True, "approximation-free weighted-particle sampler (AFDPS, Chen et al. 2025)"),
        Method("mbir", solve_mbir, True, "DiffusionMBIR: 2-D prior per slice + TV along z (Chung et al. 2023)"),
        Method("pinv", solve_pinv, True, "pseudo-inverse A^+ y, no prior"),
    )
}


@dataclass
class InverseResult:
    """Output of :func:`solve`: reconstruction ``x`` ``(B, *in_shape)``, model calls ``nfe`` (batched calls),
    the method name, its options and diagnostics ``info``."""

    x: Tensor
    nfe: int
    method: str
    options: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


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
    return InverseResult(x.detach(), counted.calls, method, shown, info)
