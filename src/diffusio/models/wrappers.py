"""Re-scheduling: a model trained on one Gaussian path, sampled on another (flow model with DDIM/DPM-Solver on a
VP schedule, VP model with Euler on the linear path, ...), as a wrapper that is again a Model.

Two paths with the same log-SNR carry the same information up to scale (Kingma et al. 2021, "Variational Diffusion
Models", Sec. 4; Karras et al. 2022, Sec. 3): if x' = alpha_new(t') x0 + sigma_new(t') eps and t solves
lambda_old(t) = lambda_new(t'), then x = x' alpha_old(t) / alpha_new(t') = alpha_old(t) x0 + sigma_old(t) eps is a
point of the old path with the same (x0, eps). So E[x0 | x'] = E[x0 | x] and the x0 prediction is shared; every
other head follows from the conversion hub on the new path.

This is the library's one implementation of the conversion; ``diffusio.interop.reschedule`` is ``Rescheduled(...,
clamp=True)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusio.core.parametrization import convert
from diffusio.core.paths import Path
from diffusio.core.time import broadcast
from diffusio.models.base import ModelBase, ModelWrapper

__all__ = ["Rescheduled"]


class Rescheduled(ModelWrapper):
    """``Rescheduled(model, path, clamp=False)``: ``model`` (trained on ``model.path``) seen as a model on ``path``.

    ``predict(x', t', kind)``: t = old.t_of_log_snr(new.log_snr(t')), x = x' alpha_old(t)/alpha_new(t'),
    x0 = model(x, t), then the ``kind`` head on the new path. Samplers, grids and priors use the new path.
    Noise levels the old path does not reach are an error by default; ``clamp=True`` clamps t to the old path's
    domain [t_lo, t_hi] instead (the model is then asked at its nearest level; the k-diffusion convention, e.g.
    for an EDM model on a DDPM table whose top level exceeds sigma_max).
    """

    def __init__(self, model: ModelBase, path: Path, *, clamp: bool = False):
        super().__init__(model)
        if not isinstance(path, Path):
            raise TypeError(f"path must be a diffusio.paths.Path, got {type(path).__name__}")
        self._path = path
        self.clamp = bool(clamp)

    @property
    def path(self) -> Path:  # type: ignore[override]
        return self._path

    def old_time(self, t: Tensor) -> Tensor:
        """The time of the old path with the same log-SNR as ``t`` ``(batch,)`` on the new path."""
        old = self.inner.path
        t_old = old.t_of_log_snr(self._path.log_snr(t.to(torch.float64)))
        if self.clamp:
            return t_old.clamp(old.t_lo, old.t_hi)
        try:
            old.check_t(t_old, "the matching time on the model's path")
        except ValueError as e:
            raise ValueError(
                f"{e}: log-SNR values of {self._path.name!r} at these times lie outside what {old.name!r} covers; "
                "sample the new path on a narrower interval (t_min/t_max)"
            ) from None
        return t_old

    def predict(self, x: Tensor, t: Tensor, kind: str = "x0", **cond) -> Tensor:
        old, new = self.inner.path, self._path
        t64 = t.to(torch.float64)
        t_old = self.old_time(t64)
        scale = broadcast(old.alpha(t_old) / new.alpha(t64), x)
        x0 = self.inner.predict(x * scale, t_old.to(t.dtype), "x0", **cond)
        return convert(x0, "x0", kind, x, t, new)

    def extra_repr(self) -> str:
        return f"from {self.inner.path!r} to {self._path!r}" + (", clamp=True" if self.clamp else "")
