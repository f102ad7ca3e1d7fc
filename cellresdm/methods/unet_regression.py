"""The ``unet`` baseline: the pix2pix U-Net generator regressing the 7 target channels from BF with an MSE loss.

Input: the 3 BF planes scaled to [-1, 1]; output: tanh in [-1, 1] against the target in [-1, 1]
(:func:`cellresdm.methods.base.target_of`), mapped to [0, 1] for sampling. Deterministic: no noise, and
sampling runs the network in eval mode (dropout off, batch norm with running statistics).

Also home of the helpers the other generator baselines (``pix2pix``, ``spade``) share: config-section access,
the generator architecture of a section, BF scaling and the eval-mode context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cellresdm.errors import ConfigError
from cellresdm.methods.base import N_OUTPUT_CHANNELS, Method, target_of
from cellresdm.nets.unet_generator import UNetGenerator, UNetGeneratorConfig

__all__ = [
    "UNetRegression",
    "bf_input",
    "check_crop",
    "check_disc_crop",
    "config_key",
    "config_section",
    "eval_mode",
    "generator_config",
    "generator_section",
]

#: keys of the U-Net generator in the ``unet`` and ``pix2pix`` sections
GENERATOR_KEYS = ("base_channels", "depth", "norm", "dropout", "dropout_blocks")


def config_section(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The ``name`` section of a pipeline config, or :class:`ConfigError`."""
    section = config.get(name)
    if not isinstance(section, dict):
        raise ConfigError(f"config section '{name}' is missing")
    return section


def config_key(section: dict[str, Any], name: str, key: str) -> Any:
    """``section[key]`` or :class:`ConfigError` naming ``name.key``."""
    if key not in section:
        raise ConfigError(f"config key '{name}.{key}' is missing")
    return section[key]


def check_crop(name: str, crop_size: int, multiple: int) -> None:
    """:class:`ConfigError` unless the training crop fits the network's size multiple."""
    if crop_size % multiple:
        raise ConfigError(f"{name}.crop_size {crop_size} must be a multiple of {multiple} (2 ** network depth)")


def check_disc_crop(name: str, crop_size: int, disc: nn.Module) -> None:
    """:class:`ConfigError` unless the training crop is large enough for the discriminator ``disc``."""
    if crop_size < disc.min_size:
        raise ConfigError(
            f"{name}.crop_size {crop_size} is too small for the discriminator (at least {disc.min_size} px with these "
            f"{name}.disc_layers{' and disc_scales' if name == 'spade' else ''}); use a larger crop or fewer layers"
        )


def generator_config(section: dict[str, Any], name: str) -> UNetGeneratorConfig:
    """The :class:`UNetGeneratorConfig` (3 BF planes -> 7 channels) of a ``unet``/``pix2pix`` section."""
    values = {k: config_key(section, name, k) for k in GENERATOR_KEYS}
    try:
        return UNetGeneratorConfig(in_channels=3, out_channels=N_OUTPUT_CHANNELS, **values)
    except ValueError as exc:
        raise ConfigError(f"config section '{name}': {exc}") from exc


def generator_section(config: UNetGeneratorConfig) -> dict[str, Any]:
    """The section keys of :data:`GENERATOR_KEYS` for ``config`` (inverse of :func:`generator_config`)."""
    return {k: getattr(config, k) for k in GENERATOR_KEYS}


def bf_input(bf: Tensor) -> Tensor:
    """BF planes (B, 3, H, W) in [0, 1] -> network input in [-1, 1]."""
    return bf * 2 - 1


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` in eval mode (dropout off, batch-norm running statistics), then restore its mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class GeneratorMethod(Method):
    """A deterministic BF -> 7-channel generator in [-1, 1] (tanh); sampling runs :attr:`generator` in eval mode
    (dropout off, batch norm on its running statistics, so every tile is normalised the same way)."""

    @property
    def generator(self) -> nn.Module:
        """The network that maps the BF planes in [-1, 1] to the 7 channels (the GAN methods' own generator)."""
        return self.network

    def noise_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        return (0, batch, N_OUTPUT_CHANNELS, height, width)  # deterministic: no noise

    @property
    def size_multiple(self) -> int:
        return self.generator.size_multiple

    @torch.no_grad()
    def sample(self, bf: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        with eval_mode(self.generator) as net:
            out = net(bf_input(bf))
        return ((out + 1) / 2).clamp(0, 1)


class UNetRegression(GeneratorMethod):
    """U-Net generator trained with the mean squared error to the target (config section ``unet``)."""

    name = "unet"

    def __init__(self, net: UNetGeneratorConfig, crop_size: int) -> None:
        check_crop(self.name, crop_size, 2**net.depth)
        self.net_config = net
        self.crop_size = crop_size
        self.network = UNetGenerator(net)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> UNetRegression:
        section = config_section(config, cls.name)
        return cls(generator_config(section, cls.name), crop_size=config_key(section, cls.name, "crop_size"))

    def config(self) -> dict[str, Any]:
        return {self.name: {**generator_section(self.net_config), "crop_size": self.crop_size}}

    def loss(self, network: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        # deterministic apart from decoder dropout, which draws from the trainer's reseeded global RNG
        return F.mse_loss(network(bf_input(batch["bf"])), target_of(batch))
