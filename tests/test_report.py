"""Tests of cellresdm.report: markers, tables and the HTML report on a tiny fake results tree."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import zarr

from cellresdm import layout
from cellresdm.errors import CellResDMError
from cellresdm.metrics import image_quality, quality_ttests
from cellresdm.report import (
    REFERENCE_BETTER,
    REFERENCE_WORSE,
    ReportInputs,
    ReportOutputs,
    fig5_quality,
    filtering_summary,
    lacking_inputs,
    median_index,
    methods_status,
    significance_markers,
    table3_latent,
    throughput_table,
    write_report,
)
from cellresdm.stores import write_instances

N, H = 4, 24
PLATES = ("P1", "P2")


def _fields() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "plate": ["P2"] * N,
            "cell_line": ["U2OS"] * N,
            "well": ["B02", "B02", "B03", "B03"],
            "site": [1, 2, 1, 2],
            "field": ["r02c02f01", "r02c02f02", "r02c03f01", "r02c03f02"],
            "index": range(N),
        }
    )


def _store(path: Path, arrays: dict[str, np.ndarray], attrs: dict | None = None) -> Path:
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    for name, value in arrays.items():
        root.create_array(name, data=value)
    root.attrs.update(attrs or {})
    _fields().to_parquet(path / "fields.parquet", index=False)
    return path


def _dataset(path: Path, rng: np.random.Generator) -> Path:
    return _store(
        path,
        {
            "bf": rng.random((N, 3, H, H)).astype(np.float16),
            "if": rng.random((N, 5, H, H)).astype(np.float16),
            "boundaries": (rng.random((N, 2, H, H)) > 0.8).astype(np.uint8),
            "labels": rng.integers(0, 3, (N, 2, H, H)).astype(np.uint16),
        },
    )


def _prediction(path: Path, truth: np.ndarray, noise: float, rng: np.random.Generator) -> Path:
    pred = np.clip(truth + noise * rng.standard_normal(truth.shape), 0, 1).astype(np.float16)
    return _store(path, {"if": pred, "boundaries": rng.random((N, 2, H, H)).astype(np.float16)})


def _write_json(path: Path, record: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def _sample_record(method: str, seconds: float, **extra) -> dict:
    return {
        "method": method,
        "image_size": [H, H],
        "seconds_per_image": seconds,
        "images_per_second": 1 / seconds,
        "steps": 15,
        "device": "cpu (test)",
        "batch": 2,
        "precision": "fp32",
        **extra,
    }


def _instances(path: Path, seconds: float, **attrs) -> Path:
    arrays = {"nuclei": np.zeros((N, H, H), np.int32)}
    return write_instances(path, path.name, arrays, _fields(), {"seconds_per_field": seconds, **attrs})


def _gt_index(path: Path, seconds: list[float]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = path.parent / "r02c02f01_labels.tiff"
    tifffile.imwrite(labels, np.zeros((2, H, H), np.uint16))
    table = pd.DataFrame(
        {"field": [f"f{i}" for i in range(len(seconds))], "labels": str(labels), "n_nuclei": 1, "n_cells": 1}
    )
    table["seconds"] = seconds
    table.to_parquet(path, index=False)
    return path


def _filter_table(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "field": ["a", "b", "c", "d", "e"],
            "keep": [True, True, False, False, False],
            "reason": ["", "", "edge_well", "edge_well", "black_if"],
        }
    ).to_parquet(path, index=False)
    return path


def _ttests(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["other", "channel", "metric", "p", "better"]).assign(reference="cellresdm")


# --------------------------------------------------------------------------------------------- markers


def test_markers_follow_p_and_direction():
    tests = _ttests(
        [
            ("unet", "DNA", "mse", 0.01, "reference"),  # reference significantly better
            ("unet", "RNA", "mse", 0.01, "other"),  # reference significantly worse
            ("unet", "ER", "ssim", 0.049, "other"),
            ("unet", "AGP", "ssim", 0.2, "reference"),  # not significant
            ("unet", "Mito", "psnr", float("nan"), "reference"),  # untestable
            ("bf_copy", "DNA", "ssim", 0.001, "tie"),
            ("bf_copy", "RNA", "ssim", 0.05, "reference"),  # p == alpha is not significant
        ]
    )
    markers = significance_markers(tests)["marker"].tolist()
    assert markers == [REFERENCE_BETTER, REFERENCE_WORSE, REFERENCE_WORSE, "", "", "", ""]


def _quality_of(mse: dict[str, np.ndarray]) -> pd.DataFrame:
    """Image-quality rows with the given per-image MSE on DNA per method (other channels and metrics equal)."""
    rows = []
    for method, values in mse.items():
        for i, value in enumerate(values):
            for channel in layout.IF_CHANNELS:
                v = float(value) if channel == "DNA" else 100.0 + i
                rows.append(
                    {
                        "method": method,
                        "index": i,
                        "channel": channel,
                        "mse": v,
                        "psnr": 30.0,
                        "ssim": 0.5,
                        "pearson": 0.5,
                    }
                )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("flip", [False, True])
def test_fig5_markers_follow_the_data(tmp_path, flip):
    """Reference clearly better than one method and clearly worse than another on DNA MSE: the 'better' marker
    goes on the first, the 'worse' one on the second, none on a method equal to the reference; swapping the two
    methods' data swaps the markers."""
    noise = np.array([0.3, -0.2, 0.1, -0.4, 0.2, 0.0, -0.1, 0.3])
    reference = 100.0 + noise
    worse, better = 200.0 + noise[::-1], 20.0 + noise[::-1]  # MSE: lower is better
    unet, palette = (better, worse) if flip else (worse, better)
    quality = _quality_of({"cellresdm": reference, "unet": unet, "palette": palette, "spade": reference.copy()})
    markers = significance_markers(quality_ttests(quality, reference="cellresdm"))
    dna = markers[(markers["channel"] == "DNA") & (markers["metric"] == "mse")].set_index("other")["marker"]
    expected = {"unet": REFERENCE_BETTER, "palette": REFERENCE_WORSE, "spade": ""}
    if flip:
        expected.update(unet=REFERENCE_WORSE, palette=REFERENCE_BETTER)
    assert dna.to_dict() == expected
    drawn = fig5_quality(quality, quality_ttests(quality, reference="cellresdm"), tmp_path / "fig5.png")
    got = {(r.other, r.channel, r.metric): r.marker for r in drawn.itertuples()}
    assert got == {(m, "DNA", "mse"): marker for m, marker in expected.items() if marker}


