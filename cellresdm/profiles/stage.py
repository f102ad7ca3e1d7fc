"""The profiles stage (:func:`profile_stage`): feature tables of every source -> well profiles -> retrieval
tables, summary and figure."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from cellresdm.errors import CellResDMError
from cellresdm.io import atomic_path, write_parquet
from cellresdm.profiles.figure import plot_retrieval
from cellresdm.profiles.platemap import read_platemap, read_treatment_metadata
from cellresdm.profiles.retrieval import annotation_retrieval, crossmodal_retrieval, replicate_retrieval
from cellresdm.profiles.settings import REAL, SOURCE, ProfileSettings, feature_columns
from cellresdm.profiles.wells import (
    aggregate_wells,
    annotate_wells,
    apply_feature_selection,
    constant_features,
    fit_feature_selection,
    normalize_plates,
)

_LOG = logging.getLogger("cellresdm")

#: Columns of the per-source summary.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "source",
    "n_wells",
    "n_features",
    "replicate_map",
    "replicate_random_map",
    "replicate_retrieved",
    "n_treatments",
    "annotation_map",
    "annotation_random_map",
    "annotation_retrieved",
    "n_annotations",
    "crossmodal_map",
    "crossmodal_random_map",
    "crossmodal_retrieved",
    "n_crossmodal_wells",
)


@dataclass(frozen=True)
class ProfileOutputs:
    """Files of the profiles stage (paths from ``cellresdm.results``).

    Attributes:
        wells: aggregated, annotated well profiles of every source (before normalisation), parquet.
        profiles: normalised, feature-selected well profiles of every source, parquet.
        selection: the feature selection fitted on the real profiles (feature, kept, dropped_by), CSV.
        replicate, annotation, crossmodal: the retrieval tables of every source, CSV.
        summary: one row per source (:data:`SUMMARY_COLUMNS`), CSV.
        figure: :func:`cellresdm.profiles.figure.plot_retrieval` PNG.
    """

    wells: str | os.PathLike
    profiles: str | os.PathLike
    selection: str | os.PathLike
    replicate: str | os.PathLike
    annotation: str | os.PathLike
    crossmodal: str | os.PathLike
    summary: str | os.PathLike
    figure: str | os.PathLike


def _write_csv(table: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def well_profiles(
    features: Mapping[str, pd.DataFrame],
    platemaps: Mapping[str, pd.DataFrame],
    settings: ProfileSettings,
    treatment_metadata: pd.DataFrame | None = None,
    log: logging.Logger | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Well profiles of every source: aggregated and annotated, normalised per plate to the negative controls,
    reduced to the features selected on the real profiles.

    Args:
        features: source -> its per-image feature table; must hold ``real``.
        platemaps: plate -> its plate map (:func:`cellresdm.profiles.platemap.read_platemap`).

    Returns:
        (annotated well profiles of every source, normalised and selected profiles of every source, the feature
        selection record (:func:`fit_feature_selection`)), sources stacked in ``features`` order.
    """
    log = log or _LOG
    if REAL not in features:
        raise CellResDMError(f"the profiles stage needs the real feature table, got sources {list(features)}")
    annotated = {
        source: annotate_wells(
            aggregate_wells(table, source, settings.aggregate), platemaps, settings, treatment_metadata, log
        )
        for source, table in features.items()
    }
    constant = constant_features(annotated[REAL])
    how = (
        "dropped by variance_threshold"
        if "variance_threshold" in settings.feature_select
        else "kept (no variance_threshold)"
    )
    log.info("profiles: %d features are constant across all real wells: %s", len(constant), how)
    normalised = {s: normalize_plates(t, settings.normalize, settings.control_value) for s, t in annotated.items()}
    selection = fit_feature_selection(normalised[REAL], settings, log)
    selected = selection.loc[selection["kept"], "feature"].tolist()
    if not selected:
        raise CellResDMError("profiles: feature selection on the real profiles kept no feature")
    log.info("profiles: %d of %d features selected on the real profiles", len(selected), len(selection))
    profiles = {s: apply_feature_selection(t, selected, log) for s, t in normalised.items()}
    stack = pd.concat(list(annotated.values()), ignore_index=True)
    return stack, pd.concat(list(profiles.values()), ignore_index=True), selection


def _mean(table: pd.DataFrame, column: str) -> float:
    return float(table[column].astype(float).mean()) if len(table) else float("nan")


def _fraction(table: pd.DataFrame) -> float:
    return float(table["retrieved"].astype(bool).mean()) if len(table) else float("nan")


