"""CellResDM as a method: condition layout, learning on fixed images, whole-field sampling."""

from __future__ import annotations

import importlib

import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

from cellresdm.config import section, validate_config
from cellresdm.errors import CellResDMError
from cellresdm.methods import _REGISTRY, build_method, cellresdm_latent, cellresdm_pixel, method_names, resshift_common
from cellresdm.methods.base import Method, condition_of, target_of
from cellresdm.sample import SampleSettings, predict_field
from cellresdm.steps import sample_method
from cellresdm.train import Trainer, TrainSettings, load_model_weights

TINY = {"steps": 4, "min_noise_level": 0.2, "model_channels": 16, "channel_mult": [1, 2], "crop_size": 32}


def tiny_method():
    torch.manual_seed(0)
    return build_method("cellresdm", validate_config({"cellresdm": TINY}))


class FixedImages(Dataset):
    """Four fixed fields whose IF and boundaries are functions of their BF planes."""

    def __init__(self, n: int = 4, size: int = 16):
        g = torch.Generator().manual_seed(3)
        self.bf = torch.rand(n, 3, size, size, generator=g)
        smooth = torch.nn.functional.avg_pool2d(self.bf, 5, 1, 2)
        self.fluo = torch.cat([smooth[:, :1], 1 - smooth[:, :1], smooth[:, 1:2], smooth[:, 2:3], smooth[:, :1] ** 2], 1)
        self.boundaries = (smooth[:, 1:3] > 0.5).float()

    def __len__(self) -> int:
        return len(self.bf)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"bf": self.bf[i], "if": self.fluo[i], "boundaries": self.boundaries[i]}


def test_condition_repeats_the_in_focus_plane_under_the_if_channels():
    bf = torch.rand(2, 3, 8, 8)
    y0 = condition_of(bf)
    assert y0.shape == (2, 7, 8, 8) and y0.min() >= -1 and y0.max() <= 1
    for c in range(5):
        torch.testing.assert_close(y0[:, c], bf[:, 0] * 2 - 1)
    torch.testing.assert_close(y0[:, 5:], bf[:, 1:] * 2 - 1)
    batch = {"if": torch.zeros(1, 5, 4, 4), "boundaries": torch.ones(1, 2, 4, 4)}
    assert target_of(batch)[0, :5].eq(-1).all() and target_of(batch)[0, 5:].eq(1).all()


def test_every_method_implements_from_config():
    assert "from_config" in Method.__abstractmethods__
    for name in method_names():
        module, cls = _REGISTRY[name]
        method = getattr(importlib.import_module(module), cls)
        assert not getattr(method.from_config, "__isabstractmethod__", False), name
    # pixel and latent CellResDM share one set of ResShift helpers
    assert cellresdm_pixel.resshift_loss is cellresdm_latent.resshift_loss is resshift_common.resshift_loss


def test_overfits_four_fixed_images_and_samples_them(tmp_path):
    method = tiny_method()
    data = FixedImages()
    settings = TrainSettings.from_config(
        section(
            "train",
            {"steps": 250, "batch_size": 4, "lr": 3e-3, "warmup_steps": 5, "ema_decay": 0.9, "checkpoint_every": 250},
        )
    )
    model_path = Trainer(
        method.network, method.loss, data, settings, tmp_path, config=method.config(), progress=False
    ).train()
    log = pd.read_csv(tmp_path / "train_log.csv")
    first, last = log["loss"].head(5).mean(), log["loss"].tail(10).mean()
    assert last < first / 10, (first, last)

    # rebuilt from the checkpoint alone, with its EMA weights, as the sample rule does
    sampler = build_method("cellresdm", torch.load(model_path, weights_only=False)["config"])
    load_model_weights(model_path, sampler.network, ema=True)
    sampler.network.eval()
    pred = sampler.sample(data.bf, generator=torch.Generator().manual_seed(0))
    target = torch.cat([data.fluo, data.boundaries], 1)
    trivial = data.bf[:, :1].expand(-1, 7, -1, -1)
    assert pred.shape == target.shape and pred.min() >= 0 and pred.max() <= 1
    assert (pred - target).abs().mean() < 0.5 * (trivial - target).abs().mean()


def test_whole_field_of_one_tile_equals_direct_sampling():
    method = tiny_method()
    for p in method.network.parameters():  # leave the identity-at-init state so the output depends on inputs
        p.data.add_(0.05 * torch.randn_like(p))
    method.network.eval()
    bf = torch.rand(3, 64, 64)
    noise = torch.randn(method.noise_shape(1, 64, 64), generator=torch.Generator().manual_seed(5))
    direct = method.sample(bf[None], noise=noise)
    whole = predict_field(
        method,
        bf,
        SampleSettings.from_config(section("sample", {"tile": 64, "overlap": 16})),
        torch.Generator().manual_seed(5),
        torch.device("cpu"),
    )
    torch.testing.assert_close(whole, direct, atol=1e-6, rtol=0)
    tiled = predict_field(
        method,
        bf,
        SampleSettings.from_config(section("sample", {"tile": 32, "overlap": 16})),
        torch.Generator().manual_seed(5),
        torch.device("cpu"),
    )
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all()


def test_model_file_from_before_a_network_key_names_the_file(tmp_path):
    method = tiny_method()
    section = dict(method.config()["cellresdm"])
    del section["swin_embed_dim"]  # written before the key existed
    model = tmp_path / "model.pt"
    torch.save({"config": {"cellresdm": section}, "ema": method.network.state_dict()}, model)
    with pytest.raises(CellResDMError, match=r"model\.pt.*swin_embed_dim.*retrain"):
        sample_method("cellresdm", str(model), "unused.zarr", "out.zarr", {})
