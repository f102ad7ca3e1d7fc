"""The demo's quality bars and their spread over runs (cellresdm.quality_bars)."""

from pathlib import Path

import pandas as pd
import pytest

from cellresdm.errors import CellResDMError
from cellresdm.quality_bars import QualityBars, check_bars, quality_bars_markdown, spread
from cellresdm.results import ResultsLayout

CHANNELS = ["DNA", "RNA", "ER", "AGP", "Mito"]


def scores(cellresdm, pix2pix, nuclei_f1=0.95):
    ssim = pd.DataFrame([cellresdm, pix2pix, [0.0] * 5], index=["cellresdm", "pix2pix", "bf_copy"], columns=CHANNELS)
    f1 = pd.DataFrame({"nuclei": [nuclei_f1, 0.8], "cells": [0.9, 0.7]}, index=["cellresdm", "pix2pix"])
    return ssim, f1


def test_bars_pass_when_best_or_within_margin_in_three_channels():
    ssim, f1 = scores([0.70, 0.66, 0.44, 0.55, 0.36], [0.71, 0.52, 0.38, 0.40, 0.40])
    checks = check_bars(ssim, f1)
    assert checks["passed"].all()
    assert checks.loc[1, "value"].startswith("4 (DNA, RNA, ER, AGP)")


def test_bars_fail_each_for_its_own_reason():
    ssim, f1 = scores([0.60, 0.66, 0.30, 0.55, -0.1], [0.71, 0.52, 0.38, 0.60, 0.40], nuclei_f1=0.89)
    checks = check_bars(ssim, f1).set_index("bar")["passed"]
    assert list(checks) == [False, False, False]
    with pytest.raises(CellResDMError, match="no SSIM of 'palette'"):
        check_bars(ssim, f1, QualityBars(method="palette"))


def test_spread_over_runs_and_markdown_from_results_folders(tmp_path):
    folders = []
    runs = {}
    for seed, (dna, er) in enumerate([(0.70, 0.44), (0.60, 0.30), (0.65, 0.44)]):
        ssim, f1 = runs[str(seed)] = scores([dna, 0.66, er, 0.55, 0.36], [0.71, 0.52, 0.38, 0.40, 0.40])
        layout = ResultsLayout(str(tmp_path / f"seed{seed}"))
        for path, table, names in (
            (layout.image_quality_summary(), ssim, ["method", "channel", "ssim"]),
            (layout.segmentation_summary(), f1, ["source", "object", "f1"]),
        ):
            long = table.stack().reset_index()
            long.columns = names
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            long.to_csv(path, index=False)
        folders.append(layout.root)

    table = spread(runs).set_index(["method", "measure"])
    assert table.loc[("cellresdm", "SSIM DNA"), "mean"] == pytest.approx(0.65)
    assert table.loc[("cellresdm", "SSIM DNA"), "min"] == pytest.approx(0.60)
    assert table.loc[("cellresdm", "SSIM DNA"), "std"] == pytest.approx(0.05)
    assert table.loc[("pix2pix", "F1 nuclei"), "runs"] == 3

    text = quality_bars_markdown(folders)
    assert text.count("all bars pass") == 2 and text.count("BARS FAIL") == 1  # seed 1: near best in RNA and AGP only
    assert "| cellresdm | SSIM DNA | 0.650 | 0.050 | 0.600 | 0.700 |" in text
    with pytest.raises(CellResDMError, match="image_quality_summary.csv: missing"):
        quality_bars_markdown([tmp_path / "nowhere"])
