"""Shared network building blocks (improved-diffusion style), reused by the Swin UNet and the baselines.

- :func:`timestep_embedding`: sinusoidal embedding of the integer diffusion step.
- :class:`TimestepEmbedder`: sinusoid -> Linear -> SiLU -> Linear (width ``4 * model_channels`` by convention).
- :func:`group_norm`: GroupNorm with the largest group count <= ``max_groups`` that divides the channels.
- :class:`ResBlock`: GroupNorm -> SiLU -> conv, then FiLM from the embedding applied after the second norm
  (``h = norm(h) * (1 + scale) + shift``), SiLU -> dropout -> zero-initialised conv, plus a (1x1) skip, so a fresh
  block is the identity (up to the skip projection).
- :class:`Downsample` (3x3 conv, stride 2) and :class:`Upsample` (nearest x2, then 3x3 conv).
- :class:`TimestepSequential`: an ``nn.Sequential`` that hands the embedding to the children that take it.
- :class:`UNetSkeleton`: the improved-diffusion UNet (encoder levels, middle, decoder levels with skips, output
  head) and its forward pass, shared by the Palette UNet and the Swin UNet, which supply the per-level block
  (self-attention or a Swin layer) and, for the SPADE decoder, the decoder's residual block.
"""

from __future__ import annotations

import math
from typing import Protocol

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


def attention_heads(width: int, num_heads: int, head_channels: int | None) -> int:
    """Heads of an attention layer of ``width`` channels: ``width // head_channels`` when set, else ``num_heads``."""
    if head_channels:
        if width % head_channels:
            raise ValueError(f"width {width} is not divisible by head_channels={head_channels}")
        return width // head_channels
    return num_heads


class UNetLayout(Protocol):
    """The config fields :class:`UNetSkeleton` reads."""

    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    dropout: float
    norm_groups: int
    use_checkpoint: bool


