"""The Snakefile as a user runs it: dry runs, the slurm profile, lint, and a tiny end-to-end run."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from tiny_methods import METHODS, tiny_method_sections

from cellresdm.config import load_config, validate_config
from cellresdm.results import DEFAULT_ROOT, ResultsLayout

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
CELLPROFILER = REPO / ".venv-cp" / "bin" / "cellprofiler"
WORKFLOW_FILES = ["Snakefile", "rules", "workflow_scripts", "report", "envs", "config.yaml", "configs"]
#: The README's commands for the paper's setup on one machine and on a cluster (the tests below run them).
README_RUN = "snakemake --cores 16 --configfile configs/cpg0000.yaml"
README_CLUSTER_RUN = "snakemake --profile slurm --configfile configs/cpg0000.yaml"

#: A config small enough for CI: 3 plates (one per split), 4 wells x 2 sites of 192x192 pixels.
TINY_CONFIG = {
    "source": "demo",
    "plates": [
        {"id": "TINY01", "cell_line": "A549", "split": "train"},
        {"id": "TINY02", "cell_line": "U2OS", "split": "val"},
        {"id": "TINY03", "cell_line": "U2OS", "split": "test"},
        # brightfield only, painted by the run's CellResDM: 1 well x 2 sites
        {"id": "TINY04", "cell_line": "A549", "split": "predict"},
    ],
    "demo": {
        "field_size": 192,
        "wells": ["A01", "B02", "B03", "C02"],
        "sites": 2,
        "black_if_wells": ["B03"],
        "missing_fields": [{"well": "C02", "site": 2}],
        "predict_wells": ["B02"],
        # the test plate's plate map: 2 control and 2 treated wells, D02 and D03 added with 1 site each
        "platemap": {
            "controls": ["C02", "D03"],
            "treatments": [
                {"name": "nuclei_up", "mechanism": "nuclear size", "nucleus_scale": 1.25, "wells": ["B02", "D02"]}
            ],
        },
    },
    "train": {"steps": 6, "batch_size": 2, "warmup_steps": 2, "checkpoint_every": 4},
    "sample": {"tile": 128, "overlap": 32, "batch_size": 4},
    "predict": {"n_samples": 2, "reference_fields": 2},
    "stardist": {"epochs": 2, "steps_per_epoch": 3, "patch_size": 64, "batch_size": 2, "unet_n_filter_base": 8},
    "methods": METHODS,
    # shards of 2 x 4 wells: the test plate's per-field stages run as 2 jobs each, of B02 (2 fields; B03 is
    # black) and of C02, D02 and D03 (3 fields); empty shards are covered by the stages' own tests
    "shards": {"well_block": [2, 4]},
    # every network and schedule just big enough to run its code paths; make demo trains for real
    **tiny_method_sections(),
}
TINY_CONFIG["features"] = {"texture_scales": [3], "texture_gray_levels": 16, "zernike": False}
ALL_METHODS = METHODS
#: Kept fields of the test plate TINY03: B02 (2 sites), C02 (1), and D02, D03 its plate map adds (1 each).
TEST_FIELDS = 5


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [SNAKEMAKE, "--directory", str(workdir), *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if check and result.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def make_workdir(tmp_path: Path, config: dict | None) -> Path:
    """A copy of the workflow (no results) with ``config`` as its config.yaml."""
    work = tmp_path / "work"
    work.mkdir()
    for name in WORKFLOW_FILES + ["slurm"]:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, work / name)
        else:
            shutil.copy(source, work / name)
    if config is not None:
        (work / "config.yaml").write_text(yaml.safe_dump(config))
    return work


def test_dry_run_of_the_demo_plans_every_stage():
    result = snakemake(REPO, "-n", "--forceall", "--cores", "1", "--quiet", "rules")
    for rule in [
        "synth_plate",
        "download",
        "filter_fields",
        "groundtruth",
        "groundtruth_qc",
        "dataset",
        "train",
        "sample",
        "image_quality",
        "segment",
        "stardist_bf",
        "stardist_if",
        "stardist_predict",
        "segmentation_scores",
        "demo_platemap",
        "bf_copy_images",
        "profiles",
        "paper_report",
    ]:
        assert re.search(rf"^{rule}\s+\d+", result.stdout, re.M), f"{rule} missing from the plan"


def readme_args(command: str) -> list[str]:
    """The arguments of a README command (after ``snakemake``)."""
    return shlex.split(command)[1:]


def test_the_readme_runs_the_tested_commands():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"^```bash\n(.*?)^```", readme, re.M | re.S)
    commands = [line for block in blocks for line in block.splitlines() if line.startswith("snakemake ")]
    assert commands == [README_RUN, README_CLUSTER_RUN]


def test_dry_run_of_the_paper_config_reads_the_gallery():
    result = snakemake(REPO, "-n", "--quiet", "rules", *readme_args(README_RUN))
    assert re.search(r"^download\s+8$", result.stdout, re.M)
    assert "synth_plate" not in result.stdout and "groundtruth_qc" not in result.stdout


def resolved_config(tmp_path: Path, *args: str) -> tuple[dict, str]:
    """The resolved config (and its header line) that a run of a copy of the workflow writes on start; a dry run
    writes none. ``--touch`` runs no rule: the jobs only touch the outputs they find."""
    work = make_workdir(tmp_path, None)
    path = work / ResultsLayout().resolved_config()
    snakemake(work, "-n", *args)
    assert not path.exists(), "a dry run wrote the resolved config"
    result = snakemake(work, "--touch", *args)
    text = path.read_text()
    assert f"resolved: {ResultsLayout().resolved_config()}" in result.stderr  # the log names the config files
    return yaml.safe_load(text), text.splitlines()[0]


@pytest.mark.parametrize(
    ("args", "config_file"),
    [(["--cores", "1"], "config.yaml"), (readme_args(README_RUN), "configs/cpg0000.yaml")],
    ids=["demo", "paper"],
)
def test_a_run_resolves_its_config_to_the_schema_defaults_and_its_config_file(tmp_path, args, config_file):
    resolved, header = resolved_config(tmp_path, *args)
    assert header == f"# The resolved configuration of this run: schema defaults + {config_file}."
    assert resolved == load_config(REPO / config_file)
    given = yaml.safe_load((REPO / config_file).read_text())
    defaults = validate_config({})
    for key in resolved.keys() - given.keys():
        assert resolved[key] == defaults[key], f"{key}: not the schema default"


def test_the_demo_sets_what_the_paper_config_leaves_to_the_schema():
    """So the paper case above would catch a leak of the demo's small baselines, VQ-GAN and StarDist."""
    demo = load_config(REPO / "config.yaml")
    paper = yaml.safe_load((REPO / "configs" / "cpg0000.yaml").read_text())
    defaults = validate_config({})
    for key in ("stardist", "vqgan", "unet", "pix2pix", "spade", "palette", "spade_diffusion", "features"):
        assert key not in paper and demo[key] != defaults[key], key
    assert demo["vqgan"]["train"] and not defaults["vqgan"]["train"]  # the demo's 300-step VQ-GAN


