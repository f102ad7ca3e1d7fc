"""The CellProfiler runner of the feature stage: each field's 5 IF channels become uint16 TIFFs, CellProfiler
runs the feature pipeline (:func:`cellresdm.cppipe.make_measurement_pipeline`) on chunks of image sets in
parallel, and the chosen backend turns each chunk's outputs into per-image features
(:func:`extract_features`)."""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from cellresdm import layout
from cellresdm.cellprofiler import DEFAULT_CELLPROFILER, CellProfilerRunner, ChunkFolder, resolve_cellprofiler
from cellresdm.cppipe import COMPARTMENTS, SEGMENTATION_CHANNELS, make_measurement_pipeline
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.features.columns import METADATA_COLUMNS
from cellresdm.features.cpmeasure import cp_measure_chunk
from cellresdm.features.exports import chunk_features
from cellresdm.features.fast import fast_chunk
from cellresdm.features.settings import FeatureSettings
from cellresdm.io import write_parquet
from cellresdm.stores import open_dataset, open_if_images

_LOG = logging.getLogger("cellresdm")


#: dtypes of the metadata columns (of an empty table too).
_METADATA_DTYPES = {
    c: "float64" if c == "Metadata_Seconds" else "int64" if c == "Metadata_Site" else "str" for c in METADATA_COLUMNS
}


