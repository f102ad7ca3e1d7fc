"""Illumination correction (cellresdm.illumination): loading and applying functions, their download from S3 and
from the demo gallery, plates without them, the demo's functions, ground truth and datasets on corrected
images, and the fall-off QC."""

from __future__ import annotations

import dataclasses
import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import s3_fixtures
import zarr
from s3_fixtures import BUCKET, PLATE, PLATE_GAPS, GalleryS3
from test_dataset import make_plate as make_dataset_plate

from cellresdm import layout, synth
from cellresdm.config import validate_config
from cellresdm.dataset import NormSettings, build_dataset
from cellresdm.download import download_plate
from cellresdm.errors import CellResDMError, GalleryError, IlluminationError
from cellresdm.filters import FilterSettings, filter_fields
from cellresdm.groundtruth import GroundTruthSettings, run_cellprofiler
from cellresdm.illumination import (
    PlateIllumination,
    correct,
    falloff_qc,
    load_function,
    plate_illumination,
    region_masks,
    rescale_robust_minimum,
    write_corrected,
)
from cellresdm.io import read_tiff
from cellresdm.layout import ALL_CHANNELS, GalleryLayout
from cellresdm.steps import download as download_step

# the fixtures of s3_fixtures, made visible to pytest in this module
moto_s3, gallery_s3 = s3_fixtures.moto_s3, s3_fixtures.gallery_s3

#: A small demo plate: 3 inner wells x 2 sites of 256 px (every field kept), one edge well.
DEMO = synth.SynthConfig(
    field_size=256, wells=("B02", "B03", "C02", "A01"), sites=2, black_if_wells=(), missing_fields=(), seed=0
)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _save(path: Path, array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array, allow_pickle=True)
    return path


def _gradient(shape=(64, 64), low=1.0, high=2.0) -> np.ndarray:
    """A function rising from ``low`` (left) to ``high`` (right), float32."""
    return np.broadcast_to(np.linspace(low, high, shape[1], dtype=np.float32), shape).copy()


# ----------------------------------------------------------------------------------------------- load / apply


def test_correct_divides_rounds_and_clips():
    image = np.array([[100, 101, 65535], [0, 7, 40000]], dtype=np.uint16)
    function = np.array([[2.0, 2.0, 0.5], [3.0, 1.0, 0.5]], dtype=np.float32)
    out = correct(image, function)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [[50, 50, 65535], [0, 7, 65535]])  # 101/2 = 50.5 rounds to even


def test_rescale_is_cellprofilers_robust_minimum():
    values = np.arange(1, 101, dtype=np.float64).reshape(10, 10)  # 2nd percentile of 1..100: index 2 -> 3
    out = rescale_robust_minimum(values)
    assert out.dtype == np.float32 and out.min() == 1.0
    np.testing.assert_allclose(out, np.maximum(values, 3) / 3, rtol=1e-6)
    with pytest.raises(IlluminationError, match="positive"):
        rescale_robust_minimum(np.zeros((4, 4)))


def test_load_function_errors_name_the_file(tmp_path):
    good = _save(tmp_path / "P_IllumDNA.npy", _gradient())
    assert load_function(good, (64, 64)).dtype == np.float32
    cases = {
        "missing": (tmp_path / "absent_IllumDNA.npy", "missing"),
        "shape": (good, r"shape \(64, 64\) does not fit images of shape \(32, 32\)"),
        "3d": (_save(tmp_path / "three.npy", np.ones((2, 4, 4))), "2-D"),
        "zero": (_save(tmp_path / "zero.npy", np.zeros((4, 4))), "finite and > 0"),
        "nan": (_save(tmp_path / "nan.npy", np.full((4, 4), np.nan)), "finite and > 0"),
        "object": (_save(tmp_path / "object.npy", np.array([{"a": 1}], dtype=object)), "not a readable"),
        "text": (_save(tmp_path / "text.npy", np.array([["a"]])), "numeric"),
    }
    (tmp_path / "garbage.npy").write_bytes(b"not numpy")
    cases["garbage"] = (tmp_path / "garbage.npy", "not a readable")
    for name, (path, message) in cases.items():
        with pytest.raises(IlluminationError, match=message) as info:
            load_function(path, (32, 32) if name == "shape" else None)
        assert str(path) in str(info.value), name


