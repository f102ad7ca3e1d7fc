"""Convolutional diffusion UNet (improved-diffusion / Palette layout), optionally with a SPADE decoder.

Layout (:class:`~cellresdm.nets.layers.UNetSkeleton`, shared with the Swin UNet):

- ``conv_in`` 3x3 ``in_channels -> model_channels``; with ``use_timestep`` the integer step goes through a
  sinusoidal embedding and an MLP (width ``4 * model_channels``) that drives every residual block by FiLM
  (:class:`~cellresdm.nets.layers.ResBlock`, scale-shift GroupNorm).
- Encoder: per level ``num_res_blocks`` residual blocks of width ``model_channels * channel_mult[level]``, each
  followed by self-attention (:class:`AttentionBlock`) when the level is in ``attention_levels``; a stride-2 conv
  between levels.
- Middle: ResBlock, attention (``attention_in_middle``), ResBlock.
- Decoder: per level ``num_res_blocks + 1`` residual blocks on ``cat(h, skip)`` (+ attention), nearest x2 + conv
  between levels.
- Output: GroupNorm -> SiLU -> zero-initialised 3x3 conv (a fresh network outputs zeros).

``spade_decoder=True`` (semantic diffusion model style, Wang et al. 2022): the encoder sees only its input (the
noisy target); the middle and decoder blocks are :class:`SpadeResBlock`, whose two normalisations are
:class:`~cellresdm.nets.spade_norm.SPADENorm` modulated by the condition (B, cond_channels, H, W) given to
:meth:`UNet.forward`, resized to every feature map.

``use_timestep=False`` builds a time-free network (for regression baselines): no step embedding; the FiLM layers
of the residual blocks see a zero embedding, so their scale and shift reduce to learned per-channel constants
(their biases). ``forward(x)`` then needs no ``t``.

Input sizes: H and W divisible by ``2 ** (len(channel_mult) - 1)`` (:attr:`UNet.size_multiple`). Attention is
global over the feature map, so keep it at low resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from cellresdm.nets.layers import TimestepBlock, UNetSkeleton, attention_heads, group_norm, zero_module
from cellresdm.nets.spade_norm import SPADENorm

__all__ = ["AttentionBlock", "SpadeResBlock", "UNet", "UNetConfig"]


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of :class:`UNet` (defaults: the Palette reference network).

    ``attention_levels`` are indices into ``channel_mult`` (negative ones count from the lowest resolution).
    Heads: ``num_heads``, unless ``head_channels`` is set (then ``width // head_channels``).
    ``cond_channels`` and ``spade_hidden`` only matter with ``spade_decoder``.
    """

    in_channels: int = 10
    out_channels: int = 7
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4, 8)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = ()
    attention_in_middle: bool = True
    num_heads: int = 4
    head_channels: int | None = 32
    dropout: float = 0.0
    norm_groups: int = 32
    use_timestep: bool = True
    spade_decoder: bool = False
    cond_channels: int = 3
    spade_hidden: int = 128
    use_checkpoint: bool = False


class AttentionBlock(nn.Module):
    """Global multi-head self-attention over the pixels of (B, C, H, W): GroupNorm -> qkv (1x1) -> attention ->
    zero-initialised 1x1 projection, added to the input (a fresh block is the identity)."""

    def __init__(self, channels: int, num_heads: int, norm_groups: int = 32) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention width {channels} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.norm = group_norm(channels, norm_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        # contiguous (B, heads, HW, hd) inputs let SDPA use its fused kernels (several times faster on CPU)
        q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class SpadeResBlock(nn.Module):
    """:class:`~cellresdm.nets.layers.ResBlock` with both GroupNorms replaced by SPADE on the condition.

    ``h = conv(SiLU(SPADE(x, c)))``; ``h = SPADE(h, c) * (1 + scale) + shift`` (FiLM from the step embedding);
    ``h = zero_conv(dropout(SiLU(h)))``; output ``skip(x) + h``.
    """

    def __init__(
        self,
        in_channels: int,
        emb_dim: int,
        out_channels: int,
        cond_channels: int,
        spade_hidden: int = 128,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.in_norm = SPADENorm(in_channels, cond_channels, spade_hidden)
        self.in_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        self.out_norm = SPADENorm(out_channels, cond_channels, spade_hidden)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def _forward(self, x: Tensor, emb: Tensor, cond: Tensor) -> Tensor:
        h = self.in_conv(F.silu(self.in_norm(x, cond)))
        scale, shift = self.emb_layers(emb).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h, cond) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)

    def forward(self, x: Tensor, emb: Tensor, cond: Tensor) -> Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, cond, use_reentrant=False)
        return self._forward(x, emb, cond)


class _Stage(nn.Sequential):
    """Sequential that hands each child what it takes: (x, emb, cond), (x, emb) or x."""

    def forward(self, x: Tensor, emb: Tensor, cond: Tensor | None) -> Tensor:  # type: ignore[override]
        """x (B, C, H, W), emb (B, emb_dim), cond (B, cond_channels, H', W') or None -> (B, C', H'', W'')."""
        for layer in self:
            if isinstance(layer, SpadeResBlock):
                x = layer(x, emb, cond)
            elif isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            else:
                x = layer(x)
        return x


class UNet(UNetSkeleton):
    """``forward(x (B, in_channels, H, W), t (B,) int | None, cond (B, cond_channels, H, W) | None)
    -> (B, out_channels, H, W)``; ``t`` is required with ``use_timestep``, ``cond`` with ``spade_decoder``.

    The :class:`~cellresdm.nets.layers.UNetSkeleton` with :class:`AttentionBlock` as the level block, and
    :class:`SpadeResBlock` as the middle and decoder residual block with ``spade_decoder``."""

    stage = _Stage
    config: UNetConfig

    def __init__(self, config: UNetConfig | None = None) -> None:
        cfg = config or UNetConfig()
        super().__init__(
            cfg, cfg.attention_levels, cfg.attention_in_middle, "attention_levels", use_timestep=cfg.use_timestep
        )

    def res_block(self, in_channels: int, out_channels: int, decoder: bool) -> nn.Module:
        """:class:`SpadeResBlock` on the decoder side of a SPADE decoder, else a plain residual block."""
        cfg = self.config
        if decoder and cfg.spade_decoder:
            return SpadeResBlock(
                in_channels,
                self.emb_dim,
                out_channels,
                cfg.cond_channels,
                cfg.spade_hidden,
                cfg.dropout,
                cfg.use_checkpoint,
            )
        return super().res_block(in_channels, out_channels, decoder)

    def level_block(self, channels: int) -> AttentionBlock:
        """Global self-attention over a (B, channels, H, W) map."""
        cfg = self.config
        return AttentionBlock(channels, attention_heads(channels, cfg.num_heads, cfg.head_channels), cfg.norm_groups)

    def forward(self, x: Tensor, t: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        """x (B, in_channels, H, W), t (B,) integer step, cond (B, cond_channels, H', W') -> (B, out_channels, H, W)."""
        cfg = self.config
        b = x.shape[0]
        if cfg.spade_decoder and (cond is None or cond.ndim != 4 or cond.shape[:2] != (b, cfg.cond_channels)):
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(f"the SPADE decoder needs cond of shape ({b}, {cfg.cond_channels}, H, W), got {got}")
        return self._forward(x, t, cond)
