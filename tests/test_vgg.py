"""VGG16 feature extractor: torchvision-compatible names, loading and validating weight files, perceptual loss."""

from __future__ import annotations

import logging

import pytest
import torch

from cellresdm.errors import CellResDMError
from cellresdm.nets import vgg as vgg_module
from cellresdm.nets.vgg import VGG16Features, load_vgg16, perceptual_loss, resolve_vgg


def test_parameter_names_follow_torchvision_vgg16():
    names = {k: tuple(v.shape) for k, v in VGG16Features().state_dict().items()}
    conv_indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert set(names) == {f"features.{i}.{p}" for i in conv_indices for p in ("weight", "bias")}
    assert names["features.0.weight"] == (64, 3, 3, 3) and names["features.28.weight"] == (512, 512, 3, 3)
    assert all(not p.requires_grad for p in VGG16Features().parameters())


def test_saved_state_dict_loads_back_and_classifier_entries_are_ignored(tmp_path):
    torch.manual_seed(0)
    source = VGG16Features()
    state = dict(source.state_dict())
    state["classifier.6.bias"] = torch.zeros(1000)  # a torchvision file also holds the classifier
    torch.save(state, tmp_path / "vgg16.pth")
    loaded = load_vgg16(tmp_path / "vgg16.pth")
    for k, v in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    x = torch.rand(1, 3, 32, 32)
    feats = loaded(x)
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512, 512] and feats[-1].shape[-1] == 2


def test_wrong_shape_or_missing_file_gives_a_clear_error(tmp_path):
    state = dict(VGG16Features().state_dict())
    state["features.5.weight"] = torch.zeros(128, 32, 3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(CellResDMError, match=r"bad\.pth.*features\.5\.weight: shape \(128, 32, 3, 3\)"):
        load_vgg16(bad)
    del state["features.5.weight"], state["features.0.bias"]
    torch.save(state, bad)
    with pytest.raises(CellResDMError, match="features.0.bias missing"):
        load_vgg16(bad)
    (tmp_path / "junk.pth").write_text("not a torch file")
    with pytest.raises(CellResDMError, match=r"junk\.pth: not a readable VGG16 state dict"):
        load_vgg16(tmp_path / "junk.pth")
    with pytest.raises(CellResDMError, match=r"absent\.pth: VGG16 weights file is missing"):
        load_vgg16(tmp_path / "absent.pth")


def test_no_weights_turns_the_term_off_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(vgg_module, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="cellresdm"):
        assert resolve_vgg(None, "pix2pix") is None
        assert resolve_vgg(None, "spade") is None
    warnings = [r for r in caplog.records if "perceptual loss is off" in r.getMessage()]
    assert len(warnings) == 1 and "pix2pix.vgg_weights" in warnings[0].getMessage()


def test_perceptual_loss_is_zero_for_equal_images_and_reaches_only_the_prediction():
    torch.manual_seed(0)
    vgg = VGG16Features()
    target = torch.rand(2, 5, 16, 16) * 2 - 1
    assert perceptual_loss(vgg, target, target).item() == 0
    pred = (target + 0.3 * torch.randn_like(target)).clamp(-1, 1).requires_grad_(True)
    loss = perceptual_loss(vgg, pred, target)
    loss.backward()
    assert loss.item() > 0 and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg.parameters())
    # channels are independent grey images, summed: two copies of one channel give twice its loss
    one = perceptual_loss(vgg, pred[:, :1].detach(), target[:, :1])
    two = perceptual_loss(vgg, pred[:, :1].detach().repeat(1, 2, 1, 1), target[:, :1].repeat(1, 2, 1, 1))
    torch.testing.assert_close(two, 2 * one)
