"""Training stage of the VQ-GAN autoencoder that latent CellResDM diffuses in (config section ``vqgan``).

The shared :class:`~cellresdm.train.Trainer` optimises :class:`VQGANTraining`, a container of the autoencoder and a
PatchGAN discriminator whose ``forward(x)`` returns every loss term, with its single AdamW by simultaneous gradient
descent:

* autoencoder: ``l1_weight * |x - x_rec| + codebook_weight * (codebook + beta commitment loss)
  + on * adversarial_weight * lambda * generator GAN loss``; the generator term evaluates the discriminator with
  detached parameters (:func:`~cellresdm.nets.discriminator.frozen_call`), so it never updates the discriminator;
* discriminator: ``on * discriminator GAN loss`` on real images and *detached* reconstructions.

``lambda`` is taming-transformers' adaptive weight ``||grad_w L1|| / (||grad_w G|| + 1e-4)`` (clamped to [0, 1e4],
no gradient) at the weight ``w`` of the decoder's output convolution, so the adversarial gradient reaching the
decoder is ``adversarial_weight`` times the reconstruction gradient whatever the scale of the discriminator's
logits. The adversarial term trades MSE for sharpness, hence the late start and the small default weight: on the
demo data (64-channel [1, 2, 4] autoencoder, 1000 steps) switching it on at step 500 with weight 0.5 doubled the
validation MSE of the 7 channels in [0, 1] (0.016 -> 0.032), and a *constant* weight of 0.1 (no lambda) did the
same (0.0145 -> 0.034; predicting each channel's mean gives 0.032).

``on`` switches the adversarial game on after ``disc_start`` optimizer steps. The trainer gives the loss no step
number, so the container counts its own training forwards in the ``step`` buffer: it is saved in checkpoints (an
exact resume), copied into the EMA, and identical on every DDP rank. Before ``disc_start`` both GAN terms are still
computed (weight 0), so every parameter gets a gradient at every step as DDP requires. There is no perceptual
(LPIPS) term: it needs pretrained VGG weights this project cannot download.

Training images are the 3-channel groups of :data:`cellresdm.nets.vqgan.CHANNEL_GROUPS` cut from the 7 target
channels of each crop, (B, 7, H, W) -> (3B, 3, H, W), in [-1, 1].

Trained model (``model.pt`` of the trainer, ``config = {"method": "vqgan", "vqgan": {...}}``) and standalone
autoencoder files (:func:`save_vqgan`, ``{"format": "cellresdm-vqgan", "config", "state_dict"}``: how a pretrained
VQ-f4 is supplied) both load with :func:`load_vqgan`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.io import atomic_path, load_torch_dict
from cellresdm.methods.base import target_of
from cellresdm.nets.discriminator import (
    GAN_MODES,
    PatchDiscriminator,
    discriminator_loss,
    frozen_call,
    generator_loss,
)
from cellresdm.nets.vqgan import VQGAN, VQGANConfig, split_groups

__all__ = [
    "VQGAN_FORMAT",
    "VQGANLossConfig",
    "VQGANStage",
    "VQGANTraining",
    "load_vqgan",
    "save_vqgan",
    "train_settings",
    "train_vqgan",
    "vqgan_config",
]

log = logging.getLogger("cellresdm")

#: ``format`` tag of a standalone autoencoder file written by :func:`save_vqgan`.
VQGAN_FORMAT = "cellresdm-vqgan"
SECTION = "vqgan"


@dataclass(frozen=True)
class VQGANLossConfig:
    """Weights of the VQ-GAN loss terms, the step the adversarial game starts at and the GAN objective
    (``hinge``, ``lsgan`` or ``bce``; see the module doc): keys of section ``vqgan``, whose schema holds the
    defaults."""

    l1: float
    codebook: float
    adversarial: float
    disc_start: int
    gan_loss: str


def _section(config: dict[str, Any], name: str = SECTION) -> dict[str, Any]:
    section = config.get(name)
    if not isinstance(section, dict):
        raise ConfigError(f"config section '{name}' is missing")
    return section


def _key(section: dict[str, Any], key: str, name: str = SECTION) -> Any:
    if key not in section:
        raise ConfigError(f"config key '{name}.{key}' is missing")
    return section[key]


def vqgan_config(section: dict[str, Any]) -> VQGANConfig:
    """The autoencoder architecture of a ``vqgan`` config section."""
    try:
        return VQGANConfig(
            channels=_key(section, "channels"),
            channel_mult=tuple(_key(section, "channel_mult")),
            num_res_blocks=_key(section, "num_res_blocks"),
            embed_dim=_key(section, "embed_dim"),
            codebook_size=_key(section, "codebook_size"),
            beta=_key(section, "beta"),
            l2_normalize=_key(section, "l2_normalize"),
        )
    except ValueError as exc:
        raise ConfigError(f"config section '{SECTION}': {exc}") from exc


class VQGANTraining(nn.Module):
    """Autoencoder + discriminator; ``forward(x (N, 3, H, W) in [-1, 1])`` returns the loss terms (module doc)."""

    def __init__(self, vqgan: VQGAN, discriminator: nn.Module, weights: VQGANLossConfig) -> None:
        super().__init__()
        self.vqgan = vqgan
        self.discriminator = discriminator
        self.weights = weights
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Scalar tensors ``loss`` (the weighted sum that is minimised) and, detached, ``l1``, ``codebook``,
        ``g_adv``, ``d`` and ``adaptive_weight``."""
        w = self.weights
        recon, codebook = self.vqgan(x)
        l1 = (recon - x).abs().mean()
        on = (self.step >= w.disc_start).to(l1.dtype)
        d = discriminator_loss(self.discriminator(x), self.discriminator(recon.detach()), w.gan_loss)
        g_adv = generator_loss(frozen_call(self.discriminator, recon), w.gan_loss)
        lam = self._adaptive_weight(w.l1 * l1, g_adv)
        if self.training and torch.is_grad_enabled():
            self.step += 1
        loss = w.l1 * l1 + w.codebook * codebook + on * (w.adversarial * lam * g_adv + d)
        terms = {"l1": l1, "codebook": codebook, "g_adv": g_adv, "d": d, "adaptive_weight": lam}
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}

    def _adaptive_weight(self, reconstruction: Tensor, adversarial: Tensor) -> Tensor:
        """lambda of the module doc; 1 where no gradient can be taken (evaluation under no_grad)."""
        if not (torch.is_grad_enabled() and reconstruction.requires_grad and adversarial.requires_grad):
            return reconstruction.new_ones(())
        last = self.vqgan.decoder[-1].weight  # the decoder's output convolution
        # gradients of the last layer only (no AccumulateGrad, so DDP's reducer is untouched, as in LDM)
        g_rec = torch.autograd.grad(reconstruction, last, retain_graph=True)[0]
        g_adv = torch.autograd.grad(adversarial, last, retain_graph=True)[0]
        return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0, 1e4).detach()


