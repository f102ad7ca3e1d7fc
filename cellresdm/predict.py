"""Virtual Cell Painting of brightfield-only plates (plates of split ``predict``; rules/predict.smk).

A predict plate goes through download and filter like every plate, but needs only the brightfield planes of the
model that paints it and gets brightfield QC instead of the IF checks (:mod:`cellresdm.filters`). Then, per
method and plate, :func:`predict_plate`:

1. loads the exported model file (:mod:`cellresdm.export`) and checks it against the plate (planes, pixel size
   within ``predict.pixel_size_tolerance``, normalisation scope) before anything is written;
2. builds the plate's input store (a dataset store holding ``bf`` only, :func:`build_inputs`): the kept fields'
   planes, illumination-corrected where the plate has functions, normalised like the model's training plates
   (the same percentiles of the plate's own images, per plate or per image) and resized when the model was
   trained on resized fields; a model of the in-focus plane gets that plane in all three slots; the norm table
   holds the plate's BF percentiles and the training plates' IF percentiles (median over the plates), so the
   virtual channels map back to the training plates' real intensity range;
3. samples every field whole, in overlapping tiles, ``n_samples`` times (:func:`cellresdm.sample.predict_dataset`):
   the mean is the prediction, the per-pixel std the uncertainty;
4. segments nuclei and cells from the predicted boundary channels (:mod:`cellresdm.segment_step`);
5. writes the OME-NGFF HCS plate (:func:`cellresdm.omezarr.write_hcs_plate`: uint16 channels in real counts,
   BF inputs, std maps, nuclei and cells labels);
6. measures every cell (:func:`per_cell_features`: the fast feature backend of the evaluation, CellProfiler
   names, on the virtual channels in [0, 1] as the evaluation measures them) with its mean uncertainty per
   channel, and aggregates wells (:func:`well_table`): median profile, counts, brightfield statistics and
   uncertainty with robust z-scores against the training plates (the model file's ``qc_reference``) and the
   out-of-distribution flag;
7. draws a montage for the report and writes a summary with the timing of every step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellresdm import io, layout
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.filters import BF_STAT_COLUMNS, histogram_percentiles, robust_reference, robust_z, uint16_histogram

_LOG = logging.getLogger(__name__)

#: Brightfield statistics of the wells compared with the training plates (the saturated fraction is a QC
#: threshold only: its training distribution is all zeros).
OOD_BF_COLUMNS: tuple[str, ...] = ("bf_focus", "bf_median", "bf_contrast")
#: Column of a cell's (or well's) mean uncertainty of IF ``channel``.
UNCERTAINTY_PREFIX = "Cells_Uncertainty_"
#: Metadata columns of the per-cell table (then Cells_*, Nuclei_*, Cytoplasm_* features).
CELL_METADATA: tuple[str, ...] = (
    "Metadata_Plate",
    "Metadata_Well",
    "Metadata_Site",
    "Metadata_Field",
    "Metadata_Method",
    "ObjectNumber",
)


@dataclass(frozen=True)
class PredictSettings:
    """Config section ``predict`` (the schema documents and checks every key).

    Attributes:
        n_samples: samples per field (mean and per-pixel std).
        pixel_size_tolerance: relative pixel-size difference from the model's accepted.
        pixel_size_mismatch: ``"error"`` or ``"warn"`` beyond the tolerance.
        ood_z: robust |z| above which a well is out of distribution.
        reference_fields: training fields sampled for the uncertainty reference at export.
    """

    n_samples: int = 4
    pixel_size_tolerance: float = 0.02
    pixel_size_mismatch: str = "error"
    ood_z: float = 4.0
    reference_fields: int = 4

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ConfigError(f"predict.n_samples must be >= 1, got {self.n_samples}")
        if self.pixel_size_mismatch not in ("error", "warn"):
            raise ConfigError(f"predict.pixel_size_mismatch must be error or warn, got {self.pixel_size_mismatch!r}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> PredictSettings:
        """From the validated config section ``predict``."""
        return cls(
            n_samples=int(section["n_samples"]),
            pixel_size_tolerance=float(section["pixel_size_tolerance"]),
            pixel_size_mismatch=str(section["pixel_size_mismatch"]),
            ood_z=float(section["ood_z"]),
            reference_fields=int(section["reference_fields"]),
        )


# ------------------------------------------------------------------------------------------ QC reference


def model_qc_inputs(models: Sequence[str | os.PathLike], plate: str) -> tuple[tuple[str, ...], tuple | None]:
    """What the filter of predict plate ``plate`` needs from the model files that paint it: the BF planes any of
    them takes (in :data:`layout.BF_CHANNELS` order) and the focus reference (median, spread) of the first
    that carries one (None: no focus check).

    Raises:
        CellResDMError: naming a model file that is missing, truncated or not an exported model, or the plate
            when no model is given.
    """
    from cellresdm.export import read_export

    if not models:
        raise CellResDMError(f"plate {plate}: a predict plate needs a model (config predict.methods)")
    planes: set[str] = set()
    focus = None
    for path in models:
        content = read_export(path)
        planes.update(content["inputs"]["planes"])
        reference = content.get("qc_reference") or {}
        if focus is None and "bf_focus" in reference:
            focus = tuple(float(v) for v in reference["bf_focus"])
    return tuple(c for c in layout.BF_CHANNELS if c in planes), focus


def bf_reference(fields_tables: Sequence[str | os.PathLike]) -> dict[str, list[float]]:
    """{statistic: [median, spread]} of :data:`OOD_BF_COLUMNS` over the kept fields of the training plates'
    filter tables (:func:`cellresdm.filters.robust_reference`); statistics no table has are left out."""
    tables = [pd.read_parquet(path) for path in fields_tables]
    kept = pd.concat([t[t["keep"].astype(bool)] for t in tables], ignore_index=True) if tables else pd.DataFrame()
    out = {}
    for column in OOD_BF_COLUMNS:
        if column in kept.columns and kept[column].notna().any():
            out[column] = list(robust_reference(kept[column].to_numpy(dtype=np.float64)))
    return out


def uncertainty_reference(
    method: Any, dataset: str | os.PathLike, n_fields: int, sample_settings: Any, log: logging.Logger | None = None
) -> dict[str, list[float]]:
    """{``Cells_Uncertainty_{ch}``: [median, spread]}: the model's mean per-pixel std per IF channel over
    ``n_fields`` training fields (evenly spread), sampled ``sample_settings.n_samples`` (>= 2) times each.
    The store is written to a temporary folder and removed."""
    import tempfile

    from cellresdm.sample import predict_dataset
    from cellresdm.stores import open_dataset, open_predictions

    if sample_settings.n_samples < 2:
        raise ConfigError("predict.n_samples must be >= 2 for an uncertainty reference")
    n = len(open_dataset(dataset, arrays=()))
    rows = np.unique(np.linspace(0, n - 1, min(n_fields, n)).round().astype(int))
    with tempfile.TemporaryDirectory(prefix=".uncertainty-reference-") as tmp:
        out = Path(tmp) / "reference.zarr"
        predict_dataset(method, dataset, out, sample_settings, progress=False, log=log, rows=rows)
        std = np.asarray(open_predictions(out, arrays=("if_std",))["if_std"][:], dtype=np.float64)
    means = std.mean(axis=(2, 3))  # (n, 5)
    return {UNCERTAINTY_PREFIX + ch: list(robust_reference(means[:, k])) for k, ch in enumerate(layout.IF_CHANNELS)}


def export_with_reference(
    method: str,
    model_path: str | os.PathLike,
    dataset: str | os.PathLike,
    fields_tables: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    native_pixel_size_um: float,
    predict: Mapping[str, Any],
    sample: Mapping[str, Any],
    log: logging.Logger | None = None,
) -> Path:
    """Export ``method``'s trained model (:func:`cellresdm.export.export_model`) with the QC reference of the
    predict plates: the training plates' brightfield statistics and the model's uncertainty on
    ``predict.reference_fields`` training fields (rule export_model)."""
    import dataclasses

    from cellresdm.export import export_model, load_exported_model
    from cellresdm.sample import SampleSettings

    log = log or _LOG
    settings = PredictSettings.from_config(predict)
    reference: dict[str, Any] = bf_reference(fields_tables)
    # the weights are checked by export_model; a first export without reference gives the model to sample with
    export_model(method, model_path, dataset, out, native_pixel_size_um)
    if settings.n_samples >= 2:
        model = load_exported_model(out, method=method)
        sampling = dataclasses.replace(SampleSettings.from_config(dict(sample)), n_samples=settings.n_samples)
        reference |= uncertainty_reference(model.method, dataset, settings.reference_fields, sampling, log)
    log.info("%s: QC reference %s", method, {k: [round(v, 5) for v in r] for k, r in reference.items()})
    return export_model(method, model_path, dataset, out, native_pixel_size_um, qc_reference=reference)


# ----------------------------------------------------------------------------------------------- inputs


def plate_planes(load_data: pd.DataFrame) -> tuple[str, ...]:
    """The BF planes of a plate's load_data that name a file on some row (``path_{ch}``)."""
    return tuple(
        ch
        for ch in layout.BF_CHANNELS
        if layout.path_column(ch) in load_data.columns
        and load_data[layout.path_column(ch)].map(lambda v: isinstance(v, str) and bool(v.strip())).any()
    )


