"""Segmentation scores of predicted instances against the CellProfiler truth (docs/design.md section 5, stage
``segmentation``; paper Figs. 6 and 7).

Sources of predicted instances are the image-generation methods (nuclei and cells from their predicted
boundaries) and ``stardist_bf`` / ``stardist_if`` (nuclei only). Each is an *instances* store, a zarr v3 group::

    nuclei          (N, H, W) int32   instance labels, 0 = background
    cells           (N, H, W) int32   optional
    field table                       plate, cell_line, well, row, col, site, field, index (test dataset order)
    attrs           {"source": str, "objects": [...], ...}

The truth is the test split ``datasets/test.zarr`` with ``labels`` (N, 2, H, W) uint16 [nuclei, cells].

Per image, object and IoU threshold tau, :func:`stardist.matching.matching` gives the counts and scores. The IoU
matrix and the assignment input are computed once per image and object: ``matching`` takes the whole tuple of
thresholds and solves only the assignment per tau. Pooled rows (``scope="pooled"``) sum tp, fp, fn, n_true,
n_pred and the IoU of matched pairs over all images, then apply the same formulas as ``matching`` (this is what
``stardist.matching.matching_dataset(..., by_image=False)`` computes):

    precision = tp / (tp + fp)      recall = tp / (tp + fn)      accuracy = tp / (tp + fp + fn)
    f1 = 2 tp / (2 tp + fp + fn)    mean_matched_score = S / tp  mean_true_score = S / n_true
    panoptic_quality = S / (tp + fp/2 + fn/2)                     (S: summed IoU of matched pairs; 0 if tp = 0)
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cellresdm import layout
from cellresdm.errors import CellResDMError, ConfigError
from cellresdm.io import atomic_path, write_parquet
from cellresdm.stats import paired_ttest
from cellresdm.stores import open_dataset, open_instances

_LOG = logging.getLogger("cellresdm")

#: IoU thresholds of the paper's curves.
DEFAULT_TAUS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 10))
#: Scores in [0, 1], higher is better.
SCORE_METRICS: tuple[str, ...] = (
    "precision",
    "recall",
    "accuracy",
    "f1",
    "mean_true_score",
    "mean_matched_score",
    "panoptic_quality",
)
COUNTS: tuple[str, ...] = ("tp", "fp", "fn", "n_true", "n_pred")
#: Identify one test image; ``None`` / ``<NA>`` on pooled rows.
IMAGE_KEYS: tuple[str, ...] = ("plate", "cell_line", "well", "site", "field")
SCORE_COLUMNS: tuple[str, ...] = ("source", "scope", *IMAGE_KEYS, "object", "tau", *SCORE_METRICS, *COUNTS)
#: Images are paired on these columns in the t-tests.
PAIR_KEYS: tuple[str, ...] = ("plate", "well", "site")
TTEST_METRICS: tuple[str, ...] = (
    "f1",
    "precision",
    "recall",
    "accuracy",
    "mean_true_score",
    "mean_matched_score",
    "panoptic_quality",
)
TTEST_COLUMNS: tuple[str, ...] = (
    "reference",
    "other",
    "object",
    "metric",
    "n",
    "mean_reference",
    "mean_other",
    "mean_difference",
    "t",
    "p",
    "better",
    "significant",
)
SUMMARY_COLUMNS: tuple[str, ...] = (
    "source",
    "object",
    "f1",
    "precision",
    "recall",
    "mean_true_score",
    "panoptic_quality",
)
#: Metrics drawn against tau in Figs. 6 and 7.
PLOT_METRICS: dict[str, str] = {"f1": "F1", "mean_true_score": "mean true score (IoU)"}
#: Sources compared with the reference in the paper's figures.
FIG6_OTHERS: tuple[str, ...] = ("pix2pix",)
FIG6_OBJECTS: tuple[str, ...] = ("nuclei", "cells")
FIG7_OTHERS: tuple[str, ...] = ("stardist_bf", "stardist_if")
FIG7_OBJECTS: tuple[str, ...] = ("nuclei",)
FIG6_TITLE = "Fig. 6: segmentation of generated images"
FIG7_TITLE = "Fig. 7: generated images vs StarDist"
_SOURCE_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
# Fixed colours keep a source's colour the same in every figure.
_COLOURS = {"cellresdm": "#1f77b4", "pix2pix": "#ff7f0e", "stardist_bf": "#2ca02c", "stardist_if": "#d62728"}
_EXTRA_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


# ------------------------------------------------------------------------------------------- input


def _fields_agree(truth: pd.DataFrame, pred: pd.DataFrame) -> bool:
    if len(truth) != len(pred):
        return False
    return bool(
        (truth["plate"].astype(str).to_numpy() == pred["plate"].astype(str).to_numpy()).all()
        and (truth["well"].astype(str).to_numpy() == pred["well"].astype(str).to_numpy()).all()
        and (truth["site"].astype(np.int64).to_numpy() == pred["site"].astype(np.int64).to_numpy()).all()
    )


def _check_source_name(source: str) -> None:
    if not isinstance(source, str) or not _SOURCE_PATTERN.match(source):
        raise ConfigError(f"segmentation source name {source!r} must match {_SOURCE_PATTERN.pattern}")


# ------------------------------------------------------------------------------------------- scoring


def _check_taus(taus: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(t) for t in taus)
    if not values:
        raise ConfigError("segmentation_scores.taus: at least one IoU threshold is needed")
    bad = [t for t in values if not 0.0 < t <= 1.0]
    if bad:
        raise ConfigError(f"segmentation_scores.taus must lie in (0, 1], got {bad}")
    if len(set(values)) != len(values):
        raise ConfigError(f"segmentation_scores.taus must be distinct, got {list(values)}")
    return values


def _match(true: np.ndarray, pred: np.ndarray, taus: tuple[float, ...]) -> list[dict]:
    """stardist matching of one (H, W) label pair at every tau (one IoU matrix): a dict of scores per tau."""
    from stardist.matching import matching

    stats = matching(true, pred, thresh=taus, criterion="iou", report_matches=False)
    out = []
    for tau, m in zip(taus, stats, strict=True):
        row = {"tau": tau}
        row.update({k: float(getattr(m, k)) for k in SCORE_METRICS})
        row.update({k: int(getattr(m, k)) for k in COUNTS})
        out.append(row)
    return out


def _pool(rows: pd.DataFrame) -> dict[str, float | int]:
    """Scores of summed counts over ``rows`` (image rows of one object and tau); see the module docstring."""
    tp, fp, fn, n_true, n_pred = (int(rows[c].sum()) for c in COUNTS)
    # mean_matched_score * tp is the summed IoU of an image's matched pairs (0 where tp = 0).
    matched = float((rows["mean_matched_score"] * rows["tp"]).sum())
    return {
        "precision": tp / (tp + fp) if tp > 0 else 0.0,
        "recall": tp / (tp + fn) if tp > 0 else 0.0,
        "accuracy": tp / (tp + fp + fn) if tp > 0 else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0,
        "mean_true_score": matched / n_true if n_true > 0 else 0.0,
        "mean_matched_score": matched / tp if tp > 0 else 0.0,
        "panoptic_quality": matched / (tp + fp / 2 + fn / 2) if tp > 0 else 0.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n_true": n_true,
        "n_pred": n_pred,
    }


def _finish_table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
    table["site"] = table["site"].astype("Int64")
    table = table.astype({m: "float64" for m in SCORE_METRICS} | {c: "int64" for c in COUNTS} | {"tau": "float64"})
    return table


def score_source(
    truth_dataset: str | os.PathLike,
    instances: str | os.PathLike,
    source: str,
    taus: Sequence[float] = DEFAULT_TAUS,
    progress: bool = True,
) -> pd.DataFrame:
    """stardist matching scores of one source's instances against the truth labels of the test split.

    Args:
        truth_dataset: ``datasets/test.zarr`` with ``labels`` (N, 2, H, W) uint16 [nuclei, cells] and its
            field table.
        instances: the source's instances store (module docstring): ``nuclei`` (N, H, W) int32 and optionally
            ``cells`` (N, H, W) int32, a field table in the same order as the truth.
        source: name written to the ``source`` column (and expected in the store's ``source`` attribute).
        taus: IoU thresholds in (0, 1].
        progress: show a progress bar over the images.

    Returns:
        One row per image, object (only those the source has, nuclei before cells) and tau with
        ``scope="image"``, then one ``scope="pooled"`` row per object and tau (image columns ``None`` / ``<NA>``);
        columns :data:`SCORE_COLUMNS`. Scores are 0, never NaN, where nothing is matched (e.g. no prediction).

    Raises:
        CellResDMError: a store or table is missing or unreadable, the fields tables differ (plate, well, site
            in order), shapes differ, or labels are not non-negative integers; the message names the files.
    """
    _check_source_name(source)
    taus = _check_taus(taus)
    truth_path, pred_path = Path(truth_dataset), Path(instances)
    truth = open_dataset(truth_path, arrays=("labels",), columns=IMAGE_KEYS)
    pred = open_instances(pred_path, columns=PAIR_KEYS)
    labels = truth["labels"]
    n, _, h, w = labels.shape
    arrays = pred.arrays  # nuclei before cells
    if "nuclei" not in arrays:
        raise CellResDMError(f"{pred_path}: instance store lacks array 'nuclei'")
    for obj, arr in arrays.items():
        if tuple(arr.shape) != (n, h, w):
            raise CellResDMError(
                f"{pred_path}: {obj} instances of shape {tuple(arr.shape)} do not match the truth labels "
                f"of {truth_path} ({n}, {h}, {w})"
            )
    if pred.source != source:
        _LOG.warning("%s: store says source %r, scored as %r", pred_path, pred.source, source)
    truth_fields = truth.fields.reset_index(drop=True)
    pred_fields = pred.fields.reset_index(drop=True)
    if not _fields_agree(truth_fields, pred_fields):
        raise CellResDMError(
            f"fields of {pred_path} ({len(pred_fields)} rows) do not match {truth_path} ({len(truth_fields)} rows): "
            "plate, well and site must agree in order"
        )

    objects = list(arrays)
    rows: list[dict] = []
    for i in tqdm(range(n), desc=f"segmentation scores {source}", unit="image", disable=not progress):
        true_i = np.asarray(labels[i]).astype(np.int32)
        meta = {k: truth_fields.at[i, k] for k in IMAGE_KEYS}
        meta["site"] = int(meta["site"])
        for obj in objects:
            pred_i = np.asarray(arrays[obj][i])
            if pred_i.size and pred_i.min() < 0:
                raise CellResDMError(f"{pred_path}: {obj} instances of image {i} ({meta['field']}) are negative")
            scores = _match(true_i[layout.OBJECT_CHANNELS.index(obj)], pred_i.astype(np.int32), taus)
            rows.extend({"source": source, "scope": "image", **meta, "object": obj, **s} for s in scores)
    image_rows = _finish_table(rows)
    pooled = []
    for obj in objects:
        for tau in taus:
            sel = image_rows[(image_rows["object"] == obj) & (image_rows["tau"] == tau)]
            pooled.append(
                {"source": source, "scope": "pooled", **dict.fromkeys(IMAGE_KEYS), "object": obj, "tau": tau}
                | _pool(sel)
            )
    table = _finish_table(rows + pooled)
    _LOG.info(
        "segmentation scores %s: %d images, objects %s, %d thresholds",
        source,
        n,
        ", ".join(objects),
        len(taus),
    )
    return table


# ------------------------------------------------------------------------------------------- t-tests


def _at_tau(table: pd.DataFrame, tau: float, source: str, scope: str) -> pd.DataFrame:
    sel = table[(table["scope"] == scope) & np.isclose(table["tau"].to_numpy(dtype=float), tau)]
    if sel.empty and (table["scope"] == scope).any():
        raise CellResDMError(f"segmentation scores of {source} have no rows at tau {tau}")
    return sel


def paired_ttests(tables: Mapping[str, pd.DataFrame], reference: str = "cellresdm", tau: float = 0.5) -> pd.DataFrame:
    """Paired t-tests (scipy.stats.ttest_rel) of the reference's per-image scores against every other source's.

    Images are paired by an inner join on plate, well and site; per other source, object both have and metric
    in :data:`TTEST_METRICS`, one row with columns :data:`TTEST_COLUMNS`. ``mean_difference`` is reference minus
    other; ``better`` is the source with the higher mean ("tie" if equal); ``significant`` is p < 0.05.
    With fewer than two pairs, or differences that are all equal (zero variance; t would be 0/0 or infinite),
    t and p are NaN and ``significant`` is False, without a warning. A pair of sources with no common image is
    skipped (logged).

    Args:
        tables: source -> its :func:`score_source` table.
        reference: the source compared with every other.
        tau: the IoU threshold whose per-image scores are compared.

    Raises:
        CellResDMError: the reference is not in ``tables`` or a table has no rows at ``tau``.
    """
    if reference not in tables:
        raise CellResDMError(f"paired t-tests: reference source {reference!r} has no scores ({', '.join(tables)})")
    ref = _at_tau(tables[reference], tau, reference, "image")
    rows = []
    for other, table in tables.items():
        if other == reference:
            continue
        oth = _at_tau(table, tau, other, "image")
        for obj in layout.OBJECT_CHANNELS:
            a, b = ref[ref["object"] == obj], oth[oth["object"] == obj]
            if a.empty or b.empty:
                continue
            try:
                pairs = a.merge(b, on=list(PAIR_KEYS), suffixes=("_ref", "_other"), validate="one_to_one")
            except pd.errors.MergeError as exc:
                raise CellResDMError(
                    f"paired t-tests: {reference} or {other} has several {obj} rows per image at tau {tau}"
                ) from exc
            if pairs.empty:
                _LOG.warning("paired t-tests: %s and %s share no %s images", reference, other, obj)
                continue
            for metric in TTEST_METRICS:
                test = paired_ttest(pairs[f"{metric}_ref"], pairs[f"{metric}_other"])
                rows.append({"reference": reference, "other": other, "object": obj, "metric": metric, **test})
    return pd.DataFrame(rows, columns=list(TTEST_COLUMNS))


# ------------------------------------------------------------------------------------------- figures


def figure_data(
    tables: Mapping[str, pd.DataFrame], sources: Sequence[str], objects: Sequence[str] = layout.OBJECT_CHANNELS
) -> pd.DataFrame:
    """Curve data of a figure: per requested source (present in ``tables``), object (that it has) and tau.

    Columns: source, object, tau, n_images, then per metric in :data:`SCORE_METRICS` the pooled value
    (``{metric}``), and the mean and sample standard deviation over images (``{metric}_image_mean``,
    ``{metric}_image_std``; std 0 for a single image). Rows in the order of ``sources``, ``objects``, tau.
    """
    out = []
    for source in sources:
        if source not in tables:
            continue
        table = tables[source]
        for obj in objects:
            sub = table[table["object"] == obj]
            for tau in sorted(sub["tau"].unique()):
                at = sub[sub["tau"] == tau]
                pooled, images = at[at["scope"] == "pooled"], at[at["scope"] == "image"]
                if pooled.empty:
                    continue
                row: dict = {"source": source, "object": obj, "tau": float(tau), "n_images": len(images)}
                for m in SCORE_METRICS:
                    vals = images[m].to_numpy(dtype=float)
                    row[m] = float(pooled[m].iloc[0])
                    row[f"{m}_image_mean"] = float(vals.mean()) if len(vals) else 0.0
                    row[f"{m}_image_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
                out.append(row)
    columns = ["source", "object", "tau", "n_images"]
    columns += [c for m in SCORE_METRICS for c in (m, f"{m}_image_mean", f"{m}_image_std")]
    return pd.DataFrame(out, columns=columns)


def _colour(source: str, order: list[str]) -> str:
    return _COLOURS.get(source, _EXTRA_COLOURS[order.index(source) % len(_EXTRA_COLOURS)])


def plot_tau_curves(
    data: pd.DataFrame,
    out_png: str | os.PathLike,
    title: str,
    objects: Sequence[str] | None = None,
    missing: Sequence[str] = (),
) -> Path:
    """Write a PNG of F1 and mean true score against tau: one column of panels per object, one line per source.

    Lines are the pooled scores; the shaded band is the per-image mean +- one standard deviation.

    Args:
        data: :func:`figure_data` output.
        out_png: the PNG to write (atomically).
        title: figure title.
        objects: panel columns (default: the objects in ``data``; an object without data gets an empty panel).
        missing: sources that were requested but have no scores, listed in a note under the panels.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    objects = list(objects) if objects is not None else list(dict.fromkeys(data["object"])) or ["nuclei"]
    sources = list(dict.fromkeys(data["source"]))
    fig = Figure(figsize=(4.2 * len(objects), 3.4 * len(PLOT_METRICS) + 0.6), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(PLOT_METRICS), len(objects), squeeze=False, sharex=True)
    for r, (metric, label) in enumerate(PLOT_METRICS.items()):
        for c, obj in enumerate(objects):
            ax = axes[r][c]
            sub = data[data["object"] == obj]
            for source in sources:
                s = sub[sub["source"] == source].sort_values("tau")
                if s.empty:
                    continue
                colour = _colour(source, sources)
                mean, std = s[f"{metric}_image_mean"].to_numpy(), s[f"{metric}_image_std"].to_numpy()
                ax.fill_between(s["tau"], mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
                ax.plot(s["tau"], s[metric], marker="o", markersize=3, color=colour, label=source)
            if sub.empty:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#777777")
            ax.set_ylim(0, 1.02)
            ax.set_xlim(0.05, 0.95)
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(obj)
            if r == len(PLOT_METRICS) - 1:
                ax.set_xlabel("IoU threshold tau")
            if c == 0:
                ax.set_ylabel(label)
            if r == 0 and c == len(objects) - 1 and not sub.empty:
                ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(title)
    note = "lines: pooled over images; bands: per-image mean +- SD"
    if missing:
        note += f"\nrequested but missing: {', '.join(missing)}"
    fig.text(0.5, 0.005, note, ha="center", va="bottom", fontsize=8, color="#444444")
    fig.tight_layout(rect=(0, 0.05 if missing else 0.03, 1, 1))
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return Path(out_png)


# ------------------------------------------------------------------------------------------- orchestration


@dataclass(frozen=True)
class ScoreOutputs:
    """Files :func:`write_scores` writes.

    Attributes:
        tables: source -> its per-image and pooled scores (parquet, :func:`score_source`).
        ttests: paired t-tests CSV (:func:`paired_ttests`).
        summary: pooled scores at the t-test tau, CSV (:func:`summary_table`).
        fig6, fig6_data: Fig. 6 PNG (reference vs pix2pix, nuclei and cells) and its curve data CSV.
        fig7, fig7_data: Fig. 7 PNG (reference vs StarDist on BF and IF, nuclei) and its curve data CSV.
    """

    tables: Mapping[str, str | os.PathLike]
    ttests: str | os.PathLike
    summary: str | os.PathLike
    fig6: str | os.PathLike
    fig6_data: str | os.PathLike
    fig7: str | os.PathLike
    fig7_data: str | os.PathLike


def _write_csv(table: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def summary_table(tables: Mapping[str, pd.DataFrame], tau: float = 0.5) -> pd.DataFrame:
    """Pooled scores at ``tau`` per source and object: columns :data:`SUMMARY_COLUMNS`."""
    parts = [_at_tau(t, tau, s, "pooled") for s, t in tables.items()]
    if not parts:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    return pd.concat(parts, ignore_index=True)[list(SUMMARY_COLUMNS)]


def write_scores(
    truth_dataset: str | os.PathLike,
    instances: Mapping[str, str | os.PathLike],
    outputs: ScoreOutputs,
    reference: str = "cellresdm",
    taus: Sequence[float] = DEFAULT_TAUS,
    ttest_tau: float = 0.5,
    progress: bool = True,
) -> None:
    """Score every source and write the tables and figures of ``outputs``.

    Writes each source's table (:func:`score_source`), the t-tests (:func:`paired_ttests` at ``ttest_tau``), the
    summary (:func:`summary_table` at ``ttest_tau``), Fig. 6 (reference vs pix2pix, nuclei and cells) and Fig. 7
    (reference vs StarDist on BF and IF, nuclei) as PNG plus their :func:`figure_data` CSV. Sources a figure asks
    for but ``instances`` lacks are named in a note on the figure.

    Without the reference among the sources, every source is still scored and plotted, the t-test CSV holds only
    its header, and a warning says why (a run without the reference method is a valid configuration).

    Args:
        truth_dataset: ``datasets/test.zarr``.
        instances: source -> its instances store.
        outputs: the files to write; ``outputs.tables`` has one path per source of ``instances``.
        reference: the source the t-tests and figures compare against.
        taus: IoU thresholds; must contain ``ttest_tau``.
        ttest_tau: IoU threshold of the t-tests and the summary.
        progress: show progress bars.
    """
    if not instances:
        raise CellResDMError("segmentation scores: no instances to score")
    taus = _check_taus(taus)
    if not any(np.isclose(ttest_tau, t) for t in taus):
        raise ConfigError(f"segmentation_scores.ttest_tau {ttest_tau} is not one of the taus {list(taus)}")
    for source in instances:
        _check_source_name(source)
    if set(outputs.tables) != set(instances):
        raise CellResDMError(
            f"segmentation scores: output tables for {sorted(outputs.tables)} but instances of {sorted(instances)}"
        )
    tables = {}
    for source, store in instances.items():
        tables[source] = score_source(truth_dataset, store, source, taus=taus, progress=progress)
        write_parquet(tables[source], outputs.tables[source])

    if reference in tables:
        ttests = paired_ttests(tables, reference=reference, tau=ttest_tau)
        for row in ttests[ttests["metric"] == "f1"].itertuples():
            _LOG.info(
                "F1 at tau %.2f, %s: %s %.3f vs %s %.3f (p=%.3g, n=%d)",
                ttest_tau,
                row.object,
                reference,
                row.mean_reference,
                row.other,
                row.mean_other,
                row.p,
                row.n,
            )
    else:
        _LOG.warning(
            "segmentation scores: reference %r is not among the sources (%s); no t-tests",
            reference,
            ", ".join(tables),
        )
        ttests = pd.DataFrame(columns=list(TTEST_COLUMNS))
    _write_csv(ttests, outputs.ttests)

    summary = summary_table(tables, ttest_tau)
    _write_csv(summary, outputs.summary)
    for row in summary.itertuples():
        _LOG.info(
            "%s %s at tau %.2f: F1 %.3f, mean true score %.3f, PQ %.3f",
            row.source,
            row.object,
            ttest_tau,
            row.f1,
            row.mean_true_score,
            row.panoptic_quality,
        )

    figures = (
        ("fig6", outputs.fig6, outputs.fig6_data, (reference, *FIG6_OTHERS), FIG6_OBJECTS, FIG6_TITLE),
        ("fig7", outputs.fig7, outputs.fig7_data, (reference, *FIG7_OTHERS), FIG7_OBJECTS, FIG7_TITLE),
    )
    for key, png, csv, sources, objects, title in figures:
        data = figure_data(tables, sources, objects)
        missing = [s for s in sources if s not in tables]
        if missing:
            _LOG.info("%s: no scores for %s", key, ", ".join(missing))
        _write_csv(data, csv)
        plot_tau_curves(data, png, title, objects=objects, missing=missing)
