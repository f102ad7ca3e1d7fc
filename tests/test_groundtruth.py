"""Ground truth by CellProfiler (cellresdm.groundtruth): pipeline text, runs on known fields, QC, failures."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi

from cellresdm import config, layout
from cellresdm.cppipe import make_groundtruth_pipeline
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.groundtruth import (
    INDEX_COLUMNS,
    QC_COLUMNS,
    GroundTruthSettings,
    gather_index,
    qc_against_truth,
    qc_summary,
    run_cellprofiler,
)

SIZE = 256
FIELDS = ("r02c03f01", "r02c03f02", "r02c04f01")


def _settings(**overrides) -> GroundTruthSettings:
    """Ground-truth settings: the schema's defaults with ``overrides``."""
    return GroundTruthSettings.from_config(config.section("groundtruth", overrides))


# ----------------------------------------------------------------------------------------------- test fields


def _centres(rng: np.random.Generator) -> np.ndarray:
    """~12 cell centres 20+ px off the border: isolated cells plus touching pairs (distance < 2 radii)."""
    isolated = [(45, 45), (45, 200), (210, 45), (210, 210), (128, 128), (45, 125), (210, 128)]
    pairs = [(128, 40), (128, 78), (128, 178), (128, 216), (90, 128), (166, 128)]  # 38 px apart: touching
    pts = np.array(isolated[:5] + pairs, dtype=float)  # drop isolated ones that would collide with pairs
    return pts + rng.uniform(-2, 2, pts.shape)


