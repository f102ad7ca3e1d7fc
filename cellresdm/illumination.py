"""Illumination correction as the cpg0000 analysis does it: every channel divided by the plate's function.

The Cell Painting Gallery holds one function per plate and channel,
``.../images/{batch}/illum/{plate}/{plate}_Illum{channel}.npy`` (docs/design.md section 3): CellProfiler's
CorrectIlluminationCalculate (Regular, median filter, all images of the plate) rescaled by its robust minimum
("Rescale the illumination function?: Yes": values below the 2nd percentile of the positive values are raised to
it, then everything is divided by it), so a function is >= 1 and CorrectIlluminationApply (Divide) makes an
image ``image / function``. The cpg0000 segmentation thresholds were tuned on such corrected images.

Here the download stage fetches the functions into ``raw/{plate}/illum/`` and names them in the plate's
load_data table (``illum_{channel}`` columns, the same path on every row, like CellProfiler's LoadData
``FileName_Illum*``; None everywhere for a plate that runs uncorrected). :func:`plate_illumination` reads that
record and :meth:`PlateIllumination.apply` corrects a raw image: float division, then back to uint16 counts
(rounded, clipped to 0-65535), so every stage keeps its uint16 input contract (CellProfiler reads counts / 65535,
the dataset stage takes uint16 histograms and percentiles). Ground truth (:func:`write_corrected`) and datasets
apply the same functions with the same rounding, so CellProfiler labels and dataset images see identical pixels.

:func:`falloff_qc` measures what correction does: per channel, the mean intensity of the field's corner
regions over that of its centre, pooled over the plate's kept fields, before and after correction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cellresdm import layout
from cellresdm.errors import CellResDMError, IlluminationError
from cellresdm.io import read_tiff, write_tiff

_LOG = logging.getLogger(__name__)

#: CellProfiler's robust minimum: the value at this fraction of the sorted positive values of the function.
ROBUST_FACTOR = 0.02
#: At most this many kept fields (evenly spread over the plate) enter :func:`falloff_qc`.
QC_MAX_FIELDS = 64
#: Columns of :func:`falloff_qc`.
QC_COLUMNS = ["plate", "channel", "corrected", "n_fields", "corner_to_centre_raw", "corner_to_centre_corrected"]


def rescale_robust_minimum(function: np.ndarray) -> np.ndarray:
    """CorrectIlluminationCalculate's "Rescale: Yes": raise values below the robust minimum (the 2nd percentile
    of the positive values) to it, then divide by it; the result is >= 1. (H, W) float -> (H, W) float32.

    Raises:
        IlluminationError: the function has no positive value.
    """
    function = np.asarray(function, dtype=np.float64)
    positive = np.sort(function[function > 0], axis=None)
    if positive.size == 0:
        raise IlluminationError("an illumination function needs positive values to be rescaled")
    robust_min = positive[int(positive.size * ROBUST_FACTOR)]
    return (np.maximum(function, robust_min) / robust_min).astype(np.float32)


def load_function(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """One illumination function as (H, W) float32, checked: 2-D, numeric, finite, > 0 everywhere, and of
    ``shape`` when given.

    Raises:
        IlluminationError: naming ``path``: missing, unreadable (not a plain ``.npy`` array), or failing a check.
    """
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise IlluminationError(f"{path}: illumination function missing") from None
    except (OSError, ValueError) as exc:
        raise IlluminationError(f"{path}: not a readable .npy illumination function ({exc})") from exc
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        got = f"shape {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise IlluminationError(f"{path}: an illumination function must be a 2-D array, got {got}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise IlluminationError(f"{path}: an illumination function must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float32)
    bad = ~np.isfinite(array) | (array <= 0)
    if bad.any():
        raise IlluminationError(
            f"{path}: an illumination function must be finite and > 0 everywhere ({int(bad.sum())} of {bad.size} "
            "values are not); dividing by it would give infinite or negative intensities"
        )
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise IlluminationError(
            f"{path}: illumination function of shape {tuple(array.shape)} does not fit images of shape {tuple(shape)}"
        )
    return array


def correct(image: np.ndarray, function: np.ndarray, source: str = "image") -> np.ndarray:
    """``image / function`` as uint16 counts (rounded, clipped to 0-65535): (H, W) -> (H, W) uint16.

    Raises:
        IlluminationError: the shapes differ (naming ``source``).
    """
    if image.shape != function.shape:
        raise IlluminationError(
            f"{source}: image of shape {image.shape} does not fit its illumination function of shape {function.shape}"
        )
    out = np.rint(image.astype(np.float32) / function)
    return np.clip(out, 0, 65535, out=out).astype(np.uint16)


@dataclass
class PlateIllumination:
    """The illumination functions of one plate (``paths``: channel -> ``.npy``; empty: the plate is uncorrected).

    Functions are loaded on first use and kept (thread-safe), so a plate's fields share one copy.
    """

    plate: str
    paths: dict[str, str] = field(default_factory=dict)
    _cache: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def corrected(self) -> bool:
        return bool(self.paths)

    def function(self, channel: str, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The (H, W) float32 function of ``channel``.

        Raises:
            IlluminationError: the plate has functions but none for ``channel`` (naming the expected file), or
                the file fails :func:`load_function`, or it does not have ``shape``.
        """
        path = self.paths.get(channel)
        if path is None:
            expected = layout.illum_filename(self.plate, channel)
            have = ", ".join(sorted(self.paths)) or "none"
            raise IlluminationError(f"plate {self.plate}: no illumination function {expected} (has {have})")
        with self._lock:
            if channel not in self._cache:
                self._cache[channel] = load_function(path)
        function = self._cache[channel]
        if shape is not None and tuple(function.shape) != tuple(shape):
            raise IlluminationError(
                f"{path}: illumination function of shape {function.shape} does not fit images of shape {tuple(shape)}"
            )
        return function

    def apply(self, channel: str, image: np.ndarray, source: str = "image") -> np.ndarray:
        """The corrected image of ``channel`` ((H, W) uint16), or ``image`` itself when the plate is uncorrected.

        Raises:
            IlluminationError: naming the function file or ``source`` when they do not fit.
        """
        if not self.corrected:
            return image
        function = self.function(channel)
        if image.shape != function.shape:
            raise IlluminationError(
                f"{source}: image of shape {image.shape} does not fit the illumination function "
                f"{self.paths[channel]} of shape {function.shape}"
            )
        return correct(image, function, source)


