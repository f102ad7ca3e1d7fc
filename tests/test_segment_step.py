"""The segment step (cellresdm.segment_step): a prediction store in, an instance store out."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import zarr
from test_segment import SIZE, synthetic

from cellresdm import stores
from cellresdm.config import section
from cellresdm.errors import CellResDMError
from cellresdm.segment import InstanceSettings, instances_from_boundaries
from cellresdm.segment_step import gather_instances, segment_predictions
from cellresdm.shards import shard_rows

SETTINGS = InstanceSettings.from_config(section("instances"))


@pytest.fixture(scope="module")
def bounds() -> np.ndarray:
    """(3, 2, H, W) float32 true boundaries of three synthetic fields."""
    return np.stack([np.stack([nb, cb]) for _, nb, cb in (synthetic(line, 0) for line in ("A549", "U2OS", "A549"))])


def _fields_table(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "plate": ["P1"] * n,
            "well": [f"B{c + 2:02d}" for c in range(n)],
            "field": [f"r02c{c + 2:02d}f01" for c in range(n)],
            "index": range(n),
        }
    )


def _predictions(path: Path, bounds: np.ndarray, method: str = "unet") -> Path:
    """A prediction store as cellresdm.sample writes it, with ``boundaries`` (N, 2, H, W) float16."""
    n, _, h, w = bounds.shape
    with stores.create_predictions(path, n, (h, w), with_std=False) as writer:
        for i, field in enumerate(bounds):
            writer.write_field(
                i, boundaries=field.astype(np.float16), boundaries_binary=(field >= 0.5).astype(np.uint8)
            )
        writer.finish(_fields_table(n), {"method": method})
    return path


def test_segment_predictions_round_trip(bounds, tmp_path):
    bounds = bounds.copy()
    bounds[1] = 0.0  # an empty prediction: a valid field with no objects
    store = _predictions(tmp_path / "predictions" / "unet" / "test.zarr", bounds)
    out = tmp_path / "segmentation" / "unet_instances.zarr"
    summary = segment_predictions(store, out, SETTINGS, workers=2, progress=False)
    assert summary["source"] == "unet" and summary["fields"] == 3 and summary["image_size"] == [SIZE, SIZE]
    assert summary["seconds_per_field"] > 0 and summary["fields_per_second"] > 0 and summary["workers"] == 2
    inst = stores.open_instances(out)
    arrays = inst.load()
    assert set(arrays) == {"nuclei", "cells"} and arrays["nuclei"].shape == (3, SIZE, SIZE)
    assert arrays["nuclei"].dtype == np.int32
    pd.testing.assert_frame_equal(inst.fields, _fields_table(3))
    assert inst.source == "unet" and inst.attrs["objects"] == ["nuclei", "cells"]
    assert inst.attrs["settings"] == {**SETTINGS.to_dict(), "workers": 2} and inst.attrs["seconds_per_field"] > 0
    for i in (0, 2):
        nuclei, cells = instances_from_boundaries(*bounds[i].astype(np.float16))
        np.testing.assert_array_equal(arrays["nuclei"][i], nuclei)
        np.testing.assert_array_equal(arrays["cells"][i], cells)
    assert arrays["nuclei"][1].max() == 0 and arrays["cells"][1].max() == 0
    assert summary["mean_nuclei"] == pytest.approx(np.mean([arrays["nuclei"][i].max() for i in range(3)]))
    np.testing.assert_array_equal(inst["cells"][2], arrays["cells"][2])  # lazy arrays read a field at a time


def test_segment_predictions_fails_cleanly(bounds, tmp_path):
    bounds = bounds[:2].copy()
    bounds[1, 0, 5, 5] = np.nan
    store = _predictions(tmp_path / "unet.zarr", bounds)
    out = tmp_path / "unet_instances.zarr"
    with pytest.raises(CellResDMError, match=r"unet.zarr field 1 \(r02c03f01\): nuclei boundary holds 1 NaN"):
        segment_predictions(store, out, SETTINGS, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".unet_instances*"))  # nothing half-written
    with pytest.raises(CellResDMError, match="none.zarr: prediction store is missing"):
        segment_predictions(tmp_path / "none.zarr", out, SETTINGS, progress=False)
    bad = _predictions(tmp_path / "bad.zarr", bounds)
    root = zarr.open_group(str(bad), mode="a")
    del root["boundaries"]
    with pytest.raises(CellResDMError, match="bad.zarr: prediction store lacks array 'boundaries'"):
        segment_predictions(bad, out, SETTINGS, progress=False)
    root.create_array("boundaries", data=bounds[:, :1].astype(np.float16))  # one channel, not two
    with pytest.raises(CellResDMError, match=r"bad.zarr: prediction store array 'boundaries' must be \(N, 2, H, W\)"):
        segment_predictions(bad, out, SETTINGS, progress=False)


def test_workflow_script(bounds, tmp_path, repo_dir):
    store = _predictions(tmp_path / "predictions" / "cellresdm" / "test.zarr", bounds[:1], method="cellresdm")
    out = tmp_path / "segmentation" / "cellresdm_instances.zarr"
    log = tmp_path / "logs" / "segment.log"
    shard = tmp_path / "segmentation" / "shards" / "cellresdm" / "P1" / "A01-P24.zarr"
    snakemake = SimpleNamespace(
        input=SimpleNamespace(predictions=str(store)),
        output=SimpleNamespace(instances=str(shard)),
        params=SimpleNamespace(settings=section("instances", {"threshold": 0.5})),
        wildcards=SimpleNamespace(method="cellresdm", plate="P1", shard="A01-P24"),
        threads=1,
        log=[str(log)],
    )
    runpy.run_path(str(repo_dir / "workflow_scripts" / "segment.py"), init_globals={"snakemake": snakemake})
    gather = SimpleNamespace(
        input=SimpleNamespace(predictions=str(store), shards=[str(shard)]),
        output=SimpleNamespace(instances=str(out)),
        log=[str(tmp_path / "logs" / "gather.log")],
    )
    runpy.run_path(str(repo_dir / "workflow_scripts" / "segment_gather.py"), init_globals={"snakemake": gather})
    inst = stores.open_instances(out)
    assert inst.source == "cellresdm" and inst.attrs["settings"]["workers"] == 1 and inst.load()["nuclei"].max() > 0
    assert "cellresdm: 1 fields of 256x256 segmented" in log.read_text()


def test_shards_gathered_equal_one_job(bounds, tmp_path):
    """Blocks of wells segmented as separate jobs and gathered give the store of one job; an empty shard is fine."""
    store = _predictions(tmp_path / "predictions.zarr", bounds)  # wells B02, B03, B04
    whole = segment_predictions(store, tmp_path / "whole.zarr", SETTINGS, workers=1, progress=False)
    fields = stores.open_predictions(store, arrays=()).fields
    # blocks of one column: B03 comes after B04 in the shard list to show that the gather restores the order
    shards = []
    for name in ("B04-B04", "B02-B02", "B03-B03", "C01-C24"):
        path = tmp_path / "shards" / f"{name}.zarr"
        segment_predictions(
            store, path, SETTINGS, workers=1, progress=False, rows=shard_rows(fields, "P1", name, "plate", "well")
        )
        shards.append(path)
    assert len(stores.open_instances(shards[-1])) == 0
    gather_instances(shards, store, tmp_path / "gathered.zarr")
    one, gathered = stores.open_instances(tmp_path / "whole.zarr"), stores.open_instances(tmp_path / "gathered.zarr")
    pd.testing.assert_frame_equal(gathered.fields, one.fields)
    for name, array in one.load().items():
        np.testing.assert_array_equal(gathered.load()[name], array)
    assert gathered.attrs["seconds_per_field"] > 0 and whole["fields"] == 3
    with pytest.raises(CellResDMError, match="1 fields are in no shard"):
        gather_instances(shards[1:], store, tmp_path / "partial.zarr")
    assert not (tmp_path / "partial.zarr").exists()
