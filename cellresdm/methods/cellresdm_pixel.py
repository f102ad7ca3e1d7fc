"""CellResDM in pixel space: ResShift residual diffusion from the BF condition to the 7 target channels."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cellresdm.diffusion.resshift import ResShiftDiffusion, ResShiftSchedule
from cellresdm.methods.base import N_OUTPUT_CHANNELS, Method, condition_of, target_of
from cellresdm.nets.swin_unet import SwinUNet, SwinUNetConfig


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
        schedule = ResShiftSchedule(
            steps=section["steps"],
            kappa=section["kappa"],
            power=section["power"],
            min_noise_level=section["min_noise_level"],
        )
        net = SwinUNetConfig(
            in_channels=2 * N_OUTPUT_CHANNELS,
            out_channels=N_OUTPUT_CHANNELS,
            model_channels=section["model_channels"],
            channel_mult=tuple(section["channel_mult"]),
            num_res_blocks=section["num_res_blocks"],
            swin_depth=section["swin_depth"],
            window_size=section["window_size"],
            # Swin blocks below full resolution, at most two levels (ResShift skips full resolution and the
            # deepest level): (1, 2) for the paper's [1, 2, 2, 4] and the demo's [1, 2, 2]
            swin_levels=tuple(range(1, min(3, len(section["channel_mult"])))),
        )
        return cls(schedule, net, loss_weighting=section["loss_weighting"])

    def config(self) -> dict[str, Any]:
        s, n = self.schedule, self.net_config
        return {
            "cellresdm": {
                "steps": s.steps,
                "kappa": s.kappa,
                "power": s.power,
                "min_noise_level": s.min_noise_level,
                "loss_weighting": self.loss_weighting,
                "model_channels": n.model_channels,
                "channel_mult": list(n.channel_mult),
                "num_res_blocks": n.num_res_blocks,
                "swin_depth": n.swin_depth,
                "window_size": n.window_size,
            }
        }

    def loss(self, network: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        x0 = target_of(batch)
        y0 = condition_of(batch["bf"])
        # uniform t over the T steps and Gaussian noise, both from the step's generator (exact resume)
        t = torch.randint(0, self.schedule.steps, (x0.shape[0],), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        return self.diffusion.training_losses(network, x0, y0, t, noise)["loss"].mean()

    def noise_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        return (self.schedule.steps, batch, N_OUTPUT_CHANNELS, height, width)

    @property
    def size_multiple(self) -> int:
        return self.network.size_multiple

    @torch.no_grad()
    def sample(self, bf: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        y0 = condition_of(bf)
        x0 = self.diffusion.p_sample_loop(self.network, y0, noise=noise, generator=generator)
        return ((x0 + 1) / 2).clamp(0, 1)
