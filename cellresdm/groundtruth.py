"""Ground truth per plate: CellProfiler nuclei and cell instance labels (DESIGN.md section 5, groundtruth).

CellProfiler 4.2.8.1 runs headless on the kept fields of one plate with the segmentation part of the cpg0000
(CPJUMP1) analysis pipeline (jump-cellpainting/2024_Chandrasekaran_NatureMethods,
pipelines/2020_11_04_CPJUMP1): background subtraction of the DNA image (CorrectIlluminationCalculate,
Background, then CorrectIlluminationApply, Subtract), IdentifyPrimaryObjects (Nuclei from DNA, global minimum
cross-entropy threshold with bounds, shape declumping) and IdentifySecondaryObjects (Cells, watershed on RNA).
No measurement modules: those belong to the features stage.

Outputs in ``out_dir``: ``{field}_labels.tiff`` ((2, H, W) uint16, [nuclei, cells]; a cell carries the
label of its nucleus) per kept field, and ``index.parquet`` (written last: it is the rule's output).
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np
import pandas as pd

from cellresdm import layout
from cellresdm.cellprofiler import DEFAULT_CELLPROFILER, CellProfilerRunner, ChunkFolder, resolve_cellprofiler
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.io import read_tiff, write_parquet, write_tiff

#: Pixel size (um) the reference pipeline's size settings were chosen for (CPJUMP1, 20x).
REFERENCE_PIXEL_SIZE_UM = 0.598
#: Columns of ``index.parquet``.
INDEX_COLUMNS = ["field", "labels", "n_nuclei", "n_cells", "seconds"]
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

_THRESHOLD_METHODS = ("Minimum Cross-Entropy", "Otsu", "Robust Background")
_DECLUMP_METHODS = ("Intensity", "Shape", "None")
_FILL_HOLES = ("Never", "After both thresholding and declumping", "After declumping only")
_SECONDARY_METHODS = (
    "Watershed - Image",
    "Propagation",
    "Watershed - Gradient",
    "Distance - N",
    "Distance - B",
)
_OTSU_CLASSES = ("Two classes", "Three classes")
_MIDDLE_CLASS = ("Foreground", "Background")


@dataclass(frozen=True)
class SegmentationSettings:
    """Segmentation settings of the ground-truth pipeline.

    Sizes are in pixels at :data:`REFERENCE_PIXEL_SIZE_UM` (0.598 um/px) and are scaled by
    ``0.598 / pixel_size_um`` when the pipeline is written; every default is the value of the cpg0000
    analysis pipeline (modules CorrectIlluminationCalculate/Apply on DNA, IdentifyPrimaryObjects,
    IdentifySecondaryObjects), except ``discard_border_nuclei`` (see below).

    Intensities in CellProfiler are counts / 65535, so threshold bounds are fractions of the 16-bit range:
    0.014 = 917 counts, 0.005 = 328 counts. The reference bounds were tuned on illumination-corrected real
    images; the ground-truth pipeline reads raw (or synthetic) fields, whose background is ~160-320 counts
    (0.0024-0.0049) with a p99 of 1.9k-14k counts. The bounds still fit: the nucleus threshold is computed on
    the background-subtracted DNA image (background ~0), so its lower bound 0.014 only stops noise from
    being segmented in empty fields; the cell bounds 0.005-0.014 lie between the RNA background and the
    cytoplasm (~600-1500 counts in the synthetic gallery and in real U2OS/A549 fields), and where the
    cross-entropy threshold of an uncorrected image falls above the upper bound the bound caps it
    (README of the reference pipelines). Both pairs of bounds are settings so a plate with brighter
    background or dimmer stain can move them.

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

    pixel_size_um: float = REFERENCE_PIXEL_SIZE_UM
    nuclei_diameter: tuple[float, float] = (10, 75)
    discard_outside_diameter: bool = True
    discard_border_nuclei: bool = False
    declump_method: str = "Shape"
    dividing_lines_method: str = "Shape"
    declump_smoothing_filter: float = 7
    maxima_min_distance: float = 8
    low_res_maxima: bool = True
    nuclei_fill_holes: str = "Never"
    nuclei_threshold_method: str = "Minimum Cross-Entropy"
    nuclei_threshold_smoothing: float = 3.0
    nuclei_threshold_correction: float = 1.25
    nuclei_threshold_bounds: tuple[float, float] = (0.014, 1.0)
    nuclei_otsu_classes: str = "Three classes"
    nuclei_otsu_middle: str = "Background"
    background_block_size: float = 30
    background_filter_size: float = 50
    cells_method: str = "Watershed - Image"
    cells_threshold_method: str = "Minimum Cross-Entropy"
    cells_threshold_smoothing: float = 0.0
    cells_threshold_correction: float = 1.0
    cells_threshold_bounds: tuple[float, float] = (0.005, 0.014)
    cells_otsu_classes: str = "Three classes"
    cells_otsu_middle: str = "Foreground"
    cells_fill_holes: bool = True
    cells_distance: float = 10
    cells_regularization: float = 0.05
    adaptive_window: float = 100

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"groundtruth.{name}: {why} (got {getattr(self, name)!r})")

        if not (isinstance(self.pixel_size_um, int | float) and self.pixel_size_um > 0):
            raise bad("pixel_size_um", "must be a number > 0")
        lo, hi = self.nuclei_diameter
        if not 0 < lo < hi:
            raise bad("nuclei_diameter", "must be (min, max) with 0 < min < max")
        for name in ("nuclei_threshold_bounds", "cells_threshold_bounds"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi <= 1:
                raise bad(name, "must be (lower, upper) with 0 <= lower <= upper <= 1 (fractions of 65535)")
        choices = {
            "declump_method": _DECLUMP_METHODS,
            "dividing_lines_method": ("Intensity", "Shape", "Propagate"),
            "nuclei_fill_holes": _FILL_HOLES,
            "nuclei_threshold_method": _THRESHOLD_METHODS,
            "cells_threshold_method": _THRESHOLD_METHODS,
            "cells_method": _SECONDARY_METHODS,
            "nuclei_otsu_classes": _OTSU_CLASSES,
            "cells_otsu_classes": _OTSU_CLASSES,
            "nuclei_otsu_middle": _MIDDLE_CLASS,
            "cells_otsu_middle": _MIDDLE_CLASS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise bad(name, f"must be one of {list(allowed)}")
        for name in (
            "declump_smoothing_filter",
            "maxima_min_distance",
            "background_block_size",
            "background_filter_size",
            "adaptive_window",
            "nuclei_threshold_correction",
            "cells_threshold_correction",
        ):
            if not getattr(self, name) > 0:
                raise bad(name, "must be > 0")
        for name in (
            "nuclei_threshold_smoothing",
            "cells_threshold_smoothing",
            "cells_distance",
            "cells_regularization",
        ):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")

    @property
    def scale(self) -> float:
        """Factor from reference pixels to image pixels: 0.598 / pixel_size_um."""
        return REFERENCE_PIXEL_SIZE_UM / self.pixel_size_um

    @classmethod
    def from_config(cls, section: dict) -> SegmentationSettings:
        """Settings from a config section: keys named like the attributes; unknown keys are ignored
        (the ``groundtruth`` section also holds QC and executable keys). Lists become tuples."""
        names = set(cls.__dataclass_fields__)
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items() if k in names}
        return cls(**kwargs)


def _yes(flag: bool) -> str:
    return "Yes" if flag else "No"


def _px(value: float, scale: float, minimum: int = 1) -> int:
    return max(int(round(value * scale)), minimum)


def _num(value: float) -> str:
    return f"{value:.6g}"


def make_pipeline(settings: SegmentationSettings) -> str:
    """The ``.cppipe`` text of the ground-truth pipeline for ``settings`` (sizes scaled to the pixel size).

    LoadData reads a CSV (given with ``--data-file``) with ``FileName_/PathName_OrigDNA``,
    ``FileName_/PathName_OrigRNA`` and ``Metadata_Plate, Metadata_Well, Metadata_Site, Metadata_field``;
    intensities are rescaled to [0, 1]. SaveImages writes ``{field}_nuclei.tiff`` and ``{field}_cells.tiff``
    (16-bit label images) into the output folder.
    """
    s = settings.scale
    dmin, dmax = settings.nuclei_diameter
    values = {
        "bg_block_size": _px(settings.background_block_size, s),
        "bg_filter_size": _px(settings.background_filter_size, s),
        "nuclei_diameter_min": _px(dmin, s),
        "nuclei_diameter_max": max(_px(dmax, s), _px(dmin, s) + 1),
        "discard_outside_diameter": _yes(settings.discard_outside_diameter),
        "discard_border_nuclei": _yes(settings.discard_border_nuclei),
        "declump_method": settings.declump_method,
        "dividing_lines_method": settings.dividing_lines_method,
        "declump_smoothing_filter": _px(settings.declump_smoothing_filter, s),
        "maxima_min_distance": _num(settings.maxima_min_distance * s),
        "low_res_maxima": _yes(settings.low_res_maxima),
        "nuclei_fill_holes": settings.nuclei_fill_holes,
        "nuclei_threshold_method": settings.nuclei_threshold_method,
        "nuclei_threshold_smoothing": _num(settings.nuclei_threshold_smoothing * s),
        "nuclei_threshold_correction": _num(settings.nuclei_threshold_correction),
        "nuclei_threshold_lower": _num(settings.nuclei_threshold_bounds[0]),
        "nuclei_threshold_upper": _num(settings.nuclei_threshold_bounds[1]),
        "nuclei_otsu_classes": settings.nuclei_otsu_classes,
        "nuclei_otsu_middle": settings.nuclei_otsu_middle,
        "adaptive_window": _px(settings.adaptive_window, s),
        "cells_method": settings.cells_method,
        "cells_distance": _px(settings.cells_distance, s, minimum=0),
        "cells_regularization": _num(settings.cells_regularization),
        "cells_fill_holes": _yes(settings.cells_fill_holes),
        "cells_threshold_method": settings.cells_threshold_method,
        "cells_threshold_smoothing": _num(settings.cells_threshold_smoothing * s),
        "cells_threshold_correction": _num(settings.cells_threshold_correction),
        "cells_threshold_lower": _num(settings.cells_threshold_bounds[0]),
        "cells_threshold_upper": _num(settings.cells_threshold_bounds[1]),
        "cells_otsu_classes": settings.cells_otsu_classes,
        "cells_otsu_middle": settings.cells_otsu_middle,
    }
    template = resources.files("cellresdm").joinpath("cppipe/groundtruth.cppipe").read_text()
    return Template(template).substitute(values)


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
    runner: CellProfilerRunner, work: Path, k: int, chunk: pd.DataFrame, keep_logs: Path
) -> tuple[Path, dict[str, float]]:
    """Run one chunk; return the folder of its label TIFFs and {field: seconds}.

    A failed chunk's log is kept at ``keep_logs/cellprofiler_chunk{k:04d}.log``.
    """
    folder = ChunkFolder.create(work, k)
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
        target = out_dir / f"{field}_labels.tiff"
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
    settings: SegmentationSettings,
    cellprofiler: str = DEFAULT_CELLPROFILER,
    workers: int = 1,
    log: logging.Logger | None = None,
    progress: bool = True,
    chunk_size: int = 250,
) -> pd.DataFrame:
    """Run CellProfiler headless on the kept fields of one plate and write its labels and index.

    The kept fields are split into chunks of at most ``chunk_size`` image sets (at least ``workers``
    chunks when there are enough fields); each chunk is one CellProfiler process with its own LoadData CSV
    (the JVM starts once per chunk, not per field), ``workers`` chunks run in parallel. Each chunk's label
    images are converted to ``{out_dir}/{field}_labels.tiff`` as soon as it ends; CellProfiler's temporary
    outputs live in a hidden folder of ``out_dir`` that is removed at the end. ``index.parquet`` is
    written last and removed first, so it exists only after a complete run.

    Args:
        fields: filter table (``field``, ``keep``, and ``Metadata_Plate/Well/Site``).
        load_data: the plate's load_data table with ``field`` and ``path_{channel}`` (local TIFF paths).
        out_dir: output folder (``groundtruth/{plate}``).
        settings: segmentation settings.
        cellprofiler: CellProfiler executable (a path, or a name looked up on PATH).
        workers: CellProfiler processes run in parallel.
        log: logger (default: this module's).
        progress: show a progress bar (image sets).
        chunk_size: most image sets per CellProfiler process.

    Returns:
        The index: field, labels (path), n_nuclei, n_cells, seconds (CellProfiler seconds of the image set,
        with the process start-up shared out).

    Raises:
        CellResDMError: no CellProfiler executable, bad input tables, missing image files, or CellProfiler
            failed (the message holds the tail of its output and the path of the full log).
    """
    log = log or logging.getLogger(__name__)
    out_dir = Path(out_dir).absolute()  # CellProfiler runs in a folder of its own
    index_path = out_dir / "index.parquet"
    with contextlib.suppress(FileNotFoundError):
        index_path.unlink()
    if workers < 1 or chunk_size < 1:
        raise CellResDMError(f"workers and chunk_size must be >= 1, got {workers} and {chunk_size}")
    exe = resolve_cellprofiler(cellprofiler)
    kept = _kept_fields(fields, load_data)
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
            pipeline.write_text(make_pipeline(settings))
            runner = CellProfilerRunner(exe, pipeline, log, bar)

            def segment(k: int) -> tuple[Path, dict[str, float]]:
                return _segment_chunk(runner, work, k, kept.iloc[chunks[k]], out_dir)

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
        true = read_tiff(truth_dir / f"{field}_labels.tiff", ndim=3)
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