def resized_shape(native: tuple[int, int], info: Mapping[str, Any]) -> tuple[int, int]:
    """The (H, W) the model wants fields of native (H, W) at: the model's resize factor (field_size over
    source_shape) applied, or ``native`` for a model trained at native size."""
    inputs = info["inputs"]
    if not inputs.get("resized"):
        return native
    factor = float(inputs["field_size"][0]) / float(inputs["source_shape"][0])
    return (max(1, round(native[0] * factor)), max(1, round(native[1] * factor)))


def _training_if_percentiles(info: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """{IF channel: (low, high)}: the median over the training plates of the percentiles the model's outputs are
    normalised with."""
    records = pd.DataFrame(info["normalisation"]["percentiles"])
    out = {}
    for ch in layout.IF_CHANNELS:
        rows = records[records["channel"] == ch] if len(records) else records
        if len(rows) == 0:
            raise CellResDMError(f"the model file has no training percentiles of channel {ch}")
        out[ch] = (float(rows["low"].median()), float(rows["high"].median()))
    return out


def _normalise(img: np.ndarray, low: float, high: float) -> np.ndarray:
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return np.zeros(img.shape, dtype=np.float32)
    return np.clip((img.astype(np.float32) - np.float32(low)) / np.float32(high - low), 0.0, 1.0)


def build_inputs(
    plate: str,
    cell_line: str,
    load_data: pd.DataFrame,
    fields: pd.DataFrame,
    info: Mapping[str, Any],
    out: str | os.PathLike,
    workers: int = 2,
    log: logging.Logger | None = None,
) -> dict[str, Any]:
    """Write the input store of a predict plate (module docstring, step 2): a dataset store whose ``bf``
    (N, 3, H, W) holds the kept fields' planes in [0, 1] (``if``, ``boundaries``, ``labels`` are left empty: no
    chunk written), its field table and a norm table of all 8 channels.

    Args:
        plate, cell_line: the plate.
        load_data: its load_data table (``path_{ch}``, ``illum_{ch}``).
        fields: its filter table (kept fields are written).
        info: the exported model's content (inputs, normalisation).
        out: the store to write (atomically).
        workers: threads reading fields.

    Returns:
        Summary: fields, shape, source_shape, seconds.

    Raises:
        CellResDMError: naming the plate when no field is kept, a plane file is unreadable or the fields differ
            in shape.
    """
    from skimage.transform import resize

    from cellresdm.illumination import plate_illumination
    from cellresdm.io import read_tiff
    from cellresdm.stores import create_dataset

    log = log or _LOG
    start = time.perf_counter()
    planes = tuple(info["inputs"]["planes"])
    norm = info["normalisation"]
    scope, qs = str(norm["scope"]), (float(norm["low"]), float(norm["high"]))
    kept = fields[fields["keep"].astype(bool)].reset_index(drop=True)
    if len(kept) == 0:
        raise CellResDMError(f"plate {plate}: no field passed the filter (fields table), nothing to predict")
    rows_of = load_data.set_index("field")
    illum = plate_illumination(load_data, plate)

    def read(field: str) -> list[np.ndarray]:
        record = rows_of.loc[field]
        images = []
        for ch in planes:
            path = str(record[layout.path_column(ch)])
            images.append(illum.apply(ch, read_tiff(path, ndim=2, dtype=np.uint16), path))
        return images

    first = read(str(kept["field"].iloc[0]))
    native = (int(first[0].shape[0]), int(first[0].shape[1]))
    shape = resized_shape(native, info)
    plate_stats = None
    if scope == "plate":
        hists = np.zeros((len(planes), 65536), dtype=np.int64)
        lock = threading.Lock()

        def accumulate(field: str) -> None:
            local = np.stack([uint16_histogram(img) for img in read(field)])
            with lock:
                hists[...] += local

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(accumulate, kept["field"].astype(str)))
        plate_stats = np.stack([histogram_percentiles(h, qs) for h in hists])
    if_perc = _training_if_percentiles(info)
    image_stats: dict[int, np.ndarray] = {}
    with create_dataset(out, len(kept), shape) as writer:

        def process(i: int) -> None:
            images = read(str(kept["field"].iloc[i]))
            shapes = {tuple(img.shape) for img in images}
            if shapes != {native}:
                raise CellResDMError(
                    f"plate {plate}, field {kept['field'].iloc[i]}: planes of shape {sorted(shapes)}, the plate's "
                    f"first field is {native}"
                )
            stats = plate_stats
            if stats is None:
                stats = np.stack([histogram_percentiles(uint16_histogram(img), qs) for img in images])
                image_stats[i] = stats
            chans = [_normalise(img, float(lo), float(hi)) for img, (lo, hi) in zip(images, stats, strict=True)]
            if shape != native:
                chans = [
                    np.clip(resize(c, shape, order=1, mode="reflect", anti_aliasing=True), 0, 1).astype(np.float32)
                    for c in chans
                ]
            bf = np.stack([chans[planes.index(ch)] if ch in planes else chans[0] for ch in layout.BF_CHANNELS])
            writer.arrays["bf"][i] = bf.astype(np.float16)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(process, range(len(kept))))
        table = pd.DataFrame(
            {
                "plate": plate,
                "cell_line": cell_line,
                "well": kept["Metadata_Well"].astype(str),
                "row": kept["Metadata_Row"].astype(np.int64),
                "col": kept["Metadata_Col"].astype(np.int64),
                "site": kept["Metadata_Site"].astype(np.int64),
                "field": kept["field"].astype(str),
                "index": np.arange(len(kept), dtype=np.int64),
            }
        )
        records = []
        units = [(None, -1, plate_stats)]
        if scope != "plate":
            units = [(f, i, image_stats[i]) for i, f in enumerate(table["field"])]
        for field, index, stats in units:
            bf_perc = {ch: stats[planes.index(ch) if ch in planes else 0] for ch in layout.BF_CHANNELS}
            for ch in layout.ALL_CHANNELS:
                low, high = if_perc[ch] if ch in if_perc else (float(bf_perc[ch][0]), float(bf_perc[ch][1]))
                records.append((scope, plate, field, index, ch, float(low), float(high)))
        norm_table = pd.DataFrame(records, columns=["scope", "plate", "field", "index", "channel", "low", "high"])
        writer.finish(
            table,
            norm_table,
            {
                "format": "cellresdm-dataset-1",
                "scope": scope,
                "low": qs[0],
                "high": qs[1],
                "resize": None if shape == native else int(shape[0]),
                "bf_channels": list(layout.BF_CHANNELS),
                "bf_planes": list(planes),
                "if_channels": list(layout.IF_CHANNELS),
                "object_channels": list(layout.OBJECT_CHANNELS),
                "source_shape": list(native),
                "shape": list(shape),
                "n_fields": len(kept),
                "plates": [plate],
                "illumination_corrected": [plate] if illum.corrected else [],
                "predict": True,
                "if_percentiles": "median over the training plates of the model file",
            },
        )
    seconds = time.perf_counter() - start
    log.info(
        "plate %s: %d input fields of %s (native %s, planes %s) in %.1f s",
        plate,
        len(kept),
        shape,
        native,
        planes,
        seconds,
    )
    return {"fields": len(kept), "shape": list(shape), "source_shape": list(native), "seconds": seconds}


