"""The paper's figures from the run's outputs: Fig. 4 (example predictions) and Fig. 5 (image quality with the
paired t-test markers of :func:`significance_markers`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cellresdm import layout
from cellresdm.errors import CellResDMError
from cellresdm.io import atomic_path
from cellresdm.metrics import TRIVIAL
from cellresdm.report.reading import require_columns
from cellresdm.stats import ALPHA
from cellresdm.stores import open_dataset, open_predictions

#: Marker above a method's box when the reference is significantly better than that method.
REFERENCE_BETTER = "*"
#: Marker when the reference is significantly worse than that method.
REFERENCE_WORSE = "\u2020"
#: Metrics of Fig. 5 and their axis labels.
FIG5_METRICS: dict[str, str] = {"mse": "MSE (0-255)", "psnr": "PSNR (dB)", "ssim": "SSIM"}
_PANEL_LABELS = ("BF (in focus)", *layout.IF_CHANNELS, "nuclei boundary", "cell boundary")


# ------------------------------------------------------------------------------------------------- Fig. 4


def median_index(quality: pd.DataFrame, reference: str = "cellresdm") -> int:
    """Test image whose reference SSIM (mean over IF channels) is the median one (the lower middle of an even
    count), or 0 when the quality table has no rows of the reference.

    Args:
        quality: :func:`cellresdm.metrics.image_quality` rows (method, index, channel, ssim).
    """
    require_columns(quality, ["method", "index", "ssim"], "image quality table")
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

    real = open_dataset(dataset, arrays=("bf", "if", "boundaries"))
    bf, real_if, real_b = real["bf"], real["if"], real["boundaries"]
    n = real_if.shape[0]
    if index is None:
        index = median_index(quality, reference) if quality is not None else 0
    if not 0 <= index < n:
        raise CellResDMError(f"{dataset}: Fig. 4 field index {index} is out of range (0..{n - 1})")
    truth = np.concatenate([np.asarray(real_if[index]), np.asarray(real_b[index])]).astype(np.float32)
    rows: dict[str, np.ndarray] = {"real": truth}
    for method, path in predictions.items():
        store = open_predictions(path, arrays=("if", "boundaries"))
        pred_if, pred_b = store["if"], store["boundaries"]
        if pred_if.shape != real_if.shape or pred_b.shape != real_b.shape:
            raise CellResDMError(
                f"{path}: predictions {pred_if.shape} / {pred_b.shape} do not match the dataset {dataset} "
                f"({real_if.shape} / {real_b.shape})"
            )
        rows[method] = np.concatenate([np.asarray(pred_if[index]), np.asarray(pred_b[index])]).astype(np.float32)
    field_name = ""
    if {"plate", "field"} <= set(real.fields.columns):
        field_name = f"{real.fields['plate'].iloc[index]} {real.fields['field'].iloc[index]}"
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
    require_columns(ttests, ["other", "channel", "metric", "p", "better"], "image-quality t-tests")
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

    require_columns(quality_table, ["method", "channel", *FIG5_METRICS], "image quality table")
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
