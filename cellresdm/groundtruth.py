"""Ground truth per plate: CellProfiler nuclei and cell instance labels (docs/design.md section 5, groundtruth).

CellProfiler 4.2.8.1 runs headless on the kept fields of one plate with the segmentation part of the cpg0000
(CPJUMP1) analysis pipeline (jump-cellpainting/2024_Chandrasekaran_NatureMethods,
pipelines/2020_11_04_CPJUMP1): background subtraction of the DNA image (CorrectIlluminationCalculate,
Background, then CorrectIlluminationApply, Subtract), IdentifyPrimaryObjects (Nuclei from DNA, global minimum
cross-entropy threshold with bounds, shape declumping) and IdentifySecondaryObjects (Cells, watershed on RNA).
No measurement modules: those belong to the features stage. The pipeline text is written by
:func:`cellresdm.cppipe.make_groundtruth_pipeline` from the settings of :class:`GroundTruthSettings`.

Outputs in ``out_dir``: ``{field}_labels.tiff`` ((2, H, W) uint16, [nuclei, cells]; a cell carries the
label of its nucleus) per kept field, and ``index.parquet`` (written last: it is the rule's output).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellresdm import layout
from cellresdm.cellprofiler import DEFAULT_CELLPROFILER, CellProfilerRunner, ChunkFolder, resolve_cellprofiler
from cellresdm.config import settings_values
from cellresdm.cppipe import make_groundtruth_pipeline
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.illumination import PlateIllumination, plate_illumination, write_corrected
from cellresdm.io import read_tiff, write_parquet, write_tiff
from cellresdm.results import field_labels_name

#: Pixel size (um) the reference pipeline's size settings were chosen for (CPJUMP1, 20x).
REFERENCE_PIXEL_SIZE_UM = 0.598
#: Columns of ``index.parquet``.
INDEX_COLUMNS = ["field", "labels", "n_nuclei", "n_cells", "seconds"]
#: The index's file name in the output folder (the rule's output: cellresdm.results ``groundtruth_index``).
INDEX_NAME = "index.parquet"
#: Columns of :func:`qc_against_truth`.
QC_COLUMNS = [
    "field",
    "object",
    "n_true",
    "n_pred",
    "tp",
    "fp",
    "fn",
    "precision",
    "recall",
    "f1",
    "mean_true_score",
]


@dataclass(frozen=True)
class GroundTruthSettings:
    """Segmentation settings of the ground-truth pipeline (config section ``groundtruth``).

    Built by :meth:`from_config` from the validated section: the config schema holds every default (the values
    of the cpg0000 analysis pipeline: modules CorrectIlluminationCalculate/Apply on DNA, IdentifyPrimaryObjects,
    IdentifySecondaryObjects, except ``discard_border_nuclei``) and every single-key check; this class checks
    only what spans keys. Sizes are in pixels at :data:`REFERENCE_PIXEL_SIZE_UM` (0.598 um/px) and are scaled
    by ``0.598 / pixel_size_um`` when the pipeline is written.

    Intensities in CellProfiler are counts / 65535, so threshold bounds are fractions of the 16-bit range: 0.014 =
    917 counts, 0.005 = 328 counts. The reference bounds were tuned on illumination-corrected real images, which is
    what the ground-truth pipeline reads where the plate has illumination functions (divided by a function >= 1, so
    a little dimmer than raw); raw fields (plates without functions) have a background of ~160-320 counts
    (0.0024-0.0049) with a p99 of 1.9k-14k counts. The bounds fit both: the nucleus threshold is computed on the
    background-subtracted DNA image (background ~0), so its lower bound 0.014 only stops noise from being segmented
    in empty fields; the cell bounds 0.005-0.014 lie between the RNA background and the cytoplasm (~600-1500 counts
    in the synthetic gallery and in real U2OS/A549 fields), and where the cross-entropy threshold of an uncorrected
    image falls above the upper bound the bound caps it (README of the reference pipelines). Both pairs of bounds
    are settings so a plate with brighter background or dimmer stain can move them.

    Attributes:
        pixel_size_um: pixel size of the images.
        nuclei_diameter: typical nucleus diameter range (min, max), px; objects outside are discarded.
        discard_outside_diameter: drop nuclei outside ``nuclei_diameter``.
        discard_border_nuclei: drop nuclei touching the image border. The reference pipeline says Yes (cut
            cells bias per-cell measurements); ground truth keeps them (False), because every visible
            nucleus needs its boundary in the training targets and the demo's true labels include them.
        declump_method, dividing_lines_method: "Shape" (reference), "Intensity" or "None".
        declump_smoothing_filter: size of the smoothing filter for declumping, px.
        maxima_min_distance: local maxima closer than this are suppressed, px.
        low_res_maxima: find maxima on a lower-resolution image (faster).
        nuclei_fill_holes: "Never" (reference), "After both thresholding and declumping" or
            "After declumping only".
        nuclei_threshold_method: global threshold method of the nuclei ("Minimum Cross-Entropy").
        nuclei_threshold_smoothing: Gaussian smoothing scale before thresholding, px.
        nuclei_threshold_correction: factor applied to the computed threshold.
        nuclei_threshold_bounds: (lower, upper) bounds on the nuclei threshold, fraction of 65535.
        nuclei_otsu_classes, nuclei_otsu_middle: three-class options (used by Otsu only).
        background_block_size: block size of the DNA background estimate, px.
        background_filter_size: Gaussian filter size of the DNA background estimate, px.
        cells_method: IdentifySecondaryObjects method ("Watershed - Image" on RNA).
        cells_threshold_method: global threshold method of the cells ("Minimum Cross-Entropy").
        cells_threshold_smoothing: smoothing scale before the cell threshold, px.
        cells_threshold_correction: factor applied to the cell threshold.
        cells_threshold_bounds: (lower, upper) bounds on the cell threshold, fraction of 65535.
        cells_otsu_classes, cells_otsu_middle: three-class options (used by Otsu only).
        cells_fill_holes: fill holes in cells.
        cells_distance: expansion of the Distance methods, px (unused by watershed).
        cells_regularization: regularization of the Propagation method (unused by watershed).
        adaptive_window: adaptive threshold window, px (unused by the global strategy).
    """

    pixel_size_um: float
    nuclei_diameter: tuple[float, float]
    discard_outside_diameter: bool
    discard_border_nuclei: bool
    declump_method: str
    dividing_lines_method: str
    declump_smoothing_filter: float
    maxima_min_distance: float
    low_res_maxima: bool
    nuclei_fill_holes: str
    nuclei_threshold_method: str
    nuclei_threshold_smoothing: float
    nuclei_threshold_correction: float
    nuclei_threshold_bounds: tuple[float, float]
    nuclei_otsu_classes: str
    nuclei_otsu_middle: str
    background_block_size: float
    background_filter_size: float
    cells_method: str
    cells_threshold_method: str
    cells_threshold_smoothing: float
    cells_threshold_correction: float
    cells_threshold_bounds: tuple[float, float]
    cells_otsu_classes: str
    cells_otsu_middle: str
    cells_fill_holes: bool
    cells_distance: float
    cells_regularization: float
    adaptive_window: float

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"groundtruth.{name}: {why} (got {getattr(self, name)!r})")

        lo, hi = self.nuclei_diameter
        if not 0 < lo < hi:
            raise bad("nuclei_diameter", "must be (min, max) with 0 < min < max")
        for name in ("nuclei_threshold_bounds", "cells_threshold_bounds"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi <= 1:
                raise bad(name, "must be (lower, upper) with 0 <= lower <= upper <= 1 (fractions of 65535)")

    @property
    def scale(self) -> float:
        """Factor from reference pixels to image pixels: 0.598 / pixel_size_um."""
        return REFERENCE_PIXEL_SIZE_UM / self.pixel_size_um

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> GroundTruthSettings:
        """Settings from the validated ``groundtruth`` config section (:func:`cellresdm.config.section` fills
        the schema's defaults). Keys that are not settings (QC, executable) are ignored; lists become tuples.

        Raises:
            ConfigError: the section lacks a setting (it was not validated against the schema).
        """
        return cls(**settings_values(cls, section, "groundtruth"))


# ----------------------------------------------------------------------------------------------- running


def _kept_fields(fields: pd.DataFrame, load_data: pd.DataFrame) -> pd.DataFrame:
    """Kept fields joined with their DNA and RNA paths and metadata, in the filter table's order."""
    need = ["field", "keep"]
    missing = [c for c in need if c not in fields.columns]
    if missing:
        raise CellResDMError(f"filter table lacks columns {missing}")
    paths = [layout.path_column(c) for c in ("DNA", "RNA")]
    missing = [c for c in ["field", *paths] if c not in load_data.columns]
    if missing:
        raise CellResDMError(f"load_data table lacks columns {missing}")
    meta = [c for c in ("Metadata_Plate", "Metadata_Well", "Metadata_Site") if c in fields.columns]
    kept = fields.loc[fields["keep"].astype(bool), ["field", *meta]].copy()
    if kept["field"].duplicated().any():
        raise CellResDMError(
            f"filter table lists fields twice: {sorted(set(kept.loc[kept['field'].duplicated(), 'field']))}"
        )
    if load_data["field"].duplicated().any():
        dup = sorted(set(load_data.loc[load_data["field"].duplicated(), "field"]))
        raise CellResDMError(f"load_data lists fields twice: {dup[:10]}")
    ld = load_data[["field", *paths]]
    merged = kept.merge(ld, on="field", how="left", validate="one_to_one")
    absent = merged.loc[merged[paths[0]].isna(), "field"].tolist()
    if absent:
        raise CellResDMError(f"{len(absent)} kept fields are absent from load_data: {absent[:10]}")
    for col in paths:
        gone = [p for p in merged[col] if not Path(p).is_file()]
        if gone:
            raise CellResDMError(f"{len(gone)} image files of {col} are missing, e.g. {gone[0]}")
    for col, default in (("Metadata_Plate", ""), ("Metadata_Well", ""), ("Metadata_Site", 0)):
        if col not in merged.columns:
            merged[col] = default
    return merged.reset_index(drop=True)


def _load_csv(chunk: pd.DataFrame) -> pd.DataFrame:
    """LoadData table of one chunk: file and folder names of OrigDNA and OrigRNA plus metadata."""
    table = pd.DataFrame(
        {
            "Metadata_Plate": chunk["Metadata_Plate"].astype(str).to_numpy(),
            "Metadata_Well": chunk["Metadata_Well"].astype(str).to_numpy(),
            "Metadata_Site": chunk["Metadata_Site"].to_numpy(),
            "Metadata_field": chunk["field"].astype(str).to_numpy(),
        }
    )
    for channel in ("DNA", "RNA"):
        full = [Path(p).resolve() for p in chunk[layout.path_column(channel)]]
        table[layout.filename_column(channel)] = [p.name for p in full]
        table[layout.pathname_column(channel)] = [str(p.parent) for p in full]
    return table


def _check_inputs(chunk: pd.DataFrame) -> None:
    """Decode the DNA and RNA images of every field (CellProfiler's reader silently accepts some truncated
    TIFFs, which would give wrong labels) and check that they are 2-D and of the same shape."""
    for field, dna, rna in zip(
        chunk["field"], chunk[layout.path_column("DNA")], chunk[layout.path_column("RNA")], strict=True
    ):
        a, b = read_tiff(dna, ndim=2), read_tiff(rna, ndim=2)
        if a.shape != b.shape:
            raise CellResDMError(f"{field}: DNA {dna} {a.shape} and RNA {rna} {b.shape} differ in shape")


def _segment_chunk(
    runner: CellProfilerRunner,
    work: Path,
    k: int,
    chunk: pd.DataFrame,
    keep_logs: Path,
    illum: PlateIllumination | None = None,
) -> tuple[Path, dict[str, float]]:
    """Run one chunk; return the folder of its label TIFFs and {field: seconds}.

    With ``illum`` (a corrected plate) CellProfiler reads illumination-corrected copies of the DNA and RNA
    images written into the chunk's folder (:func:`cellresdm.illumination.write_corrected`): the pipeline is
    the same for corrected and uncorrected plates, and its input pixels are those of the dataset stage.
    A failed chunk's log is kept at ``keep_logs/cellprofiler_chunk{k:04d}.log``.
    """
    folder = ChunkFolder.create(work, k)
    if illum is not None:
        chunk = write_corrected(chunk, illum, ("DNA", "RNA"), folder.root / "corrected")
    _load_csv(chunk).to_csv(folder.data_file, index=False)
    fields = chunk["field"].tolist()
    _check_inputs(chunk)
    run = runner.run(folder)
    out = folder.output
    produced = {f for f in fields if (out / f"{f}_nuclei.tiff").is_file() and (out / f"{f}_cells.tiff").is_file()}
    if run.returncode != 0 or len(produced) != len(fields):
        lacking = [f for f in fields if f not in produced]
        raise run.error(
            "finished without writing every label image",
            f"on chunk {k} ({len(fields)} fields, {fields[0]}..{fields[-1]}); "
            f"no labels for {len(lacking)} fields, e.g. {lacking[:5]}",
            keep_logs / f"cellprofiler_chunk{k:04d}.log",
        )
    return out, runner.finish(run, fields, f"chunk {k}")


def _read_cp_labels(path: Path) -> np.ndarray:
    labels = read_tiff(path, ndim=2)
    if not np.issubdtype(labels.dtype, np.integer):
        raise CellResDMError(f"{path}: CellProfiler wrote a non-integer label image ({labels.dtype})")
    return labels.astype(np.uint16, copy=False)


def _collect(chunk: pd.DataFrame, out: Path, out_dir: Path, seconds: dict[str, float]) -> list[dict]:
    rows = []
    for field in chunk["field"]:
        nuclei = _read_cp_labels(out / f"{field}_nuclei.tiff")
        cells = _read_cp_labels(out / f"{field}_cells.tiff")
        if nuclei.shape != cells.shape:
            raise CellResDMError(f"{field}: CellProfiler nuclei {nuclei.shape} and cells {cells.shape} differ")
        target = out_dir / field_labels_name(field)
        write_tiff(target, np.stack([nuclei, cells]))
        rows.append(
            {
                "field": field,
                "labels": str(target),
                "n_nuclei": int(np.count_nonzero(np.unique(nuclei))),
                "n_cells": int(np.count_nonzero(np.unique(cells))),
                "seconds": float(seconds[field]),
            }
        )
    return rows


def run_cellprofiler(
    fields: pd.DataFrame,
    load_data: pd.DataFrame,
    out_dir: Path,
    settings: GroundTruthSettings,
    cellprofiler: str = DEFAULT_CELLPROFILER,
    workers: int = 1,
    log: logging.Logger | None = None,
    progress: bool = True,
    chunk_size: int = 250,
    index_path: Path | None = None,
) -> pd.DataFrame:
    """Run CellProfiler headless on the kept fields of one plate (or of one shard of it: pass the shard's rows
    of the filter table and its ``index_path``) and write their labels and index.

    The kept fields are split into chunks of at most ``chunk_size`` image sets (at least ``workers``
    chunks when there are enough fields); each chunk is one CellProfiler process with its own LoadData CSV
    (the JVM starts once per chunk, not per field), ``workers`` chunks run in parallel. Each chunk's label
    images are converted to ``{out_dir}/{field}_labels.tiff`` as soon as it ends; CellProfiler's temporary
    outputs live in a hidden folder of ``out_dir`` that is removed at the end. ``index.parquet`` is
    written last and removed first, so it exists only after a complete run.

    Args:
        fields: filter table (``field``, ``keep``, and ``Metadata_Plate/Well/Site``).
        load_data: the plate's load_data table with ``field`` and ``path_{channel}`` (local TIFF paths), and
            ``illum_{channel}`` (its illumination functions) for a corrected plate.
        out_dir: output folder (``groundtruth/{plate}``).
        settings: segmentation settings.
        cellprofiler: CellProfiler executable (a path, or a name looked up on PATH).
        workers: CellProfiler processes run in parallel.
        log: logger (default: this module's).
        progress: show a progress bar (image sets).
        chunk_size: most image sets per CellProfiler process.
        index_path: the index to write (default ``out_dir/index.parquet``).

    Returns:
        The index: field, labels (path), n_nuclei, n_cells, seconds (CellProfiler seconds of the image set,
        with the process start-up shared out).

    Raises:
        CellResDMError: no CellProfiler executable, bad input tables, missing image files, or CellProfiler
            failed (the message holds the tail of its output and the path of the full log).
    """
    log = log or logging.getLogger(__name__)
    out_dir = Path(out_dir).absolute()  # CellProfiler runs in a folder of its own
    index_path = Path(index_path) if index_path is not None else out_dir / INDEX_NAME
    with contextlib.suppress(FileNotFoundError):
        index_path.unlink()
    if workers < 1 or chunk_size < 1:
        raise CellResDMError(f"workers and chunk_size must be >= 1, got {workers} and {chunk_size}")
    exe = resolve_cellprofiler(cellprofiler)
    kept = _kept_fields(fields, load_data)
    illum = plate_illumination(load_data)
    log.info("plate %s: illumination correction %s", illum.plate, "on" if illum.corrected else "off (no functions)")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if len(kept):
        n_chunks = max(math.ceil(len(kept) / chunk_size), min(workers, len(kept)))
        chunks = [c for c in np.array_split(np.arange(len(kept)), n_chunks) if len(c)]
        log.info("CellProfiler (%s) on %d fields: %d chunks, %d workers", exe, len(kept), len(chunks), workers)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(kept), desc="CellProfiler", unit="image set")
        with tempfile.TemporaryDirectory(prefix=".cellprofiler-", dir=out_dir) as work_name:
            work = Path(work_name)
            pipeline = work / "groundtruth.cppipe"
            pipeline.write_text(make_groundtruth_pipeline(settings))
            runner = CellProfilerRunner(exe, pipeline, log, bar)

            def segment(k: int) -> tuple[Path, dict[str, float]]:
                return _segment_chunk(runner, work, k, kept.iloc[chunks[k]], out_dir, illum)

            def collect(k: int, segmented: tuple[Path, dict[str, float]]) -> None:
                labels_dir, seconds = segmented
                rows.extend(_collect(kept.iloc[chunks[k]], labels_dir, out_dir, seconds))

            try:
                runner.run_parallel(segment, len(chunks), workers, collect)
            finally:
                if bar is not None:
                    bar.close()
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    if len(index):
        order = {f: i for i, f in enumerate(kept["field"])}
        index = index.sort_values("field", key=lambda s: s.map(order)).reset_index(drop=True)
        log.info(
            "CellProfiler labels of %d fields: %.1f nuclei and %.1f cells per field, %.2f s per image set",
            len(index),
            index["n_nuclei"].mean(),
            index["n_cells"].mean(),
            index["seconds"].mean(),
        )
    index = index.astype({"n_nuclei": "int64", "n_cells": "int64", "seconds": "float64"})
    write_parquet(index, index_path)
    return index


