"""CellResDM in pixel space: ResShift residual diffusion from the BF condition to the 7 target channels.

Also home of the config, network and loss helpers that latent CellResDM (:mod:`cellresdm.methods.cellresdm_latent`)
shares.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cellresdm.diffusion.resshift import ResShiftDiffusion, ResShiftSchedule
from cellresdm.methods.base import N_OUTPUT_CHANNELS, Method, condition_of, target_of
from cellresdm.nets.swin_unet import SwinUNet, SwinUNetConfig

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
    return diffusion.training_losses(network, x0, y0, t, noise)["loss"].mean()


class CellResDM(Method):
    """Swin-UNet x0-predictor trained with the ResShift loss (Eq. 11), sampled in T steps from y0 + noise."""

    name = "cellresdm"

    def __init__(self, schedule: ResShiftSchedule, net: SwinUNetConfig, loss_weighting: str = "uniform"):
        self.schedule = schedule
        self.net_config = net
        self.loss_weighting = loss_weighting
        self.diffusion = ResShiftDiffusion(schedule, loss_weighting=loss_weighting)
        self.network = SwinUNet(net)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CellResDM:
        section = config["cellresdm"]
        schedule = resshift_schedule(section)
        net = swin_unet_config(section, in_channels=2 * N_OUTPUT_CHANNELS, out_channels=N_OUTPUT_CHANNELS)
        return cls(schedule, net, loss_weighting=section["loss_weighting"])

    def config(self) -> dict[str, Any]:
        return {"cellresdm": resshift_section(self.schedule, self.net_config, self.loss_weighting)}

    def loss(self, network: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        return resshift_loss(self.diffusion, network, target_of(batch), condition_of(batch["bf"]), generator)

    def noise_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        return (self.schedule.steps, batch, N_OUTPUT_CHANNELS, height, width)

    @property
    def sampling_steps(self) -> int:
        return self.schedule.steps

    @property
    def size_multiple(self) -> int:
        return self.network.size_multiple

    @torch.no_grad()
    def sample(self, bf: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        y0 = condition_of(bf)
        x0 = self.diffusion.p_sample_loop(self.network, y0, noise=noise, generator=generator)
        return ((x0 + 1) / 2).clamp(0, 1)