def test_bad_config_fails_with_the_key_named(tmp_path):
    work = make_workdir(tmp_path, {"plates": [{"id": "BR 0001", "cell_line": "A549", "split": "train"}]})
    result = snakemake(work, "-n", "--cores", "1", check=False)
    assert result.returncode != 0
    assert "plates.0.id" in result.stdout + result.stderr
    (work / "config.yaml").write_text(yaml.safe_dump({"filters": {}}))
    result = snakemake(work, "-n", "--cores", "1", check=False)
    assert result.returncode != 0 and "unknown config key 'filters'" in result.stdout + result.stderr


def test_slurm_profile_parses_and_resolves_every_rules_resources(tmp_path):
    profile = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["software-deployment-method"] == "conda"
    assert profile["retries"] >= 1 and profile["rerun-incomplete"] is True
    for rule in ("train", "sample_shard"):
        assert profile["set-resources"][rule]["gpu"] >= 1
    # This machine has no conda, so the dry run uses a copy of the profile without conda deployment.
    profile_dir = tmp_path / "slurm"
    profile_dir.mkdir()
    del profile["software-deployment-method"]
    (profile_dir / "config.yaml").write_text(yaml.safe_dump(profile))
    args = [str(profile_dir) if arg == "slurm" else arg for arg in readme_args(README_CLUSTER_RUN)]
    result = snakemake(REPO, "-n", *args)
    jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", result.stdout, re.M)
    assert {rule for rule, _ in jobs} >= {"download", "filter_fields", "groundtruth_shard", "groundtruth", "dataset"}
    for rule, resources in jobs:
        values = dict(item.split("=", 1) for item in resources.split(", "))
        assert values["slurm_partition"] and values["slurm_account"], rule
        assert int(values["runtime"]) > 0 and int(values["mem_mb"]) > 0, rule
        if rule == "groundtruth_shard":  # set-resources of the profile wins; the runtime is the rule's estimate
            assert values["mem_mb"] == "8000" and 15 < int(values["runtime"]) < 1440


