"""cellresdm compare: two results folders agree when arrays are bit-identical and tables equal, timings aside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr

from cellresdm.cli import main
from cellresdm.compare import compare_results


def _results(root: Path) -> Path:
    store = zarr.open_group(str(root / "predictions" / "cellresdm" / "test.zarr"), mode="w", zarr_format=3)
    store.create_array("if", data=np.linspace(0, 1, 2 * 5 * 4 * 4, dtype=np.float32).reshape(2, 5, 4, 4))
    store.attrs["method"] = "cellresdm"
    pd.DataFrame({"plate": ["P1", "P1"], "field": ["a", "b"]}).to_parquet(
        root / "predictions" / "cellresdm" / "test.zarr" / "fields.parquet", index=False
    )
    (root / "metrics").mkdir()
    pd.DataFrame({"method": ["cellresdm"], "ssim": [0.75], "seconds_per_image": [1.5]}).to_csv(
        root / "metrics" / "summary.csv", index=False
    )
    (root / "benchmarks").mkdir()
    (root / "benchmarks" / "sample_cellresdm.json").write_text(json.dumps({"steps": 4, "seconds_per_image": 1.0}))
    (root / "models" / "cellresdm").mkdir(parents=True)
    torch.save({"config": {"steps": 4}, "ema": {"w": torch.arange(6.0)}}, root / "models" / "cellresdm" / "model.pt")
    (root / "logs").mkdir()
    (root / "logs" / "x.log").write_text("run 1\n")
    return root


def test_identical_runs_agree_and_timings_logs_benchmarks_are_left_out(tmp_path):
    old, new = _results(tmp_path / "old"), _results(tmp_path / "new")
    pd.DataFrame({"method": ["cellresdm"], "ssim": [0.75], "seconds_per_image": [9.9]}).to_csv(
        new / "metrics" / "summary.csv", index=False
    )
    (new / "benchmarks" / "sample_cellresdm.json").write_text(json.dumps({"steps": 5}))
    (new / "logs" / "x.log").write_text("run 2\n")
    assert compare_results(old, new) == []
    assert main(["compare", str(old), str(new)]) == 0


def test_one_changed_value_is_found_and_named(tmp_path, capsys):
    old, new = _results(tmp_path / "old"), _results(tmp_path / "new")
    store = zarr.open_group(str(new / "predictions" / "cellresdm" / "test.zarr"), mode="r+")
    data = store["if"][...]
    data[1, 2, 3, 3] = np.nextafter(data[1, 2, 3, 3], np.float32(2))  # one ulp
    store["if"][...] = data
    pd.DataFrame({"method": ["cellresdm"], "ssim": [0.7500001], "seconds_per_image": [1.5]}).to_csv(
        new / "metrics" / "summary.csv", index=False
    )
    torch.save(
        {"config": {"steps": 4}, "ema": {"w": torch.arange(6.0) * 1.5}}, new / "models" / "cellresdm" / "model.pt"
    )
    found = {(d.path, d.what.split(":")[0]) for d in compare_results(old, new)}
    assert ("predictions/cellresdm/test.zarr", "array 'if'") in found
    assert ("models/cellresdm/model.pt", "ema.w") in found
    assert any(path == "metrics/summary.csv" for path, _ in found)
    assert main(["compare", str(old), str(new)]) == 1
    assert "1 of 160 values differ" in capsys.readouterr().out


def test_missing_and_extra_outputs_are_reported(tmp_path):
    old, new = _results(tmp_path / "old"), _results(tmp_path / "new")
    shutil.rmtree(new / "predictions")
    (new / "metrics" / "extra.csv").write_text("a\n1\n")
    differences = {str(d) for d in compare_results(old, new)}
    assert "predictions/cellresdm/test.zarr: only in the first folder" in differences
    assert "metrics/extra.csv: only in the second folder" in differences