def make_test_field(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DNA and RNA (uint16, background ~200) and true labels (2, H, W) of a field with known cells.

    Nuclei are ellipses 24-30 px wide (0.598 um/px); cells are disks of radius 24-27 px cut by the Voronoi
    partition of the centres, so close pairs share a border. RNA is cytoplasm brightest near the nucleus.
    """
    centres = _centres(rng)
    n = len(centres)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    d = np.stack([np.hypot(yy - cy, xx - cx) for cy, cx in centres])
    owner = np.argmin(d, axis=0) + 1
    radius = rng.uniform(24, 27, n)
    cells = np.where(d.min(axis=0) < radius[owner - 1], owner, 0)
    nuclei = np.zeros_like(cells)
    dome = np.zeros((SIZE, SIZE))
    for k, (cy, cx) in enumerate(centres, start=1):
        a, b, t = rng.uniform(12, 15), rng.uniform(11, 13), rng.uniform(0, np.pi)
        u = ((yy - cy) * np.cos(t) + (xx - cx) * np.sin(t)) / a
        v = (-(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)) / b
        r2 = u**2 + v**2
        inside = (r2 < 1) & (cells == k)
        nuclei[inside] = k
        dome[inside] = np.sqrt(1 - r2[inside])
    nuc, cyto = nuclei > 0, (cells > 0) & (nuclei == 0)
    d_nuc = ndi.distance_transform_edt(~nuc)
    dna = 200 + nuc * (3000 + 4000 * dome) * rng.uniform(0.8, 1.2) + rng.normal(0, 30, (SIZE, SIZE))
    rna = 200 + cyto * (500 + 900 * np.exp(-d_nuc / 8)) + nuc * 600 + rng.normal(0, 30, (SIZE, SIZE))
    images = [np.clip(ndi.gaussian_filter(x, 1.0), 0, 65535).astype(np.uint16) for x in (dna, rna)]
    return images[0], images[1], np.stack([nuclei, cells]).astype(np.uint16)


def write_plate(base: Path, fields=FIELDS, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """LZW TIFFs of every channel (BF/IF channels other than DNA/RNA are copies), filter and load_data
    tables as the pipeline writes them, true labels in ``base/truth``."""
    rows, filt = [], []
    truth = base / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    for i, field in enumerate(fields):
        dna, rna, labels = make_test_field(np.random.default_rng([seed, i]))
        row, col, site = int(field[1:3]), int(field[4:6]), int(field[7:9])
        paths = {}
        for ch in layout.ALL_CHANNELS:
            path = base / "images" / layout.image_filename(row, col, site, ch)
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, rna if ch == "RNA" else dna, compression="lzw")
            paths[layout.path_column(ch)] = str(path)
        tifffile.imwrite(truth / f"{field}_labels.tiff", labels, compression="lzw")
        meta = {
            "Metadata_Plate": "BR00000001",
            "Metadata_Well": layout.well_name(row, col),
            "Metadata_Site": site,
            "field": field,
        }
        rows.append({**meta, **paths})
        filt.append({**meta, "keep": True, "reason": ""})
    filt.append(
        {
            "Metadata_Plate": "BR00000001",
            "Metadata_Well": "A01",
            "Metadata_Site": 1,
            "field": "r01c01f01",
            "keep": False,
            "reason": "edge_well",
        }
    )  # dropped: not in load_data, must not be needed
    return pd.DataFrame(filt), pd.DataFrame(rows), truth


# ------------------------------------------------------------------------------------------ no CellProfiler


def test_settings_defaults_and_validation():
    s = _settings()
    assert s.pixel_size_um == 0.598 and s.nuclei_diameter == (10, 75)
    assert s.nuclei_threshold_method == s.cells_threshold_method == "Minimum Cross-Entropy"
    assert s.nuclei_threshold_bounds == (0.014, 1.0) and s.cells_threshold_bounds == (0.005, 0.014)
    assert s.cells_method == "Watershed - Image" and s.declump_method == "Shape"
    assert not s.discard_border_nuclei
    with pytest.raises(ConfigError, match="pixel_size_um"):
        _settings(pixel_size_um=0)
    with pytest.raises(ConfigError, match="cells_threshold_bounds"):
        _settings(cells_threshold_bounds=[0.02, 0.01])  # a cross-key check of the class
    with pytest.raises(ConfigError, match="nuclei_diameter"):
        _settings(nuclei_diameter=[60, 12])
    with pytest.raises(ConfigError, match="nuclei_threshold_method"):
        _settings(nuclei_threshold_method="Magic")
    assert _settings(pixel_size_um=0.3, nuclei_diameter=[12, 60]).nuclei_diameter == (12, 60)
    with pytest.raises(ConfigError, match="lacks groundtruth.nuclei_diameter"):
        GroundTruthSettings.from_config({"pixel_size_um": 0.3, "cellprofiler": "x"})  # not validated


def test_groundtruth_pipeline_scales_sizes():
    ref = make_groundtruth_pipeline(_settings())
    assert "Typical diameter of objects, in pixel units (Min,Max):10,75\n" in ref
    assert "Lower and upper bounds on threshold:0.014,1\n" in ref
    assert "Lower and upper bounds on threshold:0.005,0.014\n" in ref
    assert "Select the method to identify the secondary objects:Watershed - Image" in ref
    assert "Select the input image:OrigRNA" in ref and "Block size:30\n" in ref
    assert "Measure" not in ref and "$" not in ref
    half = make_groundtruth_pipeline(_settings(pixel_size_um=0.299))  # 2x the resolution: sizes double
    assert "Typical diameter of objects, in pixel units (Min,Max):20,150\n" in half
    assert "Size of smoothing filter:14\n" in half and "Threshold smoothing scale:6\n" in half
    assert "Smoothing filter size:100\n" in half
    assert "Lower and upper bounds on threshold:0.014,1\n" in half  # intensities do not scale


def _write_labels(path: Path, nuclei: np.ndarray, cells: np.ndarray) -> None:
    tifffile.imwrite(path, np.stack([nuclei, cells]).astype(np.uint16), compression="lzw")


def test_qc_against_hand_computed(tmp_path):
    true_n = np.zeros((20, 20), np.uint16)
    true_n[0:4, 0:4] = 1  # matched exactly: IoU 1
    true_n[10:14, 10:14] = 2  # prediction covers 4 of 16 px, IoU 0.25 < 0.5: missed
    pred_n = np.zeros_like(true_n)
    pred_n[0:4, 0:4] = 5
    pred_n[10:12, 10:12] = 6
    pred_n[16:19, 0:3] = 7  # extra
    true_c = np.zeros_like(true_n)
    true_c[0:8, 0:8] = 1  # 64 px
    pred_c = np.zeros_like(true_n)
    pred_c[0:8, 0:6] = 3  # 48 px inside: IoU 0.75
    (tmp_path / "truth").mkdir()
    _write_labels(tmp_path / "truth" / "f1_labels.tiff", true_n, true_c)
    _write_labels(tmp_path / "f1_labels.tiff", pred_n, pred_c)
    index = pd.DataFrame(
        {
            "field": ["f1"],
            "labels": [str(tmp_path / "f1_labels.tiff")],
            "n_nuclei": [3],
            "n_cells": [1],
            "seconds": [1.0],
        }
    )
    qc = qc_against_truth(index, tmp_path / "truth", iou=0.5)
    assert list(qc.columns) == QC_COLUMNS and list(qc["object"]) == ["nuclei", "cells"]
    nuc, cel = qc.iloc[0], qc.iloc[1]
    assert (nuc.n_true, nuc.n_pred, nuc.tp, nuc.fp, nuc.fn) == (2, 3, 1, 2, 1)
    assert nuc.precision == pytest.approx(1 / 3) and nuc.recall == pytest.approx(0.5)
    assert nuc.f1 == pytest.approx(0.4) and nuc.mean_true_score == pytest.approx(0.5)
    assert (cel.tp, cel.fp, cel.fn) == (1, 0, 0) and cel.f1 == 1 and cel.mean_true_score == pytest.approx(0.75)
    # A lower IoU threshold accepts the partial nucleus.
    assert qc_against_truth(index, tmp_path / "truth", iou=0.2).iloc[0].tp == 2

    two = pd.concat([qc, qc.assign(field="f2", tp=[3, 2], fp=[0, 1], fn=[1, 0], mean_true_score=[0.7, 0.25])])
    summary = qc_summary(two).set_index("object")
    assert list(summary.index) == ["nuclei", "cells"]
    assert (summary.loc["nuclei", "tp"], summary.loc["nuclei", "fp"], summary.loc["nuclei", "fn"]) == (
        4,
        2,
        2,
    )
    assert summary.loc["nuclei", "precision"] == pytest.approx(4 / 6)
    assert summary.loc["nuclei", "recall"] == pytest.approx(4 / 6)
    assert summary.loc["nuclei", "f1"] == pytest.approx(8 / 12)
    assert summary.loc["nuclei", "mean_true_score"] == pytest.approx(0.6)
    assert summary.loc["cells", "f1"] == pytest.approx(6 / 7)
    assert summary.loc["cells", "n_fields"] == 2


def test_missing_executable_is_a_clear_error(tmp_path):
    fields, load_data, _ = write_plate(tmp_path, fields=FIELDS[:1])
    for exe in (str(tmp_path / "nowhere" / "cellprofiler"), "cellprofiler-that-is-not-installed"):
        with pytest.raises(CellResDMError, match=r"make setup.*envs/cellprofiler.yaml"):
            run_cellprofiler(fields, load_data, tmp_path / "out", _settings(), cellprofiler=exe, progress=False)
    assert not (tmp_path / "out" / "index.parquet").exists()


def test_failing_cellprofiler_reports_its_output(tmp_path):
    """Any CellProfiler failure (here a stand-in executable) raises with its output and keeps the log."""
    fields, load_data, _ = write_plate(tmp_path, fields=FIELDS[:1])
    fake = tmp_path / "cellprofiler"
    fake.write_text("#!/bin/sh\necho 'starting'\necho 'ValueError: something broke in module X' >&2\nexit 3\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.parquet").write_bytes(b"stale")  # an old index must not survive a failed run
    with pytest.raises(CellResDMError, match="status 3") as info:
        run_cellprofiler(fields, load_data, out, _settings(), cellprofiler=str(fake), progress=False)
    assert "something broke in module X" in str(info.value)
    assert not (out / "index.parquet").exists()
    assert not list(out.glob(".cellprofiler-*"))  # temporary outputs removed
    logs = list(out.glob("cellprofiler_chunk*.log"))
    assert logs and "something broke" in logs[0].read_text()


def test_truncated_input_is_rejected_before_cellprofiler(tmp_path):
    fields, load_data, _ = write_plate(tmp_path, fields=FIELDS[:2])
    bad = Path(load_data.loc[1, "path_DNA"])
    bad.write_bytes(bad.read_bytes()[:3000])
    fake = tmp_path / "cellprofiler"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    with pytest.raises(CellResDMError, match=bad.name):
        run_cellprofiler(
            fields,
            load_data,
            tmp_path / "out",
            _settings(),
            cellprofiler=str(fake),
            progress=False,
        )
    assert not (tmp_path / "out" / "index.parquet").exists()


def test_kept_field_absent_from_load_data(tmp_path):
    fields, load_data, _ = write_plate(tmp_path, fields=FIELDS[:2])
    fake = tmp_path / "cellprofiler"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    with pytest.raises(CellResDMError, match="absent from load_data"):
        run_cellprofiler(
            fields,
            load_data.iloc[:1],
            tmp_path / "out",
            _settings(),
            cellprofiler=str(fake),
            progress=False,
        )


# ----------------------------------------------------------------------------------------------- CellProfiler


_CHECK = """
import sys
import cellprofiler_core.preferences as prefs
prefs.set_headless()
prefs.set_default_image_directory(sys.argv[2])
from cellprofiler_core.pipeline import Pipeline
pipeline = Pipeline()
pipeline.load(sys.argv[1])
for module in pipeline.modules():
    module.test_valid(pipeline)  # raises ValidationError on a bad setting value or a missing input
    print(module.module_name)
print("diameter", pipeline.modules()[3].size_range.value)
"""


@pytest.mark.cellprofiler
def test_pipeline_loads_and_validates_in_cellprofiler(tmp_path, cellprofiler):
    settings = _settings(pixel_size_um=0.299, nuclei_threshold_method="Otsu", declump_method="Intensity")
    (tmp_path / "p.cppipe").write_text(make_groundtruth_pipeline(settings))
    pd.DataFrame(
        {
            "Metadata_Plate": ["P"],
            "Metadata_Well": ["B02"],
            "Metadata_Site": [1],
            "Metadata_field": ["r02c02f01"],
            "FileName_OrigDNA": ["a.tiff"],
            "PathName_OrigDNA": ["/x"],
            "FileName_OrigRNA": ["b.tiff"],
            "PathName_OrigRNA": ["/x"],
        }
    ).to_csv(tmp_path / "load_data.csv", index=False)
    cellprofiler_python = Path(cellprofiler).with_name("python")  # the Python of CellProfiler's own venv
    res = subprocess.run(
        [str(cellprofiler_python), "-c", _CHECK, str(tmp_path / "p.cppipe"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    names = res.stdout.split()
    assert names[:5] == [
        "LoadData",
        "CorrectIlluminationCalculate",
        "CorrectIlluminationApply",
        "IdentifyPrimaryObjects",
        "IdentifySecondaryObjects",
    ]
    assert names.count("SaveImages") == 2 and not any(n.startswith("Measure") for n in names)
    assert "diameter (20, 150)" in res.stdout


@pytest.fixture(scope="module")
def cp_run(tmp_path_factory, cellprofiler):
    base = tmp_path_factory.mktemp("gt")
    fields, load_data, truth = write_plate(base)
    out = base / "out"
    index = run_cellprofiler(
        fields,
        load_data,
        out,
        _settings(),
        cellprofiler=cellprofiler,
        workers=2,
        progress=False,
    )
    return {"index": index, "out": out, "truth": truth}


@pytest.mark.cellprofiler
def test_run_cellprofiler_writes_labels_and_index(cp_run):
    index, out, truth = cp_run["index"], cp_run["out"], cp_run["truth"]
    assert list(index.columns) == INDEX_COLUMNS
    assert list(index["field"]) == list(FIELDS)  # kept fields only, in the filter table's order
    stored = pd.read_parquet(out / "index.parquet")
    pd.testing.assert_frame_equal(stored, index)
    assert not list(out.glob(".cellprofiler-*")) and not list(out.glob("*.log"))
    for row in index.itertuples():
        labels = tifffile.imread(row.labels)
        assert Path(row.labels) == out / f"{row.field}_labels.tiff"
        assert labels.shape == (2, SIZE, SIZE) and labels.dtype == np.uint16
        true = tifffile.imread(truth / f"{row.field}_labels.tiff")
        n_true = len(np.unique(true[0])) - 1
        assert row.n_nuclei == len(np.unique(labels[0])) - 1 == n_true
        assert row.n_cells == len(np.unique(labels[1])) - 1 == n_true
        # A cell carries its nucleus' label and contains it.
        nuc = labels[0] > 0
        assert np.all(labels[1][nuc] == labels[0][nuc])
        assert 0 < row.seconds < 60


@pytest.mark.cellprofiler
def test_qc_of_cellprofiler_labels_against_known_truth(cp_run):
    qc = qc_against_truth(cp_run["index"], cp_run["truth"], iou=0.5)
    assert len(qc) == 2 * len(FIELDS)
    summary = qc_summary(qc).set_index("object")
    assert summary.loc["nuclei", "f1"] >= 0.9, summary
    assert summary.loc["cells", "f1"] >= 0.7, summary


@pytest.mark.cellprofiler
def test_cellprofiler_failure_raises_with_its_error(tmp_path, cellprofiler):
    """A TIFF that tifffile decodes but CellProfiler's reader cannot (zstd) makes CellProfiler fail."""
    fields, load_data, _ = write_plate(tmp_path, fields=FIELDS[:2])
    bad = Path(load_data.loc[1, "path_DNA"])
    tifffile.imwrite(bad, tifffile.imread(bad), compression="zstd")
    out = tmp_path / "out"
    with pytest.raises(CellResDMError) as info:
        run_cellprofiler(fields, load_data, out, _settings(), cellprofiler=cellprofiler, progress=False)
    message = str(info.value)
    assert "CellProfiler exited with status" in message and FIELDS[1] in message
    assert bad.name in message  # CellProfiler's own error line names the file
    assert not (out / "index.parquet").exists()
    assert not list(out.glob(".cellprofiler-*"))
    assert list(out.glob("cellprofiler_chunk*.log"))


@pytest.mark.cellprofiler
def test_synth_fields_are_segmented_well(tmp_path, cellprofiler):
    """The demo generator's fields (A549, U2OS) are segmented well enough for the QC minimums."""
    from cellresdm import synth

    rows = []
    (tmp_path / "truth").mkdir()
    for i, line in enumerate(("A549", "U2OS")):
        field = layout.field_id(2, 2 + i, 1)
        images, labels = synth.make_field(line, SIZE, np.random.default_rng([11, i]), synth.Treatment())
        paths = {}
        for ch in layout.ALL_CHANNELS:
            paths[layout.path_column(ch)] = str(tmp_path / f"{field}_{ch}.tiff")
            tifffile.imwrite(paths[layout.path_column(ch)], images[ch], compression="lzw")
        tifffile.imwrite(tmp_path / "truth" / f"{field}_labels.tiff", labels)
        rows.append({"field": field, "keep": True, **paths})
    table = pd.DataFrame(rows)
    index = run_cellprofiler(table, table, tmp_path / "out", _settings(), cellprofiler=cellprofiler, progress=False)
    summary = qc_summary(qc_against_truth(index, tmp_path / "truth")).set_index("object")
    assert summary.loc["nuclei", "f1"] >= 0.9, summary
    assert summary.loc["cells", "f1"] >= 0.7, summary


def test_gather_index_puts_shards_in_the_filter_tables_order(tmp_path):
    fields = pd.DataFrame({"field": ["a", "b", "c", "d"], "keep": [True, False, True, True]})

    def shard(name: str, rows: list[str]) -> Path:
        table = pd.DataFrame(
            {"field": rows, "labels": [f"{f}_labels.tiff" for f in rows], "n_nuclei": 1, "n_cells": 2, "seconds": 0.5}
        )
        table.to_parquet(tmp_path / f"{name}.parquet")
        return tmp_path / f"{name}.parquet"

    shards = [shard("s2", ["d"]), shard("s1", ["c", "a"]), shard("empty", [])]
    index = gather_index(shards, fields, tmp_path / "index.parquet")
    assert index["field"].tolist() == ["a", "c", "d"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "index.parquet"), index)
    with pytest.raises(CellResDMError, match="two ground-truth shards"):
        gather_index([*shards, shard("again", ["a"])], fields, tmp_path / "twice.parquet")
    with pytest.raises(CellResDMError, match=r"does not keep: \['b'\]"):
        gather_index([shard("dropped", ["b"])], fields, tmp_path / "stray.parquet")
    assert not (tmp_path / "twice.parquet").exists() and not (tmp_path / "stray.parquet").exists()
