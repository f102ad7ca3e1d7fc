"""The pix2pix U-Net generator (Isola et al. 2017), used by the ``unet`` regression and ``pix2pix`` baselines.

Encoder: ``depth`` 4x4 convolutions of stride 2 (LeakyReLU 0.2 and a norm between them, none after the first and
the innermost); decoder: ReLU -> 4x4 transposed convolution of stride 2 -> norm, each fed the concatenation of the
previous decoder output and the encoder output at its resolution (skip connections); tanh output in [-1, 1].
Widths are ``base_channels * min(2**level, 8)``. As in pix2pix, dropout (0.5) follows the ``dropout_blocks``
decoder blocks just below the bottleneck; it is the generator's only randomness and is off in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cellresdm.nets.layers import num_groups

__all__ = ["GENERATOR_NORMS", "UNetGenerator", "UNetGeneratorConfig"]

GENERATOR_NORMS = ("batch", "instance", "group")


@dataclass(frozen=True)
class UNetGeneratorConfig:
    """Architecture of :class:`UNetGenerator`.

    Attributes:
        in_channels: input channels (3 BF planes).
        out_channels: output channels (7: 5 IF + 2 boundaries).
        base_channels: width of the first encoder level (pix2pix ngf, 64).
        depth: number of stride-2 levels (pix2pix: 8 for 256 px, a 1x1 bottleneck); inputs must be multiples of
            ``2**depth``.
        norm: ``batch`` (pix2pix; eval uses running statistics, so tiles of a field are normalised alike),
            ``instance`` or ``group``.
        dropout: dropout probability in the decoder blocks below the bottleneck (pix2pix 0.5).
        dropout_blocks: how many decoder blocks, counted up from the bottleneck, get dropout (pix2pix 3).
    """

    in_channels: int = 3
    out_channels: int = 7
    base_channels: int = 64
    depth: int = 8
    norm: str = "batch"
    dropout: float = 0.5
    dropout_blocks: int = 3

    def __post_init__(self) -> None:
        if self.depth < 2:
            raise ValueError(f"depth must be >= 2, got {self.depth}")
        if self.norm not in GENERATOR_NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {', '.join(GENERATOR_NORMS)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dropout_blocks < 0:
            raise ValueError(f"dropout_blocks must be >= 0, got {self.dropout_blocks}")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.GroupNorm(num_groups(channels), channels)


class UNetGenerator(nn.Module):
    """(B, in_channels, H, W) -> (B, out_channels, H, W) in [-1, 1]; H and W multiples of :attr:`size_multiple`."""

    def __init__(self, config: UNetGeneratorConfig) -> None:
        super().__init__()
        self.config = c = config
        widths = [c.base_channels * min(2**i, 8) for i in range(c.depth)]
        inner = c.depth - 1
        down: list[nn.Module] = [nn.Conv2d(c.in_channels, widths[0], 4, stride=2, padding=1)]
        for i in range(1, c.depth):
            layers = [nn.LeakyReLU(0.2), nn.Conv2d(widths[i - 1], widths[i], 4, stride=2, padding=1)]
            if i < inner:  # pix2pix: no norm on the 1x1 bottleneck
                layers.append(_norm(c.norm, widths[i]))
            down.append(nn.Sequential(*layers))
        up: list[nn.Module] = []
        for i in range(c.depth):
            cin = widths[i] if i == inner else 2 * widths[i]
            if i == 0:
                up.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(cin, c.out_channels, 4, 2, 1), nn.Tanh()))
                continue
            layers = [nn.ReLU(), nn.ConvTranspose2d(cin, widths[i - 1], 4, stride=2, padding=1)]
            layers.append(_norm(c.norm, widths[i - 1]))
            # decoder blocks i = inner - 1, inner - 2, ... (just below the bottleneck) get dropout
            if c.dropout > 0 and inner - c.dropout_blocks <= i < inner:
                layers.append(nn.Dropout(c.dropout))
            up.append(nn.Sequential(*layers))
        self.down = nn.ModuleList(down)
        self.up = nn.ModuleList(up)

    @property
    def size_multiple(self) -> int:
        return 2**self.config.depth

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, H, W) -> (B, out_channels, H, W) in [-1, 1]."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.up[-1](skips[-1])
        for i in range(self.config.depth - 2, -1, -1):
            x = self.up[i](torch.cat([skips[i], x], dim=1))
        return x