# ----------------------------------------------------------------------------------------------- QC


def _match_row(field: str, obj: str, true: np.ndarray, pred: np.ndarray, iou: float) -> dict:
    from stardist.matching import matching

    m = matching(true, pred, thresh=iou, criterion="iou", report_matches=False)
    return {
        "field": field,
        "object": obj,
        "n_true": int(m.n_true),
        "n_pred": int(m.n_pred),
        "tp": int(m.tp),
        "fp": int(m.fp),
        "fn": int(m.fn),
        "precision": float(m.precision),
        "recall": float(m.recall),
        "f1": float(m.f1),
        "mean_true_score": float(m.mean_true_score),
    }


def gather_index(shards: Sequence[str | os.PathLike], fields: pd.DataFrame, out: str | os.PathLike) -> pd.DataFrame:
    """Put the shard indexes of one plate together (:mod:`cellresdm.shards`) as :func:`run_cellprofiler` would
    have written the plate's index in one job: rows in the filter table's order.

    Args:
        shards: the shard indexes (``groundtruth/{plate}/shards/{shard}.parquet``).
        fields: the plate's filter table (``field``, ``keep``).
        out: the plate's index (``groundtruth/{plate}/index.parquet``), written atomically.

    Raises:
        CellResDMError: a shard index lacks columns, a field is in two shards, or a labelled field is not a
            kept field of the filter table.
    """
    parts = []
    for path in shards:
        part = pd.read_parquet(path)
        missing = [c for c in INDEX_COLUMNS if c not in part.columns]
        if missing:
            raise CellResDMError(f"{path}: ground-truth shard index lacks columns {missing}")
        parts.append(part[INDEX_COLUMNS])
    index = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=INDEX_COLUMNS)
    twice = index["field"][index["field"].duplicated()].tolist()
    if twice:
        raise CellResDMError(f"{out}: fields {twice[:5]} are in two ground-truth shards")
    order = {f: i for i, f in enumerate(fields.loc[fields["keep"].astype(bool), "field"])}
    stray = sorted(set(index["field"]) - set(order))
    if stray:
        raise CellResDMError(f"{out}: shards labelled fields that the filter table does not keep: {stray[:5]}")
    index = index.sort_values("field", key=lambda s: s.map(order)).reset_index(drop=True)
    index = index.astype(
        {"field": "str", "labels": "str", "n_nuclei": "int64", "n_cells": "int64", "seconds": "float64"}
    )
    write_parquet(index, out)
    return index


