"""The fast feature backend (cellresdm.features.fast): exact values on a constructed label image, and per-object
agreement with the CellProfiler backend on the same labels of a demo-like synthetic field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from cellresdm import config, layout, synth
from cellresdm.errors import CellResDMError
from cellresdm.features import (
    CATEGORIES,
    COMPARTMENTS,
    METADATA_COLUMNS,
    FeatureSettings,
    extract_features,
    measure_field,
    measure_objects_fast,
    run_cellprofiler_chunk,
)
from cellresdm.features.exports import chunk_features
from cellresdm.features.fast import feature_columns, field_row
from cellresdm.io import read_tiff

SETTINGS = FeatureSettings.from_config(config.section("features"), segmentation=config.section("groundtruth"))

#: Features whose Pearson r across cells between the backends is below 0.99 on the 512 px field of
#: :func:`_field` (README, feature stage, says why): ties of the object centre (RadialDistribution) and of the
#: intensity maximum (Location_MaxIntensity) that CellProfiler breaks with scipy's unstable sort, and neighbours
#: among border objects CellProfiler discarded (its label images lack them).
KNOWN_DIFFERENT = (
    {
        ("Nuclei", f"RadialDistribution_RadialCV_{c}_{b}of4")
        for c, b in [("AGP", 1), ("AGP", 2), ("DNA", 1), ("DNA", 4), ("ER", 1), ("ER", 2), ("ER", 4)]
        + [("Mito", 1), ("Mito", 2), ("Mito", 3)]
    }
    | {
        ("Cells", "Location_MaxIntensity_X_AGP"),
        ("Cells", "Location_MaxIntensity_Y_AGP"),
        ("Cells", "RadialDistribution_RadialCV_ER_1of4"),
        ("Cells", "RadialDistribution_RadialCV_RNA_2of4"),
        ("Cytoplasm", "Location_MaxIntensity_X_AGP"),
        ("Cytoplasm", "Location_MaxIntensity_Y_AGP"),
        ("Cytoplasm", "RadialDistribution_FracAtD_ER_1of4"),
        ("Cytoplasm", "RadialDistribution_MeanFrac_ER_1of4"),
        ("Cytoplasm", "RadialDistribution_RadialCV_DNA_1of4"),
        ("Cytoplasm", "RadialDistribution_RadialCV_ER_1of4"),
        ("Cytoplasm", "RadialDistribution_RadialCV_ER_2of4"),
        ("Cytoplasm", "RadialDistribution_RadialCV_Mito_1of4"),
        ("Cytoplasm", "RadialDistribution_RadialCV_Mito_2of4"),
        ("Cytoplasm", "RadialDistribution_RadialCV_RNA_1of4"),
    }
    | {
        ("Cells", f"Neighbors_{f}_{m}")
        for f in (
            "AngleBetweenNeighbors",
            "FirstClosestDistance",
            "NumberOfNeighbors",
            "PercentTouching",
            "SecondClosestDistance",
        )
        for m in ("5", "Adjacent")
    }
)


# ----------------------------------------------------------------------------------------------- exact values


def _constructed() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Two square nuclei (6x6, 8x8) in square cells; constant intensities per object and channel."""
    nuclei = np.zeros((40, 40), np.int32)
    cells = np.zeros((40, 40), np.int32)
    nuclei[5:11, 5:11] = 1
    nuclei[22:30, 20:28] = 2
    cells[2:14, 2:14] = 1
    cells[18:34, 16:32] = 2
    cyto = np.where(nuclei > 0, 0, cells)
    images = np.zeros((5, 40, 40))
    for c in range(5):
        images[c][cells == 1] = 0.2 + 0.1 * c
        images[c][cells == 2] = 0.4
        images[c][nuclei == 1] = 0.6
        images[c][nuclei == 2] = 0.8 - 0.1 * c
    return {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": cyto}, images


def test_measure_field_exact_values() -> None:
    labels, images = _constructed()
    field = measure_field(labels, images, SETTINGS)
    nuc, cells = field.objects["Nuclei"], field.objects["Cells"]
    assert nuc["ObjectNumber"].tolist() == [1.0, 2.0]
    np.testing.assert_array_equal(nuc["AreaShape_Area"], [36, 64])
    np.testing.assert_array_equal(cells["AreaShape_Area"], [144, 256])
    np.testing.assert_allclose(nuc["AreaShape_Center_X"], [7.5, 23.5])
    np.testing.assert_allclose(nuc["Location_Center_Y"], [7.5, 25.5])
    np.testing.assert_allclose(nuc["Intensity_IntegratedIntensity_DNA"], [36 * 0.6, 64 * 0.8])
    np.testing.assert_allclose(nuc["Intensity_MeanIntensity_Mito"], [0.6, 0.4])
    # the cell holds its nucleus (0.6) and cytoplasm (0.2 for DNA): 36 and 108 pixels
    np.testing.assert_allclose(cells["Intensity_IntegratedIntensity_DNA"].iloc[0], 36 * 0.6 + 108 * 0.2)
    np.testing.assert_allclose(cells["Intensity_MinIntensity_DNA"].iloc[0], 0.2)
    np.testing.assert_allclose(cells["Intensity_MaxIntensityEdge_DNA"].iloc[0], 0.2)
    np.testing.assert_allclose(cells["Intensity_MedianIntensity_DNA"].iloc[0], 0.2)
    np.testing.assert_allclose(nuc["Intensity_StdIntensity_RNA"], [0.0, 0.0], atol=1e-12)
    # a constant object: one co-occurrence entry
    np.testing.assert_allclose(nuc["Texture_AngularSecondMoment_DNA_3_00_256"], [1.0, 1.0])
    np.testing.assert_allclose(nuc["Texture_Contrast_DNA_3_02_256"], [0.0, 0.0])
    np.testing.assert_allclose(nuc["Texture_Entropy_ER_5_01_256"], [0.0, 0.0])
    # a 6x6 nucleus has no pair 10 px apart: CellProfiler records 0
    assert nuc["Texture_AngularSecondMoment_DNA_10_00_256"].iloc[0] == 0.0
    fracs = nuc[[f"RadialDistribution_FracAtD_DNA_{b}of4" for b in range(1, 5)]].to_numpy()
    np.testing.assert_allclose(fracs.sum(1), [1.0, 1.0])
    assert "Location_Center_Z" not in field.objects["Cytoplasm"].columns
    assert field.image["Intensity_TotalArea_DNA"] == 1600.0
    np.testing.assert_allclose(field.image["Intensity_TotalIntensity_DNA"], images[0].sum())
    np.testing.assert_allclose(field.image["Intensity_MedianIntensity_DNA"], np.median(images[0]))
    assert {f"Granularity_{k}_DNA" for k in range(1, 17)} <= set(field.image)
    assert measure_objects_fast(labels, images, SETTINGS)["Cells"].shape == cells.shape


def test_measure_field_quantised_image_statistics() -> None:
    """uint16-level images take the histogram path for quantiles: equal to numpy's."""
    rng = np.random.default_rng(0)
    labels, _ = _constructed()
    images = rng.integers(0, 65536, (5, 40, 40)) / 65535.0
    image = measure_field(labels, images, SETTINGS).image
    v = images[1].ravel()
    med = np.median(v)
    np.testing.assert_allclose(image["Intensity_MedianIntensity_RNA"], med)
    np.testing.assert_allclose(image["Intensity_MADIntensity_RNA"], np.median(np.abs(v - med)))
    np.testing.assert_allclose(
        [image["Intensity_LowerQuartileIntensity_RNA"], image["Intensity_UpperQuartileIntensity_RNA"]],
        np.percentile(v, [25, 75]),
    )


def test_measure_field_bad_input() -> None:
    labels, images = _constructed()
    with pytest.raises(CellResDMError, match=r"images must be \(5, H, W\)"):
        measure_field(labels, images[:3], SETTINGS)
    with pytest.raises(CellResDMError, match="no label image"):
        measure_field({"Nuclei": labels["Nuclei"]}, images, SETTINGS)
    with pytest.raises(CellResDMError, match="Cells labels"):
        measure_field({**labels, "Cells": labels["Cells"][:10]}, images, SETTINGS)


# ----------------------------------------------------------------------------------------------- CellProfiler


def _field(size: int = 512) -> np.ndarray:
    """(5, size, size) float32: a synthetic U2OS field percentile-normalised like the dataset (float16 values)."""
    channels, _ = synth.make_field("U2OS", size, np.random.default_rng(1), synth.Treatment())
    imgs = np.stack([channels[c].astype(np.float32) for c in layout.IF_CHANNELS])
    lo = np.percentile(imgs, 0.5, axis=(1, 2), keepdims=True)
    hi = np.percentile(imgs, 99.5, axis=(1, 2), keepdims=True)
    return np.clip((imgs - lo) / (hi - lo), 0, 1).astype(np.float16).astype(np.float32)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.std() == 0 and b.std() == 0:
        return 1.0 if np.allclose(a, b) else float("nan")
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")


@pytest.mark.cellprofiler
def test_fast_backend_agrees_with_cellprofiler(tmp_path: Path, cellprofiler: str) -> None:
    """Per feature the Pearson r across cells between the backends (same CellProfiler labels) is >= 0.99 for
    >= 95% of the features; the features below 0.99 are exactly :data:`KNOWN_DIFFERENT`."""
    settings = dataclasses.replace(SETTINGS, backend="cellprofiler")
    out, _ = run_cellprofiler_chunk(_field()[None], ["f"], tmp_path / "work", settings, cellprofiler)
    labels = {o: read_tiff(out / f"f_{o.lower()}.tiff", ndim=2) for o in COMPARTMENTS}
    pics = tmp_path / "work" / "chunk0000" / "images"
    imgs = np.stack([read_tiff(pics / f"f_{c}.tiff", ndim=2) for c in layout.IF_CHANNELS]) / 65535.0
    field = measure_field(labels, imgs, settings)
    rs: dict[tuple[str, str], float] = {}
    for obj in COMPARTMENTS:
        cp = pd.read_csv(out / f"{obj}.csv").set_index("ObjectNumber")
        ours = field.objects[obj].set_index("ObjectNumber")
        assert len(ours) >= 20 and sorted(ours.index) == sorted(cp.index)
        cols = [c for c in cp.columns if c.split("_")[0] in CATEGORIES and "ObjectNumber" not in c]
        assert sorted(cols) == sorted(c for c in ours.columns if "ObjectNumber" not in c), obj
        for col in cols:
            rs[(obj, col)] = _pearson(cp.loc[ours.index, col].to_numpy(float), ours[col].to_numpy(float))
    differ = {k for k, r in rs.items() if not r >= 0.99}
    share = 1 - len(differ) / len(rs)
    print(f"\n[fast vs cellprofiler] {len(rs)} per-object features, {share:.1%} with r >= 0.99; below:")
    for obj, col in sorted(differ):
        print(f"  {obj}_{col}: r = {rs[(obj, col)]:.4f}")
    assert share >= 0.95
    assert differ == KNOWN_DIFFERENT
    # image measurements: the same values (granularity: CellProfiler works in float32)
    image = pd.read_csv(out / "Image.csv").iloc[0]
    for key, value in field.image.items():
        np.testing.assert_allclose(value, float(image[key]), rtol=1e-3, atol=1e-6, err_msg=key)


@pytest.mark.cellprofiler
def test_fast_backend_feature_table(tmp_path: Path, cellprofiler: str) -> None:
    """extract_features with the (default) fast backend writes the CellProfiler backend's columns."""
    assert SETTINGS.backend == "fast"
    imgs = _field(256)[None].astype(np.float16)
    root = zarr.open_group(str(tmp_path / "f.zarr"), mode="w", zarr_format=3)
    root.create_array("if", shape=imgs.shape, chunks=imgs.shape, dtype="float16")[:] = imgs
    pd.DataFrame(
        {"plate": ["P1"], "cell_line": ["U2OS"], "well": ["B02"], "site": [1], "field": ["r02c02f01"], "index": [0]}
    ).to_parquet(tmp_path / "f.zarr" / "fields.parquet")
    table = extract_features(tmp_path / "f.zarr", "m", tmp_path / "m.parquet", SETTINGS, cellprofiler, progress=False)
    assert list(table.columns[: len(METADATA_COLUMNS)]) == list(METADATA_COLUMNS)
    settings = dataclasses.replace(SETTINGS, backend="cellprofiler")
    out, _ = run_cellprofiler_chunk(imgs.astype(np.float32), ["f"], tmp_path / "cp", settings, cellprofiler)
    reference = chunk_features(out, ["f"], settings.aggregate)
    assert sorted(table.columns[len(METADATA_COLUMNS) :]) == sorted(reference.columns)
    row = table.iloc[0]
    assert row["Image_Count_Cells"] == reference["Image_Count_Cells"].iloc[0] > 0
    for col in ("Cells_Intensity_MeanIntensity_DNA", "Nuclei_AreaShape_Area", "Image_Granularity_2_RNA"):
        np.testing.assert_allclose(row[col], reference[col].iloc[0], rtol=1e-3)


def test_measure_field_single_object() -> None:
    """One object per compartment: neighbour features without neighbours (no error)."""
    labels, images = _constructed()
    single = {o: np.where(lab == 1, 1, 0).astype(np.int32) for o, lab in labels.items()}
    cells = measure_field(single, images, SETTINGS).objects["Cells"]
    assert len(cells) == 1 and cells["Neighbors_NumberOfNeighbors_Adjacent"].tolist() == [0.0]
    assert np.isnan(cells["Neighbors_FirstClosestDistance_5"].iloc[0])


def test_a_field_without_objects_has_every_column() -> None:
    """The row of a field has the same columns whatever its objects: the columns of :func:`feature_columns`."""
    labels, images = _constructed()
    counts = {o: 2.0 for o in labels}
    measured = field_row(measure_field(labels, images, SETTINGS), counts, "median")
    assert list(feature_columns(SETTINGS)) == list(measured)
    empty = {o: np.zeros_like(lab) for o, lab in labels.items()}
    row = field_row(measure_field(empty, images, SETTINGS), {o: 0.0 for o in labels}, "median")
    assert set(row) < set(feature_columns(SETTINGS))  # hence fast_chunk reindexes to feature_columns
    assert not any(c.startswith("Nuclei_") for c in row)
