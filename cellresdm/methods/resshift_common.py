"""What pixel and latent CellResDM share: the ResShift schedule, the Swin-UNet and the loss of their config sections.

Sections ``cellresdm`` and ``cellresdm_latent`` hold the same ResShift and Swin-UNet keys (see the config schema);
:func:`resshift_schedule` and :func:`swin_unet_config` read them, :func:`resshift_section` writes them back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cellresdm.diffusion.resshift import ResShiftDiffusion, ResShiftSchedule
from cellresdm.nets.swin_unet import SwinUNetConfig

__all__ = ["SCHEDULE_KEYS", "resshift_loss", "resshift_schedule", "resshift_section", "swin_unet_config"]

#: keys of the ResShift schedule in the ``cellresdm`` and ``cellresdm_latent`` sections
SCHEDULE_KEYS = ("steps", "kappa", "power", "min_noise_level")


def resshift_schedule(section: dict[str, Any]) -> ResShiftSchedule:
    """The ResShift schedule of a ``cellresdm`` or ``cellresdm_latent`` config section."""
    return ResShiftSchedule(**{k: section[k] for k in SCHEDULE_KEYS})


def swin_unet_config(section: dict[str, Any], in_channels: int, out_channels: int) -> SwinUNetConfig:
    """The Swin-UNet x0-predictor of a ``cellresdm`` or ``cellresdm_latent`` config section."""
    return SwinUNetConfig(
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=section["model_channels"],
        channel_mult=tuple(section["channel_mult"]),
        num_res_blocks=section["num_res_blocks"],
        swin_depth=section["swin_depth"],
        window_size=section["window_size"],
        swin_embed_dim=section["swin_embed_dim"],
        # Swin below full resolution, at most two levels besides the middle (pixel space is costlier than
        # ResShift's 64x64 latents): (1, 2) for the paper's [1, 2, 2, 4] and the demo's [1, 2, 2]
        swin_levels=tuple(range(1, min(3, len(section["channel_mult"])))),
    )


def resshift_section(schedule: ResShiftSchedule, net: SwinUNetConfig, loss_weighting: str) -> dict[str, Any]:
    """The section keys of ``schedule``, ``loss_weighting`` and ``net`` (inverse of :func:`resshift_schedule`
    and :func:`swin_unet_config`)."""
    return {
        **{k: getattr(schedule, k) for k in SCHEDULE_KEYS},
        "loss_weighting": loss_weighting,
        "model_channels": net.model_channels,
        "channel_mult": list(net.channel_mult),
        "num_res_blocks": net.num_res_blocks,
        "swin_depth": net.swin_depth,
        "window_size": net.window_size,
        "swin_embed_dim": net.swin_embed_dim,
    }


def resshift_loss(
    diffusion: ResShiftDiffusion, network: nn.Module, x0: Tensor, y0: Tensor, generator: torch.Generator
) -> Tensor:
    """Mean ResShift loss (Eq. 11) of a batch of targets ``x0`` with conditions ``y0`` (both (B, C, h, w))."""
    # uniform t over the T steps and Gaussian noise, both from the step's generator (exact resume)
    t = torch.randint(0, diffusion.num_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    return diffusion.training_losses(network, x0, t, noise, y0=y0)["loss"].mean()
