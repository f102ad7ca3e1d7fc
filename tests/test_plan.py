"""The cluster plan (cellresdm.plan) and a simulated plate-scale run: the paper config over two full cpg0000
plates, dry-run, with every per-field job's estimated runtime inside its runtime resource."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cellresdm.config import load_config
from cellresdm.filters import is_edge_well
from cellresdm.plan import Job, dependencies, parse_dry_run, plan, snakemake_plan
from cellresdm.shards import WellBlock, sampling_evaluations

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
#: The field index of cpg0000 (../shared, not in a user's clone).
FIELD_INDEX = REPO.parent / "shared" / "data" / "cpg0000_index" / "CPJUMP1_2020_11_04_fields.csv.gz"
TWO_PLATES = [
    {"id": "BR00116991", "cell_line": "A549", "split": "train"},
    {"id": "BR00116994", "cell_line": "A549", "split": "test"},
]
SHARD_RULES = ("groundtruth_shard", "sample_shard", "segment_shard", "features_shard")


def _job(rule: str, minutes: float, gpu: bool = False, inputs=(), outputs=()) -> Job:
    resources = {"runtime": str(minutes), **({"gpu": "1"} if gpu else {})}
    return Job(rule, (("name", rule),), resources, tuple(inputs), tuple(outputs))


def test_critical_path_and_makespan_of_a_small_graph():
    a = _job("a", 10, outputs=["a.txt"])
    b = _job("b", 20, gpu=True, inputs=["a.txt"])
    c = _job("c", 5, inputs=["a.txt"], outputs=["c.txt"])
    d = _job("d", 30, inputs=["c.txt"])
    jobs = [a, b, c, d]
    assert set(dependencies(jobs)) == {(a, b), (a, c), (c, d)}
    result = plan(jobs, dependencies(jobs), nodes=1, gpus=1)
    assert result.critical_path == ["a", "c", "d"] and result.critical_path_minutes == 45
    assert result.makespan_minutes == 45 and result.jobs_per_rule == {"a": 1, "b": 1, "c": 1, "d": 1}
    # one node for everything but the GPU job: c and d wait for nothing else; two GPU-less nodes change nothing
    assert plan(jobs, dependencies(jobs), nodes=2, gpus=1).makespan_minutes == 45
    # halving every job halves the plan
    assert plan(jobs, dependencies(jobs), 1, 1, minutes=lambda job: job.minutes / 2).makespan_minutes == 22.5
    # independent CPU jobs on one node run one after another
    many = [_job(f"x{i}", 10) for i in range(4)]
    assert plan(many, [], nodes=1, gpus=0).makespan_minutes == 40
    assert plan(many, [], nodes=4, gpus=0).makespan_minutes == 10
    with pytest.raises(ValueError, match="lacks"):
        plan([b], [], nodes=1, gpus=0)


def test_dry_run_output_is_parsed():
    output = (
        "rule sample_shard:\n"
        "    input: results/models/unet/model.pt, results/datasets/test.zarr\n"
        "    output: results/predictions/unet/shards/P1/A01-B03.zarr\n"
        "    jobid: 12\n"
        "    wildcards: method=unet, plate=P1, shard=A01-B03\n"
        "    threads: 2\n"
        "    resources: tmpdir=/tmp, mem_mb=16000, runtime=45, gpu=1\n"
        "localrule all:\n"
        "    input: x\n"
    )
    job, final = parse_dry_run(output)
    assert job.rule == "sample_shard" and job.wildcard("shard") == "A01-B03" and job.minutes == 45 and job.uses_gpu
    assert job.inputs == ("results/models/unet/model.pt", "results/datasets/test.zarr")
    assert final.rule == "all" and final.inputs == ("x",) and not final.uses_gpu


@pytest.fixture(scope="module")
def plate_scale(tmp_path_factory):
    """The paper config over two full plates (train and test): its resolved config, the plates' fields from the
    cpg0000 index (what their load_data lists, less the filter's edge ring) and the dry run's jobs."""
    if not FIELD_INDEX.exists():
        pytest.skip(f"{FIELD_INDEX} is not here (only the project's shared folder has it)")
    config = yaml.safe_load((REPO / "configs" / "cpg0000.yaml").read_text())
    config["plates"] = TWO_PLATES
    path = tmp_path_factory.mktemp("plate_scale") / "two_plates.yaml"
    path.write_text(yaml.safe_dump(config))
    resolved = load_config(path)
    index = pd.read_csv(FIELD_INDEX, usecols=["Metadata_Plate", "Metadata_Well", "Metadata_Row", "Metadata_Col"])
    index = index[index["Metadata_Plate"].isin([p["id"] for p in TWO_PLATES])]
    ring = resolved["filter"]["edge_ring"]
    edge = [is_edge_well(r, c, ring) for r, c in zip(index["Metadata_Row"], index["Metadata_Col"], strict=True)]
    fields = index[~pd.Series(edge, index=index.index)]
    assert index.groupby("Metadata_Plate").size().to_dict() == {"BR00116991": 3456, "BR00116994": 3447}
    result, jobs = snakemake_plan(["--configfile", str(path), "--cores", "64"], 64, 8, SNAKEMAKE, cwd=str(REPO))
    return resolved, fields, result, jobs


def estimated_minutes(job: Job, config: dict, fields: pd.DataFrame) -> float | None:
    """The measured cost of a per-field job: its fields (from the plate index) times seconds per field."""
    if job.rule not in SHARD_RULES:
        return None
    plate = fields[fields["Metadata_Plate"] == job.wildcard("plate")]
    n = int(WellBlock.parse(job.wildcard("shard")).contains(plate["Metadata_Well"]).sum())
    costs = config["shards"]["seconds_per_field"]
    seconds = {
        "groundtruth_shard": costs["groundtruth"],
        "segment_shard": costs["instances"],
        "features_shard": costs["features"],
    }
    if job.rule == "sample_shard":
        evaluations = sampling_evaluations(config[job.wildcard("method")]) * config["sample"]["n_samples"]
        return n * costs["sample_step"] * evaluations / 60
    return n * seconds[job.rule] / 60


def test_plate_scale_jobs_fit_their_runtime_and_spread_over_a_cluster(plate_scale):
    config, fields, result, jobs = plate_scale
    for rule in SHARD_RULES:
        assert result.jobs_per_rule[rule] >= 64, (rule, result.jobs_per_rule)
    too_long = []
    for job in jobs:
        estimate = estimated_minutes(job, config, fields)
        if estimate is not None and estimate > job.minutes:
            too_long.append((job.rule, job.wildcards, round(estimate), job.minutes))
        assert job.minutes <= 2880, (job.rule, job.wildcards, job.minutes)  # two days: any cluster's limit
    assert too_long == []
    # every field of the test plate outside the edge ring is in exactly one shard of each per-field stage
    test_plate = fields[fields["Metadata_Plate"] == "BR00116994"]
    shards = {job.wildcard("shard") for job in jobs if job.rule == "features_shard"}
    owners = sum(WellBlock.parse(s).contains(test_plate["Metadata_Well"]).astype(int) for s in shards)
    assert (owners == 1).all()
    estimated = plan(
        jobs, dependencies(jobs), 64, 8, minutes=lambda j: estimated_minutes(j, config, fields) or j.minutes
    )
    print("\n".join(result.lines()))
    print(f"with measured costs for the per-field jobs: critical path {estimated.critical_path_minutes / 60:.1f} h,")
    print(f"makespan on 64 nodes + 8 GPUs {estimated.makespan_minutes / 60:.1f} h")
    assert estimated.makespan_minutes <= result.makespan_minutes
