"""Image quality of predicted IF channels against the real ones, on the paper's 0-255 scale."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.metrics import structural_similarity

from cellresdm import layout
from cellresdm.errors import CellResDMError
from cellresdm.stores import create_predictions, open_dataset, open_predictions

#: Name of the trivial reference prediction: the normalised in-focus BF plane copied into every IF channel.
TRIVIAL = "bf_copy"
DATA_RANGE = 255.0


def channel_metrics(real: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MSE, PSNR, SSIM and Pearson r of one channel; inputs (H, W) in [0, 1], compared on 0-255
    (SSIM with data_range 255 and scikit-image's default 7x7 window)."""
    a = real.astype(np.float64) * DATA_RANGE
    b = pred.astype(np.float64) * DATA_RANGE
    mse = float(np.mean((a - b) ** 2))
    psnr = float(10 * np.log10(DATA_RANGE**2 / mse)) if mse > 0 else float("inf")
    ssim = float(structural_similarity(a, b, data_range=DATA_RANGE))
    sa, sb = a.std(), b.std()
    pearson = float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb)) if sa > 0 and sb > 0 else float("nan")
    return {"mse": mse, "psnr": psnr, "ssim": ssim, "pearson": pearson}


def write_bf_copy(dataset: str | Path, out: str | Path, log: logging.Logger | None = None) -> int:
    """Write the trivial BF copy of a dataset as a prediction store (method :data:`TRIVIAL`): ``if`` (N, 5, H, W)
    holds the normalised in-focus BF plane (``bf`` channel 0) in every IF channel, the field table is the
    dataset's; the boundary arrays stay 0. Returns the number of fields."""
    log = log or logging.getLogger("cellresdm")
    real = open_dataset(dataset, arrays=("bf",))
    n, shape = real["bf"].shape[0], tuple(real["bf"].shape[2:])
    with create_predictions(out, n, shape, with_std=False) as writer:
        for i in range(n):
            plane = np.asarray(real["bf"][i, :1])
            writer.write_field(i, if_=np.repeat(plane, len(layout.IF_CHANNELS), 0))
        writer.finish(
            real, {"method": TRIVIAL, "source": str(dataset), "description": "in-focus BF in every IF channel"}
        )
    log.info("BF copy of %d fields of %s written to %s", n, dataset, out)
    return n


def image_quality(
    dataset: str | Path, predictions: dict[str, str | Path], log: logging.Logger | None = None
) -> pd.DataFrame:
    """Per test image, IF channel and method (plus the trivial BF copy): MSE, PSNR, SSIM, Pearson r.

    Args:
        dataset: the split's ``datasets/{split}.zarr`` (real IF and BF).
        predictions: method name -> its ``predictions/{method}/{split}.zarr``.
    """
    log = log or logging.getLogger("cellresdm")
    real = open_dataset(dataset, arrays=("bf", "if"))
    fields = real.fields
    stores = {name: open_predictions(path, arrays=("if",)) for name, path in predictions.items()}
    for name, store in stores.items():
        if store["if"].shape != real["if"].shape:
            raise CellResDMError(
                f"{predictions[name]}: predictions of shape {store['if'].shape} do not match the "
                f"dataset {dataset} ({real['if'].shape})"
            )
    rows = []
    for i in range(real["if"].shape[0]):
        target = np.asarray(real["if"][i], dtype=np.float32)
        candidates = {TRIVIAL: np.repeat(np.asarray(real["bf"][i, :1], dtype=np.float32), len(layout.IF_CHANNELS), 0)}
        candidates.update({name: np.asarray(store["if"][i], dtype=np.float32) for name, store in stores.items()})
        meta = fields.iloc[i]
        for method, pred in candidates.items():
            for c, channel in enumerate(layout.IF_CHANNELS):
                rows.append(
                    {
                        "method": method,
                        "index": i,
                        "plate": meta["plate"],
                        "cell_line": meta["cell_line"],
                        "field": meta["field"],
                        "channel": channel,
                        **channel_metrics(target[c], pred[c]),
                    }
                )
    table = pd.DataFrame(rows)
    log.info(
        "image quality: %d images x %d channels x %d sources",
        real["if"].shape[0],
        len(layout.IF_CHANNELS),
        len(candidates),
    )
    return table


#: Image-quality metrics and whether higher values are better.
QUALITY_METRICS: dict[str, bool] = {"mse": False, "psnr": True, "ssim": True, "pearson": True}


def quality_ttests(table: pd.DataFrame, reference: str = "cellresdm") -> pd.DataFrame:
    """Paired t-tests of the reference method against every other source (methods and the trivial BF copy) on the
    same test images, per IF channel and metric (:data:`QUALITY_METRICS`).

    Args:
        table: :func:`image_quality` rows (method, index, channel and the metrics).
        reference: the method compared with every other.

    Returns:
        One row per other source, channel and metric: reference, other, channel, metric and the columns of
        :func:`cellresdm.stats.paired_ttest` (``better`` honours the metric's direction: lower MSE is better).
        Empty (with these columns) when the reference is not in the table.
    """
    from cellresdm.stats import paired_ttest

    columns = ["reference", "other", "channel", "metric", "n", "mean_reference", "mean_other", "mean_difference"]
    columns += ["t", "p", "better", "significant"]
    rows = []
    ref = table[table["method"] == reference]
    for other in (m for m in table["method"].unique() if m != reference and not ref.empty):
        pairs = ref.merge(table[table["method"] == other], on=["index", "channel"], suffixes=("_ref", "_other"))
        for channel in layout.IF_CHANNELS:
            rows_of = pairs[pairs["channel"] == channel]
            for metric, higher in QUALITY_METRICS.items():
                test = paired_ttest(rows_of[f"{metric}_ref"], rows_of[f"{metric}_other"], higher_is_better=higher)
                rows.append({"reference": reference, "other": other, "channel": channel, "metric": metric, **test})
    return pd.DataFrame(rows, columns=columns)


def summarise_quality(table: pd.DataFrame) -> pd.DataFrame:
    """Mean metrics per method and channel, with each method's SSIM gain over the trivial BF copy."""
    summary = table.groupby(["method", "channel"], sort=False)[["mse", "psnr", "ssim", "pearson"]].mean()
    summary = summary.reset_index()
    trivial = summary[summary["method"] == TRIVIAL].set_index("channel")["ssim"]
    summary["ssim_trivial"] = summary["channel"].map(trivial)
    summary["beats_trivial_ssim"] = summary["ssim"] > summary["ssim_trivial"]
    return summary
