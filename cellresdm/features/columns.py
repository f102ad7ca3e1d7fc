"""Names of the per-image feature table: its metadata columns and the feature categories (Table 2's rows)."""

from __future__ import annotations

from cellresdm.cppipe import COMPARTMENTS

#: Feature categories of Table 2 (the measurement name after the compartment); AreaShape has its own row.
CATEGORIES: tuple[str, ...] = (
    "AreaShape",
    "Correlation",
    "Count",
    "Granularity",
    "Intensity",
    "Location",
    "Neighbors",
    "RadialDistribution",
    "Texture",
)
#: Categories the cp_measure backend computes per object (no Location; Image_Count_* from the labels).
CP_MEASURE_CATEGORIES: tuple[str, ...] = (
    "AreaShape",
    "Correlation",
    "Granularity",
    "Intensity",
    "Neighbors",
    "RadialDistribution",
    "Texture",
)
#: Metadata columns of a feature table, in order.
METADATA_COLUMNS: tuple[str, ...] = (
    "Metadata_Plate",
    "Metadata_Well",
    "Metadata_Site",
    "Metadata_Field",
    "Metadata_CellLine",
    "Metadata_Source",
    "Metadata_Seconds",
)


def feature_category(column: str) -> str | None:
    """Table 2 category of a feature column (``Cells_Intensity_MeanIntensity_DNA`` -> ``Intensity``), or
    None for metadata and measurements outside :data:`CATEGORIES`."""
    parts = column.split("_", 2)
    if len(parts) < 3 or parts[0] not in ("Image", *COMPARTMENTS):
        return None
    return parts[1] if parts[1] in CATEGORIES else None
