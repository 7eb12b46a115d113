"""Verifiers: ``verifier(x, cond=None) -> (B,)`` scores of finished samples, higher is better.

Ma et al. (2025, "Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps", Sec. 3.1) frame
inference-time search along two axes, a verifier and a search algorithm; this module holds the first. A verifier is
any callable with that signature; the built-ins are the exact log-density of a Gaussian mixture (ground truth on
toys), a user callable, a classifier's class probability, a self-supervised agreement score and a rank-averaging
ensemble. :func:`check_scores` validates what a verifier returns (shape, finiteness) with one clear error, and
:class:`CountingVerifier` counts scored samples and the time spent scoring.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from diffusio.core.time import time_batch
from diffusio.data.gmm import GaussianMixture
from diffusio.models.base import ModelBase

__all__ = [
    "CallableVerifier",
    "ClassifierVerifier",
    "CountingVerifier",
    "MixtureLogDensity",
    "RankEnsemble",
    "SelfConsistency",
    "Verifier",
    "check_scores",
    "rank_average",
]


@runtime_checkable
class Verifier(Protocol):
    """``verifier(x, cond=None) -> (B,)`` scores of samples ``x`` ``(B, ...)``; higher is better.

    ``cond`` is the sampling condition (a dict such as ``{"y": labels}``, per sample) or None. A verifier that
    itself calls a diffusion model declares ``nfe_per_sample`` (model calls per scored sample) so searches count
    them in their budget.
    """

    def __call__(self, x: Tensor, cond: dict | None = None) -> Tensor: ...


def check_scores(scores, x: Tensor, name: str = "verifier") -> Tensor:
    """``scores`` as a float64 ``(B,)`` tensor, or a ValueError naming the problem and the fix."""
    if not torch.is_tensor(scores):
        raise ValueError(f"{name} must return a tensor of shape ({x.shape[0]},); got {type(scores).__name__}")
    if scores.shape != (x.shape[0],):
        raise ValueError(
            f"{name} must return one score per sample, shape ({x.shape[0]},); got {tuple(scores.shape)} "
            "(reduce per-sample outputs to a single number, e.g. .flatten(1).mean(1))"
        )
    bad = ~torch.isfinite(scores)
    if bad.any():
        raise ValueError(
            f"{name} returned {int(bad.sum())} non-finite score(s) (NaN or inf) out of {x.shape[0]}; "
            "scores must be finite numbers (clamp log-probabilities, e.g. with a floor)"
        )
    return scores.detach().to(torch.float64)


def _cond_value(cond: dict | None, key: str):
    return None if cond is None else cond.get(key)


class MixtureLogDensity:
    """Exact log p(x) of a :class:`~diffusio.data.GaussianMixture` (``log p(x | y)`` when ``cond`` has ``y`` and the
    mixture has labels): the ground-truth verifier on toys. ``scale`` multiplies the log-density; ``floor`` bounds it
    from below (far-away samples otherwise reach -inf in float64)."""

    def __init__(self, mixture: GaussianMixture, *, scale: float = 1.0, floor: float = -1e6, use_cond: bool = True):
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
        if not (torch.isfinite(torch.tensor(float(scale))) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale}")
        self.mixture, self.scale, self.floor, self.use_cond = mixture, float(scale), float(floor), bool(use_cond)

    def __call__(self, x: Tensor, cond: dict | None = None) -> Tensor:
        y = _cond_value(cond, "y") if self.use_cond else None
        return (self.scale * self.mixture.log_prob(x, y=y)).clamp(min=self.floor)


class CallableVerifier:
    """A user function as a verifier: ``fn(x) -> (B,)`` or, with ``takes_cond=True``, ``fn(x, cond) -> (B,)``."""

    def __init__(self, fn: Callable, *, takes_cond: bool = False, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn, self.takes_cond = fn, bool(takes_cond)
        self.name = name or getattr(fn, "__name__", "callable")

    def __call__(self, x: Tensor, cond: dict | None = None) -> Tensor:
        return self.fn(x, cond) if self.takes_cond else self.fn(x)


class ClassifierVerifier:
    """A classifier's belief in the target class: ``kind="prob"`` p(c | x), ``"logprob"`` log p(c | x), ``"logit"``.

    ``classifier(x) -> (B, C)`` logits. The class is ``cond["y"]`` (per sample) or the fixed ``target``. The
    supervised verifiers of Ma et al. (2025, Sec. 3.1) are this with CLIP / DINO classifiers; the digits metric
    classifier is wired in :mod:`diffusio.app` (``digits_verifier``).
    """

    KINDS = ("prob", "logprob", "logit")

    def __init__(self, classifier: Callable[[Tensor], Tensor], *, target: int | None = None, kind: str = "prob"):
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {', '.join(self.KINDS)}; got {kind!r}")
        if target is not None and (isinstance(target, bool) or not isinstance(target, int) or target < 0):
            raise ValueError(f"target must be a class index >= 0 or None, got {target!r}")
        self.classifier, self.target, self.kind = classifier, target, kind

    def __call__(self, x: Tensor, cond: dict | None = None) -> Tensor:
        y = _cond_value(cond, "y")
        if y is None:
            if self.target is None:
                raise ValueError("ClassifierVerifier needs the class: pass cond={'y': labels} or target=CLASS")
            y = torch.full((x.shape[0],), self.target, dtype=torch.long, device=x.device)
        y = torch.as_tensor(y, device=x.device).long().reshape(-1).expand(x.shape[0])
        with torch.no_grad():
            logits = self.classifier(x.float()).double()
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"the classifier must return logits of shape (B, C); got {tuple(logits.shape)}")
        if int(y.max()) >= logits.shape[1]:
            raise ValueError(f"class {int(y.max())} is out of range for a classifier with {logits.shape[1]} classes")
        if self.kind == "logit":
            return logits.gather(1, y[:, None])[:, 0]
        logp = torch.log_softmax(logits, 1).gather(1, y[:, None])[:, 0]
        return logp if self.kind == "logprob" else logp.exp()


class SelfConsistency:
    """Self-supervised verifier: agreement of an intermediate x0 prediction with the final sample.

    Ma et al. (2025, Sec. 3.1, "self-supervised verifiers") score the cosine similarity between features of the
    clean prediction x0_hat taken at an intermediate noise level (sigma ~ 0.4) and of the final sample. Here the
    intermediate state is made from the final sample itself, x_t = alpha_t x + sigma_t eps with a *fixed* noise
    (seeded by ``seed``, so one sample always gets one score), and x0_hat = model(x_t, t): one model call per
    scored sample (``nfe_per_sample = 1``, counted by searches). This works for any candidate source (ODE, SDE,
    Tweedie estimates), where the paper's version needs the candidate's own trajectory. ``features`` maps samples
    to feature vectors (default: the samples themselves); the score is the cosine similarity of the features, or
    minus the mean squared difference with ``metric="mse"``. ``t`` is the path time; by default the time whose
    noise level sigma/alpha is 0.4.
    """

    nfe_per_sample = 1

    def __init__(
        self,
        model: ModelBase,
        *,
        t: float | None = None,
        features: Callable[[Tensor], Tensor] | None = None,
        metric: str = "cosine",
        seed: int = 0,
    ):
        if not isinstance(model, ModelBase):
            raise TypeError(f"model must be a diffusio Model, got {type(model).__name__}")
        if metric not in ("cosine", "mse"):
            raise ValueError(f"metric must be 'cosine' or 'mse', got {metric!r}")
        path = model.path
        if t is None:
            t = float(path.t_of_noise_level(torch.tensor(0.4, dtype=torch.float64)))
        path.check_t(torch.tensor(float(t)), "t")
        self.model, self.t, self.features, self.metric, self.seed = model, float(t), features, metric, int(seed)

    def __call__(self, x: Tensor, cond: dict | None = None) -> Tensor:
        path = self.model.path
        g = torch.Generator(device=x.device).manual_seed(self.seed)
        eps = torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype).expand_as(x)
        tb = time_batch(self.t, x)
        xt = path.perturb(x, eps, tb.to(x.dtype))
        with torch.no_grad():
            x0 = self.model.predict(xt, tb, "x0", **(cond or {})).to(x.dtype)
        fa, fb = (self.features(v) if self.features is not None else v for v in (x0, x))
        fa, fb = fa.flatten(1).double(), fb.flatten(1).double()
        if self.metric == "mse":
            return -((fa - fb) ** 2).mean(1)
        return F.cosine_similarity(fa, fb, dim=1, eps=1e-12)


def rank_average(scores: Sequence[Tensor]) -> Tensor:
    """In-batch rank averaging (Ma et al. 2025, "Verifier Ensemble"): each candidate's rank under every verifier
    (0 = worst, ties share the mean rank), averaged and divided by B - 1, so the result lies in [0, 1]."""
    if not scores:
        raise ValueError("rank_average needs at least one score tensor")
    ranks = []
    for s in scores:
        s = torch.as_tensor(s, dtype=torch.float64)
        below = (s[None, :] < s[:, None]).sum(1).double()
        equal = (s[None, :] == s[:, None]).sum(1).double()
        ranks.append(below + 0.5 * (equal - 1))
    return torch.stack(ranks).mean(0) / max(1, scores[0].shape[0] - 1)


class RankEnsemble:
    """Ensemble of verifiers by rank averaging against a fixed reference population.

    Ma et al. (2025) rank the candidates of one batch under every verifier and average the ranks. Searches compare
    scores across batches (a zero-order pivot with its neighbours, rounds of a path search), so here the rank of a
    sample under verifier k is its empirical CDF among that verifier's scores of ``reference`` samples (e.g.
    unguided samples of the model; ties count one half): a fixed monotone map, the same for every batch. The
    ensemble score is the mean over verifiers, in [0, 1]; samples beyond the reference range (all ranked 0 or 1)
    are ordered by their mean standardized score, added with weight 1e-6. ``weights`` weight the verifiers.
    """

    def __init__(
        self,
        verifiers: Sequence[Callable],
        reference: Tensor | None = None,
        *,
        reference_cond: dict | None = None,
        weights: Sequence[float] | None = None,
    ):
        self.verifiers = list(verifiers)
        if len(self.verifiers) < 1 or not all(callable(v) for v in self.verifiers):
            raise ValueError("verifiers must be a non-empty sequence of callables")
        w = torch.ones(len(self.verifiers), dtype=torch.float64) if weights is None else torch.tensor(weights)
        if w.shape != (len(self.verifiers),) or not (torch.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
            raise ValueError(f"weights must be {len(self.verifiers)} finite numbers >= 0, not all zero")
        self.weights = (w / w.sum()).double()
        self.nfe_per_sample = sum(getattr(v, "nfe_per_sample", 0) for v in self.verifiers)
        self._ref: list[Tensor] | None = None
        if reference is not None:
            self.calibrate(reference, reference_cond)

    def calibrate(self, reference: Tensor, cond: dict | None = None) -> RankEnsemble:
        """Score ``reference`` samples (at least 16) with every verifier; their scores define the ranks."""
        if not torch.is_tensor(reference) or reference.ndim < 2 or reference.shape[0] < 16:
            raise ValueError("reference must be a tensor of at least 16 samples (batch, ...)")
        self._ref = [
            check_scores(v(reference, cond), reference, f"verifier {i}").sort().values
            for i, v in enumerate(self.verifiers)
        ]
        return self

    def __call__(self, x: Tensor, cond: dict | None = None) -> Tensor:
        if self._ref is None:
            raise ValueError(
                "RankEnsemble has no reference scores: pass reference=SAMPLES (e.g. unguided samples of the "
                "model) or call .calibrate(samples) first"
            )
        total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        z = torch.zeros_like(total)
        for i, (v, ref, w) in enumerate(zip(self.verifiers, self._ref, self.weights)):
            s = check_scores(v(x, cond), x, f"verifier {i}")
            ref = ref.to(s.device)
            lo = torch.searchsorted(ref, s, right=False).double()
            hi = torch.searchsorted(ref, s, right=True).double()
            total += float(w) * (lo + 0.5 * (hi - lo)) / ref.numel()
            z += float(w) * (s - ref.mean()) / ref.std().clamp(min=1e-12)
        return total + 1e-6 * z


class CountingVerifier:
    """Wraps a verifier: validates every output (:func:`check_scores`), counts scored samples per owner and the
    time spent (``seconds``); ``calls`` counts batched invocations."""

    def __init__(self, verifier: Callable, name: str = "verifier"):
        if not callable(verifier):
            raise TypeError(f"verifier must be callable as verifier(x, cond=None) -> (B,); got {type(verifier)}")
        self.inner, self.name = verifier, name
        self.calls, self.samples, self.seconds = 0, 0, 0.0
        self.nfe_per_sample = int(getattr(verifier, "nfe_per_sample", 0))

    def __call__(self, x: Tensor, cond: dict | None = None) -> Tensor:
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.inner(x, cond)
        out = check_scores(out, x, self.name)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.samples += x.shape[0]
        return out
