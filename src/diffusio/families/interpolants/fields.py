"""Interpolant fields: the learned velocity/denoiser heads (:class:`InterpolantModel`) and the exact fields between two
Gaussian mixtures (:class:`GaussianMixtureFields`), in the paper's time (Albergo, Boffi & Vanden-Eijnden 2023,
Eqs. 2.10-2.16)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from diffusio.core.parametrization import convert
from diffusio.core.time import as_time, broadcast
from diffusio.data.gmm import GaussianMixture
from diffusio.families.interpolants.coefficients import Interpolant, InterpolantPath
from diffusio.models.base import ModelBase

_F64 = torch.float64


# --- fields: learned and exact ------------------------------------------------------------------------------------
class InterpolantModel(ModelBase):
    """A network ``net(x, t) -> (B, k * C, ...)`` read as the heads ``heads`` (split along dim 1), for ``interpolant``.

    ``heads`` are among ``"velocity"`` and ``"eta"`` (denoiser of the Gaussian part). ``gaussian_base`` says whether
    rho_0 = N(0, I), which makes a one-sided model's eta = E[x_0 | x_t] a score. The network and :meth:`fields`
    work in the paper's time; as a library Model (``predict``, ``model.path`` an :class:`InterpolantPath`) it is in
    the library's time t = 1 - t_paper (data at t = 0), converted here and only here: the velocity changes sign,
    the score is -eta/c. A one-sided interpolant with a Gaussian base is a Gaussian path, so every head follows
    from the conversion hub; a two-sided one has velocity and score only (solvers ``si_ode``, ``si_sde``).
    :meth:`paper_fields` gives the paper-time fields for the paper-time integrators.
    """

    HEADS = ("velocity", "eta")

    def __init__(
        self,
        net: nn.Module,
        interpolant: Interpolant,
        heads: Sequence[str] = ("velocity", "eta"),
        gaussian_base: bool = True,
    ):
        super().__init__()
        bad = [h for h in heads if h not in self.HEADS]
        if bad or not heads or len(set(heads)) != len(heads):
            raise ValueError(f"heads must be distinct names among {', '.join(self.HEADS)}; got {list(heads)}")
        self.net, self.interpolant, self.heads, self.gaussian_base = net, interpolant, tuple(heads), gaussian_base
        self.path = InterpolantPath(interpolant)

    def with_net(self, net: nn.Module) -> InterpolantModel:
        return InterpolantModel(net, self.interpolant, self.heads, self.gaussian_base)

    def fields(self, x: Tensor, t: Tensor) -> dict[str, Tensor]:
        """All heads at ``x`` ``(B, ...)`` and paper time ``t`` ``(B,)``."""
        dtype = next(self.net.parameters()).dtype
        out = self.net(x.to(dtype), t.to(dtype)).to(x.dtype)
        return dict(zip(self.heads, out.chunk(len(self.heads), dim=1)))

    def paper_fields(self) -> PaperFields:
        """The fields v, eta, score in the paper's time (what :func:`sample_ode`/:func:`sample_sde` integrate)."""
        return PaperFields(self)

    def predict(self, x: Tensor, t: Tensor, kind: str = "x0", **cond) -> Tensor:
        """The ``kind`` head at library time ``t`` ``(B,)``: u = -v(1 - t), score = -eta/c(1 - t); the other heads
        through the hub when the interpolant is a Gaussian path (one-sided, Gaussian base)."""
        if cond:
            raise ValueError(f"an InterpolantModel takes no condition; got {', '.join(cond)}")
        tp = 1 - t.to(torch.float64)
        out = self.fields(x, tp)
        if kind == "score":
            return -_need(out, "eta", self.heads) / broadcast(
                noise_coefficient(self.interpolant, self.gaussian_base)(tp), x
            )
        if kind == "velocity" and "velocity" in out:
            return -out["velocity"]
        if self.interpolant.stochastic or not self.gaussian_base:
            raise ValueError(
                f"a two-sided interpolant (or a bridge between data sets) has no {kind!r} head, only 'velocity' and "
                "'score'; sample it with solver 'si_ode' or 'si_sde'"
            )
        if "velocity" in out:
            return convert(-out["velocity"], "velocity", kind, x, t, self.path)
        return convert(out["eta"], "eps", kind, x, t, self.path)  # one-sided: eta = E[x_0 | x_t] is the noise


def _need(out: dict, name: str, heads: tuple) -> Tensor:
    if name not in out:
        raise ValueError(f"this model has no {name!r} head (heads: {', '.join(heads)}); train it with one")
    return out[name]


