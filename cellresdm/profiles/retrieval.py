"""Retrieval scores of well profiles with copairs: replicate retrieval against the negative controls
(:func:`replicate_retrieval`), retrieval of treatments sharing a mechanism or target annotation
(:func:`annotation_retrieval`) and the cross-modal test, a virtual well profile retrieving the real profile of the
same well among all real wells of its plate (:func:`crossmodal_retrieval`).

Each query profile's average precision (AP) ranks its positives against its negatives by similarity; mAP is the
mean AP of a group; copairs draws the null distribution of AP for random rankings (``permutations`` of them)
for the p-value of each group (``pvalue_ties``: copairs' rule, or ties counted as extreme), and the p-values of
one source and test are corrected together for multiple testing (statsmodels ``multipletests`` through
``copairs.map.apply_fdr_correction``). ``random_map`` is the
expected mAP of a random ranking (copairs' exact formula)."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import pycytominer
from copairs.compute import get_null_dists
from copairs.map import apply_fdr_correction, average_precision, get_map_pvalue
from copairs.map.normalization import expected_ap
from copairs.matching import UnpairedException, assign_reference_index

from cellresdm.profiles.settings import ANNOTATION, CONTROL, PLATE, SOURCE, TREATMENT, WELL, ProfileSettings

_LOG = logging.getLogger("cellresdm")
_REFERENCE = "Metadata_Reference_Index"
_MODALITY = "Metadata_Modality"
#: Tolerance of a tie between a null mAP (float32) and the observed one.
_TIE = 1e-6

#: Columns of every retrieval table, after the group columns.
SCORE_COLUMNS: tuple[str, ...] = (
    "n_profiles",
    "map",
    "random_map",
    "p_value",
    "corrected_p_value",
    "retrieved",
)


def _empty(groups: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(columns=["source", *groups, *SCORE_COLUMNS])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """copairs logs every step at INFO: keep its warnings only."""
    logger = logging.getLogger("copairs")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _group_pvalues(ap: pd.DataFrame, groups: list[str], settings: ProfileSettings) -> pd.DataFrame:
    """mAP and permutation p-value per group of the AP table ``ap``, from copairs' null distributions of AP
    (for each query's numbers of positive and total pairs; a group's null is the mean of its queries' nulls).

    ``settings.pvalue_ties`` ``greater`` is copairs' ``get_map_pvalue`` unchanged: p = (null values above the
    observed mAP + 1) / (permutations + 1), so a perfect mAP gets the smallest p-value even where a random
    ranking is perfect one time in three. ``greater_equal`` counts the ties too (the conservative p-value of
    small groups with few negatives).
    """
    with tempfile.TemporaryDirectory(prefix="copairs-null-") as cache, _quiet():
        if settings.pvalue_ties == "greater":
            scores = get_map_pvalue(
                ap,
                sameby=groups,
                null_size=settings.permutations,
                seed=settings.seed,
                progress_bar=False,
                cache_dir=cache,
            )
            return scores.drop(columns=["indices"])
        confs, inverse = np.unique(ap[["n_pos_pairs", "n_total_pairs"]].to_numpy(int), axis=0, return_inverse=True)
        nulls = get_null_dists(confs, settings.permutations, seed=settings.seed, cache_dir=cache, progress_bar=False)
    values = ap["average_precision"].to_numpy(float)
    rows = []
    for key, index in ap.groupby(groups, sort=True).indices.items():
        observed = float(values[index].mean())
        null = nulls[inverse.reshape(-1)[index]].mean(axis=0)
        p = (int((null >= observed - _TIE).sum()) + 1) / (settings.permutations + 1)
        keys = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(groups, keys, strict=True)), "mean_average_precision": observed, "p_value": p})
    return pd.DataFrame(rows)


def _map_table(
    ap: pd.DataFrame, groups: list[str], names: list[str], source: str, settings: ProfileSettings
) -> pd.DataFrame:
    """mAP, random mAP, p-value and corrected p-value per group of the AP table ``ap`` (copairs)."""
    ap = ap[ap["average_precision"].notna() & (ap["n_pos_pairs"] > 0)].reset_index(drop=True)
    if ap.empty:
        return _empty(names)
    scores = apply_fdr_correction(_group_pvalues(ap, groups, settings), method=settings.pvalue_correction)
    n_pos, n_total = ap["n_pos_pairs"].to_numpy(int), ap["n_total_pairs"].to_numpy(int)
    ap["random_ap"] = [expected_ap(int(m), int(t - m)) for m, t in zip(n_pos, n_total, strict=True)]
    stats = ap.groupby(groups, sort=False).agg(
        n_profiles=("average_precision", "size"), random_map=("random_ap", "mean")
    )
    scores = scores.merge(stats.reset_index(), on=groups, how="left")
    table = scores[groups].rename(columns=dict(zip(groups, names, strict=True)))
    table.insert(0, "source", source)
    table["n_profiles"] = scores["n_profiles"].astype(int).to_numpy()
    table["map"] = scores["mean_average_precision"].astype(float).to_numpy()
    table["random_map"] = scores["random_map"].astype(float).to_numpy()
    table["p_value"] = scores["p_value"].astype(float).to_numpy()
    table["corrected_p_value"] = scores["corrected_p_value"].astype(float).to_numpy()
    table["retrieved"] = table["corrected_p_value"] < settings.pvalue_threshold
    return table.sort_values(names, kind="stable").reset_index(drop=True)


def _average_precision(
    meta: pd.DataFrame, values: np.ndarray, settings: ProfileSettings, **pairs: list[str]
) -> pd.DataFrame | None:
    """copairs' AP per profile, or None when there is no positive or no negative pair."""
    try:
        with _quiet():
            return average_precision(meta, values, distance=settings.distance, progress_bar=False, **pairs)
    except UnpairedException:
        return None


