"""CellResDM in pixel space: ResShift residual diffusion from the BF condition to the 7 target channels.

The config, network and loss helpers it shares with latent CellResDM live in :mod:`cellresdm.methods.resshift_common`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cellresdm.diffusion.resshift import ResShiftDiffusion, ResShiftSchedule
from cellresdm.methods.base import N_OUTPUT_CHANNELS, Method, condition_of, target_of
from cellresdm.methods.resshift_common import resshift_loss, resshift_schedule, resshift_section, swin_unet_config
from cellresdm.nets.swin_unet import SwinUNet, SwinUNetConfig


class CellResDM(Method):
    """Swin-UNet x0-predictor trained with the ResShift loss (Eq. 11), sampled in T steps from y0 + noise."""

    name = "cellresdm"

    def __init__(self, schedule: ResShiftSchedule, net: SwinUNetConfig, loss_weighting: str):
        self.schedule = schedule
        self.net_config = net
        self.loss_weighting = loss_weighting
        self.diffusion = ResShiftDiffusion(schedule, loss_weighting=loss_weighting)
        self.network = SwinUNet(net)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CellResDM:
        """Build from the validated config's section ``cellresdm`` (schedule, loss weighting, Swin-UNet)."""
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