def plate_illumination(load_data: pd.DataFrame, plate: str | None = None) -> PlateIllumination:
    """The functions a plate's load_data table names (``illum_{channel}`` columns; see the module docstring).

    A table without those columns (written before correction existed) or with None in all of them is an
    uncorrected plate.

    Raises:
        IlluminationError: the rows name different functions for one channel, or only some channels have one.
    """
    if plate is None:
        plates = load_data["Metadata_Plate"].astype(str).unique() if "Metadata_Plate" in load_data else []
        plate = plates[0] if len(plates) == 1 else "?"
    paths: dict[str, str] = {}
    for channel in layout.ALL_CHANNELS:
        column = layout.illum_column(channel)
        if column not in load_data.columns:
            continue
        values = {str(v) for v in load_data[column] if isinstance(v, str) and v}
        if len(values) > 1:
            raise IlluminationError(
                f"plate {plate}: load_data column {column} names several functions: {sorted(values)}"
            )
        if values:
            paths[channel] = values.pop()
    if paths and len(paths) != len(layout.ALL_CHANNELS):
        lacking = [layout.illum_filename(plate, c) for c in layout.ALL_CHANNELS if c not in paths]
        raise IlluminationError(
            f"plate {plate}: load_data names illumination functions for some channels only; no {lacking}"
        )
    return PlateIllumination(plate, paths)


def write_corrected(
    table: pd.DataFrame, illum: PlateIllumination, channels: Sequence[str], out_dir: str | Path
) -> pd.DataFrame:
    """Corrected copies of the ``channels`` images of ``table`` (columns ``path_{channel}``) as uint16 TIFFs in
    ``out_dir`` (same file names); returns the table with those path columns pointing at the copies. An
    uncorrected plate returns ``table`` unchanged and writes nothing.

    Raises:
        ImageError, IlluminationError: an image is unreadable or does not fit its function (naming the files).
    """
    if not illum.corrected:
        return table
    out_dir = Path(out_dir)
    table = table.copy()
    for channel in channels:
        column = layout.path_column(channel)
        new = []
        for path in table[column]:
            image = read_tiff(path, ndim=2)
            target = out_dir / channel / Path(path).name
            write_tiff(target, illum.apply(channel, image, str(path)), compression=None)
            new.append(str(target))
        table[column] = new
    return table


