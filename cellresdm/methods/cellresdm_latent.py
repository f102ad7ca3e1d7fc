"""Latent CellResDM: ResShift residual diffusion in the latent space of a frozen VQ-GAN (config ``cellresdm_latent``).

The 7 target channels and the BF condition (:func:`~cellresdm.methods.base.condition_of`: the in-focus plane under
the IF channels, the two defocus planes under the boundaries) are each cut into the three 3-channel groups of
:data:`cellresdm.nets.vqgan.CHANNEL_GROUPS` and encoded by one autoencoder to the pre-quantisation latents
``x0 = encode_groups(target)`` and ``y0 = encode_groups(condition)``, (B, 3 D, H/f, W/f) with D the VQ-GAN's
``embed_dim`` and f its downsampling factor (4). The ResShift chain (:mod:`cellresdm.diffusion.resshift`) and the
Swin-UNet x0-predictor run on those latents as in pixel CellResDM; a sample is decoded with
``decode_groups(quantize=True)`` (DNA: the mean of its three reconstructions) and mapped to [0, 1]. As in ResShift's
latent models the predicted x0 is not clipped during sampling (plain-lookup latents are not confined to [-1, 1]).

Frozen autoencoder: ``network`` is :class:`LatentDenoiser`, the Swin-UNet plus the VQ-GAN with ``requires_grad``
off (the trainer's AdamW skips it; its EMA copy stays equal to it). Its weights are therefore in ``model.pt``: the
sampler uses exactly the autoencoder the UNet was trained with, even if ``vqgan_checkpoint`` was retrained since
(the file must still exist and have the same architecture, because :meth:`CellResDMLatent.from_config` builds the
method from it before the weights are loaded).

Noise: :meth:`CellResDMLatent.noise_shape` is (T, B, 3 D, H, W) at *pixel* resolution, because the whole-field
sampler crops noise tiles in pixel coordinates; :meth:`CellResDMLatent.sample` takes every f-th row and column
(``noise[..., ::f, ::f]``), so a tile that starts at a multiple of f sees the same latent noise as the whole field.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from cellresdm.diffusion.resshift import ResShiftDiffusion, ResShiftSchedule
from cellresdm.errors import ConfigError
from cellresdm.methods.base import Method, condition_of, target_of
from cellresdm.methods.resshift_common import resshift_loss, resshift_schedule, resshift_section, swin_unet_config
from cellresdm.methods.vqgan import load_vqgan
from cellresdm.nets.swin_unet import SwinUNet, SwinUNetConfig
from cellresdm.nets.vqgan import CHANNEL_GROUPS, VQGAN

__all__ = ["CellResDMLatent", "LatentDenoiser", "time_sampling_stages"]

SECTION = "cellresdm_latent"


class LatentDenoiser(nn.Module):
    """The trained Swin-UNet (``forward(x, t) = unet(x, t)``) with the frozen VQ-GAN ``autoencoder`` alongside."""

    def __init__(self, unet: SwinUNet, autoencoder: VQGAN) -> None:
        super().__init__()
        self.unet = unet
        self.autoencoder = autoencoder.requires_grad_(False)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x (B, 6 D, h, w) ResShift input, t (B,) step -> predicted x0 latent (B, 3 D, h, w)."""
        return self.unet(x, t)

    def train(self, mode: bool = True) -> LatentDenoiser:
        super().train(mode)
        self.autoencoder.eval()  # frozen: never in training mode (dropout off)
        return self


