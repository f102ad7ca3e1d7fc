"""Where a run's time went: Snakemake's benchmark files summed per stage, and the run's wall time from its log.

Every rule that does work writes ``benchmarks/{stage}/{name}.tsv`` (Snakemake's ``benchmark:``: wall seconds
``s``, ``cpu_time``, ``max_rss`` in MB). :func:`stage_times` sums them per stage folder; jobs of one stage that
ran side by side count each, so ``job_minutes`` is the work, not the span. :func:`run_wall_seconds` reads the
first and last timestamps of a Snakemake log (``.snakemake/log/*.snakemake.log``) for the span of the run.
``cellresdm stage-times`` prints both as Markdown (the README's demo stage times come from it).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pandas as pd

from cellresdm.errors import CellResDMError

#: Stage folders in pipeline order; folders not listed follow in alphabetical order.
STAGE_ORDER: tuple[str, ...] = (
    "synth_plate",
    "demo_platemap",
    "download",
    "filter",
    "groundtruth",
    "groundtruth_qc",
    "dataset",
    "train",
    "sample",
    "segmentation",
    "evaluate",
    "features",
    "profiles",
    "export_model",
    "predict",
    "omezarr",
    "report",
)
#: Snakemake's log timestamps, e.g. ``[Tue Dec  8 00:31:05 2026]``.
_TIMESTAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def benchmark_table(benchmarks_dir: str | Path) -> pd.DataFrame:
    """One row per job: ``stage`` (folder), ``job`` (file stem), ``seconds``, ``cpu_seconds``, ``max_rss_mb``.

    A benchmark file of several rows (a repeated benchmark) counts its mean.

    Raises:
        CellResDMError: naming the folder when it holds no benchmark file, or a file without column ``s``.
    """
    root = Path(benchmarks_dir)
    rows = []
    for path in sorted(root.glob("*/*.tsv")):
        table = pd.read_csv(path, sep="\t")
        if "s" not in table.columns:
            raise CellResDMError(f"{path}: not a Snakemake benchmark file (no column 's')")
        rows.append(
            {
                "stage": path.parent.name,
                "job": path.stem,
                "seconds": float(table["s"].mean()),
                "cpu_seconds": float(pd.to_numeric(table.get("cpu_time"), errors="coerce").mean()),
                "max_rss_mb": float(pd.to_numeric(table.get("max_rss"), errors="coerce").mean()),
            }
        )
    if not rows:
        raise CellResDMError(f"{root}: no benchmark files (benchmarks/{{stage}}/{{name}}.tsv)")
    return pd.DataFrame(rows)


def stage_times(benchmarks_dir: str | Path) -> pd.DataFrame:
    """Per stage in pipeline order: ``jobs``, ``job_minutes`` (summed wall), ``cpu_minutes`` (summed CPU),
    ``max_rss_mb`` (largest job), ``longest_job`` and its ``longest_minutes``; a last row ``total``."""
    jobs = benchmark_table(benchmarks_dir)
    order = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    rows = []
    for stage, group in sorted(jobs.groupby("stage"), key=lambda item: (order.get(item[0], len(order)), item[0])):
        longest = group.loc[group["seconds"].idxmax()]
        rows.append(
            {
                "stage": stage,
                "jobs": len(group),
                "job_minutes": group["seconds"].sum() / 60,
                "cpu_minutes": group["cpu_seconds"].sum() / 60,
                "max_rss_mb": group["max_rss_mb"].max(),
                "longest_job": longest["job"],
                "longest_minutes": longest["seconds"] / 60,
            }
        )
    table = pd.DataFrame(rows)
    total = {
        "stage": "total",
        "jobs": int(table["jobs"].sum()),
        "job_minutes": table["job_minutes"].sum(),
        "cpu_minutes": table["cpu_minutes"].sum(),
        "max_rss_mb": table["max_rss_mb"].max(),
        "longest_job": "",
        "longest_minutes": table["longest_minutes"].max(),
    }
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


def run_wall_seconds(snakemake_log: str | Path) -> float:
    """Seconds from the first to the last timestamp of a Snakemake log.

    Raises:
        CellResDMError: naming the log when it holds fewer than two timestamps.
    """
    stamps = [
        datetime.strptime(" ".join(match.group(1).split()), "%a %b %d %H:%M:%S %Y")
        for line in Path(snakemake_log).read_text().splitlines()
        if (match := _TIMESTAMP.match(line.strip()))
    ]
    if len(stamps) < 2:
        raise CellResDMError(f"{snakemake_log}: fewer than two timestamps, not a Snakemake run log")
    return (max(stamps) - min(stamps)).total_seconds()


def latest_snakemake_log(workdir: str | Path = ".") -> Path:
    """The newest ``.snakemake/log/*.snakemake.log`` of a working directory.

    Raises:
        CellResDMError: when the folder holds none.
    """
    logs = sorted(Path(workdir, ".snakemake", "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        raise CellResDMError(f"{Path(workdir, '.snakemake', 'log')}: no Snakemake run log")
    return logs[-1]


def stage_times_markdown(benchmarks_dir: str | Path, snakemake_log: str | Path | None = None) -> str:
    """The table of :func:`stage_times` as Markdown, with the run's wall time above it when a log is given."""
    table = stage_times(benchmarks_dir)
    lines = []
    if snakemake_log is not None:
        lines.append(f"Run wall time: {run_wall_seconds(snakemake_log) / 60:.1f} min ({snakemake_log})\n")
    lines.append("| stage | jobs | job minutes | CPU minutes | max RSS (MB) | longest job (min) |")
    lines.append("|---|---:|---:|---:|---:|---|")
    for row in table.itertuples():
        longest = f"{row.longest_job} ({row.longest_minutes:.1f})" if row.longest_job else f"{row.longest_minutes:.1f}"
        lines.append(
            f"| {row.stage} | {row.jobs} | {row.job_minutes:.1f} | {row.cpu_minutes:.1f} | {row.max_rss_mb:.0f} | "
            f"{longest} |"
        )
    return "\n".join(lines) + "\n"
