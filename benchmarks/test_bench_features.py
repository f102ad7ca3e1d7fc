"""Seconds per image set of the feature stage (cellresdm.features) at the demo size and the real field size.

Run with `make bench`. Figures are printed, not asserted. One synthetic U2OS field per size (256 and
1080 px, percentile-normalised like the dataset) is measured by the CellProfiler backend (the full
measurement pipeline) and by the cp_measure backend (CellProfiler segmentation, cp_measure measurements).
Skipped without .venv-cp. The reference README quotes ~105 s for a real 1080 px field with 8 channels on
one core.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from cellresdm import config as cfg
from cellresdm import layout
from cellresdm.features import FeatureSettings, extract_features
from cellresdm.synth import Treatment, make_field

REPO = Path(__file__).resolve().parents[1]
CELLPROFILER = REPO / ".venv-cp" / "bin" / "cellprofiler"


def _zarr(path: Path, size: int) -> Path:
    channels, _ = make_field("U2OS", size, np.random.default_rng(size), Treatment())
    imgs = np.stack([channels[c].astype(np.float32) for c in layout.IF_CHANNELS])
    lo = np.percentile(imgs, 0.5, axis=(1, 2), keepdims=True)
    hi = np.percentile(imgs, 99.5, axis=(1, 2), keepdims=True)
    imgs = np.clip((imgs - lo) / (hi - lo), 0, 1).astype(np.float16)[None]
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("if", shape=imgs.shape, chunks=imgs.shape, dtype="float16")[:] = imgs
    pd.DataFrame(
        {"plate": ["P1"], "cell_line": ["U2OS"], "well": ["B02"], "site": [1], "field": ["r02c02f01"], "index": [0]}
    ).to_parquet(path / "fields.parquet")
    return path


@pytest.mark.cellprofiler
@pytest.mark.parametrize("backend", ["cellprofiler", "cp_measure"])
@pytest.mark.parametrize("size", [256, 1080])
def test_feature_seconds(tmp_path: Path, size: int, backend: str) -> None:
    if not CELLPROFILER.is_file():
        pytest.skip(f"CellProfiler is not installed at {CELLPROFILER} (run `make setup`)")
    src = _zarr(tmp_path / "f.zarr", size)
    settings = FeatureSettings.from_config(cfg.section("features", {"backend": backend}))
    table = extract_features(src, "bench", tmp_path / "f.parquet", settings, str(CELLPROFILER), progress=False)
    row = table.iloc[0]
    print(
        f"\n[bench] features {backend} {size}x{size}: {row['Metadata_Seconds']:.1f} s per image set "
        f"({int(row['Image_Count_Cells'])} cells, {table.shape[1]} columns, {os.cpu_count()} CPUs)"
    )
    assert row["Image_Count_Cells"] > 0
