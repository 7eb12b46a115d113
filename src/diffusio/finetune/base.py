"""What every fine-tuned Model shares: a wrapper whose network is the inner Model's own, changed in place."""

from __future__ import annotations

from torch import nn

from diffusio.models.base import Model, ModelWrapper

__all__ = ["TunedModel"]


class TunedModel(ModelWrapper):
    """A :class:`~diffusio.models.base.Model` wrapped while its network is fine-tuned in place (adapters, SaRA):
    the inner Model's ``net``, ``prediction`` and ``precond`` stay visible, so checkpoints, exports and samplers see
    the same Model they saw before."""

    inner: Model

    @property
    def net(self) -> nn.Module:
        return self.inner.net

    @property
    def prediction(self) -> str:
        return self.inner.prediction

    @property
    def precond(self):
        return self.inner.precond
