"""Field filtering (docs/design.md section 5, stage ``filter``): which fields of a plate go into the datasets.

Every field of the plate grid gets one row with ``keep`` and the first ``reason`` that applies, in this
order: ``missing`` (absent from load_data or a channel without a file), ``unreadable`` (a TIFF that cannot
be decoded, or channels with a wrong dtype or mismatching shapes), ``edge_well`` (wells within
``edge_ring`` rows/columns of the plate border: uneven growth and illumination) and ``black_if`` (a
fluorescence channel with no signal above its background). Edge wells are still read so the QC numbers
exist for them too.

Every read field also gets brightfield statistics of its in-focus plane (:func:`bf_statistics`: focus, median,
contrast, saturated fraction). A predict plate (brightfield only, :class:`FilterSettings` ``channels`` its
model's planes and ``bf_qc`` on) is checked on them instead of ``black_if``: ``blank_bf`` (no structure),
``saturated_bf`` (too many pixels at 65535 in a plane) and ``out_of_focus`` (focus far below the training plates'
fields, robust z against the ``focus_reference`` an exported model carries).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cellresdm import layout
from cellresdm.errors import CellResDMError, ConfigError, ImageError
from cellresdm.io import atomic_path, read_tiff

#: Reasons in the order of precedence; "" means the field is kept.
REASONS: tuple[str, ...] = (
    "missing",
    "unreadable",
    "edge_well",
    "black_if",
    "blank_bf",
    "saturated_bf",
    "out_of_focus",
)
#: Brightfield statistics of every read field (:func:`bf_statistics`), columns of the filter table.
BF_STAT_COLUMNS: tuple[str, ...] = ("bf_focus", "bf_median", "bf_contrast", "bf_saturated")
#: Factor turning a median absolute deviation into a standard deviation (normal data).
MAD_SCALE = 1.4826
#: Smallest spread of a robust reference, relative to its median: a few training fields of nearly equal value
#: must not make every other plate an outlier.
MIN_RELATIVE_SPREAD = 0.05

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class FilterSettings:
    """Settings of :func:`filter_fields`.

    Attributes:
        edge_ring: wells within this many rows/columns of the plate border are edge wells (0 = off).
        black_if_percentile: the "high" percentile measured on every fluorescence channel.
        black_if_min_ratio: a channel is black when its high percentile < ratio * its median (the
            background level), or when it is flat (high percentile == median).
        n_rows, n_cols: plate format (384 wells: 16 x 24).
        workers: threads reading fields in parallel.
        channels: the channels a field must have (all 8; a predict plate the BF planes of its model).
        bf_qc: check the brightfield statistics (predict plates): blank, saturated, out of focus.
        blank_max_contrast, saturated_max_fraction, focus_z: thresholds of those checks (config ``predict``).
        focus_reference: (median, spread) of the focus measure over the training plates' kept fields; None
            skips the focus check.
    """

    edge_ring: int
    black_if_percentile: float
    black_if_min_ratio: float
    n_rows: int = layout.N_ROWS
    n_cols: int = layout.N_COLS
    workers: int = 2
    channels: tuple[str, ...] = layout.ALL_CHANNELS
    bf_qc: bool = False
    blank_max_contrast: float = 0.02
    saturated_max_fraction: float = 0.05
    focus_z: float = 4.0
    focus_reference: tuple[float, float] | None = None

    @classmethod
    def from_config(
        cls,
        section: dict[str, Any],
        workers: int = 2,
        predict: dict[str, Any] | None = None,
        channels: Sequence[str] | None = None,
        focus_reference: tuple[float, float] | None = None,
    ) -> FilterSettings:
        """From the validated config section ``filter`` (the schema holds the defaults); with the section
        ``predict`` a predict plate's settings: its ``channels``, brightfield QC on."""
        values: dict[str, Any] = {}
        if predict is not None:
            values = {
                "channels": tuple(channels or layout.BF_CHANNELS),
                "bf_qc": True,
                "blank_max_contrast": float(predict["blank_max_contrast"]),
                "saturated_max_fraction": float(predict["saturated_max_fraction"]),
                "focus_z": float(predict["focus_z"]),
                "focus_reference": None if focus_reference is None else tuple(map(float, focus_reference)),
            }
        return cls(
            edge_ring=section["edge_ring"],
            black_if_percentile=section["black_if_percentile"],
            black_if_min_ratio=section["black_if_min_ratio"],
            workers=workers,
            **values,
        )

    def validate(self) -> None:
        if self.edge_ring < 0:
            raise ConfigError(f"filter edge_ring must be >= 0, got {self.edge_ring}")
        if not 0.0 < self.black_if_percentile <= 100.0:
            raise ConfigError(f"filter black_if_percentile must be in (0, 100], got {self.black_if_percentile}")
        if self.black_if_min_ratio <= 0:
            raise ConfigError(f"filter black_if_min_ratio must be > 0, got {self.black_if_min_ratio}")
        if self.n_rows < 1 or self.n_cols < 1:
            raise ConfigError(f"filter plate format must be positive, got {self.n_rows} x {self.n_cols}")
        if self.workers < 1:
            raise ConfigError(f"filter workers must be >= 1, got {self.workers}")
        unknown = [c for c in self.channels if c not in layout.ALL_CHANNELS]
        if unknown or layout.BF_CHANNELS[0] not in self.channels:
            raise ConfigError(
                f"filter channels must include {layout.BF_CHANNELS[0]} and be channels, got {self.channels}"
            )