# ---------------------------------------------------------------------------------------------- profiles


def per_cell_features(
    predictions: str | os.PathLike,
    instances: str | os.PathLike,
    settings: Any,
    method: str,
    log: logging.Logger | None = None,
) -> pd.DataFrame:
    """One row per cell of every field: :data:`CELL_METADATA`, ``Cells_*``, ``Nuclei_*`` and ``Cytoplasm_*``
    CellProfiler-named features of the virtual channels (:func:`cellresdm.features.fast.measure_field`; the
    cytoplasm is the cell outside its nucleus, nucleus k lies in cell k) and ``Cells_Uncertainty_{ch}``: the
    cell's mean per-pixel std of IF channel ``ch`` (NaN without std maps).

    Args:
        predictions: the plate's prediction store (``if`` (N, 5, H, W), optional ``if_std``).
        instances: its instance store (``nuclei``, ``cells`` (N, H, W)).
        settings: :class:`cellresdm.features.FeatureSettings` at the fields' pixel size.
        method: the method (``Metadata_Method``).
    """
    import zarr

    from cellresdm.features.fast import measure_field
    from cellresdm.stores import open_instances, open_predictions

    log = log or _LOG
    with_std = "if_std" in zarr.open_group(str(predictions), mode="r")
    pred = open_predictions(predictions, arrays=("if", "if_std") if with_std else ("if",))
    labels = open_instances(instances, columns=("plate", "field"))
    fields = pred.fields
    keys = zip(labels.fields["plate"].astype(str), labels.fields["field"].astype(str), strict=True)
    position = {key: i for i, key in enumerate(keys)}
    frames = []
    for i, rec in enumerate(fields.itertuples()):
        j = position.get((str(rec.plate), str(rec.field)))
        if j is None:
            raise CellResDMError(f"{labels.path}: has no field {rec.field} of plate {rec.plate} (in {pred.path})")
        nuclei = np.asarray(labels["nuclei"][j], dtype=np.int32)
        cells = np.asarray(labels["cells"][j], dtype=np.int32)
        if cells.max() == 0:
            continue
        images = np.asarray(pred["if"][i], dtype=np.float64)
        compartments = {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": np.where(nuclei > 0, 0, cells)}
        objects = measure_field(compartments, images, settings).objects
        table = objects["Cells"].add_prefix("Cells_").rename(columns={"Cells_ObjectNumber": "ObjectNumber"})
        for name in ("Nuclei", "Cytoplasm"):
            other = objects[name].add_prefix(f"{name}_").rename(columns={f"{name}_ObjectNumber": "ObjectNumber"})
            table = table.merge(other, on="ObjectNumber", how="left")
        ids = table["ObjectNumber"].to_numpy(dtype=np.int64)
        counts = np.bincount(cells.ravel(), minlength=int(cells.max()) + 1).astype(np.float64)
        for k, ch in enumerate(layout.IF_CHANNELS):
            if with_std:
                sums = np.bincount(cells.ravel(), weights=np.asarray(pred["if_std"][i, k], dtype=np.float64).ravel())
                sums = np.pad(sums, (0, len(counts) - len(sums)))
                table[UNCERTAINTY_PREFIX + ch] = sums[ids] / np.maximum(counts[ids], 1)
            else:
                table[UNCERTAINTY_PREFIX + ch] = np.nan
        meta = {
            "Metadata_Plate": str(rec.plate),
            "Metadata_Well": str(rec.well),
            "Metadata_Site": int(rec.site),
            "Metadata_Field": str(rec.field),
            "Metadata_Method": method,
        }
        frames.append(table.assign(**meta))
    if not frames:
        log.warning("%s: no cell in any field", instances)
        return pd.DataFrame({c: pd.Series(dtype=object) for c in CELL_METADATA})
    table = pd.concat(frames, ignore_index=True)
    rest = [c for c in table.columns if c not in CELL_METADATA]
    return table[list(CELL_METADATA) + rest]


def well_table(
    cells: pd.DataFrame,
    fields: pd.DataFrame,
    reference: Mapping[str, Sequence[float]],
    ood_z: float,
    platemap: pd.DataFrame | None = None,
    platemap_well_column: str = "well_position",
) -> pd.DataFrame:
    """Per-well aggregates of a predict plate: Metadata_Plate, Metadata_Well, Metadata_Sites (kept fields),
    Metadata_Cells, the plate map's columns (``platemap_*``, when given), the wells' brightfield statistics and
    uncertainty (means over fields and cells) with their robust z against ``reference`` (``z_*``), ``ood``
    (|z| > ``ood_z`` for any of them) and ``ood_reason``, then the median of every per-cell feature.

    Args:
        cells: :func:`per_cell_features` of the plate.
        fields: the plate's filter table (kept fields, with :data:`cellresdm.filters.BF_STAT_COLUMNS`).
        reference: the model's ``qc_reference`` ({column: (median, spread)}); a statistic without one gets no z.
        ood_z: the robust |z| limit.
        platemap: the plate map (strings), one row per well in ``platemap_well_column``.
    """
    kept = fields[fields["keep"].astype(bool)]
    plate = str(kept["Metadata_Plate"].iloc[0]) if len(kept) else ""
    wells = kept.groupby("Metadata_Well", sort=True)
    table = pd.DataFrame({"Metadata_Well": sorted(kept["Metadata_Well"].astype(str).unique())})
    table.insert(0, "Metadata_Plate", plate)
    table["Metadata_Sites"] = table["Metadata_Well"].map(wells.size()).astype(np.int64)
    per_well = cells.groupby("Metadata_Well") if len(cells) else None
    table["Metadata_Cells"] = (
        table["Metadata_Well"].map(per_well.size()).fillna(0).astype(np.int64) if per_well is not None else 0
    )
    if platemap is not None:
        pm = platemap.rename(columns={c: f"platemap_{c}" for c in platemap.columns})
        table = table.merge(pm, left_on="Metadata_Well", right_on=f"platemap_{platemap_well_column}", how="left")
    stats = {c: table["Metadata_Well"].map(wells[c].mean()) for c in BF_STAT_COLUMNS if c in kept.columns}
    unc = [UNCERTAINTY_PREFIX + ch for ch in layout.IF_CHANNELS]
    for column in unc:
        stats[column] = (
            table["Metadata_Well"].map(per_well[column].mean()) if per_well is not None and column in cells else np.nan
        )
    reasons: list[list[str]] = [[] for _ in range(len(table))]
    for column, values in stats.items():
        table[column] = values.to_numpy(dtype=np.float64) if hasattr(values, "to_numpy") else values
        if column in reference and column != "bf_saturated":
            z = np.asarray(robust_z(table[column].to_numpy(dtype=np.float64), reference[column]))
            table[f"z_{column}"] = z
            for k in np.flatnonzero(np.abs(z) > ood_z):
                reasons[k].append(f"{column} z={z[k]:+.1f}")
    table["ood"] = [bool(r) for r in reasons]
    table["ood_reason"] = ["; ".join(r) for r in reasons]
    features = [
        c
        for c in cells.columns
        if c.split("_", 1)[0] in ("Cells", "Nuclei", "Cytoplasm")
        and c not in unc
        and pd.api.types.is_numeric_dtype(cells[c])
    ]
    if per_well is not None and features:
        medians = per_well[features].median()
        table = table.merge(medians, left_on="Metadata_Well", right_index=True, how="left")
    return table


def truth_scores(instances: str | os.PathLike, truth_dir: str | os.PathLike, iou: float = 0.5) -> pd.DataFrame:
    """Predicted nuclei and cells of a plate against true labels (the demo generator's ``{field}_labels.tiff``,
    (2, H, W) nuclei and cells): one row per field and object with n_true, n_pred, tp, fp, fn, precision, recall
    and f1 at IoU ``iou`` (:func:`stardist.matching.matching`), then one row per object pooled over the fields
    (field ``all``).

    Raises:
        CellResDMError: a field's truth file is missing or of another shape.
    """
    from stardist.matching import matching

    from cellresdm.io import read_tiff
    from cellresdm.results import field_labels_name
    from cellresdm.stores import open_instances

    store = open_instances(instances, columns=("field",))
    rows = []
    for i, field in enumerate(store.fields["field"].astype(str)):
        path = Path(truth_dir) / field_labels_name(field)
        if not path.is_file():
            raise CellResDMError(f"{path}: no true labels of field {field} (of {store.path})")
        truth = read_tiff(path, ndim=3)
        for k, obj in enumerate(layout.OBJECT_CHANNELS):
            pred = np.asarray(store[obj][i])
            if truth[k].shape != pred.shape:
                raise CellResDMError(f"{path}: labels of {truth[k].shape}, the predictions {pred.shape}")
            m = matching(truth[k].astype(np.int32), pred, thresh=iou, criterion="iou", report_matches=False)
            rows.append(
                {
                    "field": field,
                    "object": obj,
                    **{k2: int(getattr(m, k2)) for k2 in ("n_true", "n_pred", "tp", "fp", "fn")},
                }
            )
    table = pd.DataFrame(rows)
    pooled = table.groupby("object", sort=False)[["n_true", "n_pred", "tp", "fp", "fn"]].sum().reset_index()
    table = pd.concat([table, pooled.assign(field="all")], ignore_index=True)
    table["precision"] = table["tp"] / table["n_pred"].where(table["n_pred"] > 0)
    table["recall"] = table["tp"] / table["n_true"].where(table["n_true"] > 0)
    table["f1"] = 2 * table["tp"] / (table["n_true"] + table["n_pred"]).where(table["n_true"] + table["n_pred"] > 0)
    return table


# ------------------------------------------------------------------------------------------------ montage


def plot_montage(
    inputs: str | os.PathLike,
    predictions: str | os.PathLike,
    instances: str | os.PathLike,
    out: str | os.PathLike,
    title: str,
    max_fields: int = 3,
) -> None:
    """A PNG of up to ``max_fields`` fields of a predict plate: the in-focus BF, each virtual channel, the mean
    uncertainty over the channels and the nuclei (cyan) and cell (yellow) outlines on the DNA channel."""
    import zarr
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from skimage.segmentation import find_boundaries

    from cellresdm.stores import open_dataset, open_instances, open_predictions

    with_std = "if_std" in zarr.open_group(str(predictions), mode="r")
    pred = open_predictions(predictions, arrays=("if", "if_std") if with_std else ("if",))
    data = open_dataset(inputs, arrays=("bf",))
    labels = open_instances(instances)
    n = min(max_fields, len(pred))
    columns = ["BF (input)", *layout.IF_CHANNELS, "uncertainty", "nuclei / cells"]
    fig = Figure(figsize=(2.0 * len(columns), 2.1 * max(n, 1) + 0.4), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(n, 1), len(columns), squeeze=False)
    for i in range(n):
        field = str(pred.fields["field"].iloc[i])
        panels = [np.asarray(data["bf"][i, 0], dtype=np.float32)]
        panels += [np.asarray(pred["if"][i, k], dtype=np.float32) for k in range(len(layout.IF_CHANNELS))]
        panels.append(np.asarray(pred["if_std"][i], dtype=np.float32).mean(0) if with_std else np.zeros_like(panels[0]))
        dna = panels[1]
        overlay = np.stack([dna, dna, dna], axis=-1)
        overlay[find_boundaries(np.asarray(labels["cells"][i]), mode="inner")] = (1.0, 1.0, 0.0)
        overlay[find_boundaries(np.asarray(labels["nuclei"][i]), mode="inner")] = (0.0, 1.0, 1.0)
        for k, (ax, name) in enumerate(zip(axes[i], columns, strict=True)):
            if k == len(columns) - 1:
                ax.imshow(overlay, interpolation="nearest")
            else:
                ax.imshow(panels[k], cmap="magma" if name == "uncertainty" else "gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
            if k == 0:
                ax.set_ylabel(field, fontsize=8)
    fig.suptitle(title, fontsize=10)
    with io.atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


# ----------------------------------------------------------------------------------------------- the step


@dataclass(frozen=True)
class PredictOutputs:
    """The files of one method and predict plate (results layout ``predict_*``)."""

    inputs: str
    predictions: str
    instances: str
    omezarr: str
    cells: str
    wells: str
    montage: str
    summary: str


def predict_plate(
    method: str,
    plate: str,
    cell_line: str,
    model: str | os.PathLike,
    load_data: str | os.PathLike,
    fields: str | os.PathLike,
    outputs: PredictOutputs,
    config: Mapping[str, Any],
    pixel_size_um: float,
    platemap: str | os.PathLike | None = None,
    workers: int = 2,
    log: logging.Logger | None = None,
) -> dict[str, Any]:
    """Paint predict plate ``plate`` with ``method`` (module docstring) and write every output of ``outputs``.

    Args:
        method: the method (the model file must hold it).
        plate, cell_line: the plate.
        model: the exported model file.
        load_data, fields: the plate's load_data and filter tables.
        outputs: where each output goes.
        config: the validated config (sections predict, sample, instances, features, groundtruth, omezarr,
            profiles).
        pixel_size_um: the plate's native pixel size.
        platemap: the plate's plate map, or None.
        workers: threads.

    Returns:
        The summary (also written to ``outputs.summary``): fields, cells, nuclei, OOD wells, seconds per step,
        fields per second end to end.

    Raises:
        CellResDMError: naming the model file, plate or key: a model that is missing, truncated, of another
            method, for planes the plate lacks or at another pixel size (``predict.pixel_size_mismatch: error``);
            a plate without kept fields. The model is checked before anything is written.
    """
    import dataclasses

    import torch

    from cellresdm.export import PlateInputs, load_exported_model
    from cellresdm.features import FeatureSettings
    from cellresdm.omezarr import OmeZarrSettings, write_hcs_plate
    from cellresdm.profiles.platemap import read_table
    from cellresdm.sample import SampleSettings, predict_dataset
    from cellresdm.segment import InstanceSettings
    from cellresdm.segment_step import segment_predictions

    log = log or _LOG
    settings = PredictSettings.from_config(config["predict"])
    seconds: dict[str, float] = {}
    clock = [time.perf_counter()]
    start = clock[0]

    def tick(step: str) -> None:
        now = time.perf_counter()
        seconds[step] = now - clock[0]
        clock[0] = now

    ld = pd.read_parquet(load_data)
    table = pd.read_parquet(fields)
    kept = table[table["keep"].astype(bool)]
    if len(kept) == 0:
        raise CellResDMError(f"plate {plate}: no field passed the filter ({fields}), nothing to predict")
    from cellresdm.export import read_export

    info = read_export(model)
    native = _native_shape(ld, kept, plate)
    shape = resized_shape(native, info)
    expect = PlateInputs(
        name=f"plate {plate}",
        planes=plate_planes(ld),
        pixel_size_um=float(pixel_size_um) * native[0] / shape[0],
        norm_scope=str(info["normalisation"]["scope"]),
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_exported_model(
        model,
        expect=expect,
        method=method,
        device=device,
        tolerance=settings.pixel_size_tolerance,
        pixel_size_mismatch=settings.pixel_size_mismatch,
    )
    tick("load model")
    build_inputs(plate, cell_line, ld, table, loaded.info, outputs.inputs, workers=workers, log=log)
    tick("inputs")
    sampling = dataclasses.replace(SampleSettings.from_config(dict(config["sample"])), n_samples=settings.n_samples)
    record = predict_dataset(loaded.method, outputs.inputs, outputs.predictions, sampling, progress=False, log=log)
    tick("sample")
    instances = InstanceSettings.from_config(dict(config["instances"]))
    segment_predictions(outputs.predictions, outputs.instances, instances, workers=workers, progress=False, log=log)
    tick("instances")
    write_hcs_plate(
        outputs.omezarr,
        plate,
        outputs.predictions,
        outputs.inputs,
        outputs.instances,
        expect.pixel_size_um,
        OmeZarrSettings.from_config(dict(config["omezarr"]), threads=workers),
        log=log,
    )
    tick("ome-zarr")
    features = FeatureSettings.from_config(dict(config["features"]), segmentation=dict(config["groundtruth"]))
    features = features.at_pixel_size(expect.pixel_size_um)
    cells = per_cell_features(outputs.predictions, outputs.instances, features, method, log=log)
    io.write_parquet(cells, outputs.cells)
    tick("cell features")
    profiles = config["profiles"]
    pm = read_table(platemap, f"plate map of plate {plate}") if platemap else None
    if pm is not None and profiles["platemap_well_column"] not in pm.columns:
        raise CellResDMError(
            f"plate map {platemap} of plate {plate} lacks the well column {profiles['platemap_well_column']!r} "
            "(profiles.platemap_well_column)"
        )
    wells = well_table(
        cells, table, loaded.info.get("qc_reference") or {}, settings.ood_z, pm, profiles["platemap_well_column"]
    )
    with io.atomic_path(outputs.wells, suffix=".csv") as tmp:
        wells.to_csv(tmp, index=False)
    plot_montage(outputs.inputs, outputs.predictions, outputs.instances, outputs.montage, f"{plate}: {method}")
    tick("wells and montage")
    total = time.perf_counter() - start
    n_nuclei = int(cells["Nuclei_AreaShape_Area"].notna().sum()) if "Nuclei_AreaShape_Area" in cells else 0
    summary = {
        "method": method,
        "plate": plate,
        "model": str(model),
        "fields": len(kept),
        "fields_dropped": int(len(table) - len(kept)),
        "field_shape": shape,
        "native_shape": list(native),
        "pixel_size_um": expect.pixel_size_um,
        "n_samples": settings.n_samples,
        "cells": len(cells),
        "nuclei": n_nuclei,
        "wells": len(wells),
        "ood_wells": [str(w) for w in wells.loc[wells["ood"], "Metadata_Well"]],
        "device": record["device"],
        "seconds": seconds,
        "seconds_total": total,
        "fields_per_second": len(kept) / total if total > 0 else float("inf"),
    }
    io.write_text(outputs.summary, json.dumps(summary, indent=2) + "\n")
    log.info(
        "plate %s, %s: %d fields, %d cells, %d OOD wells in %.1f s (%.3f fields/s): %s",
        plate,
        method,
        len(kept),
        len(cells),
        len(summary["ood_wells"]),
        total,
        summary["fields_per_second"],
        {k: round(v, 1) for k, v in seconds.items()},
    )
    return summary


def _native_shape(load_data: pd.DataFrame, kept: pd.DataFrame, plate: str) -> tuple[int, int]:
    """(H, W) of the plate's first kept field (its in-focus plane's TIFF header)."""
    import tifffile

    record = load_data.set_index("field").loc[str(kept["field"].iloc[0])]
    path = str(record[layout.path_column(layout.BF_CHANNELS[0])])
    try:
        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[0].shape
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise CellResDMError(f"plate {plate}: {path} is unreadable ({exc})") from exc
    return int(shape[0]), int(shape[1])
