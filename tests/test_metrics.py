"""Image-quality metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cellresdm import stores
from cellresdm.errors import CellResDMError
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


def _fields(n: int) -> pd.DataFrame:
    return pd.DataFrame({"plate": ["P1", "P2"][:n], "cell_line": ["A549", "U2OS"][:n], "field": ["r02c02f01"] * n})


def _predictions(path, if_: np.ndarray):
    n, _, h, w = if_.shape
    with stores.create_predictions(path, n, (h, w), with_std=False) as writer:
        for i in range(n):
            writer.write_field(i, if_=if_[i])
        writer.finish(_fields(n), {"method": path.stem})
    return path


def test_image_quality_table_and_trivial_reference(tmp_path):
    rng = np.random.default_rng(0)
    n, size = 2, 32
    real_if = rng.random((n, 5, size, size)).astype(np.float16)
    with stores.create_dataset(tmp_path / "test.zarr", n, (size, size)) as writer:
        for i in range(n):
            bf = rng.random((3, size, size)).astype(np.float16)
            writer.write_field(i, bf=bf, if_=real_if[i], boundaries=0, labels=0)
        writer.finish(_fields(n), pd.DataFrame(), {})
    perfect = _predictions(tmp_path / "perfect.zarr", real_if)
    table = image_quality(tmp_path / "test.zarr", {"perfect": perfect})
    assert len(table) == 2 * n * 5 and set(table["method"]) == {"perfect", TRIVIAL}
    assert (table.loc[table["method"] == "perfect", "mse"] == 0).all()
    assert list(table["cell_line"].unique()) == ["A549", "U2OS"]
    summary = summarise_quality(table)
    ours = summary[summary["method"] == "perfect"]
    assert ours["beats_trivial_ssim"].all() and np.allclose(ours["ssim"], 1.0)
    wrong = _predictions(tmp_path / "wrong.zarr", real_if[:1])
    with pytest.raises(CellResDMError, match="wrong.zarr: predictions of shape"):
        image_quality(tmp_path / "test.zarr", {"wrong": wrong})
    with pytest.raises(CellResDMError, match="absent.zarr: prediction store is missing"):
        image_quality(tmp_path / "test.zarr", {"absent": tmp_path / "absent.zarr"})


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
