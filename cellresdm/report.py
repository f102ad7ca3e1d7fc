"""The paper's figures and tables and one self-contained HTML report, from the run's own outputs (DESIGN.md
section 5, stage ``report``).

Everything here reads files under ``results/`` that earlier rules wrote and writes into ``results/reports/``:

- Fig. 4 (:func:`fig4_examples`): one test field, real IF and every method's IF and boundaries on a shared
  display range per channel.
- Fig. 5 (:func:`fig5_quality`): box plots of MSE, PSNR and SSIM per channel and method, with the paired t-test
  markers of :func:`significance_markers`.
- Figs. 6 and 7: copies of the segmentation rule's PNGs (:mod:`cellresdm.segscores`).
- Table 2: a copy of ``features/table2_features.csv`` when the features stage wrote it.
- Table 3 (:func:`table3_latent`): pixel vs latent CellResDM, MSE and sampling time.
- Throughput (:func:`throughput_table`): seconds per image of every step timed in this run.
- Methods (:func:`methods_status`), field filtering (:func:`filtering_summary`) and the ground-truth QC table.

A missing optional input never stops the report: the item it feeds is left out and the report lists it, with the
path that was looked for.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellresdm import layout
from cellresdm.errors import CellResDMError
from cellresdm.io import atomic_path, load_torch_dict
from cellresdm.metrics import TRIVIAL, quality_ttests
from cellresdm.stats import ALPHA

_LOG = logging.getLogger("cellresdm")

#: Marker above a method's box when the reference is significantly better than that method.
REFERENCE_BETTER = "*"
#: Marker when the reference is significantly worse than that method.
REFERENCE_WORSE = "\u2020"
#: Metrics of Fig. 5 and their axis labels.
FIG5_METRICS: dict[str, str] = {"mse": "MSE (0-255)", "psnr": "PSNR (dB)", "ssim": "SSIM"}
#: Methods trained with a GAN loss, whose checkpoint config says whether the VGG perceptual loss was on.
GAN_METHODS: tuple[str, ...] = ("pix2pix", "spade")
#: Name prefix of the latent-space CellResDM variants of Table 3.
LATENT_PREFIX = "cellresdm_latent"
#: Filter reasons of ``fields/{plate}.parquet`` (:mod:`cellresdm.filters`).
FILTER_REASONS: tuple[str, ...] = ("edge_well", "black_if", "missing", "unreadable")
THROUGHPUT_COLUMNS: tuple[str, ...] = (
    "step",
    "source",
    "seconds_per_image",
    "images_per_second",
    "seconds_vs_reference",
    "seconds_total",
    "image_size",
    "steps",
    "device",
    "precision",
    "note",
)
TABLE3_COLUMNS: tuple[str, ...] = ("method", "space", "mse", "seconds_per_image", "image_size", "device", "note")
METHODS_COLUMNS: tuple[str, ...] = ("method", "enabled", "trained", "sampled", "perceptual_loss", "note")
_PANEL_LABELS = ("BF (in focus)", *layout.IF_CHANNELS, "nuclei boundary", "cell boundary")


# ------------------------------------------------------------------------------------------------- input


def _read_table(path: str | os.PathLike, what: str) -> pd.DataFrame:
    """A CSV or parquet table; one clear error naming the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CellResDMError(f"{path}: {what} is missing")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    except Exception as exc:  # pandas/pyarrow raise many types for a damaged file
        raise CellResDMError(f"{path}: unreadable {what} ({type(exc).__name__}: {exc})") from exc


