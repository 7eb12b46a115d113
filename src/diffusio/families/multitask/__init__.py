"""Multi-task diffusion (Chen et al. 2024, "Diffusion Models for Multi-Task Generative Modeling", ICLR): one
diffusion variable z carries an image and its class label; a shared trunk with an image head and a label head.

Forward process (the paper's kernel q(z_t | z_{t-1}, x) = N(sqrt(a_t)(z_{t-1} + a_t^agg), (1 - a_t) I) with the
aggregation a_t = w_t E(y)): z_t = alpha_t z_0 + b_t + sigma_t eps, b_t = sum_{s<=t} sqrt(abar_t/abar_{s-1}) a_s. The
paper leaves w_t open; we take w_t = w beta_t sqrt(abar_{t-1}), for which b_t = alpha_t (sum_{s<=t} beta_s) w E(y),
and in continuous time on a VP path (alpha_t^2 = exp(-int_0^t beta)) b_t = alpha_t c(t) E(y) with
c(t) = -2 w log alpha_t. b_T stays small (0.066 w E on the linear VP path), so z_T ~ N(0, I) still holds.

Loss (the paper's practical multi-task objective): ||eps - eps_hat(z_t, t)||^2 + lambda CE(y, label_head(z_t, t)),
eps the total noise of the marginal above; with w = 0 and lambda = 0 it is the DDPM loss. The squared norm is a sum
over the D image elements; we divide the whole objective by D (the library's per-element loss), so the label term
enters as lambda CE / D. (Taking the per-element mean of the MSE but the full CE would weight the label D times
more than the paper's objective, and the shared trunk then spends itself on the label.)
Sampling: DDIM steps on z with b_t replaced by its estimate alpha_t c(t) E(p_hat), p_hat the label head's class
probabilities at each step (known labels plug in E(y) instead: label -> image); the label is read at the end.
Image -> label: the label head on the noised image at a small t (a classifier).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffusio.core.paths import Path, VPPath
from diffusio.core.time import broadcast
from diffusio.nets.heads import MultiHeadNet

__all__ = ["MultiTaskLoss", "MultiTaskModel", "classify", "sample_multitask"]


class MultiTaskModel(nn.Module):
    """An image-label model: ``net`` (a :class:`~diffusio.nets.heads.MultiHeadNet` with ``image`` (eps) and ``label``
    heads and a ``label`` encoder) on a VP ``path`` with aggregation weight ``weight`` (w above).

    Not a :class:`~diffusio.models.base.ModelBase`: its marginal has the extra drift b_t, so the generic samplers do
    not apply; use :func:`sample_multitask` and :func:`classify`.
    """

    def __init__(self, net: MultiHeadNet, path: Path, weight: float = 1.0):
        super().__init__()
        if not isinstance(path, VPPath):
            raise ValueError(f"the multitask family needs a VP path (vp_linear, vp_cosine, ddpm); got {path.name!r}")
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"multitask weight must be a finite number >= 0, got {weight!r}")
        missing = {"image", "label"} - set(net.heads) or ({"label"} - set(net.encoders))
        if missing:
            raise ValueError(f"the net needs image and label heads and a label encoder; missing {sorted(missing)}")
        self.net, self.path, self.weight = net, path, float(weight)
        self.num_classes = net.encoders["label"].num_classes

    def with_net(self, net) -> MultiTaskModel:
        """The same model around another module (the Trainer's DDP wrapper)."""
        out = MultiTaskModel.__new__(MultiTaskModel)
        nn.Module.__init__(out)
        out.net, out.path, out.weight, out.num_classes = net, self.path, self.weight, self.num_classes
        return out

    def _unwrapped(self) -> MultiHeadNet:
        return getattr(self.net, "module", self.net)

    def shift(self, t: Tensor, labels: Tensor, like: Tensor) -> Tensor:
        """b_t = alpha_t c(t) E(labels), shape of ``like``; ``labels``: ``(B,)`` classes or ``(B, K)`` probabilities."""
        alpha = self.path.alpha(t)
        c = -2 * self.weight * torch.log(alpha)
        e = self._unwrapped().encoders["label"](labels).to(like.dtype)
        return broadcast((alpha * c).to(like.dtype), like) * e

    def heads(self, z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(eps_hat shape of ``z``, label logits ``(B, K)``) at ``z`` ``(B, C, H, W)`` and ``t`` ``(B,)``."""
        out = self.net(z, self.path.net_time(t).to(z.dtype))
        return out["image"], out["label"]


@dataclass
class MultiTaskLoss:
    """(||eps - eps_hat||^2 + ``label_weight`` * CE(y, logits)) / D per sample ``(B,)`` (D image elements; see the
    module docstring); t ~ U[t_min, t_max]."""

    label_weight: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.label_weight) and self.label_weight >= 0):
            raise ValueError(f"loss.label_weight must be a finite number >= 0, got {self.label_weight!r}")

    def draw(self, x0: Tensor, path: Path, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        u = torch.rand(x0.shape[0], generator=generator, dtype=torch.float64)
        t = path.t_min + (path.t_max - path.t_min) * u
        return t.to(x0.device), torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)

    def __call__(self, model: MultiTaskModel, x0: Tensor, t: Tensor, noise: Tensor, cond: dict | None = None) -> Tensor:
        y = (cond or {}).get("y")
        if y is None:
            raise ValueError("the multitask loss needs labels: train on a labelled data set (digits with labels: true)")
        z = model.path.perturb(x0, noise, t) + model.shift(t, y, x0)
        eps_hat, logits = model.heads(z, t)
        loss = ((eps_hat - noise) ** 2).flatten(1).mean(1)
        if self.label_weight > 0:
            ce = F.cross_entropy(logits.float(), y.long(), reduction="none").to(loss.dtype)
            loss = loss + self.label_weight * ce / noise[0].numel()
        return loss


@torch.no_grad()
def sample_multitask(
    model: MultiTaskModel,
    n: int,
    *,
    steps: int = 50,
    labels: Tensor | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """(images ``(n, C, H, W)``, labels ``(n,)``): joint generation, or label -> image with ``labels`` given.

    DDIM on z (Song et al. 2021, Eq. 12) with the drift b_t estimated from the label head at every step (the paper's
    sampler plugs decoded modalities into the aggregation); ``eta`` in [0, 1] adds DDIM's noise. x0 is always
    recovered with the label head's estimate (the eps head does not see the label, so its eps_hat carries the trunk's
    own belief about b_t; subtracting the known label's b_t instead pushes x0 against that label); known labels enter
    where z is re-noised to the next time.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta!r}")
    enc = model._unwrapped().encoders["label"]
    shape = (n, *enc.shape)
    if labels is not None and labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},); got {tuple(labels.shape)}")
    path, dtype = model.path, next(model.net.parameters()).dtype
    ts = torch.linspace(path.t_max, path.t_min, steps + 1, dtype=torch.float64)
    z = torch.randn(shape, generator=generator, dtype=dtype)
    probs = None
    for t, s in tqdm(list(itertools.pairwise(ts)), desc="multitask", disable=not progress):
        tb, sb = t.expand(n), s.expand(n)
        eps_hat, logits = model.heads(z, tb)
        probs = logits.float().softmax(-1)
        cond = labels if labels is not None else probs
        a_t, s_t, a_s, s_s = (float(f(v)) for v in (t, s) for f in (path.alpha, path.sigma))
        x0 = (z - model.shift(tb, probs, z) - s_t * eps_hat) / a_t  # the trunk's own belief, consistent with eps_hat
        noise_sd = eta * s_s / s_t * math.sqrt(max(0.0, 1 - (a_t * s_s / (a_s * s_t)) ** 2))
        direction = math.sqrt(max(0.0, s_s**2 - noise_sd**2))
        z = a_s * x0 + model.shift(sb, cond, z) + direction * eps_hat
        if noise_sd > 0:
            z = z + noise_sd * torch.randn(shape, generator=generator, dtype=dtype)
    tb = ts[-1].expand(n)
    eps_hat, logits = model.heads(z, tb)
    probs = logits.float().softmax(-1)
    x0 = (z - model.shift(tb, probs, z) - float(path.sigma(ts[-1])) * eps_hat) / float(path.alpha(ts[-1]))
    return x0, labels if labels is not None else logits.argmax(-1)


@torch.no_grad()
def classify(
    model: MultiTaskModel, x: Tensor, *, t: float = 0.05, draws: int = 4, generator: torch.Generator | None = None
) -> Tensor:
    """Class probabilities ``(B, K)`` of images ``x`` ``(B, C, H, W)``: the label head on z_t at time ``t``, averaged
    over ``draws`` noise draws; the unknown drift b_t uses the previous estimate (a uniform start, two passes)."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    tb = torch.full((x.shape[0],), float(t), dtype=torch.float64)
    model.path.check_t(tb)
    probs = torch.full((x.shape[0], model.num_classes), 1.0 / model.num_classes)
    for _ in range(2):
        acc = 0
        for _ in range(draws):
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            z = model.path.perturb(x, noise, tb).to(x.dtype) + model.shift(tb, probs, x)
            acc = acc + model.heads(z, tb)[1].float().softmax(-1)
        probs = acc / draws
    return probs
