"""Parameter-efficient adapters through peft: LoRA (Hu et al. 2022), LoHa (Hyeon-Woo et al. 2022, FedPara),
LoKr (Yeh et al. 2024, LyCORIS) and OFT (Qiu et al. 2023) on the ``nn.Linear`` / ``nn.Conv2d`` layers of any
diffusio network (MLP, U-Net, ...), seen as a Model; merge/unmerge; adapters saved alone in safetensors.
"""

from __future__ import annotations

import os
import re

from torch import nn

from diffusio.finetune.base import TunedModel
from diffusio.io import load_safetensors, save_safetensors
from diffusio.models.base import Model

__all__ = ["ADAPTERS", "AdaptedModel", "adapt", "adapter_targets", "load_adapter", "save_adapter"]

ADAPTERS = ("lora", "loha", "lokr", "oft")
FORMAT = "diffusio-adapter-1"


def adapter_targets(net: nn.Module) -> list[str]:
    """Names of the layers an adapter can wrap: every ``nn.Linear`` and ``nn.Conv2d`` of ``net``."""
    return [n for n, m in net.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def _config(
    method: str, targets: list[str], rank: int, alpha: float | None, dropout: float, block_size: int, factor: int = -1
):
    try:
        from peft import LoHaConfig, LoKrConfig, LoraConfig, OFTConfig
    except ImportError as e:
        raise ImportError("adapters need peft: pip install 'diffusio[finetune]' (or pip install peft)") from e

    alpha = float(rank if alpha is None else alpha)
    if method == "lora":
        return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
    if method == "loha":
        return LoHaConfig(r=rank, alpha=alpha, module_dropout=dropout, target_modules=targets)
    if method == "lokr":
        return LoKrConfig(r=rank, alpha=alpha, module_dropout=dropout, decompose_factor=factor, target_modules=targets)
    return OFTConfig(r=0, oft_block_size=block_size, module_dropout=dropout, target_modules=targets)


def _resolve(net: nn.Module, target_modules) -> list[str]:
    """Full module names matched by ``target_modules`` (exact names, name suffixes or regular expressions)."""
    valid = adapter_targets(net)
    if target_modules is None:
        return valid
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    out: list[str] = []
    for pat in target_modules:
        hits = [n for n in valid if n == pat or n.endswith("." + pat) or re.fullmatch(pat, n)]
        if not hits:
            sample = ", ".join(valid[:8]) + (", ..." if len(valid) > 8 else "")
            raise ValueError(
                f"target module {pat!r} matches no Linear/Conv2d layer of {type(net).__name__}; valid names "
                f"include {sample} (see diffusio.finetune.adapter_targets(net))"
            )
        out += [h for h in hits if h not in out]
    return out


class AdaptedModel(TunedModel):
    """A Model whose network carries a peft adapter (only the adapter's parameters train).

    ``merge()`` folds the adapter into the base weights (sampling at base speed), ``unmerge()`` undoes it;
    ``trainable_parameters()`` counts what fine-tuning updates.
    """

    def __init__(self, inner: Model, method: str, targets: list[str], options: dict, base_keys: list[str]):
        super().__init__(inner)
        self.method, self.targets, self.options, self.base_keys = method, targets, options, base_keys

    def _layers(self):
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for m in self.net.modules() if isinstance(m, BaseTunerLayer)]

    def merge(self) -> AdaptedModel:
        for m in self._layers():
            if not m.merged:
                m.merge()
        return self

    def unmerge(self) -> AdaptedModel:
        for m in self._layers():
            if m.merged:
                m.unmerge()
        return self

    @property
    def merged(self) -> bool:
        return all(m.merged for m in self._layers())

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters() if p.requires_grad)

    def merged_state_dict(self) -> dict:
        """The base network's state with the adapter folded in (loads into the original architecture)."""
        was = self.merged
        self.merge()
        keys = set(self.base_keys)
        out = {}
        for k, v in self.net.state_dict().items():
            plain = k.replace(".base_layer", "")
            if plain in keys:
                out[plain] = v.detach().clone()
        if not was:
            self.unmerge()
        return out

    def extra_repr(self) -> str:
        return f"method={self.method!r}, layers={len(self.targets)}, trainable={self.trainable_parameters()}"


