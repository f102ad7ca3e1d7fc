"""Whole-field tiled inference: tile layout, blending weights, one noise field, ensembles and outputs."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from torch import Tensor, nn

from cellresdm.methods.base import N_OUTPUT_CHANNELS, Method
from cellresdm.sample import SampleSettings, blend_weight, predict_dataset, predict_field, tile_starts


class PointwiseMethod(Method):
    """A method whose output at a pixel depends only on that pixel's BF values and noise: tiling and
    blending must then reproduce untiled inference exactly (up to float rounding)."""

    name = "pointwise"

    def __init__(self, steps: int = 3):
        self.steps = steps
        self.network = nn.Conv2d(3, N_OUTPUT_CHANNELS, 1)
        torch.nn.init.normal_(self.network.weight, generator=torch.Generator().manual_seed(0))
        self.calls: list[tuple[int, ...]] = []

    def loss(self, network, batch, generator):  # pragma: no cover - not trained here
        raise NotImplementedError

    def noise_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        return (self.steps, batch, N_OUTPUT_CHANNELS, height, width)

    @property
    def size_multiple(self) -> int:
        return 16

    def config(self) -> dict[str, Any]:
        return {}

    @torch.no_grad()
    def sample(self, bf: Tensor, noise: Tensor | None = None, generator=None) -> Tensor:
        self.calls.append(tuple(bf.shape))
        assert noise.shape == self.noise_shape(bf.shape[0], *bf.shape[-2:])
        return torch.sigmoid(self.network(bf) + noise.mean(0))


def test_tile_starts_cover_with_overlap():
    assert tile_starts(100, 128, 32) == [0]
    assert tile_starts(256, 128, 32) == [0, 64, 128]
    assert all(start % 4 == 0 for start in tile_starts(1084, 256, 32, alignment=4))
    assert tile_starts(1084, 256, 32, alignment=4)[-1] == 1084 - 256
    for size, tile, overlap in [(1080, 256, 32), (300, 128, 16), (1000, 512, 64)]:
        starts = tile_starts(size, tile, overlap)
        assert starts[0] == 0 and starts[-1] == size - tile
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))


def test_blend_weight_is_a_cosine_ramp():
    w = blend_weight(64, 64, 16)
    assert w.shape == (64, 64) and torch.all(w > 0) and w[32, 32] == 1
    assert torch.allclose(w, w.flip(0)) and torch.allclose(w, w.flip(1))
    ramp = w[32, :16]
    assert torch.all(ramp[1:] > ramp[:-1])
    # opposite ramps of two tiles overlapping by 16 add up to 1: the blend is a partition of unity
    assert torch.allclose(w[32, :16] + w[32, 48:], torch.ones(16))
    assert torch.equal(blend_weight(32, 32, 0), torch.ones(32, 32))


@pytest.mark.parametrize("size", [(128, 128), (200, 312)])
def test_tiled_equals_untiled_with_one_noise_field(size):
    method = PointwiseMethod()
    bf = torch.rand(3, *size, generator=torch.Generator().manual_seed(1))
    big = SampleSettings(tile=512, overlap=0)
    tiled = SampleSettings(tile=64, overlap=16, batch_size=3)
    whole = predict_field(method, bf, big, torch.Generator().manual_seed(7), torch.device("cpu"))
    n_whole_calls = len(method.calls)
    parts = predict_field(method, bf, tiled, torch.Generator().manual_seed(7), torch.device("cpu"))
    assert len(method.calls) > n_whole_calls + 1  # really tiled
    assert whole.shape == parts.shape == (1, N_OUTPUT_CHANNELS, *size)
    torch.testing.assert_close(parts, whole, atol=1e-6, rtol=0)


def test_field_equal_to_one_tile_is_sampled_once():
    method = PointwiseMethod()
    bf = torch.rand(3, 64, 64)
    out = predict_field(
        method, bf, SampleSettings(tile=64, overlap=16), torch.Generator().manual_seed(0), torch.device("cpu")
    )
    assert method.calls == [(1, 3, 64, 64)] and out.shape == (1, 7, 64, 64)


def test_predict_dataset_writes_mean_std_and_timing(tmp_path):
    n, size = 2, 64
    root = zarr.open_group(str(tmp_path / "test.zarr"), mode="w", zarr_format=3)
    root.create_array("bf", data=np.random.default_rng(0).random((n, 3, size, size)).astype(np.float16))
    pd.DataFrame({"plate": ["P"] * n, "field": ["r02c02f01", "r02c02f02"]}).to_parquet(
        tmp_path / "test.zarr" / "fields.parquet"
    )
    method = PointwiseMethod()
    record = predict_dataset(
        method,
        tmp_path / "test.zarr",
        tmp_path / "pred.zarr",
        SampleSettings(tile=64, n_samples=3),
        benchmark_out=tmp_path / "t.json",
        progress=False,
        device=torch.device("cpu"),
    )
    out = zarr.open_group(str(tmp_path / "pred.zarr"), mode="r")
    assert out["if"].shape == (n, 5, size, size) and out["boundaries"].shape == (n, 2, size, size)
    assert out["if_std"].shape == (n, 5, size, size) and float(np.asarray(out["if_std"][:]).max()) > 0
    binary = np.asarray(out["boundaries_binary"][:])
    assert set(np.unique(binary)) <= {0, 1}
    np.testing.assert_array_equal(binary, np.asarray(out["boundaries"][:]).astype(np.float32) >= 0.5)
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved == record and saved["fields"] == n and saved["seconds_per_image"] > 0
    assert saved["image_size"] == [size, size] and saved["device"].startswith("cpu")
    assert saved["steps"] is None  # a one-pass method has no chain
    assert (tmp_path / "pred.zarr" / "fields.parquet").exists()
