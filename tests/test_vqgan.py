"""VQ-GAN f=4: quantiser gradients, channel groups, the GAN training container, training, checkpoint files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

from cellresdm.config import section
from cellresdm.errors import CellResDMError
from cellresdm.methods.base import target_of
from cellresdm.methods.vqgan import VQGANStage, load_vqgan, save_vqgan, train_settings, train_vqgan
from cellresdm.nets.discriminator import discriminator_loss
from cellresdm.nets.vqgan import CHANNEL_GROUPS, VQGAN, VQGANConfig, merge_groups, split_groups
from cellresdm.train import Trainer, TrainSettings

TINY = {
    "channels": 8,
    "channel_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "embed_dim": 3,
    "codebook_size": 64,
    "beta": 0.25,
    "l2_normalize": False,
    "l1_weight": 1.0,
    "codebook_weight": 1.0,
    "adversarial_weight": 0.1,
    "disc_start": 40,
    "gan_loss": "hinge",
    "disc_channels": 8,
    "disc_layers": 2,
    "crop_size": 16,
}


def tiny_vqgan(**changes) -> VQGAN:
    torch.manual_seed(0)
    fields = {k: TINY[k] for k in ("channels", "num_res_blocks", "embed_dim", "codebook_size")}
    return VQGAN(VQGANConfig(channel_mult=(1, 2, 2), **{**fields, **changes}))


class SmoothFields(Dataset):
    """Fixed fields: smooth random IF channels and boundary masks derived from them, all in [0, 1]."""

    def __init__(self, n: int = 4, size: int = 16):
        g = torch.Generator().manual_seed(1)
        base = torch.nn.functional.avg_pool2d(torch.rand(n, 7, size, size, generator=g), 5, 1, 2)
        base = (base - base.amin((2, 3), keepdim=True)) / (base.amax((2, 3), keepdim=True) - base.amin((2, 3), True))
        self.bf = base[:, :3]
        self.fluo = base[:, :5]
        self.boundaries = (base[:, 5:] > 0.5).float()

    def __len__(self) -> int:
        return len(self.bf)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"bf": self.bf[i], "if": self.fluo[i], "boundaries": self.boundaries[i]}

    def groups(self) -> torch.Tensor:
        return split_groups(target_of({"if": self.fluo, "boundaries": self.boundaries}))


def test_channel_groups_follow_the_target_order_and_dna_is_averaged():
    assert CHANNEL_GROUPS == ((4, 3, 0), (1, 2, 0), (0, 5, 6))  # (Mito, AGP, DNA), (RNA, ER, DNA), (DNA, nuc, cells)
    x7 = torch.randn(2, 7, 8, 8)
    groups = split_groups(x7)
    assert groups.shape == (6, 3, 8, 8)
    torch.testing.assert_close(groups[3 * 1 + 2], x7[1, [0, 5, 6]])  # sample 1, group 2
    torch.testing.assert_close(merge_groups(groups), x7)
    groups[0::3, 2] = 1.0  # DNA as reconstructed from each group: 1, 2, 6
    groups[1::3, 2] = 2.0
    groups[2::3, 0] = 6.0
    merged = merge_groups(groups)
    assert merged[:, 0].eq(3.0).all()
    torch.testing.assert_close(merged[:, 1:], x7[:, 1:])


def test_group_encoding_shapes_and_consistency_with_single_images():
    model = tiny_vqgan().eval()
    x7 = torch.rand(2, 7, 16, 16) * 2 - 1
    z = model.encode_groups(x7)
    assert model.downsample_factor == 4 and z.shape == (2, 9, 4, 4)
    torch.testing.assert_close(z[1, 3:6], model.encode(x7[1:2, [1, 2, 0]])[0])
    out = model.decode_groups(z)
    assert out.shape == (2, 7, 16, 16)
    torch.testing.assert_close(out, merge_groups(model.decode(z.reshape(6, 3, 4, 4))))
    with pytest.raises(ValueError, match="multiples of 4"):
        model.encode(torch.zeros(1, 3, 10, 16))


def test_quantiser_snaps_to_codes_and_the_straight_through_gradient_reaches_the_encoder():
    for l2 in (False, True):
        model = tiny_vqgan(l2_normalize=l2)
        z = model.encode(torch.rand(2, 3, 16, 16) * 2 - 1)
        z_q, codebook_loss, idx = model.quantizer(z)
        torch.testing.assert_close(z_q.permute(0, 2, 3, 1), model.quantizer.codes()[idx])
        if l2:
            torch.testing.assert_close(z.norm(dim=1), torch.ones(2, 4, 4))
        recon, codebook_loss = model(torch.rand(2, 3, 16, 16) * 2 - 1)
        (recon.abs().mean() + codebook_loss).backward()
        assert model.encoder[0].weight.grad.abs().sum() > 0  # through the quantiser to the first encoder conv
        assert model.quantizer.codebook.weight.grad.abs().sum() > 0


def test_generator_term_never_updates_the_discriminator():
    stage = VQGANStage.from_config({"vqgan": {**TINY, "disc_start": 0}})
    net = stage.network
    x = SmoothFields().groups()
    out = net(x)
    assert int(net.step) == 1 and out["loss"].ndim == 0 and out["adaptive_weight"] > 0
    out["loss"].backward()
    got = [p.grad.clone() for p in net.discriminator.parameters()]
    net.zero_grad()
    recon, _ = net.vqgan(x)
    discriminator_loss(net.discriminator(x), net.discriminator(recon.detach())).backward()
    for g, want in zip(got, net.discriminator.parameters(), strict=True):
        torch.testing.assert_close(g, want.grad)
    net.eval()
    net(x)
    assert int(net.step) == 1  # evaluation forwards do not count as training steps


def test_reconstruction_error_falls_with_the_shared_trainer(tmp_path):
    torch.manual_seed(0)
    stage = VQGANStage.from_config({"vqgan": dict(TINY)})
    data = SmoothFields()
    x = data.groups()

    def l1() -> float:
        with torch.no_grad():
            return float((stage.network.vqgan(x)[0] - x).abs().mean())

    before = l1()
    settings = TrainSettings.from_config(
        section(
            "train",
            {"steps": 60, "batch_size": 4, "lr": 3e-3, "warmup_steps": 5, "ema_decay": 0.5, "checkpoint_every": 60},
        )
    )
    model_path = Trainer(
        stage.network,
        stage.loss,
        data,
        settings,
        tmp_path,
        config={"method": "vqgan", **stage.config()},
        progress=False,
    ).train()
    after = l1()
    assert after < 0.5 * before, (before, after)
    assert int(stage.network.step) == 60  # the adversarial game ran from step 40 on
    loaded = load_vqgan(model_path)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    with torch.no_grad():
        assert float((loaded(x)[0] - x).abs().mean()) < 0.6 * before


def write_dataset(path, n: int = 4, size: int = 32) -> None:
    import zarr

    data = SmoothFields(n, size)
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    arrays = {"bf": data.bf, "if": data.fluo, "boundaries": data.boundaries}
    for name, values in arrays.items():
        root.create_array(name, data=values.numpy().astype(np.float32))
    root.create_array("labels", data=np.zeros((n, 2, size, size), dtype=np.int32))
    pd.DataFrame({"plate": "P1", "field": [f"f{i}" for i in range(n)], "index": range(n)}).to_parquet(
        path / "fields.parquet", index=False
    )


def test_train_vqgan_uses_its_own_train_overrides(tmp_path):
    write_dataset(tmp_path / "train.zarr")
    train = {
        "steps": 100,
        "batch_size": 2,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "warmup_steps": 1,
        "ema_decay": 0.9,
        "grad_clip": 1.0,
        "checkpoint_every": 50,
        "num_workers": 0,
        "seed": 0,
    }
    config = {"train": section("train", train), "vqgan": {**TINY, "train": {"steps": 2}}}
    assert train_settings(config)["steps"] == 2 and train_settings(config)["lr"] == 1e-3
    path = train_vqgan(config, tmp_path / "train.zarr", tmp_path / "vqgan")
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["step"] == 2 and checkpoint["config"]["method"] == "vqgan"
    assert VQGANStage.from_config(checkpoint["config"]).config() == {"vqgan": TINY}
    assert load_vqgan(path).config.codebook_size == TINY["codebook_size"]


def test_standalone_file_round_trip_and_bad_checkpoints(tmp_path):
    model = tiny_vqgan(l2_normalize=True).eval()
    path = save_vqgan(model, tmp_path / "vq_f4.pt")
    loaded = load_vqgan(path)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded(x)[0], model(x)[0])
    assert loaded.config == model.config

    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save({"config": {"method": "cellresdm"}, "ema": {}}, tmp_path / "other_method.pt")
    bad = {"format": "cellresdm-vqgan", "config": {**vars(model.config), "embed_dim": 4}, "state_dict": {}}
    torch.save(bad, tmp_path / "mismatch.pt")
    for name, message in [
        ("missing.pt", "is missing"),
        ("text.pt", "not a readable VQ-GAN checkpoint"),
        ("other_method.pt", "not a VQ-GAN checkpoint"),
        ("mismatch.pt", "does not fit"),
    ]:
        with pytest.raises(CellResDMError, match=message) as err:
            load_vqgan(tmp_path / name)
        assert name in str(err.value)
