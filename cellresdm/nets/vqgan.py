"""VQ-GAN autoencoder (downsampling factor 4 by default) whose latent space hosts latent CellResDM.

Layout (taming-transformers / LDM ``VQModel`` without its attention blocks: convolutions and GroupNorm only):

- encoder: 3x3 ``conv_in``; per level ``num_res_blocks`` residual blocks of width ``channels * channel_mult[level]``
  and a stride-2 conv between levels (``len(channel_mult) - 1`` halvings, factor 4 for 3 levels); two middle
  blocks; GroupNorm -> SiLU -> 3x3 conv to ``embed_dim``;
- pre-quantisation 1x1 conv (``quant_conv``) -> :class:`VectorQuantizer` -> post-quantisation 1x1 conv;
- decoder: mirror of the encoder (``num_res_blocks + 1`` blocks per level, nearest x2 upsampling + conv).

Vector quantiser: nearest code by Euclidean distance, straight-through estimator (the decoder's gradient is copied
onto the encoder output), codebook loss ``||sg(z) - e||^2 + beta ||z - sg(e)||^2`` (beta 0.25, van den Oord
et al. 2017). ``l2_normalize=True`` (default) projects latents and codes onto the unit sphere before the lookup
(ViT-VQGAN): the diffusion space then has a fixed scale (every latent vector has norm 1, components in [-1, 1])
whatever the training, at the price of ``embed_dim - 1`` degrees of freedom per latent pixel, hence the default
``embed_dim=4``. ``l2_normalize=False, embed_dim=3`` is the plain lookup of the LDM VQ-f4 that ResShift uses; its
latent scale is whatever training makes it (std 0.19 in the measurement below). Demo data, 1500 steps (batch 8
fields, 64-px crops, no adversarial term) of a 64-channel [1, 2, 4] autoencoder with 1024 codes, validation MSE of
the 7 channels in [0, 1] (predicting each channel's mean: 0.032): plain D=3 0.0145, L2 D=3 0.0185, L2 D=4 0.0066.

Channel groups (the paper's "Our VQ-GAN"): the 7 target channels (DNA, RNA, ER, AGP, Mito, nuclei, cells) are cut
into the 3-channel images :data:`CHANNEL_GROUPS` = (Mito, AGP, DNA), (RNA, ER, DNA), (DNA, nuclei, cells) that
one autoencoder encodes; a channel in several groups (DNA) is decoded as the mean of its reconstructions.
All images are in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cellresdm import layout
from cellresdm.nets.layers import Downsample, Upsample, group_norm

__all__ = [
    "CHANNEL_GROUPS",
    "GROUP_CHANNELS",
    "VQGAN",
    "VQGANConfig",
    "VectorQuantizer",
    "merge_groups",
    "split_groups",
]

_TARGET = (*layout.IF_CHANNELS, *layout.OBJECT_CHANNELS)
#: Channel names of the three 3-channel images the autoencoder sees.
GROUP_CHANNELS: tuple[tuple[str, str, str], ...] = (
    ("Mito", "AGP", "DNA"),
    ("RNA", "ER", "DNA"),
    ("DNA", "nuclei", "cells"),
)
#: Indices of :data:`GROUP_CHANNELS` into the 7-channel target order (DNA, RNA, ER, AGP, Mito, nuclei, cells):
#: ((4, 3, 0), (1, 2, 0), (0, 5, 6)).
CHANNEL_GROUPS: tuple[tuple[int, ...], ...] = tuple(tuple(_TARGET.index(c) for c in g) for g in GROUP_CHANNELS)
_N_TARGET = len(_TARGET)
_GROUP_SIZE = 3

# rows of the distance matrix computed at once: bounds the (rows, codebook_size) matrix to ~64 MB in float32
_DISTANCE_ELEMENTS = 1 << 24


def split_groups(x7: Tensor) -> Tensor:
    """(B, 7, H, W) target channels -> (3B, 3, H, W) group images, sample-major (row ``3 b + g`` is group g of b)."""
    if x7.ndim != 4 or x7.shape[1] != _N_TARGET:
        raise ValueError(f"expected (B, {_N_TARGET}, H, W) target channels, got {tuple(x7.shape)}")
    groups = torch.stack([x7[:, list(g)] for g in CHANNEL_GROUPS], dim=1)  # (B, G, 3, H, W)
    return groups.flatten(0, 1)


def merge_groups(x: Tensor) -> Tensor:
    """Inverse of :func:`split_groups`: (3B, 3, H, W) -> (B, 7, H, W); a channel in several groups gets their mean."""
    n_groups = len(CHANNEL_GROUPS)
    if x.ndim != 4 or x.shape[1] != _GROUP_SIZE or x.shape[0] % n_groups:
        raise ValueError(f"expected ({n_groups}B, {_GROUP_SIZE}, H, W) group images, got {tuple(x.shape)}")
    groups = x.unflatten(0, (-1, n_groups))  # (B, G, 3, H, W)
    total = x.new_zeros(groups.shape[0], _N_TARGET, *x.shape[-2:])
    count = [0] * _N_TARGET
    for g, channels in enumerate(CHANNEL_GROUPS):
        for slot, c in enumerate(channels):
            total[:, c] += groups[:, g, slot]
            count[c] += 1
    return total / torch.tensor(count, dtype=x.dtype, device=x.device)[:, None, None]


@dataclass(frozen=True)
class VQGANConfig:
    """Hyper-parameters of :class:`VQGAN`; the widths, depth and codebook size are the LDM / ResShift VQ-f4's, the
    quantiser is the L2-normalised one with ``embed_dim=4`` (module doc).

    ``channel_mult`` has one entry per resolution level; the downsampling factor is ``2 ** (len - 1)``
    (4 for the default three levels).
    """

    in_channels: int = 3
    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    embed_dim: int = 4
    codebook_size: int = 8192
    beta: float = 0.25
    l2_normalize: bool = True
    dropout: float = 0.0
    norm_groups: int = 32

    def __post_init__(self) -> None:
        if len(self.channel_mult) < 1 or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty list of integers >= 1, got {self.channel_mult!r}")
        for name in ("in_channels", "channels", "num_res_blocks", "embed_dim", "codebook_size", "norm_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta!r}")


class _ResBlock(nn.Module):
    """GN -> SiLU -> conv -> GN -> SiLU -> dropout -> conv, plus a (1x1 when the widths differ) skip."""

    def __init__(self, cin: int, cout: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            group_norm(cin, groups),
            nn.SiLU(),
            nn.Conv2d(cin, cout, 3, padding=1),
            group_norm(cout, groups),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


def _encoder(cfg: VQGANConfig) -> nn.Sequential:
    ch = cfg.channels * cfg.channel_mult[0]
    layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch, 3, padding=1)]
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            layers.append(_ResBlock(ch, cfg.channels * mult, cfg.dropout, cfg.norm_groups))
            ch = cfg.channels * mult
        if level != len(cfg.channel_mult) - 1:
            layers.append(Downsample(ch))
    layers += [_ResBlock(ch, ch, cfg.dropout, cfg.norm_groups) for _ in range(2)]
    layers += [group_norm(ch, cfg.norm_groups), nn.SiLU(), nn.Conv2d(ch, cfg.embed_dim, 3, padding=1)]
    return nn.Sequential(*layers)


def _decoder(cfg: VQGANConfig) -> nn.Sequential:
    ch = cfg.channels * cfg.channel_mult[-1]
    layers: list[nn.Module] = [nn.Conv2d(cfg.embed_dim, ch, 3, padding=1)]
    layers += [_ResBlock(ch, ch, cfg.dropout, cfg.norm_groups) for _ in range(2)]
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
        for _ in range(cfg.num_res_blocks + 1):
            layers.append(_ResBlock(ch, cfg.channels * mult, cfg.dropout, cfg.norm_groups))
            ch = cfg.channels * mult
        if level:
            layers.append(Upsample(ch))
    layers += [group_norm(ch, cfg.norm_groups), nn.SiLU(), nn.Conv2d(ch, cfg.in_channels, 3, padding=1)]
    return nn.Sequential(*layers)


class VectorQuantizer(nn.Module):
    """Nearest-code lookup with a straight-through gradient and the codebook + commitment loss (module doc)."""

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25, l2_normalize: bool = True) -> None:
        super().__init__()
        self.beta = beta
        self.l2_normalize = l2_normalize
        self.codebook = nn.Embedding(codebook_size, dim)
        if l2_normalize:  # directions uniform on the sphere
            nn.init.normal_(self.codebook.weight)
        else:  # taming-transformers' initialisation
            nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def project(self, z: Tensor) -> Tensor:
        """The lookup space: ``z`` (B, D, h, w) itself, or unit vectors along D with ``l2_normalize``."""
        return F.normalize(z, dim=1) if self.l2_normalize else z

    def codes(self) -> Tensor:
        """(K, D) codebook in the lookup space."""
        return F.normalize(self.codebook.weight, dim=1) if self.l2_normalize else self.codebook.weight

    @torch.no_grad()
    def indices(self, z: Tensor) -> Tensor:
        """(B, h, w) int64 index of the nearest code of each latent vector of ``z`` (B, D, h, w)."""
        flat = self.project(z).permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
        codes = self.codes().float()
        codes_sq = codes.pow(2).sum(1)
        rows = max(1, _DISTANCE_ELEMENTS // codes.shape[0])
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2, in row chunks so a large batch never needs the full matrix
        out = torch.cat([(codes_sq - 2 * chunk @ codes.T).argmin(1) for chunk in flat.split(rows)])
        return out.view(z.shape[0], *z.shape[2:])

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``z`` (B, D, h, w) -> (quantised z with straight-through gradient (B, D, h, w), scalar codebook +
        commitment loss, code indices (B, h, w))."""
        z = self.project(z)
        idx = self.indices(z)
        e = F.embedding(idx, self.codes()).permute(0, 3, 1, 2).to(z.dtype)
        loss = F.mse_loss(e, z.detach()) + self.beta * F.mse_loss(z, e.detach())
        return z + (e - z).detach(), loss, idx