class CellResDMLatent(Method):
    """ResShift + Swin-UNet on VQ-GAN latents (module doc); outputs (B, 7, H, W) in [0, 1].

    ``name`` is the method's name and config section (``cellresdm_latent``, or a variant's, see :meth:`from_config`).
    """

    name = SECTION

    def __init__(
        self,
        schedule: ResShiftSchedule,
        net: SwinUNetConfig,
        autoencoder: VQGAN,
        vqgan_checkpoint: str,
        loss_weighting: str,
        name: str = SECTION,
    ) -> None:
        latent_channels = len(CHANNEL_GROUPS) * autoencoder.config.embed_dim
        if (net.in_channels, net.out_channels) != (2 * latent_channels, latent_channels):
            raise ValueError(
                f"the Swin-UNet must map {2 * latent_channels} to {latent_channels} channels for this VQ-GAN, "
                f"got {net.in_channels} -> {net.out_channels}"
            )
        self.name = name
        self.schedule = schedule
        self.net_config = net
        self.loss_weighting = loss_weighting
        self.vqgan_checkpoint = str(vqgan_checkpoint)
        self.diffusion = ResShiftDiffusion(schedule, loss_weighting=loss_weighting)
        self.network = LatentDenoiser(SwinUNet(net), autoencoder)

    @classmethod
    def from_config(cls, config: dict[str, Any], name: str = SECTION) -> CellResDMLatent:
        """Build from section ``name`` (default ``cellresdm_latent``): ResShift and Swin-UNet keys as section
        ``cellresdm`` plus ``vqgan_checkpoint`` (a trained vqgan ``model.pt`` or a pretrained autoencoder file).

        Another ``name`` (e.g. ``cellresdm_latent_pretrained``, with its own section) gives a second latent variant,
        such as Table 3's pretrained VQ-f4 beside "Our VQ-GAN"; the method is then called ``name``."""
        section = config[name]
        if not section.get("vqgan_checkpoint"):
            raise ConfigError(f"{name}.vqgan_checkpoint is not set: the path of a trained or pretrained VQ-GAN")
        return cls.from_autoencoder(section, load_vqgan(section["vqgan_checkpoint"]), name=name)

    @classmethod
    def from_autoencoder(cls, section: dict[str, Any], autoencoder: VQGAN, name: str = SECTION) -> CellResDMLatent:
        """Build from section ``name``'s ResShift and Swin-UNet keys around an ``autoencoder`` already at hand (an
        exported model file carries its weights, :mod:`cellresdm.export`); ``vqgan_checkpoint`` is kept as the
        record of where it came from."""
        latent_channels = len(CHANNEL_GROUPS) * autoencoder.config.embed_dim
        schedule = resshift_schedule(section)
        net = swin_unet_config(section, in_channels=2 * latent_channels, out_channels=latent_channels)
        return cls(
            schedule, net, autoencoder, section["vqgan_checkpoint"], loss_weighting=section["loss_weighting"], name=name
        )

    def config(self) -> dict[str, Any]:
        return {
            self.name: {
                **resshift_section(self.schedule, self.net_config, self.loss_weighting),
                "vqgan_checkpoint": self.vqgan_checkpoint,
            }
        }

    @property
    def autoencoder(self) -> VQGAN:
        return self.network.autoencoder

    @property
    def factor(self) -> int:
        """f, the VQ-GAN's downsampling factor."""
        return self.autoencoder.downsample_factor

    @property
    def tile_alignment(self) -> int:
        """Tiles start on the latent grid, so every tile takes the same pixels of the noise field (``::f``)."""
        return self.factor

    @torch.no_grad()
    def condition_latent(self, bf: Tensor) -> Tensor:
        """y0 (B, 3 D, H/f, W/f): latent of the condition of ``bf`` (B, 3, H, W) in [0, 1]."""
        return self.autoencoder.encode_groups(condition_of(bf))

    def loss(self, network: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        y0 = self.condition_latent(batch["bf"])
        with torch.no_grad():
            x0 = self.autoencoder.encode_groups(target_of(batch))
        return resshift_loss(self.diffusion, network, x0, y0, generator)

    def noise_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """(T, B, 3 D, H, W) at pixel resolution; :meth:`sample` uses ``noise[..., ::f, ::f]`` (module doc)."""
        channels = len(CHANNEL_GROUPS) * self.autoencoder.config.embed_dim
        return (self.schedule.steps, batch, channels, height, width)

    @property
    def sampling_steps(self) -> int:
        return self.schedule.steps

    @property
    def size_multiple(self) -> int:
        return self.factor * self.network.unet.size_multiple

    @torch.no_grad()
    def sample_latent(
        self, y0: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """ResShift sampling from the condition latent ``y0`` (B, 3 D, h, w); ``noise`` (T, B, 3 D, h * f, w * f)."""
        if noise is not None:
            noise = noise[..., :: self.factor, :: self.factor]
        return self.diffusion.p_sample_loop(self.network, y0, noise=noise, generator=generator, clip_denoised=False)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Latent (B, 3 D, h, w) -> image (B, 7, h * f, w * f) in [0, 1]."""
        return ((self.autoencoder.decode_groups(z, quantize=True).clamp(-1, 1) + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def sample(self, bf: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        return self.decode(self.sample_latent(self.condition_latent(bf), noise=noise, generator=generator))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_sampling_stages(
    method: CellResDMLatent, bf: Tensor, repeats: int = 3, generator: torch.Generator | None = None
) -> dict[str, float]:
    """Seconds per image of the three stages of latent sampling (for Table 3's throughput column).

    Args:
        bf: (B, 3, H, W) BF tiles in [0, 1] on the device the method's network is on.
        repeats: timed runs after one warm-up run; the median is reported.

    Returns:
        ``encode`` (condition -> y0), ``diffusion`` (T UNet calls), ``decode`` (latent -> 7 channels),
        ``total`` and ``images_per_second``; all per image of ``bf``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = bf.device
    stages: dict[str, list[float]] = {"encode": [], "diffusion": [], "decode": []}
    for run in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        y0 = method.condition_latent(bf)
        _sync(device)
        t1 = time.perf_counter()
        z = method.sample_latent(y0, generator=generator)
        _sync(device)
        t2 = time.perf_counter()
        method.decode(z)
        _sync(device)
        t3 = time.perf_counter()
        if run:  # the first run warms up kernels and allocator
            for key, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                stages[key].append(seconds / bf.shape[0])
    out = {key: float(torch.tensor(v).median()) for key, v in stages.items()}
    out["total"] = sum(out.values())
    out["images_per_second"] = 1.0 / out["total"] if out["total"] > 0 else float("inf")
    return out
