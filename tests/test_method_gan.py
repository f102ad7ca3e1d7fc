"""The regression and GAN baselines (``unet``, ``pix2pix``, ``spade``) and their discriminators and losses."""

from __future__ import annotations

import pytest
import torch
from test_cellresdm_method import FixedImages

from cellresdm.config import section
from cellresdm.errors import ConfigError
from cellresdm.methods.pix2pix import Pix2Pix
from cellresdm.methods.spade import SPADE
from cellresdm.methods.unet_regression import UNetRegression
from cellresdm.nets.discriminator import (
    DiscriminatorOutput,
    MultiScaleDiscriminator,
    PatchDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    frozen_call,
    generator_loss,
)
from cellresdm.nets.vgg import VGG16Features
from cellresdm.sample import SampleSettings, predict_field
from cellresdm.train import Trainer, TrainSettings, load_model_weights

GENERATOR = {"base_channels": 8, "depth": 4, "norm": "batch", "dropout": 0.5, "dropout_blocks": 1, "crop_size": 16}
UNET = {**GENERATOR, "dropout": 0.0}
PIX2PIX = {
    **GENERATOR,
    "disc_channels": 8,
    "disc_layers": 2,
    "disc_norm": "instance",
    "gan_mode": "bce",
    "l1_weight": 100.0,
    "adversarial_weight": 1.0,
    "perceptual_weight": 10.0,
    "vgg_weights": None,
}
SPADE_TINY = {
    "base_channels": 8,
    "n_up": 3,
    "hidden": 16,
    "norm": "batch",
    "spectral_norm": True,
    "disc_channels": 8,
    "disc_layers": 2,
    "disc_scales": 2,
    "gan_mode": "hinge",
    "adversarial_weight": 1.0,
    "feature_matching_weight": 10.0,
    "perceptual_weight": 10.0,
    "l1_weight": 0.0,
    "vgg_weights": None,
    "crop_size": 32,
}


def build(cls, section: dict):
    torch.manual_seed(0)
    return cls.from_config({cls.name: dict(section)})


def train(method, data, tmp_path, steps: int, lr: float = 3e-3):
    """Train with the shared trainer; return the model path and the per-step loss terms."""
    terms = []

    def loss(network, batch, generator):
        value = method.loss(network, batch, generator)
        terms.append({"loss": value.item(), **{k: v.item() for k, v in getattr(method, "last_terms", {}).items()}})
        return value

    settings = TrainSettings.from_config(
        section(
            "train",
            {
                "steps": steps,
                "batch_size": 4,
                "lr": lr,
                "warmup_steps": 2,
                "ema_decay": 0.9,
                "checkpoint_every": steps,
                "grad_clip": 1.0,
            },
        )
    )
    path = Trainer(method.network, loss, data, settings, tmp_path, config=method.config(), progress=False).train()
    return path, terms


def mean(terms: list[dict], key: str, rows: slice) -> float:
    values = [t[key] for t in terms[rows]]
    return sum(values) / len(values)


def check_sampling(method, bf: torch.Tensor) -> torch.Tensor:
    """Shape, range and determinism of ``sample``, also with the network left in training mode."""
    method.network.train()
    first = method.sample(bf, generator=torch.Generator().manual_seed(0))
    second = method.sample(bf, noise=torch.randn(method.noise_shape(len(bf), *bf.shape[-2:])))
    assert first.shape == (len(bf), 7, *bf.shape[-2:]) and first.min() >= 0 and first.max() <= 1
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert method.network.training  # sample restores the mode it found
    return first


# -- discriminators and losses ------------------------------------------------------------------------------------


def test_patch_discriminator_has_70px_receptive_fields_and_multiscale_features():
    disc = PatchDiscriminator(10, base_channels=4, n_layers=3, norm="none")
    x = torch.zeros(1, 10, 128, 128, requires_grad=True)
    logits = disc(x)
    assert logits.shape == (1, 1, 14, 14)
    logits[0, 0, 5, 5].backward()
    rows = x.grad[0].abs().sum((0, 2)).nonzero()
    assert rows.max() - rows.min() + 1 == 70

    multi = MultiScaleDiscriminator(10, n_scales=2, base_channels=4, n_layers=2, spectral_norm=True)
    assert multi.min_size == 24
    out = multi(torch.randn(2, 10, 24, 24))
    assert isinstance(out, DiscriminatorOutput)
    assert [tuple(t.shape) for t in out.logits] == [(2, 1, 4, 4), (2, 1, 1, 1)]
    assert [len(f) for f in out.features] == [3, 3] and out.features[0][0].shape == (2, 4, 12, 12)


def test_gan_losses_on_known_logits():
    real, fake = torch.full((2, 1, 3, 3), 2.0), torch.full((2, 1, 3, 3), -0.5)
    torch.testing.assert_close(discriminator_loss(real, fake, "hinge"), torch.tensor(0.25))  # (0 + 0.5) / 2
    torch.testing.assert_close(discriminator_loss(real, fake, "lsgan"), torch.tensor(0.625))  # (1 + 0.25) / 2
    torch.testing.assert_close(generator_loss(fake, "hinge"), torch.tensor(0.5))
    torch.testing.assert_close(generator_loss(fake, "lsgan"), torch.tensor(2.25))
    torch.testing.assert_close(generator_loss(fake, "bce"), torch.nn.functional.softplus(torch.tensor(0.5)))
    # a list of scales is averaged
    torch.testing.assert_close(generator_loss([fake, fake + 1], "hinge"), torch.tensor(0.0))
    same = DiscriminatorOutput([real], [[real, fake]])
    assert feature_matching_loss(same, same).item() == 0
    with pytest.raises(ValueError, match="unknown GAN loss"):
        generator_loss(fake, "wgan")


