"""Predict plates end to end on the CPU: fields per second of a brightfield-only plate (download excluded: BF
input store, whole-field sampling with the demo's n_samples, instances, OME-Zarr, per-cell features, wells), at
the demo size (256 px: the demo's predict plate DEMO0006, regenerated exactly as `make demo` writes it) and at the
gallery's 1080 px, the size on disk of one OME-Zarr field, and the demo plate's nuclei and cells against the
generator's truth (F1 at IoU 0.5).

Run with `make bench`. Figures are printed, not asserted. The model is the demo config's CellResDM: trained when
a results folder holds one (``CELLRESDM_BENCH_RESULTS``, default ``results``: ``models/cellresdm/model.pt``, its
``datasets/train.zarr`` and filter tables), else untrained (same speed; the truth scores are then skipped).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from cellresdm import layout, steps
from cellresdm.config import load_config
from cellresdm.dataset import NormSettings, PlateInput, build_dataset
from cellresdm.methods import build_method
from cellresdm.predict import PredictOutputs, export_with_reference, predict_plate, truth_scores
from cellresdm.stores import open_dataset
from cellresdm.synth import SynthConfig, SynthPlate, write_plate

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("CELLRESDM_BENCH_RESULTS", REPO / "results"))
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


def _download(tmp: Path, plate: str, settings: SynthConfig, channels) -> tuple[Path, Path]:
    truth = tmp / "truth" / plate
    write_plate(tmp / "gallery", truth, SynthPlate(plate, "A549"), settings, channels)
    load_data = tmp / "raw" / plate / "load_data.parquet"
    steps.download(
        plate,
        {**GALLERY, "root": str(tmp / "gallery")},
        str(tmp / "raw" / plate / "images"),
        str(load_data),
        progress=False,
        illum_dir=str(tmp / "raw" / plate / "illum"),
        channels=layout.ALL_CHANNELS if channels == layout.ALL_CHANNELS else layout.BF_CHANNELS,
    )
    return load_data, truth


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_predict")
    config = load_config(REPO / "config.yaml")
    model = tmp / "cellresdm.cellresdm.pt"
    trained = RESULTS / "models" / "cellresdm" / "model.pt"
    dataset = RESULTS / "datasets" / "train.zarr"
    if trained.is_file() and dataset.is_dir():
        plates = open_dataset(dataset, arrays=()).attrs["plates"]
        fields = [RESULTS / "fields" / f"{p}.parquet" for p in plates]
        model_pt, is_trained = trained, True
    else:
        settings = SynthConfig(256, ("B02", "C02"), 1, (), (), 0)
        load_data, truth = _download(tmp, "TRAIN1", settings, layout.ALL_CHANNELS)
        fields = [tmp / "TRAIN1.parquet"]
        steps.filter_plate("TRAIN1", str(load_data), str(fields[0]), str(tmp / "TRAIN1.png"), config["filter"])
        dataset = tmp / "train.zarr"
        plate = PlateInput("TRAIN1", "A549", pd.read_parquet(fields[0]), pd.read_parquet(load_data), truth)
        build_dataset([plate], dataset, NormSettings.from_config(config["dataset"]), progress=False)
        method = build_method("cellresdm", config)
        model_pt, is_trained = tmp / "model.pt", False
        torch.save({"config": {"method": "cellresdm", **method.config()}, "ema": method.network.state_dict()}, model_pt)
    export_with_reference("cellresdm", model_pt, dataset, fields, model, 0.598, config["predict"], config["sample"])
    print(f"[bench] predict: model {'trained ' + str(trained) if is_trained else 'untrained (demo config size)'}")
    return {"tmp": tmp, "config": config, "model": model, "trained": is_trained}


def _predict(setup, plate: str, settings: SynthConfig) -> tuple[dict, PredictOutputs, Path]:
    tmp, config = setup["tmp"], setup["config"]
    load_data, truth = _download(tmp, plate, settings, layout.BF_CHANNELS)
    fields = tmp / f"{plate}.parquet"
    steps.filter_plate(
        plate,
        str(load_data),
        str(fields),
        str(tmp / f"{plate}.png"),
        config["filter"],
        predict=config["predict"],
        models=[str(setup["model"])],
    )
    root = tmp / "predict" / plate
    out = PredictOutputs(
        inputs=str(root / "inputs.zarr"),
        predictions=str(root / "predictions.zarr"),
        instances=str(root / "instances.zarr"),
        omezarr=str(root.with_suffix(".ome.zarr")),
        cells=str(root / "cells.parquet"),
        wells=str(root / "wells.csv"),
        montage=str(root / "montage.png"),
        summary=str(root / "summary.json"),
    )
    summary = predict_plate(
        "cellresdm", plate, "A549", setup["model"], load_data, fields, out, config, 0.598, workers=2
    )
    return summary, out, truth


def _field_bytes(omezarr: str) -> int:
    field = next(p for p in sorted(Path(omezarr).glob("*/*/*")) if p.is_dir())
    return sum(p.stat().st_size for p in field.rglob("*") if p.is_file())


def _report(size: str, summary: dict, out: PredictOutputs) -> None:
    steps_s = ", ".join(f"{k} {v / summary['fields']:.2f}" for k, v in summary["seconds"].items())
    print(
        f"[bench] predict {size}: {summary['fields']} fields, {summary['fields_per_second']:.3f} fields/s end to end "
        f"(n_samples {summary['n_samples']}, {summary['device']}); s/field: {steps_s}"
    )
    print(f"[bench] predict {size}: one OME-Zarr field {_field_bytes(out.omezarr) / 1e6:.2f} MB on disk")


def test_demo_predict_plate_speed_and_counts_against_the_truth(setup):
    demo = setup["config"]["demo"]
    settings = SynthConfig(demo["field_size"], tuple(demo["predict_wells"]), demo["sites"], (), (), demo["seed"])
    summary, out, truth = _predict(setup, "DEMO0006", settings)
    _report("256 px (DEMO0006)", summary, out)
    scores = truth_scores(out.instances, truth)
    pooled = scores[scores["field"] == "all"].set_index("object")
    for obj, row in pooled.iterrows():
        note = "" if setup["trained"] else " (untrained model)"
        print(
            f"[bench] predict DEMO0006 {obj}: {row['n_pred']} predicted vs {row['n_true']} true, "
            f"F1 {row['f1']:.3f} at IoU 0.5{note}"
        )


def test_a_1080_px_field(setup):
    summary, out, _ = _predict(setup, "PRED1080", SynthConfig(1080, ("B02",), 1, (), (), 0))
    _report("1080 px", summary, out)
