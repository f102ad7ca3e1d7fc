"""Boundaries to instances (cellresdm.segment): exact on true boundaries, robust to gaps, and the instance store."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image
from stardist.matching import matching

from cellresdm import segment
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.masks import boundaries_from_labels
from cellresdm.segment import (
    SegmentSettings,
    instances_from_boundaries,
    read_instances,
    segment_predictions,
    write_instances,
)
from cellresdm.synth import Treatment, make_field

SIZE = 256


def synthetic(cell_line: str, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True labels (2, H, W) int32 [nuclei, cells] of a synthetic field and its two boundary masks (float32)."""
    _, labels = make_field(cell_line, size, np.random.default_rng(seed), Treatment())
    labels = labels.astype(np.int32)
    bounds = np.stack([boundaries_from_labels(labels[k], thickness=2) for k in range(2)]).astype(np.float32)
    return labels, bounds[0], bounds[1]


@pytest.fixture(scope="module")
def fields() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [synthetic(line, seed) for line in ("A549", "U2OS") for seed in (0, 1)]


# ----------------------------------------------------------------------------------------------- true boundaries


def test_true_boundaries_reproduce_the_labels(fields):
    """Measured on these fields: nuclei and cells F1 1.0, mean IoU of matches >= 0.997 (the 2-px band is split
    between touching cells about its middle, which costs a pixel here and there)."""
    for labels, nuc_b, cell_b in fields:
        nuclei, cells = instances_from_boundaries(nuc_b, cell_b)
        assert nuclei.dtype == np.int32 and cells.dtype == np.int32 and nuclei.shape == labels[0].shape
        m_nuc = matching(labels[0], nuclei, thresh=0.5)
        m_cell = matching(labels[1], cells, thresh=0.5)
        assert m_nuc.f1 >= 0.95 and m_nuc.mean_matched_score >= 0.99
        assert m_cell.f1 >= 0.95 and m_cell.mean_matched_score >= 0.98
        # nucleus k lies in cell k, and matched true pairs (synth: nucleus k in cell k) map to pred pairs
        for k in range(1, int(nuclei.max()) + 1):
            assert np.mean(cells[nuclei == k] == k) == 1.0
        pairs = dict(matching(labels[0], nuclei, thresh=0.5, report_matches=True).matched_pairs)
        cell_pairs = dict(matching(labels[1], cells, thresh=0.5, report_matches=True).matched_pairs)
        agree = [cell_pairs.get(t) == p for t, p in pairs.items()]
        assert np.mean(agree) >= 0.95


def test_nuclei_and_cells_are_numbered_like_cellprofiler(fields):
    labels, nuc_b, cell_b = fields[0]
    nuclei, cells = instances_from_boundaries(nuc_b, cell_b)
    n = int(nuclei.max())
    assert set(np.unique(nuclei)) == set(range(n + 1))  # 1..N without gaps
    assert set(np.unique(cells)) <= set(range(n + 1))  # every cell holds a nucleus by default
    assert not np.any((nuclei > 0) & (cells == 0))  # nuclei lie inside cells


def test_touching_cells_with_a_missing_line_are_split_by_their_nuclei(fields):
    labels, nuc_b, cell_b = fields[0]
    cells_true = labels[1]
    # erase the boundary between the two touching cells that share the longest border
    right = cells_true[:, :-1] != cells_true[:, 1:]
    pairs = np.stack([cells_true[:, :-1][right], cells_true[:, 1:][right]], 1)
    pairs = pairs[(pairs > 0).all(1)]
    a, b = max(set(map(tuple, pairs.tolist())), key=lambda p: int(np.sum((pairs == p).all(1))))
    joint = np.where(np.isin(cells_true, [a, b]), a, cells_true)
    cut = boundaries_from_labels(joint, 2).astype(np.float32)
    _, split = instances_from_boundaries(nuc_b, cut)
    assert matching(cells_true, split, thresh=0.5).f1 >= 0.95
    _, merged = instances_from_boundaries(nuc_b, cut, SegmentSettings(split_cells=False))
    m = matching(cells_true, merged, thresh=0.5)
    assert m.fp == 0 and m.fn >= 1  # the merged area went to one of the two nuclei