def adapt(
    model: Model,
    method: str = "lora",
    *,
    target_modules: list[str] | str | None = None,
    rank: int = 4,
    alpha: float | None = None,
    dropout: float = 0.0,
    block_size: int = 4,
    decompose_factor: int = -1,
) -> AdaptedModel:
    """Wrap a copy of ``model``'s network with a peft adapter and return it as a Model.

    ``method``: ``lora``, ``loha``, ``lokr`` or ``oft``. ``target_modules``: layer names (exact, suffix such as
    ``conv1``, or a regular expression); default every Linear and Conv2d (for OFT: Linear and 1x1 Conv2d only —
    peft's OFT on k x k kernels does not start at the identity). ``rank`` (LoRA/LoHa/LoKr), ``alpha``
    (scale alpha/rank; default rank), ``block_size`` (OFT's orthogonal block size), ``decompose_factor`` (LoKr: the
    size of the small Kronecker factor, -1 = as square as possible; a small factor makes the large factor, and the
    trainable count, larger).
    """
    import copy

    if method not in ADAPTERS:
        raise ValueError(f"unknown adapter {method!r}; valid: {', '.join(ADAPTERS)}")
    if not isinstance(model, Model) or not isinstance(model.net, nn.Module):
        raise TypeError(f"adapt needs a diffusio Model wrapping an nn.Module network; got {type(model).__name__}")
    for name, v in (("rank", rank), ("block_size", block_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if (
        isinstance(decompose_factor, bool)
        or not isinstance(decompose_factor, int)
        or not (decompose_factor == -1 or decompose_factor >= 1)
    ):
        raise ValueError(f"decompose_factor must be -1 (automatic) or an integer >= 1, got {decompose_factor!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    from peft import inject_adapter_in_model

    net = copy.deepcopy(model.net)
    targets = _resolve(net, target_modules)
    if method == "oft":  # peft 0.21's OFT on k x k convolutions does not start at the identity (measured): skip them
        spatial = [
            n
            for n in targets
            if isinstance(net.get_submodule(n), nn.Conv2d) and net.get_submodule(n).weight[0, 0].numel() > 1
        ]
        if spatial and target_modules is not None:
            raise ValueError(
                f"OFT through peft does not reproduce the base model on k x k convolutions ({spatial[:3]}): target "
                "Linear and 1x1 Conv2d layers, or use lora/loha/lokr"
            )
        targets = [n for n in targets if n not in spatial]
    opts = {"rank": rank, "alpha": alpha, "dropout": dropout, "block_size": block_size}
    if decompose_factor != -1:
        opts["decompose_factor"] = decompose_factor
    try:
        net = inject_adapter_in_model(_config(method, targets, rank, alpha, dropout, block_size, decompose_factor), net)
    except ValueError as e:
        raise ValueError(f"peft could not add a {method} adapter to {targets[:4]}...: {e}") from None
    inner = Model(net, model.path, model.prediction, model.precond)
    return AdaptedModel(inner, method, targets, opts, list(model.net.state_dict()))


def save_adapter(model: AdaptedModel, file: str | os.PathLike) -> os.PathLike:
    """Write only the adapter's tensors (and its settings) to safetensors, atomically."""
    from peft import get_peft_model_state_dict

    if not isinstance(model, AdaptedModel):
        raise TypeError(f"save_adapter takes an AdaptedModel, got {type(model).__name__}")
    if model.merged:
        raise ValueError("the adapter is merged into the base weights; call unmerge() before saving it")
    state = get_peft_model_state_dict(model.net)
    meta = {"format": FORMAT, "method": model.method, "targets": model.targets, "options": model.options}
    return save_safetensors(state, file, meta)


def load_adapter(file: str | os.PathLike, model: Model) -> AdaptedModel:
    """Re-create the adapter saved in ``file`` on ``model`` (the same base model it was trained on)."""
    from peft import set_peft_model_state_dict

    tensors, meta = load_safetensors(file)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{file} is not a diffusio adapter file (format {meta.get('format')!r})")
    adapted = adapt(model, meta["method"], target_modules=meta["targets"], **meta["options"])
    result = set_peft_model_state_dict(adapted.net, tensors)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{file} does not fit this model: unexpected adapter tensors {unexpected[:4]}")
    return adapted
