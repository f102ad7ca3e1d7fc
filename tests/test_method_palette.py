"""Palette and SPADE-Diffusion (conditional DDPMs): learning, sampling, determinism, guidance, config."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from test_cellresdm_method import FixedImages

from cellresdm.config import section
from cellresdm.errors import ConfigError
from cellresdm.methods.palette import ConditionalDDPM, Palette
from cellresdm.methods.spade_diffusion import SpadeDiffusion
from cellresdm.nets.unet import AttentionBlock, UNet, UNetConfig
from cellresdm.sample import SampleSettings, predict_field
from cellresdm.train import Trainer, TrainSettings, load_model_weights

TINY = {
    "steps": 100,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "sample_steps": 10,
    "guidance_scale": 0.0,
    "p_uncond": 0.1,
    "model_channels": 16,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "attention_levels": [-1],
    "head_channels": 16,
    "dropout": 0.0,
    "spade_hidden": 16,
}
METHODS = [Palette, SpadeDiffusion]


def tiny(cls: type[ConditionalDDPM], **changes) -> ConditionalDDPM:
    torch.manual_seed(0)
    return cls.from_config({cls.name: {**TINY, **changes}})


def perturbed(method: ConditionalDDPM) -> ConditionalDDPM:
    """Leave the zero-output initial state so samples depend on the network and the condition."""
    g = torch.Generator().manual_seed(1)
    for p in method.network.parameters():
        p.data.add_(0.05 * torch.randn(p.shape, generator=g))
    method.network.eval()
    return method


@pytest.mark.parametrize("cls", METHODS)
def test_loss_falls_on_fixed_images_and_the_checkpoint_samples(cls, tmp_path):
    method = tiny(cls)
    data = FixedImages()
    settings = TrainSettings.from_config(
        section(
            "train",
            {"steps": 120, "batch_size": 4, "lr": 3e-3, "warmup_steps": 5, "ema_decay": 0.9, "checkpoint_every": 120},
        )
    )
    model_path = Trainer(
        method.network, method.loss, data, settings, tmp_path, config=method.config(), progress=False
    ).train()
    loss = pd.read_csv(tmp_path / "train_log.csv")["loss"]
    first, last = loss.head(5).mean(), loss.tail(20).mean()
    assert last < 0.5 * first, (first, last)

    sampler = cls.from_config(torch.load(model_path, weights_only=False)["config"])
    load_model_weights(model_path, sampler.network, ema=True)
    sampler.network.eval()
    pred = sampler.sample(data.bf, generator=torch.Generator().manual_seed(0))
    assert pred.shape == (4, 7, 16, 16) and pred.min() >= 0 and pred.max() <= 1


@pytest.mark.parametrize("cls", METHODS)
def test_same_noise_same_sample_and_tiling_interface(cls):
    method = perturbed(tiny(cls))
    bf = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(method.noise_shape(2, 16, 16), generator=torch.Generator().manual_seed(5))
    assert noise.shape == (1, 2, 7, 16, 16)
    a, b = method.sample(bf, noise=noise), method.sample(bf, noise=noise)
    assert a.shape == (2, 7, 16, 16) and a.min() >= 0 and a.max() <= 1 and torch.equal(a, b)
    assert not torch.equal(a, method.sample(bf, noise=torch.randn_like(noise)))
    seeded = [method.sample(bf, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*seeded)
    # the condition matters (through concatenation or through SPADE only)
    assert not torch.equal(a, method.sample(1 - bf, noise=noise))
    # a whole field of one tile is the direct sample of the same noise
    field = bf[0]
    whole_noise = torch.randn(method.noise_shape(1, 16, 16), generator=torch.Generator().manual_seed(6))
    direct = method.sample(field[None], noise=whole_noise)
    whole = predict_field(
        method,
        field,
        SampleSettings.from_config(section("sample", {"tile": 16, "overlap": 4})),
        torch.Generator().manual_seed(6),
        torch.device("cpu"),
    )
    torch.testing.assert_close(whole, direct, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cls", METHODS)
def test_guided_sampling_batches_both_branches(cls):
    method = perturbed(tiny(cls, guidance_scale=2.0))
    batches = []
    method.network.register_forward_hook(lambda module, args, out: batches.append(out.shape[0]))
    bf = torch.rand(3, 3, 16, 16)
    noise = torch.randn(method.noise_shape(3, 16, 16))
    guided = method.sample(bf, noise=noise)
    assert batches == [6] * TINY["sample_steps"]
    assert method.sampling_steps == TINY["sample_steps"]  # what sampling records as "steps", not the training T
    plain = perturbed(tiny(cls)).sample(bf, noise=noise)
    assert guided.shape == plain.shape and not torch.equal(guided, plain)


def test_spade_decoder_sees_the_condition_and_the_encoder_only_the_target():
    spade, palette = tiny(SpadeDiffusion).network, tiny(Palette).network
    assert spade.input_blocks[0][0].in_channels == 7 and palette.input_blocks[0][0].in_channels == 10
    assert not any("in_norm" in n for n, _ in spade.input_blocks.named_parameters())
    assert any("in_norm" in n for n, _ in spade.output_blocks.named_parameters())


@pytest.mark.parametrize("cls", METHODS)
def test_config_round_trip(cls):
    method = tiny(cls)
    config = method.config()
    assert set(config) == {cls.name} and set(config[cls.name]) == set(cls.config_keys)
    rebuilt = cls.from_config(config)
    assert rebuilt.config() == config
    rebuilt.network.load_state_dict(method.network.state_dict())
    assert rebuilt.noise_shape(2, 8, 8) == (1, 2, 7, 8, 8) and rebuilt.size_multiple == 2


def test_bad_config_raises_one_clear_error():
    with pytest.raises(ConfigError, match="palette.spade_hidden|palette.steps"):
        Palette.from_config({"palette": {k: v for k, v in TINY.items() if k != "steps"}})
    with pytest.raises(ConfigError, match="spade_diffusion.spade_hidden"):
        SpadeDiffusion.from_config({"spade_diffusion": {k: v for k, v in TINY.items() if k != "spade_hidden"}})
    with pytest.raises(ConfigError, match="sample_steps"):
        tiny(Palette, sample_steps=101)
    with pytest.raises(ConfigError, match="p_uncond"):
        tiny(Palette, guidance_scale=1.0, p_uncond=0.0)
    with pytest.raises(ConfigError, match="'palette'.*beta_end"):
        tiny(Palette, steps=10)
    with pytest.raises(ConfigError, match="'palette'.*head_channels"):
        tiny(Palette, head_channels=24)


def test_attention_block_is_multi_head_softmax_attention_over_pixels():
    torch.manual_seed(0)
    block = AttentionBlock(8, num_heads=2, norm_groups=4)
    torch.nn.init.normal_(block.proj.weight)
    x = torch.randn(2, 8, 3, 5)
    q, k, v = block.qkv(block.norm(x)).flatten(2).chunk(3, dim=1)  # (B, C, HW) each, heads of 4 channels
    heads = []
    for h in range(2):
        qh, kh, vh = (a[:, 4 * h : 4 * h + 4] for a in (q, k, v))
        weights = torch.softmax(qh.transpose(1, 2) @ kh / 2.0, dim=-1)  # (B, HW, HW), scale 1/sqrt(4)
        heads.append(vh @ weights.transpose(1, 2))
    expected = x + block.proj(torch.cat(heads, 1).reshape(2, 8, 3, 5))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_time_free_unet_and_input_checks():
    small = {"in_channels": 3, "model_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1, "head_channels": 8}
    net = UNet(UNetConfig(**small, use_timestep=False))
    assert net.time_embed is None and net(torch.randn(2, 3, 8, 8)).shape == (2, 7, 8, 8)
    timed = UNet(UNetConfig(**small))
    with pytest.raises(ValueError, match="pass t"):
        timed(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="multiples of 2"):
        timed(torch.randn(1, 3, 9, 8), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="needs cond"):
        tiny(SpadeDiffusion).network(torch.randn(1, 7, 8, 8), torch.zeros(1, dtype=torch.long))
