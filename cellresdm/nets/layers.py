"""Shared network building blocks (improved-diffusion style), reused by the Swin UNet and the baselines.

- :func:`timestep_embedding`: sinusoidal embedding of the integer diffusion step.
- :class:`TimestepEmbedder`: sinusoid -> Linear -> SiLU -> Linear (width ``4 * model_channels`` by convention).
- :func:`group_norm`: GroupNorm with the largest group count <= ``max_groups`` that divides the channels.
- :class:`ResBlock`: GroupNorm -> SiLU -> conv, then FiLM from the embedding applied after the second norm
  (``h = norm(h) * (1 + scale) + shift``), SiLU -> dropout -> zero-initialised conv, plus a (1x1) skip, so a fresh
  block is the identity (up to the skip projection).
- :class:`Downsample` (3x3 conv, stride 2) and :class:`Upsample` (nearest x2, then 3x3 conv).
- :class:`TimestepSequential`: an ``nn.Sequential`` that hands the embedding to the children that take it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (integer or float) steps ``t`` (B,) -> (B, dim), float32.

    First half cosines, second half sines, frequencies ``max_period ** (-i / half)``; an odd ``dim`` gets a zero pad.
    """
    if t.ndim != 1:
        raise ValueError(f"timestep tensor must be 1-D (B,), got shape {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Integer step (B,) -> embedding (B, emb_dim): sinusoid of width ``freq_dim`` -> Linear -> SiLU -> Linear."""

    def __init__(self, freq_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, t: Tensor) -> Tensor:
        emb = timestep_embedding(t, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


def num_groups(channels: int, max_groups: int = 32) -> int:
    """Largest group count <= ``max_groups`` that divides ``channels`` (``min(32, channels)`` when it divides)."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """``nn.GroupNorm`` over ``channels`` with :func:`num_groups` groups (torch default eps 1e-5, affine)."""
    return nn.GroupNorm(num_groups(channels, max_groups), channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class TimestepBlock(nn.Module):
    """Marker base class: ``forward(x, emb)``."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepSequential(nn.Sequential):
    """Sequential container passing ``emb`` to :class:`TimestepBlock` children and only ``x`` to the others."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class ResBlock(TimestepBlock):
    """Residual block with FiLM timestep conditioning (improved-diffusion ``use_scale_shift_norm=True``).

    ``h = conv(SiLU(GN(x)))``; ``scale, shift = Linear(SiLU(emb))``; ``h = GN(h) * (1 + scale) + shift``;
    ``h = zero_conv(dropout(SiLU(h)))``; output ``skip(x) + h`` with ``skip`` a 1x1 conv when the widths differ.
    """

    def __init__(
        self,
        in_channels: int,
        emb_dim: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        norm_groups: int = 32,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(
            group_norm(in_channels, norm_groups), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        self.out_norm = group_norm(out_channels, norm_groups)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb_layers(emb).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)


class Downsample(nn.Module):
    """Halve H and W with a 3x3 convolution of stride 2 (odd sizes round up)."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour interpolation, then a 3x3 convolution."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