def _image_id(plate: str, field_name: str) -> str:
    """File-name-safe id of an image set (plate and field)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{plate}_{field_name}")


def _write_channels(images: np.ndarray, folder: Path, image_id: str) -> dict[str, str]:
    """Write (5, H, W) [0, 1] images as uint16 TIFFs; return the LoadData columns of the image set."""
    row: dict[str, str] = {}
    for channel, img in zip(layout.IF_CHANNELS, images, strict=True):
        a = np.clip(np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0), 0, 1)
        name = f"{image_id}_{channel}.tiff"
        tifffile.imwrite(folder / name, np.round(a * 65535).astype(np.uint16))
        row[f"FileName_{channel}"] = name
        row[f"PathName_{channel}"] = str(folder)
    return row


def _measure_chunk(
    runner: CellProfilerRunner,
    work: Path,
    k: int,
    images: np.ndarray,
    ids: list[str],
    log_prefix: Path,
    channels: Sequence[str] = layout.IF_CHANNELS,
) -> tuple[Path, dict[str, float]]:
    """Write the chunk's TIFFs (to ``work/chunk{k:04d}/images``) and run CellProfiler on them (LoadData lists
    ``channels``: all for the measurement pipeline, :data:`SEGMENTATION_CHANNELS` for the segmentation-only
    one); return its output folder and {image id: seconds}.

    A failed chunk's log is kept at ``{log_prefix}.cellprofiler_chunk{k:04d}.log``.
    """
    folder = ChunkFolder.create(work, k)
    pics = folder.root / "images"
    pics.mkdir()
    rows = [{**_write_channels(img, pics, i), "Metadata_Field": i} for img, i in zip(images, ids, strict=True)]
    listed = [f"{kind}_{c}" for c in channels for kind in ("FileName", "PathName")] + ["Metadata_Field"]
    pd.DataFrame(rows)[listed].to_csv(folder.data_file, index=False)
    run = runner.run(folder)
    out = folder.output
    missing = [n for n in ("Image.csv", *(f"{c}.csv" for c in COMPARTMENTS)) if not (out / n).is_file()]
    if run.returncode != 0 or missing:
        # the image set being processed is the last one CellProfiler reported a module time for
        failed = ids[min(max(run.last_image_set, 1), len(ids)) - 1]
        raise run.error(
            f"did not write {missing}",
            f"on feature chunk {k} ({len(ids)} image sets, {ids[0]}..{ids[-1]}), at or after image set {failed}",
            Path(f"{log_prefix}.cellprofiler_chunk{k:04d}.log"),
        )
    return out, runner.finish(run, ids, f"feature chunk {k}")


def run_cellprofiler_chunk(
    images: np.ndarray,
    ids: Sequence[str],
    work: str | os.PathLike,
    settings: FeatureSettings,
    cellprofiler: str = DEFAULT_CELLPROFILER,
    measure: bool = True,
    log: logging.Logger | None = None,
) -> tuple[Path, dict[str, float]]:
    """Run the feature pipeline once on ``images`` ((N, 5, H, W) float in [0, 1]) named by ``ids``.

    Everything is written under ``work`` (an empty or new folder the caller owns): TIFFs in
    ``work/chunk0000/images``, CellProfiler's exports and label images in the returned folder.

    Returns:
        (output folder with Image.csv, {Nuclei,Cells,Cytoplasm}.csv and ``{id}_{nuclei,cells,cytoplasm}.tiff``,
        {id: seconds}).
    """
    work = Path(work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    pipeline = work / "features.cppipe"
    pipeline.write_text(make_measurement_pipeline(settings, measure=measure))
    runner = CellProfilerRunner(resolve_cellprofiler(cellprofiler), pipeline, log or _LOG, None)
    channels = layout.IF_CHANNELS if measure else SEGMENTATION_CHANNELS
    return _measure_chunk(runner, work, 0, np.asarray(images), list(ids), work / "exports", channels)


def _sort_columns(table: pd.DataFrame) -> pd.DataFrame:
    meta = [c for c in METADATA_COLUMNS if c in table.columns]
    image = sorted(c for c in table.columns if c.startswith("Image_"))
    rest = [f"{o}_" for o in COMPARTMENTS]
    objs = [c for p in rest for c in sorted(c for c in table.columns if c.startswith(p))]
    return table[meta + image + objs]


def extract_features(
    dataset_or_predictions: str | os.PathLike,
    source: str,
    out: str | os.PathLike,
    settings: FeatureSettings,
    cellprofiler: str = DEFAULT_CELLPROFILER,
    workers: int = 1,
    progress: bool = True,
    log: logging.Logger | None = None,
    reference: str | os.PathLike | None = None,
    limit: int | None = None,
    rows: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Measure the fields of a dataset or predictions zarr (all, or its ``rows``: a shard) and write the
    per-image feature table.

    Args:
        dataset_or_predictions: zarr with ``if`` (N, 5, H, W) float16 in [0, 1] (layout.IF_CHANNELS) and
            ``fields.parquet`` (plate, cell_line, well, site, field, index).
        source: name of the source (``real`` or the method); ``Metadata_Source``.
        out: the parquet to write (``results/features/{source}.parquet``), atomically.
        settings: feature settings; its segmentation pixel size is that of the source images and is scaled
            by ``source_shape / shape`` of the zarr attributes (of ``reference`` when given: predictions
            carry no source shape, pass the dataset they were sampled from).
        cellprofiler: CellProfiler executable (path, or a name on PATH).
        workers: parallel CellProfiler processes.
        progress: tqdm progress bar (image sets).
        log: logger (default ``cellresdm``).
        reference: zarr whose attributes give the field's resize factor (default: the input).
        limit: measure only the first ``limit`` fields (benchmarks).
        rows: row positions of the fields to measure (a shard, :mod:`cellresdm.shards`); none at all writes a
            table of the metadata columns only.

    Returns:
        One row per field: :data:`METADATA_COLUMNS` (``Metadata_Seconds``: seconds of the image set, process
        start-up shared out), then ``Image_*`` and ``{Nuclei,Cells,Cytoplasm}_*`` features (float64; NaN
        where the image set has no object of the compartment).

    Raises:
        CellResDMError: unreadable input, no CellProfiler, or CellProfiler failed (the message names the
            chunk and image set and quotes the tail of its log).
    """
    log = log or _LOG
    src = Path(dataset_or_predictions)
    if workers < 1:
        raise ConfigError(f"features workers must be >= 1, got {workers}")
    store = open_if_images(src, columns=("plate", "cell_line", "well", "site", "field"))
    images, fields = store["if"], store.fields
    attrs = open_dataset(reference, arrays=()).attrs if reference else store.attrs
    if attrs.get("source_shape") and attrs.get("shape"):
        factor = float(attrs["source_shape"][0]) / float(attrs["shape"][0])
        settings = settings.at_pixel_size(settings.segmentation.pixel_size_um * factor)
    selected = np.arange(len(fields)) if rows is None else np.asarray(rows, dtype=np.int64)
    if limit is not None:
        selected = selected[:limit]
    n = len(selected)
    if n == 0 and rows is None:
        raise CellResDMError(f"{src}: no fields to measure")
    fields = fields.iloc[selected].reset_index(drop=True)
    if n == 0:
        log.info("features of %s: the shard has no fields", source)
        table = pd.DataFrame({c: pd.Series(dtype=_METADATA_DTYPES[c]) for c in METADATA_COLUMNS})
        write_parquet(table, out)
        return table
    ids = [_image_id(p, f) for p, f in zip(fields["plate"].astype(str), fields["field"].astype(str), strict=True)]
    if len(set(ids)) != len(ids):
        raise CellResDMError(f"{src}: its field table lists a (plate, field) twice")
    exe = resolve_cellprofiler(cellprofiler)
    n_chunks = max(math.ceil(n / settings.chunk_size), min(workers, n))
    chunks = [c for c in np.array_split(np.arange(n), n_chunks) if len(c)]
    log.info(
        "features of %s (%s, %d fields, %s backend): %d chunks, %d workers, %.3f um/px",
        source,
        src,
        n,
        settings.backend,
        len(chunks),
        workers,
        settings.segmentation.pixel_size_um,
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"features {source}", unit="image set")
    out = Path(out).absolute()  # CellProfiler runs in a folder of its own: every path it sees is absolute
    out.parent.mkdir(parents=True, exist_ok=True)
    parts: dict[int, pd.DataFrame] = {}
    seconds: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix=f".{out.stem}-cellprofiler-", dir=out.parent) as work_name:
            work = Path(work_name)
            pipeline = work / "features.cppipe"
            pipeline.write_text(make_measurement_pipeline(settings, measure=settings.backend == "cellprofiler"))
            runner = CellProfilerRunner(exe, pipeline, log, bar)

            def job(k: int) -> pd.DataFrame:
                idx = chunks[k]
                chunk_ids = [ids[i] for i in idx]
                chunk_images = np.stack([np.asarray(images[int(selected[i])]) for i in idx])
                channels = layout.IF_CHANNELS if settings.backend == "cellprofiler" else SEGMENTATION_CHANNELS
                cp_out, secs = _measure_chunk(runner, work, k, chunk_images, chunk_ids, out.with_suffix(""), channels)
                pics = work / f"chunk{k:04d}" / "images"
                if settings.backend == "fast":
                    table = fast_chunk(cp_out, pics, chunk_ids, settings, secs)
                elif settings.backend == "cp_measure":
                    table = cp_measure_chunk(cp_out, pics, chunk_ids, settings, secs)
                else:
                    table = chunk_features(cp_out, chunk_ids, settings.aggregate)
                seconds.update(secs)
                return table

            runner.run_parallel(job, len(chunks), workers, parts.__setitem__)
    finally:
        if bar is not None:
            bar.close()
    features = pd.concat([parts[k] for k in sorted(parts)], axis=0, sort=False).reindex(ids)
    features = features.astype("float64")
    meta = pd.DataFrame(
        {
            "Metadata_Plate": fields["plate"].astype(str).to_numpy(),
            "Metadata_Well": fields["well"].astype(str).to_numpy(),
            "Metadata_Site": fields["site"].astype("int64").to_numpy(),
            "Metadata_Field": fields["field"].astype(str).to_numpy(),
            "Metadata_CellLine": fields["cell_line"].astype(str).to_numpy(),
            "Metadata_Source": source,
            "Metadata_Seconds": [float(seconds[i]) for i in ids],
        },
        index=ids,
    )
    table = _sort_columns(pd.concat([meta, features], axis=1)).reset_index(drop=True)
    empty = int((table.get("Image_Count_Cells", pd.Series(dtype=float)) == 0).sum())
    log.info(
        "features of %s: %d image sets x %d features, %.2f s per image set, %d without cells",
        source,
        len(table),
        table.shape[1] - len(METADATA_COLUMNS),
        table["Metadata_Seconds"].mean() if len(table) else float("nan"),
        empty,
    )
    write_parquet(table, out)
    return table


