"""Palette (Saharia et al. 2022): a conditional DDPM from the BF planes to the 7 target channels.

:class:`ConditionalDDPM` holds everything the DDPM baselines share (schedule, loss with condition dropout,
respaced and guided sampling, config round trip); the subclasses only say how the condition reaches the UNet:

* :class:`Palette`: by concatenation, the network input is ``cat(x_t, y)`` (B, 7 + 3, H, W);
* :class:`cellresdm.methods.spade_diffusion.SpadeDiffusion`: through SPADE in the decoder only.

``y`` is the raw BF (B, 3, H, W) mapped to [-1, 1]; the null condition of classifier-free guidance is zeros.
During training each sample's condition is replaced by the null one with probability ``p_uncond``; sampling
uses ``eps = (1 + w) eps(x, y) - w eps(x, null)`` with ``w = guidance_scale`` (0: the plain conditional model,
Palette's setting). Training runs ``steps`` diffusion steps; sampling runs ``sample_steps`` of them, evenly
spaced (all of them by default, the paper's timing).

Noise: :meth:`ConditionalDDPM.noise_shape` is only the start ``x_T``, (1, B, 7, H, W). The per-step noise
comes from ``generator`` when one is given, otherwise from a generator on the sampling device seeded by a hash
of ``noise``, so the same ``noise`` always gives the same sample, and tiles that share ``x_T`` where they
overlap still draw different per-step noise (see :mod:`cellresdm.diffusion.ddpm`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from cellresdm.diffusion.ddpm import DDPMSchedule, GaussianDiffusion, guided_denoiser
from cellresdm.errors import ConfigError
from cellresdm.methods.base import N_OUTPUT_CHANNELS, Method, target_of
from cellresdm.nets.unet import UNet, UNetConfig

__all__ = ["ConditionalDDPM", "Palette"]

N_BF_PLANES = 3


def _section(config: dict[str, Any], name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    section = config.get(name)
    if not isinstance(section, dict):
        raise ConfigError(f"config key {name!r} is missing or not a mapping")
    missing = [k for k in keys if k not in section]
    if missing:
        raise ConfigError(f"config key {name!r} lacks {', '.join(f'{name}.{k}' for k in missing)}")
    return section


class ConditionalDDPM(Method):
    """eps-predicting UNet trained with the DDPM loss, condition dropout for classifier-free guidance.

    Args:
        schedule: training schedule (T steps, linear betas).
        net: UNet hyper-parameters; ``in_channels`` / ``spade_decoder`` / ``cond_channels`` are set here from
            the subclass's conditioning.
        sample_steps: steps used at sampling (evenly spaced among the T; T = the full chain).
        guidance_scale: classifier-free guidance ``w`` (0 = conditional model only).
        p_uncond: probability of training a sample on the null condition.
    """

    #: The condition enters through SPADE in the decoder (else it is concatenated to the input).
    spade: ClassVar[bool] = False
    #: Keys of the config section that :meth:`from_config` reads.
    config_keys: ClassVar[tuple[str, ...]] = (
        "steps",
        "beta_start",
        "beta_end",
        "sample_steps",
        "guidance_scale",
        "p_uncond",
        "model_channels",
        "channel_mult",
        "num_res_blocks",
        "attention_levels",
        "head_channels",
        "dropout",
    )

    def __init__(
        self,
        schedule: DDPMSchedule,
        net: UNetConfig,
        sample_steps: int,
        guidance_scale: float,
        p_uncond: float,
    ):
        if not 1 <= sample_steps <= schedule.steps:
            raise ConfigError(f"{self.name}.sample_steps must be in [1, {self.name}.steps={schedule.steps}]")
        if not 0 <= p_uncond < 1:
            raise ConfigError(f"{self.name}.p_uncond must be in [0, 1), got {p_uncond!r}")
        if not math.isfinite(guidance_scale):
            raise ConfigError(f"{self.name}.guidance_scale must be finite, got {guidance_scale!r}")
        if guidance_scale != 0 and p_uncond == 0:
            raise ConfigError(f"{self.name}.guidance_scale != 0 needs an unconditional model: set p_uncond > 0")
        self.schedule = schedule
        self.net_config = replace(
            net,
            in_channels=N_OUTPUT_CHANNELS + (0 if self.spade else N_BF_PLANES),
            out_channels=N_OUTPUT_CHANNELS,
            spade_decoder=self.spade,
            cond_channels=N_BF_PLANES,
            use_timestep=True,
        )
        self.sample_steps = sample_steps
        self.guidance_scale = float(guidance_scale)
        self.p_uncond = float(p_uncond)
        self.diffusion = GaussianDiffusion.from_schedule(schedule)
        self.sampling_diffusion = self.diffusion.respace(sample_steps)
        try:
            self.network = UNet(self.net_config)
        except ValueError as exc:
            raise ConfigError(f"config key {self.name!r}: {exc}") from exc
        #: draw a tqdm bar over the sampling steps
        self.progress = False

    # ------------------------------------------------------------------ config
    @classmethod
    def unet_config(cls, section: dict[str, Any]) -> UNetConfig:
        """The UNet hyper-parameters of a config section (the conditioning fields are set by ``__init__``)."""
        return UNetConfig(
            model_channels=section["model_channels"],
            channel_mult=tuple(section["channel_mult"]),
            num_res_blocks=section["num_res_blocks"],
            attention_levels=tuple(section["attention_levels"]),
            head_channels=section["head_channels"],
            dropout=section["dropout"],
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ConditionalDDPM:
        """Build from ``config[cls.name]`` (the method's section; :attr:`config_keys` must be present)."""
        section = _section(config, cls.name, cls.config_keys)
        try:
            schedule = DDPMSchedule(section["steps"], section["beta_start"], section["beta_end"])
            net = cls.unet_config(section)
        except ValueError as exc:
            raise ConfigError(f"config key {cls.name!r}: {exc}") from exc
        return cls(
            schedule,
            net,
            sample_steps=section["sample_steps"],
            guidance_scale=section["guidance_scale"],
            p_uncond=section["p_uncond"],
        )

    def config(self) -> dict[str, Any]:
        s, n = self.schedule, self.net_config
        section = {
            "steps": s.steps,
            "beta_start": s.beta_start,
            "beta_end": s.beta_end,
            "sample_steps": self.sample_steps,
            "guidance_scale": self.guidance_scale,
            "p_uncond": self.p_uncond,
            "model_channels": n.model_channels,
            "channel_mult": list(n.channel_mult),
            "num_res_blocks": n.num_res_blocks,
            "attention_levels": list(n.attention_levels),
            "head_channels": n.head_channels,
            "dropout": n.dropout,
        }
        if self.spade:
            section["spade_hidden"] = n.spade_hidden
        return {self.name: section}

    # ------------------------------------------------------------------ network call
    def _eps(self, network: nn.Module, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """eps (B, 7, H, W) for x_t (B, 7, H, W) under the condition y (B, 3, H, W): ONE call of ``network``."""
        if self.spade:
            return network(x_t, t, y)
        return network(torch.cat([x_t, y], dim=1), t)

    # ------------------------------------------------------------------ Method
    def loss(self, network: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        x0 = target_of(batch)
        y = batch["bf"] * 2 - 1
        b, device = x0.shape[0], x0.device
        t = torch.randint(0, self.schedule.steps, (b,), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        dropped = (torch.rand(b, generator=generator) < self.p_uncond).to(device)
        y = torch.where(dropped[:, None, None, None], torch.zeros_like(y), y)
        losses = self.diffusion.training_losses(lambda x_t, tt: self._eps(network, x_t, tt, y), x0, t, noise)
        return losses["loss"].mean()

    def noise_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        return (1, batch, N_OUTPUT_CHANNELS, height, width)

    @property
    def sampling_steps(self) -> int:
        return self.sample_steps

    @property
    def size_multiple(self) -> int:
        return self.network.size_multiple

    @torch.no_grad()
    def sample(self, bf: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """(B, 7, H, W) in [0, 1] for ``bf`` (B, 3, H, W) in [0, 1]; ``sample_steps`` reverse steps (x2 batch
        when guided). ``noise`` (1, B, 7, H, W) is x_T; see the module doc for the per-step noise."""
        b, _, h, w = bf.shape
        shape = self.noise_shape(b, h, w)
        device = bf.device
        if noise is None:
            if generator is None:  # an explicit generator keeps the sampler's own draws off the global RNG
                generator = torch.Generator(device).manual_seed(int(torch.randint(2**62, (1,))))
            noise = torch.randn(shape, generator=generator, device=generator.device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        if generator is None:
            digest = hashlib.blake2b(noise.detach().float().cpu().numpy().tobytes(), digest_size=8).digest()
            generator = torch.Generator(device).manual_seed(int.from_bytes(digest, "little") >> 1)
        x_T = noise[0].to(device=device, dtype=bf.dtype)
        y = bf * 2 - 1
        denoise = guided_denoiser(
            lambda x, t, c: self._eps(self.network, x, t, c), y, torch.zeros_like(y), self.guidance_scale
        )
        x0 = self.sampling_diffusion.p_sample_loop(denoise, x_T, generator, progress=self.progress)
        return ((x0 + 1) / 2).clamp(0, 1)


class Palette(ConditionalDDPM):
    """Palette: the BF condition concatenated to the noisy target at the UNet input."""

    name = "palette"
