"""The demo's quality bars, checked on a run's own tables, and their spread over runs of several training seeds.

The bars (issue "a 45-minute demo"): the reference method (CellResDM) beats the BF copy on SSIM in every IF
channel; it is best, or within ``margin`` (0.02) of the best method, on SSIM in at least ``min_channels`` (3) of
the 5 channels; its nuclei F1 at IoU 0.5 from its own boundary channels is at least ``min_f1`` (0.9).
They read ``metrics/image_quality_summary.csv`` (method, channel, ssim) and
``segmentation/segmentation_summary.csv`` (source, object, f1) of a results folder. ``cellresdm quality-bars
RESULTS [RESULTS ...]`` prints the bars of each run and, for several runs (``make demo-seeds``), the spread of
every method's SSIM and F1 over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cellresdm import layout
from cellresdm.errors import CellResDMError
from cellresdm.metrics import TRIVIAL
from cellresdm.results import ResultsLayout


@dataclass(frozen=True)
class QualityBars:
    """Thresholds of the demo's quality bars."""

    method: str = "cellresdm"
    margin: float = 0.02
    min_channels: int = 3
    min_f1: float = 0.9


def _read(path: str | Path, columns: set[str]) -> pd.DataFrame:
    if not Path(path).is_file():
        raise CellResDMError(f"{path}: missing (run the pipeline up to the evaluation first)")
    table = pd.read_csv(path)
    lacking = columns - set(table.columns)
    if lacking:
        raise CellResDMError(f"{path}: lacks column(s) {', '.join(sorted(lacking))}")
    return table


def run_scores(results: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """SSIM as a (method x channel) table and F1 as a (source x object) table of one results folder."""
    layout_ = ResultsLayout(str(results))
    quality = _read(layout_.image_quality_summary(), {"method", "channel", "ssim"})
    segmentation = _read(layout_.segmentation_summary(), {"source", "object", "f1"})
    ssim = quality.pivot(index="method", columns="channel", values="ssim")
    ssim = ssim[[c for c in layout.IF_CHANNELS if c in ssim.columns]]
    return ssim, segmentation.pivot(index="source", columns="object", values="f1")


def check_bars(ssim: pd.DataFrame, f1: pd.DataFrame, bars: QualityBars = QualityBars()) -> pd.DataFrame:
    """The three bars for one run: ``bar``, ``value`` (what was measured, as text) and ``passed``.

    Args:
        ssim: SSIM per method (rows, the trivial BF copy included) and IF channel (columns).
        f1: F1 at IoU 0.5 per source (rows) and object (columns ``nuclei``, ``cells``).

    Raises:
        CellResDMError: when the method, the BF copy or the nuclei F1 is absent.
    """
    for name in (bars.method, TRIVIAL):
        if name not in ssim.index:
            raise CellResDMError(f"no SSIM of {name!r} in the image-quality summary (has {list(ssim.index)})")
    if bars.method not in f1.index or "nuclei" not in f1.columns:
        raise CellResDMError(f"no nuclei F1 of {bars.method!r} in the segmentation summary")
    own = ssim.loc[bars.method]
    margin_of_best = ssim.drop(index=TRIVIAL).max() - own
    near_best = [c for c in ssim.columns if margin_of_best[c] <= bars.margin]
    below_copy = [c for c in ssim.columns if own[c] <= ssim.loc[TRIVIAL, c]]
    nuclei_f1 = float(f1.loc[bars.method, "nuclei"])
    return pd.DataFrame(
        [
            {
                "bar": "SSIM above the BF copy in every channel",
                "value": "all channels" if not below_copy else f"not in {', '.join(below_copy)}",
                "passed": not below_copy,
            },
            {
                "bar": f"SSIM best or within {bars.margin} of best in >= {bars.min_channels} channels",
                "value": f"{len(near_best)} ({', '.join(near_best)})",
                "passed": len(near_best) >= bars.min_channels,
            },
            {
                "bar": f"nuclei F1 at IoU 0.5 >= {bars.min_f1}",
                "value": f"{nuclei_f1:.3f}",
                "passed": nuclei_f1 >= bars.min_f1,
            },
        ]
    )


def spread(runs: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> pd.DataFrame:
    """Mean, standard deviation, min and max over runs of every method's SSIM per channel and F1 per object.

    Rows ``(method, measure)`` with measure ``SSIM DNA`` ... ``F1 nuclei``, ``F1 cells``; only methods present in
    every run; column ``runs`` counts them."""
    long = []
    for name, (ssim, f1) in runs.items():
        for method, row in ssim.iterrows():
            long += [{"run": name, "method": method, "measure": f"SSIM {c}", "value": v} for c, v in row.items()]
        for source, row in f1.iterrows():
            long += [{"run": name, "method": source, "measure": f"F1 {o}", "value": v} for o, v in row.items()]
    table = pd.DataFrame(long)
    stats = table.groupby(["method", "measure"], sort=False)["value"].agg(["mean", "std", "min", "max", "count"])
    return stats[stats["count"] == len(runs)].rename(columns={"count": "runs"}).reset_index()


def quality_bars_markdown(results: list[str | Path], bars: QualityBars = QualityBars()) -> str:
    """Markdown: the bars of each results folder, then (several folders) the spread of SSIM and F1 over them."""
    if not results:
        raise CellResDMError("no results folder given")
    scores = {str(r): run_scores(r) for r in results}
    lines = []
    for name, (ssim, f1) in scores.items():
        checks = check_bars(ssim, f1, bars)
        lines += [f"### {name}: {'all bars pass' if checks['passed'].all() else 'BARS FAIL'}", ""]
        lines += ["| bar | measured | passed |", "|---|---|---|"]
        lines += [f"| {r.bar} | {r.value} | {'yes' if r.passed else 'no'} |" for r in checks.itertuples()]
        lines.append("")
    if len(scores) > 1:
        table = spread(scores)
        lines += [f"### Spread over {len(scores)} runs", "", "| method | measure | mean | sd | min | max |"]
        lines.append("|---|---|---:|---:|---:|---:|")
        lines += [
            f"| {r.method} | {r.measure} | {r.mean:.3f} | {r.std:.3f} | {r.min:.3f} | {r.max:.3f} |"
            for r in table.itertuples()
        ]
        lines.append("")
    return "\n".join(lines)
