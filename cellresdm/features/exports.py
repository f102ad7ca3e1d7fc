"""Per-image features of a CellProfiler chunk from its exports (``Image.csv``, ``{Nuclei,Cells,Cytoplasm}.csv``)
and the chunk's label images; both backends read these."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cellresdm import layout
from cellresdm.cppipe import COMPARTMENTS
from cellresdm.errors import CellResDMError
from cellresdm.features.columns import CATEGORIES
from cellresdm.io import read_tiff

#: Image measurements kept as ``Image_*`` features.
_IMAGE_CATEGORIES = ("Count", "Intensity", "Granularity", "Texture", "Correlation")


def _category(measurement: str) -> str:
    return measurement.split("_", 1)[0]


def _aggregate_objects(table: pd.DataFrame, prefix: str, how: str) -> pd.DataFrame:
    """Per-image median/mean of per-object measurements (rows: ImageNumber), columns ``{prefix}_{name}``."""
    # object numbers of the closest neighbours are identifiers, not measurements
    cols = [c for c in table.columns if _category(c) in CATEGORIES and "ObjectNumber" not in c]
    values = table[cols].apply(pd.to_numeric, errors="coerce").replace([np.inf, -np.inf], np.nan)
    agg = values.groupby(table["ImageNumber"].to_numpy()).agg(how)
    return agg.add_prefix(f"{prefix}_")


def _image_measurements(image: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in image.columns if _category(c) in _IMAGE_CATEGORIES]
    out = image[cols].apply(pd.to_numeric, errors="coerce").replace([np.inf, -np.inf], np.nan)
    out.index = image["ImageNumber"].to_numpy()
    return out.add_prefix("Image_")


def read_export(out: Path, name: str) -> pd.DataFrame:
    """CellProfiler's export ``{name}.csv`` in ``out``; one clear error naming the file when unreadable."""
    path = out / f"{name}.csv"
    try:
        return pd.read_csv(path, low_memory=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CellResDMError(f"cannot read CellProfiler export {path}: {exc}") from exc


def chunk_features(out: Path, ids: list[str], how: str) -> pd.DataFrame:
    """Per-image features of one CellProfiler chunk, indexed by image id in ``ids`` order."""
    image = read_export(out, "Image")
    if "Metadata_Field" not in image.columns:
        raise CellResDMError(f"{out / 'Image.csv'} lacks Metadata_Field")
    number = dict(zip(image["Metadata_Field"].astype(str), image["ImageNumber"], strict=True))
    lacking = [i for i in ids if i not in number]
    if lacking:
        raise CellResDMError(f"CellProfiler exported no Image row for image sets {lacking[:5]} ({out})")
    parts = [_image_measurements(image)]
    for obj in COMPARTMENTS:
        parts.append(_aggregate_objects(read_export(out, obj), obj, how))
    table = pd.concat(parts, axis=1).reindex([number[i] for i in ids])
    table.index = ids
    return table


def labels_of(out: Path, image_id: str) -> dict[str, np.ndarray]:
    """{compartment: (H, W) int32 label image} CellProfiler saved for image set ``image_id`` in ``out``."""
    return {obj: read_tiff(out / f"{image_id}_{obj.lower()}.tiff", ndim=2).astype(np.int32) for obj in COMPARTMENTS}


def measure_chunk_in_process(
    cp_out: Path,
    pics: Path,
    ids: list[str],
    seconds: dict[str, float],
    measure: Callable[[dict[str, np.ndarray], np.ndarray, dict[str, float]], dict[str, float]],
) -> pd.DataFrame:
    """Per-image features of a chunk measured in this process from CellProfiler's label images (the
    ``fast`` and ``cp_measure`` backends): ``measure(labels, images, counts)`` gets the image set's
    {compartment: (H, W) labels}, its (5, H, W) images in [0, 1] (layout.IF_CHANNELS, the values CellProfiler
    read) and {compartment: object count}, and returns the image set's row; reading and measuring time is added
    to ``seconds``."""
    image = read_export(cp_out, "Image")
    counts = image.set_index(image["Metadata_Field"].astype(str))
    rows = []
    for i in ids:
        t0 = time.perf_counter()
        labels = labels_of(cp_out, i)
        imgs = np.stack([read_tiff(pics / f"{i}_{c}.tiff", ndim=2) for c in layout.IF_CHANNELS]) / 65535.0
        rows.append(measure(labels, imgs, {o: float(counts.loc[i, f"Count_{o}"]) for o in COMPARTMENTS}))
        seconds[i] += time.perf_counter() - t0
    return pd.DataFrame(rows, index=ids)
