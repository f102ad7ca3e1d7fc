"""The pipeline's stores (cellresdm.stores): each round-trips, and a damaged store fails naming what is wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from cellresdm import stores
from cellresdm.errors import CellResDMError

N, H, W = 2, 8, 9


def _fields(n: int = N) -> pd.DataFrame:
    return pd.DataFrame({"plate": ["P1"] * n, "field": [f"r02c{c + 2:02d}f01" for c in range(n)], "index": range(n)})


def _dataset(path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    data = {
        "bf": rng.random((N, 3, H, W)).astype(np.float16),
        "if": rng.random((N, 5, H, W)).astype(np.float16),
        "boundaries": rng.integers(0, 2, (N, 2, H, W)).astype(np.uint8),
        "labels": rng.integers(0, 9, (N, 2, H, W)).astype(np.uint16),
    }
    norm = pd.DataFrame({"scope": ["plate"], "plate": ["P1"], "channel": ["DNA"], "low": [1.0], "high": [9.0]})
    with stores.create_dataset(path, N, (H, W)) as writer:
        for i in range(N):
            writer.write_field(
                i, bf=data["bf"][i], if_=data["if"][i], boundaries=data["boundaries"][i], labels=data["labels"][i]
            )
        writer.finish(_fields(), norm, {"format": "cellresdm-dataset-1", "shape": [H, W]})
    return path, data


def _predictions(path: Path, with_std: bool = True) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    data = {name: rng.random((N, c, H, W)).astype(np.float16) for name, c in stores.PREDICTION_ARRAYS.items()}
    data["boundaries_binary"] = (data["boundaries"] >= 0.5).astype(np.uint8)
    if not with_std:
        data = {k: v for k, v in data.items() if not k.endswith("_std")}
    with stores.create_predictions(path, N, (H, W), with_std=with_std) as writer:
        for i in range(N):
            writer.write_field(i, **{"if_" if k == "if" else k: v[i] for k, v in data.items()})
        writer.finish(_fields(), {"method": "unet"})
    return path, data


def _instances(path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    labels = np.zeros((N, H, W), dtype=np.int32)
    labels[0, 1:3, 1:3] = 1
    labels[1, 4:6, 2:7] = 2
    data = {"nuclei": labels, "cells": labels * 1}
    return stores.write_instances(path, "unet", data, _fields(), {"seconds_per_field": 0.5}), data


def test_dataset_round_trip(tmp_path):
    path, data = _dataset(tmp_path / "train.zarr")
    assert stores.store_exists(path)
    store = stores.open_dataset(path)
    assert len(store) == N and store.shape == (H, W) and set(store.arrays) == set(stores.DATASET_ARRAYS)
    for name, values in data.items():
        assert store[name].dtype == values.dtype and store[name].chunks == (1, *values.shape[1:])
        np.testing.assert_array_equal(store[name][...], values)
    pd.testing.assert_frame_equal(store.fields, _fields())
    assert store.norm()["channel"].tolist() == ["DNA"]
    assert store.attr("shape") == [H, W]
    with pytest.raises(CellResDMError, match="train.zarr: dataset lacks attribute 'resize'"):
        store.attr("resize")
    only_labels = stores.open_dataset(path, arrays=("labels",), columns=("plate", "field"))
    assert list(only_labels.arrays) == ["labels"]
    with pytest.raises(KeyError, match="'bf' was not opened"):
        only_labels["bf"]


def test_predictions_round_trip(tmp_path):
    for with_std in (True, False):
        path, data = _predictions(tmp_path / f"std{with_std}.zarr", with_std)
        store = stores.open_predictions(path, arrays=tuple(data))
        assert store.attrs == {"method": "unet"} and len(store) == N
        for name, values in data.items():
            assert store[name].dtype == values.dtype
            np.testing.assert_array_equal(store[name][...], values)
    with pytest.raises(CellResDMError, match="stdFalse.zarr: prediction store lacks array 'if_std'"):
        stores.open_predictions(tmp_path / "stdFalse.zarr", arrays=("if", "if_std"))


def test_instances_round_trip(tmp_path):
    path, data = _instances(tmp_path / "unet_instances.zarr")
    store = stores.open_instances(path)
    assert store.source == "unet" and list(store.arrays) == ["nuclei", "cells"]
    assert store.attrs == {"seconds_per_field": 0.5, "source": "unet", "objects": ["nuclei", "cells"]}
    loaded = store.load()
    for name, values in data.items():
        assert loaded[name].dtype == np.int32
        np.testing.assert_array_equal(loaded[name], values)
    pd.testing.assert_frame_equal(store.fields, _fields())


def test_write_instances_checks_its_input(tmp_path):
    labels = np.zeros((2, 6, 7), dtype=np.uint16)
    with pytest.raises(CellResDMError, match="w.zarr: instance arrays must be named"):
        stores.write_instances(tmp_path / "w.zarr", "s", {"nucleus": labels}, _fields())
    with pytest.raises(CellResDMError, match="w.zarr: instance arrays must all be"):
        stores.write_instances(tmp_path / "w.zarr", "s", {"nuclei": labels, "cells": labels[:, :5]}, _fields())
    with pytest.raises(CellResDMError, match="w.zarr: 2 label images but 3 rows"):
        stores.write_instances(tmp_path / "w.zarr", "s", {"nuclei": labels}, _fields(3))
    with pytest.raises(CellResDMError, match="non-negative int32"):
        stores.write_instances(tmp_path / "w.zarr", "s", {"nuclei": labels.astype(np.int64) - 1}, _fields())
    assert not (tmp_path / "w.zarr").exists()


def test_an_unfinished_store_is_not_written(tmp_path):
    unfinished = pytest.raises(CellResDMError, match="p.zarr: prediction store was not finished")
    with unfinished, stores.create_predictions(tmp_path / "p.zarr", N, (H, W), with_std=False):
        pass
    no_source = pytest.raises(CellResDMError, match="i.zarr: instance store attrs need 'source'")
    with no_source, stores.create_instances(tmp_path / "i.zarr", ["nuclei"], N, (H, W)) as writer:
        writer.finish(_fields(), {"objects": ["nuclei"]})
    assert not list(tmp_path.iterdir())


def _damaged(source: Path, target: Path, array: str | None = None, attr: str | None = None, table: bool = False):
    """A copy of ``source`` without one array, root attribute or the field table."""
    shutil.copytree(source, target)
    root = zarr.open_group(str(target), mode="a")
    if array is not None:
        del root[array]
    if attr is not None:
        attrs = dict(root.attrs)
        del attrs[attr]
        root.attrs.clear()
        root.attrs.update(attrs)
    if table:
        next(p for p in target.iterdir() if p.name.startswith("fields")).unlink()
    return target


def test_damaged_stores_fail_naming_the_store_and_what_is_missing(tmp_path):
    dataset, _ = _dataset(tmp_path / "ds.zarr")
    predictions, _ = _predictions(tmp_path / "pred.zarr")
    instances, _ = _instances(tmp_path / "inst.zarr")
    cases = [
        (stores.open_dataset, _damaged(dataset, tmp_path / "d1.zarr", array="labels"), "dataset lacks array 'labels'"),
        (stores.open_dataset, _damaged(dataset, tmp_path / "d2.zarr", table=True), "dataset lacks table 'fields"),
        (stores.open_predictions, _damaged(predictions, tmp_path / "p1.zarr", array="if"), "store lacks array 'if'"),
        (stores.open_predictions, _damaged(predictions, tmp_path / "p2.zarr", table=True), "store lacks table"),
        (stores.open_instances, _damaged(instances, tmp_path / "i1.zarr", array="cells"), "store lacks array 'cells'"),
        (stores.open_instances, _damaged(instances, tmp_path / "i2.zarr", attr="source"), "lacks attribute 'source'"),
        (stores.open_instances, _damaged(instances, tmp_path / "i3.zarr", attr="objects"), "attribute 'objects'"),
        (stores.open_instances, _damaged(instances, tmp_path / "i4.zarr", table=True), "store lacks table 'fields"),
        (stores.open_dataset, tmp_path / "absent.zarr", "dataset is missing"),
        (stores.open_predictions, tmp_path / "absent.zarr", "prediction store is missing"),
        (stores.open_instances, tmp_path / "absent.zarr", "instance store is missing"),
    ]
    for opener, path, message in cases:
        with pytest.raises(CellResDMError, match=f"{path.name}: .*{message}"):
            opener(path)
    assert not stores.store_exists(tmp_path / "absent.zarr")


def test_invalid_arrays_and_tables_fail_naming_the_store(tmp_path):
    dataset, data = _dataset(tmp_path / "ds.zarr")
    shape = _damaged(dataset, tmp_path / "shape.zarr", array="if")
    zarr.open_group(str(shape), mode="a").create_array("if", data=data["if"][:, :4])
    with pytest.raises(CellResDMError, match=r"shape.zarr: dataset array 'if' must be \(N, 5, H, W\)"):
        stores.open_dataset(shape)
    with pytest.raises(CellResDMError, match="ds.zarr: dataset table 'fields.parquet' lacks column.s. well"):
        stores.open_dataset(dataset, columns=("well",))
    rows = _damaged(dataset, tmp_path / "rows.zarr", array="bf")
    zarr.open_group(str(rows), mode="a").create_array("bf", data=data["bf"][:1])
    with pytest.raises(
        CellResDMError, match=r"rows.zarr: dataset array 'if' has shape \(2, 5, 8, 9\), 'bf' has \(1, 3, 8, 9\)"
    ):
        stores.open_dataset(rows)
    with pytest.raises(CellResDMError, match="rows.zarr: dataset holds 1 fields but its table .* has 2 rows"):
        stores.open_dataset(rows, arrays=("bf",))
    instances, labels = _instances(tmp_path / "inst.zarr")
    dtype = _damaged(instances, tmp_path / "dtype.zarr", array="cells")
    zarr.open_group(str(dtype), mode="a").create_array("cells", data=labels["cells"].astype(np.uint16))
    with pytest.raises(CellResDMError, match="dtype.zarr: instance store array 'cells' must be .N, H, W. int32"):
        stores.open_instances(dtype)
