"""The Model contract every sampler sees: ``model(x, t, **cond) -> x0 prediction`` plus ``model.path``.

``predict(x, t, kind)`` returns any of the five heads (``parametrization.KINDS``); a network's own head is
returned untouched, the others go through the conversion hub. Guidance, inverse-problem corrections,
quantized nets and re-scheduling subclass :class:`ModelWrapper` and are again Models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffusio.core.parametrization import check_kind, convert
from diffusio.core.paths import EDM, Path
from diffusio.core.time import as_time, broadcast

__all__ = [
    "CheckedModel",
    "CountingModel",
    "EDMPrecond",
    "KDiffusionModel",
    "Model",
    "ModelBase",
    "ModelWrapper",
    "NonFiniteError",
    "check_output_shape",
]


class NonFiniteError(ValueError):
    """A sampler or solver produced NaN/inf: the message names the solver, the call, the time and the likely cause."""


def check_output_shape(out: Tensor, x: Tensor, what: str) -> None:
    """Refuse a network output whose shape differs from the input's (it would broadcast silently)."""
    if not torch.is_tensor(out):
        raise TypeError(f"{what} must return a tensor, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(
            f"{what} returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)}; a network's output "
            "must have its input's shape (batch, *event_shape) in the head it predicts"
        )


class ModelBase(nn.Module):
    """Abstract Model: subclasses set ``self.path`` and implement ``predict``."""

    path: Path

    def predict(self, x: Tensor, t: Tensor, kind: str = "x0", **cond) -> Tensor:
        """The ``kind`` head at ``x`` ``(batch, ...)`` and time ``t`` ``(batch,)``."""
        raise NotImplementedError

    def forward(self, x: Tensor, t: Tensor | float, **cond) -> Tensor:
        """x0 prediction E[x0 | x_t = x]; ``x``: ``(batch, ...)``, ``t``: ``(batch,)`` or scalar.

        The public calls check ``t`` against the path's domain; samplers call ``predict`` (no check, no sync).
        """
        return self.predict(x, self._time(t, x), "x0", **cond)

    def eps(self, x: Tensor, t: Tensor | float, **cond) -> Tensor:
        return self.predict(x, self._time(t, x), "eps", **cond)

    def score(self, x: Tensor, t: Tensor | float, **cond) -> Tensor:
        return self.predict(x, self._time(t, x), "score", **cond)

    def velocity(self, x: Tensor, t: Tensor | float, **cond) -> Tensor:
        """The probability-flow ODE drift dx/dt."""
        return self.predict(x, self._time(t, x), "velocity", **cond)

    def _time(self, t: Tensor | float, x: Tensor) -> Tensor:
        t = as_time(t, x)
        self.path.check_t(t)
        return t


@dataclass
class EDMPrecond:
    """EDM preconditioning (Karras et al. 2022, Table 1) on any path, via x/alpha at noise level s = sigma/alpha.

    x0 = c_skip(s) x/alpha + c_out(s) F(c_in(s) x/alpha, ln(s)/4), c_skip = sd^2/(s^2+sd^2),
    c_out = s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2). The same wrapper serves the loss and the sampler.
    """

    sigma_data: float = 0.5

    def __post_init__(self):
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {self.sigma_data}")

    def __call__(self, net: Callable, x: Tensor, t: Tensor, path: Path, **cond) -> Tensor:
        a = broadcast(path.alpha(t), x)
        s = path.noise_level(t)
        sd2 = self.sigma_data**2
        s_b = broadcast(s, x)
        c_skip = sd2 / (s_b**2 + sd2)
        c_out = s_b * self.sigma_data / torch.sqrt(s_b**2 + sd2)
        c_in = 1 / torch.sqrt(s_b**2 + sd2)
        xs = x / a
        out = net((c_in * xs).to(_net_dtype(net, x)), (torch.log(s) / 4).to(_net_dtype(net, x)), **cond)
        check_output_shape(out, x, "the network")
        return c_skip * xs + c_out * out.to(x.dtype)

    def config(self) -> dict:
        return {"name": "edm", "sigma_data": self.sigma_data}


class Model(ModelBase):
    """Wrap a network trained for any head: ``Model(net, path, prediction="eps")``.

    The network is called as ``net(x, path.net_time(t), **cond)`` (or through ``precond``, which then defines
    an x0 prediction). Solver arithmetic stays in ``x``'s dtype: the output is cast back from the net's dtype.
    """

    def __init__(
        self, net: nn.Module | Callable, path: Path, prediction: str = "eps", precond: EDMPrecond | None = None
    ):
        super().__init__()
        if not isinstance(path, Path):
            raise TypeError(f"path must be a diffusio.paths.Path, got {type(path).__name__}")
        check_kind(prediction)
        if precond is not None and prediction != "x0":
            raise ValueError("a preconditioned network predicts x0: use prediction='x0' with precond")
        self.net = net
        self.path = path
        self.prediction = prediction
        self.precond = precond

    def predict(self, x: Tensor, t: Tensor, kind: str = "x0", **cond) -> Tensor:
        if self.precond is not None:
            out = self.precond(self.net, x, t, self.path, **cond)
        else:
            dtype = _net_dtype(self.net, x)
            out = self.net(x.to(dtype), self.path.net_time(t).to(dtype), **cond)
            check_output_shape(out, x, "the network")
            out = out.to(x.dtype)
        return convert(out, self.prediction, kind, x, t, self.path)

    @classmethod
    def from_k_diffusion(
        cls, denoiser: Callable[[Tensor, Tensor], Tensor], path: Path | None = None
    ) -> KDiffusionModel:
        """Wrap a k-diffusion/EDM denoiser ``D(x, sigma) -> x0`` (VE scale) as a Model on ``path`` (default EDM)."""
        return KDiffusionModel(denoiser, path or EDM())

    def extra_repr(self) -> str:
        return f"path={self.path!r}, prediction={self.prediction!r}, precond={self.precond!r}"


