"""The interface every image-generation method implements, so the trainer and sampler serve them all.

Tensors follow the dataset (:class:`cellresdm.dataset.CellPaintingDataset`): ``bf`` (B, 3, H, W) in [0, 1]
with the in-focus plane first, targets ``if`` (B, 5, H, W) and ``boundaries`` (B, 2, H, W) in [0, 1].
Every method outputs the 7 channels (5 IF + nuclei and cell boundaries) in [0, 1].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from cellresdm import layout

N_OUTPUT_CHANNELS = len(layout.IF_CHANNELS) + len(layout.OBJECT_CHANNELS)


def target_of(batch: dict[str, Tensor]) -> Tensor:
    """(B, 7, H, W) target in [-1, 1]: the 5 IF channels then the 2 boundary masks."""
    return torch.cat([batch["if"], batch["boundaries"]], dim=1) * 2 - 1


def condition_of(bf: Tensor) -> Tensor:
    """(B, 7, H, W) condition y0 in [-1, 1] with the target's channel count (docs/design.md section 4): the in-focus
    plane under the 5 IF channels, the two defocus planes under the 2 boundary channels."""
    in_focus, defocus = bf[:, :1], bf[:, 1:3]
    return torch.cat([in_focus.expand(-1, len(layout.IF_CHANNELS), -1, -1), defocus], dim=1) * 2 - 1


class Method(ABC):
    """A trainable BF -> (IF, boundaries) generator."""

    name: str
    #: The network the trainer optimises (and keeps an EMA of).
    network: nn.Module
    #: Tiles of a whole field start at multiples of this (a method that subsamples the noise field needs its grid).
    tile_alignment: int = 1

    @classmethod
    @abstractmethod
    def from_config(cls, config: dict[str, Any]) -> Method:
        """Build the method from a validated pipeline config (:func:`cellresdm.config.validate_config`, or a
        checkpoint's stored :meth:`config`), reading its own section ``config[cls.name]``.

        :func:`cellresdm.methods.build_method` calls this; ``from_config(m.config())`` rebuilds ``m``'s
        architecture (weights are loaded separately).

        Raises:
            ConfigError: naming the key when the section is missing or a value does not fit the method.
        """

    @abstractmethod
    def loss(self, network: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        """Scalar training loss of one batch; all randomness comes from ``generator``."""

    @abstractmethod
    def sample(self, bf: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Prediction (B, 7, H, W) in [0, 1] for ``bf`` (B, 3, H, W) in [0, 1].

        ``noise`` (shape :meth:`noise_shape`) fixes all randomness, so tiles cropped from one whole-field
        noise tensor agree where they overlap."""

    @abstractmethod
    def noise_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """Shape of the noise tensor :meth:`sample` consumes for a batch of this size; spatial dims last."""

    @property
    def sampling_steps(self) -> int | None:
        """Steps of the sampling chain (one network evaluation each, before guidance); None for a one-pass
        generator."""
        return None

    @property
    @abstractmethod
    def size_multiple(self) -> int:
        """Height and width of a sampled image must be multiples of this."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """What :func:`cellresdm.methods.build_method` needs to rebuild this method (stored in checkpoints)."""
