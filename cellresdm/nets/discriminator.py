"""PatchGAN discriminators and the GAN losses of the adversarial baselines (pix2pix, SPADE, VQ-GAN).

- :class:`PatchDiscriminator`: the pix2pix 70x70 PatchGAN, (B, C, H, W) -> (B, 1, h, w) logits, one per
  overlapping patch; :meth:`PatchDiscriminator.features` also returns the intermediate activations.
- :class:`MultiScaleDiscriminator`: pix2pixHD/SPADE multi-scale PatchGAN; its forward returns a
  :class:`DiscriminatorOutput` (per-scale logits and per-scale intermediate features for feature matching).
- :func:`discriminator_loss`, :func:`generator_loss`: hinge, least-squares (``lsgan``) or binary cross-entropy
  (``bce``) objectives on logits; a list of per-scale logits is averaged over the scales.
- :func:`frozen_call`: evaluate a discriminator with detached parameters (the generator's adversarial term).
- :func:`feature_matching_loss`: pix2pixHD feature matching (L1 between the discriminator's activations on real and
  generated images).

Every loss takes logits as a tensor, a list of per-scale tensors, or a :class:`DiscriminatorOutput`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from cellresdm.nets.layers import num_groups

__all__ = [
    "GAN_MODES",
    "NORMS",
    "DiscriminatorOutput",
    "MultiScaleDiscriminator",
    "PatchDiscriminator",
    "discriminator_loss",
    "feature_matching_loss",
    "frozen_call",
    "generator_loss",
]

NORMS = ("instance", "group", "none")
GAN_MODES = ("hinge", "lsgan", "bce")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "group":
        return nn.GroupNorm(num_groups(channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown discriminator norm {kind!r}; choose one of {', '.join(NORMS)}")


class PatchDiscriminator(nn.Module):
    """pix2pix PatchGAN: 4x4 convolutions with LeakyReLU(0.2), ``n_layers`` of them with stride 2, then one with
    stride 1 and a 1-channel output conv. ``n_layers=3`` gives 70x70 receptive fields.

    Widths: ``base_channels * min(2**i, 8)`` at layer ``i``; no normalisation after the first conv (as pix2pix).

    Args:
        in_channels: C of the input (B, C, H, W); for a conditional GAN the condition and image concatenated.
        base_channels: width of the first conv.
        n_layers: number of stride-2 convolutions (the input shrinks by ``2**n_layers``, minus 2 px per side
            for the two stride-1 convs).
        norm: ``instance`` (pix2pix), ``group`` or ``none``.
        spectral_norm: wrap every conv in spectral normalisation (SPADE's discriminator).
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 64,
        n_layers: int = 3,
        norm: str = "instance",
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        _norm(norm, 1)  # reject an unknown norm before building anything

        def conv(cin: int, cout: int, stride: int) -> nn.Module:
            layer = nn.Conv2d(cin, cout, 4, stride=stride, padding=1)
            return _spectral_norm(layer) if spectral_norm else layer

        widths = [base_channels * min(2**i, 8) for i in range(n_layers + 1)]
        blocks = [nn.Sequential(conv(in_channels, widths[0], 2), nn.LeakyReLU(0.2))]
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1
            block = nn.Sequential(conv(widths[i - 1], widths[i], stride), _norm(norm, widths[i]), nn.LeakyReLU(0.2))
            blocks.append(block)
        blocks.append(conv(widths[-1], 1, 1))
        self.blocks = nn.ModuleList(blocks)
        self.n_layers = n_layers

    @property
    def min_size(self) -> int:
        """Smallest input height/width: the stride-1 conv's output (normalised) needs at least 2x2 positions."""
        return 3 * 2**self.n_layers

    def features(self, x: Tensor) -> list[Tensor]:
        """Every block's output for ``x`` (B, C, H, W); the last entry is the (B, 1, h, w) logits."""
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 1, h, w) patch logits."""
        for block in self.blocks:
            x = block(x)
        return x


@dataclass(frozen=True)
class DiscriminatorOutput:
    """What :class:`MultiScaleDiscriminator` returns.

    Attributes:
        logits: one (B, 1, h_s, w_s) logit map per scale, finest first.
        features: per scale, the intermediate activations (every block but the final logits conv).
    """

    logits: list[Tensor]
    features: list[list[Tensor]]


class MultiScaleDiscriminator(nn.Module):
    """``n_scales`` independent :class:`PatchDiscriminator` on the input downsampled 1x, 2x, 4x, ... (3x3 average
    pooling with stride 2 between scales, as pix2pixHD).

    Args:
        in_channels: C of the input (B, C, H, W).
        n_scales: number of discriminators.
        **patch_kwargs: :class:`PatchDiscriminator` arguments (``base_channels``, ``n_layers``, ``norm``,
            ``spectral_norm``).
    """

    def __init__(self, in_channels: int, n_scales: int = 2, **patch_kwargs) -> None:
        super().__init__()
        if n_scales < 1:
            raise ValueError(f"n_scales must be >= 1, got {n_scales}")
        self.scales = nn.ModuleList(PatchDiscriminator(in_channels, **patch_kwargs) for _ in range(n_scales))

    @property
    def min_size(self) -> int:
        """Smallest input height/width, so the coarsest scale still gets its :attr:`PatchDiscriminator.min_size`."""
        return self.scales[0].min_size * 2 ** (len(self.scales) - 1)

    def forward(self, x: Tensor) -> DiscriminatorOutput:
        """(B, C, H, W) -> per-scale logits and features (:class:`DiscriminatorOutput`)."""
        logits, features = [], []
        for i, disc in enumerate(self.scales):
            if i > 0:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out = disc.features(x)
            logits.append(out[-1])
            features.append(out[:-1])
        return DiscriminatorOutput(logits, features)


def frozen_call(module: nn.Module, x: Tensor) -> Tensor | DiscriminatorOutput:
    """``module(x)`` with detached parameters: gradients reach ``x`` but never ``module``'s weights.

    The generator's adversarial term uses this so that, with one optimiser for both players, it does not
    update the discriminator (buffers such as spectral-norm vectors are the module's own)."""
    frozen = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, frozen, (x,))


