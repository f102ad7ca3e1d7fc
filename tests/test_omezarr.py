"""OME-NGFF HCS plates of the predictions (cellresdm.omezarr): written with ome-zarr-py and read back with its
reader, with the plate layout, channels, colours, labels and uint16 counts of the real images' range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Plate, Reader

from cellresdm import layout, stores
from cellresdm.errors import CellResDMError
from cellresdm.omezarr import CHANNEL_COLOURS, OmeZarrSettings, plate_names, to_counts, write_hcs_plate

H = W = 32
#: (plate, well, row, col, site) of every field; P2 is a second plate that must not leak into P1's.
FIELDS = [
    ("P1", "A01", 1, 1, 1),
    ("P1", "A01", 1, 1, 3),
    ("P1", "B03", 2, 3, 2),
    ("P2", "C05", 3, 5, 1),
]
#: Plate-scope percentiles per plate and channel (low, high), distinct per channel so a mix-up shows.
PERCENTILES = {
    plate: {ch: (100.0 + 10 * k + 50 * p, 2000.0 + 700 * k + 100 * p) for k, ch in enumerate(layout.ALL_CHANNELS)}
    for p, plate in enumerate(["P1", "P2"])
}


def _fields() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "plate": [f[0] for f in FIELDS],
            "cell_line": "U2OS",
            "well": [f[1] for f in FIELDS],
            "row": [f[2] for f in FIELDS],
            "col": [f[3] for f in FIELDS],
            "site": [f[4] for f in FIELDS],
            "field": [layout.field_id(f[2], f[3], f[4]) for f in FIELDS],
            "index": range(len(FIELDS)),
        }
    )


def _stores(tmp_path: Path, with_std: bool = True, scope: str = "plate") -> dict:
    """A dataset, predictions and instances of FIELDS, with their arrays."""
    rng = np.random.default_rng(0)
    n = len(FIELDS)
    fields = _fields()
    data = {
        "bf": rng.random((n, 3, H, W)).astype(np.float16),
        "if": rng.random((n, 5, H, W)).astype(np.float16),
        "pred": rng.random((n, 5, H, W)).astype(np.float16),
        "std": (rng.random((n, 5, H, W)) * 0.1).astype(np.float16),
    }
    rows = []
    for i, (plate, field) in enumerate(zip(fields["plate"], fields["field"], strict=True)):
        for ch, (lo, hi) in PERCENTILES[plate].items():
            if scope == "plate" and i == fields.index[fields["plate"] == plate][0]:
                rows.append(("plate", plate, None, -1, ch, lo, hi))
            elif scope == "image":
                rows.append(("image", plate, field, i, ch, lo + i, hi + 3 * i))
    norm = pd.DataFrame(rows, columns=["scope", "plate", "field", "index", "channel", "low", "high"])
    with stores.create_dataset(tmp_path / "test.zarr", n, (H, W)) as writer:
        for i in range(n):
            zeros = np.zeros((2, H, W), dtype=np.uint8)
            writer.write_field(i, bf=data["bf"][i], if_=data["if"][i], boundaries=zeros, labels=zeros.astype(np.uint16))
        writer.finish(fields, norm, {"scope": scope, "low": 0.5, "high": 99.5, "shape": [H, W]})
    with stores.create_predictions(tmp_path / "pred.zarr", n, (H, W), with_std=with_std) as writer:
        for i in range(n):
            zeros = np.zeros((2, H, W), dtype=np.float16)
            std = {"if_std": data["std"][i], "boundaries_std": zeros} if with_std else {}
            writer.write_field(i, if_=data["pred"][i], boundaries=zeros, boundaries_binary=zeros, **std)
        writer.finish(fields, {"method": "unet"})
    nuclei = np.zeros((n, H, W), dtype=np.int32)
    for i in range(n):
        nuclei[i, 2 + i : 8 + i, 3:9] = i + 1
    cells = np.where(nuclei > 0, nuclei, 0)
    cells[:, 20:28, 20:28] = 7
    stores.write_instances(tmp_path / "inst.zarr", "unet", {"nuclei": nuclei, "cells": cells}, fields)
    return {
        "dataset": tmp_path / "test.zarr",
        "predictions": tmp_path / "pred.zarr",
        "instances": tmp_path / "inst.zarr",
        "data": data,
        "nuclei": nuclei,
        "cells": cells,
        "norm": norm,
    }


def _write(tmp_path: Path, made: dict, plate: str = "P1", **settings) -> tuple[Path, dict]:
    out = tmp_path / "omezarr" / f"{plate}.ome.zarr"
    summary = write_hcs_plate(
        out,
        plate,
        made["predictions"],
        made["dataset"],
        made["instances"],
        pixel_size_um=2.5,
        settings=OmeZarrSettings(**settings),
    )
    return out, summary


def _node(path: Path, spec: type):
    nodes = [n for n in Reader(parse_url(str(path)))() if any(isinstance(s, spec) for s in n.specs)]
    assert nodes, f"no {spec.__name__} node at {path}"
    return nodes[0]


def test_the_plate_reads_back_with_ome_zarr_py(tmp_path):
    made = _stores(tmp_path)
    out, summary = _write(tmp_path, made, levels=3)
    assert summary["fields"] == 3 and summary["wells"] == 2 and summary["labels"] == ["nuclei", "cells"]

    plate = _node(out, Plate)
    meta = zarr.open_group(str(out), mode="r").attrs["ome"]["plate"]
    assert meta["name"] == "P1" and meta["field_count"] == 2
    assert [r["name"] for r in meta["rows"]] == [chr(ord("A") + r) for r in range(16)]
    assert [c["name"] for c in meta["columns"]] == [f"{c:02d}" for c in range(1, 25)]
    assert [w["path"] for w in meta["wells"]] == ["A/01", "B/03"]  # P2's well C05 is not in P1
    assert plate.data[0].dtype == np.uint16

    well = zarr.open_group(str(out / "A" / "01"), mode="r").attrs["ome"]["well"]
    assert [image["path"] for image in well["images"]] == ["1", "3"]

    names = [*layout.IF_CHANNELS, *layout.BF_CHANNELS, *(c + "_std" for c in layout.IF_CHANNELS)]
    field_path = out / "A" / "01" / "3"  # the second field: row 1 of the stores
    image = _node(field_path, Multiscales)
    assert image.metadata["channel_names"] == names
    omero = zarr.open_group(str(field_path), mode="r").attrs["ome"]["omero"]["channels"]
    assert [c["color"] for c in omero] == [CHANNEL_COLOURS[n.removesuffix("_std")] for n in names]
    assert [c["active"] for c in omero] == [n in layout.IF_CHANNELS for n in names]
    assert len(image.data) == 3
    assert [tuple(level.shape) for level in image.data] == [(13, H, W), (13, H // 2, W // 2), (13, H // 4, W // 4)]
    axes = image.metadata["axes"]
    assert [a["name"] for a in axes] == ["c", "y", "x"] and axes[1]["unit"] == "micrometer"
    scale = zarr.open_group(str(field_path), mode="r").attrs["ome"]["multiscales"][0]["datasets"][0]
    assert scale["coordinateTransformations"][0]["scale"] == [1.0, 2.5, 2.5]

    # pixel values: the stored [0, 1] values mapped back through the plate's percentiles (to the nearest count)
    level0 = np.asarray(image.data[0])
    assert level0.dtype == np.uint16
    perc = PERCENTILES["P1"]
    data = made["data"]
    for k, ch in enumerate(layout.IF_CHANNELS):
        lo, hi = perc[ch]
        expected = lo + data["pred"][1, k].astype(np.float64) * (hi - lo)
        assert np.abs(level0[k] - expected).max() <= 0.5 + 1e-6, ch
        assert level0[k].min() >= lo and level0[k].max() <= hi
        std = data["std"][1, k].astype(np.float64) * (hi - lo)
        assert np.abs(level0[len(names) - 5 + k] - std).max() <= 0.5 + 1e-6, ch
    for k, ch in enumerate(layout.BF_CHANNELS):
        lo, hi = perc[ch]
        expected = lo + data["bf"][1, k].astype(np.float64) * (hi - lo)
        assert np.abs(level0[5 + k] - expected).max() <= 0.5 + 1e-6, ch

    labels = [n for n in Reader(parse_url(str(field_path / "labels" / "nuclei")))() if Label in map(type, n.specs)]
    assert labels, "the nuclei labels are not an NGFF label image"
    label_group = zarr.open_group(str(field_path / "labels"), mode="r")
    assert label_group.attrs["ome"]["labels"] == ["nuclei", "cells"]
    for obj in ("nuclei", "cells"):
        group = zarr.open_group(str(field_path / "labels" / obj), mode="r")
        assert "image-label" in group.attrs["ome"]
        full = group["s0"][...]
        np.testing.assert_array_equal(full, made[obj][1])
        assert group["s2"].shape == (H // 4, W // 4)
        assert set(np.unique(group["s1"][...])) <= set(np.unique(full))  # nearest: no new label values


def test_image_scope_uses_each_fields_percentiles_and_options_drop_channels(tmp_path):
    made = _stores(tmp_path, with_std=False, scope="image")
    out, summary = _write(tmp_path, made, plate="P2", include_bf=False, levels=1)
    assert summary["channels"] == list(layout.IF_CHANNELS)
    image = _node(out / "C" / "05" / "1", Multiscales)
    assert image.metadata["channel_names"] == list(layout.IF_CHANNELS) and len(image.data) == 1
    level0 = np.asarray(image.data[0])
    for k, ch in enumerate(layout.IF_CHANNELS):
        lo, hi = PERCENTILES["P2"][ch]
        lo, hi = lo + 3, hi + 9  # field 3's own percentiles
        expected = lo + made["data"]["pred"][3, k].astype(np.float64) * (hi - lo)
        assert np.abs(level0[k] - expected).max() <= 0.5 + 1e-6


def test_to_counts_rounds_and_clips():
    values = np.array([[[0.0, 0.5, 1.0, 1.5, -0.2]]])
    counts = to_counts(values, np.array([100.0]), np.array([300.0]))
    np.testing.assert_array_equal(counts[0, 0], [100, 200, 300, 300, 100])
    np.testing.assert_array_equal(
        to_counts(np.array([[[0.25]]]), np.array([100.0]), np.array([300.0]), offset=False), [[[50]]]
    )
    assert to_counts(np.array([[[1.0]]]), np.array([0.0]), np.array([1e6])).item() == 65535


def test_bad_inputs_name_the_plate_or_store_and_leave_nothing(tmp_path):
    made = _stores(tmp_path)
    assert plate_names(made["predictions"]) == ["P1", "P2"]
    out = tmp_path / "omezarr" / "P9.ome.zarr"
    with pytest.raises(CellResDMError, match="no predicted field of plate P9"):
        write_hcs_plate(out, "P9", made["predictions"], made["dataset"], None, 1.0)
    # an instance store that lacks one of the plate's fields: the error names it, and no plate is left behind
    fields = _fields().iloc[:2]
    stores.write_instances(tmp_path / "short.zarr", "unet", {"nuclei": made["nuclei"][:2]}, fields)
    out = tmp_path / "omezarr" / "P1.ome.zarr"
    with pytest.raises(CellResDMError, match=r"short\.zarr: has no field r02c03f02 of plate P1"):
        write_hcs_plate(out, "P1", made["predictions"], made["dataset"], tmp_path / "short.zarr", 1.0)
    assert not out.exists() and not list(out.parent.iterdir())
    # a norm table without the plate's percentiles
    other = _stores(tmp_path / "other", scope="plate")
    norm = other["norm"]
    norm[norm["plate"] != "P1"].to_parquet(other["dataset"] / "norm.parquet", index=False)
    with pytest.raises(CellResDMError, match="norm table has no percentiles of plate P1"):
        write_hcs_plate(out, "P1", other["predictions"], other["dataset"], None, 1.0)
    with pytest.raises(CellResDMError, match="missing"):
        write_hcs_plate(out, "P1", tmp_path / "nothing.zarr", made["dataset"], None, 1.0)


def test_the_cli_writes_one_plate_per_test_plate_under_the_results_layout(tmp_path, capsys):
    import shutil

    from cellresdm.cli import main
    from cellresdm.results import ResultsLayout

    made = _stores(tmp_path / "made", with_std=False)
    results = ResultsLayout(str(tmp_path / "results"))
    common = ["--results", results.root]
    assert main([*common, "ome-zarr", "unet"]) == 1
    assert "predictions/unet/test.zarr: prediction store is missing" in capsys.readouterr().err
    for source, target in [
        (made["dataset"], results.dataset("test")),
        (made["predictions"], results.predictions("unet")),
        (made["instances"], results.instances("unet")),
    ]:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)
    assert main([*common, "ome-zarr", "unet", "--plate", "P3"]) == 1
    assert "no predictions of plate(s) P3" in capsys.readouterr().err
    assert main([*common, "ome-zarr", "unet"]) == 0
    written = capsys.readouterr().out.split()
    assert written == [results.omezarr("unet", "P1"), results.omezarr("unet", "P2")]
    image = _node(Path(results.omezarr("unet", "P2")) / "C" / "05" / "1", Multiscales)
    assert image.metadata["channel_names"] == [*layout.IF_CHANNELS, *layout.BF_CHANNELS]
    assert len(image.data) == 3  # the schema's default levels
