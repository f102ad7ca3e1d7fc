"""Predict plates (cellresdm.predict): a brightfield-only plate of the synthetic gallery is downloaded with its BF
planes only, filtered with brightfield QC, painted by an exported model (mean and std of several samples) and
written as an OME-Zarr HCS plate with masks, per-cell features and an OOD-flagged well table; every bad input
fails with one error naming the plate, file or key and leaves no output behind."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cellresdm import layout, steps
from cellresdm.config import validate_config
from cellresdm.dataset import NormSettings, PlateInput, build_dataset
from cellresdm.errors import CellResDMError, ConfigError, GalleryError
from cellresdm.filters import FilterSettings, bf_statistics, filter_fields, robust_reference
from cellresdm.io import write_tiff
from cellresdm.methods import build_method
from cellresdm.predict import PredictOutputs, export_with_reference, predict_plate
from cellresdm.synth import SynthConfig, SynthPlate, write_plate
from tests.tiny_methods import tiny_method_sections

SIZE = 64
GALLERY = {
    "root": None,
    "endpoint_url": None,
    "anon": True,
    "project": "cpg0000-jump-pilot",
    "source": "source_4",
    "batch": "2020_11_04_CPJUMP1",
    "wells": None,
    "sites": None,
    "workers": 2,
    "retries": 0,
    "illumination": True,
}


def _config(**predict) -> dict:
    sections = tiny_method_sections()
    return validate_config(
        {
            "methods": ["cellresdm"],
            "cellresdm": sections["cellresdm"],
            "sample": {"tile": 64, "overlap": 16},
            "features": {"texture_scales": [3]},
            "predict": {"n_samples": 2, "reference_fields": 2, **predict},
        }
    )


def _plate(tmp: Path, plate: str, wells, channels=layout.ALL_CHANNELS, sites: int = 2) -> tuple[Path, Path]:
    """Write a synthetic plate into the gallery folder and download it; returns (load_data, truth folder)."""
    settings = SynthConfig(
        field_size=SIZE, wells=tuple(wells), sites=sites, black_if_wells=(), missing_fields=(), seed=1
    )
    truth = tmp / "truth" / plate
    write_plate(tmp / "gallery", truth, SynthPlate(plate, "A549"), settings, channels)
    load_data = tmp / "raw" / plate / "load_data.parquet"
    need = channels if channels == layout.ALL_CHANNELS else layout.BF_CHANNELS
    steps.download(
        plate,
        {**GALLERY, "root": str(tmp / "gallery")},
        str(tmp / "raw" / plate / "images"),
        str(load_data),
        progress=False,
        illum_dir=str(tmp / "raw" / plate / "illum"),
        channels=need,
    )
    return load_data, truth


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A training plate, its dataset, a tiny CellResDM exported with its QC reference, and a predict plate."""
    tmp = tmp_path_factory.mktemp("predict")
    config = _config()
    train_ld, train_truth = _plate(tmp, "TRAIN1", ["B02", "B03", "C02"], sites=1)
    train_fields = tmp / "fields" / "TRAIN1.parquet"
    steps.filter_plate("TRAIN1", str(train_ld), str(train_fields), str(tmp / "TRAIN1.png"), config["filter"])
    dataset = tmp / "train.zarr"
    build_dataset(
        [PlateInput("TRAIN1", "A549", pd.read_parquet(train_fields), pd.read_parquet(train_ld), train_truth)],
        dataset,
        NormSettings.from_config(config["dataset"]),
        progress=False,
    )
    torch.manual_seed(0)
    method = build_method("cellresdm", config)
    model_pt = tmp / "model.pt"
    torch.save(
        {"config": {"method": "cellresdm", **method.config()}, "step": 3, "ema": method.network.state_dict()}, model_pt
    )
    model = tmp / "cellresdm.cellresdm.pt"
    export_with_reference(
        "cellresdm", model_pt, dataset, [train_fields], model, 0.598, config["predict"], config["sample"]
    )
    load_data, truth = _plate(tmp, "PRED1", ["A01", "B02", "C03", "C04"], channels=layout.BF_CHANNELS, sites=1)
    return {"tmp": tmp, "config": config, "model": model, "load_data": load_data, "truth": truth, "dataset": dataset}