def _ring(size: int = 96, radius: float = 14, width: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """(nucleus outline, cell outline) of one round cell in the middle of the field, float32."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    nucleus = ((r >= radius - width) & (r < radius)).astype(np.float32)
    cell = ((r >= 2.2 * radius - width) & (r < 2.2 * radius)).astype(np.float32)
    return nucleus, cell


def test_outlines_with_gaps_are_closed():
    nucleus, cell = _ring()
    full, _ = instances_from_boundaries(nucleus, cell)
    assert full.max() == 1
    area = np.count_nonzero(full)
    # a 9-px gap (closed by the closing radii), and a 90-degree gap (a C: its convex hull)
    for cut, tolerance in (((slice(44, 53), slice(58, None)), 0.05), ((slice(38, 58), slice(57, None)), 0.15)):
        broken = nucleus.copy()
        broken[cut] = 0
        nuclei, cells = instances_from_boundaries(broken, cell)
        assert nuclei.max() == 1 and cells.max() == 1
        assert abs(np.count_nonzero(nuclei) - area) < tolerance * area
        assert np.all(cells[nuclei == 1] == 1)
    open_cell = cell.copy()
    open_cell[44:53, 75:] = 0  # a gap in the cell outline towards the background
    nuclei, cells = instances_from_boundaries(nucleus, open_cell)
    assert cells.max() == 1 and np.count_nonzero(cells) < 1.15 * np.pi * (2.2 * 14) ** 2


def test_predicted_like_boundaries_still_segment(fields):
    """Noisy boundaries with dropped pixels (a stand-in for a generator's output) keep the objects
    (measured: mean F1 0.99 over nuclei and cells)."""
    rng = np.random.default_rng(3)
    f1 = []
    for labels, nuc_b, cell_b in fields:
        noisy = []
        for b in (nuc_b, cell_b):
            p = np.clip(np.where(rng.random(b.shape) < 0.1, 0, b) * 0.9 + 0.15 * rng.random(b.shape), 0, 1)
            noisy.append(p.astype(np.float32))
        nuclei, cells = instances_from_boundaries(*noisy)
        f1 += [matching(labels[0], nuclei, thresh=0.5).f1, matching(labels[1], cells, thresh=0.5).f1]
    assert np.mean(f1) >= 0.95


def test_cells_without_nucleus_are_numbered_after_the_nuclei():
    nucleus, cell = _ring(size=128)
    cell[:, 100:103] = 1  # a closed strip on the right: an area with no nucleus
    cell[:, 123:] = 1
    nuclei, cells = instances_from_boundaries(nucleus, cell)
    assert nuclei.max() == 1 and set(np.unique(cells)) == {0, 1}
    nuclei, cells = instances_from_boundaries(nucleus, cell, SegmentSettings(cells_need_nucleus=False))
    assert set(np.unique(cells)) == {0, 1, 2}
    assert np.all(cells[nuclei == 1] == 1)


def _damaged(boundary: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A generator-like probability map: blurred, with gaps of ~7 px in the lines and background noise (on these
    fields it takes every path: gap closing, solidity, open outlines, split cells)."""
    p = ndi.gaussian_filter(boundary, 1.0) * 1.6
    p[ndi.binary_dilation(rng.random(boundary.shape) < 3e-4, iterations=3)] *= 0.1
    p += 0.25 * ndi.gaussian_filter(rng.standard_normal(boundary.shape).astype(np.float32), 1.5)
    return np.clip(p, 0, 1).astype(np.float32)


def test_wide_label_ids_give_the_same_instances(fields, monkeypatch):
    """Label images hold 16-bit ids while they fit and int32 ids beyond (a noisy field can have more than 65535
    areas): both paths give the same instances."""
    rng = np.random.default_rng(7)
    maps = [(_damaged(nuc_b, rng), _damaged(cell_b, rng)) for _, nuc_b, cell_b in fields]
    expected = [instances_from_boundaries(*m) for m in maps]
    monkeypatch.setattr(segment, "_UINT16_IDS", 1)
    for m, (nuclei, cells) in zip(maps, expected, strict=True):
        got = instances_from_boundaries(*m)
        np.testing.assert_array_equal(got[0], nuclei)
        np.testing.assert_array_equal(got[1], cells)
    # and for real: a checkerboard has 180300 one-pixel areas
    yy, xx = np.mgrid[:600, :601]
    board = ((yy + xx) % 2 == 0).astype(np.float32)
    nuclei, cells = instances_from_boundaries(board, board)
    assert nuclei.max() == cells.max() == 0  # all below the minimum areas
    nuclei, cells = instances_from_boundaries(board, board, SegmentSettings(min_nucleus_area=0, min_cell_area=0))
    assert nuclei.max() == np.count_nonzero(board == 0) and np.array_equal(cells, nuclei)


def test_labelling_and_hulls_match_scipy_and_skimage():
    """The OpenCV building blocks reproduce scipy.ndimage.label (numbering included: it decides ties) and
    skimage's convex_hull_image, and the octagon of a group's extents holds its hull."""
    rng = np.random.default_rng(0)
    for _ in range(100):
        mask = rng.random(tuple(rng.integers(1, 50, 2))) < rng.uniform(0.02, 0.7)
        for connectivity in (4, 8):
            labels, count = segment._label(mask, connectivity)
            expected, n = ndi.label(mask, ndi.generate_binary_structure(2, connectivity // 4))
            assert count == n and np.array_equal(labels, expected)
        if mask.any():
            rows, cols = np.nonzero(mask)
            hull = segment._hull_image(rows, cols, mask.shape)
            np.testing.assert_array_equal(hull, convex_hull_image(mask))
            group = np.ones(rows.size, dtype=np.int64)
            lo, hi = segment._extents(group, 1, rows, cols, rows + cols, rows - cols)
            assert segment._octagon_pixels(lo, hi, np.array([1]))[0] >= np.count_nonzero(hull)


# ----------------------------------------------------------------------------------------------- bad input


def test_empty_and_all_foreground_predictions_give_no_objects():
    for value in (0.0, 1.0):
        field = np.full((64, 80), value, dtype=np.float32)
        nuclei, cells = instances_from_boundaries(field, field)
        assert nuclei.shape == (64, 80) and nuclei.dtype == np.int32
        assert nuclei.max() == 0 and cells.max() == 0
    nuclei, cells = instances_from_boundaries(np.zeros((1, 1)), np.zeros((1, 1)))
    assert nuclei.max() == cells.max() == 0


@pytest.mark.parametrize(
    ("nuclei", "cells", "message"),
    [
        (np.full((8, 8), np.nan), np.zeros((8, 8)), "r01c01f01: nuclei boundary holds 64 NaN"),
        (np.zeros((8, 8)), np.where(np.eye(8) > 0, np.inf, 0), "r01c01f01: cell boundary holds 8 NaN/inf"),
        (np.zeros((2, 8, 8)), np.zeros((8, 8)), r"2-D \(H, W\) array, got shape \(2, 8, 8\)"),
        (np.zeros((0, 8)), np.zeros((0, 8)), "non-empty"),
        (np.zeros((8, 8)), np.zeros((8, 9)), r"\(8, 8\) and cell boundary \(8, 9\) differ"),
        (np.array([["a"]]), np.zeros((1, 1)), "must be real numbers"),
    ],
)
def test_bad_input_names_the_field(nuclei, cells, message):
    with pytest.raises(CellResDMError, match=message):
        instances_from_boundaries(nuclei, cells, field="r01c01f01")


def test_settings_validation_and_config():
    s = SegmentSettings.from_config({"threshold": 0.4, "nuclei_closing_radii": [3, 5]})
    assert s.threshold == 0.4 and s.nuclei_closing_radii == (3, 5)
    assert json.loads(json.dumps(s.to_dict()))["nuclei_closing_radii"] == [3, 5]
    assert SegmentSettings.from_config(None) == SegmentSettings()
    for bad, key in (
        ({"threshold": 1.5}, "segment.threshold"),
        ({"grow": -1}, "segment.grow"),
        ({"cells_closing_radii": [6, 3]}, "segment.cells_closing_radii"),
        ({"max_cell_area": 10}, "segment.max_cell_area"),
        ({"split_cells": "yes"}, "segment.split_cells"),
        ({"workers": 0}, "segment.workers"),
        ({"min_enclosure": 2}, "segment.min_enclosure"),
    ):
        with pytest.raises(ConfigError, match=key):
            SegmentSettings.from_config(bad)
    with pytest.raises(ConfigError, match="mapping"):
        SegmentSettings.from_config([0.5])
    with pytest.raises(ConfigError, match="segment.taus"):
        SegmentSettings.from_config({"taus": [0.5]})


# ----------------------------------------------------------------------------------------------- instance store


def _fields_table(n: int) -> pd.DataFrame:
    return pd.DataFrame({"plate": ["P1"] * n, "field": [f"r02c{c + 2:02d}f01" for c in range(n)], "index": range(n)})


def _predictions(path: Path, bounds: np.ndarray, method: str = "unet") -> Path:
    """A prediction store as cellresdm.sample writes it: ``boundaries`` (N, 2, H, W) float16 and fields."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    n, _, h, w = bounds.shape
    root.create_array("boundaries", data=bounds.astype(np.float16), chunks=(1, 2, h, w))
    root.create_array("boundaries_binary", data=(bounds >= 0.5).astype(np.uint8), chunks=(1, 2, h, w))
    root.attrs.update({"method": method})
    _fields_table(n).to_parquet(path / "fields.parquet", index=False)
    return path


def test_segment_predictions_round_trip(fields, tmp_path):
    bounds = np.stack([np.stack([nb, cb]) for _, nb, cb in fields[:3]])
    bounds[1] = 0.0  # an empty prediction: a valid field with no objects
    store = _predictions(tmp_path / "predictions" / "unet" / "test.zarr", bounds)
    out = tmp_path / "segmentation" / "unet_instances.zarr"
    summary = segment_predictions(store, out, SegmentSettings(workers=2), progress=False)
    assert summary["source"] == "unet" and summary["fields"] == 3 and summary["image_size"] == [SIZE, SIZE]
    assert summary["seconds_per_field"] > 0 and summary["fields_per_second"] > 0
    arrays, table, attrs = read_instances(out)
    assert set(arrays) == {"nuclei", "cells"} and arrays["nuclei"].shape == (3, SIZE, SIZE)
    assert arrays["nuclei"].dtype == np.int32
    pd.testing.assert_frame_equal(table, _fields_table(3))
    assert attrs["source"] == "unet" and attrs["objects"] == ["nuclei", "cells"]
    assert attrs["settings"] == SegmentSettings(workers=2).to_dict() and attrs["seconds_per_field"] > 0
    for i in (0, 2):
        nuclei, cells = instances_from_boundaries(*bounds[i].astype(np.float16))
        np.testing.assert_array_equal(arrays["nuclei"][i], nuclei)
        np.testing.assert_array_equal(arrays["cells"][i], cells)
    assert arrays["nuclei"][1].max() == 0 and arrays["cells"][1].max() == 0
    assert summary["mean_nuclei"] == pytest.approx(np.mean([arrays["nuclei"][i].max() for i in range(3)]))
    lazy, _, _ = read_instances(out, lazy=True)
    np.testing.assert_array_equal(lazy["cells"][2], arrays["cells"][2])


def test_segment_predictions_fails_cleanly(fields, tmp_path):
    bounds = np.stack([np.stack([nb, cb]) for _, nb, cb in fields[:2]])
    bounds[1, 0, 5, 5] = np.nan
    store = _predictions(tmp_path / "unet.zarr", bounds)
    out = tmp_path / "unet_instances.zarr"
    with pytest.raises(CellResDMError, match=r"unet.zarr field 1 \(r02c03f01\): nuclei boundary holds 1 NaN"):
        segment_predictions(store, out, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".unet_instances*"))  # nothing half-written
    with pytest.raises(CellResDMError, match="prediction store is missing"):
        segment_predictions(tmp_path / "none.zarr", out, progress=False)
    bad = _predictions(tmp_path / "bad.zarr", bounds[:, :1])
    with pytest.raises(CellResDMError, match=r"bad.zarr: 'boundaries' must be an \(N, 2, H, W\)"):
        segment_predictions(bad, out, progress=False)
    _fields_table(5).to_parquet(bad / "fields.parquet", index=False)
    root = zarr.open_group(str(bad), mode="a")
    del root["boundaries"]
    with pytest.raises(CellResDMError, match="bad.zarr: array 'boundaries' is missing"):
        segment_predictions(bad, out, progress=False)


def test_write_and_read_instances(tmp_path):
    labels = np.zeros((2, 6, 7), dtype=np.uint16)
    labels[0, 1:3, 1:3] = 1
    out = write_instances(tmp_path / "sd.zarr", "stardist_bf", {"nuclei": labels}, _fields_table(2), {"x": 1.5})
    arrays, table, attrs = read_instances(out)
    assert list(arrays) == ["nuclei"] and arrays["nuclei"].dtype == np.int32 and len(table) == 2
    assert attrs == {"x": 1.5, "source": "stardist_bf", "objects": ["nuclei"]}
    np.testing.assert_array_equal(arrays["nuclei"], labels)

    with pytest.raises(CellResDMError, match="w.zarr: instance arrays must be named"):
        write_instances(tmp_path / "w.zarr", "s", {"nucleus": labels}, _fields_table(2))
    with pytest.raises(CellResDMError, match="w.zarr: instance arrays must all be"):
        write_instances(tmp_path / "w.zarr", "s", {"nuclei": labels, "cells": labels[:, :5]}, _fields_table(2))
    with pytest.raises(CellResDMError, match="w.zarr: 2 label images but 3 rows"):
        write_instances(tmp_path / "w.zarr", "s", {"nuclei": labels}, _fields_table(3))
    with pytest.raises(CellResDMError, match="non-negative int32"):
        write_instances(tmp_path / "w.zarr", "s", {"nuclei": labels.astype(np.int64) - 1}, _fields_table(2))
    assert not (tmp_path / "w.zarr").exists()


def _store(path: Path, arrays: dict[str, np.ndarray], objects: list[str], n_fields: int) -> Path:
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    for name, data in arrays.items():
        root.create_array(name, data=data)
    root.attrs.update({"source": "s", "objects": objects})
    _fields_table(n_fields).to_parquet(path / "fields.parquet", index=False)
    return path


def test_read_instances_errors_name_the_store(tmp_path):
    a = np.zeros((2, 4, 4), dtype=np.int32)
    cases = [
        (_store(tmp_path / "missing.zarr", {"nuclei": a}, ["nuclei", "cells"], 2), "missing.zarr: array 'cells'"),
        (_store(tmp_path / "shape.zarr", {"nuclei": a, "cells": a[:, :3]}, ["nuclei", "cells"], 2), "differ in"),
        (_store(tmp_path / "rows.zarr", {"nuclei": a}, ["nuclei"], 3), "rows.zarr: 2 label images but 3 rows"),
        (_store(tmp_path / "dtype.zarr", {"nuclei": a.astype(np.uint16)}, ["nuclei"], 2), "int32 array"),
        (_store(tmp_path / "objects.zarr", {"nuclei": a}, [], 2), "objects.zarr: attrs 'objects'"),
        (tmp_path / "absent.zarr", "absent.zarr: instance store is missing"),
    ]
    nofields = _store(tmp_path / "nofields.zarr", {"nuclei": a}, ["nuclei"], 2)
    (nofields / "fields.parquet").unlink()
    cases.append((nofields, "nofields.zarr: fields.parquet is missing"))
    for path, message in cases:
        with pytest.raises(CellResDMError, match=message):
            read_instances(path)


def test_workflow_script(fields, tmp_path, repo_dir):
    bounds = np.stack([np.stack([nb, cb]) for _, nb, cb in fields[:1]])
    store = _predictions(tmp_path / "predictions" / "cellresdm" / "test.zarr", bounds, method="cellresdm")
    out = tmp_path / "segmentation" / "cellresdm_instances.zarr"
    log = tmp_path / "logs" / "segment.log"
    snakemake = SimpleNamespace(
        input=SimpleNamespace(predictions=str(store)),
        output=SimpleNamespace(instances=str(out)),
        params=SimpleNamespace(settings={"threshold": 0.5, "workers": 4}),
        threads=1,
        log=[str(log)],
    )
    runpy.run_path(str(repo_dir / "workflow_scripts" / "segment.py"), init_globals={"snakemake": snakemake})
    arrays, _, attrs = read_instances(out)
    assert attrs["source"] == "cellresdm" and attrs["settings"]["workers"] == 1 and arrays["nuclei"].max() > 0
    assert "cellresdm: 1 fields of 256x256 segmented" in log.read_text()