def summarise(
    profiles: pd.DataFrame,
    replicate: pd.DataFrame,
    annotation: pd.DataFrame,
    crossmodal: pd.DataFrame,
) -> pd.DataFrame:
    """One row per source of ``profiles``: wells, features, and per test the mean mAP over its groups, the mean
    random mAP, the fraction retrieved and the number of groups (:data:`SUMMARY_COLUMNS`; NaN where a test has
    no group)."""
    rows = []
    for source in dict.fromkeys(profiles[SOURCE]):
        row = {
            "source": source,
            "n_wells": int((profiles[SOURCE] == source).sum()),
            "n_features": len(feature_columns(profiles)),
        }
        for name, table, count in (
            ("replicate", replicate, "n_treatments"),
            ("annotation", annotation, "n_annotations"),
            ("crossmodal", crossmodal, "n_crossmodal_wells"),
        ):
            part = table[table["source"] == source]
            row[f"{name}_map"] = _mean(part, "map")
            row[f"{name}_random_map"] = _mean(part, "random_map")
            row[f"{name}_retrieved"] = _fraction(part)
            row[count] = len(part)
        rows.append(row)
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def retrieval_tables(
    profiles: pd.DataFrame, settings: ProfileSettings, log: logging.Logger | None = None
) -> dict[str, pd.DataFrame]:
    """``replicate``, ``annotation`` and ``crossmodal`` retrieval tables of every source of ``profiles``
    (normalised and selected; cross-modal for every source but ``real``)."""
    log = log or _LOG
    features = feature_columns(profiles)
    by_source = {s: g.reset_index(drop=True) for s, g in profiles.groupby(SOURCE, sort=False)}
    tables: dict[str, list[pd.DataFrame]] = {"replicate": [], "annotation": [], "crossmodal": []}
    for source, group in by_source.items():
        tables["replicate"].append(replicate_retrieval(group, features, settings, log))
        tables["annotation"].append(annotation_retrieval(group, features, settings, log))
        if source != REAL:
            tables["crossmodal"].append(crossmodal_retrieval(group, by_source[REAL], features, settings, log))
    out = {}
    for name, parts in tables.items():
        parts = [p for p in parts if len(p)]
        out[name] = (
            pd.concat(parts, ignore_index=True)
            if parts
            else pd.DataFrame(columns=["source", "map", "random_map", "retrieved"])
        )
    return out


def profile_stage(
    features: Mapping[str, str | os.PathLike],
    platemaps: Mapping[str, str | os.PathLike],
    settings: ProfileSettings,
    outputs: ProfileOutputs,
    log: logging.Logger | None = None,
) -> pd.DataFrame:
    """Read every source's feature table and every plate's plate map, build the well profiles
    (:func:`well_profiles`), score retrieval (:func:`retrieval_tables`) and write every file of ``outputs``.

    Args:
        features: source -> its ``features/{source}.parquet``, ``real`` among them (sources in report order).
        platemaps: plate -> its plate map file (test plates).
        settings: the ``profiles`` section.
        outputs: the files to write.

    Returns:
        The summary table (one row per source).
    """
    log = log or _LOG
    start = time.perf_counter()
    tables = {}
    for source, path in features.items():
        try:
            tables[source] = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise CellResDMError(f"cannot read the feature table of {source} ({path}): {exc}") from exc
    maps = {plate: read_platemap(path, plate, settings) for plate, path in platemaps.items()}
    metadata = read_treatment_metadata(settings.treatment_metadata, settings) if settings.treatment_metadata else None
    annotated, profiles, selection = well_profiles(tables, maps, settings, metadata, log)
    scores = retrieval_tables(profiles, settings, log)
    summary = summarise(profiles, scores["replicate"], scores["annotation"], scores["crossmodal"])
    write_parquet(annotated, outputs.wells)
    write_parquet(profiles, outputs.profiles)
    _write_csv(selection, outputs.selection)
    for name in ("replicate", "annotation", "crossmodal"):
        _write_csv(scores[name], getattr(outputs, name))
    _write_csv(summary, outputs.summary)
    plot_retrieval(scores, list(features), outputs.figure, settings.pvalue_threshold)
    for row in summary.itertuples(index=False):
        log.info(
            "profiles %s: replicate mAP %.3f (random %.3f), retrieved %.2f of %d treatments; annotation mAP %.3f; "
            "cross-modal mAP %.3f (random %.3f), retrieved %.2f of %d wells",
            row.source,
            row.replicate_map,
            row.replicate_random_map,
            row.replicate_retrieved,
            row.n_treatments,
            row.annotation_map,
            row.crossmodal_map,
            row.crossmodal_random_map,
            row.crossmodal_retrieved,
            row.n_crossmodal_wells,
        )
    log.info("profiles: %d sources, %d plates in %.1f s", len(tables), len(maps), time.perf_counter() - start)
    return summary


__all__ = ["SUMMARY_COLUMNS", "ProfileOutputs", "profile_stage", "retrieval_tables", "summarise", "well_profiles"]