class UNetSkeleton(nn.Module):
    """improved-diffusion UNet skeleton; subclasses supply :meth:`level_block` (and may override :meth:`res_block`).

    - ``time_embed``: :class:`TimestepEmbedder` (width ``emb_dim = 4 * model_channels``), or None (time-free: the
      residual blocks see a zero embedding).
    - ``input_blocks``: 3x3 conv ``in_channels -> model_channels``; per level ``num_res_blocks`` residual blocks of
      width ``model_channels * channel_mult[level]``, each followed by ``level_block(width)`` when the level is in
      ``block_levels``; a stride-2 conv (:class:`Downsample`) between levels.
    - ``middle_block``: residual block, ``level_block`` (``block_in_middle``), residual block.
    - ``output_blocks``: per level (deepest first) ``num_res_blocks + 1`` residual blocks on ``cat(h, skip)``
      (+ ``level_block`` at block levels), :class:`Upsample` after the last one of every level but the first.
    - ``out``: GroupNorm -> SiLU -> zero-initialised 3x3 conv (a fresh network outputs zeros).

    Every entry of ``input_blocks``, ``middle_block`` and ``output_blocks`` is a ``stage`` (a sequential container
    called as ``stage(h, emb, *extra)``, see :meth:`_forward`). Modules are built, and so initialised from the
    global RNG, in that order.
    """

    stage: type[nn.Sequential] = TimestepSequential

    def __init__(
        self,
        config: UNetLayout,
        block_levels: tuple[int, ...],
        block_in_middle: bool,
        levels_name: str,
        use_timestep: bool = True,
        first_block_only: bool = False,
    ) -> None:
        """``block_levels``: indices into ``channel_mult`` (negative ones count from the deepest level), checked and
        named ``levels_name`` in errors; ``use_timestep=False`` builds no ``time_embed``; ``first_block_only``: the
        level block follows only the first residual block of a level on each side (ResShift's Swin placement)
        instead of every one (improved-diffusion's attention placement)."""
        super().__init__()
        cfg = self.config = config
        n_levels = len(cfg.channel_mult)
        if n_levels < 1 or cfg.num_res_blocks < 1 or cfg.model_channels < 1:
            raise ValueError("channel_mult must be non-empty; num_res_blocks and model_channels must be >= 1")
        for lvl in block_levels:
            if not -n_levels <= lvl < n_levels:
                raise ValueError(f"{levels_name} entry {lvl} is out of range for {n_levels} levels")
        self.block_levels = frozenset(lvl % n_levels for lvl in block_levels)
        mc = cfg.model_channels
        self.emb_dim = 4 * mc
        self.time_embed = TimestepEmbedder(mc, self.emb_dim) if use_timestep else None

        self.input_blocks = nn.ModuleList([self.stage(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        skips = [mc]
        ch = mc
        for level, mult in enumerate(cfg.channel_mult):
            for i in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [self.res_block(ch, mult * mc, decoder=False)]
                ch = mult * mc
                if level in self.block_levels and not (first_block_only and i):
                    layers.append(self.level_block(ch))
                self.input_blocks.append(self.stage(*layers))
                skips.append(ch)
            if level != n_levels - 1:
                self.input_blocks.append(self.stage(Downsample(ch)))
                skips.append(ch)
        middle: list[nn.Module] = [self.res_block(ch, ch, decoder=True)]
        if block_in_middle:
            middle.append(self.level_block(ch))
        middle.append(self.res_block(ch, ch, decoder=True))
        self.middle_block = self.stage(*middle)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [self.res_block(ch + skips.pop(), mult * mc, decoder=True)]
                ch = mult * mc
                if level in self.block_levels and not (first_block_only and i):
                    layers.append(self.level_block(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(self.stage(*layers))
        self.out = nn.Sequential(
            group_norm(ch, cfg.norm_groups), nn.SiLU(), zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        )

    def res_block(self, in_channels: int, out_channels: int, decoder: bool) -> nn.Module:
        """Residual block ``in_channels -> out_channels`` (``decoder``: middle or decoder side); a :class:`ResBlock`."""
        cfg = self.config
        return ResBlock(in_channels, self.emb_dim, out_channels, cfg.dropout, cfg.norm_groups, cfg.use_checkpoint)

    def level_block(self, channels: int) -> nn.Module:  # pragma: no cover - interface
        """Block after each residual block of the ``block_levels`` (and in the middle): (B, C, H, W) -> same."""
        raise NotImplementedError

    @property
    def downsample_factor(self) -> int:
        """``2 ** (len(channel_mult) - 1)``: the deepest level's size is the input's divided by this."""
        return 2 ** (len(self.config.channel_mult) - 1)

    @property
    def size_multiple(self) -> int:
        """Sizes that are multiples of this always pass :meth:`check_input_size` (what a tiled sampler pads to)."""
        return self.downsample_factor

    def check_input_size(self, h: int, w: int) -> None:
        """Raise ``ValueError`` naming the sizes unless H and W are multiples of :attr:`downsample_factor`."""
        m = self.downsample_factor
        if h % m or w % m:
            raise ValueError(f"input size {h}x{w}: H and W must be multiples of {m} (2**(len(channel_mult)-1))")

    def embed(self, t: Tensor | None, x: Tensor) -> Tensor:
        """Step embedding (B, emb_dim) of t (B,) or a scalar step for x (B, ...); zeros without ``time_embed``."""
        b = x.shape[0]
        if self.time_embed is None:
            return torch.zeros(b, self.emb_dim, device=x.device, dtype=x.dtype)
        if t is None:
            raise ValueError("this UNet is timestep-conditioned: pass t (B,)")
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"expected t of shape ({b},), got {tuple(t.shape)}")
        return self.time_embed(t)

    def _forward(self, x: Tensor, t: Tensor | None, *extra: Tensor | None) -> Tensor:
        """Checked forward pass: x (B, in_channels, H, W), t (B,) -> (B, out_channels, H, W); ``extra`` goes to every
        stage after (h, emb)."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected x of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        self.check_input_size(x.shape[2], x.shape[3])
        emb = self.embed(t, x)
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, *extra)
            hs.append(h)
        h = self.middle_block(h, emb, *extra)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, *extra)
        return self.out(h)

    def count_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters."""
        return count_parameters(self, trainable_only)
