"""UNet with Swin transformer blocks, the CellResDM / ResShift (``UNetModelSwin``) denoising backbone.

Layout (improved-diffusion UNet, :class:`~cellresdm.nets.layers.UNetSkeleton`, shared with the Palette UNet):

- ``conv_in`` 3x3 ``in_channels -> model_channels``; the integer step goes through a sinusoidal embedding and an
  MLP (width ``4 * model_channels``) that drives every :class:`~cellresdm.nets.layers.ResBlock` by FiLM.
- Encoder: per level ``num_res_blocks`` residual blocks of width ``model_channels * channel_mult[level]``; at the
  levels in ``swin_levels`` the first of them is followed by a :class:`SwinLayer` (``swin_depth`` Swin blocks,
  regular and shifted windows alternating); a stride-2 3x3 conv between levels.
- Middle: ResBlock, SwinLayer (``swin_in_middle``), ResBlock.
- Decoder: per level ``num_res_blocks + 1`` residual blocks on ``cat(h, skip)``, the first one followed by a
  SwinLayer at Swin levels; nearest x2 + 3x3 conv between levels.
- Output: GroupNorm -> SiLU -> zero-initialised 3x3 conv, so a fresh network outputs zeros.

Swin placement and width follow ResShift's ``UNetModelSwin``: one Swin layer per level and side (after the first
residual block), and with ``swin_embed_dim`` (ResShift: 192) each layer projects the UNet features to that width
(per-pixel linear maps in and out, ResShift's ``BasicLayer`` patch embedding with patch size 1). With
``swin_embed_dim=None`` the blocks run on the feature width itself. Heads: ``num_heads`` per Swin layer (default
4), or ``width // head_channels`` when ``head_channels`` is set.

Input sizes: with ``L = len(channel_mult)``, H and W must be divisible by ``2**(L-1)``; and at every level ``l``
that carries Swin blocks (``swin_levels``, plus ``L-1`` for the middle block) each side ``H / 2**l`` must be a
multiple of ``window_size`` or at most ``window_size``. A side no larger than the window uses the feature size as
its window and is not shifted (a map exactly one window big is therefore plain global attention in every block).
Multiples of ``2**max(swin level) * window_size`` always work (64 for the paper config, 32 for ``(1,2,2)``).
:meth:`SwinUNet.check_input_size` raises ``ValueError`` naming the sizes otherwise.

Measured parameter counts (``count_parameters``): paper size (160, (1,2,2,4), 2 res blocks, Swin depth 2, window 8,
4 heads, Swin embedding 192, default swin_levels (1, 2) + middle: 5 Swin layers) 114,419,887 (109,222,087 of them
outside the Swin layers; ResShift's 9 Swin layers on all four levels come to ~118M); demo size (32, (1,2,2), no
Swin embedding) 2,156,591.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from cellresdm.nets.layers import UNetSkeleton, attention_heads, count_parameters

__all__ = [
    "SwinBlock",
    "SwinLayer",
    "SwinUNet",
    "SwinUNetConfig",
    "WindowAttention",
    "count_parameters",
    "relative_position_index",
    "shifted_window_mask",
    "window_index",
    "window_partition",
]


# ----------------------------------------------------------------------------------------------------------------
# Window helpers (feature maps channels-last: (B, H, W, C))


def window_partition(x: Tensor, wh: int, ww: int) -> Tensor:
    """(B, H, W, C) -> (B * nW, wh * ww, C), windows in row-major order per image (H % wh == W % ww == 0)."""
    b, h, w, c = x.shape
    x = x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * (h // wh) * (w // ww), wh * ww, c)


def window_index(
    h: int, w: int, window: tuple[int, int], shift: tuple[int, int], device: torch.device | None = None
) -> Tensor:
    """(nW * N,) row-major pixel indices of the windows taken after ``torch.roll(x, (-sh, -sw))``.

    ``x.view(B, H * W, C).index_select(1, index).view(B * nW, N, C)`` equals
    ``window_partition(torch.roll(x, (-sh, -sw), (1, 2)), wh, ww)`` in one gather; ``index.argsort()`` is the
    inverse (windows back to the unrolled (H * W) map).
    """
    pixels = torch.arange(h * w, device=device).view(1, h, w, 1)
    return window_partition(torch.roll(pixels, (-shift[0], -shift[1]), (1, 2)), *window).reshape(-1)


def shifted_window_mask(
    h: int, w: int, window: tuple[int, int], shift: tuple[int, int], device: torch.device | None = None
) -> Tensor:
    """Additive attention mask (nW, N, N) for windows taken after ``torch.roll(x, (-sh, -sw))``.

    Every pixel gets a region id (up to 3 bands per axis: the untouched part, the last full window, the wrapped
    ``shift`` strip); two tokens of one window may attend to each other only when their region ids are equal.
    Entries are 0 (allowed) or ``-inf`` (blocked); the diagonal is always 0.
    """
    wh, ww = window
    sh, sw = shift
    img = torch.zeros(h, w, device=device)
    hs = (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)) if sh else (slice(None),)
    ws = (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)) if sw else (slice(None),)
    region = 0
    for a in hs:
        for b in ws:
            img[a, b] = region
            region += 1
    ids = window_partition(img[None, :, :, None], wh, ww).squeeze(-1)  # (nW, N)
    blocked = ids[:, None, :] != ids[:, :, None]
    return torch.zeros(blocked.shape, device=device).masked_fill(blocked, float("-inf"))


def relative_position_index(wh: int, ww: int, max_window: int) -> Tensor:
    """(N, N) indices into a ((2*max_window-1)**2)-row bias table for a (wh, ww) window (wh, ww <= max_window)."""
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :] + (max_window - 1)  # (2, N, N), in [0, 2*max_window-2]
    return rel[0] * (2 * max_window - 1) + rel[1]


# ----------------------------------------------------------------------------------------------------------------
# Swin blocks


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias table.

    Runs on ``scaled_dot_product_attention`` with ``bias (+ shift mask)`` as the additive ``attn_mask``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Swin width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.window_size = window_size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_bias = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.rel_bias, std=0.02)
        self.register_buffer("_index", relative_position_index(window_size, window_size, window_size), persistent=False)

    def bias(self, wh: int, ww: int) -> Tensor:
        """(heads, N, N) relative position bias for a (wh, ww) window."""
        if (wh, ww) == (self.window_size, self.window_size):
            index = self._index
        else:
            index = relative_position_index(wh, ww, self.window_size).to(self.rel_bias.device)
        n = wh * ww
        return self.rel_bias[index.reshape(-1)].view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: Tensor, window: tuple[int, int], mask: Tensor | None = None) -> Tensor:
        """x (B * nW, N, C) windows (image-major); ``mask`` (nW, N, N) additive or None -> (B * nW, N, C)."""
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B * nW, heads, N, hd)
        bias = self.bias(*window)
        if mask is None:
            attn_mask = bias[None].to(q.dtype)
        else:
            nw = mask.shape[0]
            attn_mask = (bias[None] + mask[:, None]).to(q.dtype)  # (nW, heads, N, N)
            # Copied per image: SDPA broadcasts a mask over images only for 5-D inputs, which it runs on its slow
            # (and not bit-identical) math path; one call per image is slower still on CPU and on GPU trades this
            # copy for one of the outputs, as large at the paper's widths.
            attn_mask = attn_mask[None].expand(bw // nw, -1, -1, -1, -1).reshape(bw, self.num_heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    """LN -> (shifted) window attention -> residual -> LN -> MLP (GELU) -> residual, on (B, H, W, C).

    ``shift=True`` rolls the map by ``-window_size // 2`` before windowing (and back after) and masks attention
    between tokens of different regions. A side at most ``window_size`` long becomes a single window and that
    side is not shifted.

    Roll + window partition (and its inverse) run as one ``index_select`` each with indices that, like the shift
    mask, depend only on the map size: they are built on the first call for a (H, W, device, dtype) and kept for
    the next calls (a plain attribute, not part of the state_dict).
    """

    def __init__(
        self, dim: int, num_heads: int, window_size: int, shift: bool, mlp_ratio: float = 4.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )
        self._windows: tuple[tuple, tuple[int, int], Tensor, Tensor, Tensor | None] | None = None

    def geometry(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Effective (window, shift) for an (h, w) map; ValueError when a side does not tile."""
        ws = self.window_size
        wh, ww = min(ws, h), min(ws, w)
        if h % wh or w % ww:
            raise ValueError(f"Swin feature map {h}x{w} cannot be tiled by {wh}x{ww} windows (window_size {ws})")
        sh = ws // 2 if self.shift and h > ws else 0
        sw = ws // 2 if self.shift and w > ws else 0
        return (wh, ww), (sh, sw)

    def windows(self, h: int, w: int, device: torch.device) -> tuple[tuple[int, int], Tensor, Tensor, Tensor | None]:
        """(window, gather index (nW * N,), its inverse (H * W,), shift mask (nW, N, N) or None) for an (h, w) map.

        Cached for the last (h, w, device, bias dtype); built outside inference mode, so that a cache filled while
        sampling also serves training (``index_select`` saves its index for the backward pass).
        """
        key = (h, w, device, self.attn.rel_bias.dtype)
        if self._windows is None or self._windows[0] != key:
            window, shift = self.geometry(h, w)
            with torch.inference_mode(False):
                index = window_index(h, w, window, shift, device)
                mask = None
                if shift != (0, 0):
                    mask = shifted_window_mask(h, w, window, shift, device).to(self.attn.rel_bias.dtype)
                self._windows = (key, window, index, index.argsort(), mask)
        return self._windows[1:]

    def forward(self, x: Tensor) -> Tensor:
        """x (B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        (wh, ww), index, inverse, mask = self.windows(h, w, x.device)
        y = self.norm1(x).view(b, h * w, c).index_select(1, index).view(-1, wh * ww, c)
        y = self.attn(y, (wh, ww), mask)
        x = x + y.view(b, h * w, c).index_select(1, inverse).view(b, h, w, c)
        return x + self.mlp(self.norm2(x))


class SwinLayer(nn.Module):
    """``depth`` Swin blocks (regular, shifted, regular, ...) on a (B, C, H, W) feature map.

    With ``embed_dim`` (ResShift's ``BasicLayer`` with ``swin_embed_dim``), a per-pixel linear map (a 1x1 conv)
    takes the ``dim`` features to ``embed_dim``, the blocks run at that width and a second one maps back to
    ``dim``; the layer output is that projection (no skip around the layer, as in ResShift). Without it the
    blocks run on the ``dim`` features themselves.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        width = embed_dim or dim
        self.embed = nn.Linear(dim, width) if embed_dim else None
        self.blocks = nn.ModuleList(
            SwinBlock(width, num_heads, window_size, shift=i % 2 == 1, mlp_ratio=mlp_ratio, dropout=dropout)
            for i in range(depth)
        )
        self.unembed = nn.Linear(width, dim) if embed_dim else None

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> (B, C, H, W)."""
        # Channels-last once up front (the embedding writes a fresh one): on a permuted view every LayerNorm would
        # copy its input to contiguous.
        y = x.permute(0, 2, 3, 1)
        y = self.embed(y) if self.embed is not None else y.contiguous()
        for block in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                y = checkpoint(block, y, use_reentrant=False)
            else:
                y = block(y)
        if self.unembed is not None:
            y = self.unembed(y)
        return y.permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# UNet


@dataclass(frozen=True)
class SwinUNetConfig:
    """Hyper-parameters of :class:`SwinUNet` (defaults: the paper / ResShift size).

    ``swin_levels`` are indices into ``channel_mult`` (negative ones count from the lowest resolution); a Swin
    layer follows the first residual block of those levels in the encoder and in the decoder, plus one in the
    middle block when ``swin_in_middle``. ResShift, on 64x64 latents, has Swin at all four levels; in pixel space
    the default ``(1, 2)`` skips the full-resolution level (window attention on 512x512 maps is costly and
    convolutions do well there) and the deepest level's encoder/decoder (its map gets the middle layer); for
    ``(1, 2, 2, 4)`` on 512x512 inputs Swin runs on the 256, 128 (encoder/decoder) and 64 (middle) maps.
    ``swin_embed_dim``: width of the Swin blocks (ResShift 192), None for the feature width (no projections).
    Heads: ``num_heads`` per layer, unless ``head_channels`` is set (then ``width // head_channels``).
    """

    in_channels: int = 14  # cat(x_t scaled (7), y0 (7))
    out_channels: int = 7
    model_channels: int = 160
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    swin_depth: int = 2
    window_size: int = 8
    num_heads: int = 4
    head_channels: int | None = None
    swin_embed_dim: int | None = 192
    mlp_ratio: float = 4.0
    swin_levels: tuple[int, ...] = (1, 2)
    swin_in_middle: bool = True
    dropout: float = 0.0
    norm_groups: int = 32
    use_checkpoint: bool = False


class SwinUNet(UNetSkeleton):
    """x_0-predicting denoiser: ``forward(x (B, in_channels, H, W), t (B,) int) -> (B, out_channels, H, W)``.

    The :class:`~cellresdm.nets.layers.UNetSkeleton` with a :class:`SwinLayer` as the level block."""

    config: SwinUNetConfig

    def __init__(self, config: SwinUNetConfig | None = None) -> None:
        cfg = config or SwinUNetConfig()
        if cfg.window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {cfg.window_size}")
        super().__init__(cfg, cfg.swin_levels, cfg.swin_in_middle, "swin_levels", first_block_only=True)

    def level_block(self, channels: int) -> SwinLayer:
        """``swin_depth`` Swin blocks on a (B, channels, H, W) map."""
        cfg = self.config
        heads = attention_heads(cfg.swin_embed_dim or channels, cfg.num_heads, cfg.head_channels)
        return SwinLayer(
            channels,
            cfg.swin_depth,
            heads,
            cfg.window_size,
            cfg.mlp_ratio,
            cfg.dropout,
            cfg.use_checkpoint,
            cfg.swin_embed_dim,
        )

    def _swin_map_levels(self) -> set[int]:
        """Levels whose feature maps go through Swin blocks (``swin_levels``, plus the deepest with the middle)."""
        return set(self.block_levels) | ({len(self.config.channel_mult) - 1} if self.config.swin_in_middle else set())

    @property
    def size_multiple(self) -> int:
        """Sizes that are multiples of this always pass :meth:`check_input_size` (what a tiled sampler pads to)."""
        levels = self._swin_map_levels()
        factor = self.downsample_factor
        return max(factor, 2 ** max(levels) * self.config.window_size) if levels else factor

    def check_input_size(self, h: int, w: int) -> None:
        """Raise ``ValueError`` naming the sizes unless (h, w) passes through every level (see module doc)."""
        super().check_input_size(h, w)
        levels = self._swin_map_levels()
        ws = self.config.window_size
        for lvl in sorted(levels):
            fh, fw = h >> lvl, w >> lvl
            if any(s > ws and s % ws for s in (fh, fw)):
                safe = 2 ** max(levels) * ws
                raise ValueError(
                    f"input size {h}x{w}: the Swin level {lvl} feature map is {fh}x{fw}; each side must be a "
                    f"multiple of window_size={ws} or at most {ws} (sizes that are multiples of {safe} always work)"
                )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x (B, in_channels, H, W), t (B,) integer diffusion step -> (B, out_channels, H, W)."""
        return self._forward(x, t)
