"""The report stage (docs/design.md section 5, ``report``): every wanted figure and table of :class:`ReportOutputs`
from the run's files in :class:`ReportInputs`, and the self-contained HTML page that shows them."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cellresdm.errors import CellResDMError
from cellresdm.io import atomic_path
from cellresdm.metrics import quality_ttests
from cellresdm.report.figures import FIG5_METRICS, fig4_examples, fig5_quality
from cellresdm.report.page import figure_section, profiles_section, render_page, table_section
from cellresdm.report.paths import ReportInputs, ReportOutputs, lacking_inputs
from cellresdm.report.reading import exists, read_table
from cellresdm.report.tables import filtering_summary, methods_status, table3_latent, throughput_table

_LOG = logging.getLogger("cellresdm")


def _present(
    paths: Mapping[str, str | os.PathLike], missing: list[tuple[str, str]], what: str, zarr_store: bool = False
) -> dict[str, str | os.PathLike]:
    """The entries of ``paths`` that exist; the others are added to ``missing``."""
    found = {}
    for key, path in paths.items():
        if exists(path, zarr_store):
            found[key] = path
        else:
            missing.append((f"{what} of {key}", str(path)))
    return found


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def write_report(
    inputs: ReportInputs,
    outputs: ReportOutputs,
    config: Mapping[str, Any] | None = None,
    all_methods: Sequence[str] | None = None,
    reference: str | None = None,
) -> dict[str, Any]:
    """Write every wanted output of ``outputs``; the HTML embeds every figure and table written, with a caption
    each and the run's config summary.

    Before writing anything, every wanted output's inputs must exist (:func:`lacking_inputs`). Optional inputs
    (the image-quality t-tests, recomputed when absent; training benchmarks; the segmentation tables and the QC
    summary shown only in the HTML) may be missing: the HTML lists each given one that is absent under
    "Missing inputs" (so does the returned ``missing``).

    Args:
        inputs: the run's files (:class:`ReportInputs`).
        outputs: the files to write (:class:`ReportOutputs`; ``None`` = not wanted).
        config: the validated pipeline config (methods, reference, plates; shown in the report).
        all_methods: every method the package implements (default ``cellresdm.methods.method_names()``).
        reference: the method compared with the others (default config ``reference``, else ``cellresdm``).

    Returns:
        ``written`` (output name -> path of each file written), ``missing`` (list of (item, path looked for))
        and ``fig4_index`` (the field shown, or None).

    Raises:
        CellResDMError: a wanted output lacks an input (one message naming every such output and input path).
    """
    lacking = lacking_inputs(inputs, outputs)
    if lacking:
        raise CellResDMError("report outputs lack their inputs:\n  " + "\n  ".join(lacking))
    wanted = outputs.wanted()
    config = dict(config or {})
    reference = reference or config.get("reference") or "cellresdm"
    if all_methods is None:
        from cellresdm.methods import method_names

        all_methods = method_names()
    config_methods = list(config.get("methods", inputs.predictions))
    missing: list[tuple[str, str]] = []
    written: dict[str, Path] = {}
    sections: list[str] = []

    def figure(key: str, title: str) -> None:
        sections.append(figure_section(key, title, written[key]))

    def table(key: str, title: str, frame: pd.DataFrame) -> None:
        """A CSV output (when wanted) shown in the HTML."""
        written[key] = wanted[key]
        _write_csv(frame, written[key])
        sections.append(table_section(key, title, frame))

    def optional(path: str | os.PathLike | None, item: str) -> bool:
        """Whether an optional input exists; a given one that does not is listed as missing."""
        if exists(path):
            return True
        if path is not None:
            missing.append((item, str(path)))
        return False

    quality = read_table(inputs.quality, "image quality table") if exists(inputs.quality) else None
    if quality is None and inputs.quality is not None:
        missing.append(("image quality table (Figs. 4-5, Table 3)", str(inputs.quality)))
    predictions = _present(inputs.predictions, missing, "predictions", zarr_store=True)
    samples = _present(inputs.sample_benchmarks, missing, "sampling benchmark")

    # Fig. 4
    fig4_index = None
    if "fig4" in wanted:
        written["fig4"] = wanted["fig4"]
        fig4_index = fig4_examples(inputs.dataset, predictions, written["fig4"], quality=quality, reference=reference)
        figure("fig4", "Fig. 4: example predictions")
    elif inputs.dataset is not None and not exists(inputs.dataset, zarr_store=True):
        missing.append(("test dataset (Fig. 4)", str(inputs.dataset)))

    # Fig. 5 and the quality summary
    if quality is not None:
        if "fig5" in wanted:
            if exists(inputs.quality_ttests):
                ttests = read_table(inputs.quality_ttests, "image-quality t-tests")
            else:
                # the markers are still drawn: the same tests the evaluate rule runs, from the quality table
                item = "image-quality t-tests (Fig. 5 markers recomputed here)"
                missing.append((item, str(inputs.quality_ttests) if inputs.quality_ttests else "no path given"))
                ttests = quality_ttests(quality, reference=reference)
            written["fig5"] = wanted["fig5"]
            fig5_quality(quality, ttests, written["fig5"], reference=reference)
            figure("fig5", "Fig. 5: image quality")
        means = quality.groupby(["method", "channel"], sort=False)[list(FIG5_METRICS)].mean().reset_index()
        sections.append(table_section("quality_summary", "Image quality summary", means))

    # Figs. 6 and 7, copied from the segmentation rule
    for key, title in (("fig6", "Fig. 6: segmentation of generated images"), ("fig7", "Fig. 7: vs StarDist")):
        source = getattr(inputs, key)
        if key in wanted:
            written[key] = wanted[key]
            with atomic_path(written[key], suffix=".png") as tmp:
                shutil.copyfile(source, tmp)
            figure(key, title)
        else:
            optional(source, f"{title.split(':')[0]} from the segmentation rule")
    for key, title in (
        ("segmentation_summary", "Segmentation summary"),
        ("segmentation_ttests", "Segmentation t-tests"),
    ):
        path = getattr(inputs, key)
        if optional(path, title):
            sections.append(table_section(key, title, read_table(path, title)))

    # Profiles (the headline evaluation: shown first)
    profiles_config = dict(config.get("profiles") or {})
    if "profiles" in wanted:
        written["profiles"] = wanted["profiles"]
        with atomic_path(written["profiles"], suffix=".png") as tmp:
            shutil.copyfile(inputs.profiles_figure, tmp)
        sections.insert(0, profiles_section(written["profiles"], profiles_config))
    else:
        optional(inputs.profiles_figure, "mAP figure of the profiles stage")
    if "profiles_summary" in wanted:
        summary = read_table(inputs.profiles_summary, "profiles summary")
        written["profiles_summary"] = wanted["profiles_summary"]
        _write_csv(summary, written["profiles_summary"])
        sections.insert(
            1 if "profiles" in wanted else 0, table_section("profiles_summary", "Profiles: mAP per source", summary)
        )
    else:
        optional(inputs.profiles_summary, "summary of the profiles stage")

    # Table 2 (features stage)
    if "table2" in wanted:
        table("table2", "Table 2: CellProfiler feature correlation", read_table(inputs.table2, "Table 2"))
    else:
        optional(inputs.table2, "Table 2 (features stage)")

    # Table 3
    if "table3" in wanted:
        table("table3", "Table 3: pixel vs latent CellResDM", table3_latent(quality, samples, pixel=reference))

    # Throughput
    instances = _present(inputs.instances, missing, "instances", zarr_store=True)
    indexes = _present(inputs.groundtruth_indexes, missing, "CellProfiler index")
    trains = _present(inputs.train_benchmarks, missing, "training benchmark")
    if "throughput" in wanted:
        table("throughput", "Throughput", throughput_table(samples, instances, indexes, trains, reference=reference))

    # Methods, filtering, QC
    if "methods" in wanted:
        status = methods_status(config_methods, all_methods, inputs.models, inputs.predictions)
        table("methods", "Methods", status)
    fields = _present(inputs.fields, missing, "filter table")
    if "filtering" in wanted:
        table("filtering", "Field filtering", filtering_summary(fields))
    illumination = _present(inputs.illumination, missing, "illumination QC")
    if illumination:
        frames = [read_table(path, f"illumination QC of plate {plate}") for plate, path in illumination.items()]
        sections.append(table_section("illumination", "Illumination correction", pd.concat(frames, ignore_index=True)))
    montages = _present(inputs.predict_montages, missing, "predict plate montage")
    for k, (name, path) in enumerate(montages.items()):
        sections.append(figure_section(f"predict_{k}", f"Predict plate {name}: virtual Cell Painting", Path(path)))
    if optional(inputs.qc_summary, "ground-truth QC summary (demo)"):
        qc = read_table(inputs.qc_summary, "ground-truth QC summary")
        sections.append(table_section("qc", "Ground-truth QC", qc))

    if "html" in wanted:
        written["html"] = wanted["html"]
        with atomic_path(written["html"]) as tmp:
            tmp.write_text(render_page(config, sections, missing), encoding="utf-8")
    for item, path in missing:
        _LOG.info("report: missing %s (%s)", item, path)
    _LOG.info("report: wrote %s", ", ".join(p.name for p in written.values()))
    return {"written": written, "missing": missing, "fig4_index": fig4_index}
