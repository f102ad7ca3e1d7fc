"""CellProfiler features of real and synthetic IF images, and their correlation (docs/design.md section 5, features).

Each field's 5 IF channels (``if`` (N, 5, H, W) float16 in [0, 1] of a dataset or predictions zarr, order
layout.IF_CHANNELS) are written as uint16 TIFFs (value * 65535) and measured with the measurement part of the
cpg0000 (CPJUMP1) analysis pipeline: every image set is segmented from its OWN IF channels (nuclei from DNA
after background subtraction, cells by watershed on RNA, cytoplasm = cells - shrunken nuclei), then
MeasureColocalization, MeasureGranularity, MeasureObjectIntensity, MeasureObjectNeighbors,
MeasureObjectIntensityDistribution, MeasureObjectSizeShape, MeasureTexture and MeasureImageIntensity run
with the reference settings (pixel sizes scaled to the field's pixel size) and ExportToSpreadsheet writes
per-object and per-image CSVs.

Per image, per-object measurements are aggregated with the median (or mean) and named like pycytominer:
``{Compartment}_{Measurement}`` (``Cells_Intensity_MeanIntensity_DNA``, ``Nuclei_AreaShape_Area``), image
measurements ``Image_{Measurement}`` (``Image_Count_Cells``, ``Image_Intensity_MeanIntensity_DNA``). An
image set where CellProfiler finds no object of a compartment has NaN features for that compartment (its
``Image_Count_*`` is 0): the correlation stage skips NaN pairs.

Modules: :mod:`~cellresdm.features.settings` (:class:`FeatureSettings`), :mod:`~cellresdm.features.extract`
(the CellProfiler runner, :func:`extract_features`), :mod:`~cellresdm.features.exports` (per-image features
from CellProfiler's exports), :mod:`~cellresdm.features.fast` (the fast backend),
:mod:`~cellresdm.features.cpmeasure` (the cp_measure backend),
:mod:`~cellresdm.features.columns` (feature table names and categories) and
:mod:`~cellresdm.features.correlation` (Table 2). The pipeline text comes from :mod:`cellresdm.cppipe`.

Backends: ``fast`` (the default: CellProfiler segments and saves its label images,
:mod:`~cellresdm.features.fast` computes every measurement of the pipeline in-process for all objects of a field
at once, CellProfiler's names; :func:`measure_objects_fast` gives the per-object tables), ``cellprofiler`` (all
measurements by CellProfiler, the reference) or ``cp_measure`` (cp_measure computes the per-object measurements
from CellProfiler's labels, see :data:`CP_MEASURE_CATEGORIES`).

Table 2 (:func:`feature_correlation`, :func:`table2`): per source and feature the Pearson r across test
images between real and synthetic per-image values, averaged per feature category.
"""

from cellresdm.cppipe import COMPARTMENTS, make_measurement_pipeline
from cellresdm.features.columns import CATEGORIES, CP_MEASURE_CATEGORIES, METADATA_COLUMNS, feature_category
from cellresdm.features.correlation import CORRELATION_COLUMNS, feature_correlation, table2, write_table2
from cellresdm.features.cpmeasure import measure_objects_cp_measure
from cellresdm.features.extract import extract_features, gather_features, run_cellprofiler_chunk
from cellresdm.features.fast import FieldMeasurements, measure_field, measure_objects_fast
from cellresdm.features.settings import FeatureSettings

__all__ = [
    "CATEGORIES",
    "COMPARTMENTS",
    "CORRELATION_COLUMNS",
    "CP_MEASURE_CATEGORIES",
    "METADATA_COLUMNS",
    "FeatureSettings",
    "FieldMeasurements",
    "extract_features",
    "feature_category",
    "feature_correlation",
    "gather_features",
    "make_measurement_pipeline",
    "measure_field",
    "measure_objects_cp_measure",
    "measure_objects_fast",
    "run_cellprofiler_chunk",
    "table2",
    "write_table2",
]