def _filter(env, plate="PRED1", load_data=None, config=None) -> Path:
    out = env["tmp"] / "fields" / f"{plate}.parquet"
    config = config or env["config"]
    steps.filter_plate(
        plate,
        str(load_data or env["load_data"]),
        str(out),
        str(env["tmp"] / f"{plate}.png"),
        config["filter"],
        predict=config["predict"],
        models=[str(env["model"])],
    )
    return out


def _outputs(root: Path) -> PredictOutputs:
    names = {f.name: f.name for f in dataclasses.fields(PredictOutputs)}
    ext = {"inputs": ".zarr", "predictions": ".zarr", "instances": ".zarr", "omezarr": ".ome.zarr"}
    ext |= {"cells": ".parquet", "wells": ".csv", "montage": ".png", "summary": ".json"}
    return PredictOutputs(**{name: str(root / f"{name}{ext[name]}") for name in names})


def _run(env, out: PredictOutputs, model=None, config=None, pixel_size_um=0.598, load_data=None, fields=None):
    return predict_plate(
        "cellresdm",
        "PRED1",
        "A549",
        model or env["model"],
        load_data or env["load_data"],
        fields or _filter(env, load_data=load_data),
        out,
        config or env["config"],
        pixel_size_um,
        workers=2,
    )


def _written(out: PredictOutputs) -> list[str]:
    return [p for p in dataclasses.asdict(out).values() if Path(p).exists()]


def test_a_brightfield_only_plate_is_downloaded_filtered_and_painted(env, tmp_path):
    ld = pd.read_parquet(env["load_data"])
    assert ld[layout.path_column("DNA")].isna().all() and ld[layout.path_column("LowZBF")].notna().all()
    fields = pd.read_parquet(_filter(env))
    assert set(fields.loc[fields["Metadata_Well"] == "A01", "reason"]) == {"edge_well"}
    assert fields.loc[fields["Metadata_Well"] != "A01", "keep"].all()
    assert fields["bf_focus"].notna().all()

    out = _outputs(tmp_path)
    summary = _run(env, out)
    assert summary["fields"] == 3 and summary["fields_dropped"] == 1 and summary["n_samples"] == 2
    assert json.loads(Path(out.summary).read_text())["fields_per_second"] > 0
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(out.omezarr))())
    plate = nodes[0].metadata
    assert plate["metadata"]["plate"]["name"] == "PRED1"
    import zarr

    field = zarr.open_group(out.omezarr + "/B/02/1", mode="r")
    assert field.attrs["cellresdm"]["field"] == "r02c02f01"
    names = [c["label"] for c in field.attrs["ome"]["omero"]["channels"]]
    assert names[:5] == list(layout.IF_CHANNELS) and "DNA_std" in names and "Brightfield" in names
    image = np.asarray(field["s0"])
    assert image.dtype == np.uint16 and image.shape == (len(names), SIZE, SIZE)
    assert set(zarr.open_group(out.omezarr + "/B/02/1/labels", mode="r").attrs["ome"]["labels"]) == {"nuclei", "cells"}

    cells = pd.read_parquet(out.cells)
    wells = pd.read_csv(out.wells)
    assert list(wells["Metadata_Well"]) == ["B02", "C03", "C04"]
    for column in ("Metadata_Plate", "Metadata_Sites", "ood", "ood_reason", "z_bf_focus", "bf_focus"):
        assert column in wells.columns
    assert "z_Cells_Uncertainty_DNA" in wells.columns
    if len(cells):
        assert {"Metadata_Plate", "Metadata_Well", "Metadata_Site", "Cells_AreaShape_Area"} <= set(cells.columns)
        assert (cells["Cells_Uncertainty_DNA"] >= 0).all()
        assert any(c.startswith("Cells_Intensity_MeanIntensity_") for c in cells.columns)
    assert Path(out.montage).stat().st_size > 1000


