"""Tests of the Swin UNet backbone and the shared layers (CPU, small configs)."""

from __future__ import annotations

import time

import pytest
import torch

from cellresdm.nets import SwinUNet, SwinUNetConfig, count_parameters, timestep_embedding
from cellresdm.nets.layers import ResBlock, num_groups
from cellresdm.nets.swin_unet import (
    SwinBlock,
    SwinLayer,
    shifted_window_mask,
    window_index,
    window_partition,
)

SMALL = SwinUNetConfig(model_channels=32, channel_mult=(1, 2, 2), window_size=8, swin_embed_dim=None)
#: SMALL with Swin blocks narrower than the features (projections in and out, as the paper size)
SMALL_EMBEDDED = SwinUNetConfig(model_channels=32, channel_mult=(1, 2, 2), window_size=8, swin_embed_dim=24)


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


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) map or (B, H * W, C) rows, (K,) row-major pixel indices -> (B, K, C)."""
    return x.reshape(x.shape[0], -1, x.shape[-1]).index_select(1, index)


@pytest.mark.parametrize("shift", [(0, 0), (4, 2)])
def test_window_partition_and_index_roundtrip(shift):
    x = torch.randn(2, 16, 24, 5)
    windows = window_partition(x, 8, 4)
    assert windows.shape == (2 * 2 * 6, 32, 5)
    # first window of the first image is its top-left 8x4 patch, row-major
    assert torch.equal(windows[0], x[0, :8, :4].reshape(32, 5))
    # the gather index is roll + partition in one step, and its argsort puts the windows back
    index = window_index(16, 24, (8, 4), shift)
    rolled = window_partition(torch.roll(x, (-shift[0], -shift[1]), (1, 2)), 8, 4)
    assert torch.equal(_gather(x, index).view(-1, 32, 5), rolled)
    assert torch.equal(_gather(rolled.view(2, -1, 5), index.argsort()).view(x.shape), x)


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
    mask = shifted_window_mask(h, w, (8, 8), (4, 4))
    unpartition = window_index(h, w, (8, 8), (0, 0)).argsort()

    def attend(x):  # rolled map after attention
        y = block.attn(window_partition(torch.roll(block.norm1(x), (-4, -4), (1, 2)), 8, 8), (8, 8), mask)
        return _gather(y.view(1, -1, 16), unpartition).view(1, h, w, 16)

    x2 = x.clone()
    x2[0, 12, 12] += 3.0 * torch.randn(16)
    a, b = attend(x), attend(x2)
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


def _reference_block(block: SwinBlock, x: torch.Tensor) -> torch.Tensor:
    """SwinBlock forward written out: roll, partition, explicit softmax with bias + shift mask, reverse, roll back."""
    b, h, w, c = x.shape
    (wh, ww), (sh, sw) = block.geometry(h, w)
    attn, heads, n = block.attn, block.attn.num_heads, wh * ww
    windows = window_partition(torch.roll(block.norm1(x), (-sh, -sw), (1, 2)), wh, ww)
    q, k, v = attn.qkv(windows).view(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-1, -2) * (c // heads) ** -0.5 + attn.bias(wh, ww)
    if sh or sw:
        logits = logits + shifted_window_mask(h, w, (wh, ww), (sh, sw)).repeat(b, 1, 1)[:, None]
    out = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c))
    out = out.view(b, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
    x = x + torch.roll(out, (sh, sw), (1, 2))
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("size", [(16, 24), (16, 8), (8, 8), (4, 6)])
def test_block_matches_reference(batch, shift, size):
    block = SwinBlock(16, 4, 8, shift=shift).eval()
    _perturb(block)
    x = torch.randn(batch, *size, 16)
    with torch.no_grad():
        assert torch.allclose(block(x), _reference_block(block, x), atol=1e-5)


def test_block_window_cache():
    """Indices and mask are built once per map size, stay out of the state_dict, and a cache filled under
    inference mode serves training."""
    block = SwinBlock(16, 4, 8, shift=True)
    keys = set(block.state_dict())
    with torch.inference_mode():
        block(torch.randn(2, 16, 16, 16))
    cached = block.windows(16, 16, torch.device("cpu"))
    assert block.windows(16, 16, torch.device("cpu"))[1] is cached[1] and cached[3].shape == (4, 64, 64)
    assert set(block.state_dict()) == keys
    x = torch.randn(2, 16, 16, 16, requires_grad=True)
    block(x).square().sum().backward()
    assert x.grad is not None and block.attn.rel_bias.grad is not None
    assert block.windows(8, 8, torch.device("cpu"))[3] is None  # one window: no shift, no mask


def test_timestep_conditioning_matters():
    model = SwinUNet(SMALL).eval()
    _perturb(model)
    x = torch.randn(1, 14, 32, 32).expand(2, -1, -1, -1)
    with torch.no_grad():
        y = model(x, torch.tensor([1, 10]))
    assert (y[0] - y[1]).abs().max() > 1e-4
    emb = timestep_embedding(torch.tensor([0, 1, 14]), 33)
    assert emb.shape == (3, 33) and torch.all(emb[:, -1] == 0)


@pytest.mark.parametrize("config", [SMALL, SMALL_EMBEDDED], ids=["feature-width", "embedded"])
def test_determinism_and_all_parameters_get_gradients(config):
    model = SwinUNet(config)
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
    cfg = SwinUNetConfig(model_channels=16, channel_mult=(1, 2), swin_levels=(1,), num_res_blocks=1, swin_embed_dim=16)
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
    cfg = SwinUNetConfig(
        in_channels=3, out_channels=2, model_channels=16, channel_mult=(1, 2), swin_levels=(1,), swin_embed_dim=None
    )
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


def _swin_stages(blocks: torch.nn.ModuleList) -> list[int]:
    return [i for i, stage in enumerate(blocks) if any(isinstance(m, SwinLayer) for m in stage)]


def test_swin_placement_follows_resshift():
    # SMALL: 3 levels of 2 residual blocks, Swin levels (1, 2). input_blocks: conv, [res, res, down] x 2, res, res;
    # output_blocks: 3 stages per level, deepest first. ResShift: Swin after the first residual block per side.
    model = SwinUNet(SMALL)
    assert _swin_stages(model.input_blocks) == [4, 7]
    assert _swin_stages(model.output_blocks) == [0, 3]
    assert any(isinstance(m, SwinLayer) for m in model.middle_block)
    layers = [m for m in model.modules() if isinstance(m, SwinLayer)]
    assert len(layers) == 5 and all(layer.embed is None for layer in layers)


def test_swin_embedding_projects_to_its_width():
    model = SwinUNet(SMALL_EMBEDDED)
    layer = model.middle_block[1]
    assert isinstance(layer, SwinLayer) and layer.embed.in_features == 64 and layer.embed.out_features == 24
    assert all(block.norm1.normalized_shape == (24,) for block in layer.blocks)
    x = torch.randn(2, 64, 8, 8)
    assert layer(x).shape == x.shape


def test_paper_size_parameter_count():
    model = SwinUNet(SwinUNetConfig())
    n = count_parameters(model)
    print(f"paper-size SwinUNet parameters: {n:,}")
    # 109,222,087 outside the 5 Swin layers (ResShift's 9 layers on a 4-level latent UNet come to ~118M)
    assert n == 114_419_887
    assert model.count_parameters() == n
