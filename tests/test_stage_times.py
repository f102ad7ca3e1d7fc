"""Stage times of a run from Snakemake's benchmark files and run log (cellresdm.stage_times)."""

from pathlib import Path

import pytest

from cellresdm.errors import CellResDMError
from cellresdm.stage_times import run_wall_seconds, stage_times, stage_times_markdown

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write_benchmark(root: Path, stage: str, name: str, seconds: float, cpu: float, rss: float) -> None:
    path = root / stage / f"{name}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:00\t{rss}\t0\t0\t0\t0\t0\t50\t{cpu}\n")


def test_stage_times_sums_jobs_per_stage_in_pipeline_order(tmp_path):
    write_benchmark(tmp_path, "train", "cellresdm", 600, 590, 500)
    write_benchmark(tmp_path, "train", "unet", 120, 118, 300)
    write_benchmark(tmp_path, "synth_plate", "DEMO0001", 6, 3, 160)
    write_benchmark(tmp_path, "zzz_custom", "x", 60, 30, 100)

    table = stage_times(tmp_path).set_index("stage")

    assert list(table.index) == ["synth_plate", "train", "zzz_custom", "total"]
    assert table.loc["train", "jobs"] == 2
    assert table.loc["train", "job_minutes"] == pytest.approx(12.0)
    assert table.loc["train", "cpu_minutes"] == pytest.approx(708 / 60)
    assert table.loc["train", "longest_job"] == "cellresdm"
    assert table.loc["train", "max_rss_mb"] == 500
    assert table.loc["total", "jobs"] == 4
    assert table.loc["total", "job_minutes"] == pytest.approx((600 + 120 + 6 + 60) / 60)


def test_run_wall_seconds_spans_first_to_last_timestamp(tmp_path):
    log = tmp_path / "run.snakemake.log"
    log.write_text(
        "Building DAG of jobs...\n[Tue Dec  8 00:30:34 2026]\nrule synth_plate:\n"
        "[Tue Dec  8 00:59:04 2026]\nFinished jobid: 3\n[Tue Dec  8 01:15:04 2026]\nFinished jobid: 0\n"
    )
    assert run_wall_seconds(log) == 44 * 60 + 30
    write_benchmark(tmp_path / "bench", "train", "unet", 120, 118, 300)
    assert "Run wall time: 44.5 min" in stage_times_markdown(tmp_path / "bench", log)


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(CellResDMError, match="no benchmark files"):
        stage_times(tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "x.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(CellResDMError, match=r"x\.tsv: not a Snakemake benchmark"):
        stage_times(tmp_path)
    log = tmp_path / "empty.log"
    log.write_text("nothing\n")
    with pytest.raises(CellResDMError, match="empty.log: fewer than two timestamps"):
        run_wall_seconds(log)
