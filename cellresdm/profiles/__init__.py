"""Profile-level evaluation (docs/design.md section 5, profiles): do virtual profiles retrieve the same biology
as real ones?

For the real IF and every source of virtual IF (each method, the BF copy) of the test plates:

1. well profiles with pycytominer: per-image CellProfiler features aggregated to wells (median), annotated with
   the plate map, normalised per plate to the negative-control wells (``mad_robustize``) and reduced to the
   features that ``feature_select`` (variance, correlation, NA, blocklist, outliers) keeps on the real
   profiles, the same for every source (:mod:`~cellresdm.profiles.wells`);
2. retrieval with copairs: replicate retrieval of each treatment against the controls, retrieval of treatments
   with the same mechanism or target annotation, and the cross-modal test (a well's virtual profile retrieving
   the same well's real profile among all real wells of the plate), each as mean average precision with
   permutation p-values corrected for multiple testing (:mod:`~cellresdm.profiles.retrieval`);
3. a summary per source and a figure (:mod:`~cellresdm.profiles.stage`, :mod:`~cellresdm.profiles.figure`).

Plate maps (:mod:`~cellresdm.profiles.platemap`) follow JUMP-Target-1 (``well_position``, ``broad_sample``,
negative controls with an empty ``broad_sample``); the columns and control value are settings
(:class:`ProfileSettings`, config section ``profiles``).
"""

from cellresdm.profiles.figure import plot_retrieval
from cellresdm.profiles.platemap import read_platemap, read_treatment_metadata
from cellresdm.profiles.retrieval import (
    SCORE_COLUMNS,
    annotation_retrieval,
    crossmodal_retrieval,
    replicate_retrieval,
)
from cellresdm.profiles.settings import ProfileSettings, feature_columns
from cellresdm.profiles.stage import (
    SUMMARY_COLUMNS,
    ProfileOutputs,
    profile_stage,
    retrieval_tables,
    summarise,
    well_profiles,
)
from cellresdm.profiles.wells import (
    aggregate_wells,
    annotate_wells,
    apply_feature_selection,
    constant_features,
    fit_feature_selection,
    normalize_plates,
)

__all__ = [
    "SCORE_COLUMNS",
    "SUMMARY_COLUMNS",
    "ProfileOutputs",
    "ProfileSettings",
    "aggregate_wells",
    "annotate_wells",
    "annotation_retrieval",
    "apply_feature_selection",
    "constant_features",
    "crossmodal_retrieval",
    "feature_columns",
    "fit_feature_selection",
    "normalize_plates",
    "plot_retrieval",
    "profile_stage",
    "read_platemap",
    "read_treatment_metadata",
    "replicate_retrieval",
    "retrieval_tables",
    "summarise",
    "well_profiles",
]