# ----------------------------------------------------------------------------------------------- QC


def region_masks(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(corners, centre) boolean (H, W) masks: the four corner squares of a quarter of each side, and the
    central square of half of each side (both a quarter of the field)."""
    h, w = shape
    qh, qw = max(h // 4, 1), max(w // 4, 1)
    corners = np.zeros(shape, dtype=bool)
    for ys in (slice(0, qh), slice(h - qh, h)):
        for xs in (slice(0, qw), slice(w - qw, w)):
            corners[ys, xs] = True
    centre = np.zeros(shape, dtype=bool)
    centre[h // 4 : h - h // 4, w // 4 : w - w // 4] = True
    return corners, centre


def falloff_qc(
    load_data: pd.DataFrame,
    fields: pd.DataFrame,
    illum: PlateIllumination,
    max_fields: int = QC_MAX_FIELDS,
    log: logging.Logger | None = None,
    channels: Sequence[str] = layout.ALL_CHANNELS,
) -> pd.DataFrame:
    """Illumination fall-off of a plate per channel (of ``channels``: a predict plate has its BF planes only),
    before and after correction.

    The ratio is the mean intensity of the corner regions over that of the centre (:func:`region_masks`),
    pooled over up to ``max_fields`` kept fields of the filter table ``fields`` (evenly spread): an even field
    gives 1, a vignetted one less. After division by a matching function it is close to 1.

    Args:
        load_data: the plate's load_data table (``field``, ``path_{channel}``).
        fields: its filter table (``field``, ``keep``).
        illum: the plate's functions (:func:`plate_illumination`).
        max_fields: most fields read.
        log: logger of one line per channel.

    Returns:
        One row per channel of ``layout.ALL_CHANNELS``: columns :data:`QC_COLUMNS`
        (``corner_to_centre_corrected`` is NaN for an uncorrected plate, both ratios for a plate without kept
        fields).
    """
    log = log or _LOG
    if max_fields < 1:
        raise CellResDMError(f"illumination QC: max_fields must be >= 1, got {max_fields}")
    kept = fields.loc[fields["keep"].astype(bool), "field"].tolist()
    rows_of = load_data.set_index("field") if len(load_data) else load_data
    kept = [f for f in kept if f in rows_of.index]
    if len(kept) > max_fields:
        kept = [kept[i] for i in np.unique(np.linspace(0, len(kept) - 1, max_fields).round().astype(int))]
    sums = {c: np.zeros(4) for c in channels}  # raw corner, raw centre, corrected corner, centre
    masks: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for name in kept:
        record = rows_of.loc[name]
        for channel in channels:
            path = str(record[layout.path_column(channel)])
            raw = read_tiff(path, ndim=2)
            corners, centre = masks.setdefault(raw.shape, region_masks(raw.shape))
            sums[channel][:2] += (raw[corners].mean(), raw[centre].mean())
            if illum.corrected:
                flat = illum.apply(channel, raw, path)
                sums[channel][2:] += (flat[corners].mean(), flat[centre].mean())
    rows = []
    for channel in channels:
        s = sums[channel]
        ratio_raw = s[0] / s[1] if kept and s[1] > 0 else np.nan
        ratio_corr = s[2] / s[3] if kept and illum.corrected and s[3] > 0 else np.nan
        rows.append((illum.plate, channel, illum.corrected, len(kept), float(ratio_raw), float(ratio_corr)))
        log.info(
            "plate %s %s: corner/centre intensity %.3f raw, %s corrected (%d fields)",
            illum.plate,
            channel,
            ratio_raw,
            f"{ratio_corr:.3f}" if illum.corrected else "not",
            len(kept),
        )
    return pd.DataFrame(rows, columns=QC_COLUMNS)