def _require(table: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise CellResDMError(f"{where}: lacks column(s) {', '.join(missing)}")


def _open_group(path: str | os.PathLike) -> Any:
    import zarr

    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise CellResDMError(f"{path}: zarr store is missing (no zarr.json)")
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for corrupt metadata
        raise CellResDMError(f"{path}: cannot open zarr store ({type(exc).__name__}: {exc})") from exc


def _array(group: Any, name: str, path: str | os.PathLike, ndim: int) -> Any:
    try:
        arr = group[name]
    except KeyError:
        raise CellResDMError(f"{path}: array {name!r} is missing") from None
    if arr.ndim != ndim:
        raise CellResDMError(f"{path}: array {name!r} must have {ndim} dimensions, got shape {arr.shape}")
    return arr


def _read_json(path: str | os.PathLike, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CellResDMError(f"{path}: {what} is missing")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CellResDMError(f"{path}: unreadable {what} ({exc})") from exc
    if not isinstance(record, dict):
        raise CellResDMError(f"{path}: {what} must be a JSON object")
    return record


def _size(value: Any) -> str:
    """'HxW' from a [H, W] list or shape tuple; '' when unknown."""
    if value is None:
        return ""
    if isinstance(value, list | tuple | np.ndarray) and len(value) >= 2:
        return f"{int(value[-2])}x{int(value[-1])}"
    return str(value)


# ------------------------------------------------------------------------------------------------- Fig. 4


def median_index(quality: pd.DataFrame, reference: str = "cellresdm") -> int:
    """Test image whose reference SSIM (mean over IF channels) is the median one (the lower middle of an even
    count), or 0 when the quality table has no rows of the reference.

    Args:
        quality: :func:`cellresdm.metrics.image_quality` rows (method, index, channel, ssim).
    """
    _require(quality, ["method", "index", "ssim"], "image quality table")
    ref = quality[quality["method"] == reference]
    if ref.empty:
        return 0
    per_image = ref.groupby("index")["ssim"].mean().sort_values(kind="stable")
    return int(per_image.index[(len(per_image) - 1) // 2])


def display_ranges(real: np.ndarray, low: float = 0.5, high: float = 99.5) -> list[tuple[float, float]]:
    """Display range per channel from the real image's percentiles (shared by every row of Fig. 4).

    Args:
        real: (C, H, W) float, the real field's channels.

    Returns:
        (vmin, vmax) per channel; a flat channel gets (min, min + 1) so it still draws.
    """
    ranges = []
    for channel in np.asarray(real, dtype=np.float32):
        lo, hi = (float(v) for v in np.percentile(channel, [low, high]))
        if not hi > lo:
            lo, hi = float(channel.min()), float(channel.max())
        if not hi > lo:
            hi = lo + 1.0
        ranges.append((lo, hi))
    return ranges


def fig4_examples(
    dataset: str | os.PathLike,
    predictions: Mapping[str, str | os.PathLike],
    out_png: str | os.PathLike,
    index: int | None = None,
    quality: pd.DataFrame | None = None,
    reference: str = "cellresdm",
) -> int:
    """Write Fig. 4: one test field, rows real + each method, columns BF, the 5 IF channels and 2 boundaries.

    Every row of a column uses the display range of the real image's 0.5/99.5 percentiles in that column
    (:func:`display_ranges`), so brightness differences between methods stay visible. Method rows show no BF
    (the BF in the first row is every method's input).

    Args:
        dataset: ``datasets/test.zarr`` with ``bf`` (N, 3, H, W), ``if`` (N, 5, H, W) and ``boundaries``
            (N, 2, H, W).
        predictions: method -> ``predictions/{method}/test.zarr`` with ``if`` (N, 5, H, W) and ``boundaries``
            (N, 2, H, W) probabilities; rows in this order.
        out_png: the PNG to write (atomically).
        index: the field to show; default :func:`median_index` of ``quality`` (0 without it).
        quality: image-quality table, used only to choose the default field.
        reference: method whose median SSIM picks the default field.

    Returns:
        The index of the field shown.

    Raises:
        CellResDMError: a store or array is missing, shapes differ, or ``index`` is out of range.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    real = _open_group(dataset)
    bf = _array(real, "bf", dataset, 4)
    real_if = _array(real, "if", dataset, 4)
    real_b = _array(real, "boundaries", dataset, 4)
    n = real_if.shape[0]
    if index is None:
        index = median_index(quality, reference) if quality is not None else 0
    if not 0 <= index < n:
        raise CellResDMError(f"{dataset}: Fig. 4 field index {index} is out of range (0..{n - 1})")
    truth = np.concatenate([np.asarray(real_if[index]), np.asarray(real_b[index])]).astype(np.float32)
    rows: dict[str, np.ndarray] = {"real": truth}
    for method, path in predictions.items():
        store = _open_group(path)
        pred_if = _array(store, "if", path, 4)
        pred_b = _array(store, "boundaries", path, 4)
        if pred_if.shape != real_if.shape or pred_b.shape != real_b.shape:
            raise CellResDMError(
                f"{path}: predictions {pred_if.shape} / {pred_b.shape} do not match the dataset {dataset} "
                f"({real_if.shape} / {real_b.shape})"
            )
        rows[method] = np.concatenate([np.asarray(pred_if[index]), np.asarray(pred_b[index])]).astype(np.float32)
    field_name = ""
    fields_file = Path(dataset) / "fields.parquet"
    if fields_file.is_file():
        fields = pd.read_parquet(fields_file)
        if {"plate", "field"} <= set(fields.columns) and len(fields) == n:
            field_name = f"{fields['plate'].iloc[index]} {fields['field'].iloc[index]}"
    bf_plane = np.asarray(bf[index, 0], dtype=np.float32)
    ranges = [display_ranges(bf_plane[None])[0], *display_ranges(truth)]

    ncols = len(_PANEL_LABELS)
    fig = Figure(figsize=(1.6 * ncols, 1.7 * len(rows) + 0.5), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, (name, image) in enumerate(rows.items()):
        panels = [bf_plane if r == 0 else None, *image]
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if panel is None:
                ax.axis("off")
                continue
            vmin, vmax = ranges[c]
            ax.imshow(panel, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            if r == 0:
                ax.set_title(_PANEL_LABELS[c], fontsize=8)
        # the row label sits in the first drawn panel of the row (method rows have no BF panel)
        label_ax = axes[r][0] if r == 0 else axes[r][1]
        label_ax.set_ylabel(name, fontsize=9)
    fig.suptitle(f"Fig. 4: test field {index}" + (f" ({field_name})" if field_name else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return index


# ------------------------------------------------------------------------------------------------- Fig. 5


def significance_markers(ttests: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Which marker goes above which box of Fig. 5 (pure; no plotting).

    Args:
        ttests: :func:`cellresdm.metrics.quality_ttests` rows (reference, other, channel, metric, p, better).
        alpha: significance level.

    Returns:
        One row per t-test row with columns other, channel, metric, p, better and marker:
        :data:`REFERENCE_BETTER` when p < alpha and the reference is better, :data:`REFERENCE_WORSE` when
        p < alpha and the other source is better, "" otherwise (not significant, tie or NaN p).
    """
    _require(ttests, ["other", "channel", "metric", "p", "better"], "image-quality t-tests")
    p = pd.to_numeric(ttests["p"], errors="coerce")
    significant = p.lt(alpha).fillna(False).to_numpy(dtype=bool)
    better = ttests["better"].astype(str).to_numpy()
    marker = np.where(
        significant & (better == "reference"),
        REFERENCE_BETTER,
        np.where(significant & (better == "other"), REFERENCE_WORSE, ""),
    )
    out = ttests[["other", "channel", "metric"]].copy()
    out["p"] = p
    out["better"] = better
    out["marker"] = marker
    return out.reset_index(drop=True)


def _method_order(methods: Sequence[str], reference: str) -> list[str]:
    """Reference first, the trivial BF copy last, the rest in their given order."""
    rest = [m for m in methods if m not in (reference, TRIVIAL)]
    return [m for m in (reference, *rest, TRIVIAL) if m in methods]


def fig5_quality(
    quality_table: pd.DataFrame,
    ttests: pd.DataFrame,
    out_png: str | os.PathLike,
    reference: str = "cellresdm",
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """Write Fig. 5: box plots of MSE, PSNR and SSIM (rows) per IF channel (columns) and method (boxes).

    Above a method's box: :data:`REFERENCE_BETTER` where its paired t-test against ``reference`` has p < alpha
    and the reference is better, :data:`REFERENCE_WORSE` where p < alpha and the reference is worse
    (:func:`significance_markers`). The trivial BF copy (``bf_copy``) is drawn last as the floor.

    Args:
        quality_table: :func:`cellresdm.metrics.image_quality` rows (method, index, channel, mse, psnr, ssim).
        ttests: :func:`cellresdm.metrics.quality_ttests` of ``reference`` (may be empty).
        out_png: the PNG to write (atomically).

    Returns:
        The markers drawn: :func:`significance_markers` rows restricted to Fig. 5's metrics, with a marker.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _require(quality_table, ["method", "channel", *FIG5_METRICS], "image quality table")
    markers = significance_markers(ttests, alpha) if len(ttests) else significance_markers(_empty_ttests())
    drawn = markers[(markers["marker"] != "") & markers["metric"].isin(list(FIG5_METRICS))]
    methods = _method_order(list(dict.fromkeys(quality_table["method"])), reference)
    channels = [c for c in layout.IF_CHANNELS if c in set(quality_table["channel"])]
    fig = Figure(figsize=(max(2.2 * len(channels), 6), 2.7 * len(FIG5_METRICS) + 0.8), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(FIG5_METRICS), max(len(channels), 1), squeeze=False)
    positions = np.arange(1, len(methods) + 1)
    for r, (metric, label) in enumerate(FIG5_METRICS.items()):
        for c, channel in enumerate(channels):
            ax = axes[r][c]
            sub = quality_table[quality_table["channel"] == channel]
            data = []
            for m in methods:
                values = sub.loc[sub["method"] == m, metric].to_numpy(dtype=float)
                data.append(values[np.isfinite(values)])  # PSNR is inf for an exact prediction
            ax.boxplot(data, positions=positions, widths=0.6, showfliers=True, flierprops={"markersize": 2})
            top = max((v.max() for v in data if len(v)), default=1.0)
            bottom = min((v.min() for v in data if len(v)), default=0.0)
            span = (top - bottom) or 1.0
            here = drawn[(drawn["channel"] == channel) & (drawn["metric"] == metric)]
            for row in here.itertuples():
                if row.other not in methods:
                    continue
                k = methods.index(row.other)
                y = data[k].max() if len(data[k]) else top
                colour = "black" if row.marker == REFERENCE_BETTER else "#c00000"
                ax.text(positions[k], y + 0.04 * span, row.marker, ha="center", va="bottom", color=colour, fontsize=12)
            ax.set_ylim(bottom - 0.05 * span, top + 0.2 * span)
            ax.set_xticks(positions)
            ax.set_xticklabels(methods, rotation=60, ha="right", fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
            ax.grid(axis="y", alpha=0.3)
            if r == 0:
                ax.set_title(channel)
            if c == 0:
                ax.set_ylabel(label)
    note = (
        f"paired t-test vs {reference} over test images, p < {alpha:g}: {REFERENCE_BETTER} {reference} better, "
        f"{REFERENCE_WORSE} (red) {reference} worse; {TRIVIAL}: BF copied into every channel (trivial floor)"
    )
    fig.suptitle("Fig. 5: image quality per channel (0-255 scale)")
    fig.text(0.5, 0.005, note, ha="center", va="bottom", fontsize=8, color="#333333", wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return drawn.reset_index(drop=True)


def _empty_ttests() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in ("other", "channel", "metric", "p", "better")})


# ------------------------------------------------------------------------------------------------- throughput


def _cellprofiler_row(groundtruth_indexes: Mapping[str, str | os.PathLike]) -> dict[str, Any] | None:
    """Mean CellProfiler seconds per image set over the plates' ``groundtruth/{plate}/index.parquet``."""
    parts, sizes = [], []
    for plate, path in groundtruth_indexes.items():
        index = _read_table(path, f"CellProfiler index of plate {plate}")
        _require(index, ["seconds"], str(path))
        parts.append(index["seconds"].to_numpy(dtype=float))
        if "labels" in index.columns and len(index) and Path(index["labels"].iloc[0]).is_file():
            import tifffile

            with tifffile.TiffFile(index["labels"].iloc[0]) as tif:
                sizes.append(tif.series[0].shape)
    seconds = np.concatenate(parts) if parts else np.zeros(0)
    if not len(seconds):
        return None
    mean = float(seconds.mean())
    return {
        "step": "segmentation",
        "source": "cellprofiler",
        "seconds_per_image": mean,
        "images_per_second": 1.0 / mean if mean > 0 else float("nan"),
        "seconds_total": float(seconds.sum()),
        "image_size": _size(sizes[0]) if sizes else "",
        "device": "cpu",
        "note": (
            f"CellProfiler nuclei + cells per image set, mean of {len(seconds)} fields of "
            f"{', '.join(groundtruth_indexes)}: the 'seconds' column of groundtruth/{{plate}}/index.parquet "
            "(per-module wall times, JVM start shared out)"
        ),
    }


def throughput_table(
    sample_benchmarks: Mapping[str, str | os.PathLike],
    instances: Mapping[str, str | os.PathLike] | None = None,
    groundtruth_indexes: Mapping[str, str | os.PathLike] | None = None,
    train_benchmarks: Mapping[str, str | os.PathLike] | None = None,
    reference: str = "cellresdm",
) -> pd.DataFrame:
    """Seconds per image of every step timed in this run, one row per step and source.

    Rows: ``sampling`` per method (``benchmarks/sample_{method}.json``), ``segmentation`` per instance store
    (boundaries -> instances for a method, StarDist prediction for ``stardist_*``; attrs ``seconds_per_field``),
    ``segmentation`` of CellProfiler (mean of ``groundtruth/{plate}/index.parquet`` ``seconds``), and
    ``training`` per method (wall seconds, column ``s`` of Snakemake's ``benchmarks/train/{method}.tsv``, in
    ``seconds_total``).

    ``seconds_vs_reference`` is seconds per image over the reference's in the same step: for sampling the
    reference's sampling, for segmentation the reference's boundaries -> instances (so CellProfiler's row says
    how many times longer CellProfiler takes than getting instances from the reference's boundaries; add the
    reference's sampling row for the whole path from BF). Empty where the reference has no row.

    Args:
        sample_benchmarks: method -> its sampling benchmark JSON (seconds_per_image, images_per_second,
            image_size, steps, device, batch, precision).
        instances: source -> ``segmentation/{source}_instances.zarr``.
        groundtruth_indexes: plate -> ``groundtruth/{plate}/index.parquet``.
        train_benchmarks: method -> ``benchmarks/train/{method}.tsv``.
        reference: the source the ratios are relative to.

    Returns:
        Columns :data:`THROUGHPUT_COLUMNS`.

    Raises:
        CellResDMError: a given file is missing, unreadable or lacks its timing.
    """
    rows: list[dict[str, Any]] = []
    for method, path in sample_benchmarks.items():
        record = _read_json(path, f"sampling benchmark of {method}")
        if "seconds_per_image" not in record:
            raise CellResDMError(f"{path}: sampling benchmark lacks 'seconds_per_image'")
        spi = float(record["seconds_per_image"])
        extra = [f"{k} {record[k]}" for k in ("batch", "tile", "n_samples") if record.get(k) is not None]
        rows.append(
            {
                "step": "sampling",
                "source": method,
                "seconds_per_image": spi,
                "images_per_second": float(record.get("images_per_second", 1.0 / spi if spi > 0 else np.nan)),
                "seconds_total": record.get("seconds_total"),
                "image_size": _size(record.get("image_size")),
                "steps": record.get("steps"),
                "device": record.get("device", ""),
                "precision": record.get("precision") or "not recorded",
                "note": f"5 IF + 2 boundary channels per image; {', '.join(extra)}" if extra else "",
            }
        )
    for source, path in (instances or {}).items():
        group = _open_group(path)
        attrs = dict(group.attrs)
        if "seconds_per_field" not in attrs:
            raise CellResDMError(f"{path}: instances store attrs lack 'seconds_per_field'")
        spf = float(attrs["seconds_per_field"])
        shape = group["nuclei"].shape if "nuclei" in group else None
        stardist = source.startswith("stardist")
        rows.append(
            {
                "step": "segmentation",
                "source": source,
                "seconds_per_image": spf,
                "images_per_second": 1.0 / spf if spf > 0 else float("nan"),
                "seconds_total": spf * shape[0] if shape else None,
                "image_size": _size(shape),
                # boundaries -> instances is numpy/scipy only; StarDist records TensorFlow's device
                "device": attrs.get("device", "not recorded") if stardist else "cpu",
                "note": "StarDist2D nuclei prediction (after an untimed warm-up)"
                if stardist
                else "predicted boundaries -> nuclei and cell instances",
            }
        )
    cellprofiler = _cellprofiler_row(groundtruth_indexes or {})
    if cellprofiler is not None:
        rows.append(cellprofiler)
    for method, path in (train_benchmarks or {}).items():
        bench = _read_table(path, f"training benchmark of {method}")
        _require(bench, ["s"], str(path))
        rows.append(
            {
                "step": "training",
                "source": method,
                "seconds_total": float(bench["s"].mean()),  # several rows when Snakemake repeats a benchmark
                "note": "wall seconds of the training job (Snakemake benchmark)",
            }
        )
    table = pd.DataFrame(rows, columns=list(THROUGHPUT_COLUMNS))
    ref_seconds = {
        step: table.loc[(table["step"] == step) & (table["source"] == reference), "seconds_per_image"]
        for step in ("sampling", "segmentation")
    }
    ratio = []
    for row in table.itertuples():
        ref = ref_seconds.get(row.step)
        ok = ref is not None and len(ref) and float(ref.iloc[0]) > 0 and pd.notna(row.seconds_per_image)
        ratio.append(float(row.seconds_per_image) / float(ref.iloc[0]) if ok else float("nan"))
    table["seconds_vs_reference"] = ratio
    floats = {c: "float64" for c in ("seconds_per_image", "images_per_second", "seconds_total")}
    return table.astype({**floats, "steps": "Int64"})


# ------------------------------------------------------------------------------------------------- Table 3


def table3_latent(
    quality_table: pd.DataFrame,
    sample_benchmarks: Mapping[str, str | os.PathLike],
    pixel: str = "cellresdm",
) -> pd.DataFrame:
    """Table 3: pixel vs latent CellResDM, MSE (mean over test images and IF channels, 0-255) and sampling time.

    Latent variants are the methods named ``cellresdm_latent*`` in the quality table or the benchmarks. Without
    one, the table holds the pixel row and a note row saying the latent variant is not enabled in this run.

    Args:
        quality_table: :func:`cellresdm.metrics.image_quality` rows.
        sample_benchmarks: method -> sampling benchmark JSON (see :func:`throughput_table`).
        pixel: the pixel-space method.

    Returns:
        Columns :data:`TABLE3_COLUMNS`; mse / seconds NaN where the run lacks them (the note says which).
    """
    _require(quality_table, ["method", "mse"], "image quality table")
    known = list(dict.fromkeys([*quality_table["method"], *sample_benchmarks]))
    latent = sorted(m for m in known if str(m).startswith(LATENT_PREFIX))
    rows = []
    for method in [pixel, *latent]:
        mse = quality_table.loc[quality_table["method"] == method, "mse"].to_numpy(dtype=float)
        record = (
            _read_json(sample_benchmarks[method], f"sampling benchmark of {method}")
            if (method in sample_benchmarks)
            else {}
        )
        lacking = [what for what, ok in (("image quality", len(mse)), ("sampling benchmark", record)) if not ok]
        rows.append(
            {
                "method": method,
                "space": "latent" if method.startswith(LATENT_PREFIX) else "pixel",
                "mse": float(mse.mean()) if len(mse) else float("nan"),
                "seconds_per_image": float(record["seconds_per_image"]) if "seconds_per_image" in record else np.nan,
                "image_size": _size(record.get("image_size")),
                "device": record.get("device", ""),
                "note": f"no {' and no '.join(lacking)} in this run" if lacking else "",
            }
        )
    if not latent:
        rows.append(
            {
                "method": LATENT_PREFIX,
                "space": "latent",
                "mse": float("nan"),
                "seconds_per_image": float("nan"),
                "image_size": "",
                "device": "",
                "note": f"latent variant not enabled in this run (add {LATENT_PREFIX} to config methods)",
            }
        )
    return pd.DataFrame(rows, columns=list(TABLE3_COLUMNS))


# ------------------------------------------------------------------------------------------------- methods


def _checkpoint_config(path: Path) -> dict[str, Any]:
    config = load_torch_dict(path, "checkpoint").get("config")
    if not isinstance(config, dict):
        raise CellResDMError(f"{path}: checkpoint has no 'config' dict")
    return config


def methods_status(
    config_methods: Sequence[str],
    all_methods: Sequence[str],
    models: Mapping[str, str | os.PathLike],
    predictions: Mapping[str, str | os.PathLike] | None = None,
) -> pd.DataFrame:
    """Which methods are enabled, trained and sampled in this run, why the others are missing, and whether the
    GAN methods trained with the VGG perceptual loss.

    Args:
        config_methods: config ``methods`` (enabled).
        all_methods: every method the package implements (``cellresdm.methods.method_names()``).
        models: method -> ``models/{method}/model.pt`` (trained when the file exists).
        predictions: method -> ``predictions/{method}/test.zarr`` (sampled when its zarr.json exists).

    Returns:
        Columns :data:`METHODS_COLUMNS`, one row per method (implemented ones first, then enabled ones the
        package does not know); perceptual_loss is "on"/"off" for :data:`GAN_METHODS` with a model, else "".
    """
    predictions = predictions or {}
    rows = []
    for method in list(dict.fromkeys([*all_methods, *config_methods])):
        enabled = method in config_methods
        model = Path(models[method]) if method in models else None
        trained = bool(model is not None and model.is_file())
        sampled = bool(method in predictions and (Path(predictions[method]) / "zarr.json").is_file())
        perceptual = ""
        if trained and method in GAN_METHODS:
            section = _checkpoint_config(model).get(method, {})
            flag = section.get("perceptual")
            perceptual = "not recorded" if flag is None else "on" if flag else "off (no VGG weights or weight 0)"
        if not enabled:
            note = "not enabled in config methods"
        elif method not in all_methods:
            note = "enabled but not implemented by this package"
        elif not trained:
            note = f"no model ({model if model is not None else 'no path given'})"
        elif not sampled:
            note = "trained, no predictions of the test split"
        else:
            note = "trained and sampled"
        rows.append(
            {
                "method": method,
                "enabled": enabled,
                "trained": trained,
                "sampled": sampled,
                "perceptual_loss": perceptual,
                "note": note,
            }
        )
    return pd.DataFrame(rows, columns=list(METHODS_COLUMNS))


# ------------------------------------------------------------------------------------------------- filtering


def filtering_summary(fields: Mapping[str, str | os.PathLike]) -> pd.DataFrame:
    """Field counts per plate: total, kept and dropped per filter reason (plus an ``all`` row).

    Args:
        fields: plate -> ``fields/{plate}.parquet`` (columns keep, reason).

    Returns:
        Columns plate, fields, kept, then one column per reason of :data:`FILTER_REASONS` (and any other reason
        found).
    """
    rows = []
    reasons = list(FILTER_REASONS)
    for plate, path in fields.items():
        table = _read_table(path, f"filter table of plate {plate}")
        _require(table, ["keep", "reason"], str(path))
        dropped = table.loc[~table["keep"].astype(bool), "reason"].astype(str)
        counts = dropped.value_counts()
        reasons += [r for r in counts.index if r not in reasons]
        kept = int(table["keep"].astype(bool).sum())
        rows.append({"plate": plate, "fields": len(table), "kept": kept, **counts.to_dict()})
    table = pd.DataFrame(rows, columns=["plate", "fields", "kept", *reasons]).fillna(0)
    if len(table):
        total = table.drop(columns="plate").sum().to_dict()
        table = pd.concat([table, pd.DataFrame([{"plate": "all", **total}])], ignore_index=True)
    return table.astype({c: "int64" for c in ["fields", "kept", *reasons]})


# ------------------------------------------------------------------------------------------------- report


@dataclass
class ReportInputs:
    """Paths the report reads (all under ``results/``); ``None`` or absent files are reported as missing.

    Attributes:
        dataset: ``datasets/test.zarr``.
        predictions: method -> ``predictions/{method}/test.zarr``.
        quality: ``metrics/image_quality.parquet``.
        quality_ttests: ``metrics/image_quality_ttests.csv``.
        segmentation_summary: ``segmentation/segmentation_summary.csv``.
        segmentation_ttests: ``segmentation/segmentation_ttests.csv``.
        fig6, fig7: ``segmentation/fig6_segmentation.png``, ``segmentation/fig7_stardist.png``.
        instances: source -> ``segmentation/{source}_instances.zarr``.
        sample_benchmarks: method -> ``benchmarks/sample_{method}.json``.
        train_benchmarks: method -> ``benchmarks/train/{method}.tsv``.
        groundtruth_indexes: plate -> ``groundtruth/{plate}/index.parquet``.
        models: method -> ``models/{method}/model.pt``.
        fields: plate -> ``fields/{plate}.parquet``.
        qc_summary: ``groundtruth/qc_summary.csv`` (demo only).
        table2: ``features/table2_features.csv``.
    """

    dataset: str | os.PathLike | None = None
    predictions: dict[str, str | os.PathLike] = field(default_factory=dict)
    quality: str | os.PathLike | None = None
    quality_ttests: str | os.PathLike | None = None
    segmentation_summary: str | os.PathLike | None = None
    segmentation_ttests: str | os.PathLike | None = None
    fig6: str | os.PathLike | None = None
    fig7: str | os.PathLike | None = None
    instances: dict[str, str | os.PathLike] = field(default_factory=dict)
    sample_benchmarks: dict[str, str | os.PathLike] = field(default_factory=dict)
    train_benchmarks: dict[str, str | os.PathLike] = field(default_factory=dict)
    groundtruth_indexes: dict[str, str | os.PathLike] = field(default_factory=dict)
    models: dict[str, str | os.PathLike] = field(default_factory=dict)
    fields: dict[str, str | os.PathLike] = field(default_factory=dict)
    qc_summary: str | os.PathLike | None = None
    table2: str | os.PathLike | None = None

    @classmethod
    def from_results(
        cls,
        results: str | os.PathLike,
        methods: Sequence[str],
        plates: Sequence[str],
        segmentation_sources: Sequence[str] = (),
    ) -> ReportInputs:
        """The conventional paths under ``results`` (DESIGN.md section 5) of the given methods and plates."""
        r = Path(results)
        return cls(
            dataset=r / "datasets" / "test.zarr",
            predictions={m: r / "predictions" / m / "test.zarr" for m in methods},
            quality=r / "metrics" / "image_quality.parquet",
            quality_ttests=r / "metrics" / "image_quality_ttests.csv",
            segmentation_summary=r / "segmentation" / "segmentation_summary.csv",
            segmentation_ttests=r / "segmentation" / "segmentation_ttests.csv",
            fig6=r / "segmentation" / "fig6_segmentation.png",
            fig7=r / "segmentation" / "fig7_stardist.png",
            instances={s: r / "segmentation" / f"{s}_instances.zarr" for s in segmentation_sources},
            sample_benchmarks={m: r / "benchmarks" / f"sample_{m}.json" for m in methods},
            train_benchmarks={m: r / "benchmarks" / "train" / f"{m}.tsv" for m in methods},
            groundtruth_indexes={p: r / "groundtruth" / p / "index.parquet" for p in plates},
            models={m: r / "models" / m / "model.pt" for m in methods},
            fields={p: r / "fields" / f"{p}.parquet" for p in plates},
            qc_summary=r / "groundtruth" / "qc_summary.csv",
            table2=r / "features" / "table2_features.csv",
        )


#: Files :func:`write_report` writes into ``out_dir`` (those whose inputs exist).
REPORT_FILES: dict[str, str] = {
    "fig4": "fig4_examples.png",
    "fig5": "fig5_quality.png",
    "fig6": "fig6_segmentation.png",
    "fig7": "fig7_stardist.png",
    "table2": "table2_features.csv",
    "table3": "table3_latent.csv",
    "throughput": "throughput.csv",
    "methods": "methods.csv",
    "filtering": "filtering.csv",
    "html": "report.html",
}

_CAPTIONS: dict[str, str] = {
    "fig4": "Fig. 4. One test field (the one with the median SSIM of the reference method unless chosen): first "
    "row the real images (in-focus BF, the 5 IF channels, the nuclei and cell boundary masks), then each method's "
    "prediction. Every column uses the real image's 0.5-99.5 percentile range, so brightness differences between "
    "methods are visible.",
    "fig5": "Fig. 5. MSE, PSNR and SSIM (0-255 scale) per test image, IF channel and method. Markers above a box: "
    f"paired t-test against the reference over the same test images, p < {ALPHA:g}; '{REFERENCE_BETTER}' the "
    f"reference is better, red '{REFERENCE_WORSE}' the reference is worse. {TRIVIAL} copies the normalised "
    "in-focus BF into every channel: the trivial floor a method must beat.",
    "fig6": "Fig. 6. Segmentation of generated images: F1 and mean true score (IoU) against the IoU threshold, "
    "for the instances from the reference's and pix2pix's predicted boundaries, against CellProfiler labels.",
    "fig7": "Fig. 7. Nuclei from the reference's predicted boundaries against StarDist2D trained on BF and on the "
    "real DNA channel.",
    "table2": "Table 2. Correlation of CellProfiler features of generated and real images per feature category.",
    "table3": "Table 3. Pixel-space vs latent-space CellResDM: MSE (mean over test images and IF channels, 0-255) "
    "and sampling seconds per image measured in this run.",
    "throughput": "Throughput of every step timed in this run, on this run's machines. seconds_vs_reference: "
    "seconds per image over the reference's in the same step (sampling: its sampling; segmentation: its "
    "boundaries -> instances). Training rows give the wall seconds of the whole training job.",
    "methods": "Methods: enabled in the config, trained (model.pt), sampled (test predictions); perceptual_loss "
    "says whether the GAN methods trained with the VGG perceptual loss (off when VGG weights were absent).",
    "filtering": "Field filtering per plate: total fields, kept, and dropped per reason.",
    "qc": "Ground-truth QC (synthetic gallery only): CellProfiler labels against the generator's true labels.",
    "quality_summary": "Image quality: mean per method and channel.",
    "segmentation_summary": "Segmentation scores pooled over test images at the t-test IoU threshold.",
    "segmentation_ttests": "Segmentation: paired t-tests of the reference against every other source.",
}


def _png_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table_html(table: pd.DataFrame) -> str:
    return table.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0, classes="t")


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def _config_summary(config: Mapping[str, Any] | None) -> str:
    if not config:
        return "<p>No config given.</p>"
    plates = config.get("plates", [])
    lines = [
        ("source", config.get("source", "")),
        ("reference method", config.get("reference", "")),
        ("methods", ", ".join(config.get("methods", []))),
    ]
    for split in ("train", "val", "test"):
        lines.append((f"{split} plates", ", ".join(str(p.get("id")) for p in plates if p.get("split") == split)))
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in lines)
    full = html.escape(json.dumps(config, indent=1, default=str))
    return f'<table class="t">{rows}</table><details><summary>full config</summary><pre>{full}</pre></details>'


_CSS = """body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
img{max-width:100%;border:1px solid #ddd}table.t{border-collapse:collapse;font-size:12px;margin:.5em 0}
table.t td,table.t th{border:1px solid #ccc;padding:2px 6px;text-align:right}.cap{color:#444;font-size:13px}
.missing{color:#a00}h2{border-bottom:1px solid #ccc;margin-top:1.5em}pre{font-size:11px}"""


def _exists(path: str | os.PathLike | None, zarr_store: bool = False) -> bool:
    if path is None:
        return False
    return (Path(path) / "zarr.json").is_file() if zarr_store else Path(path).is_file()


def _present(
    paths: Mapping[str, str | os.PathLike], missing: list[tuple[str, str]], what: str, zarr_store: bool = False
) -> dict[str, str | os.PathLike]:
    """The entries of ``paths`` that exist; the others are added to ``missing``."""
    found = {}
    for key, path in paths.items():
        if _exists(path, zarr_store):
            found[key] = path
        else:
            missing.append((f"{what} of {key}", str(path)))
    return found


def write_report(
    inputs: ReportInputs,
    out_dir: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    all_methods: Sequence[str] | None = None,
    reference: str | None = None,
) -> dict[str, Any]:
    """Write the report files (:data:`REPORT_FILES`) into ``out_dir`` and one self-contained ``report.html``.

    The HTML embeds every figure as base64 PNG and every table as HTML, with a caption each and the run's config
    summary; it needs no network or other file. An item whose inputs are absent is not written and is listed
    under "Missing inputs" in the HTML (and in the returned ``missing``).

    Args:
        inputs: the run's files (:class:`ReportInputs`).
        out_dir: ``results/reports``.
        config: the validated pipeline config (methods, reference, plates; shown in the report).
        all_methods: every method the package implements (default ``cellresdm.methods.method_names()``).
        reference: the method compared with the others (default config ``reference``, else ``cellresdm``).

    Returns:
        ``written`` (item -> path of each file written), ``missing`` (list of (item, path looked for)) and
        ``fig4_index`` (the field shown, or None).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(config or {})
    reference = reference or config.get("reference") or "cellresdm"
    if all_methods is None:
        from cellresdm.methods import method_names

        all_methods = method_names()
    config_methods = list(config.get("methods", inputs.predictions))
    missing: list[tuple[str, str]] = []
    written: dict[str, Path] = {}
    sections: list[str] = []

    def section(key: str, title: str, body: str) -> None:
        caption = _CAPTIONS.get(key, "")
        sections.append(f'<h2 id="{key}">{html.escape(title)}</h2><p class="cap">{html.escape(caption)}</p>{body}')

    def figure(key: str, title: str) -> None:
        section(key, title, _png_tag(written[key], title))

    def table(key: str, title: str, frame: pd.DataFrame, csv: bool = True) -> None:
        if csv:
            written[key] = out / REPORT_FILES[key]
            _write_csv(frame, written[key])
        section(key, title, _table_html(frame))

    quality = _read_table(inputs.quality, "image quality table") if _exists(inputs.quality) else None
    if quality is None:
        missing.append(("image quality table (Figs. 4-5, Table 3)", str(inputs.quality)))
    predictions = _present(inputs.predictions, missing, "predictions", zarr_store=True)
    samples = _present(inputs.sample_benchmarks, missing, "sampling benchmark")

    # Fig. 4
    fig4_index = None
    if _exists(inputs.dataset, zarr_store=True) and predictions:
        written["fig4"] = out / REPORT_FILES["fig4"]
        fig4_index = fig4_examples(inputs.dataset, predictions, written["fig4"], quality=quality, reference=reference)
        figure("fig4", "Fig. 4: example predictions")
    elif not _exists(inputs.dataset, zarr_store=True):
        missing.append(("test dataset (Fig. 4)", str(inputs.dataset)))

    # Fig. 5
    if quality is not None:
        if _exists(inputs.quality_ttests):
            ttests = _read_table(inputs.quality_ttests, "image-quality t-tests")
        else:
            # the markers are still drawn: the same tests the evaluate rule runs, from the quality table
            missing.append(("image-quality t-tests (Fig. 5 markers recomputed here)", str(inputs.quality_ttests)))
            ttests = quality_ttests(quality, reference=reference)
        written["fig5"] = out / REPORT_FILES["fig5"]
        fig5_quality(quality, ttests, written["fig5"], reference=reference)
        figure("fig5", "Fig. 5: image quality")
        means = quality.groupby(["method", "channel"], sort=False)[list(FIG5_METRICS)].mean().reset_index()
        table("quality_summary", "Image quality summary", means, csv=False)

    # Figs. 6 and 7, copied from the segmentation rule
    for key, title in (("fig6", "Fig. 6: segmentation of generated images"), ("fig7", "Fig. 7: vs StarDist")):
        source = getattr(inputs, key)
        if _exists(source):
            written[key] = out / REPORT_FILES[key]
            with atomic_path(written[key], suffix=".png") as tmp:
                shutil.copyfile(source, tmp)
            figure(key, title)
        else:
            missing.append((f"{title.split(':')[0]} from the segmentation rule", str(source)))
    for key, title in (
        ("segmentation_summary", "Segmentation summary"),
        ("segmentation_ttests", "Segmentation t-tests"),
    ):
        path = getattr(inputs, key)
        if _exists(path):
            table(key, title, _read_table(path, title), csv=False)
        else:
            missing.append((title, str(path)))

    # Table 2 (features stage, optional)
    if _exists(inputs.table2):
        table("table2", "Table 2: CellProfiler feature correlation", _read_table(inputs.table2, "Table 2"))
    else:
        missing.append(("Table 2 (features stage)", str(inputs.table2)))

    # Table 3
    if quality is not None:
        table("table3", "Table 3: pixel vs latent CellResDM", table3_latent(quality, samples, pixel=reference))

    # Throughput
    instances = _present(inputs.instances, missing, "instances", zarr_store=True)
    indexes = _present(inputs.groundtruth_indexes, missing, "CellProfiler index")
    trains = _present(inputs.train_benchmarks, missing, "training benchmark")
    throughput = throughput_table(samples, instances, indexes, trains, reference=reference)
    table("throughput", "Throughput", throughput)

    # Methods, filtering, QC
    table("methods", "Methods", methods_status(config_methods, all_methods, inputs.models, inputs.predictions))
    fields = _present(inputs.fields, missing, "filter table")
    table("filtering", "Field filtering", filtering_summary(fields))
    if _exists(inputs.qc_summary):
        table("qc", "Ground-truth QC", _read_table(inputs.qc_summary, "ground-truth QC summary"), csv=False)
    elif config.get("source", "demo") == "demo":
        missing.append(("ground-truth QC summary (demo)", str(inputs.qc_summary)))

    missing_html = (
        "<p>None.</p>"
        if not missing
        else "<ul>"
        + "".join(
            f'<li class="missing">{html.escape(item)}: <code>{html.escape(path)}</code></li>' for item, path in missing
        )
        + "</ul>"
    )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>CellResDM report</title>'
        f"<style>{_CSS}</style></head><body><h1>CellResDM run report</h1>"
        f"<h2>Run configuration</h2>{_config_summary(config)}"
        f'<h2 id="missing">Missing inputs</h2><p class="cap">Items left out because their input files do not '
        f"exist in this run.</p>{missing_html}" + "".join(sections) + "</body></html>\n"
    )
    written["html"] = out / REPORT_FILES["html"]
    with atomic_path(written["html"]) as tmp:
        tmp.write_text(page, encoding="utf-8")
    for item, path in missing:
        _LOG.info("report: missing %s (%s)", item, path)
    _LOG.info("report: wrote %s", ", ".join(p.name for p in written.values()))
    return {"written": written, "missing": missing, "fig4_index": fig4_index}
