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

Also home of what ``spade`` shares: :class:`AdversarialTraining` (the loss container's parts and perceptual term)
and :class:`AdversarialMethod` (config keys, checks and construction of a GAN baseline).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar

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

__all__ = ["AdversarialMethod", "AdversarialTraining", "Pix2Pix", "Pix2PixTraining", "Pix2PixWeights"]

N_IF = len(layout.IF_CHANNELS)


@dataclass(frozen=True)
class Pix2PixWeights:
    """Loss weights and GAN objective of pix2pix (module doc): the ``*_weight`` and ``gan_mode`` keys of section
    ``pix2pix``, whose schema holds the defaults."""

    l1: float
    adversarial: float
    perceptual: float
    gan_mode: str


class AdversarialTraining(nn.Module):
    """Generator, discriminator and optional frozen VGG16 in one module, so the trainer optimises, averages (EMA)
    and checkpoints them together; a subclass's ``forward(bf, target)`` returns its loss terms."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, vgg: VGG16Features | None, weights: Any) -> None:
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.vgg = vgg
        self.weights = weights

    def perceptual_term(self, fake: Tensor, target: Tensor) -> Tensor:
        """VGG loss of the 5 IF channels of ``fake`` against ``target`` (module doc); 0 without VGG weights."""
        if self.vgg is None:
            return fake.new_zeros(())
        return perceptual_loss(self.vgg, fake[:, :N_IF], target[:, :N_IF])


class Pix2PixTraining(AdversarialTraining):
    """Generator + PatchGAN (+ frozen VGG16); ``forward`` returns the loss terms (module doc)."""

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
        perceptual = self.perceptual_term(fake, target)
        loss = w.l1 * l1 + w.adversarial * g_adv + w.perceptual * perceptual + d
        return {"loss": loss, "l1": l1, "g_adv": g_adv, "perceptual": perceptual, "d": d}


def _weight_key(field_name: str) -> str:
    """The config key of a loss-weights field: ``gan_mode`` as is, the weight of term ``t`` as ``t_weight``."""
    return field_name if field_name == "gan_mode" else f"{field_name}_weight"


class AdversarialMethod(GeneratorMethod):
    """A GAN generator trained with its discriminator (and VGG) inside one container ``network`` whose forward
    returns the loss terms (``loss`` and the detached parts, see the containers).

    Config, validation and construction are shared; a subclass names its section (``name``), discriminator keys
    (:attr:`disc_keys`, stored as attributes of the same names before ``super().__init__``), loss weights
    (:attr:`weights_class`) and implements the four hooks :meth:`net_from_section`, :meth:`net_section`,
    :meth:`build_discriminator` and :meth:`build_network`.
    """

    #: the discriminator's config keys, each also an ``__init__`` argument and an attribute of the same name
    disc_keys: ClassVar[tuple[str, ...]]
    #: the frozen dataclass of the loss weights, with a ``gan_mode`` field; its field ``t`` is config key ``t_weight``
    weights_class: ClassVar[type]
    #: the detached loss terms of the last :meth:`loss` call
    last_terms: dict[str, Tensor]

    def __init__(self, net: Any, weights: Any, size_multiple: int, vgg_weights: str | None, crop_size: int) -> None:
        """Check the settings and build :attr:`network` from the generator architecture ``net``, the
        :attr:`weights_class` instance ``weights`` and the subclass's ``disc_*`` attributes.

        Args:
            size_multiple: the generator's input size multiple, which ``crop_size`` must fit.
        """
        if weights.gan_mode not in GAN_MODES:
            raise ConfigError(f"{self.name}.gan_mode must be one of {', '.join(GAN_MODES)}, got {weights.gan_mode!r}")
        check_crop(self.name, crop_size, size_multiple)
        self.net_config = net
        self.weights = weights
        self.vgg_weights = vgg_weights
        self.crop_size = crop_size
        try:
            disc = self.build_discriminator()
        except ValueError as exc:
            raise ConfigError(f"config section '{self.name}': {exc}") from exc
        check_disc_crop(self.name, crop_size, disc)
        vgg = resolve_vgg(vgg_weights, self.name)
        # build_network makes the generator after the discriminator: the order fixes the seeded initial weights
        self.network = self.build_network(disc, vgg)

    @classmethod
    @abstractmethod
    def net_from_section(cls, section: dict[str, Any]) -> Any:
        """The generator architecture of the config section (its keys checked, errors as :class:`ConfigError`)."""

    @abstractmethod
    def net_section(self) -> dict[str, Any]:
        """The generator's section keys (inverse of :meth:`net_from_section`)."""

    @abstractmethod
    def build_discriminator(self) -> nn.Module:
        """A new discriminator of the ``disc_*`` attributes; :class:`ValueError` for impossible settings."""

    @abstractmethod
    def build_network(self, disc: nn.Module, vgg: VGG16Features | None) -> AdversarialTraining:
        """The training container of a new generator, ``disc`` and ``vgg``."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AdversarialMethod:
        section = config_section(config, cls.name)

        def key(k: str) -> Any:
            return config_key(section, cls.name, k)

        weights = cls.weights_class(**{f.name: key(_weight_key(f.name)) for f in fields(cls.weights_class)})
        return cls(
            cls.net_from_section(section),
            weights,
            **{k: key(k) for k in cls.disc_keys},
            vgg_weights=key("vgg_weights"),
            crop_size=key("crop_size"),
        )

    def config(self) -> dict[str, Any]:
        w = self.weights
        loss_terms = {_weight_key(f.name): getattr(w, f.name) for f in fields(w) if f.name != "gan_mode"}
        return {
            self.name: {
                **self.net_section(),
                **{k: getattr(self, k) for k in self.disc_keys},
                "gan_mode": w.gan_mode,
                **loss_terms,
                "vgg_weights": self.vgg_weights,
                "crop_size": self.crop_size,
                # recorded for the report; not read back by from_config
                "perceptual": self.perceptual,
            }
        }

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
    disc_keys = ("disc_channels", "disc_layers", "disc_norm")
    weights_class = Pix2PixWeights

    def __init__(
        self,
        net: UNetGeneratorConfig,
        weights: Pix2PixWeights,
        disc_channels: int,
        disc_layers: int,
        disc_norm: str,
        vgg_weights: str | None,
        crop_size: int,
    ) -> None:
        self.disc_channels = disc_channels
        self.disc_layers = disc_layers
        self.disc_norm = disc_norm
        super().__init__(net, weights, 2**net.depth, vgg_weights, crop_size)

    @classmethod
    def net_from_section(cls, section: dict[str, Any]) -> UNetGeneratorConfig:
        return generator_config(section, cls.name)

    def net_section(self) -> dict[str, Any]:
        return generator_section(self.net_config)

    def build_discriminator(self) -> PatchDiscriminator:
        return PatchDiscriminator(3 + N_OUTPUT_CHANNELS, self.disc_channels, self.disc_layers, norm=self.disc_norm)

    def build_network(self, disc: nn.Module, vgg: VGG16Features | None) -> Pix2PixTraining:
        return Pix2PixTraining(UNetGenerator(self.net_config), disc, vgg, self.weights)