def _split(
    profiles: pd.DataFrame, features: Sequence[str], settings: ProfileSettings, what: str, log: logging.Logger
) -> tuple[pd.DataFrame, np.ndarray]:
    """(metadata, values (N, F) float64) of the profiles a similarity is defined for: a profile that is all zero
    (cosine) or constant (correlation) has none and is left out with a warning."""
    values = profiles[list(features)].to_numpy(dtype=np.float64)
    if settings.distance == "cosine":
        usable = np.linalg.norm(values, axis=1) > 0
    elif settings.distance == "correlation":
        usable = values.std(axis=1) > 0
    else:
        usable = np.ones(len(values), dtype=bool)
    if not usable.all():
        log.warning(
            "%s: %d of %d profiles have no %s similarity (all zero or constant), left out",
            what,
            int((~usable).sum()),
            len(values),
            settings.distance,
        )
    meta = profiles.drop(columns=list(features)).reset_index(drop=True)[usable].reset_index(drop=True)
    return meta, values[usable]


def replicate_retrieval(
    profiles: pd.DataFrame, features: Sequence[str], settings: ProfileSettings, log: logging.Logger | None = None
) -> pd.DataFrame:
    """Replicate retrieval per plate and treatment: each treated well queries its plate's wells of the same
    treatment (positives) against the plate's negative-control wells (negatives); mAP per (plate, treatment).

    Args:
        profiles: normalised, feature-selected well profiles of one source (``Metadata_Plate``,
            ``Metadata_Treatment``, ``Metadata_Control``, features).
        features: the feature columns.

    Returns:
        ``source, plate, treatment`` + :data:`SCORE_COLUMNS`, one row per (plate, treatment) with at least two
        wells; empty when no treatment has replicate wells.
    """
    log = log or _LOG
    source = str(profiles[SOURCE].iloc[0])
    meta, values = _split(profiles, features, settings, f"replicate retrieval of {source}", log)
    meta = assign_reference_index(meta, meta.index[meta[CONTROL].to_numpy(bool)], reference_col=_REFERENCE)
    ap = _average_precision(
        meta,
        values,
        settings,
        pos_sameby=[PLATE, TREATMENT, _REFERENCE],
        pos_diffby=[],
        neg_sameby=[PLATE],
        neg_diffby=[TREATMENT, _REFERENCE],
    )
    if ap is None:
        log.warning("replicate retrieval of %s: no treatment has replicate wells and controls on a plate", source)
        return _empty(["plate", "treatment"])
    ap = ap[~ap[CONTROL].to_numpy(bool)]
    return _map_table(ap, [PLATE, TREATMENT], ["plate", "treatment"], source, settings)