def test_markers_need_their_columns():
    with pytest.raises(CellResDMError, match="better"):
        significance_markers(pd.DataFrame({"other": [], "channel": [], "metric": [], "p": []}))


def test_fig5_draws_markers_of_its_metrics(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for method, shift in (("cellresdm", 0.0), ("unet", 5.0), ("bf_copy", 50.0)):
        for i in range(6):
            for channel in layout.IF_CHANNELS:
                mse = 100 + shift + rng.random()
                rows.append({"method": method, "index": i, "channel": channel, "mse": mse, "psnr": 30 - shift})
                rows[-1].update(ssim=0.8 - shift / 100, pearson=0.5)
    quality = pd.DataFrame(rows)
    tests = _ttests(
        [
            ("unet", "DNA", "mse", 0.01, "reference"),
            ("unet", "DNA", "pearson", 0.01, "reference"),  # not drawn: Fig. 5 has no Pearson panel
            ("bf_copy", "RNA", "ssim", 0.01, "other"),
            ("bf_copy", "ER", "ssim", 0.3, "other"),
        ]
    )
    drawn = fig5_quality(quality, tests, tmp_path / "fig5.png")
    assert (tmp_path / "fig5.png").stat().st_size > 0
    got = {(r.other, r.channel, r.metric, r.marker) for r in drawn.itertuples()}
    assert got == {("unet", "DNA", "mse", REFERENCE_BETTER), ("bf_copy", "RNA", "ssim", REFERENCE_WORSE)}


def test_median_index_picks_median_reference_ssim():
    quality = pd.DataFrame(
        {
            "method": ["cellresdm"] * 3 + ["unet"] * 3,
            "index": [0, 1, 2] * 2,
            "ssim": [0.9, 0.1, 0.5, 0.0, 0.0, 1.0],
        }
    )
    assert median_index(quality) == 2
    assert median_index(quality, reference="palette") == 0


# --------------------------------------------------------------------------------------------- tables


def test_throughput_table_from_benchmarks_and_attrs(tmp_path):
    samples = {
        "cellresdm": _write_json(tmp_path / "sample_cellresdm.json", _sample_record("cellresdm", 2.0)),
        "palette": _write_json(tmp_path / "sample_palette.json", _sample_record("palette", 20.0, steps=1000)),
    }
    instances = {
        "cellresdm": _instances(tmp_path / "cellresdm_instances.zarr", 0.5),
        "stardist_bf": _instances(tmp_path / "stardist_bf_instances.zarr", 0.25, device="cpu (TensorFlow)"),
    }
    indexes = {"P1": _gt_index(tmp_path / "gt" / "P1" / "index.parquet", [1.0, 3.0])}
    train = tmp_path / "train_cellresdm.tsv"
    train.write_text("s\th:m:s\n100.5\t0:01:40\n")
    table = throughput_table(samples, instances, indexes, {"cellresdm": train})
    by = table.set_index(["step", "source"])
    assert by.loc[("sampling", "palette"), "seconds_vs_reference"] == pytest.approx(10.0)
    assert by.loc[("sampling", "palette"), "steps"] == 1000
    assert by.loc[("sampling", "cellresdm"), "images_per_second"] == pytest.approx(0.5)
    assert by.loc[("sampling", "cellresdm"), "precision"] == "fp32"
    assert by.loc[("segmentation", "stardist_bf"), "seconds_vs_reference"] == pytest.approx(0.5)
    assert by.loc[("segmentation", "stardist_bf"), "device"] == "cpu (TensorFlow)"
    assert by.loc[("segmentation", "cellprofiler"), "seconds_per_image"] == pytest.approx(2.0)
    assert by.loc[("segmentation", "cellprofiler"), "seconds_vs_reference"] == pytest.approx(4.0)
    assert by.loc[("segmentation", "cellprofiler"), "image_size"] == f"{H}x{H}"
    assert by.loc[("training", "cellresdm"), "seconds_total"] == pytest.approx(100.5)
    assert "index.parquet" in by.loc[("segmentation", "cellprofiler"), "note"]


def test_throughput_table_names_bad_file(tmp_path):
    bad = _write_json(tmp_path / "sample_unet.json", {"method": "unet"})
    with pytest.raises(CellResDMError, match="sample_unet.json.*seconds_per_image"):
        throughput_table({"unet": bad})


def test_table3_with_and_without_latent(tmp_path):
    quality = pd.DataFrame({"method": ["cellresdm", "cellresdm", "bf_copy"], "mse": [10.0, 20.0, 99.0]})
    samples = {"cellresdm": _write_json(tmp_path / "s.json", _sample_record("cellresdm", 2.0))}
    table = table3_latent(quality, samples)
    assert table["method"].tolist() == ["cellresdm", "cellresdm_latent"]
    assert table.loc[0, "mse"] == pytest.approx(15.0)
    assert table.loc[0, "seconds_per_image"] == pytest.approx(2.0)
    assert np.isnan(table.loc[1, "mse"]) and "not enabled" in table.loc[1, "note"]

    quality = pd.concat([quality, pd.DataFrame({"method": ["cellresdm_latent"], "mse": [30.0]})])
    samples["cellresdm_latent"] = _write_json(tmp_path / "l.json", _sample_record("cellresdm_latent", 0.5))
    table = table3_latent(quality, samples)
    assert table["method"].tolist() == ["cellresdm", "cellresdm_latent"]
    assert table["space"].tolist() == ["pixel", "latent"]
    assert table.loc[1, "mse"] == pytest.approx(30.0)
    assert table.loc[1, "seconds_per_image"] == pytest.approx(0.5)
    assert table["note"].tolist() == ["", ""]


def test_methods_status(tmp_path):
    models = {}
    for method, perceptual in (("cellresdm", None), ("pix2pix", False), ("spade", True)):
        models[method] = tmp_path / method / "model.pt"
        models[method].parent.mkdir()
        section = {} if perceptual is None else {"perceptual": perceptual}
        torch.save({"config": {"method": method, method: section}}, models[method])
    models["unet"] = tmp_path / "unet" / "model.pt"
    predictions = {"cellresdm": _store(tmp_path / "pred.zarr", {"if": np.zeros((N, 5, 2, 2), np.float16)})}
    table = methods_status(
        ["cellresdm", "unet", "pix2pix", "spade"],
        ["cellresdm", "unet", "pix2pix", "spade", "palette"],
        models,
        predictions,
    ).set_index("method")
    assert table.loc["cellresdm", ["enabled", "trained", "sampled"]].tolist() == [True, True, True]
    assert not table.loc["unet", "trained"] and "no model" in table.loc["unet", "note"]
    assert not table.loc["palette", "enabled"] and "not enabled" in table.loc["palette", "note"]
    assert table.loc["pix2pix", "perceptual_loss"].startswith("off")
    assert table.loc["spade", "perceptual_loss"] == "on"
    assert table.loc["cellresdm", "perceptual_loss"] == ""


def test_filtering_summary(tmp_path):
    table = filtering_summary({p: _filter_table(tmp_path / f"{p}.parquet") for p in PLATES}).set_index("plate")
    assert table.loc["P1", ["fields", "kept", "edge_well", "black_if", "missing", "unreadable"]].tolist() == [
        5,
        2,
        2,
        1,
        0,
        0,
    ]
    assert table.loc["all", "edge_well"] == 4


# --------------------------------------------------------------------------------------------- report


def _results_tree(root: Path) -> ReportInputs:
    """A complete tiny results tree with methods cellresdm and unet (pix2pix enabled but not trained)."""
    rng = np.random.default_rng(1)
    dataset = _dataset(root / "datasets" / "test.zarr", rng)
    truth = np.asarray(zarr.open_group(str(dataset), mode="r")["if"], dtype=np.float32)
    for method, noise in (("cellresdm", 0.05), ("unet", 0.3)):
        _prediction(root / "predictions" / method / "test.zarr", truth, noise, rng)
        _write_json(root / "benchmarks" / f"sample_{method}.json", _sample_record(method, 1.0 + noise))
        (root / "benchmarks" / "train").mkdir(parents=True, exist_ok=True)
        (root / "benchmarks" / "train" / f"{method}.tsv").write_text("s\th:m:s\n12.0\t0:00:12\n")
        _instances(root / "segmentation" / f"{method}_instances.zarr", 0.1)
        (root / "models" / method).mkdir(parents=True)
        torch.save({"config": {"method": method, method: {}}}, root / "models" / method / "model.pt")
    quality = image_quality(dataset, {m: root / "predictions" / m / "test.zarr" for m in ("cellresdm", "unet")})
    (root / "metrics").mkdir()
    quality.to_parquet(root / "metrics" / "image_quality.parquet", index=False)
    quality_ttests(quality).to_csv(root / "metrics" / "image_quality_ttests.csv", index=False)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name in ("fig6_segmentation", "fig7_stardist"):
        plt.imsave(root / "segmentation" / f"{name}.png", rng.random((8, 8)))
    pd.DataFrame({"source": ["cellresdm"], "object": ["nuclei"], "f1": [0.7]}).to_csv(
        root / "segmentation" / "segmentation_summary.csv", index=False
    )
    pd.DataFrame({"reference": ["cellresdm"], "other": ["unet"], "p": [0.5]}).to_csv(
        root / "segmentation" / "segmentation_ttests.csv", index=False
    )
    for plate in PLATES:
        _gt_index(root / "groundtruth" / plate / "index.parquet", [0.5, 0.7])
        _filter_table(root / "fields" / f"{plate}.parquet")
    pd.DataFrame({"object": ["nuclei"], "plate": ["all"], "f1": [0.95], "passed": [True]}).to_csv(
        root / "groundtruth" / "qc_summary.csv", index=False
    )
    for k, plate in enumerate(PLATES):
        qc = {"plate": [plate], "channel": ["Brightfield"], "corrected": [True], "n_fields": [3]}
        qc |= {"corner_to_centre_raw": [0.9613 + k / 1e4], "corner_to_centre_corrected": [1.0007]}
        pd.DataFrame(qc).to_csv(root / "fields" / f"{plate}_illumination.csv", index=False)
    (root / "features").mkdir()
    pd.DataFrame({"category": ["Intensity"], "pearson_cellresdm": [0.8123]}).to_csv(
        root / "features" / "table2_features.csv", index=False
    )
    methods = ["cellresdm", "unet"]
    return ReportInputs(
        dataset=root / "datasets" / "test.zarr",
        predictions={m: root / "predictions" / m / "test.zarr" for m in methods},
        quality=root / "metrics" / "image_quality.parquet",
        quality_ttests=root / "metrics" / "image_quality_ttests.csv",
        segmentation_summary=root / "segmentation" / "segmentation_summary.csv",
        segmentation_ttests=root / "segmentation" / "segmentation_ttests.csv",
        fig6=root / "segmentation" / "fig6_segmentation.png",
        fig7=root / "segmentation" / "fig7_stardist.png",
        instances={s: root / "segmentation" / f"{s}_instances.zarr" for s in methods},
        sample_benchmarks={m: root / "benchmarks" / f"sample_{m}.json" for m in methods},
        train_benchmarks={m: root / "benchmarks" / "train" / f"{m}.tsv" for m in methods},
        groundtruth_indexes={p: root / "groundtruth" / p / "index.parquet" for p in PLATES},
        models={m: root / "models" / m / "model.pt" for m in [*methods, "pix2pix"]},
        fields={p: root / "fields" / f"{p}.parquet" for p in PLATES},
        qc_summary=root / "groundtruth" / "qc_summary.csv",
        table2=root / "features" / "table2_features.csv",
        illumination={p: root / "fields" / f"{p}_illumination.csv" for p in PLATES},
    )


#: Output name -> file name in the report folder.
OUTPUT_FILES = {
    "fig4": "fig4_examples.png",
    "fig5": "fig5_quality.png",
    "fig6": "fig6_segmentation.png",
    "fig7": "fig7_stardist.png",
    "table2": "table2_features.csv",
    "table3": "table3_latent.csv",
    "throughput": "throughput.csv",
    "methods": "methods.csv",
    "filtering": "filtering.csv",
    "html": "report.html",
}


def _outputs(out: Path, **unwanted: None) -> ReportOutputs:
    """Every report file in ``out``, except the ones named in ``unwanted``."""
    return ReportOutputs(**{**{k: out / name for k, name in OUTPUT_FILES.items()}, **unwanted})


CONFIG = {
    "source": "demo",
    "reference": "cellresdm",
    "methods": ["cellresdm", "unet", "pix2pix"],
    "plates": [{"id": "P1", "split": "train"}, {"id": "P2", "split": "test"}],
}


def test_write_report_writes_every_file_and_a_self_contained_html(tmp_path):
    inputs = _results_tree(tmp_path / "results")
    out = tmp_path / "reports"
    result = write_report(inputs, _outputs(out), config=CONFIG, all_methods=["cellresdm", "unet", "pix2pix", "palette"])
    assert result["missing"] == []
    assert sorted(p.name for p in result["written"].values()) == sorted(OUTPUT_FILES.values())
    for name in OUTPUT_FILES.values():
        assert (out / name).stat().st_size > 0, name
    page = (out / "report.html").read_text()
    for key in ("fig4", "fig5", "fig6", "fig7"):
        encoded = base64.b64encode((out / OUTPUT_FILES[key]).read_bytes()).decode("ascii")
        assert f"data:image/png;base64,{encoded}" in page, key
    assert (out / "fig6_segmentation.png").read_bytes() == (
        tmp_path / "results/segmentation/fig6_segmentation.png"
    ).read_bytes()
    # every table is in the page (a value unique to each)
    assert "0.8123" in page  # Table 2
    assert "latent variant not enabled" in page  # Table 3
    assert "cellprofiler" in page and "sampling" in page  # throughput
    assert "not enabled in config methods" in page and "pix2pix" in page  # methods
    assert "edge_well" in page and "black_if" in page  # filtering
    assert "0.95" in page  # QC
    assert "Illumination correction" in page and "0.9613" in page and "0.9614" in page  # both plates
    assert page.count("<table") >= 10
    assert 'src="http' not in page and 'href="http' not in page  # opens offline
    methods = pd.read_csv(out / "methods.csv").set_index("method")
    assert methods.loc["pix2pix", "note"].startswith("no model")
    throughput = pd.read_csv(out / "throughput.csv")
    assert set(throughput["step"]) == {"sampling", "segmentation", "training"}
    assert result["fig4_index"] in range(N)


def test_write_report_fails_before_writing_when_a_wanted_output_lacks_an_input(tmp_path):
    inputs = _results_tree(tmp_path / "results")
    gone = [tmp_path / "results" / n for n in ("features/table2_features.csv", "segmentation/fig7_stardist.png")]
    for path in gone:
        path.unlink()
    out = tmp_path / "reports"
    with pytest.raises(CellResDMError) as error:
        write_report(inputs, _outputs(out), config=CONFIG, all_methods=["cellresdm", "unet"])
    message = str(error.value)
    for name, path in zip(("table2", "fig7"), gone, strict=True):
        assert f"{name} ({out / OUTPUT_FILES[name]})" in message and str(path) in message
    assert not out.exists()  # nothing written
    lacking = lacking_inputs(ReportInputs(), ReportOutputs(fig4=out / "f.png", methods=out / "m.csv"))
    assert len(lacking) == 3 and all(line.startswith("fig4") for line in lacking)  # methods needs nothing


def test_write_report_lists_missing_optional_inputs(tmp_path):
    inputs = _results_tree(tmp_path / "results")
    for name in ("features/table2_features.csv", "segmentation/fig7_stardist.png", "groundtruth/qc_summary.csv"):
        (tmp_path / "results" / name).unlink()
    (tmp_path / "results" / "benchmarks" / "train" / "unet.tsv").unlink()
    out = tmp_path / "reports"
    result = write_report(
        inputs, _outputs(out, table2=None, fig7=None), config=CONFIG, all_methods=["cellresdm", "unet"]
    )
    looked_for = [path for _, path in result["missing"]]
    for name in ("table2_features.csv", "fig7_stardist.png", "qc_summary.csv", "unet.tsv"):
        assert sum(p.endswith(name) for p in looked_for) == 1, name
    assert not (out / "table2_features.csv").exists() and not (out / "fig7_stardist.png").exists()
    assert "table2" not in result["written"] and "fig6" in result["written"]
    page = (out / "report.html").read_text()
    assert "table2_features.csv" in page and "fig7_stardist.png" in page and "unet.tsv" in page
    throughput = pd.read_csv(out / "throughput.csv")
    assert throughput.loc[throughput["step"] == "training", "source"].tolist() == ["cellresdm"]
