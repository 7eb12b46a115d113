"""SaRA: fine-tune only the smallest-magnitude ("ineffective") weights, with a nuclear-norm penalty, progressive
re-selection and a sparse backward (Hu et al. 2024, "SaRA: High-Efficient Diffusion Model Fine-tuning with
Progressive Sparse Low-Rank Adaptation", Sec. 3).

For each selected weight tensor W (every Linear/Conv weight, ndim >= 2; biases and norm scales stay frozen — a
choice: the paper's code includes all parameters) the mask is ``M = |W| < tau`` (Sec. 3.1) and the trainable
vector is ``p = W[M]``. The forward uses ``W_eff = masked_scatter(W, M, p)``: autograd's backward of that op
returns ``grad_W[M]`` for ``p`` only, so no full-size ``.grad`` is kept and AdamW's moments have ``|p|`` entries
(the paper's "unstructured back-propagation", Sec. 3.3). The low-rank penalty ``lambda ||scatter(p, M)||_*``
(Sec. 3.2, nuclear norm of the sparse trainable matrix, on one randomly chosen eligible matrix per step as in the
official code; conv kernels are read as ``(out, in * k * k)`` matrices). ``reselect()`` (Sec. 3.2, "progressive
parameter adjustment") recomputes ``M' = |W_current| < tau``: entries that grew past tau freeze at their learned
values. Saving stores tau, the masks and ``p`` only (masks explicitly, so loading needs no identical weights).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from diffusio.finetune.base import TunedModel
from diffusio.io import load_safetensors, save_safetensors
from diffusio.models.base import Model

__all__ = ["SaRAModel", "load_sara", "sara", "sara_threshold", "save_sara"]

FORMAT = "diffusio-sara-1"


class _Sparse(nn.Module):
    """Parametrization ``W -> masked_scatter(W, mask, p)``: only the masked entries are free (``p``)."""

    def __init__(self, mask: Tensor, values: Tensor):
        super().__init__()
        self.register_buffer("mask", mask)
        self.register_buffer("trained", mask.clone())  # every entry ever trainable (the union over re-selections)
        self.p = nn.Parameter(values.clone())

    def forward(self, w: Tensor) -> Tensor:
        return w.masked_scatter(self.mask, self.p)


def _weights(net: nn.Module) -> list[tuple[nn.Module, str]]:
    return [
        (m, n) for m in net.modules() for n, p in m.named_parameters(recurse=False) if n == "weight" and p.ndim >= 2
    ]


def sara_threshold(net: nn.Module, fraction: float) -> float:
    """The magnitude below which ``fraction`` of ``net``'s Linear/Conv weights lie (a tau for :func:`sara`)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    w = torch.cat([getattr(m, n).detach().abs().flatten() for m, n in _weights(net)])
    return (
        float(torch.quantile(w.double(), fraction))
        if len(w) < 1 << 24
        else float(w.kthvalue(int(fraction * len(w))).values)
    )


class SaRAModel(TunedModel):
    """A Model whose network trains only its small weights (see the module docstring)."""

    def __init__(self, inner: Model, tau: float, lambda_rank: float, min_rank_dim: int):
        super().__init__(inner)
        self.tau, self.lambda_rank, self.min_rank_dim = tau, lambda_rank, min_rank_dim

    def sparse_layers(self) -> list[tuple[str, nn.Module, _Sparse]]:
        """(module name, module, parametrization) of every sparse-trained weight."""
        out = []
        for name, m in self.net.named_modules():
            if parametrize.is_parametrized(m, "weight"):
                out += [(name, m, pz) for pz in m.parametrizations.weight if isinstance(pz, _Sparse)]
        return out

    def trainable_parameters(self) -> int:
        return sum(pz.p.numel() for _, _, pz in self.sparse_layers())

    def rank_penalty(self, generator: torch.Generator | None = None) -> Tensor:
        """``lambda_rank * ||scatter(p, M)||_*`` on one randomly chosen eligible matrix (min side > min_rank_dim)."""
        eligible = [
            pz for _, _, pz in self.sparse_layers() if min(pz.mask.shape[0], pz.mask[0].numel()) > self.min_rank_dim
        ]
        if not eligible or self.lambda_rank == 0:
            return torch.zeros(())
        pz = eligible[int(torch.randint(len(eligible), (), generator=generator))]
        sparse = torch.zeros(pz.mask.shape, dtype=pz.p.dtype).masked_scatter(pz.mask, pz.p)
        return self.lambda_rank * torch.linalg.matrix_norm(sparse.reshape(sparse.shape[0], -1), ord="nuc")

    @torch.no_grad()
    def reselect(self) -> None:
        """Progressive adjustment: new masks ``|W_current| < tau`` on the current weights; build a new optimizer."""
        for _, m, pz in self.sparse_layers():
            current = m.weight.detach().clone()
            m.parametrizations.weight.original.copy_(current)
            pz.mask = current.abs() < self.tau
            pz.trained = pz.trained | pz.mask
            pz.p = nn.Parameter(current[pz.mask])

    def parameters_to_train(self) -> list[nn.Parameter]:
        return [pz.p for _, _, pz in self.sparse_layers()]

    def merged_state_dict(self) -> dict[str, Tensor]:
        """The plain network weights with the trained entries written in (loads into the original network)."""
        out = {}
        for k, v in self.net.state_dict().items():
            if ".parametrizations.weight." in k:
                continue
            out[k] = v
        for name, m, _ in self.sparse_layers():
            out[f"{name}.weight" if name else "weight"] = m.weight.detach().clone()
        return out


