"""Spatially-adaptive normalisation (SPADE, Park et al. 2019), shared by the SPADE GAN and SPADE-Diffusion.

A parameter-free normalisation whose per-pixel scale and shift come from a small conv net on the condition
(here the BF planes), resized to the feature map: ``out = norm(x) * (1 + gamma(c)) + beta(c)``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cellresdm.nets.layers import num_groups

NORMS = ("group", "instance", "batch")


class SPADENorm(nn.Module):
    """Normalise ``x`` without affine parameters, then modulate it per pixel from the condition.

    Args:
        channels: C of the feature map ``x`` (B, C, H, W).
        cond_channels: channels of the condition (B, Cc, Hc, Wc); it is resized to (H, W) by nearest
            neighbour when the sizes differ.
        hidden: width of the shared conv that embeds the condition.
        norm: ``group`` (GroupNorm, batch-size independent), ``instance`` or ``batch``.
    """

    def __init__(self, channels: int, cond_channels: int, hidden: int = 128, norm: str = "group"):
        super().__init__()
        if norm == "group":
            self.norm = nn.GroupNorm(num_groups(channels), channels, affine=False)
        elif norm == "instance":
            self.norm = nn.InstanceNorm2d(channels, affine=False)
        elif norm == "batch":
            self.norm = nn.BatchNorm2d(channels, affine=False)
        else:
            raise ValueError(f"unknown SPADE norm {norm!r}; choose one of {', '.join(NORMS)}")
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W) modulated by ``cond`` (B, Cc, Hc, Wc)."""
        if cond.shape[-2:] != x.shape[-2:]:
            cond = F.interpolate(cond, size=x.shape[-2:], mode="nearest")
        h = self.shared(cond)
        return self.norm(x) * (1 + self.gamma(h)) + self.beta(h)