def annotation_retrieval(
    profiles: pd.DataFrame, features: Sequence[str], settings: ProfileSettings, log: logging.Logger | None = None
) -> pd.DataFrame:
    """Retrieval of treatments sharing an annotation (mechanism or target): each treatment's consensus profile
    (median of its wells, pycytominer.consensus) queries the other treatments of its plate; positives share its
    annotation, negatives do not. Controls and treatments without an annotation take no part.

    Returns:
        ``source, plate, annotation`` + :data:`SCORE_COLUMNS`, one row per (plate, annotation) held by at least
        two treatments; empty when there is none.
    """
    log = log or _LOG
    source = str(profiles[SOURCE].iloc[0])
    treated = profiles[~profiles[CONTROL].to_numpy(bool) & (profiles[ANNOTATION] != "")]
    if treated.empty:
        log.info("annotation retrieval of %s: no treated well has an annotation", source)
        return _empty(["plate", "annotation"])
    keys = [SOURCE, PLATE, TREATMENT, ANNOTATION]
    consensus = pycytominer.consensus(treated[[*keys, *features]], replicate_columns=keys, features=list(features))
    meta, values = _split(consensus, features, settings, f"annotation retrieval of {source}", log)
    ap = _average_precision(
        meta,
        values,
        settings,
        pos_sameby=[PLATE, ANNOTATION],
        pos_diffby=[TREATMENT],
        neg_sameby=[PLATE],
        neg_diffby=[ANNOTATION],
    )
    if ap is None:
        log.info("annotation retrieval of %s: no plate has two treatments of one annotation and one of another", source)
        return _empty(["plate", "annotation"])
    return _map_table(ap, [PLATE, ANNOTATION], ["plate", "annotation"], source, settings)


def crossmodal_retrieval(
    virtual: pd.DataFrame,
    real: pd.DataFrame,
    features: Sequence[str],
    settings: ProfileSettings,
    log: logging.Logger | None = None,
) -> pd.DataFrame:
    """Cross-modal retrieval: each well's virtual profile queries the real profiles of its plate; the real
    profile of the same well is the one positive, the real profiles of the plate's other wells the negatives.

    Args:
        virtual, real: normalised, feature-selected well profiles of a source and of the real images.

    Returns:
        ``source, plate, well`` + :data:`SCORE_COLUMNS` (``map`` = the well's AP), one row per well present in
        both; p-values corrected over all wells of the source.
    """
    log = log or _LOG
    source = str(virtual[SOURCE].iloc[0])
    keys = [PLATE, WELL]
    common = virtual[keys].merge(real[keys], on=keys)
    both = []
    for name, table in (("virtual", virtual), ("real", real)):
        part = table.merge(common, on=keys)[[*keys, *features]].copy()
        part.insert(0, _MODALITY, name)
        both.append(part)
    stacked = pd.concat(both, ignore_index=True)
    meta, values = _split(stacked, features, settings, f"cross-modal retrieval of {source}", log)
    ap = _average_precision(
        meta,
        values,
        settings,
        pos_sameby=[PLATE, WELL],
        pos_diffby=[_MODALITY],
        neg_sameby=[PLATE],
        neg_diffby=[WELL, _MODALITY],
    )
    if ap is None:
        log.warning("cross-modal retrieval of %s: no plate has two wells in both sources", source)
        return _empty(["plate", "well"])
    ap = ap[ap[_MODALITY] == "virtual"]
    return _map_table(ap, keys, ["plate", "well"], source, settings)
