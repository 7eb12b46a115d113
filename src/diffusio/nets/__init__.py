"""Networks: a residual MLP for vectors and a small U-Net for images, both taking a float time ``t`` ``(B,)``."""

from .layers import FourierTimeEmbedding
from .mlp import MLP, FlattenNet, FlowMapMLP
from .unet import UNet

__all__ = ["MLP", "FlattenNet", "FlowMapMLP", "FourierTimeEmbedding", "UNet"]
