"""The ``pix2pix`` baseline (Isola et al. 2017): U-Net generator + conditional PatchGAN + L1 + VGG perceptual loss.

The shared trainer optimises :class:`Pix2PixTraining` (generator, discriminator and the frozen VGG16) with its one
AdamW by simultaneous gradient descent; ``forward(bf, target)`` returns every loss term:

* generator: ``l1_weight * |G(bf) - target| + adversarial_weight * GAN_G(D(bf, G(bf)))
  + perceptual_weight * VGG(G(bf)[:5], target[:5])``; the adversarial term evaluates the discriminator with
  *detached* parameters (``torch.func.functional_call``), so it never updates the discriminator;
* discriminator: ``GAN_D(D(bf, target), D(bf, G(bf).detach()))`` (halved, as pix2pix), which gives the generator
  no gradient.

``gan_mode`` ``bce`` is pix2pix's "vanilla" GAN (non-saturating generator loss); ``lsgan`` and ``hinge`` are options.
The discriminator sees the BF planes concatenated with the 7 channels (a conditional GAN). The perceptual loss
compares the 5 IF channels only (the boundary masks are binary, far from the images VGG was trained on; L1 fits
them) and is off when ``vgg_weights`` is null (a warning is logged and :meth:`Pix2Pix.config` records
``perceptual: false``). Sampling runs the generator alone in eval mode: deterministic, dropout off (pix2pix kept
dropout on at test time as its noise source; here the baseline is a deterministic regression).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cellresdm import layout
from cellresdm.errors import ConfigError
from cellresdm.methods.base import N_OUTPUT_CHANNELS, target_of
from cellresdm.methods.unet_regression import (
    GeneratorMethod,
    bf_input,
    check_crop,
    check_disc_crop,
    config_key,
    config_section,
    generator_config,
    generator_section,
)
from cellresdm.nets.discriminator import (
    GAN_MODES,
    PatchDiscriminator,
    discriminator_loss,
    frozen_call,
    generator_loss,
)
from cellresdm.nets.unet_generator import UNetGenerator, UNetGeneratorConfig
from cellresdm.nets.vgg import VGG16Features, perceptual_loss, resolve_vgg

__all__ = ["Pix2Pix", "Pix2PixTraining", "Pix2PixWeights"]

N_IF = len(layout.IF_CHANNELS)


@dataclass(frozen=True)
class Pix2PixWeights:
    """Loss weights and GAN objective of pix2pix (module doc)."""

    l1: float = 100.0
    adversarial: float = 1.0
    perceptual: float = 10.0
    gan_mode: str = "bce"


class Pix2PixTraining(nn.Module):
    """Generator + PatchGAN (+ frozen VGG16); ``forward`` returns the loss terms (module doc)."""

    def __init__(
        self,
        generator: UNetGenerator,
        discriminator: PatchDiscriminator,
        vgg: VGG16Features | None,
        weights: Pix2PixWeights,
    ) -> None:
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.vgg = vgg
        self.weights = weights

    def forward(self, bf: Tensor, target: Tensor) -> dict[str, Tensor]:
        """``bf`` (B, 3, H, W) and ``target`` (B, 7, H, W), both in [-1, 1] -> scalar tensors ``loss`` (what is
        minimised), ``l1``, ``g_adv``, ``perceptual`` (0 without VGG) and ``d``."""
        w = self.weights
        fake = self.generator(bf)
        d = discriminator_loss(
            self.discriminator(torch.cat([bf, target], 1)),
            self.discriminator(torch.cat([bf, fake.detach()], 1)),
            w.gan_mode,
        )
        g_adv = generator_loss(frozen_call(self.discriminator, torch.cat([bf, fake], 1)), w.gan_mode)
        l1 = (fake - target).abs().mean()
        if self.vgg is not None:
            perceptual = perceptual_loss(self.vgg, fake[:, :N_IF], target[:, :N_IF])
        else:
            perceptual = fake.new_zeros(())
        loss = w.l1 * l1 + w.adversarial * g_adv + w.perceptual * perceptual + d
        return {"loss": loss, "l1": l1, "g_adv": g_adv, "perceptual": perceptual, "d": d}


class AdversarialMethod(GeneratorMethod):
    """A GAN generator trained with its discriminator (and VGG) inside one container ``network`` whose forward
    returns the loss terms (``loss`` and the detached parts, see the containers)."""

    #: the detached loss terms of the last :meth:`loss` call
    last_terms: dict[str, Tensor]

    @property
    def generator(self) -> nn.Module:
        return self.network.generator

    @property
    def perceptual(self) -> bool:
        """Whether the VGG perceptual term is on (weights were given and its weight is not 0)."""
        return self.network.vgg is not None and self.weights.perceptual != 0

    def loss(self, network: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        # no randomness besides decoder dropout, which draws from the trainer's reseeded global RNG
        terms = network(bf_input(batch["bf"]), target_of(batch))
        self.last_terms = {k: v.detach() for k, v in terms.items() if k != "loss"}
        return terms["loss"]


class Pix2Pix(AdversarialMethod):
    """pix2pix with the trainer's single optimiser (config section ``pix2pix``)."""

    name = "pix2pix"

    def __init__(
        self,
        net: UNetGeneratorConfig,
        weights: Pix2PixWeights,
        disc_channels: int = 64,
        disc_layers: int = 3,
        disc_norm: str = "instance",
        vgg_weights: str | None = None,
        crop_size: int = 256,
    ) -> None:
        if weights.gan_mode not in GAN_MODES:
            raise ConfigError(f"{self.name}.gan_mode must be one of {', '.join(GAN_MODES)}, got {weights.gan_mode!r}")
        check_crop(self.name, crop_size, 2**net.depth)
        self.net_config = net
        self.weights = weights
        self.disc_channels = disc_channels
        self.disc_layers = disc_layers
        self.disc_norm = disc_norm
        self.vgg_weights = vgg_weights
        self.crop_size = crop_size
        try:
            disc = PatchDiscriminator(3 + N_OUTPUT_CHANNELS, disc_channels, disc_layers, norm=disc_norm)
        except ValueError as exc:
            raise ConfigError(f"config section '{self.name}': {exc}") from exc
        check_disc_crop(self.name, crop_size, disc)
        vgg = resolve_vgg(vgg_weights, self.name)
        self.network = Pix2PixTraining(UNetGenerator(net), disc, vgg, weights)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Pix2Pix:
        section = config_section(config, cls.name)

        def key(k: str) -> Any:
            return config_key(section, cls.name, k)

        weights = Pix2PixWeights(
            l1=key("l1_weight"),
            adversarial=key("adversarial_weight"),
            perceptual=key("perceptual_weight"),
            gan_mode=key("gan_mode"),
        )
        return cls(
            generator_config(section, cls.name),
            weights,
            disc_channels=key("disc_channels"),
            disc_layers=key("disc_layers"),
            disc_norm=key("disc_norm"),
            vgg_weights=key("vgg_weights"),
            crop_size=key("crop_size"),
        )

    def config(self) -> dict[str, Any]:
        w = self.weights
        return {
            self.name: {
                **generator_section(self.net_config),
                "disc_channels": self.disc_channels,
                "disc_layers": self.disc_layers,
                "disc_norm": self.disc_norm,
                "gan_mode": w.gan_mode,
                "l1_weight": w.l1,
                "adversarial_weight": w.adversarial,
                "perceptual_weight": w.perceptual,
                "vgg_weights": self.vgg_weights,
                "crop_size": self.crop_size,
                # recorded for the report; not read back by from_config
                "perceptual": self.perceptual,
            }
        }
