"""Tests of the Swin UNet backbone and the shared layers (CPU, small configs)."""

from __future__ import annotations

import time

import pytest
import torch

from cellresdm.nets import SwinUNet, SwinUNetConfig, count_parameters, timestep_embedding
from cellresdm.nets.layers import ResBlock, num_groups
from cellresdm.nets.swin_unet import (
    SwinBlock,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

SMALL = SwinUNetConfig(model_channels=32, channel_mult=(1, 2, 2), window_size=8)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _perturb(model: torch.nn.Module, std: float = 0.02) -> None:
    """Give every parameter (zero-initialised ones included) small random values."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)


@pytest.mark.parametrize("size", [(64, 64), (96, 96), (64, 128)])
def test_output_shape(size):
    model = SwinUNet(SMALL).eval()
    x = torch.randn(2, 14, *size)
    with torch.no_grad():
        y = model(x, torch.tensor([0, 3]))
    assert y.shape == (2, 7, *size)
    assert torch.all(y == 0)  # zero-initialised output conv


@pytest.mark.parametrize("size", [(62, 64), (64, 66), (72, 64)])
def test_bad_size_raises_naming_sizes(size):
    model = SwinUNet(SMALL)
    with pytest.raises(ValueError, match=f"{size[0]}x{size[1]}"):
        model(torch.randn(1, 14, *size), torch.tensor([1]))


def test_small_feature_maps_use_whole_map_as_window():
    # 16x16 input: level 1 is 8x8 (exactly one window), level 2 is 4x4 (smaller than the window).
    model = SwinUNet(SMALL).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 14, 16, 16), torch.tensor([2])).shape == (1, 7, 16, 16)


def test_window_partition_roundtrip():
    x = torch.randn(2, 16, 24, 5)
    windows = window_partition(x, 8, 4)
    assert windows.shape == (2 * 2 * 6, 32, 5)
    # first window of the first image is its top-left 8x4 patch, row-major
    assert torch.equal(windows[0], x[0, :8, :4].reshape(32, 5))
    assert torch.equal(window_reverse(windows, 8, 4, 16, 24), x)


def test_shifted_window_mask_separates_regions():
    h, w, ws, s = 16, 24, 8, 4
    mask = shifted_window_mask(h, w, (ws, ws), (s, s))
    assert mask.shape == ((h // ws) * (w // ws), ws * ws, ws * ws)
    assert set(mask.unique().tolist()) <= {0.0, float("-inf")}
    # region id of each pixel of the *rolled* map: rows/cols that wrapped around form their own bands
    rows = torch.arange(h)
    cols = torch.arange(w)
    row_band = torch.where(rows < h - ws, 0, torch.where(rows < h - s, 1, 2))
    col_band = torch.where(cols < w - ws, 0, torch.where(cols < w - s, 1, 2))
    region = (row_band[:, None] * 3 + col_band[None, :]).float()
    ids = window_partition(region[None, :, :, None], ws, ws).squeeze(-1)
    same = ids[:, :, None] == ids[:, None, :]
    assert torch.all(mask[same] == 0)
    assert torch.all(mask[~same] == float("-inf"))
    # interior windows are unmasked, the bottom-right one is split in 4 regions
    assert torch.all(mask[0] == 0)
    last = mask[-1]
    assert (last == 0).sum() == 4 * (s * s) ** 2
    assert torch.all(torch.diagonal(mask, dim1=1, dim2=2) == 0)


def test_shifted_attention_blocks_cross_region_information():
    """With the mask, a token in the wrapped strip is unaffected by changes in the rest of its window."""
    torch.manual_seed(1)
    block = SwinBlock(16, 2, 8, shift=True).eval()
    x = torch.randn(1, 16, 16, 16)
    h, w = 16, 16
    # after rolling by -4, the bottom-right window holds original rows/cols {12..15, 0..3};
    # original pixel (0, 0) lands in the wrapped region, original (12, 12) in another region of the same window.
    y0 = block.attn(
        window_partition(torch.roll(block.norm1(x), (-4, -4), (1, 2)), 8, 8),
        (8, 8),
        shifted_window_mask(h, w, (8, 8), (4, 4)),
    )
    x2 = x.clone()
    x2[0, 12, 12] += 3.0 * torch.randn(16)
    y1 = block.attn(
        window_partition(torch.roll(block.norm1(x2), (-4, -4), (1, 2)), 8, 8),
        (8, 8),
        shifted_window_mask(h, w, (8, 8), (4, 4)),
    )
    a = window_reverse(y0, 8, 8, h, w)
    b = window_reverse(y1, 8, 8, h, w)
    # rolled coordinates: original (0, 0) -> (12, 12); original (12, 12) -> (8, 8)
    assert torch.allclose(a[0, 12, 12], b[0, 12, 12], atol=1e-6)
    assert not torch.allclose(a[0, 8, 8], b[0, 8, 8])


def test_shift_on_single_window_map_is_plain_attention():
    """A map exactly one window big: the shifted block has no shift, no mask, and equals the regular block."""
    regular = SwinBlock(16, 4, 8, shift=False).eval()
    shifted = SwinBlock(16, 4, 8, shift=True).eval()
    shifted.load_state_dict(regular.state_dict())
    assert shifted.geometry(8, 8) == ((8, 8), (0, 0))
    assert shifted.geometry(16, 8) == ((8, 8), (4, 0))
    assert shifted.geometry(4, 6) == ((4, 6), (0, 0))
    x = torch.randn(2, 8, 8, 16)
    with torch.no_grad():
        assert torch.allclose(regular(x), shifted(x), atol=1e-6)
        # and it is global attention with the relative bias: compare with an explicit softmax
        attn = regular.attn
        t = regular.norm1(x).reshape(2, 64, 16)
        q, k, v = attn.qkv(t).view(2, 64, 3, 4, 4).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-1, -2) / 2.0 + attn.bias(8, 8)[None]
        ref = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 64, 16))
        ref = x + ref.view(2, 8, 8, 16)
        ref = ref + regular.mlp(regular.norm2(ref))
        assert torch.allclose(regular(x), ref, atol=1e-5)


def test_timestep_conditioning_matters():
    model = SwinUNet(SMALL).eval()
    _perturb(model)
    x = torch.randn(1, 14, 32, 32).expand(2, -1, -1, -1)
    with torch.no_grad():
        y = model(x, torch.tensor([1, 10]))
    assert (y[0] - y[1]).abs().max() > 1e-4
    emb = timestep_embedding(torch.tensor([0, 1, 14]), 33)
    assert emb.shape == (3, 33) and torch.all(emb[:, -1] == 0)


def test_determinism_and_all_parameters_get_gradients():
    model = SwinUNet(SMALL)
    _perturb(model)
    x = torch.randn(2, 14, 32, 32)
    t = torch.tensor([0, 5])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t))
    model.train()
    model(x, t).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"parameters without gradient: {missing}"


def test_gradient_checkpointing_matches():
    cfg = SwinUNetConfig(model_channels=16, channel_mult=(1, 2), swin_levels=(1,), num_res_blocks=1)
    plain = SwinUNet(cfg)
    _perturb(plain)
    ckpt = SwinUNet(SwinUNetConfig(**{**cfg.__dict__, "use_checkpoint": True}))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 14, 32, 32)
    t = torch.tensor([3])
    plain(x, t).sum().backward()
    ckpt(x, t).sum().backward()
    for (n, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), n


def test_small_network_overfits():
    torch.manual_seed(0)
    cfg = SwinUNetConfig(in_channels=3, out_channels=2, model_channels=16, channel_mult=(1, 2), swin_levels=(1,))
    model = SwinUNet(cfg)
    x = torch.randn(4, 3, 32, 32)
    t = torch.tensor([0, 1, 2, 3])
    target = torch.tanh(x[:, :2] * 2.0) + 0.5 * x[:, 1:].roll(1, dims=-1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    start = time.perf_counter()
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x, t), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"overfit: loss {losses[0]:.4f} -> {losses[-1]:.5f} in {time.perf_counter() - start:.1f}s")
    assert losses[-1] <= losses[0] / 10


def test_layers_helpers():
    assert num_groups(160) == 32 and num_groups(14) == 14 and num_groups(48) == 24 and num_groups(7, 32) == 7
    block = ResBlock(8, 12, 16, norm_groups=4)
    x = torch.randn(2, 8, 8, 8)
    assert block(x, torch.randn(2, 12)).shape == (2, 16, 8, 8)
    same = ResBlock(8, 12)
    assert torch.equal(same(x, torch.randn(2, 12)), x)  # zero-initialised: identity at start


def test_paper_size_parameter_count():
    model = SwinUNet(SwinUNetConfig())
    n = count_parameters(model)
    print(f"paper-size SwinUNet parameters: {n:,}")
    assert 80e6 < n < 250e6
    assert model.count_parameters() == n