class KDiffusionModel(ModelBase):
    """A ``D(x, sigma)`` denoiser on the VE scale seen through ``path``: x0 = D(x/alpha, sigma/alpha)."""

    def __init__(self, denoiser: Callable[[Tensor, Tensor], Tensor], path: Path):
        super().__init__()
        self.denoiser = denoiser
        self.path = path

    def predict(self, x: Tensor, t: Tensor, kind: str = "x0", **cond) -> Tensor:
        a = broadcast(self.path.alpha(t), x)
        x0 = self.denoiser(x / a, self.path.noise_level(t), **cond)
        check_output_shape(x0, x, "the denoiser")
        return convert(x0, "x0", kind, x, t, self.path)


class ModelWrapper(ModelBase):
    """Base for wrappers that are again Models; by default it forwards to ``inner``."""

    def __init__(self, inner: ModelBase):
        super().__init__()
        self.inner = inner

    @property
    def path(self) -> Path:  # type: ignore[override]
        return self.inner.path

    def predict(self, x: Tensor, t: Tensor, kind: str = "x0", **cond) -> Tensor:
        return self.inner.predict(x, t, kind, **cond)


def _net_dtype(net, x: Tensor) -> torch.dtype:
    """The dtype a network wants its inputs in: its first floating parameter's, else ``x``'s."""
    if isinstance(net, nn.Module):
        for p in net.parameters():
            if p.is_floating_point():
                return p.dtype
    return x.dtype


class CountingModel(ModelWrapper):
    """Counts batched model calls (``calls``) made through it."""

    def __init__(self, inner: ModelBase):
        super().__init__(inner)
        self.calls = 0

    def predict(self, x, t, kind="x0", **cond):
        self.calls += 1
        return self.inner.predict(x, t, kind, **cond)


class CheckedModel(CountingModel):
    """The guard the front doors (``samplers.sample``, ``inverse.solve``) put around a model: counts calls and, at
    every call, checks the state handed to the model and the model's answer with one reduced ``isfinite`` (one
    host sync) and the answer's shape, raising :class:`NonFiniteError` naming ``solver`` (a label such as
    ``"solver 'heun'"``), the call (and step,
    from ``calls_per_step``), the time and the likely cause instead of letting NaN reach the result."""

    def __init__(self, inner: ModelBase, solver: str, calls_per_step: int | None = None, options: dict | None = None):
        super().__init__(inner)
        self.solver, self.calls_per_step = solver, calls_per_step
        self.options = {k: v for k, v in (options or {}).items() if isinstance(v, int | float | str)}

    def predict(self, x, t, kind="x0", **cond):
        out = super().predict(x, t, kind, **cond)
        if out.shape != x.shape:
            check_output_shape(out, x, f"the model (kind {kind!r})")
        if not bool(torch.isfinite(x).all() & torch.isfinite(out).all()):
            where = "the state handed to the model" if not bool(torch.isfinite(x).all()) else "the model's output"
            raise NonFiniteError(self.describe(where, t))
        return out

    def describe(self, where: str, t=None, *, final: bool = False) -> str:
        """The error message: who, when, and the likely cause."""
        path = self.inner.path
        when = "in the final output" if final else f"at model call {self.calls}"
        if not final and self.calls_per_step:
            when += f" (step {(self.calls - 1) // self.calls_per_step + 1})"
        tv = None
        if t is not None:
            tt = torch.as_tensor(t).reshape(-1)
            tv = float(tt[0]) if tt.numel() else None
        if tv is not None:
            when += f", t = {tv:g}"
        try:
            data_end, noise_end = path.singular_ends()
        except (NotImplementedError, ValueError, RuntimeError, TypeError):  # a path without a log-SNR
            data_end = noise_end = False
        if tv is not None and ((data_end and tv <= path.t_lo) or (noise_end and tv >= path.t_hi)):
            cause = (
                f"t = {tv:g} is a singular end of path {path.name!r} (log-SNR infinite, a coefficient is 0); "
                f"sample inside ({path.t_lo:g}, {path.t_hi:g}), e.g. between t_min = {path.t_min:g} and "
                f"t_max = {path.t_max:g} (the defaults)"
            )
        elif self.options:
            shown = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
            cause = f"an option value ({shown}) or a step too large for the solver: try the defaults or more steps"
        else:
            cause = "a step too stiff for this solver: use more steps, a lower-order solver or float64"
        return f"{self.solver} produced NaN/inf: {where} is not finite {when}. Likely cause: {cause}"
