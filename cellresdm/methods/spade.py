"""The ``spade`` baseline (Park et al. 2019): SPADE generator on the BF planes + multi-scale PatchGAN.

The shared trainer optimises :class:`SPADETraining` (generator, multi-scale discriminator, frozen VGG16) with its
one AdamW by simultaneous gradient descent; ``forward(bf, target)`` returns every loss term:

* generator: ``adversarial_weight * hinge_G + feature_matching_weight * FM + perceptual_weight * VGG
  + l1_weight * L1`` (SPADE: 1, 10, 10, and no L1); the adversarial and feature-matching terms evaluate the
  discriminator with *detached* parameters (``torch.func.functional_call``), so they never update it; the
  feature-matching targets are the (detached) activations of the discriminator's pass on the real pair;
* discriminator: ``hinge_D(D(bf, target), D(bf, G(bf).detach()))``, which gives the generator no gradient.

Discriminators: ``disc_scales`` spectral-normalised PatchGANs with instance norm (SPADE's ``n_layers_D=4``,
``num_D=2``) on the BF planes concatenated with the 7 channels. The perceptual loss compares the 5 IF channels
and is off when ``vgg_weights`` is null (warned; :meth:`SPADE.config` records ``perceptual: false``).
No VAE encoder: the generator is deterministic (:mod:`cellresdm.nets.spade`) and sampling runs it in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cellresdm.errors import ConfigError
from cellresdm.methods.base import N_OUTPUT_CHANNELS
from cellresdm.methods.pix2pix import N_IF, AdversarialMethod
from cellresdm.methods.unet_regression import (
    check_crop,
    check_disc_crop,
    config_key,
    config_section,
)
from cellresdm.nets.discriminator import (
    GAN_MODES,
    MultiScaleDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    frozen_call,
    generator_loss,
)
from cellresdm.nets.spade import SPADEGenerator, SPADEGeneratorConfig
from cellresdm.nets.vgg import VGG16Features, perceptual_loss, resolve_vgg

__all__ = ["SPADE", "SPADETraining", "SPADEWeights"]

#: keys of the SPADE generator in the ``spade`` section
GENERATOR_KEYS = ("base_channels", "n_up", "hidden", "norm", "spectral_norm")


@dataclass(frozen=True)
class SPADEWeights:
    """Loss weights and GAN objective of SPADE (module doc)."""

    adversarial: float = 1.0
    feature_matching: float = 10.0
    perceptual: float = 10.0
    l1: float = 0.0
    gan_mode: str = "hinge"


class SPADETraining(nn.Module):
    """SPADE generator + multi-scale discriminator (+ frozen VGG16); ``forward`` returns the loss terms."""

    def __init__(
        self,
        generator: SPADEGenerator,
        discriminator: MultiScaleDiscriminator,
        vgg: VGG16Features | None,
        weights: SPADEWeights,
    ) -> None:
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.vgg = vgg
        self.weights = weights

    def forward(self, bf: Tensor, target: Tensor) -> dict[str, Tensor]:
        """``bf`` (B, 3, H, W) and ``target`` (B, 7, H, W), both in [-1, 1] -> scalar tensors ``loss`` (what is
        minimised), ``g_adv``, ``feature_matching``, ``perceptual`` (0 without VGG), ``l1`` and ``d``."""
        w = self.weights
        fake = self.generator(bf)
        real_out = self.discriminator(torch.cat([bf, target], 1))
        d = discriminator_loss(real_out, self.discriminator(torch.cat([bf, fake.detach()], 1)), w.gan_mode)
        fake_out = frozen_call(self.discriminator, torch.cat([bf, fake], 1))
        g_adv = generator_loss(fake_out, w.gan_mode)
        fm = feature_matching_loss(real_out, fake_out)
        l1 = (fake - target).abs().mean()
        if self.vgg is not None:
            perceptual = perceptual_loss(self.vgg, fake[:, :N_IF], target[:, :N_IF])
        else:
            perceptual = fake.new_zeros(())
        loss = w.adversarial * g_adv + w.feature_matching * fm + w.perceptual * perceptual + w.l1 * l1 + d
        return {"loss": loss, "g_adv": g_adv, "feature_matching": fm, "perceptual": perceptual, "l1": l1, "d": d}


class SPADE(AdversarialMethod):
    """SPADE GAN with the trainer's single optimiser (config section ``spade``)."""

    name = "spade"

    def __init__(
        self,
        net: SPADEGeneratorConfig,
        weights: SPADEWeights,
        disc_channels: int = 64,
        disc_layers: int = 4,
        disc_scales: int = 2,
        vgg_weights: str | None = None,
        crop_size: int = 256,
    ) -> None:
        if weights.gan_mode not in GAN_MODES:
            raise ConfigError(f"{self.name}.gan_mode must be one of {', '.join(GAN_MODES)}, got {weights.gan_mode!r}")
        check_crop(self.name, crop_size, 2**net.n_up)
        self.net_config = net
        self.weights = weights
        self.disc_channels = disc_channels
        self.disc_layers = disc_layers
        self.disc_scales = disc_scales
        self.vgg_weights = vgg_weights
        self.crop_size = crop_size
        try:
            disc = MultiScaleDiscriminator(
                3 + N_OUTPUT_CHANNELS,
                n_scales=disc_scales,
                base_channels=disc_channels,
                n_layers=disc_layers,
                norm="instance",
                spectral_norm=True,
            )
        except ValueError as exc:
            raise ConfigError(f"config section '{self.name}': {exc}") from exc
        check_disc_crop(self.name, crop_size, disc)
        vgg = resolve_vgg(vgg_weights, self.name)
        self.network = SPADETraining(SPADEGenerator(net), disc, vgg, weights)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SPADE:
        section = config_section(config, cls.name)

        def key(k: str) -> Any:
            return config_key(section, cls.name, k)

        try:
            net = SPADEGeneratorConfig(
                cond_channels=3, out_channels=N_OUTPUT_CHANNELS, **{k: key(k) for k in GENERATOR_KEYS}
            )
        except ValueError as exc:
            raise ConfigError(f"config section '{cls.name}': {exc}") from exc
        weights = SPADEWeights(
            adversarial=key("adversarial_weight"),
            feature_matching=key("feature_matching_weight"),
            perceptual=key("perceptual_weight"),
            l1=key("l1_weight"),
            gan_mode=key("gan_mode"),
        )
        return cls(
            net,
            weights,
            disc_channels=key("disc_channels"),
            disc_layers=key("disc_layers"),
            disc_scales=key("disc_scales"),
            vgg_weights=key("vgg_weights"),
            crop_size=key("crop_size"),
        )

    def config(self) -> dict[str, Any]:
        w = self.weights
        return {
            self.name: {
                **{k: getattr(self.net_config, k) for k in GENERATOR_KEYS},
                "disc_channels": self.disc_channels,
                "disc_layers": self.disc_layers,
                "disc_scales": self.disc_scales,
                "gan_mode": w.gan_mode,
                "adversarial_weight": w.adversarial,
                "feature_matching_weight": w.feature_matching,
                "perceptual_weight": w.perceptual,
                "l1_weight": w.l1,
                "vgg_weights": self.vgg_weights,
                "crop_size": self.crop_size,
                # recorded for the report; not read back by from_config
                "perceptual": self.perceptual,
            }
        }
