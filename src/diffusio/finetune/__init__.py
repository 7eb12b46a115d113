"""Adaptation: LoRA / LoHa / LoKr / OFT through peft, SaRA (sparse small-weight fine-tuning), MemControl's
search over which blocks to adapt, a fine-tuning loop."""

from diffusio.finetune.adapters import ADAPTERS, AdaptedModel, adapt, adapter_targets, load_adapter, save_adapter
from diffusio.finetune.memcontrol import MemControlResult, memcontrol_search, site_targets
from diffusio.finetune.sara import SaRAModel, load_sara, sara, sara_threshold, save_sara
from diffusio.finetune.train import finetune

__all__ = [
    "ADAPTERS",
    "AdaptedModel",
    "MemControlResult",
    "SaRAModel",
    "adapt",
    "adapter_targets",
    "finetune",
    "load_adapter",
    "load_sara",
    "memcontrol_search",
    "sara",
    "sara_threshold",
    "save_adapter",
    "save_sara",
    "site_targets",
]