class VQGAN(nn.Module):
    """Vector-quantised autoencoder: (B, in_channels, H, W) in [-1, 1] <-> latent (B, embed_dim, H/f, W/f)."""

    def __init__(self, config: VQGANConfig | None = None) -> None:
        super().__init__()
        cfg = config or VQGANConfig()
        self.config = cfg
        self.encoder = _encoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 1)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.embed_dim, cfg.beta, cfg.l2_normalize)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 1)
        self.decoder = _decoder(cfg)

    @property
    def downsample_factor(self) -> int:
        """f: the latent is H/f x W/f (4 for three levels)."""
        return 2 ** (len(self.config.channel_mult) - 1)

    def _check(self, x: Tensor, channels: int) -> None:
        f = self.downsample_factor
        if x.ndim != 4 or x.shape[1] != channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"expected (B, {channels}, H, W) with H and W multiples of {f}, got {tuple(x.shape)}")

    def encode(self, x: Tensor) -> Tensor:
        """Pre-quantisation latent (B, embed_dim, H/f, W/f) of ``x`` (B, in_channels, H, W): the diffusion space."""
        self._check(x, self.config.in_channels)
        return self.quantizer.project(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor, quantize: bool = True) -> Tensor:
        """Image (B, in_channels, H, W) (unbounded; about [-1, 1]) from a latent (B, embed_dim, h, w), snapped to
        the nearest codes first when ``quantize``."""
        if quantize:
            z = self.quantizer(z)[0]
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Reconstruction (B, in_channels, H, W) of ``x`` through the quantiser and the scalar codebook loss."""
        z_q, codebook_loss, _ = self.quantizer(self.encode(x))
        return self.decoder(self.post_quant_conv(z_q)), codebook_loss

    def encode_groups(self, x7: Tensor) -> Tensor:
        """(B, 7, H, W) target channels in [-1, 1] -> (B, 3 * embed_dim, H/f, W/f), group by group."""
        if x7.ndim != 4 or x7.shape[1] != _N_TARGET:
            raise ValueError(f"expected (B, {_N_TARGET}, H, W) target channels, got {tuple(x7.shape)}")
        z = self.encode(split_groups(x7))  # (3B, D, h, w), sample-major
        return z.reshape(x7.shape[0], -1, *z.shape[-2:])

    def decode_groups(self, z: Tensor, quantize: bool = True) -> Tensor:
        """(B, 3 * embed_dim, h, w) -> (B, 7, h * f, w * f); DNA is the mean of its three reconstructions."""
        d, n_groups = self.config.embed_dim, len(CHANNEL_GROUPS)
        if z.ndim != 4 or z.shape[1] != n_groups * d:
            raise ValueError(f"expected (B, {n_groups * d}, h, w) group latents, got {tuple(z.shape)}")
        return merge_groups(self.decode(z.reshape(-1, d, *z.shape[-2:]), quantize=quantize))