def test_brightfield_qc_finds_blank_saturated_and_out_of_focus_fields(env, tmp_path):
    from scipy.ndimage import gaussian_filter

    ld = pd.read_parquet(env["load_data"])
    paths = {f: ld.set_index("field").loc[f, layout.path_column("Brightfield")] for f in ld["field"]}
    good = pd.read_parquet(_filter(env))
    reference = robust_reference(good.loc[good["keep"], "bf_focus"])
    fields = sorted(f for f in paths if not f.startswith("r01"))
    blank, saturated, blurred = fields[:3]
    for field, make in (
        (blank, lambda img: np.full_like(img, 3000)),
        (saturated, lambda img: np.where(np.arange(img.size).reshape(img.shape) % 4 == 0, 65535, img)),
        (blurred, lambda img: gaussian_filter(img.astype(np.float32), 6).astype(np.uint16)),
    ):
        from cellresdm.io import read_tiff

        img = read_tiff(paths[field], ndim=2)
        target = tmp_path / Path(paths[field]).name
        write_tiff(target, make(img))
        ld.loc[ld["field"] == field, layout.path_column("Brightfield")] = str(target)
    settings = FilterSettings.from_config(
        env["config"]["filter"], 2, env["config"]["predict"], layout.BF_CHANNELS, reference
    )
    table = filter_fields(ld, settings, progress=False).set_index("field")
    assert table.loc[blank, "reason"] == "blank_bf"
    assert table.loc[saturated, "reason"] == "saturated_bf"
    assert table.loc[blurred, "reason"] == "out_of_focus" and "robust SDs" in table.loc[blurred, "detail"]
    flat = bf_statistics(np.full((32, 32), 100, np.uint16))
    assert flat["bf_focus"] == 0 and flat["bf_contrast"] == 0


def test_a_plate_without_a_plane_the_model_needs_fails_naming_plate_and_plane(env, tmp_path):
    tmp = env["tmp"]
    settings = SynthConfig(field_size=SIZE, wells=("B02",), sites=1, black_if_wells=(), missing_fields=(), seed=1)
    write_plate(tmp / "gallery", tmp / "truth" / "ONEPLANE", SynthPlate("ONEPLANE", "A549"), settings, ("Brightfield",))
    target = tmp_path / "load_data.parquet"
    with pytest.raises(GalleryError, match=r"plate ONEPLANE.*no column for channel HighZBF"):
        steps.download(
            "ONEPLANE",
            {**GALLERY, "root": str(tmp / "gallery")},
            str(tmp_path / "images"),
            str(target),
            progress=False,
            channels=layout.BF_CHANNELS,
        )
    assert not target.exists()
    # a load_data without the plane's files: the model check names the plate and the plane
    ld = pd.read_parquet(env["load_data"])
    ld[layout.path_column("LowZBF")] = None
    lacking = tmp_path / "lacking.parquet"
    ld.to_parquet(lacking)
    out = _outputs(tmp_path / "out")
    fields = _filter(env)
    with pytest.raises(CellResDMError, match=r"takes planes .* plate PRED1 .*lacks LowZBF"):
        _run(env, out, load_data=lacking, fields=fields)
    assert _written(out) == []


def test_a_missing_truncated_foreign_or_other_planes_model_fails_naming_the_file(env, tmp_path):
    model = Path(env["model"])
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(model.read_bytes()[:2000])
    content = torch.load(model, weights_only=False)
    other_method = tmp_path / "other_method.pt"
    torch.save({**content, "method": "unet"}, other_method)
    other_planes = tmp_path / "other_planes.pt"
    torch.save({**content, "inputs": {**content["inputs"], "planes": ["Brightfield", "HighZBF", "DNA"]}}, other_planes)
    fields = _filter(env)
    cases = {
        tmp_path / "absent.pt": "missing",
        truncated: "not a readable exported CellResDM model",
        other_method: "method 'unet', not 'cellresdm'",
        other_planes: "takes planes",
    }
    for path, words in cases.items():
        out = _outputs(tmp_path / path.stem)
        with pytest.raises(CellResDMError, match=words) as caught:
            _run(env, out, model=path, fields=fields)
        assert str(path) in str(caught.value)
        assert _written(out) == []