def test_frozen_call_passes_gradients_to_the_input_only():
    disc = PatchDiscriminator(3, base_channels=4, n_layers=1, spectral_norm=True)
    x = torch.randn(1, 3, 12, 12, requires_grad=True)
    frozen_call(disc, x).sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in disc.parameters())


@pytest.mark.parametrize(("cls", "section", "size"), [(Pix2Pix, PIX2PIX, 16), (SPADE, SPADE_TINY, 32)])
def test_adversarial_terms_train_only_their_own_player(cls, section, size):
    method = build(cls, section)
    data = FixedImages(size=size)
    bf, target = data.bf * 2 - 1, torch.cat([data.fluo, data.boundaries], 1) * 2 - 1
    terms = method.network(bf, target)
    gen = list(method.network.generator.parameters())
    disc = list(method.network.discriminator.parameters())
    generator_terms = ["g_adv", "l1"] + (["feature_matching"] if cls is SPADE else [])
    for name in generator_terms:
        grads = torch.autograd.grad(terms[name], disc, retain_graph=True, allow_unused=True)
        assert all(g is None for g in grads), name
        assert any(g is not None for g in torch.autograd.grad(terms[name], gen, retain_graph=True, allow_unused=True))
    grads = torch.autograd.grad(terms["d"], gen, retain_graph=True, allow_unused=True)
    assert all(g is None for g in grads)
    assert all(g is not None for g in torch.autograd.grad(terms["d"], disc, retain_graph=True))


# -- unet ----------------------------------------------------------------------------------------------------------


def test_unet_mse_falls_and_samples_deterministically(tmp_path):
    method = build(UNetRegression, UNET)
    data = FixedImages()
    model_path, terms = train(method, data, tmp_path, steps=40)
    first, last = mean(terms, "loss", slice(0, 5)), mean(terms, "loss", slice(-5, None))
    assert last < first / 2, (first, last)

    config = torch.load(model_path, weights_only=False)["config"]
    assert config == {"unet": UNET}
    sampler = UNetRegression.from_config(config)
    load_model_weights(model_path, sampler.network, ema=True)
    assert sampler.config() == method.config()
    check_sampling(sampler, data.bf)

    # whole-field inference: a deterministic method takes an empty noise tensor
    sampler.network.eval()
    field = torch.rand(3, 40, 40)
    whole = predict_field(
        sampler,
        field,
        SampleSettings.from_config(section("sample", {"tile": 32, "overlap": 8})),
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
    )
    assert whole.shape == (1, 7, 40, 40) and torch.isfinite(whole).all()


def test_crop_size_must_fit_the_networks():
    with pytest.raises(ConfigError, match=r"unet\.crop_size 24 must be a multiple of 16"):
        build(UNetRegression, {**UNET, "crop_size": 24})
    with pytest.raises(ConfigError, match=r"spade\.crop_size 16 is too small for the discriminator"):
        build(SPADE, {**SPADE_TINY, "crop_size": 16})
    with pytest.raises(ConfigError, match="config key 'pix2pix.gan_mode' is missing"):
        build(Pix2Pix, {k: v for k, v in PIX2PIX.items() if k != "gan_mode"})
    with pytest.raises(ConfigError, match="pix2pix.gan_mode must be one of"):
        build(Pix2Pix, {**PIX2PIX, "gan_mode": "wgan"})


# -- pix2pix --------------------------------------------------------------------------------------------------------


def test_pix2pix_l1_falls_and_samples_deterministically(tmp_path):
    method = build(Pix2Pix, PIX2PIX)
    assert method.config()["pix2pix"]["perceptual"] is False
    data = FixedImages()
    model_path, terms = train(method, data, tmp_path, steps=30)
    first, last = mean(terms, "l1", slice(0, 5)), mean(terms, "l1", slice(-5, None))
    assert last < 0.7 * first, (first, last)
    assert all(t["perceptual"] == 0 for t in terms)

    config = torch.load(model_path, weights_only=False)["config"]
    sampler = Pix2Pix.from_config(config)
    load_model_weights(model_path, sampler.network, ema=True)
    assert sampler.config() == method.config()
    check_sampling(sampler, data.bf)


def test_pix2pix_with_vgg_weights_uses_the_perceptual_term_and_never_trains_vgg(tmp_path):
    torch.manual_seed(1)
    vgg_path = tmp_path / "vgg16.pth"
    torch.save(VGG16Features().state_dict(), vgg_path)
    method = build(Pix2Pix, {**PIX2PIX, "vgg_weights": str(vgg_path)})
    assert method.config()["pix2pix"]["perceptual"] is True
    before = {k: v.clone() for k, v in method.network.vgg.state_dict().items()}
    _, terms = train(method, FixedImages(), tmp_path / "run", steps=3)
    assert all(t["perceptual"] > 0 for t in terms)
    for k, v in method.network.vgg.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=0, rtol=0)
    assert any(k.startswith("vgg.features.") for k in method.network.state_dict())


# -- spade ----------------------------------------------------------------------------------------------------------


def test_spade_reconstruction_falls_and_samples_deterministically(tmp_path):
    method = build(SPADE, SPADE_TINY)
    data = FixedImages(size=32)
    model_path, terms = train(method, data, tmp_path, steps=40)
    for key in ("l1", "feature_matching"):
        first, last = mean(terms, key, slice(0, 5)), mean(terms, key, slice(-5, None))
        assert last < 0.9 * first, (key, first, last)

    config = torch.load(model_path, weights_only=False)["config"]
    sampler = SPADE.from_config(config)
    load_model_weights(model_path, sampler.network, ema=True)
    assert sampler.config() == method.config() and sampler.size_multiple == 8
    check_sampling(sampler, data.bf)
