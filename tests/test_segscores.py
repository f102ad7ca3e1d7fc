"""Segmentation scores: stardist matching per image and pooled, paired t-tests, figures."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy.stats import ttest_rel
from stardist.matching import matching_dataset

from cellresdm.errors import CellResDMError
from cellresdm.segscores import (
    SCORE_COLUMNS,
    SCORE_METRICS,
    TTEST_COLUMNS,
    ScoreOutputs,
    figure_data,
    paired_ttests,
    plot_tau_curves,
    score_source,
    write_scores,
)

H = W = 10
TAUS = (0.1, 0.5, 0.7, 0.8)


def _fields(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "plate": ["P1"] * n,
            "cell_line": ["A549"] * n,
            "well": [f"B{c + 2:02d}" for c in range(n)],
            "row": [2] * n,
            "col": [c + 2 for c in range(n)],
            "site": [1] * n,
            "field": [f"r02c{c + 2:02d}f01" for c in range(n)],
            "index": list(range(n)),
        }
    )


def _truth(path: Path, labels: np.ndarray, fields: pd.DataFrame | None = None) -> Path:
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.create_array("labels", data=labels.astype(np.uint16))
    (fields if fields is not None else _fields(len(labels))).to_parquet(path / "fields.parquet", index=False)
    return path


def _instances(path: Path, source: str, nuclei: np.ndarray, cells=None, fields=None) -> Path:
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.create_array("nuclei", data=nuclei.astype(np.int32))
    objects = ["nuclei"]
    if cells is not None:
        g.create_array("cells", data=cells.astype(np.int32))
        objects.append("cells")
    g.attrs.update({"source": source, "objects": objects})
    (fields if fields is not None else _fields(len(nuclei))).to_parquet(path / "fields.parquet", index=False)
    return path


def _example() -> tuple[np.ndarray, np.ndarray]:
    """Two images. Image 0: true objects 1 (16 px) and 2 (16 px); predictions A (IoU 0.75 with 1),
    B (IoU 12/20 = 0.6 with 2) and C (no overlap). Image 1: one true object predicted exactly (IoU 1)."""
    true = np.zeros((2, 2, H, W), np.uint16)
    pred = np.zeros((2, H, W), np.int32)
    true[0, 0, 0:4, 0:4] = 1
    true[0, 0, 6:10, 6:10] = 2
    pred[0, 0:4, 0:3] = 5  # 12 px inside object 1: IoU 12/16
    pred[0, 6:10, 5:9] = 7  # 12 px overlap with object 2, union 20
    pred[0, 0:2, 6:10] = 9  # false positive
    true[1, 0, 2:5, 2:6] = 3
    pred[1] = true[1, 0]
    true[:, 1] = true[:, 0]  # cells = nuclei: the cells of a perfect prediction score 1
    return true, pred


# Hand computation: per image (tp, fp, fn, summed IoU of matches) at each tau.
_HAND = {
    0.1: [(2, 1, 0, 0.75 + 0.6), (1, 0, 0, 1.0)],
    0.5: [(2, 1, 0, 0.75 + 0.6), (1, 0, 0, 1.0)],
    0.7: [(1, 2, 1, 0.75), (1, 0, 0, 1.0)],
    0.8: [(0, 3, 2, 0.0), (1, 0, 0, 1.0)],
}


def _scores(tp: int, fp: int, fn: int, s: float, n_true: int) -> dict[str, float]:
    return {
        "precision": tp / (tp + fp) if tp else 0.0,
        "recall": tp / (tp + fn) if tp else 0.0,
        "accuracy": tp / (tp + fp + fn) if tp else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "mean_true_score": s / n_true if n_true else 0.0,
        "mean_matched_score": s / tp if tp else 0.0,
        "panoptic_quality": s / (tp + fp / 2 + fn / 2) if tp else 0.0,
    }


@pytest.fixture
def example(tmp_path):
    true, pred = _example()
    truth = _truth(tmp_path / "test.zarr", true)
    inst = _instances(tmp_path / "cellresdm_instances.zarr", "cellresdm", pred, cells=true[:, 1])
    return truth, inst, true, pred


def test_scores_match_hand_computation(example):
    truth, inst, true, pred = example
    table = score_source(truth, inst, "cellresdm", taus=TAUS, progress=False)
    assert list(table.columns) == list(SCORE_COLUMNS)
    assert not table[list(SCORE_METRICS)].isna().any().any()
    assert len(table) == 2 * 2 * len(TAUS) + 2 * len(TAUS)  # images x objects x taus + pooled rows
    nuc = table[(table["object"] == "nuclei") & (table["scope"] == "image")]
    for tau, per_image in _HAND.items():
        rows = nuc[nuc["tau"] == tau].reset_index(drop=True)
        assert list(rows["field"]) == ["r02c02f01", "r02c03f01"]
        for i, (tp, fp, fn, s) in enumerate(per_image):
            n_true = tp + fn
            assert (rows.at[i, "tp"], rows.at[i, "fp"], rows.at[i, "fn"]) == (tp, fp, fn)
            assert (rows.at[i, "n_true"], rows.at[i, "n_pred"]) == (n_true, tp + fp)
            for metric, value in _scores(tp, fp, fn, s, n_true).items():
                assert rows.at[i, metric] == pytest.approx(value, abs=1e-6), (tau, i, metric)
        # Pooled: summed counts and summed IoU over both images.
        tp, fp, fn, s = (sum(v) for v in zip(*per_image, strict=True))
        pooled = table[(table["scope"] == "pooled") & (table["object"] == "nuclei") & (table["tau"] == tau)]
        assert len(pooled) == 1
        assert pooled["plate"].isna().all() and pooled["site"].isna().all()
        assert tuple(pooled[["tp", "fp", "fn", "n_true"]].iloc[0]) == (tp, fp, fn, tp + fn)
        for metric, value in _scores(tp, fp, fn, s, tp + fn).items():
            assert pooled[metric].iloc[0] == pytest.approx(value, abs=1e-6), (tau, metric)
    # The pooled rows are stardist's matching_dataset(by_image=False).
    ref = matching_dataset(list(true[:, 0].astype(np.int32)), list(pred), thresh=TAUS, show_progress=False)
    pooled = table[(table["scope"] == "pooled") & (table["object"] == "nuclei")].reset_index(drop=True)
    for k, m in enumerate(ref):
        for metric in (*SCORE_METRICS, "tp", "fp", "fn", "n_true", "n_pred"):
            assert pooled.at[k, metric] == pytest.approx(getattr(m, metric), abs=1e-6)
    cells = table[table["object"] == "cells"]
    assert (cells["f1"] == 1.0).all() and (cells["mean_true_score"] == 1.0).all()


def test_empty_prediction_scores_zero(tmp_path):
    true, _ = _example()
    truth = _truth(tmp_path / "test.zarr", true)
    inst = _instances(tmp_path / "sd.zarr", "stardist_bf", np.zeros((2, H, W), np.int32))
    table = score_source(truth, inst, "stardist_bf", taus=TAUS, progress=False)
    assert set(table["object"]) == {"nuclei"}  # nuclei only: no cells rows
    assert not table.isna()[list(SCORE_METRICS)].any().any()
    assert (table[list(SCORE_METRICS)] == 0).all().all()
    assert (table["tp"] == 0).all() and (table["n_pred"] == 0).all() and (table["fn"] == table["n_true"]).all()


def test_mismatches_raise_naming_files(tmp_path):
    true, pred = _example()
    truth = _truth(tmp_path / "test.zarr", true)
    shuffled = _fields(2).iloc[::-1].reset_index(drop=True)
    bad = _instances(tmp_path / "bad_fields.zarr", "x", pred, fields=shuffled)
    with pytest.raises(CellResDMError, match="bad_fields.zarr.*test.zarr"):
        score_source(truth, bad, "x", progress=False)
    wrong = _instances(tmp_path / "bad_shape.zarr", "x", pred[:, :8])
    with pytest.raises(CellResDMError, match="bad_shape.zarr.*test.zarr"):
        score_source(truth, wrong, "x", progress=False)
    short = _instances(tmp_path / "short.zarr", "x", pred[:1])
    with pytest.raises(CellResDMError, match="short.zarr"):
        score_source(truth, short, "x", progress=False)
    with pytest.raises(CellResDMError, match="nowhere.zarr"):
        score_source(truth, tmp_path / "nowhere.zarr", "x", progress=False)


def _image_table(source: str, values: dict[str, list[float]], obj: str = "nuclei", tau: float = 0.5):
    n = len(next(iter(values.values())))
    f = _fields(n)
    table = pd.DataFrame({"source": source, "scope": "image", "object": obj, "tau": tau, **f})
    for metric in SCORE_METRICS:
        table[metric] = values.get(metric, values["f1"])
    return table


def test_paired_ttests_against_scipy():
    ref_f1 = [0.9, 0.8, 0.85, 0.95, 0.7]
    oth_f1 = [0.7, 0.75, 0.6, 0.8, 0.72]
    tables = {
        "cellresdm": _image_table("cellresdm", {"f1": ref_f1}),
        "pix2pix": _image_table("pix2pix", {"f1": oth_f1}),
        "same": _image_table("same", {"f1": ref_f1}),
        "one": _image_table("one", {"f1": [0.1]}),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = paired_ttests(tables, reference="cellresdm", tau=0.5)
    assert list(out.columns) == list(TTEST_COLUMNS)
    row = out[(out["other"] == "pix2pix") & (out["metric"] == "f1")].iloc[0]
    expected = ttest_rel(ref_f1, oth_f1)
    assert row["t"] == pytest.approx(expected.statistic) and row["p"] == pytest.approx(expected.pvalue)
    assert row["n"] == 5 and row["better"] == "reference" and row["significant"] == (expected.pvalue < 0.05)
    assert row["mean_difference"] == pytest.approx(np.mean(ref_f1) - np.mean(oth_f1))
    # Swapping the roles flips the sign and the winner, not p.
    swapped = paired_ttests(tables, reference="pix2pix").query("other == 'cellresdm' and metric == 'f1'").iloc[0]
    assert swapped["t"] == pytest.approx(-expected.statistic) and swapped["better"] == "other"
    same = out[out["other"] == "same"]
    assert same["p"].isna().all() and (same["better"] == "tie").all() and not same["significant"].any()
    one = out[out["other"] == "one"]
    assert (one["n"] == 1).all() and one["p"].isna().all()
    with pytest.raises(CellResDMError, match="reference"):
        paired_ttests(tables, reference="absent")


def _outputs(folder: Path, sources: list[str]) -> ScoreOutputs:
    return ScoreOutputs(
        tables={s: folder / f"{s}.parquet" for s in sources},
        ttests=folder / "ttests.csv",
        summary=folder / "summary.csv",
        fig6=folder / "fig6.png",
        fig6_data=folder / "fig6.csv",
        fig7=folder / "fig7.png",
        fig7_data=folder / "fig7.csv",
    )


def test_write_scores_and_figures(example, tmp_path, caplog):
    truth, inst, true, pred = example
    sd = _instances(tmp_path / "stardist_bf_instances.zarr", "stardist_bf", true[:, 0])
    caplog.set_level(logging.INFO, logger="cellresdm")
    outputs = _outputs(tmp_path / "seg", ["cellresdm", "stardist_bf"])
    write_scores(truth, {"cellresdm": inst, "stardist_bf": sd}, outputs, taus=TAUS, progress=False)
    files = [*outputs.tables.values(), *(v for k, v in vars(outputs).items() if k != "tables")]
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == sorted(Path(p).name for p in files)
    for png in (outputs.fig6, outputs.fig7):
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "no scores for pix2pix" in caplog.text and "no scores for stardist_if" in caplog.text
    table = pd.read_parquet(outputs.tables["cellresdm"])
    assert set(table["scope"]) == {"image", "pooled"}
    summary = pd.read_csv(outputs.summary)
    assert list(summary["source"]) == ["cellresdm", "cellresdm", "stardist_bf"]
    assert summary.set_index(["source", "object"]).loc[("stardist_bf", "nuclei"), "f1"] == 1.0
    ttests = pd.read_csv(outputs.ttests)
    assert set(ttests["other"]) == {"stardist_bf"} and set(ttests["object"]) == {"nuclei"}
    fig7 = pd.read_csv(outputs.fig7_data)
    assert list(dict.fromkeys(fig7["source"])) == ["cellresdm", "stardist_bf"] and len(fig7) == 2 * len(TAUS)
    assert fig7.query("source == 'cellresdm' and tau == 0.5")["f1"].iloc[0] == pytest.approx(6 / 7)

    # Without the reference: still scored and plotted, t-test file is its header only.
    outputs = _outputs(tmp_path / "noref", ["stardist_bf"])
    write_scores(truth, {"stardist_bf": sd}, outputs, taus=TAUS, progress=False)
    assert pd.read_csv(outputs.ttests).empty and Path(outputs.fig6).is_file()
    assert "reference 'cellresdm' is not among the sources" in caplog.text
    with pytest.raises(CellResDMError, match="output tables for \\['cellresdm'\\] but instances of"):
        write_scores(truth, {"stardist_bf": sd}, _outputs(tmp_path / "x", ["cellresdm"]), taus=TAUS, progress=False)


def test_plot_without_data(tmp_path):
    data = figure_data({}, ["cellresdm"], ["nuclei"])
    assert data.empty
    out = plot_tau_curves(data, tmp_path / "empty.png", "nothing", objects=["nuclei"], missing=["cellresdm"])
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_workflow_adapter(example, tmp_path, repo_dir):
    import runpy
    from types import SimpleNamespace

    truth, inst, _, _ = example
    outputs = _outputs(tmp_path / "segmentation", ["cellresdm"])
    named = {k: str(v) for k, v in vars(outputs).items() if k != "tables"}
    output = SimpleNamespace(tables=[str(outputs.tables["cellresdm"])], **named)  # Snakemake's named outputs
    snakemake = SimpleNamespace(
        input=SimpleNamespace(dataset=str(truth), instances=[str(inst)]),
        params=SimpleNamespace(sources=["cellresdm"], settings={"taus": TAUS, "ttest_tau": 0.5}, reference="cellresdm"),
        output=output,
        log=[str(tmp_path / "log.txt")],
    )
    runpy.run_path(str(repo_dir / "workflow_scripts" / "segmentation_scores.py"), init_globals={"snakemake": snakemake})
    assert all(Path(p).is_file() for p in [*outputs.tables.values(), *named.values()])
    assert "cellresdm nuclei at tau 0.50" in (tmp_path / "log.txt").read_text()