def test_plate_illumination_from_load_data(tmp_path):
    paths = {ch: str(_save(tmp_path / f"P1_Illum{ch}.npy", _gradient())) for ch in ALL_CHANNELS}
    table = pd.DataFrame({"Metadata_Plate": ["P1", "P1"], "field": ["r02c02f01", "r02c02f02"]})
    assert not plate_illumination(table).corrected  # a table written before correction existed
    for ch in ALL_CHANNELS:
        table[layout.illum_column(ch)] = [None, None]
    assert not plate_illumination(table).corrected
    image = np.full((64, 64), 1000, dtype=np.uint16)
    assert plate_illumination(table).apply("DNA", image) is image  # uncorrected: untouched

    for ch in ALL_CHANNELS:
        table[layout.illum_column(ch)] = [paths[ch]] * 2
    illum = plate_illumination(table)
    assert illum.corrected and illum.plate == "P1"
    np.testing.assert_array_equal(illum.apply("ER", image), np.rint(1000 / _gradient()).astype(np.uint16))
    with pytest.raises(IlluminationError, match=r"r02c02f01\.tiff: image of shape \(32, 32\).*P1_IllumER\.npy"):
        illum.apply("ER", image[:32, :32], "r02c02f01.tiff")

    partial = table.assign(**{layout.illum_column("Mito"): [None, None]})
    with pytest.raises(IlluminationError, match="P1_IllumMito.npy"):
        plate_illumination(partial)
    mixed = table.assign(**{layout.illum_column("DNA"): [paths["DNA"], paths["RNA"]]})
    with pytest.raises(IlluminationError, match="several functions"):
        plate_illumination(mixed)
    with pytest.raises(IlluminationError, match=r"no illumination function P1_IllumAGP\.npy"):
        PlateIllumination("P1", {"DNA": paths["DNA"]}).function("AGP")
    Path(paths["RNA"]).unlink()
    with pytest.raises(IlluminationError, match=r"P1_IllumRNA\.npy: illumination function missing"):
        plate_illumination(table).apply("RNA", image)


# ----------------------------------------------------------------------------------------------- download


def _upload_functions(gallery: GalleryS3, plate: str, channels=ALL_CHANNELS, shape=(64, 64)) -> dict[str, bytes]:
    objects = {
        GalleryLayout().illum_key(plate, ch): _npy_bytes(_gradient(shape, 1, 1 + k)) for k, ch in enumerate(channels)
    }
    for key, data in objects.items():
        gallery.s3.client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return objects


def _remove_functions(gallery: GalleryS3, plate: str) -> None:
    for ch in ALL_CHANNELS:
        gallery.s3.client.delete_object(Bucket=BUCKET, Key=GalleryLayout().illum_key(plate, ch))


def _download(plate: str, out: Path, root: str, **kwargs) -> pd.DataFrame:
    return download_plate(
        plate, out / "images", out / "load_data.parquet", root, progress=False, illum_dir=out / "illum", **kwargs
    )


def test_functions_download_from_s3(gallery_s3: GalleryS3, tmp_path: Path, caplog) -> None:
    objects = _upload_functions(gallery_s3, PLATE)
    try:
        table = _download(PLATE, tmp_path, f"s3://{BUCKET}", endpoint_url=gallery_s3.endpoint_url)
        stored = pd.read_parquet(tmp_path / "load_data.parquet")
        for ch in ALL_CHANNELS:
            paths = set(stored[layout.illum_column(ch)])
            assert paths == {str(tmp_path / "illum" / f"{PLATE}_Illum{ch}.npy")}, ch
            assert Path(paths.pop()).read_bytes() == objects[GalleryLayout().illum_key(PLATE, ch)]
        assert plate_illumination(table).corrected
        mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "illum").iterdir()}
        with caplog.at_level(logging.INFO):
            _download(PLATE, tmp_path, f"s3://{BUCKET}", endpoint_url=gallery_s3.endpoint_url)
        assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "illum").iterdir()} == mtimes  # resumed: kept
        assert "(0 fetched)" in caplog.text

        # illumination off: nothing fetched, every illum column None
        off = download_plate(
            PLATE, tmp_path / "off" / "images", tmp_path / "off" / "ld.parquet", f"s3://{BUCKET}",
            endpoint_url=gallery_s3.endpoint_url, progress=False,
        )  # fmt: skip
        assert not plate_illumination(off).corrected and not (tmp_path / "off" / "illum").exists()
    finally:
        _remove_functions(gallery_s3, PLATE)


