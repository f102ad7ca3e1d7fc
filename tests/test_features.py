"""Feature stage (cellresdm.features): Table 2 correlations, column names, the CellProfiler pipeline on tiny
synthetic fields, failures, and agreement of the cellprofiler and cp_measure backends on the same masks."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from cellresdm import config, layout, synth
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.features import (
    CATEGORIES,
    COMPARTMENTS,
    CORRELATION_COLUMNS,
    METADATA_COLUMNS,
    FeatureSettings,
    extract_features,
    feature_category,
    feature_correlation,
    gather_features,
    make_measurement_pipeline,
    measure_objects_cp_measure,
    run_cellprofiler_chunk,
    table2,
    write_table2,
)
from cellresdm.io import read_tiff

SIZE = 128


def _settings(**overrides) -> FeatureSettings:
    """Feature settings: the schema's defaults (features and groundtruth sections) with ``overrides``."""
    return FeatureSettings.from_config(
        config.section("features", overrides), segmentation=config.section("groundtruth")
    )


#: Small fields keep border nuclei (the reference discards them) so that they hold several cells.
SETTINGS = _settings(backend="cellprofiler", segmentation={"discard_border_nuclei": False})


# ----------------------------------------------------------------------------------------------- Table 2


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Real and synthetic tables of 8 images with known per-feature correlations."""
    rng = np.random.default_rng(0)
    n = 8
    meta = {
        "Metadata_Plate": ["P1"] * n,
        "Metadata_Field": [f"r01c01f{i:02d}" for i in range(n)],
        "Metadata_CellLine": ["A549"] * 4 + ["U2OS"] * 4,
    }
    x = rng.normal(size=n)
    y = rng.normal(size=n)
    real = pd.DataFrame(
        {
            **meta,
            "Cells_Intensity_MeanIntensity_DNA": x,  # r = 1 (affine)
            "Nuclei_Intensity_MeanIntensity_RNA": y,  # r = -1
            "Cells_Texture_Contrast_DNA_3_00_256": x,  # constant in synthetic: dropped
            "Image_Count_Cells": np.arange(n, dtype=float),  # r = 1 with one NaN pair dropped
            "Cytoplasm_AreaShape_Area": x,  # r computed below
            "Image_Threshold_FinalThreshold_Nuclei": x,  # not a Table 2 category: ignored
        }
    )
    z = rng.normal(size=n)
    synth_table = pd.DataFrame(
        {
            **meta,
            "Cells_Intensity_MeanIntensity_DNA": 3 * x + 1,
            "Nuclei_Intensity_MeanIntensity_RNA": -2 * y,
            "Cells_Texture_Contrast_DNA_3_00_256": np.full(n, 0.5),
            "Image_Count_Cells": np.r_[np.arange(n - 1, dtype=float), np.nan],
            "Cytoplasm_AreaShape_Area": z,
            "Image_Threshold_FinalThreshold_Nuclei": z,
        }
    ).iloc[::-1]  # row order must not matter: images are matched on plate and field
    return real, synth_table


def test_feature_category() -> None:
    assert feature_category("Cells_Intensity_MeanIntensity_DNA") == "Intensity"
    assert feature_category("Nuclei_AreaShape_Area") == "AreaShape"
    assert feature_category("Image_Count_Cells") == "Count"
    assert feature_category("Cytoplasm_RadialDistribution_FracAtD_DNA_1of4") == "RadialDistribution"
    assert feature_category("Metadata_Plate") is None
    assert feature_category("Image_Threshold_FinalThreshold_Nuclei") is None


def test_feature_correlation_known_values() -> None:
    real, synth_table = _tables()
    corr = feature_correlation(real, {"m1": synth_table, "m2": real}, by=("cell_line", "category"))
    assert list(corr.columns) == list(CORRELATION_COLUMNS)
    allm1 = corr[(corr["source"] == "m1") & (corr["cell_line"] == "all")].set_index("category")
    assert list(allm1.index) == list(CATEGORIES)
    # Intensity: r = 1 and r = -1 -> mean 0 over 2 features
    assert allm1.loc["Intensity", "n_features"] == 2
    assert allm1.loc["Intensity", "r"] == pytest.approx(0.0, abs=1e-12)
    assert allm1.loc["Texture", "n_features"] == 0 and np.isnan(allm1.loc["Texture", "r"])
    assert allm1.loc["Count", "r"] == pytest.approx(1.0)
    expect = np.corrcoef(real["Cytoplasm_AreaShape_Area"], synth_table["Cytoplasm_AreaShape_Area"].iloc[::-1])[0, 1]
    assert allm1.loc["AreaShape", "r"] == pytest.approx(expect, rel=1e-9)
    # a source identical to the real images: every defined feature has r = 1
    allm2 = corr[(corr["source"] == "m2") & (corr["cell_line"] == "all")].set_index("category")
    assert allm2.loc["Texture", "r"] == pytest.approx(1.0) and allm2.loc["Intensity", "n_features"] == 2
    # per cell line: 4 images each, computed within the line
    a549 = corr[(corr["source"] == "m1") & (corr["cell_line"] == "A549")].set_index("category")
    assert a549.loc["Intensity", "r"] == pytest.approx(0.0, abs=1e-12)
    assert set(corr["cell_line"]) == {"all", "A549", "U2OS"}

    t2 = table2(corr)
    assert list(t2.columns) == ["n_features", "m1", "m2"]
    assert t2.loc["Intensity", "n_features"] == 2 and t2.loc["Count", "m1"] == pytest.approx(1.0)


def test_feature_correlation_errors(tmp_path: Path) -> None:
    real, synth_table = _tables()
    with pytest.raises(ConfigError, match="by must be"):
        feature_correlation(real, {"m": synth_table}, by=("well",))
    with pytest.raises(CellResDMError, match="lacks"):
        feature_correlation(real, {"m": synth_table.drop(columns="Metadata_Field")})
    other = synth_table.assign(Metadata_Plate="P9")
    with pytest.raises(CellResDMError, match="no image of m matches"):
        feature_correlation(real, {"m": other})
    with pytest.raises(CellResDMError, match="cannot read feature table"):
        write_table2(tmp_path / "absent.parquet", {"m": tmp_path / "absent.parquet"}, tmp_path / "t.csv")


def test_write_table2(tmp_path: Path) -> None:
    real, synth_table = _tables()
    real.to_parquet(tmp_path / "real.parquet")
    synth_table.to_parquet(tmp_path / "m1.parquet")
    corr = write_table2(
        tmp_path / "real.parquet", {"m1": tmp_path / "m1.parquet"}, tmp_path / "t2.csv", tmp_path / "t2.md"
    )
    assert pd.read_csv(tmp_path / "t2.csv").shape == corr.shape
    text = (tmp_path / "t2.md").read_text()
    assert "cell line: all" in text and "cell line: U2OS" in text and "Intensity" in text


# ----------------------------------------------------------------------------------------------- pipeline


def test_settings_validation_and_config() -> None:
    with pytest.raises(ConfigError, match="features.backend"):
        _settings(backend="matlab")
    with pytest.raises(ConfigError, match="features.aggregate"):
        _settings(aggregate="max")
    with pytest.raises(ConfigError, match="(?s)features.segmentation.*declump_method"):
        _settings(segmentation={"declump_method": "Magic"})
    with pytest.raises(ConfigError, match="lacks features.backend"):
        FeatureSettings.from_config({"texture_scales": [3]})  # not validated
    assert _settings().segmentation.discard_border_nuclei is True
    features = {"backend": "cp_measure", "texture_scales": [3, 5], "segmentation": {"pixel_size_um": 1.196}}
    s = FeatureSettings.from_config(
        config.section("features", features),
        segmentation=config.section("groundtruth", {"discard_border_nuclei": False, "nuclei_diameter": [12, 60]}),
    )
    assert s.backend == "cp_measure" and s.texture_scales == (3, 5)
    assert s.segmentation.discard_border_nuclei is True  # not inherited from ground truth
    assert s.segmentation.nuclei_diameter == (12, 60) and s.segmentation.scale == pytest.approx(0.5)


def test_pipeline_text_scales_sizes() -> None:
    text = make_measurement_pipeline(_settings())
    assert text.count("module_num:") == int(text.split("ModuleCount:")[1].split("\n")[0])
    for module in (
        "IdentifyPrimaryObjects",
        "IdentifySecondaryObjects",
        "IdentifyTertiaryObjects",
        "MeasureColocalization",
        "MeasureGranularity",
        "MeasureObjectIntensity",
        "MeasureObjectNeighbors",
        "MeasureObjectIntensityDistribution",
        "MeasureObjectSizeShape",
        "MeasureTexture",
        "MeasureImageIntensity",
        "ExportToSpreadsheet",
    ):
        assert f"\n{module}:[module_num:" in text
    assert "Select the input image:RNA" in text and "OrigDNA" not in text
    assert "Texture scale to measure:10" in text and "Radius of structuring element:10" in text
    half = make_measurement_pipeline(_settings().at_pixel_size(1.196))
    assert "Texture scale to measure:5\n" in half and "Radius of structuring element:5" in half
    assert "Typical diameter of objects, in pixel units (Min,Max):5,38" in half
    seg_only = make_measurement_pipeline(_settings(), measure=False)
    assert "MeasureTexture" not in seg_only and "ExportToSpreadsheet" in seg_only


# ----------------------------------------------------------------------------------------------- CellProfiler


def _fields() -> np.ndarray:
    """(2, 5, SIZE, SIZE) float16: a synthetic U2OS field (percentile-normalised) and a near-black one."""
    channels, _ = synth.make_field("U2OS", SIZE, np.random.default_rng(3), synth.Treatment())
    imgs = np.stack([channels[c].astype(np.float32) for c in layout.IF_CHANNELS])
    lo = np.percentile(imgs, 0.5, axis=(1, 2), keepdims=True)
    hi = np.percentile(imgs, 99.5, axis=(1, 2), keepdims=True)
    real = np.clip((imgs - lo) / (hi - lo), 0, 1)
    black = np.random.default_rng(4).uniform(0, 0.002, real.shape)
    return np.stack([real, black]).astype(np.float16)


def _write_zarr(path: Path, images: np.ndarray) -> Path:
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("if", shape=images.shape, chunks=(1, *images.shape[1:]), dtype="float16")[:] = images
    n = len(images)
    pd.DataFrame(
        {
            "plate": ["P1"] * n,
            "cell_line": ["U2OS"] * n,
            "well": ["B02"] * n,
            "row": [2] * n,
            "col": [2] * n,
            "site": list(range(1, n + 1)),
            "field": [f"r02c02f{i:02d}" for i in range(1, n + 1)],
            "index": list(range(n)),
        }
    ).to_parquet(path / "fields.parquet")
    return path


@pytest.fixture(scope="module")
def zarr_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_zarr(tmp_path_factory.mktemp("features") / "test.zarr", _fields())


@pytest.fixture(scope="module")
def cp_table(zarr_path: Path, cellprofiler: str) -> pd.DataFrame:
    out = zarr_path.parent / "features" / "real.parquet"
    table = extract_features(zarr_path, "real", out, SETTINGS, cellprofiler=cellprofiler, progress=False)
    assert out.is_file() and pd.read_parquet(out).shape == table.shape
    return table


@pytest.mark.cellprofiler
def test_extract_features_cellprofiler(cp_table: pd.DataFrame) -> None:
    table = cp_table
    assert list(table.columns[: len(METADATA_COLUMNS)]) == list(METADATA_COLUMNS)
    assert table["Metadata_Source"].tolist() == ["real", "real"]
    assert table["Metadata_Field"].tolist() == ["r02c02f01", "r02c02f02"]
    for col in (
        "Cells_Intensity_MeanIntensity_DNA",
        "Nuclei_AreaShape_Area",
        "Cytoplasm_Texture_Contrast_Mito_3_00_256",
        "Cells_Correlation_Correlation_DNA_RNA",
        "Nuclei_Granularity_1_DNA",
        "Cells_RadialDistribution_FracAtD_RNA_1of4",
        "Cells_Neighbors_NumberOfNeighbors_Adjacent",
        "Image_Count_Cells",
        "Image_Intensity_MeanIntensity_ER",
    ):
        assert col in table.columns, col
    categories = {feature_category(c) for c in table.columns} - {None}
    assert categories == set(CATEGORIES)
    assert not any("ObjectNumber" in c for c in table.columns)
    first, black = table.iloc[0], table.iloc[1]
    assert first["Image_Count_Nuclei"] >= 3 and first["Image_Count_Cells"] == first["Image_Count_Nuclei"]
    assert np.isfinite(first["Cells_Intensity_MeanIntensity_DNA"])
    # no cells: counts 0, per-object features NaN, image features still measured
    assert black["Image_Count_Cells"] == 0 and np.isnan(black["Cells_Intensity_MeanIntensity_DNA"])
    assert np.isfinite(black["Image_Intensity_MeanIntensity_DNA"])
    assert (table["Metadata_Seconds"] > 0).all()


def test_cellprofiler_failure_names_image_set(tmp_path: Path) -> None:
    fake = tmp_path / "cellprofiler"
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'Tue Jan  2 10:00:00 2024: Image # 1, module LoadData # 1: CPU_time = 0.01 secs, Wall_time = 0.01 secs'\n"
        "echo 'ValueError: boom in MeasureTexture'\n"
        "exit 3\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    src = _write_zarr(tmp_path / "test.zarr", _fields()[:1])
    with pytest.raises(CellResDMError) as err:
        extract_features(src, "m", tmp_path / "m.parquet", _settings(), cellprofiler=str(fake), progress=False)
    msg = str(err.value)
    assert "status 3" in msg and "P1_r02c02f01" in msg and "ValueError: boom" in msg
    assert not (tmp_path / "m.parquet").exists()
    assert "ValueError: boom" in (tmp_path / "m.cellprofiler_chunk0000.log").read_text()


def test_extract_features_bad_input(tmp_path: Path) -> None:
    with pytest.raises(CellResDMError, match="absent.zarr: image store is missing"):
        extract_features(tmp_path / "absent.zarr", "m", tmp_path / "m.parquet", SETTINGS, progress=False)
    src = _write_zarr(tmp_path / "test.zarr", _fields())
    pd.read_parquet(src / "fields.parquet").iloc[:1].to_parquet(src / "fields.parquet")
    with pytest.raises(CellResDMError, match="test.zarr: dataset holds 2 fields but its table"):
        extract_features(src, "m", tmp_path / "m.parquet", SETTINGS, progress=False)


@pytest.mark.cellprofiler
def test_backends_agree(tmp_path: Path, cellprofiler: str) -> None:
    """Same masks (CellProfiler's) -> cp_measure features equal CellProfiler's to ~1e-6 relative.

    Agree: AreaShape (Zernike, Feret), Intensity, Texture, Granularity (5e-5: CellProfiler works in
    float32 there), Correlation (Pearson, Manders, Overlap, K) and Neighbors. Differ and are excluded:
    Location_MaxIntensity_* (ties between equal maxima broken differently), RadialDistribution (cp_measure
    breaks ties of the object centre in C order, CellProfiler by scipy's maximum_position), Correlation_RWC
    (cp_measure corrects CellProfiler 4.2's rank-weighted colocalization).
    """
    settings = SETTINGS
    images = _fields()[:1].astype(np.float32)
    out, _ = run_cellprofiler_chunk(images, ["f"], tmp_path / "work", settings, cellprofiler)
    labels = {o: read_tiff(out / f"f_{o.lower()}.tiff", ndim=2) for o in COMPARTMENTS}
    pics = tmp_path / "work" / "chunk0000" / "images"
    imgs = np.stack([read_tiff(pics / f"f_{c}.tiff", ndim=2) for c in layout.IF_CHANNELS]) / 65535.0
    ours = measure_objects_cp_measure(labels, imgs, settings)
    checked = set()
    for obj in COMPARTMENTS:
        cp = pd.read_csv(out / f"{obj}.csv").set_index("ObjectNumber")
        cpm = ours[obj].set_index("ObjectNumber")
        assert len(cpm) >= 3 and sorted(cpm.index) == sorted(cp.index)
        common = [
            c
            for c in cpm.columns
            if c in cp.columns
            and not c.startswith(("Location_", "RadialDistribution_"))
            and not c.startswith("Correlation_RWC")
        ]
        for col in common:
            a, b = cp.loc[cpm.index, col].to_numpy(float), cpm[col].to_numpy(float)
            rtol = 5e-5 if col.startswith("Granularity_") else 1e-6
            # atol: values near 0 (correlations of unrelated channels) carry float32 rounding of CellProfiler
            np.testing.assert_allclose(b, a, rtol=rtol, atol=1e-6, err_msg=f"{obj} {col}")
            checked.add(col.split("_", 1)[0])
    assert checked == {"AreaShape", "Intensity", "Texture", "Granularity", "Correlation", "Neighbors"}


@pytest.mark.cellprofiler
def test_cp_measure_backend_matches(zarr_path: Path, cp_table: pd.DataFrame, cellprofiler: str) -> None:
    """The cp_measure backend segments with CellProfiler and gives the same per-image medians."""
    settings = dataclasses.replace(SETTINGS, backend="cp_measure")
    out = zarr_path.parent / "features" / "cp_measure.parquet"
    table = extract_features(zarr_path, "cpm", out, settings, cellprofiler=cellprofiler, progress=False)
    assert list(table.columns[: len(METADATA_COLUMNS)]) == list(METADATA_COLUMNS)
    assert table["Image_Count_Cells"].tolist() == cp_table["Image_Count_Cells"].tolist()
    assert table["Cells_Intensity_MeanIntensity_DNA"].isna().tolist() == [False, True]
    cols = ["Nuclei_AreaShape_Area", "Cells_Intensity_MeanIntensity_DNA", "Cytoplasm_Texture_Contrast_Mito_3_00_256"]
    cols += ["Cells_Correlation_Correlation_DNA_RNA", "Nuclei_Neighbors_NumberOfNeighbors_1"]
    np.testing.assert_allclose(table[cols].to_numpy(float), cp_table[cols].to_numpy(float), rtol=1e-6)


@pytest.mark.cellprofiler
def test_shards_gathered_equal_one_job(zarr_path: Path, cp_table: pd.DataFrame, cellprofiler: str) -> None:
    """Fields measured in separate shard jobs (one of them empty) and gathered give the one-job table."""
    shards = []
    for name, rows in (("second", [1]), ("none", []), ("first", [0])):
        shards.append(zarr_path.parent / "shards" / f"{name}.parquet")
        extract_features(zarr_path, "real", shards[-1], SETTINGS, cellprofiler=cellprofiler, progress=False, rows=rows)
    assert len(pd.read_parquet(shards[1])) == 0
    fields = pd.read_parquet(zarr_path / "fields.parquet")
    gathered = gather_features(shards, fields, zarr_path.parent / "gathered.parquet")
    timing = ["Metadata_Seconds"]
    pd.testing.assert_frame_equal(gathered.drop(columns=timing), cp_table.drop(columns=timing))
    with pytest.raises(CellResDMError, match="do not measure exactly"):
        gather_features(shards[:2], fields, zarr_path.parent / "partial.parquet")
    assert not (zarr_path.parent / "partial.parquet").exists()
