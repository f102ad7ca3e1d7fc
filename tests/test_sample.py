"""Whole-field tiled inference: tile layout, blending weights, one noise field, ensembles and outputs."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from cellresdm import stores
from cellresdm.config import section
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.methods.base import N_OUTPUT_CHANNELS, Method
from cellresdm.sample import (
    SampleSettings,
    blend_weight,
    gather_predictions,
    predict_dataset,
    predict_field,
    tile_starts,
)
from cellresdm.shards import shard_rows


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

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PointwiseMethod:
        return cls(**config.get(cls.name, {}))

    def config(self) -> dict[str, Any]:
        return {self.name: {"steps": self.steps}}

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
    big = SampleSettings.from_config(section("sample", {"tile": 512, "overlap": 0}))
    tiled = SampleSettings.from_config(section("sample", {"tile": 64, "overlap": 16, "batch_size": 3}))
    whole = predict_field(method, bf, big, torch.Generator().manual_seed(7), torch.device("cpu"))
    n_whole_calls = len(method.calls)
    parts = predict_field(method, bf, tiled, torch.Generator().manual_seed(7), torch.device("cpu"))
    assert len(method.calls) > n_whole_calls + 1  # really tiled
    assert whole.shape == parts.shape == (1, N_OUTPUT_CHANNELS, *size)
    torch.testing.assert_close(parts, whole, atol=1e-6, rtol=0)


class ConvMethod(PointwiseMethod):
    """A deterministic, translation-equivariant method with a 5 x 5 receptive field (radius 2 px): a tile's
    output is exact except within 2 px of a tile edge inside the field, where the convolution zero-pads what the
    whole field would show there."""

    name = "conv"
    radius = 2

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.network = nn.Conv2d(3, N_OUTPUT_CHANNELS, 2 * self.radius + 1, padding=self.radius)
        torch.nn.init.normal_(self.network.weight, std=0.3, generator=gen)
        torch.nn.init.normal_(self.network.bias, generator=gen)


def _sample_conv(bf: Tensor, tile: int, overlap: int) -> Tensor:
    settings = SampleSettings.from_config(section("sample", {"tile": tile, "overlap": overlap, "batch_size": 3}))
    return predict_field(ConvMethod(), bf, settings, torch.Generator().manual_seed(7), torch.device("cpu"))[0]


def _exact_pixels(size: int, tile: int, overlap: int, radius: int) -> Tensor:
    """(size,) bool along one axis: pixels farther than ``radius`` from every tile edge inside the field."""
    exact = torch.ones(size, dtype=torch.bool)
    for start in tile_starts(size, tile, overlap):
        for edge in (start, start + tile):
            if 0 < edge < size:
                exact[max(edge - radius, 0) : edge + radius] = False
    return exact


# A field of 112 x 176 px in tiles of 64 with 16 px overlap: 2 x 4 tiles. A tile edge inside the field is
# seen by the other tile with weight 1 - w, by its own tile with the ramp weight w: at the 2 outer px of the
# ramp, w <= 0.5 - 0.5 cos(pi * 1.5 / 16) = 0.022 per axis, so the blended prediction is off there by at most
# ~2 x 0.022 of the output range [0, 1]; elsewhere it is the untiled prediction up to float rounding.
_TILE, _OVERLAP, _FIELD = 64, 16, (112, 176)
_EDGE_TOLERANCE = 0.05


def test_tiled_conv_method_agrees_with_untiled():
    bf = torch.rand(3, *_FIELD, generator=torch.Generator().manual_seed(2))
    whole = _sample_conv(bf, 512, 0)
    tiled = _sample_conv(bf, _TILE, _OVERLAP)
    assert tile_starts(_FIELD[0], _TILE, _OVERLAP) == [0, 48] and len(tile_starts(_FIELD[1], _TILE, _OVERLAP)) == 4
    exact = (
        _exact_pixels(_FIELD[0], _TILE, _OVERLAP, ConvMethod.radius)[:, None]
        & _exact_pixels(_FIELD[1], _TILE, _OVERLAP, ConvMethod.radius)[None, :]
    )
    assert 0.8 < exact.float().mean() < 1  # most pixels, not all: the tile edges are inside the field
    torch.testing.assert_close(tiled[:, exact], whole[:, exact], atol=1e-5, rtol=0)
    error = (tiled - whole).abs()
    assert error.max() <= _EDGE_TOLERANCE
    assert error[:, ~exact].max() > 1e-4  # the edges really differ: the test sees the tiling


def test_blending_without_the_cosine_ramp_fails_the_tolerance(monkeypatch):
    """The tolerance above is tight enough to catch a broken blend: flat weights give the zero-padded tile edges
    half the weight."""
    import cellresdm.sample

    bf = torch.rand(3, *_FIELD, generator=torch.Generator().manual_seed(2))
    whole = _sample_conv(bf, 512, 0)
    monkeypatch.setattr(cellresdm.sample, "blend_weight", lambda h, w, overlap: torch.ones(h, w))
    flat = _sample_conv(bf, _TILE, _OVERLAP)
    assert (flat - whole).abs().max() > _EDGE_TOLERANCE


def test_blend_weights_of_the_tile_layout_sum_to_one_where_tiles_overlap():
    size, tile, overlap = 112, 64, 16
    starts = tile_starts(size, tile, overlap)
    assert starts == [0, 48]  # neighbours overlap by exactly the ramp
    weight = blend_weight(tile, tile, overlap)
    total = torch.zeros(size, size)
    for y in starts:
        for x in starts:
            total[y : y + tile, x : x + tile] += weight
    # away from the field's own border (where a single tile's ramp remains) the weights add up to 1,
    # in the 2-tile and 4-tile overlaps as inside a tile
    torch.testing.assert_close(
        total[overlap:-overlap, overlap:-overlap], torch.ones(size - 2 * overlap, size - 2 * overlap)
    )
    assert torch.all(total > 0)  # every pixel has weight, so the normalised blend is defined everywhere


def test_field_equal_to_one_tile_is_sampled_once():
    method = PointwiseMethod()
    bf = torch.rand(3, 64, 64)
    out = predict_field(
        method,
        bf,
        SampleSettings.from_config(section("sample", {"tile": 64, "overlap": 16})),
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
    )
    assert method.calls == [(1, 3, 64, 64)] and out.shape == (1, 7, 64, 64)


def test_predict_dataset_writes_mean_std_and_timing(tmp_path):
    n, size = 2, 64
    rng = np.random.default_rng(0)
    with stores.create_dataset(tmp_path / "test.zarr", n, (size, size)) as writer:
        for i in range(n):
            bf = rng.random((3, size, size)).astype(np.float16)
            writer.write_field(i, bf=bf, if_=0, boundaries=0, labels=0)
        fields = pd.DataFrame({"plate": ["P"] * n, "field": ["r02c02f01", "r02c02f02"]})
        writer.finish(fields, pd.DataFrame(), {})
    method = PointwiseMethod()
    record = predict_dataset(
        method,
        tmp_path / "test.zarr",
        tmp_path / "pred.zarr",
        SampleSettings.from_config(section("sample", {"tile": 64, "n_samples": 3})),
        benchmark_out=tmp_path / "t.json",
        progress=False,
        device=torch.device("cpu"),
    )
    out = stores.open_predictions(tmp_path / "pred.zarr", arrays=tuple(stores.PREDICTION_ARRAYS))
    assert out["if"].shape == (n, 5, size, size) and out["boundaries"].shape == (n, 2, size, size)
    assert out["if_std"].shape == (n, 5, size, size) and float(np.asarray(out["if_std"][:]).max()) > 0
    binary = np.asarray(out["boundaries_binary"][:])
    assert set(np.unique(binary)) <= {0, 1}
    np.testing.assert_array_equal(binary, np.asarray(out["boundaries"][:]).astype(np.float32) >= 0.5)
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved == record and saved["fields"] == n and saved["seconds_per_image"] > 0
    assert saved["image_size"] == [size, size] and saved["device"].startswith("cpu")
    assert saved["steps"] is None  # a one-pass method has no chain
    assert out.attrs["method"] == "pointwise" and out.attrs["sampling"] == record
    pd.testing.assert_frame_equal(out.fields, fields)


def test_settings_from_the_schema():
    settings = SampleSettings.from_config(section("sample"))
    assert (settings.tile, settings.overlap, settings.precision) == (256, 32, "tf32")  # the schema's defaults
    with pytest.raises(ConfigError, match="sample.overlap must be below sample.tile"):
        SampleSettings.from_config(section("sample", {"tile": 32, "overlap": 32}))
    with pytest.raises(ConfigError, match="sample.precision"):
        section("sample", {"precision": "fp16"})


def test_shards_sampled_apart_and_gathered_equal_one_job(tmp_path):
    """Each field draws its own noise, so shards sampled as separate jobs and gathered give the one-job store."""
    n, size = 5, 32
    rng = np.random.default_rng(1)
    wells = ["B02", "B02", "C03", "B04", "C03"]
    with stores.create_dataset(tmp_path / "test.zarr", n, (size, size)) as writer:
        for i in range(n):
            writer.write_field(i, bf=rng.random((3, size, size)).astype(np.float16), if_=0, boundaries=0, labels=0)
        fields = pd.DataFrame({"plate": ["P"] * n, "well": wells, "field": [f"f{i}" for i in range(n)]})
        writer.finish(fields, pd.DataFrame(), {})
    settings = SampleSettings.from_config(section("sample", {"tile": 32, "overlap": 8, "n_samples": 2}))
    run = {"progress": False, "device": torch.device("cpu")}
    method = PointwiseMethod()
    predict_dataset(method, tmp_path / "test.zarr", tmp_path / "whole.zarr", settings, **run)
    shards = []
    for name in ("B03-C04", "A01-B02", "D01-D24"):  # B04 and C03, B02, none
        rows = shard_rows(fields, "P", name, "plate", "well")
        shards.append(tmp_path / f"{name}.zarr")
        predict_dataset(method, tmp_path / "test.zarr", shards[-1], settings, rows=rows, **run)
    record = gather_predictions(shards, tmp_path / "test.zarr", tmp_path / "gathered.zarr", tmp_path / "timing.json")
    arrays = tuple(stores.PREDICTION_ARRAYS)
    one = stores.open_predictions(tmp_path / "whole.zarr", arrays=arrays)
    gathered = stores.open_predictions(tmp_path / "gathered.zarr", arrays=arrays)
    for name in arrays:
        np.testing.assert_array_equal(np.asarray(gathered[name][:]), np.asarray(one[name][:]), err_msg=name)
    pd.testing.assert_frame_equal(gathered.fields, one.fields)
    assert record["fields"] == n and json.loads((tmp_path / "timing.json").read_text()) == record
    assert gathered.attrs["sampling"] == record and record["steps"] == one.attrs["sampling"]["steps"]
    with pytest.raises(CellResDMError, match="in no shard"):
        gather_predictions(shards[1:], tmp_path / "test.zarr", tmp_path / "partial.zarr", tmp_path / "t2.json")
    assert not (tmp_path / "partial.zarr").exists() and not (tmp_path / "t2.json").exists()
