"""Guided generation: classifier-free, classifier and reward-gradient guidance as ModelWrappers, a noise-conditional
classifier trained by diffusio, and optimization via reward-conditioned diffusion
(Ho & Salimans 2022; Dhariwal & Nichol 2021; Bansal et al. 2023; Yuan et al. 2023).

Strength convention (all wrappers): ``scale`` w with s_w = s_uncond + w (s_cond - s_uncond); w = 1 is plain
conditional sampling, w = 0 unconditional.
"""

from diffusio.guidance.classifier import NoisyClassifier, train_noisy_classifier
from diffusio.guidance.optimization import (
    LinearReward,
    PseudoLabelSource,
    ScalarConditionMLP,
    fit_reward_model,
    reward_conditioned_model,
    sample_at_reward,
)
from diffusio.guidance.wrappers import ClassifierFreeGuidance, ClassifierGuidance, RewardGuidance, score_shift

__all__ = [
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "LinearReward",
    "NoisyClassifier",
    "PseudoLabelSource",
    "RewardGuidance",
    "ScalarConditionMLP",
    "fit_reward_model",
    "reward_conditioned_model",
    "sample_at_reward",
    "score_shift",
    "train_noisy_classifier",
]
