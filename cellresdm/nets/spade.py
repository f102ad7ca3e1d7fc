"""SPADE generator (Park et al. 2019) conditioned on the brightfield planes, for the ``spade`` baseline.

No VAE encoder and no latent code (SPADE's ``use_vae=False`` path): the generator starts from the BF planes
average-pooled by ``2**n_up`` and embedded by a 3x3 conv, then ``n_up`` times doubles the resolution, each level one
:class:`SPADEResBlock` whose normalisations (:class:`cellresdm.nets.spade_norm.SPADENorm`) are modulated by the BF
planes pooled to that level. A final LeakyReLU -> 3x3 conv -> tanh gives the output in [-1, 1]. The network is
fully convolutional and deterministic, so tiles of any multiple of ``2**n_up`` work.

Widths: level ``k`` (0 = coarsest) has ``base_channels * min(2**(n_up - k), 16)`` channels (SPADE: 16 nf at the
bottom, 1 nf at full resolution).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from cellresdm.nets.spade_norm import NORMS, SPADENorm

__all__ = ["SPADEGenerator", "SPADEGeneratorConfig", "SPADEResBlock"]


@dataclass(frozen=True)
class SPADEGeneratorConfig:
    """Architecture of :class:`SPADEGenerator`.

    Attributes:
        cond_channels: channels of the condition (3 BF planes in [-1, 1]).
        out_channels: output channels (7).
        base_channels: SPADE ``ngf`` (64): width at full resolution.
        n_up: number of x2 upsamplings (SPADE "normal": 5); inputs must be multiples of ``2**n_up``.
        hidden: width of the conv that embeds the condition inside each SPADE norm (SPADE 128).
        norm: parameter-free norm inside SPADE: ``batch`` (SPADE's sync batch norm; eval uses running
            statistics, so every tile of a field is normalised alike), ``group`` or ``instance``.
        spectral_norm: spectral normalisation on the generator's convolutions (SPADE does).
    """

    cond_channels: int = 3
    out_channels: int = 7
    base_channels: int = 64
    n_up: int = 5
    hidden: int = 128
    norm: str = "batch"
    spectral_norm: bool = True

    def __post_init__(self) -> None:
        if self.n_up < 1:
            raise ValueError(f"n_up must be >= 1, got {self.n_up}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown SPADE norm {self.norm!r}; choose one of {', '.join(NORMS)}")


class SPADEResBlock(nn.Module):
    """SPADE residual block: ``[SPADE -> LeakyReLU(0.2) -> 3x3 conv] x 2`` plus a shortcut (SPADE -> 1x1 conv
    when the widths differ). (B, cin, H, W), cond (B, Cc, H, W) -> (B, cout, H, W)."""

    def __init__(self, cin: int, cout: int, cond_channels: int, hidden: int, norm: str, spectral_norm: bool) -> None:
        super().__init__()
        mid = min(cin, cout)

        def sn(layer: nn.Module) -> nn.Module:
            return _spectral_norm(layer) if spectral_norm else layer

        self.norm_0 = SPADENorm(cin, cond_channels, hidden, norm)
        self.conv_0 = sn(nn.Conv2d(cin, mid, 3, padding=1))
        self.norm_1 = SPADENorm(mid, cond_channels, hidden, norm)
        self.conv_1 = sn(nn.Conv2d(mid, cout, 3, padding=1))
        self.learned_shortcut = cin != cout
        if self.learned_shortcut:
            self.norm_s = SPADENorm(cin, cond_channels, hidden, norm)
            self.conv_s = sn(nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        skip = self.conv_s(self.norm_s(x, cond)) if self.learned_shortcut else x
        h = self.conv_0(F.leaky_relu(self.norm_0(x, cond), 0.2))
        h = self.conv_1(F.leaky_relu(self.norm_1(h, cond), 0.2))
        return skip + h


class SPADEGenerator(nn.Module):
    """BF planes (B, cond_channels, H, W) in [-1, 1] -> (B, out_channels, H, W) in [-1, 1] (module doc)."""

    def __init__(self, config: SPADEGeneratorConfig) -> None:
        super().__init__()
        self.config = c = config
        widths = [c.base_channels * min(2 ** (c.n_up - k), 16) for k in range(c.n_up + 1)]
        self.head = nn.Conv2d(c.cond_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            SPADEResBlock(widths[max(k - 1, 0)], widths[k], c.cond_channels, c.hidden, c.norm, c.spectral_norm)
            for k in range(c.n_up + 1)
        )
        self.out = nn.Conv2d(widths[-1], c.out_channels, 3, padding=1)

    @property
    def size_multiple(self) -> int:
        return 2**self.config.n_up

    def forward(self, cond: Tensor) -> Tensor:
        """(B, cond_channels, H, W) -> (B, out_channels, H, W); H, W multiples of :attr:`size_multiple`."""
        # the condition at every level, finest first; average pooling (not SPADE's nearest resizing of
        # label maps) keeps the information of a continuous image
        pyramid = [cond]
        for _ in range(self.config.n_up):
            pyramid.append(F.avg_pool2d(pyramid[-1], 2))
        x = self.head(pyramid[-1])
        for k, block in enumerate(self.blocks):
            if k > 0:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(x, pyramid[self.config.n_up - k])
        return self.out(F.leaky_relu(x, 0.2)).tanh()
