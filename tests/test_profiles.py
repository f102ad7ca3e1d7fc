"""The profiles stage (cellresdm.profiles): pycytominer well profiles and copairs retrieval on constructed cases,
bad input, the JUMP plate map and the demo's plate map."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellresdm import config as cfg
from cellresdm.errors import CellResDMError
from cellresdm.profiles import (
    ProfileOutputs,
    ProfileSettings,
    aggregate_wells,
    annotate_wells,
    crossmodal_retrieval,
    profile_stage,
    read_platemap,
    read_treatment_metadata,
    replicate_retrieval,
    well_profiles,
)
from cellresdm.profiles.settings import ANNOTATION, CONTROL, PLATE, SOURCE, TREATMENT, WELL

JUMP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cpg0000_index"
SETTINGS = ProfileSettings.from_config({"permutations": 2000})


def _wells(n: int) -> list[str]:
    rows = "BCDEFGHIJKLMNO"
    return [f"{rows[i // 22]}{i % 22 + 2:02d}" for i in range(n)]


def _profiles(groups: dict[str, np.ndarray], plate: str = "P1", source: str = "real") -> pd.DataFrame:
    """Profile table of one plate: one row per well of each group (``""`` = controls); values (n, F)."""
    rows, values = [], []
    wells = iter(_wells(sum(len(v) for v in groups.values())))
    for treatment, vals in groups.items():
        for v in vals:
            rows.append({SOURCE: source, PLATE: plate, WELL: next(wells), TREATMENT: treatment, ANNOTATION: ""})
            values.append(v)
    meta = pd.DataFrame(rows)
    meta[CONTROL] = meta[TREATMENT] == ""
    feats = pd.DataFrame(np.asarray(values), columns=[f"Cells_F_{i}" for i in range(len(values[0]))])
    return pd.concat([meta, feats], axis=1)


def test_map_is_one_for_identical_replicates():
    rng = np.random.default_rng(0)
    groups = {"": rng.normal(size=(12, 20))}
    for name in ("a", "b", "c"):
        groups[name] = np.repeat(rng.normal(size=(1, 20)) * 3, 4, axis=0)
    profiles = _profiles(groups)
    table = replicate_retrieval(profiles, [c for c in profiles if c.startswith("Cells_")], SETTINGS)
    assert list(table["treatment"]) == ["a", "b", "c"]
    assert np.allclose(table["map"], 1.0)
    assert (table["n_profiles"] == 4).all() and table["retrieved"].all()
    # 3 positives among 15: a perfect ranking happens by chance with probability 1 / C(15, 3)
    assert (table["p_value"] < 0.01).all() and (table["corrected_p_value"] >= table["p_value"]).all()
    assert (table["random_map"] < 0.4).all()
    # 2 replicates and 2 controls: a random ranking puts the one positive first one time in three. copairs' rule
    # (null mAPs strictly above) still gives a perfect mAP the smallest p-value; greater_equal counts the ties
    small = _profiles({"": rng.normal(size=(2, 20)), "a": np.repeat(rng.normal(size=(1, 20)) * 3, 2, axis=0)})
    feats = [c for c in small if c.startswith("Cells_")]
    copairs_rule = replicate_retrieval(small, feats, SETTINGS)
    assert copairs_rule["map"].iloc[0] == 1.0 and copairs_rule["p_value"].iloc[0] == 1 / 2001
    ties = ProfileSettings.from_config({"permutations": 2000, "pvalue_ties": "greater_equal"})
    conservative = replicate_retrieval(small, feats, ties)
    assert 0.3 < conservative["p_value"].iloc[0] < 0.37 and not conservative["retrieved"].any()
    assert replicate_retrieval(profiles, [c for c in profiles if c.startswith("Cells_")], ties)["retrieved"].all()


def test_map_is_near_random_when_profiles_are_shuffled():
    rng = np.random.default_rng(1)
    groups = {"": rng.normal(size=(20, 30))}
    for k in range(25):
        groups[f"t{k}"] = rng.normal(size=(1, 30)) * 2 + rng.normal(size=(4, 30)) * 0.3
    profiles = _profiles(groups)
    features = [c for c in profiles if c.startswith("Cells_")]
    ordered = replicate_retrieval(profiles, features, SETTINGS)
    shuffled = profiles.copy()
    shuffled[features] = profiles[features].to_numpy()[rng.permutation(len(profiles))]
    table = replicate_retrieval(shuffled, features, SETTINGS)
    assert ordered["map"].mean() > 0.95
    assert abs(table["map"].mean() - table["random_map"].mean()) < 0.08, table[["map", "random_map"]].mean()
    assert table["retrieved"].mean() <= 0.1


def test_crossmodal_map_is_one_for_a_copy_and_low_for_a_shuffle():
    rng = np.random.default_rng(2)
    groups = {"": rng.normal(size=(8, 15)), "a": rng.normal(size=(8, 15))}
    real = _profiles(groups)
    features = [c for c in real if c.startswith("Cells_")]
    copy = real.assign(**{SOURCE: "copy"})
    table = crossmodal_retrieval(copy, real, features, SETTINGS)
    assert len(table) == 16 and np.allclose(table["map"], 1.0)
    shuffled = copy.copy()
    shuffled[features] = real[features].to_numpy()[rng.permutation(len(real))]
    low = crossmodal_retrieval(shuffled, real, features, SETTINGS)
    assert low["map"].mean() < 0.5 and abs(low["random_map"].mean() - table["random_map"].mean()) < 1e-9


# ----------------------------------------------------------------------------------------------- the stage


def _feature_table(source: str, wells: dict[str, float], rng: np.random.Generator, sites: int = 2) -> pd.DataFrame:
    """Per-image features of plate P1: ``wells`` maps a well to its effect size on the first 10 features."""
    rows = []
    for well, effect in wells.items():
        for site in range(1, sites + 1):
            values = rng.normal(size=30) * 0.2
            values[:10] += effect
            row = {
                "Metadata_Plate": "P1",
                "Metadata_Well": well,
                "Metadata_Site": site,
                "Metadata_Field": f"{well}_{site}",
                "Metadata_CellLine": "U2OS",
                "Metadata_Source": source,
                "Metadata_Seconds": 1.0,
                "Image_Count_Cells": 10.0,  # constant: dropped by the selection
            }
            row.update({f"Cells_Intensity_F{i:02d}": 100 + v for i, v in enumerate(values)})
            rows.append(row)
    return pd.DataFrame(rows)


def _platemap(path: Path, controls: list[str], treatments: dict[str, list[str]]) -> Path:
    rows = [{"well_position": w, "broad_sample": "", "solvent": "DMSO"} for w in controls]
    rows += [{"well_position": w, "broad_sample": t, "solvent": "DMSO"} for t, ws in treatments.items() for w in ws]
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


CONTROLS = ["B02", "B03", "B04", "B05", "B06", "B07"]
TREATED = {"strong": ["C02", "C03", "C04"], "weak": ["D02", "D03", "D04"]}
EFFECTS = {
    **dict.fromkeys(CONTROLS, 0.0),
    **dict.fromkeys(TREATED["strong"], 3.0),
    **dict.fromkeys(TREATED["weak"], 1.0),
}


def _stage_inputs(tmp_path: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    rng = np.random.default_rng(3)
    real = _feature_table("real", EFFECTS, rng)
    good = _feature_table("good", EFFECTS, rng)
    noise = _feature_table("noise", dict.fromkeys(EFFECTS, 0.0), rng)
    features = {}
    for name, table in (("real", real), ("good", good), ("noise", noise)):
        features[name] = tmp_path / f"{name}.parquet"
        table.to_parquet(features[name])
    return features, {"P1": _platemap(tmp_path / "platemap.tsv", CONTROLS, TREATED)}


def _outputs(tmp_path: Path) -> ProfileOutputs:
    names = ("wells", "profiles", "selection", "replicate", "annotation", "crossmodal", "summary", "figure")
    suffix = {"wells": ".parquet", "profiles": ".parquet", "figure": ".png"}
    return ProfileOutputs(**{n: tmp_path / "out" / f"{n}{suffix.get(n, '.csv')}" for n in names})


def test_profile_stage_writes_profiles_and_scores(tmp_path, caplog):
    features, platemaps = _stage_inputs(tmp_path)
    outputs = _outputs(tmp_path)
    with caplog.at_level(logging.INFO, logger="cellresdm"):
        summary = profile_stage(features, platemaps, SETTINGS, outputs)
    assert list(summary["source"]) == ["real", "good", "noise"]
    by = summary.set_index("source")
    assert by.loc["real", "replicate_map"] > 0.9 and by.loc["real", "replicate_retrieved"] == 1.0
    assert by.loc["good", "crossmodal_map"] > by.loc["noise", "crossmodal_map"]
    assert by.loc["noise", "replicate_map"] < by.loc["real", "replicate_map"]
    assert np.isnan(by.loc["real", "crossmodal_map"]) and by.loc["real", "n_treatments"] == 2
    profiles = pd.read_parquet(outputs.profiles)
    assert len(profiles) == 3 * 12 and set(profiles["Metadata_Source"]) == {"real", "good", "noise"}
    controls = profiles[(profiles["Metadata_Source"] == "real") & profiles["Metadata_Control"]]
    assert np.allclose(controls.filter(like="Cells_").median(), 0, atol=1e-9)  # normalised to the controls
    selection = pd.read_csv(outputs.selection, keep_default_na=False).set_index("feature")
    assert selection.loc["Image_Count_Cells", "dropped_by"] == "variance_threshold"
    assert "1 features are constant across all real wells" in caplog.text
    wells = pd.read_parquet(outputs.wells)
    assert (wells["Metadata_Images"] == 2).all() and "Metadata_solvent" in wells.columns
    assert Path(outputs.figure).stat().st_size > 5000
    replicate = pd.read_csv(outputs.replicate)
    assert set(replicate["source"]) == {"real", "good", "noise"} and set(replicate["treatment"]) == {"strong", "weak"}


def test_a_well_missing_from_the_plate_map_is_named_and_dropped(tmp_path, caplog):
    features, _ = _stage_inputs(tmp_path)
    platemaps = {
        "P1": _platemap(tmp_path / "short.tsv", CONTROLS, {"strong": TREATED["strong"], "weak": ["D02", "D03"]})
    }
    with caplog.at_level(logging.WARNING, logger="cellresdm"):
        profile_stage(features, platemaps, SETTINGS, _outputs(tmp_path))
    assert "plate P1: wells with images but not in the plate map, dropped: D04" in caplog.text
    profiles = pd.read_parquet(_outputs(tmp_path).profiles)
    assert "D04" not in set(profiles["Metadata_Well"]) and len(profiles) == 3 * 11


def test_a_plate_map_without_controls_is_an_error(tmp_path):
    path = _platemap(tmp_path / "nocontrols.tsv", [], TREATED)
    with pytest.raises(CellResDMError, match=r"plate P1 has no negative-control well: no row with broad_sample = ''"):
        read_platemap(path, "P1", SETTINGS)
    other = ProfileSettings.from_config({"control_value": "DMSO", "treatment_column": "solvent"})
    with pytest.raises(CellResDMError, match=r"of plate P7 lacks the column\(s\) \['well'\]"):
        read_platemap(path, "P7", ProfileSettings.from_config({"platemap_well_column": "well"}))
    assert len(read_platemap(path, "P1", other)) == 6  # every well's solvent is DMSO


def test_controls_without_images_are_an_error(tmp_path):
    features, _ = _stage_inputs(tmp_path)
    platemaps = {"P1": _platemap(tmp_path / "far.tsv", ["H10"], TREATED)}
    with pytest.raises(CellResDMError, match=r"plate P1: no negative-control well with images \(treatment ''"):
        profile_stage(features, platemaps, SETTINGS, _outputs(tmp_path))


def test_profiles_without_a_similarity_are_left_out(caplog):
    rng = np.random.default_rng(6)
    groups = {"": rng.normal(size=(6, 10)), "a": rng.normal(size=(3, 10)) + 3}
    profiles = _profiles(groups)
    features = [c for c in profiles if c.startswith("Cells_")]
    profiles.loc[profiles.index[-1], features] = 0.0  # e.g. every selected feature missing in that well
    with caplog.at_level(logging.WARNING, logger="cellresdm"):
        table = replicate_retrieval(profiles, features, SETTINGS)
    assert "1 of 9 profiles have no cosine similarity" in caplog.text
    assert table["n_profiles"].tolist() == [2]


def test_selection_is_fitted_on_real_and_applied_unchanged(tmp_path):
    rng = np.random.default_rng(4)
    real = _feature_table("real", EFFECTS, rng)
    other = _feature_table("other", EFFECTS, rng)
    other["Image_Count_Cells"] = rng.normal(size=len(other))  # varies in this source only: still dropped
    maps = {"P1": read_platemap(_platemap(tmp_path / "m.tsv", CONTROLS, TREATED), "P1", SETTINGS)}
    _, profiles, selection = well_profiles({"real": real, "other": other}, maps, SETTINGS)
    kept = selection.loc[selection["kept"], "feature"].tolist()
    for source, group in profiles.groupby("Metadata_Source"):
        assert [c for c in group.columns if c.startswith(("Image_", "Cells_"))] == kept, source
    assert "Image_Count_Cells" not in kept and np.isfinite(profiles[kept].to_numpy()).all()


# ----------------------------------------------------------------------------------------------- plate maps


@pytest.mark.skipif(not (JUMP / "JUMP-Target-1_compound_platemap.tsv").exists(), reason="shared cpg0000 index absent")
def test_the_jump_target_plate_map_and_metadata_annotate_wells():
    settings = ProfileSettings.from_config({"treatment_metadata": str(JUMP / "JUMP-Target-1_compound_metadata.tsv")})
    platemap = read_platemap(JUMP / "JUMP-Target-1_compound_platemap.tsv", "BR00116994", settings)
    assert len(platemap) == 384 and (platemap["broad_sample"] == "").sum() == 64
    metadata = read_treatment_metadata(settings.treatment_metadata, settings)
    rng = np.random.default_rng(5)
    wells = ["A01", "A02", "A03", "B07"]
    features = _feature_table("real", dict.fromkeys(wells, 0.0), rng).assign(Metadata_Plate="BR00116994")
    annotated = annotate_wells(aggregate_wells(features, "real"), {"BR00116994": platemap}, settings, metadata)
    by_well = annotated.set_index("Metadata_Well")
    assert by_well.loc["A01", "Metadata_Treatment"] == "BRD-A86665761-001-01-1"
    assert (
        by_well.loc["A01", ANNOTATION] == "CACNB4"
        and by_well.loc["A01", "Metadata_pert_iname"] == "gabapentin-enacarbil"
    )
    assert bool(by_well.loc["A02", CONTROL]) and by_well.loc["A02", ANNOTATION] == ""


def test_the_demo_plate_map_has_controls_and_graded_replicated_treatments(tmp_path):
    from cellresdm.synth import DemoPlatemap, SynthConfig, with_platemap, write_platemap

    demo = cfg.load_config(Path(__file__).resolve().parents[1] / "config.yaml")["demo"]
    platemap = DemoPlatemap.from_config(demo["platemap"])
    table = write_platemap(tmp_path / "platemap.csv", platemap)
    assert list(table.columns) == ["well_position", "broad_sample", "target"]
    read = read_platemap(tmp_path / "platemap.csv", "DEMO0004", SETTINGS)
    assert (read["broad_sample"] == "").sum() >= 3
    counts = read.loc[read["broad_sample"] != "", "broad_sample"].value_counts()
    assert len(counts) >= 3 and (counts >= 3).all()
    scales = {(t.effect.nucleus_scale, t.effect.mito_scale) for t in platemap.treatments}
    assert len(scales) == len(platemap.treatments)  # graded: every treatment its own effect
    base = SynthConfig.from_config(demo)
    plate = with_platemap(base, platemap)
    plate.validate()
    assert set(platemap.wells()) <= set(plate.wells) and plate.wells[: len(base.wells)] == base.wells
    forced = dict(plate.treatments)
    assert forced["B02"].nucleus_scale == 1.0 and forced["D02"].nucleus_scale == 1.25
    added = [w for w in plate.wells if w not in base.wells]
    assert {(w, 2) for w in added} <= set(plate.missing_fields)  # one site in the added wells
    # every plate-map well survives the field filter (no edge or black-IF well)
    kept = [
        w for w in platemap.wells() if w not in base.black_if_wells and w[0] not in "AP" and w[1:] not in ("01", "24")
    ]
    assert kept == list(platemap.wells())


def test_the_report_shows_the_profiles_first_with_their_caption(tmp_path):
    from cellresdm.report import ReportInputs, ReportOutputs, write_report

    features, platemaps = _stage_inputs(tmp_path)
    outputs = _outputs(tmp_path)
    profile_stage(features, platemaps, SETTINGS, outputs)
    inputs = ReportInputs(profiles_summary=outputs.summary, profiles_figure=outputs.figure)
    out = tmp_path / "reports"
    wanted = ReportOutputs(html=out / "report.html", profiles=out / "map.png", profiles_summary=out / "summary.csv")
    config = {"methods": [], "profiles": {"pvalue_correction": "bonferroni", "permutations": 2000}}
    result = write_report(inputs, wanted, config=config, all_methods=["cellresdm"])
    assert set(result["written"]) == {"html", "profiles", "profiles_summary"}
    assert Path(out / "map.png").read_bytes() == Path(outputs.figure).read_bytes()
    page = (out / "report.html").read_text()
    assert page.index('id="profiles"') < page.index('id="profiles_summary"')
    assert "mAP is its mean over queries" in page and "with Bonferroni" in page and "2000 permutations" in page
    assert pd.read_csv(out / "summary.csv").equals(pd.read_csv(outputs.summary))


def test_the_cli_runs_the_stage_on_a_results_folder(tmp_path):
    import yaml

    from cellresdm.cli import main
    from cellresdm.results import ResultsLayout

    features, platemaps = _stage_inputs(tmp_path)
    layout = ResultsLayout(str(tmp_path / "results"))
    for source, path in features.items():
        Path(layout.features(source)).parent.mkdir(parents=True, exist_ok=True)
        Path(path).rename(layout.features(source))
    config = {
        "source": "gallery",
        "plates": [
            {"id": "P1", "cell_line": "U2OS", "split": "test", "platemap": str(platemaps["P1"])},
            {"id": "P2", "cell_line": "U2OS", "split": "train"},
        ],
        "methods": [],
        "profiles": {"permutations": 500},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    args = ["--config", str(tmp_path / "config.yaml"), "--results", layout.root, "profiles"]
    assert main([*args, "--sources", "real", "good", "noise"]) == 0
    summary = pd.read_csv(layout.profiles_summary())
    assert list(summary["source"]) == ["real", "good", "noise"]
    assert main(args) == 1  # default sources: real and bf_copy, whose feature table is absent