class VQGANStage:
    """The VQ-GAN as a trainable stage: ``network`` for the shared trainer, ``loss``, ``config``/``from_config``."""

    name = SECTION

    def __init__(
        self,
        config: VQGANConfig,
        weights: VQGANLossConfig,
        disc_channels: int,
        disc_layers: int,
        crop_size: int,
    ) -> None:
        if weights.gan_loss not in GAN_MODES:
            raise ConfigError(f"{SECTION}.gan_loss must be one of {', '.join(GAN_MODES)}, got {weights.gan_loss!r}")
        self.vqgan_config = config
        self.weights = weights
        self.disc_channels = disc_channels
        self.disc_layers = disc_layers
        self.crop_size = crop_size
        discriminator = PatchDiscriminator(config.in_channels, base_channels=disc_channels, n_layers=disc_layers)
        if crop_size < discriminator.min_size or crop_size % (2 ** (len(config.channel_mult) - 1)):
            raise ConfigError(
                f"{SECTION}.crop_size {crop_size} must be a multiple of the VQ-GAN's downsampling factor and at least "
                f"{discriminator.min_size} for a discriminator of {disc_layers} layers"
            )
        self.network = VQGANTraining(VQGAN(config), discriminator, weights)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VQGANStage:
        section = _section(config)
        weights = VQGANLossConfig(
            l1=_key(section, "l1_weight"),
            codebook=_key(section, "codebook_weight"),
            adversarial=_key(section, "adversarial_weight"),
            disc_start=_key(section, "disc_start"),
            gan_loss=_key(section, "gan_loss"),
        )
        return cls(
            vqgan_config(section),
            weights,
            disc_channels=_key(section, "disc_channels"),
            disc_layers=_key(section, "disc_layers"),
            crop_size=_key(section, "crop_size"),
        )

    def config(self) -> dict[str, Any]:
        c, w = self.vqgan_config, self.weights
        return {
            SECTION: {
                "channels": c.channels,
                "channel_mult": list(c.channel_mult),
                "num_res_blocks": c.num_res_blocks,
                "embed_dim": c.embed_dim,
                "codebook_size": c.codebook_size,
                "beta": c.beta,
                "l2_normalize": c.l2_normalize,
                "l1_weight": w.l1,
                "codebook_weight": w.codebook,
                "adversarial_weight": w.adversarial,
                "disc_start": w.disc_start,
                "gan_loss": w.gan_loss,
                "disc_channels": self.disc_channels,
                "disc_layers": self.disc_layers,
                "crop_size": self.crop_size,
            }
        }

    def loss(self, network: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        """Weighted VQ-GAN loss of the 3 channel groups of every crop; deterministic (``generator`` is unused)."""
        return network(split_groups(target_of(batch)))["loss"]


def train_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The trainer settings of the VQ-GAN: section ``train`` with the keys of ``vqgan.train`` replacing its own."""
    return {**_section(config, "train"), **(_section(config).get("train") or {})}


def train_vqgan(config: dict[str, Any], dataset_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Train the VQ-GAN on a dataset split with the shared trainer; returns ``out_dir/model.pt``.

    Settings: :func:`train_settings`; initial weights and ``train.crops_per_field`` crops of ``vqgan.crop_size``
    per field (with flips) seeded by ``train.seed``, so a run repeats exactly.
    """
    from cellresdm.dataset import CellPaintingDataset
    from cellresdm.train import Trainer, TrainSettings

    train = train_settings(config)
    torch.manual_seed(train["seed"])  # the initial weights depend on the seed alone
    stage = VQGANStage.from_config(config)
    settings = TrainSettings.from_config(train)
    dataset = CellPaintingDataset(
        dataset_path,
        crop_size=stage.crop_size,
        flips=True,
        seed=train["seed"],
        crops_per_field=settings.crops_per_field,
    )
    log.info(
        "training the VQ-GAN on %s (%d fields x %d crops), %d autoencoder + %d discriminator parameters",
        dataset_path,
        dataset.n_fields,
        dataset.crops_per_field,
        sum(p.numel() for p in stage.network.vqgan.parameters()),
        sum(p.numel() for p in stage.network.discriminator.parameters()),
    )
    trainer = Trainer(
        stage.network,
        stage.loss,
        dataset,
        settings,
        Path(out_dir),
        config={"method": SECTION, **stage.config()},
        log=log,
    )
    return trainer.train()


def save_vqgan(vqgan: VQGAN, path: str | os.PathLike) -> Path:
    """Write ``vqgan`` as a standalone autoencoder file (format :data:`VQGAN_FORMAT`), atomically."""
    path = Path(path)
    state = {"format": VQGAN_FORMAT, "config": asdict(vqgan.config), "state_dict": vqgan.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_vqgan(path: str | os.PathLike) -> VQGAN:
    """The autoencoder of a trained VQ-GAN ``model.pt`` (its EMA weights) or of a :func:`save_vqgan` file, in
    eval mode with ``requires_grad`` off.

    Raises:
        CellResDMError: naming ``path`` when it is missing, unreadable or holds no VQ-GAN of this project.
    """
    path = Path(path)
    if not path.is_file():
        raise CellResDMError(f"{path}: VQ-GAN checkpoint is missing (train the vqgan stage or set the path)")
    obj = load_torch_dict(path, "VQ-GAN checkpoint")
    try:
        if obj.get("format") == VQGAN_FORMAT:
            fields = dict(obj["config"])
            fields["channel_mult"] = tuple(fields["channel_mult"])
            config, state = VQGANConfig(**fields), obj["state_dict"]
        elif (obj.get("config") or {}).get("method") == SECTION and "ema" in obj:
            config = vqgan_config(obj["config"][SECTION])
            prefix = "vqgan."
            state = {k[len(prefix) :]: v for k, v in obj["ema"].items() if k.startswith(prefix)}
        else:
            raise CellResDMError(
                f"{path}: not a VQ-GAN checkpoint (neither a trained vqgan model.pt nor a {VQGAN_FORMAT!r} file)"
            )
        model = VQGAN(config)
        model.load_state_dict(state)
    except ConfigError as exc:  # a model.pt whose vqgan section is incomplete
        raise CellResDMError(f"{path}: {exc}") from exc
    except CellResDMError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CellResDMError(f"{path}: VQ-GAN checkpoint does not fit its configuration: {exc}") from exc
    model.requires_grad_(False)
    return model.eval()