def sara(model: Model, tau: float | None = None, *, fraction: float | None = None, lambda_rank: float = 5e-4,
         min_rank_dim: int = 64) -> SaRAModel:  # fmt: skip
    """Prepare ``model`` (a copy) for SaRA fine-tuning: ``tau`` (the paper's default 2e-3) or ``fraction`` (the share
    of weights to train; tau is then that quantile of |W|). Train ``parameters_to_train()`` and add
    ``rank_penalty()`` to the loss; call ``reselect()`` once mid-training (the paper's progressive step)."""
    import copy

    if not isinstance(model, Model) or not isinstance(model.net, nn.Module):
        raise TypeError(f"sara needs a diffusio Model wrapping an nn.Module network; got {type(model).__name__}")
    if (tau is None) == (fraction is None):
        raise ValueError("pass exactly one of tau (a magnitude threshold, e.g. 2e-3) or fraction (e.g. 0.1)")
    if lambda_rank < 0:
        raise ValueError(f"lambda_rank must be >= 0, got {lambda_rank}")
    net = copy.deepcopy(model.net)
    tau = sara_threshold(net, fraction) if tau is None else float(tau)
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    for p in net.parameters():
        p.requires_grad_(False)
    for m, n in _weights(net):
        w = getattr(m, n).detach()
        mask = w.abs() < tau
        parametrize.register_parametrization(m, n, _Sparse(mask, w[mask]), unsafe=True)
        m.parametrizations.weight.original.requires_grad_(False)
    inner = Model(net, model.path, model.prediction, model.precond)
    return SaRAModel(inner, tau, lambda_rank, min_rank_dim)


def save_sara(model: SaRAModel, file: str | os.PathLike) -> os.PathLike:
    """Write tau, the masks and the trained entries (nothing else) to safetensors, atomically: per layer the current
    mask, the union of all masks so far and the current values on that union (entries frozen by a re-selection
    keep their learned values)."""
    tensors = {}
    for name, m, pz in model.sparse_layers():
        tensors[f"{name}/mask"] = pz.mask.to(torch.uint8)
        tensors[f"{name}/trained"] = pz.trained.to(torch.uint8)
        tensors[f"{name}/values"] = m.weight.detach()[pz.trained]
    meta = {"format": FORMAT, "tau": model.tau, "lambda_rank": model.lambda_rank, "min_rank_dim": model.min_rank_dim}
    return save_safetensors(tensors, file, meta)


def load_sara(file: str | os.PathLike, model: Model) -> SaRAModel:
    """Apply a saved SaRA update to ``model`` (the base it was trained from): masked entries take the saved values."""
    tensors, meta = load_safetensors(file)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{file} is not a diffusio SaRA file (format {meta.get('format')!r})")
    out = sara(model, meta["tau"], lambda_rank=meta["lambda_rank"], min_rank_dim=meta["min_rank_dim"])
    layers = {name: pz for name, _, pz in out.sparse_layers()}
    if set(layers) != {k.rsplit("/", 1)[0] for k in tensors}:
        raise ValueError(f"{file} does not fit this model: its layers differ")
    mods = {name: m for name, m, _ in out.sparse_layers()}
    for name, pz in layers.items():
        mask, trained = tensors[f"{name}/mask"].bool(), tensors[f"{name}/trained"].bool()
        if mask.shape != pz.mask.shape:
            raise ValueError(
                f"{file} does not fit this model: {name} is {tuple(mask.shape)}, not {tuple(pz.mask.shape)}"
            )
        original = mods[name].parametrizations.weight.original
        with torch.no_grad():
            original.copy_(original.masked_scatter(trained, tensors[f"{name}/values"]))
        pz.mask, pz.trained = mask, trained
        pz.p = nn.Parameter(original[mask].clone())
    return out