Logits = Tensor | Sequence[Tensor] | DiscriminatorOutput


def _scales(logits: Logits) -> list[Tensor]:
    if isinstance(logits, DiscriminatorOutput):
        return list(logits.logits)
    if isinstance(logits, Tensor):
        return [logits]
    return list(logits)


def _check_mode(mode: str) -> None:
    if mode not in GAN_MODES:
        raise ValueError(f"unknown GAN loss {mode!r}; choose one of {', '.join(GAN_MODES)}")


def discriminator_loss(real: Logits, fake: Logits, mode: str = "hinge") -> Tensor:
    """Discriminator objective: the mean of its real and fake terms, averaged over scales.

    ``hinge``: ``relu(1 - real)`` and ``relu(1 + fake)``; ``lsgan``: ``(real - 1)**2`` and ``fake**2``;
    ``bce``: cross-entropy with labels 1 (real) and 0 (fake). Each term is a mean over batch and patches; the
    half of their sum is pix2pix's "divide the D objective by 2". Pass logits of *detached* fakes.
    """
    _check_mode(mode)
    real_s, fake_s = _scales(real), _scales(fake)
    total = 0.0
    for r, f in zip(real_s, fake_s, strict=True):
        if mode == "hinge":
            terms = F.relu(1 - r).mean() + F.relu(1 + f).mean()
        elif mode == "lsgan":
            terms = (r - 1).square().mean() + f.square().mean()
        else:
            terms = F.binary_cross_entropy_with_logits(r, torch.ones_like(r)) + F.binary_cross_entropy_with_logits(
                f, torch.zeros_like(f)
            )
        total = total + 0.5 * terms
    return total / len(real_s)


def generator_loss(fake: Logits, mode: str = "hinge") -> Tensor:
    """Generator objective on the discriminator's logits for generated images, averaged over scales.

    ``hinge``: ``-fake``; ``lsgan``: ``(fake - 1)**2``; ``bce``: non-saturating cross-entropy with label 1.
    """
    _check_mode(mode)
    fake_s = _scales(fake)
    total = 0.0
    for f in fake_s:
        if mode == "hinge":
            total = total - f.mean()
        elif mode == "lsgan":
            total = total + (f - 1).square().mean()
        else:
            total = total + F.binary_cross_entropy_with_logits(f, torch.ones_like(f))
    return total / len(fake_s)


def feature_matching_loss(real: DiscriminatorOutput, fake: DiscriminatorOutput) -> Tensor:
    """pix2pixHD/SPADE feature matching: L1 between the real (detached, the target) and fake activations, summed
    over the layers of a scale and averaged over the scales (multiply by SPADE's ``lambda_feat = 10``)."""
    total = 0.0
    for real_layers, fake_layers in zip(real.features, fake.features, strict=True):
        for r, f in zip(real_layers, fake_layers, strict=True):
            total = total + F.l1_loss(f, r.detach())
    return total / len(real.features)
