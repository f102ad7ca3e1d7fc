"""Denoising networks for CellResDM (written from scratch: no timm/torchvision).

- :mod:`cellresdm.nets.layers`: shared building blocks (timestep embedding, GroupNorm helper, FiLM residual block,
  down/upsampling) that the baselines reuse.
- :mod:`cellresdm.nets.swin_unet`: the ResShift-style UNet with Swin transformer blocks (CellResDM backbone).
"""

from cellresdm.nets.layers import (
    Downsample,
    ResBlock,
    TimestepEmbedder,
    TimestepSequential,
    Upsample,
    count_parameters,
    group_norm,
    timestep_embedding,
    zero_module,
)
from cellresdm.nets.swin_unet import SwinLayer, SwinUNet, SwinUNetConfig

__all__ = [
    "Downsample",
    "ResBlock",
    "SwinLayer",
    "SwinUNet",
    "SwinUNetConfig",
    "TimestepEmbedder",
    "TimestepSequential",
    "Upsample",
    "count_parameters",
    "group_norm",
    "timestep_embedding",
    "zero_module",
]
