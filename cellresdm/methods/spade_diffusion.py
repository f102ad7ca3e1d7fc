"""SPADE-Diffusion (semantic diffusion model style, Wang et al. 2022): the DDPM of :mod:`cellresdm.methods.palette`
with the condition entering only through SPADE normalisation in the UNet decoder.

The encoder sees the noisy target x_t alone; the middle and decoder residual blocks normalise with
:class:`~cellresdm.nets.spade_norm.SPADENorm` modulated by the BF planes (B, 3, H, W) in [-1, 1]. For
classifier-free guidance the condition is dropped to zeros (training, probability ``p_uncond``) and the guided
eps mixes the SPADE-conditioned and zero-conditioned predictions.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from cellresdm.methods.palette import ConditionalDDPM
from cellresdm.nets.unet import UNetConfig

__all__ = ["SpadeDiffusion"]


class SpadeDiffusion(ConditionalDDPM):
    """Conditional DDPM whose UNet decoder is conditioned on the BF planes by SPADE (``spade_hidden`` wide)."""

    name = "spade_diffusion"
    spade: ClassVar[bool] = True
    config_keys: ClassVar[tuple[str, ...]] = (*ConditionalDDPM.config_keys, "spade_hidden")

    @classmethod
    def unet_config(cls, section: dict[str, Any]) -> UNetConfig:
        return replace(super().unet_config(section), spade_hidden=section["spade_hidden"])