def gather_features(shards: Sequence[str | os.PathLike], fields: pd.DataFrame, out: str | os.PathLike) -> pd.DataFrame:
    """Put one source's shard feature tables together (:mod:`cellresdm.shards`) as :func:`extract_features`
    writes the whole store in one job: rows in the order of the store's field table ``fields`` (``plate``,
    ``field``).

    Raises:
        CellResDMError: the shards hold no field at all, a field is in two shards or in none.
    """
    parts = [pd.read_parquet(path) for path in shards]
    parts = [part for part in parts if len(part)]
    if not parts:
        raise CellResDMError(f"{out}: no fields to measure in any of {len(shards)} feature shards")
    table = _sort_columns(pd.concat(parts, axis=0, ignore_index=True, sort=False))
    measured = list(zip(table["Metadata_Plate"].astype(str), table["Metadata_Field"].astype(str), strict=True))
    wanted = list(zip(fields["plate"].astype(str), fields["field"].astype(str), strict=True))
    if len(set(measured)) != len(measured):
        raise CellResDMError(f"{out}: a field is in two feature shards")
    if set(measured) != set(wanted):
        missing = sorted(set(wanted) - set(measured))[:5]
        raise CellResDMError(f"{out}: the feature shards do not measure exactly the store's fields (missing {missing})")
    position = {k: i for i, k in enumerate(measured)}
    table = table.iloc[[position[k] for k in wanted]].reset_index(drop=True)
    write_parquet(table, out)
    return table