class PaperFields:
    """An :class:`InterpolantModel`'s fields in the paper's time t (rho_0 at t = 0): the one adapter between the
    paper's convention and the library's."""

    def __init__(self, model: InterpolantModel):
        self.model = model

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        return _need(self.model.fields(x, t), "velocity", self.model.heads)

    def eta(self, x: Tensor, t: Tensor) -> Tensor:
        return _need(self.model.fields(x, t), "eta", self.model.heads)

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """s = -eta / c(t) with c = gamma (two-sided) or a (one-sided, Gaussian base)."""
        m = self.model
        return -self.eta(x, t) / broadcast(noise_coefficient(m.interpolant, m.gaussian_base)(t), x)

    def velocity_and_score(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(v, s) from one network call."""
        m = self.model
        out = m.fields(x, t)
        for name in ("velocity", "eta"):
            if name not in out:
                raise ValueError(f"the SDE needs a {name!r} head; this model has {', '.join(m.heads)}")
        c = noise_coefficient(m.interpolant, m.gaussian_base)(t)
        return out["velocity"], -out["eta"] / broadcast(c, x)


def noise_coefficient(interpolant: Interpolant, gaussian_base: bool) -> Callable[[Tensor], Tensor]:
    """The coefficient of the Gaussian part of x_t whose conditional mean eta estimates: gamma, or a."""
    if interpolant.stochastic:
        return interpolant.gamma.value
    if gaussian_base:
        return interpolant.a.value
    raise ValueError("a one-sided interpolant between two data sets (gamma = 0) has no score; use gamma > 0")


class GaussianMixtureFields:
    """Exact v, eta and score of an interpolant between two Gaussian mixtures ``rho0``, ``rho1`` (independent
    coupling), in float64. Component pair (i, j) of x_t is Gaussian with mean m = a m0_i + b m1_j and covariance
    S = a^2 C0_i + b^2 C1_j + gamma^2 I; E[a' x0 + b' x1 + gamma' z | x, (i, j)] = a' m0_i + b' m1_j +
    (a a' C0_i + b b' C1_j + gamma gamma' I) S^-1 (x - m), mixed with the posterior weights of the pairs.
    """

    def __init__(self, interpolant: Interpolant, rho0: GaussianMixture, rho1: GaussianMixture):
        if rho0.D != rho1.D:
            raise ValueError(f"rho0 and rho1 must have the same dimension; got {rho0.D} and {rho1.D}")
        self.interpolant, self.rho0, self.rho1, self.D = interpolant, rho0, rho1, rho0.D

    @staticmethod
    def _covs(g: GaussianMixture, diagonal: bool) -> Tensor:
        """Component covariances: ``(K, D)`` diagonals when ``diagonal``, else ``(K, D, D)``."""
        if diagonal:
            return g.evals
        e = torch.diag_embed(g.evals)
        return e if g.U is None else g.U @ e @ g.U.mT

    def _pairs(self, x: Tensor, t: Tensor):
        """Posterior pair weights ``(B, K0, K1, 1)``, S^-1 (x - m) ``(B, K0, K1, D)`` and the covariances."""
        it = self.interpolant
        diag = self.rho0.U is None and self.rho1.U is None  # then every S is diagonal: no linear solves
        a, b, g = (c.value(t)[:, None, None, None] for c in (it.a, it.b, it.gamma))
        c0, c1 = self._covs(self.rho0, diag)[None, :, None], self._covs(self.rho1, diag)[None, None, :]
        m = a * self.rho0.means[None, :, None] + b * self.rho1.means[None, None, :]  # (B, K0, K1, D)
        r = x[:, None, None, :] - m
        if diag:
            S = a**2 * c0 + b**2 * c1 + g**2  # (B, K0, K1, D)
            sol, logdet = r / S, torch.log(S).sum(-1)
        else:
            S = a[..., None] ** 2 * c0 + b[..., None] ** 2 * c1 + g[..., None] ** 2 * torch.eye(self.D, dtype=_F64)
            sol, logdet = torch.linalg.solve(S, r.unsqueeze(-1)).squeeze(-1), torch.linalg.slogdet(S)[1]
        lw = self.rho0.log_weights[None, :, None] + self.rho1.log_weights[None, None, :]
        logp = lw - 0.5 * (logdet + (r * sol).sum(-1) + self.D * math.log(2 * math.pi))
        w = torch.softmax(logp.flatten(1), 1).reshape(logp.shape)[..., None]
        return w, sol, c0, c1

    def _prep(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return x.reshape(x.shape[0], -1).to(_F64), as_time(t, x).to(_F64)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact v(t, x) ``(B, ...)``."""
        xf, t = self._prep(x, t)
        return self._velocity(*self._pairs(xf, t), t).reshape(x.shape)

    def _velocity(self, w, sol, c0, c1, t) -> Tensor:
        it = self.interpolant
        a, b = (c.value(t)[:, None, None, None] for c in (it.a, it.b))
        da, db = (c.deriv(t)[:, None, None, None] for c in (it.a, it.b))
        ggd = it.gamma.gg_dot(t)[:, None, None, None]
        mean = da * self.rho0.means[None, :, None] + db * self.rho1.means[None, None, :]
        if c0.ndim == 4:  # diagonal covariances
            v = mean + ((a * da) * c0 + (b * db) * c1) * sol + ggd * sol
        else:
            gain = (a * da)[..., None] * c0 + (b * db)[..., None] * c1
            v = mean + (gain @ sol.unsqueeze(-1)).squeeze(-1) + ggd * sol
        return (w * v).sum((1, 2))

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact grad log rho(t, x) ``(B, ...)``."""
        xf, t = self._prep(x, t)
        w, sol, _, _ = self._pairs(xf, t)
        return -(w * sol).sum((1, 2)).reshape(x.shape)

    def velocity_and_score(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(v, s) sharing one pass over the component pairs."""
        xf, t = self._prep(x, t)
        w, sol, c0, c1 = self._pairs(xf, t)
        return self._velocity(w, sol, c0, c1, t).reshape(x.shape), -(w * sol).sum((1, 2)).reshape(x.shape)

    def eta(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact E[z | x_t = x] = gamma S^-1 (x - m), mixed (two-sided)."""
        _, tt = self._prep(x, t)
        return -broadcast(self.interpolant.gamma.value(tt), x.to(_F64)) * self.score(x, t)