def test_conda_envs_point_at_existing_files():
    for env_file in (REPO / "envs").glob("*.yaml"):
        env = yaml.safe_load(env_file.read_text())
        for dep in env["dependencies"]:
            if isinstance(dep, dict):
                for line in dep["pip"]:
                    if line.startswith(("-r ", "-e ")):
                        assert (env_file.parent / line[3:]).exists(), f"{env_file.name}: {line}"


def test_snakemake_lint_and_snakefmt_are_clean():
    lint = snakemake(REPO, "--lint", check=False)
    assert "Lints for" not in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "rules/"], cwd=REPO, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stderr


@pytest.mark.slow
@pytest.mark.cellprofiler
def test_tiny_end_to_end_run(tmp_path, monkeypatch):
    """The whole Snakefile on a tiny synthetic gallery, then a rerun that has nothing to do, then --report."""
    if not CELLPROFILER.exists():
        pytest.skip("CellProfiler environment .venv-cp is missing (make setup creates it)")
    work = make_workdir(tmp_path, TINY_CONFIG)
    (work / ".venv-cp").symlink_to(REPO / ".venv-cp")
    snakemake(work, "--cores", "2")
    R = ResultsLayout(str(work / DEFAULT_ROOT))

    for plate in ("TINY01", "TINY02", "TINY03"):
        fields = pd.read_parquet(R.fields(plate))
        # 4 wells x 2 sites, the missing one included; the test plate's plate map adds 2 wells (site 2 missing)
        assert len(fields) == (12 if plate == "TINY03" else 8)
        reasons = dict(
            zip(fields["Metadata_Well"] + "_" + fields["Metadata_Site"].astype(str), fields["reason"], strict=True)
        )
        assert reasons["A01_1"] == "edge_well" and reasons["C02_2"] == "missing"
        assert reasons["B03_1"] == "black_if" and reasons["B02_1"] == ""
        assert Path(R.platemap(plate)).stat().st_size > 1000
        index = pd.read_parquet(R.groundtruth_index(plate))
        assert len(index) == fields["keep"].sum() == (TEST_FIELDS if plate == "TINY03" else 3)
        assert Path(R.log("groundtruth", plate)).stat().st_size > 0

    qc = pd.read_csv(R.groundtruth_qc_summary())
    pooled = qc[qc["plate"] == "all"].set_index("object")
    assert pooled.loc["nuclei", "f1"] >= 0.9 and pooled.loc["cells", "f1"] >= 0.7, pooled

    store = zarr.open_group(R.dataset("train"), mode="r")
    assert store["bf"].shape == (3, 3, 192, 192) and store["if"].shape == (3, 5, 192, 192)
    assert store["boundaries"].shape == store["labels"].shape == (3, 2, 192, 192)
    image = np.asarray(store["if"][:])
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    summary = json.loads(Path(R.dataset_summary("test")).read_text())
    assert summary["n_fields"] == TEST_FIELDS and summary["plates"] == ["TINY03"]
    assert Path(R.benchmark("download", "TINY01")).exists()

    train_log = pd.read_csv(R.train_log("cellresdm"))
    assert train_log["step"].max() == 6 and np.isfinite(train_log["loss"]).all()
    predictions = zarr.open_group(R.predictions("cellresdm"), mode="r")
    assert predictions["if"].shape == (TEST_FIELDS, 5, 192, 192)  # 192 > tile 128: sampled in overlapping tiles
    assert predictions["boundaries_binary"].shape == (TEST_FIELDS, 2, 192, 192)
    timing = json.loads(Path(R.sample_timing("cellresdm")).read_text())
    assert timing["steps"] == 4 and timing["seconds_per_image"] > 0 and timing["fields"] == TEST_FIELDS
    for source in (*ALL_METHODS, "stardist_bf", "stardist_if"):
        instances = zarr.open_group(R.instances(source), mode="r")
        assert instances["nuclei"].shape == (TEST_FIELDS, 192, 192)
        scores = pd.read_parquet(R.segmentation_scores(source))
        assert set(scores["tau"].round(1)) == {round(0.1 * k, 1) for k in range(1, 10)}
        assert set(scores["object"]) == ({"nuclei"} if source.startswith("stardist") else {"nuclei", "cells"})
    seg_summary = pd.read_csv(R.segmentation_summary())
    assert set(seg_summary["source"]) == {*ALL_METHODS, "stardist_bf", "stardist_if"}
    assert seg_summary["f1"].between(0, 1).all()
    assert Path(R.fig7()).stat().st_size > 1000
    for method in ALL_METHODS:
        store = zarr.open_group(R.predictions(method), mode="r")
        prediction = np.asarray(store["if"][:], dtype=np.float32)
        assert prediction.shape == (TEST_FIELDS, 5, 192, 192) and np.isfinite(prediction).all(), method
        assert prediction.min() >= 0 and prediction.max() <= 1, method
    quality = pd.read_csv(R.image_quality_summary())
    assert set(quality["method"]) == {*ALL_METHODS, "bf_copy"} and len(quality) == 5 * (len(ALL_METHODS) + 1)
    assert quality["ssim"].between(-1, 1).all() and (quality["psnr"] > 0).all()
    ttests = pd.read_csv(R.image_quality_ttests())
    assert set(ttests["other"]) == {*ALL_METHODS, "bf_copy"} - {"cellresdm"} and (ttests["n"] == TEST_FIELDS).all()
    assert len(ttests) == len(ALL_METHODS) * 5 * 4

    for source in ("real", *ALL_METHODS, "bf_copy"):
        features = pd.read_parquet(R.features(source))
        assert len(features) == TEST_FIELDS and "Image_Count_Nuclei" in features.columns, source
    profiles = pd.read_csv(R.profiles_summary()).set_index("source")
    assert list(profiles.index) == ["real", *ALL_METHODS, "bf_copy"] and (profiles["n_wells"] == 4).all()
    assert profiles.loc["real", "n_treatments"] == 1 and 0 <= profiles.loc["real", "replicate_map"] <= 1
    # a barely trained method may find no object, so its wells have no profile to compare (NaN mAP)
    assert profiles["replicate_map"].dropna().between(0, 1).all() and profiles["n_treatments"].isin([0, 1]).all()
    assert profiles.drop(index="real")["crossmodal_map"].dropna().between(0, 1).all()
    assert Path(R.report("profiles")).stat().st_size > 5000
    table2 = pd.read_csv(R.table2())
    # a category without a feature that varies across the 3 test images has no r (NaN)
    assert set(table2["source"]) == set(ALL_METHODS) and table2["r"].dropna().between(-1, 1).all()
    assert table2["r"].notna().sum() >= len(ALL_METHODS)
    for item in ("fig4", "fig5", "fig6", "fig7"):
        assert Path(R.report(item)).stat().st_size > 5000, item
    html = Path(R.report("html")).read_text()
    assert html.count("data:image/png;base64,") >= 5 and "Table 2" in html and "Table 3" in html
    assert "Profiles: replicate, mechanism and cross-modal retrieval" in html and "Benjamini-Hochberg" in html
    throughput = pd.read_csv(R.report("throughput"))
    assert {"cellresdm", "stardist_bf"} <= set(throughput["source"])

    # the brightfield-only plate: BF planes only downloaded, painted into an OME-Zarr plate with masks and profiles
    ld = pd.read_parquet(R.load_data("TINY04"))
    assert ld["path_DNA"].isna().all() and ld["path_LowZBF"].notna().all()
    assert pd.read_parquet(R.fields("TINY04"))["keep"].sum() == 2
    predicted = json.loads(Path(R.predict_summary("cellresdm", "TINY04")).read_text())
    assert predicted["fields"] == 2 and predicted["n_samples"] == 2
    assert zarr.open_group(R.predict_omezarr("cellresdm", "TINY04"), mode="r").attrs["ome"]["plate"]["name"] == "TINY04"
    wells = pd.read_csv(R.predict_wells("cellresdm", "TINY04"))
    assert list(wells["Metadata_Well"]) == ["B02"] and "ood" in wells.columns
    assert "Predict plate TINY04 (cellresdm)" in html

    # every rule that does work is timed by Snakemake (benchmark:)
    for stage, name in [
        ("evaluate", "image_quality"),
        ("segmentation", "scores"),
        ("features", "table2"),
        ("profiles", "profiles"),
        ("report", "paper_report"),
        ("groundtruth_qc", "TINY01"),
    ]:
        assert Path(R.benchmark(stage, name)).stat().st_size > 0, (stage, name)

    assert_shards_equal_one_job(work, R, monkeypatch)
    assert_a_killed_run_redoes_only_missing_shards(work, tmp_path / "killed")

    rerun = snakemake(work, "--cores", "2", "-n")
    assert "Nothing to be done" in rerun.stdout + rerun.stderr
    snakemake_report = ResultsLayout().snakemake_report()
    snakemake(work, "--cores", "1", "--report", snakemake_report)
    assert (work / snakemake_report).stat().st_size > 10_000