def test_a_pixel_size_beyond_the_tolerance_errs_or_warns_as_configured(env, tmp_path, caplog):
    fields = _filter(env)
    out = _outputs(tmp_path / "error")
    with pytest.raises(CellResDMError, match=r"trained at 0.598 um/px but plate PRED1 has 0.65 um/px"):
        _run(env, out, pixel_size_um=0.65, fields=fields)
    assert _written(out) == []
    _run(env, _outputs(tmp_path / "within"), pixel_size_um=0.598 * 1.01, fields=fields)
    warn = _config(pixel_size_mismatch="warn")
    with caplog.at_level(logging.WARNING):
        _run(env, _outputs(tmp_path / "warn"), config=warn, pixel_size_um=0.65, fields=fields)
    assert any("0.65 um/px" in r.getMessage() and "warn" in r.getMessage() for r in caplog.records)


def test_config_checks_fail_at_start_naming_the_key(tmp_path):
    plates = [
        {"id": "T1", "cell_line": "A549", "split": "train"},
        {"id": "P1", "cell_line": "A549", "split": "predict"},
    ]
    with pytest.raises(ConfigError, match=r"'predict.methods': unet predicts plate\(s\) P1 but is not trained"):
        validate_config({"plates": plates, "methods": ["cellresdm"], "predict": {"methods": ["unet"]}})
    with pytest.raises(ConfigError, match=r"'predict.model.unet': model file .*absent.pt is missing"):
        validate_config(
            {"plates": plates, "predict": {"methods": ["unet"], "model": {"unet": str(tmp_path / "absent.pt")}}}
        )
    with pytest.raises(ConfigError, match=r"no train plate"):
        validate_config({"plates": plates[1:], "methods": ["cellresdm"]})
    with pytest.raises(ConfigError, match="split"):
        validate_config({"plates": [{"id": "X", "cell_line": "A549", "split": "apply"}]})
    given = tmp_path / "m.pt"
    given.write_bytes(b"x")
    validate_config(
        {"plates": plates[1:], "methods": [], "predict": {"methods": ["unet"], "model": {"unet": str(given)}}}
    )


def test_an_in_focus_model_records_its_plane_and_takes_one_plane_plates(env, tmp_path):
    from cellresdm.export import PlateInputs, export_model, load_exported_model, read_export
    from cellresdm.predict import build_inputs, plate_planes
    from cellresdm.stores import open_dataset

    tmp, config = env["tmp"], env["config"]
    train = open_dataset(env["dataset"], arrays=())
    assert train.attrs["bf_planes"] == list(layout.BF_CHANNELS)
    ld = pd.read_parquet(tmp / "raw" / "TRAIN1" / "load_data.parquet")
    in_focus = tmp_path / "in_focus.zarr"
    fields = pd.read_parquet(tmp / "fields" / "TRAIN1.parquet")
    plate = PlateInput("TRAIN1", "A549", fields, ld, tmp / "truth" / "TRAIN1")
    build_dataset([plate], in_focus, NormSettings.from_config(config["dataset"]), progress=False, bf_planes="in_focus")
    bf = np.asarray(open_dataset(in_focus, arrays=("bf",))["bf"][0])
    assert np.array_equal(bf[1], bf[0]) and np.array_equal(bf[2], bf[0])
    model = export_model("cellresdm", tmp / "model.pt", in_focus, tmp_path / "one.pt", 0.598)
    assert read_export(model)["inputs"]["planes"] == ["Brightfield"]

    # a plate with the in-focus plane only: the three-plane model refuses it, the in-focus model takes it
    one = pd.read_parquet(env["load_data"])
    one[[layout.path_column("HighZBF"), layout.path_column("LowZBF")]] = None
    assert plate_planes(one) == ("Brightfield",)
    expect = PlateInputs("plate PRED1", plate_planes(one), 0.598, "plate")
    with pytest.raises(CellResDMError, match="lacks HighZBF, LowZBF"):
        load_exported_model(env["model"], expect=expect)
    info = load_exported_model(model, expect=expect).info
    kept = _filter(env, load_data=None)
    build_inputs("PRED1", "A549", one, pd.read_parquet(kept), info, tmp_path / "inputs.zarr")
    store = open_dataset(tmp_path / "inputs.zarr", arrays=("bf",))
    bf = np.asarray(store["bf"][0])
    assert store.attrs["bf_planes"] == ["Brightfield"] and np.array_equal(bf[1], bf[0]) and bf.max() > 0
    norm = store.norm().set_index("channel")
    assert norm.loc["LowZBF", "low"] == norm.loc["Brightfield", "low"]