def qc_against_truth(index: pd.DataFrame, truth_dir: Path, iou: float = 0.5) -> pd.DataFrame:
    """Compare the labels of ``index`` with true labels at ``truth_dir/{field}_labels.tiff``.

    Both are (2, H, W) [nuclei, cells]. Per field and object, ``stardist.matching.matching(true, pred,
    thresh=iou)``: columns field, object ('nuclei'/'cells'), n_true, n_pred, tp, fp, fn, precision, recall,
    f1, mean_true_score (mean IoU of matched pairs over all true objects).
    """
    if not 0 < iou <= 1:
        raise CellResDMError(f"QC IoU threshold must be in (0, 1], got {iou}")
    truth_dir = Path(truth_dir)
    rows = []
    for field, path in zip(index["field"], index["labels"], strict=True):
        pred = read_tiff(path, ndim=3)
        true = read_tiff(truth_dir / field_labels_name(field), ndim=3)
        if pred.shape != true.shape or pred.shape[0] != len(layout.OBJECT_CHANNELS):
            raise CellResDMError(
                f"{field}: labels {pred.shape} ({path}) and true labels {true.shape} must both be (2, H, W)"
            )
        for k, obj in enumerate(layout.OBJECT_CHANNELS):
            rows.append(_match_row(field, obj, true[k].astype(np.int32), pred[k].astype(np.int32), iou))
    return pd.DataFrame(rows, columns=QC_COLUMNS)


def qc_summary(qc: pd.DataFrame) -> pd.DataFrame:
    """Pooled QC per object: sums of n_true, n_pred, tp, fp, fn; precision, recall and F1 of the sums;
    mean of the per-field mean_true_score; n_fields. Objects in the order nuclei, cells."""
    rows = []
    for obj in [o for o in layout.OBJECT_CHANNELS if o in set(qc["object"])]:
        g = qc[qc["object"] == obj]
        tp, fp, fn = (int(g[c].sum()) for c in ("tp", "fp", "fn"))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        rows.append(
            {
                "object": obj,
                "n_fields": int(g["field"].nunique()),
                "n_true": int(g["n_true"].sum()),
                "n_pred": int(g["n_pred"].sum()),
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "mean_true_score": float(g["mean_true_score"].mean()),
            }
        )
    cols = ["object", "n_fields", *QC_COLUMNS[2:]]
    return pd.DataFrame(rows, columns=cols)