def robust_reference(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(median, spread) of ``values`` (NaN ignored): spread = 1.4826 x MAD, at least :data:`MIN_RELATIVE_SPREAD` x
    |median| (and > 0), so robust z-scores against a few near-equal values stay finite and meaningful.

    Raises:
        CellResDMError: no finite value.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise CellResDMError("robust reference of no finite value")
    median = float(np.median(v))
    spread = MAD_SCALE * float(np.median(np.abs(v - median)))
    return median, max(spread, MIN_RELATIVE_SPREAD * abs(median), 1e-12)


def robust_z(value: float | np.ndarray, reference: Sequence[float]) -> float | np.ndarray:
    """(value - median) / spread against a :func:`robust_reference`."""
    median, spread = reference
    return (np.asarray(value, dtype=np.float64) - median) / spread


def bf_statistics(in_focus: np.ndarray, planes: Sequence[np.ndarray] = ()) -> dict[str, float]:
    """Brightfield statistics of one field.

    Args:
        in_focus: (H, W) uint16 in-focus plane.
        planes: every BF plane read (for the saturated fraction; default the in-focus plane).

    Returns:
        ``bf_focus``: variance of the Laplacian of the plane divided by its mean (scale-free focus measure: a
        defocused field has less high-frequency structure); ``bf_median``: median intensity; ``bf_contrast``:
        (p99 - p1) / max(median, 1); ``bf_saturated``: largest fraction of a plane's pixels at 65535.
    """
    from scipy.ndimage import laplace

    img = np.asarray(in_focus)
    p1, median, p99 = (float(v) for v in uint16_percentiles(img, (1.0, 50.0, 99.0)))
    scaled = img.astype(np.float32) / np.float32(max(float(img.mean()), 1.0))
    saturated = max(float(np.mean(np.asarray(p) == _UINT16_TOP)) for p in (planes or [img]))
    return {
        "bf_focus": float(laplace(scaled).var()),
        "bf_median": median,
        "bf_contrast": (p99 - p1) / max(median, 1.0),
        "bf_saturated": saturated,
    }


_UINT16_TOP = np.iinfo(np.uint16).max


def high_column(channel: str) -> str:
    """Column of the filter table with the measured high percentile of IF ``channel``."""
    return f"p_high_{channel}"


def median_column(channel: str) -> str:
    """Column of the filter table with the measured median of IF ``channel``."""
    return f"median_{channel}"


def uint16_histogram(image: np.ndarray) -> np.ndarray:
    """Pixel counts of every uint16 value (65536 bins, int64)."""
    if image.dtype != np.uint16:
        raise ValueError(f"expected a uint16 image, got {image.dtype}")
    return np.bincount(image.ravel(), minlength=65536)


def histogram_percentiles(counts: np.ndarray, qs: Sequence[float] | np.ndarray) -> np.ndarray:
    """Percentiles of the values whose histogram (one bin per integer value) is ``counts``.

    Equal to ``np.percentile`` (linear interpolation) of the pixels the histogram counts, so per-field
    histograms summed over a plate give exact plate percentiles without holding the plate in memory.
    """
    counts = np.asarray(counts)
    n = int(counts.sum())
    if n == 0:
        raise ValueError("percentiles of an empty histogram")
    cum = np.cumsum(counts)
    rank = np.asarray(qs, dtype=np.float64) / 100.0 * (n - 1)
    lo = np.floor(rank).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    v_lo = np.searchsorted(cum, lo, side="right").astype(np.float64)
    v_hi = np.searchsorted(cum, hi, side="right").astype(np.float64)
    return v_lo + (rank - lo) * (v_hi - v_lo)


def uint16_percentiles(image: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """``np.percentile(image, qs)`` for a uint16 image, via a histogram (faster than sorting)."""
    return histogram_percentiles(uint16_histogram(image), qs)


def is_edge_well(row: int, col: int, ring: int, n_rows: int = layout.N_ROWS, n_cols: int = layout.N_COLS) -> bool:
    """Whether the well at 1-based (row, col) lies within ``ring`` rows/columns of the plate border."""
    if ring <= 0:
        return False
    return row <= ring or row > n_rows - ring or col <= ring or col > n_cols - ring


def _is_absent(value) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _measure_field(paths: dict[str, str], settings: FilterSettings, log: logging.Logger) -> dict:
    """Read the 8 channels of one field; return unreadable problems and IF measurements."""
    problems: list[str] = []
    images: dict[str, np.ndarray] = {}
    for ch in settings.channels:
        try:
            images[ch] = read_tiff(paths[ch], ndim=2)
        except ImageError as exc:
            log.warning("unreadable image (channel %s): %s", ch, exc)
            problems.append(f"{ch}: {exc}")
    for ch, img in images.items():
        if img.dtype != np.uint16:
            msg = f"{ch}: {paths[ch]}: expected dtype uint16, got {img.dtype}"
            log.warning("unreadable image: %s", msg)
            problems.append(msg)
    shapes = {ch: tuple(img.shape) for ch, img in images.items()}
    if len(set(shapes.values())) > 1:
        # The reference is the most common shape (ties: the first channel), so one odd file is named.
        values = list(shapes.values())
        ref_shape = max(values, key=values.count)
        ref_ch = next(ch for ch, shape in shapes.items() if shape == ref_shape)
        for ch, shape in shapes.items():
            if shape != shapes[ref_ch]:
                msg = (
                    f"{ch}: {paths[ch]}: shape {shape} differs from channel {ref_ch} {shapes[ref_ch]} ({paths[ref_ch]})"
                )
                log.warning("unreadable field: %s", msg)
                problems.append(msg)
    out: dict = {"unreadable": problems}
    qs = (settings.black_if_percentile, 50.0)
    black: list[str] = []
    for ch in layout.IF_CHANNELS:
        img = images.get(ch)
        if img is None or img.dtype != np.uint16:
            continue
        p_high, median = (float(v) for v in uint16_percentiles(img, qs))
        out[high_column(ch)] = p_high
        out[median_column(ch)] = median
        if p_high < settings.black_if_min_ratio * median or p_high <= median:
            black.append(
                f"{ch}: p{settings.black_if_percentile:g}={p_high:g} < "
                f"{settings.black_if_min_ratio:g} x median {median:g} ({paths[ch]})"
            )
    out["black_if"] = black
    bf = {ch: img for ch, img in images.items() if ch in layout.BF_CHANNELS and img.dtype == np.uint16}
    in_focus = bf.get(layout.BF_CHANNELS[0])
    blank, saturated, unfocused = [], [], []
    if in_focus is not None and not problems:
        stats = bf_statistics(in_focus, list(bf.values()))
        out.update(stats)
        where = paths[layout.BF_CHANNELS[0]]
        if settings.bf_qc:
            if stats["bf_contrast"] <= settings.blank_max_contrast:
                blank.append(
                    f"(p99 - p1) / median = {stats['bf_contrast']:.3g} <= {settings.blank_max_contrast:g} ({where})"
                )
            if stats["bf_saturated"] > settings.saturated_max_fraction:
                saturated.append(
                    f"{stats['bf_saturated']:.1%} of the pixels at 65535 > {settings.saturated_max_fraction:.1%} "
                    f"({', '.join(paths[c] for c in bf)})"
                )
            if settings.focus_reference is not None:
                z = float(robust_z(stats["bf_focus"], settings.focus_reference))
                if z < -settings.focus_z:
                    unfocused.append(
                        f"focus {stats['bf_focus']:.4g} is {z:.1f} robust SDs from the training fields' "
                        f"{settings.focus_reference[0]:.4g} (limit -{settings.focus_z:g}) ({where})"
                    )
    out["blank_bf"], out["saturated_bf"], out["out_of_focus"] = blank, saturated, unfocused
    return out


def _expected_grid(load_data: pd.DataFrame) -> pd.DataFrame:
    """Every (plate, well, site) the plate should have: wells of load_data x sites 1..max site."""
    rows = []
    for plate, group in load_data.groupby("Metadata_Plate", sort=False):
        max_site = int(group["Metadata_Site"].max())
        for well in sorted(group["Metadata_Well"].unique()):
            row, col = layout.parse_well(well)
            for site in range(1, max_site + 1):
                rows.append((plate, well, row, col, site, layout.field_id(row, col, site)))
    return pd.DataFrame(
        rows,
        columns=["Metadata_Plate", "Metadata_Well", "Metadata_Row", "Metadata_Col", "Metadata_Site", "field"],
    )


def filter_fields(
    load_data: pd.DataFrame,
    settings: FilterSettings,
    log: logging.Logger | None = None,
    progress: bool = True,
    plate: str | None = None,
) -> pd.DataFrame:
    """Decide for every field of the plate whether it is kept, and why not.

    Args:
        load_data: ``raw/{plate}/load_data.parquet`` (one row per field present in the gallery).
        settings: thresholds and worker count.
        log: logger for warnings about unreadable files (defaults to this module's).
        progress: show a tqdm progress bar.
        plate: plate name, used in the error raised for an empty load_data (defaults to the table's).

    Returns:
        One row per field of the grid (wells of load_data x sites 1..max site), sorted by plate, row,
        column and site, with columns Metadata_Plate, Metadata_Well, Metadata_Row, Metadata_Col,
        Metadata_Site, field, keep, reason, detail and ``p_high_{ch}``/``median_{ch}`` per IF channel.
    """
    settings.validate()
    log = log or _LOG
    if len(load_data) == 0:
        name = plate if plate is not None else "<unknown plate>"
        raise CellResDMError(f"plate {name}: load_data has no fields, nothing to filter")
    needed = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"] + [layout.path_column(ch) for ch in settings.channels]
    absent_cols = [c for c in needed if c not in load_data.columns]
    if absent_cols:
        name = plate
        if name is None and "Metadata_Plate" in load_data.columns:
            name = ",".join(map(str, load_data["Metadata_Plate"].unique()))
        raise CellResDMError(f"plate {name}: load_data lacks columns {absent_cols}")
    ld = load_data.copy()
    rc = [layout.parse_well(w) for w in ld["Metadata_Well"]]
    ld["Metadata_Row"] = [r for r, _ in rc]
    ld["Metadata_Col"] = [c for _, c in rc]
    ld["Metadata_Site"] = ld["Metadata_Site"].astype(int)
    ld["field"] = [layout.field_id(r, c, int(s)) for (r, c), s in zip(rc, ld["Metadata_Site"], strict=True)]
    dup = ld.duplicated(["Metadata_Plate", "field"], keep=False)
    if dup.any():
        bad = sorted(set(ld.loc[dup, "field"]))
        raise CellResDMError(f"plate {ld['Metadata_Plate'].iloc[0]}: load_data lists fields twice: {bad[:10]}")

    grid = _expected_grid(ld)
    present = {(p, f): rec for p, f, rec in zip(ld["Metadata_Plate"], ld["field"], ld.to_dict("records"), strict=True)}

    table = grid.copy()
    table["keep"] = False
    table["reason"] = ""
    table["detail"] = ""
    for ch in layout.IF_CHANNELS:
        table[high_column(ch)] = np.nan
        table[median_column(ch)] = np.nan
    for col in BF_STAT_COLUMNS:
        table[col] = np.nan

    issues: dict[int, dict[str, list[str]]] = {i: {r: [] for r in REASONS} for i in table.index}
    to_read: dict[int, dict[str, str]] = {}
    for i, (p, f, row, col) in enumerate(
        zip(table["Metadata_Plate"], table["field"], table["Metadata_Row"], table["Metadata_Col"], strict=True)
    ):
        idx = table.index[i]
        if is_edge_well(row, col, settings.edge_ring, settings.n_rows, settings.n_cols):
            issues[idx]["edge_well"].append(f"edge well (within {settings.edge_ring} of the plate border)")
        rec = present.get((p, f))
        if rec is None:
            issues[idx]["missing"].append("field absent from load_data")
            continue
        absent = [ch for ch in settings.channels if _is_absent(rec[layout.path_column(ch)])]
        if absent:
            issues[idx]["missing"].append(f"no file for channel(s) {', '.join(absent)}")
            continue
        to_read[idx] = {ch: str(rec[layout.path_column(ch)]) for ch in settings.channels}

    if to_read:
        with ThreadPoolExecutor(max_workers=settings.workers) as pool:
            futures = {pool.submit(_measure_field, paths, settings, log): idx for idx, paths in to_read.items()}
            bar = tqdm(
                as_completed(futures),
                total=len(futures),
                desc="filter fields",
                disable=not progress,
                unit="field",
            )
            for fut in bar:
                idx = futures[fut]
                res = fut.result()
                issues[idx]["unreadable"].extend(res.pop("unreadable"))
                for reason in ("black_if", "blank_bf", "saturated_bf", "out_of_focus"):
                    issues[idx][reason].extend(res.pop(reason))
                for col, val in res.items():
                    table.at[idx, col] = val

    reasons, details = [], []
    for idx in table.index:
        found = issues[idx]
        reason = next((r for r in REASONS if found[r]), "")
        reasons.append(reason)
        ordered = ([reason] if reason else []) + [r for r in REASONS if r != reason]
        details.append("; ".join(f"{r}: {m}" for r in ordered for m in found[r]))
    table["reason"] = reasons
    table["detail"] = details
    table["keep"] = table["reason"] == ""
    table = table.sort_values(["Metadata_Plate", "Metadata_Row", "Metadata_Col", "Metadata_Site"])
    table = table.reset_index(drop=True)
    table["keep"] = table["keep"].astype(bool)
    for col in ["Metadata_Row", "Metadata_Col", "Metadata_Site"]:
        table[col] = table[col].astype(np.int64)
    for col in ["Metadata_Plate", "Metadata_Well", "field", "reason", "detail"]:
        table[col] = table[col].astype(object)
    n_keep = int(table["keep"].sum())
    counts = table["reason"].value_counts().to_dict()
    log.info(
        "filter: kept %d of %d fields; dropped %s",
        n_keep,
        len(table),
        {r: int(counts.get(r, 0)) for r in REASONS},
    )
    return table


#: Status colours of the plate map: (label, RGB colour).
_STATUS: tuple[tuple[str, str], ...] = (
    ("not imaged", "#ffffff"),
    ("all kept", "#2ca02c"),
    ("some dropped", "#bcbd22"),
    ("missing", "#7f7f7f"),
    ("unreadable", "#d62728"),
    ("edge_well", "#1f77b4"),
    ("black_if", "#000000"),
    ("blank_bf", "#8c564b"),
    ("saturated_bf", "#ff7f0e"),
    ("out_of_focus", "#e377c2"),
)


def well_status(reasons: Sequence[str]) -> str:
    """Status of one well from the reasons of its fields: all kept, some dropped, or the main drop reason."""
    reasons = list(reasons)
    if not reasons:
        return "not imaged"
    dropped = [r for r in reasons if r]
    if not dropped:
        return "all kept"
    if len(dropped) < len(reasons):
        return "some dropped"
    # All dropped: the most common reason; ties go to the reason that comes first in precedence.
    return max(REASONS, key=lambda r: (dropped.count(r), -REASONS.index(r)))


def plot_plate_map(table: pd.DataFrame, path: str | Path, plate: str) -> None:
    """Write a PNG map of the plate: every well coloured by the filter status of its fields."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    sub = table[table["Metadata_Plate"] == plate] if "Metadata_Plate" in table.columns else table
    n_rows = max(layout.N_ROWS, int(sub["Metadata_Row"].max()) if len(sub) else 0)
    n_cols = max(layout.N_COLS, int(sub["Metadata_Col"].max()) if len(sub) else 0)
    labels = [s for s, _ in _STATUS]
    grid = np.zeros((n_rows, n_cols), dtype=int)
    for (row, col), group in sub.groupby(["Metadata_Row", "Metadata_Col"]):
        grid[int(row) - 1, int(col) - 1] = labels.index(well_status(group["reason"].tolist()))

    fig = Figure(figsize=(12, 7.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cmap = ListedColormap([c for _, c in _STATUS])
    ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(_STATUS) - 0.5, interpolation="nearest")
    ax.set_xticks(range(n_cols))
    ax.set_xticklabels([f"{c + 1:02d}" for c in range(n_cols)], fontsize=7)
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels([chr(ord("A") + r) for r in range(n_rows)], fontsize=7)
    ax.set_xticks(np.arange(-0.5, n_cols, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n_rows, 1), minor=True)
    ax.grid(which="minor", color="#cccccc", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    n_keep = int(sub["keep"].sum()) if len(sub) else 0
    ax.set_title(f"{plate}: {n_keep}/{len(sub)} fields kept")
    handles = [
        Patch(facecolor=c, edgecolor="#555555", label=f"{s} ({int((grid == k).sum())} wells)")
        for k, (s, c) in enumerate(_STATUS)
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="well status")

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
