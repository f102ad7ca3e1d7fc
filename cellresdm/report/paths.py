"""What the report reads (:class:`ReportInputs`) and writes (:class:`ReportOutputs`), and which inputs each
output needs (:func:`lacking_inputs`). Every path is explicit: the results layout is the caller's business."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from cellresdm.report.reading import exists

Paths = dict[str, str | os.PathLike]


@dataclass
class ReportInputs:
    """Paths the report reads; ``None`` (or an absent entry of a mapping) means the run has no such input.

    Attributes:
        dataset: the test dataset zarr (``bf``, ``if``, ``boundaries``, ``fields.parquet``).
        predictions: method -> its test predictions zarr (``if``, ``boundaries``).
        quality: image-quality table (:func:`cellresdm.metrics.image_quality`).
        quality_ttests: its paired t-tests (:func:`cellresdm.metrics.quality_ttests`).
        segmentation_summary, segmentation_ttests: segmentation score tables (HTML only).
        fig6, fig7: the segmentation rule's PNGs, copied into the report.
        instances: source -> its instances zarr (attrs ``seconds_per_field``).
        sample_benchmarks: method -> its sampling benchmark JSON.
        train_benchmarks: method -> Snakemake's training benchmark TSV (column ``s``).
        groundtruth_indexes: plate -> its CellProfiler ``index.parquet`` (column ``seconds``).
        models: method -> its ``model.pt`` (trained when the file exists).
        fields: plate -> its filter table (columns keep, reason).
        qc_summary: ground-truth QC summary (demo only; HTML only).
        illumination: plate -> its illumination QC CSV (:func:`cellresdm.illumination.falloff_qc`; HTML only).
        table2: the features stage's Table 2 CSV.
        profiles_summary, profiles_figure: the profiles stage's summary CSV and mAP figure.
        predict_montages: name ("plate (method)") -> montage PNG of a predict plate (HTML only).
    """

    dataset: str | os.PathLike | None = None
    predictions: Paths = field(default_factory=dict)
    quality: str | os.PathLike | None = None
    quality_ttests: str | os.PathLike | None = None
    segmentation_summary: str | os.PathLike | None = None
    segmentation_ttests: str | os.PathLike | None = None
    fig6: str | os.PathLike | None = None
    fig7: str | os.PathLike | None = None
    instances: Paths = field(default_factory=dict)
    sample_benchmarks: Paths = field(default_factory=dict)
    train_benchmarks: Paths = field(default_factory=dict)
    groundtruth_indexes: Paths = field(default_factory=dict)
    models: Paths = field(default_factory=dict)
    fields: Paths = field(default_factory=dict)
    qc_summary: str | os.PathLike | None = None
    table2: str | os.PathLike | None = None
    illumination: Paths = field(default_factory=dict)
    profiles_summary: str | os.PathLike | None = None
    profiles_figure: str | os.PathLike | None = None
    predict_montages: Paths = field(default_factory=dict)


@dataclass
class ReportOutputs:
    """Paths the report writes; ``None`` = not wanted.

    Attributes:
        html: the self-contained report page (embeds every figure and table written).
        fig4, fig5: Fig. 4 (examples) and Fig. 5 (image quality) PNGs.
        fig6, fig7: copies of the segmentation rule's PNGs.
        table2: copy of the features stage's Table 2 CSV.
        table3, throughput, methods, filtering: the report's CSV tables.
        profiles, profiles_summary: copies of the profiles stage's mAP figure and summary.
    """

    html: str | os.PathLike | None = None
    fig4: str | os.PathLike | None = None
    fig5: str | os.PathLike | None = None
    fig6: str | os.PathLike | None = None
    fig7: str | os.PathLike | None = None
    table2: str | os.PathLike | None = None
    table3: str | os.PathLike | None = None
    throughput: str | os.PathLike | None = None
    methods: str | os.PathLike | None = None
    filtering: str | os.PathLike | None = None
    profiles: str | os.PathLike | None = None
    profiles_summary: str | os.PathLike | None = None

    def wanted(self) -> dict[str, Path]:
        """Output name -> path of every wanted output, in field order."""
        return {
            f.name: Path(getattr(self, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name) is not None
        }


def _needs(inputs: ReportInputs) -> dict[str, list[tuple[str, str | os.PathLike | None, bool]]]:
    """Output name -> its required inputs as (what, path, is a zarr store). The methods table and the HTML need
    none (the methods table reports which models and predictions exist); training benchmarks are not rule
    inputs (Snakemake writes them after a job), so a missing one is listed in the HTML instead."""
    quality = ("image quality table", inputs.quality, False)
    samples = [(f"sampling benchmark of {m}", p, False) for m, p in inputs.sample_benchmarks.items()]
    return {
        "fig4": [
            ("test dataset", inputs.dataset, True),
            quality,
            *((f"predictions of {m}", p, True) for m, p in inputs.predictions.items()),
        ],
        "fig5": [quality],
        "fig6": [("Fig. 6 of the segmentation rule", inputs.fig6, False)],
        "fig7": [("Fig. 7 of the segmentation rule", inputs.fig7, False)],
        "table2": [("Table 2 of the features stage", inputs.table2, False)],
        "table3": [quality, *samples],
        "throughput": [
            *samples,
            *((f"instances of {s}", p, True) for s, p in inputs.instances.items()),
            *((f"CellProfiler index of {p}", path, False) for p, path in inputs.groundtruth_indexes.items()),
        ],
        "filtering": [(f"filter table of {p}", path, False) for p, path in inputs.fields.items()],
        "profiles": [("mAP figure of the profiles stage", inputs.profiles_figure, False)],
        "profiles_summary": [("summary of the profiles stage", inputs.profiles_summary, False)],
    }


def lacking_inputs(inputs: ReportInputs, outputs: ReportOutputs) -> list[str]:
    """One line per wanted output and input it needs that does not exist (empty: every wanted output can be
    written). Fig. 4 also needs at least one method's predictions."""
    needs = _needs(inputs)
    lines = []
    for name, path in outputs.wanted().items():
        if name == "fig4" and not inputs.predictions:
            lines.append(f"{name} ({path}) needs predictions of at least one method, none given")
        for what, source, zarr_store in needs.get(name, []):
            if not exists(source, zarr_store):
                lines.append(f"{name} ({path}) needs the {what}: {source if source is not None else 'no path given'}")
    return lines
