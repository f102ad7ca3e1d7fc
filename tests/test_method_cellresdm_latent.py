"""Latent CellResDM: learning on fixed images, frozen autoencoder, sampling, noise tiling, config round trip."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from test_cellresdm_method import FixedImages

from cellresdm.config import section
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.methods.cellresdm_latent import CellResDMLatent, time_sampling_stages
from cellresdm.methods.vqgan import save_vqgan
from cellresdm.nets.vqgan import VQGAN, VQGANConfig
from cellresdm.sample import SampleSettings, predict_field
from cellresdm.train import Trainer, TrainSettings, load_model_weights

SECTION = {
    "steps": 4,
    "kappa": 2.0,
    "power": 0.3,
    "min_noise_level": 0.2,
    "loss_weighting": "uniform",
    "model_channels": 16,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "swin_depth": 2,
    "window_size": 4,
    "swin_embed_dim": 8,
}


@pytest.fixture
def vqgan_file(tmp_path):
    torch.manual_seed(0)
    vqgan = VQGAN(VQGANConfig(channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, embed_dim=3, codebook_size=32))
    return save_vqgan(vqgan, tmp_path / "vq_f4.pt")


def build(vqgan_file) -> CellResDMLatent:
    torch.manual_seed(0)
    return CellResDMLatent.from_config({"cellresdm_latent": {**SECTION, "vqgan_checkpoint": str(vqgan_file)}})


def perturbed(method: CellResDMLatent) -> CellResDMLatent:
    """Leave the UNet's identity-at-init state so the output depends on the inputs and the noise."""
    for p in method.network.unet.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    method.network.eval()
    return method


def test_loss_falls_and_the_autoencoder_stays_frozen(tmp_path, vqgan_file):
    method = build(vqgan_file)
    autoencoder_before = {k: v.clone() for k, v in method.network.autoencoder.state_dict().items()}
    data = FixedImages()
    settings = TrainSettings.from_config(
        section(
            "train",
            {"steps": 120, "batch_size": 4, "lr": 3e-3, "warmup_steps": 5, "ema_decay": 0.9, "checkpoint_every": 120},
        )
    )
    model_path = Trainer(
        method.network, method.loss, data, settings, tmp_path / "run", config=method.config(), progress=False
    ).train()
    log = pd.read_csv(tmp_path / "run" / "train_log.csv")
    first, last = log["loss"].head(5).mean(), log["loss"].tail(10).mean()
    assert last < first / 10, (first, last)
    assert not any(p.requires_grad for p in method.network.autoencoder.parameters())
    for k, v in method.network.autoencoder.state_dict().items():
        torch.testing.assert_close(v, autoencoder_before[k])

    # rebuilt from the checkpoint alone with its EMA weights, as the sample rule does
    sampler = CellResDMLatent.from_config(torch.load(model_path, weights_only=False)["config"])
    load_model_weights(model_path, sampler.network, ema=True)
    sampler.network.eval()
    pred = sampler.sample(data.bf, generator=torch.Generator().manual_seed(0))
    assert pred.shape == (4, 7, 16, 16) and pred.min() >= 0 and pred.max() <= 1


def test_same_noise_same_output_and_one_tile_equals_direct_sampling(vqgan_file):
    method = perturbed(build(vqgan_file))
    assert method.size_multiple == 4 * method.network.unet.size_multiple == 32
    bf = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    shape = method.noise_shape(1, 32, 32)
    assert shape == (4, 1, 9, 32, 32)  # pixel resolution, 3 groups x embed_dim 3
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    first, second = method.sample(bf, noise=noise), method.sample(bf, noise=noise)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert first.shape == (1, 7, 32, 32) and first.min() >= 0 and first.max() <= 1
    other = method.sample(bf, noise=torch.randn(shape, generator=torch.Generator().manual_seed(6)))
    assert not torch.equal(first, other)

    whole = predict_field(
        method,
        bf[0],
        SampleSettings.from_config(section("sample", {"tile": 32, "overlap": 8})),
        torch.Generator().manual_seed(5),
        torch.device("cpu"),
    )
    torch.testing.assert_close(whole, first, atol=1e-6, rtol=0)

    stages = time_sampling_stages(method, bf, repeats=1)
    assert set(stages) == {"encode", "diffusion", "decode", "total", "images_per_second"}
    assert stages["total"] > 0


def test_config_round_trip_and_missing_autoencoder(tmp_path, vqgan_file):
    method = build(vqgan_file)
    config = method.config()
    assert config == {"cellresdm_latent": {**SECTION, "vqgan_checkpoint": str(vqgan_file)}}
    rebuilt = CellResDMLatent.from_config(config)
    assert rebuilt.config() == config
    shapes = {k: v.shape for k, v in method.network.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.network.state_dict().items()} == shapes
    variant = CellResDMLatent.from_config(
        {"cellresdm_latent_pretrained": config["cellresdm_latent"]}, "cellresdm_latent_pretrained"
    )
    assert variant.name == "cellresdm_latent_pretrained" and variant.config() == {variant.name: config[method.name]}
    with pytest.raises(CellResDMError, match="missing.pt"):
        CellResDMLatent.from_config({"cellresdm_latent": {**SECTION, "vqgan_checkpoint": str(tmp_path / "missing.pt")}})
    with pytest.raises(ConfigError, match="cellresdm_latent.vqgan_checkpoint"):
        CellResDMLatent.from_config({"cellresdm_latent": {**SECTION, "vqgan_checkpoint": None}})
