"""Image-quality metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import zarr

from cellresdm.metrics import TRIVIAL, channel_metrics, image_quality, quality_ttests, summarise_quality


def test_channel_metrics_hand_computed():
    real = np.zeros((16, 16), np.float32)
    pred = np.full((16, 16), 0.1, np.float32)
    m = channel_metrics(real, pred)
    assert m["mse"] == pytest.approx(25.5**2, rel=1e-6)  # 0.1 on the 0-255 scale is 25.5 everywhere
    assert m["psnr"] == pytest.approx(20.0, abs=1e-4)  # 10 log10(255^2 / 25.5^2) = 20 dB
    assert math.isnan(m["pearson"])  # a constant image has no correlation
    ramp = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    same = channel_metrics(ramp, ramp)
    assert same["mse"] == 0 and same["psnr"] == math.inf and same["ssim"] == pytest.approx(1.0)
    assert same["pearson"] == pytest.approx(1.0)
    flipped = channel_metrics(ramp, 1 - ramp)
    assert flipped["pearson"] == pytest.approx(-1.0) and flipped["ssim"] < 0


def test_image_quality_table_and_trivial_reference(tmp_path):
    rng = np.random.default_rng(0)
    n, size = 2, 32
    real_if = rng.random((n, 5, size, size)).astype(np.float16)
    root = zarr.open_group(str(tmp_path / "test.zarr"), mode="w", zarr_format=3)
    root.create_array("if", data=real_if)
    root.create_array("bf", data=rng.random((n, 3, size, size)).astype(np.float16))
    pd.DataFrame(
        {"plate": ["P1", "P2"], "cell_line": ["A549", "U2OS"], "field": ["r02c02f01", "r02c02f02"]}
    ).to_parquet(tmp_path / "test.zarr" / "fields.parquet")
    perfect = zarr.open_group(str(tmp_path / "perfect.zarr"), mode="w", zarr_format=3)
    perfect.create_array("if", data=real_if)
    table = image_quality(tmp_path / "test.zarr", {"perfect": tmp_path / "perfect.zarr"})
    assert len(table) == 2 * n * 5 and set(table["method"]) == {"perfect", TRIVIAL}
    assert (table.loc[table["method"] == "perfect", "mse"] == 0).all()
    summary = summarise_quality(table)
    ours = summary[summary["method"] == "perfect"]
    assert ours["beats_trivial_ssim"].all() and np.allclose(ours["ssim"], 1.0)
    wrong = zarr.open_group(str(tmp_path / "wrong.zarr"), mode="w", zarr_format=3)
    wrong.create_array("if", data=real_if[:1])
    with pytest.raises(ValueError, match="wrong.zarr"):
        image_quality(tmp_path / "test.zarr", {"wrong": tmp_path / "wrong.zarr"})


def test_quality_ttests_direction_and_p_against_scipy():
    from scipy.stats import ttest_rel

    from cellresdm import layout

    rng = np.random.default_rng(1)
    rows = []
    good = rng.random(6)
    for method, shift in (("cellresdm", 0.0), ("unet", 0.1)):
        for i in range(6):
            for channel in layout.IF_CHANNELS:
                # unet: lower SSIM (worse) and higher MSE (worse) on every image
                ssim = good[i] - shift + 0.01 * rng.random()
                rows.append(
                    {
                        "method": method,
                        "index": i,
                        "channel": channel,
                        "ssim": ssim,
                        "mse": 1 - ssim,
                        "psnr": 10 * ssim,
                        "pearson": ssim,
                    }
                )
    table = pd.DataFrame(rows)
    tests = quality_ttests(table, reference="cellresdm")
    assert len(tests) == 1 * 5 * 4 and set(tests["other"]) == {"unet"}
    assert (tests["better"] == "reference").all() and tests["significant"].all()
    dna = tests[(tests["channel"] == "DNA") & (tests["metric"] == "mse")].iloc[0]
    ref = table[(table["method"] == "cellresdm") & (table["channel"] == "DNA")]["mse"].to_numpy()
    other = table[(table["method"] == "unet") & (table["channel"] == "DNA")]["mse"].to_numpy()
    expected = ttest_rel(ref, other)
    assert dna["mean_difference"] < 0  # lower MSE is the better one
    assert math.isclose(dna["p"], expected.pvalue) and math.isclose(dna["t"], expected.statistic)
    assert quality_ttests(table, reference="palette").empty
