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
from cellresdm.methods.pix2pix import AdversarialMethod, AdversarialTraining
from cellresdm.methods.unet_regression import config_key
from cellresdm.nets.discriminator import (
    MultiScaleDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    frozen_call,
    generator_loss,
)
from cellresdm.nets.spade import SPADEGenerator, SPADEGeneratorConfig
from cellresdm.nets.vgg import VGG16Features

__all__ = ["SPADE", "SPADETraining", "SPADEWeights"]

#: keys of the SPADE generator in the ``spade`` section
GENERATOR_KEYS = ("base_channels", "n_up", "hidden", "norm", "spectral_norm")


@dataclass(frozen=True)
class SPADEWeights:
    """Loss weights and GAN objective of SPADE (module doc): the ``*_weight`` and ``gan_mode`` keys of section
    ``spade``, whose schema holds the defaults."""

    adversarial: float
    feature_matching: float
    perceptual: float
    l1: float
    gan_mode: str


class SPADETraining(AdversarialTraining):
    """SPADE generator + multi-scale discriminator (+ frozen VGG16); ``forward`` returns the loss terms."""

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
        perceptual = self.perceptual_term(fake, target)
        loss = w.adversarial * g_adv + w.feature_matching * fm + w.perceptual * perceptual + w.l1 * l1 + d
        return {"loss": loss, "g_adv": g_adv, "feature_matching": fm, "perceptual": perceptual, "l1": l1, "d": d}


class SPADE(AdversarialMethod):
    """SPADE GAN with the trainer's single optimiser (config section ``spade``)."""

    name = "spade"
    disc_keys = ("disc_channels", "disc_layers", "disc_scales")
    weights_class = SPADEWeights

    def __init__(
        self,
        net: SPADEGeneratorConfig,
        weights: SPADEWeights,
        disc_channels: int,
        disc_layers: int,
        disc_scales: int,
        vgg_weights: str | None,
        crop_size: int,
    ) -> None:
        self.disc_channels = disc_channels
        self.disc_layers = disc_layers
        self.disc_scales = disc_scales
        super().__init__(net, weights, 2**net.n_up, vgg_weights, crop_size)

    @classmethod
    def net_from_section(cls, section: dict[str, Any]) -> SPADEGeneratorConfig:
        values = {k: config_key(section, cls.name, k) for k in GENERATOR_KEYS}
        try:
            return SPADEGeneratorConfig(cond_channels=3, out_channels=N_OUTPUT_CHANNELS, **values)
        except ValueError as exc:
            raise ConfigError(f"config section '{cls.name}': {exc}") from exc

    def net_section(self) -> dict[str, Any]:
        return {k: getattr(self.net_config, k) for k in GENERATOR_KEYS}

    def build_discriminator(self) -> MultiScaleDiscriminator:
        return MultiScaleDiscriminator(
            3 + N_OUTPUT_CHANNELS,
            n_scales=self.disc_scales,
            base_channels=self.disc_channels,
            n_layers=self.disc_layers,
            norm="instance",
            spectral_norm=True,
        )

    def build_network(self, disc: nn.Module, vgg: VGG16Features | None) -> SPADETraining:
        return SPADETraining(SPADEGenerator(self.net_config), disc, vgg, self.weights)
