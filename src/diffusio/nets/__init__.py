"""Networks: a residual MLP for vectors and a small U-Net for images, both taking a float time ``t`` ``(B,)``."""

from diffusio.nets.layers import FourierTimeEmbedding
from diffusio.nets.mlp import MLP, FlattenNet, FlowMapMLP
from diffusio.nets.unet import UNet

__all__ = ["MLP", "FlattenNet", "FlowMapMLP", "FourierTimeEmbedding", "UNet"]