def assert_shards_equal_one_job(work: Path, R: ResultsLayout, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's per-field stages in shards of one well, gathered, equal the same stages of the test plate run
    as one job each (the whole plate as one shard): ground truth, every method's predictions and instances, the
    features of the real images and of CellResDM's."""
    from cellresdm import steps
    from cellresdm.compare import compare_results
    from cellresdm.features import FeatureSettings, extract_features
    from cellresdm.segment import InstanceSettings
    from cellresdm.segment_step import segment_predictions
    from cellresdm.shards import whole_plate

    monkeypatch.chdir(work)  # the config's CellProfiler path is relative to the working directory
    config = load_config(work / "config.yaml")
    one = ResultsLayout(str(work / "one_job"))
    plate, shard = "TINY03", whole_plate().name
    steps.groundtruth(
        plate,
        shard,
        R.fields(plate),
        R.load_data(plate),
        one.groundtruth_dir(plate),
        one.groundtruth_shard(plate, shard),
        config["groundtruth"],
        workers=2,
    )
    steps.gather_groundtruth(
        plate, [one.groundtruth_shard(plate, shard)], R.fields(plate), one.groundtruth_index(plate)
    )
    steps.use_threads(2)  # the sample rule's threads
    for method in METHODS:
        steps.sample_method(
            method,
            R.model(method),
            R.dataset("test"),
            one.predictions(method),
            config["sample"],
            benchmark_out=one.sample_timing(method),
        )
        segment = InstanceSettings.from_config(config["instances"])
        segment_predictions(one.predictions(method), one.instances(method), segment, workers=2, progress=False)
    settings = FeatureSettings.from_config(config["features"], segmentation=config["groundtruth"])
    for source, images in (("real", R.dataset("test")), ("cellresdm", one.predictions("cellresdm"))):
        extract_features(
            images,
            source,
            one.features(source),
            settings,
            cellprofiler=config["groundtruth"]["cellprofiler"],
            workers=2,
            progress=False,
            reference=R.dataset("test"),
        )
    compared = [d for d in compare_results(R.root, one.root) if not d.what.startswith("only in")]
    assert compared == [], "\n".join(map(str, compared))
    monkeypatch.chdir(REPO)


def started_jobs(output: str, rule: str) -> set[str]:
    """Wildcards of the jobs of ``rule`` that a Snakemake run started (its log)."""
    return set(re.findall(rf"^(?:local)?rule {rule}:\n(?:    .*\n)*?    wildcards: (.*)$", output, re.M))


def run_until(work: Path, done: list[Path], *targets: str) -> str:
    """Run Snakemake on ``targets`` one job at a time, kill it (SIGKILL, the whole process group) as soon as any
    of ``done`` exists and unlock the folder; the killed run's output."""
    import os
    import signal
    import time

    process = subprocess.Popen(
        [SNAKEMAKE, "--directory", str(work), "--cores", "1", "--rerun-incomplete", *targets],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not any(p.exists() for p in done) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if process.poll() is not None:
        pytest.fail(f"snakemake ended before it was killed:\n{process.communicate()[0][-3000:]}")
    os.killpg(process.pid, signal.SIGKILL)
    output, _ = process.communicate()
    snakemake(work, "--unlock")  # what Snakemake asks for after a kill: the lock of the killed run stays behind
    return output


def assert_a_killed_run_redoes_only_missing_shards(work: Path, copy: Path) -> None:
    """Kill a run while it samples, then while it measures features: nothing half-written is left, and each
    rerun starts only the shards that are missing (and at most the one that ended as it was killed, which
    Snakemake had not yet recorded)."""
    from cellresdm.stores import open_predictions

    shutil.copytree(work, copy, symlinks=True)
    R = ResultsLayout(str(copy / DEFAULT_ROOT))
    method, plate = "cellresdm", "TINY03"
    shards = ["A01-B04", "C01-D04"]
    for path in (R.predictions(method), R.features(method), Path(R.features_shard(method, plate, "X")).parent):
        shutil.rmtree(path) if Path(path).is_dir() else Path(path).unlink()
    predictions = [Path(R.predictions_shard(method, plate, s)) for s in shards]
    features = [Path(R.features_shard(method, plate, s)) for s in shards]

    target = ResultsLayout().features(method)  # relative to the working directory, as Snakemake wants it
    output = run_until(copy, predictions, target)
    sampled = [s for s, p in zip(shards, predictions, strict=True) if p.exists()]
    assert 1 <= len(sampled) < len(shards), output[-3000:]
    for path in predictions[0].parent.iterdir():  # complete shard stores only: no temporary sibling survives
        assert not path.name.startswith(".") or ".part" in path.name, path
        if not path.name.startswith("."):
            open_predictions(path)
    assert not Path(R.predictions(method)).exists()

    output = run_until(copy, features, target)
    resampled = {w.split("shard=")[1] for w in started_jobs(output, "sample_shard")}
    missing = set(shards) - set(sampled)
    assert missing <= resampled and len(resampled - missing) <= 1, (sampled, resampled)
    measured = [s for s, p in zip(shards, features, strict=True) if p.exists()]
    assert 1 <= len(measured) < len(shards), output[-3000:]

    result = snakemake(copy, "--cores", "2", "--rerun-incomplete", target)
    output = result.stdout + result.stderr
    assert not started_jobs(output, "sample_shard")
    remeasured = {w.split("shard=")[1] for w in started_jobs(output, "features_shard")}
    missing = set(shards) - set(measured)
    assert missing <= remeasured and len(remeasured - missing) <= 1, (measured, remeasured)
    assert len(pd.read_parquet(R.features(method))) == TEST_FIELDS
    leftovers = [p for p in Path(R.root).rglob(".*.part*")]
    assert leftovers == [], leftovers