def test_plate_without_functions_is_logged_and_uncorrected(gallery_s3: GalleryS3, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        table = _download(PLATE_GAPS, tmp_path / "none", f"s3://{BUCKET}", endpoint_url=gallery_s3.endpoint_url)
    assert f"plate {PLATE_GAPS}: no illumination functions in the gallery" in caplog.text
    assert "runs uncorrected" in caplog.text
    assert all(table[layout.illum_column(ch)].isna().all() for ch in ALL_CHANNELS)
    assert not plate_illumination(pd.read_parquet(tmp_path / "none" / "load_data.parquet")).corrected

    caplog.clear()
    _upload_functions(gallery_s3, PLATE_GAPS, channels=ALL_CHANNELS[:-1])  # LowZBF absent
    try:
        with caplog.at_level(logging.WARNING):
            table = _download(PLATE_GAPS, tmp_path / "some", f"s3://{BUCKET}", endpoint_url=gallery_s3.endpoint_url)
        assert (
            "lacks 1 of the 8 illumination functions" in caplog.text and f"{PLATE_GAPS}_IllumLowZBF.npy" in caplog.text
        )
        assert not plate_illumination(table).corrected
    finally:
        _remove_functions(gallery_s3, PLATE_GAPS)


def test_function_of_the_wrong_shape_fails_the_download(gallery_s3: GalleryS3, tmp_path: Path) -> None:
    _upload_functions(gallery_s3, PLATE, shape=(32, 32))
    try:
        with pytest.raises(GalleryError, match=rf"{PLATE}_IllumDNA\.npy.*does not fit images of shape \(64, 64\)"):
            _download(PLATE, tmp_path, f"s3://{BUCKET}", endpoint_url=gallery_s3.endpoint_url)
        assert not (tmp_path / "load_data.parquet").exists()
    finally:
        _remove_functions(gallery_s3, PLATE)


# ----------------------------------------------------------------------------------------------- demo gallery


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """One synthetic plate, downloaded from the local demo gallery with its functions, and filtered."""
    base = tmp_path_factory.mktemp("demo")
    root = base / "gallery"
    synth.write_plate(root, base / "truth", synth.SynthPlate("DEMO0001", "U2OS"), DEMO)
    gallery = {**validate_config({})["gallery"], "root": str(root)}
    table = download_step(
        "DEMO0001", gallery, str(base / "images"), str(base / "ld.parquet"), False, str(base / "illum")
    )
    fields = filter_fields(table, FilterSettings.from_config(validate_config({})["filter"]), progress=False)
    return {"base": base, "root": root, "gallery": gallery, "load_data": table, "fields": fields}


def test_demo_gallery_writes_matching_functions(demo):
    optics = synth.plate_optics("DEMO0001", DEMO)
    for ch in ALL_CHANNELS:
        key = demo["root"] / GalleryLayout().illum_key("DEMO0001", ch)
        function = np.load(key)
        assert function.shape == (256, 256) and function.dtype == np.float32, ch
        assert function.min() == pytest.approx(1.0) and np.isfinite(function).all(), ch
        # brightest where the vignette is brightest, by about the channel's fall-off (less the camera offset)
        vignette = synth._vignette(256, optics.vignette[ch], optics.centre)
        assert np.unravel_index(function.argmax(), function.shape) == np.unravel_index(
            vignette.argmax(), vignette.shape
        )
        assert 1 + 0.1 * optics.vignette[ch] < function.max() < 1 / (1 - 1.4 * optics.vignette[ch]), ch
        # an affine function of the vignette (offset + a * vignette) wherever it is above the robust minimum
        above = function > 1.0001
        assert above.mean() > 0.95 and np.corrcoef(function[above], vignette[above])[0, 1] > 0.9999, ch


def test_demo_download_records_the_functions(demo):
    illum = plate_illumination(pd.read_parquet(demo["base"] / "ld.parquet"))
    assert illum.corrected
    assert {Path(p).name for p in illum.paths.values()} == {f"DEMO0001_Illum{ch}.npy" for ch in ALL_CHANNELS}


def test_demo_without_functions_or_switched_off_runs_uncorrected(demo, tmp_path, caplog):
    off = {**demo["gallery"], "illumination": False}
    with caplog.at_level(logging.INFO):
        table = download_step(
            "DEMO0001", off, str(tmp_path / "i"), str(tmp_path / "ld.parquet"), False, str(tmp_path / "il")
        )
    assert not plate_illumination(table).corrected and "illumination correction off" in caplog.text

    root = tmp_path / "gallery"
    shutil.copytree(demo["root"], root)
    shutil.rmtree(root / GalleryLayout().illum_prefix("DEMO0001"))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        table = download_step(
            "DEMO0001", {**demo["gallery"], "root": str(root)}, str(tmp_path / "i2"), str(tmp_path / "ld2.parquet"),
            False, str(tmp_path / "il2"),
        )  # fmt: skip
    assert "plate DEMO0001: no illumination functions" in caplog.text
    assert not plate_illumination(table).corrected


def test_qc_shows_the_demo_falloff_flattened(demo):
    qc = falloff_qc(demo["load_data"], demo["fields"], plate_illumination(demo["load_data"]))
    assert list(qc["channel"]) == list(ALL_CHANNELS) and qc["corrected"].all() and (qc["n_fields"] == 6).all()
    raw, flat = qc["corner_to_centre_raw"].to_numpy(), qc["corner_to_centre_corrected"].to_numpy()
    # every channel moves towards 1; brightfield, whose content is even, shows the illumination alone
    assert (np.abs(1 - flat) < np.abs(1 - raw)).all(), qc
    bf = qc["channel"].isin(layout.BF_CHANNELS).to_numpy()
    assert (raw[bf] < 0.985).all() and (np.abs(1 - flat[bf]) < 0.005).all(), qc
    assert np.abs(1 - flat[bf]).max() < 0.2 * np.abs(1 - raw[bf]).min()

    uncorrected = falloff_qc(demo["load_data"], demo["fields"], PlateIllumination("DEMO0001"), max_fields=2)
    assert not uncorrected["corrected"].any() and uncorrected["corner_to_centre_corrected"].isna().all()
    assert (uncorrected["n_fields"] == 2).all()
    np.testing.assert_allclose(uncorrected["corner_to_centre_raw"][bf], raw[bf], atol=0.01)


def test_region_masks_are_corners_and_centre():
    corners, centre = region_masks((8, 12))
    assert corners.sum() == centre.sum() == 24 and not (corners & centre).any()
    assert corners[0, 0] and corners[7, 11] and not corners[0, 3] and centre[2:6, 3:9].all()


# ----------------------------------------------------------------------------------------------- stages


def test_groundtruth_gives_cellprofiler_corrected_images(demo, tmp_path):
    """CellProfiler (a stand-in that keeps its input folder) reads corrected DNA and RNA copies."""
    fake = tmp_path / "cellprofiler"
    keep = tmp_path / "seen"
    fake.write_text(f'#!/bin/sh\ncp -r "$PWD" "{keep}"\nexit 3\n')
    fake.chmod(0o755)
    settings = GroundTruthSettings.from_config(validate_config({})["groundtruth"])
    with pytest.raises(CellResDMError, match="status 3"):
        run_cellprofiler(
            demo["fields"], demo["load_data"], tmp_path / "out", settings, cellprofiler=str(fake), progress=False
        )
    given = pd.read_csv(keep / "load_data.csv")
    illum = plate_illumination(demo["load_data"])
    raw_paths = demo["load_data"].set_index("field")
    for ch in ("DNA", "RNA"):
        for field, folder, name in zip(
            given["Metadata_field"], given[layout.pathname_column(ch)], given[layout.filename_column(ch)], strict=True
        ):
            assert Path(folder).name == ch and Path(folder).parent.name == "corrected"
            seen = read_tiff(keep / "corrected" / ch / name, ndim=2)
            raw = read_tiff(raw_paths.loc[field, layout.path_column(ch)], ndim=2)
            np.testing.assert_array_equal(seen, correct(raw, illum.function(ch)))


def test_write_corrected_leaves_an_uncorrected_plate_alone(demo, tmp_path):
    table = demo["load_data"].head(2)
    assert write_corrected(table, PlateIllumination("DEMO0001"), ("DNA",), tmp_path) is table
    assert not any(tmp_path.iterdir())


def test_dataset_holds_corrected_images(tmp_path):
    plate = make_dataset_plate(tmp_path, "P1", sites=2)
    function = _gradient(read_tiff(plate.load_data["path_DNA"].iloc[0], ndim=2).shape, 1.0, 3.0)
    for ch in ALL_CHANNELS:
        path = _save(tmp_path / "illum" / f"P1_Illum{ch}.npy", function)
        plate.load_data[layout.illum_column(ch)] = str(path)
    norm = NormSettings("image", 0.0, 100.0)
    build_dataset([plate], tmp_path / "corr.zarr", norm, progress=False)
    raw = dataclasses.replace(
        plate, load_data=plate.load_data.drop(columns=[layout.illum_column(c) for c in ALL_CHANNELS])
    )
    build_dataset([raw], tmp_path / "raw.zarr", norm, progress=False)
    corr, plain = zarr.open_group(tmp_path / "corr.zarr", mode="r"), zarr.open_group(tmp_path / "raw.zarr", mode="r")
    assert corr.attrs["illumination_corrected"] == ["P1"] and plain.attrs["illumination_corrected"] == []
    bf = read_tiff(plate.load_data["path_Brightfield"].iloc[0], ndim=2)
    expected = correct(bf, function).astype(np.float32)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(np.asarray(corr["bf"][0, 0], dtype=np.float32), expected, atol=1e-3)
    assert not np.allclose(np.asarray(plain["bf"][0, 0], dtype=np.float32), expected, atol=1e-2)
