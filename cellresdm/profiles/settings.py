"""Settings of the profiles stage (config section ``profiles``) and the names its tables share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cellresdm import config

#: Metadata columns the stage adds to every profile table.
PLATE, WELL, CELL_LINE, SOURCE = "Metadata_Plate", "Metadata_Well", "Metadata_CellLine", "Metadata_Source"
TREATMENT, CONTROL, ANNOTATION = "Metadata_Treatment", "Metadata_Control", "Metadata_Annotation"
#: Images (fields) aggregated into a well profile.
N_IMAGES = "Metadata_Images"
#: Source names of the real images and of the BF-copy baseline (``cellresdm.metrics.TRIVIAL``).
REAL, BF_COPY = "real", "bf_copy"
#: Compartments whose columns are features (CellProfiler / pycytominer prefixes).
FEATURE_PREFIXES: tuple[str, ...] = ("Image_", "Nuclei_", "Cells_", "Cytoplasm_")


@dataclass(frozen=True)
class ProfileSettings:
    """Settings of the profiles stage; every default lives in the config schema (section ``profiles``).

    Attributes:
        platemap_well_column: well column of the plate maps (``well_position``: A01 ...).
        treatment_column: treatment column of the plate maps and of ``treatment_metadata`` (``broad_sample``).
        control_value: treatment value of the negative-control wells (``""``: an empty cell).
        treatment_metadata: table of treatment annotations joined on the treatment column, or None.
        annotation_column: mechanism/target column of same-annotation retrieval, or None.
        aggregate: per-image rows -> wells, ``median`` or ``mean`` (pycytominer.aggregate).
        normalize: ``mad_robustize``, ``robustize`` or ``standardize`` (pycytominer.normalize) to the controls.
        feature_select: pycytominer.feature_select operations, in order, fitted on the real profiles.
        corr_threshold, na_cutoff, outlier_cutoff: parameters of those operations.
        blocklist: features of the blocklist operation; None = pycytominer's packaged default.
        distance: similarity of the copairs rankings (``cosine``, ``correlation``, ``euclidean``).
        permutations: size of copairs' null distribution of average precision.
        pvalue_ties: ``greater`` (copairs' get_map_pvalue: null mAPs above the observed one) or
            ``greater_equal`` (ties too: conservative for small groups with few negatives).
        pvalue_correction: statsmodels multipletests method (``fdr_bh`` ...).
        pvalue_threshold: retrieved = corrected p-value below it.
        seed: seed of the null distributions.
    """

    platemap_well_column: str
    treatment_column: str
    control_value: str
    treatment_metadata: str | None
    annotation_column: str | None
    aggregate: str
    normalize: str
    feature_select: tuple[str, ...]
    corr_threshold: float
    na_cutoff: float
    outlier_cutoff: float
    blocklist: tuple[str, ...] | None
    distance: str
    permutations: int
    pvalue_ties: str
    pvalue_correction: str
    pvalue_threshold: float
    seed: int

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None = None) -> ProfileSettings:
        """From the validated ``profiles`` section; None (or a partial mapping) is completed with the schema's
        defaults (:func:`cellresdm.config.section`)."""
        values = config.section("profiles", dict(section or {}))
        return cls(**config.settings_values(cls, values, "profiles"))


def feature_columns(table: Any) -> list[str]:
    """The feature columns of a profile or feature table (:data:`FEATURE_PREFIXES`), in table order."""
    return [c for c in table.columns if str(c).startswith(FEATURE_PREFIXES)]
