"""Well profiles with pycytominer: per-image features -> wells (:func:`aggregate_wells`), plate-map annotation
(:func:`annotate_wells`), per-plate normalisation to the negative controls (:func:`normalize_plates`) and feature
selection fitted on the real profiles (:func:`fit_feature_selection`, :func:`apply_feature_selection`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pycytominer

from cellresdm.errors import CellResDMError
from cellresdm.profiles.settings import (
    ANNOTATION,
    CELL_LINE,
    CONTROL,
    N_IMAGES,
    PLATE,
    SOURCE,
    TREATMENT,
    WELL,
    ProfileSettings,
    feature_columns,
)

_LOG = logging.getLogger("cellresdm")

#: Columns of the feature-selection record.
SELECTION_COLUMNS: tuple[str, ...] = ("feature", "kept", "dropped_by")


def aggregate_wells(features: pd.DataFrame, source: str, operation: str = "median") -> pd.DataFrame:
    """Per-image feature rows -> one profile per well (pycytominer.aggregate).

    Args:
        features: the feature stage's table of one source (``Metadata_Plate``, ``Metadata_Well``,
            ``Metadata_CellLine`` and the ``Image_*``/``Nuclei_*``/``Cells_*``/``Cytoplasm_*`` features), one row
            per image (field).
        source: name written to ``Metadata_Source``.
        operation: ``median`` or ``mean`` over the images of a well.

    Returns:
        One row per (plate, well): ``Metadata_Source``, ``Metadata_Plate``, ``Metadata_Well``,
        ``Metadata_CellLine``, ``Metadata_Images`` (images aggregated), then the features (float64).
    """
    lacking = [c for c in (PLATE, WELL, CELL_LINE) if c not in features.columns]
    if lacking:
        raise CellResDMError(f"feature table of {source} lacks {lacking}")
    feats = feature_columns(features)
    if not feats:
        raise CellResDMError(
            f"feature table of {source} has no feature column ({', '.join(['Image_*', 'Nuclei_*'])} ...)"
        )
    strata = [PLATE, WELL, CELL_LINE]
    wells = pycytominer.aggregate(features, strata=strata, features=feats, operation=operation)
    counts = features.groupby(strata, sort=False).size().rename(N_IMAGES).reset_index()
    wells = counts.merge(wells, on=strata, how="right", validate="one_to_one")
    wells.insert(0, SOURCE, source)
    return wells.sort_values([PLATE, WELL], kind="stable").reset_index(drop=True)


def annotate_wells(
    wells: pd.DataFrame,
    platemaps: Mapping[str, pd.DataFrame],
    settings: ProfileSettings,
    treatment_metadata: pd.DataFrame | None = None,
    log: logging.Logger | None = None,
) -> pd.DataFrame:
    """Join each plate's wells with its plate map (pycytominer.annotate) and the treatment metadata.

    Wells with images that the plate map lacks are dropped with a warning naming them; plates without a plate
    map are dropped with a warning too. The plate-map columns come as ``Metadata_{column}``; the standard
    columns ``Metadata_Treatment`` (the treatment, ``""`` for an empty cell), ``Metadata_Control`` (treatment
    is ``settings.control_value``) and ``Metadata_Annotation`` (the annotation column, ``""`` when absent) are
    added.

    Args:
        wells: :func:`aggregate_wells` output of one source.
        platemaps: plate -> its plate map (:func:`cellresdm.profiles.platemap.read_platemap`).
        treatment_metadata: table joined on the treatment column, or None.

    Raises:
        CellResDMError: no well of any plate is in its plate map.
    """
    log = log or _LOG
    source = str(wells[SOURCE].iloc[0]) if len(wells) else "?"
    well_col, treatment_col = settings.platemap_well_column, settings.treatment_column
    parts = []
    for plate, group in wells.groupby(PLATE, sort=True):
        if plate not in platemaps:
            log.warning(
                "profiles of %s: plate %s has no plate map: its %d wells are left out", source, plate, len(group)
            )
            continue
        platemap = platemaps[plate]
        unmapped = sorted(set(group[WELL]) - set(platemap[well_col]))
        if unmapped:
            log.warning(
                "profiles of %s: plate %s: wells with images but not in the plate map, dropped: %s",
                source,
                plate,
                ", ".join(unmapped),
            )
        external = {}
        if treatment_metadata is not None:
            external = {"external_metadata": treatment_metadata, "external_join_on": [f"Metadata_{treatment_col}"]}
        annotated = pycytominer.annotate(
            group,
            platemap,
            join_on=[f"Metadata_{well_col}", WELL],
            output_file=None,
            **external,
        )
        parts.append(annotated)
    if not parts or all(p.empty for p in parts):
        raise CellResDMError(f"profiles of {source}: no well with images is in its plate's plate map")
    table = pd.concat(parts, ignore_index=True)
    treatment = table[f"Metadata_{treatment_col}"].astype(object).where(lambda s: s.notna(), "")
    table[TREATMENT] = treatment.astype(str).str.strip()
    table[CONTROL] = table[TREATMENT] == settings.control_value
    annotation = f"Metadata_{settings.annotation_column}" if settings.annotation_column else None
    if annotation and annotation in table.columns:
        table[ANNOTATION] = table[annotation].astype(object).where(lambda s: s.notna(), "").astype(str).str.strip()
    else:
        table[ANNOTATION] = ""
    meta = [c for c in table.columns if c.startswith("Metadata_")]
    first = [SOURCE, PLATE, WELL, CELL_LINE, TREATMENT, CONTROL, ANNOTATION, N_IMAGES]
    meta = first + [c for c in meta if c not in first]
    return table[meta + feature_columns(table)].sort_values([PLATE, WELL], kind="stable").reset_index(drop=True)


def normalize_plates(profiles: pd.DataFrame, method: str, control_value: str = "") -> pd.DataFrame:
    """Normalise every plate's features to its negative-control wells (pycytominer.normalize, ``samples`` = the
    ``Metadata_Control`` wells of the plate).

    Raises:
        CellResDMError: a plate has no negative-control well with images (naming the plate and the control
            value looked for).
    """
    feats = feature_columns(profiles)
    meta = [c for c in profiles.columns if c not in set(feats)]
    parts = []
    for plate, group in profiles.groupby(PLATE, sort=True):
        if not group[CONTROL].any():
            raise CellResDMError(
                f"plate {plate}: no negative-control well with images (treatment {control_value!r}, "
                f"profiles.control_value) in the profiles of {group[SOURCE].iloc[0]}: nothing to normalise to"
            )
        parts.append(
            pycytominer.normalize(
                group.reset_index(drop=True),
                features=feats,
                meta_features=meta,
                samples=f"{CONTROL} == True",
                method=method,
            )
        )
    out = pd.concat(parts, ignore_index=True)
    return out[meta + feats]


def constant_features(profiles: pd.DataFrame) -> list[str]:
    """Features with at most one distinct finite value across all rows."""
    values = profiles[feature_columns(profiles)].replace([np.inf, -np.inf], np.nan)
    return [c for c in values.columns if values[c].nunique(dropna=True) <= 1]


def fit_feature_selection(
    real: pd.DataFrame, settings: ProfileSettings, log: logging.Logger | None = None
) -> pd.DataFrame:
    """Run each of ``settings.feature_select``'s operations (pycytominer.feature_select) in turn on the
    normalised real profiles; each sees the features the ones before kept.

    Returns:
        One row per feature: :data:`SELECTION_COLUMNS` (``dropped_by``: the operation that dropped it, ``""``
        for a kept feature).
    """
    log = log or _LOG
    remaining = feature_columns(real)
    meta = [c for c in real.columns if c not in set(remaining)]
    dropped: dict[str, str] = {}
    for operation in settings.feature_select:
        selected = pycytominer.feature_select(
            real[meta + remaining],
            features=remaining,
            operation=operation,
            na_cutoff=settings.na_cutoff,
            corr_threshold=settings.corr_threshold,
            outlier_cutoff=settings.outlier_cutoff,
            blocklist=list(settings.blocklist) if settings.blocklist is not None else None,
        )
        kept = set(selected.columns)
        gone = [c for c in remaining if c not in kept]
        dropped.update(dict.fromkeys(gone, operation))
        remaining = [c for c in remaining if c in kept]
        log.info("feature selection: %s dropped %d features, %d left", operation, len(gone), len(remaining))
    features = feature_columns(real)
    return pd.DataFrame(
        {
            "feature": features,
            "kept": [f not in dropped for f in features],
            "dropped_by": [dropped.get(f, "") for f in features],
        },
        columns=list(SELECTION_COLUMNS),
    )


def apply_feature_selection(
    profiles: pd.DataFrame, selected: Sequence[str], log: logging.Logger | None = None
) -> pd.DataFrame:
    """Keep the ``selected`` features (fitted on the real profiles) of any source's normalised profiles.

    A value that is not finite (a feature the source could not measure in a well, e.g. no object found) is set
    to 0, the control median after normalisation, and counted in the log.

    Raises:
        CellResDMError: the profiles lack a selected feature.
    """
    log = log or _LOG
    feats = feature_columns(profiles)
    lacking = [c for c in selected if c not in set(feats)]
    source = str(profiles[SOURCE].iloc[0]) if len(profiles) else "?"
    if lacking:
        raise CellResDMError(f"profiles of {source} lack {len(lacking)} selected features, e.g. {lacking[:3]}")
    meta = [c for c in profiles.columns if c not in set(feats)]
    values = profiles[list(selected)].astype("float64").replace([np.inf, -np.inf], np.nan)
    missing = int(values.isna().to_numpy().sum())
    if missing:
        log.info("profiles of %s: %d missing or infinite values (of %d) set to 0", source, missing, values.size)
    return pd.concat([profiles[meta].reset_index(drop=True), values.fillna(0.0).reset_index(drop=True)], axis=1)
